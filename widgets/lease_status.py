"""The lease line: who drives this deployment, since when, when the lease runs out, and why.

::

    ▶ driving bob@host-b · fence 5 · since 14:02:07 · lease runs out here in 12 s · h: hand over
    ▲ read-only alice@host-a drives since 14:02:07 (93 s ago) · lease expires in 12 s · fence 4
    ✖ read-only lease renewal failed (Redis did not answer); read-only until a renewal succeeds

The line renders a :class:`console.coordination.LeaseStatus` as of a given time, so the
countdown moves once a second without any I/O; the App hands it the status and the keys
(after ``ui.keymap``) that take or hand over the lead. The reason a console is read-only is
always on the line: a console never turns read-only silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from textual.content import Content
from textual.widgets import Static

from widgets.styling import badge_part, set_level_class
from widgets.verdicts import Badge, Level

if TYPE_CHECKING:
    from console.coordination import LeaseStatus

SEPARATOR = " · "

DRIVING = Badge(Level.OK, "driving", "▶")
READ_ONLY = Badge(Level.WARNING, "read-only")
CUT_OFF = Badge(Level.CRITICAL, "read-only")
OBSERVER = Badge(Level.UNKNOWN, "observer", "◉")


@dataclass(frozen=True)
class LeaseLineKeys:
    """The keys the line names (as displayed, after ``ui.keymap``); empty: not offered."""

    take_lead: str = ""
    hand_over: str = ""
    operators: str = ""
    rollback: str = ""


@dataclass(frozen=True)
class LeaseLine:
    """What the line says: its level (the line's colour) and its parts, in order."""

    level: Level
    parts: list[Content] = field(default_factory=list)

    @property
    def plain(self) -> str:
        """The whole line as plain text."""
        return SEPARATOR.join(p.plain for p in self.parts)


def _clock(at: datetime | None) -> str:
    return at.astimezone().strftime("%H:%M:%S") if at is not None else "?"


def _seconds(value: float) -> str:
    return f"{max(0.0, value):.0f} s"


def _holder_parts(status: LeaseStatus, now: datetime) -> list[Content]:
    holder = status.holder
    if holder is None:
        return [Content("nobody holds the lease")]
    since = holder.acquired_at
    ago = f" ({_seconds((now - since).total_seconds())} ago)" if since is not None else ""
    parts = [Content.assemble((holder.operator, "bold"), f" drives since {_clock(since)}{ago}")]
    remaining = holder.remaining_s(now)
    if remaining is not None:
        parts.append(Content(f"lease expires in {_seconds(remaining)}"))
    elif holder.mode == "lock_file":
        parts.append(Content("held until released"))
    if holder.fence is not None:
        parts.append(Content(f"fence {holder.fence}"))
    return parts


def lease_line(
    status: LeaseStatus,
    now: datetime,
    keys: LeaseLineKeys | None = None,
    *,
    waiting_approvals: int = 0,
) -> LeaseLine:
    """The line for a lease status as of ``now``.

    Args:
        status: The coordinator's status.
        now: The time the countdowns are measured against.
        keys: The keys to name (empty ones are left out).
        waiting_approvals: Four-eyes requests waiting for a second operator.
    """
    keys = keys or LeaseLineKeys()
    role = str(status.role)
    parts: list[Content] = []
    hints: list[str] = []
    if role == "driving":
        level, badge = Level.OK, DRIVING
        parts.append(Content.assemble(badge_part(badge), " ", (status.operator, "bold")))
        if status.fence is not None:
            parts.append(Content(f"fence {status.fence}"))
        holder = status.holder
        if holder is not None and holder.acquired_at is not None:
            parts.append(Content(f"since {_clock(holder.acquired_at)}"))
        if status.deadline_in_s is not None and status.mode == "redis":
            parts.append(Content(f"lease runs out here in {_seconds(status.deadline_in_s)}"))
        if keys.hand_over:
            hints.append(f"{keys.hand_over}: hand over")
    elif role in ("observing", "free"):
        level, badge = Level.WARNING, READ_ONLY
        parts.append(Content.assemble(badge_part(badge)))
        parts.extend(_holder_parts(status, now))
        if keys.take_lead:
            hints.append(
                f"{keys.take_lead}: take the lead"
                + (" once the lease is free" if status.holder is not None else "")
            )
    elif role == "observer":
        level, badge = Level.UNKNOWN, OBSERVER
        parts.append(Content.assemble(badge_part(badge), " --read-only: this console never drives"))
        parts.extend(_holder_parts(status, now))
    else:  # suspended, lost, unavailable: say exactly why
        level, badge = Level.CRITICAL, CUT_OFF
        parts.append(Content.assemble(badge_part(badge), " ", status.reason))
        if role != "suspended" and keys.take_lead:
            hints.append(f"{keys.take_lead}: take the lead")
        if keys.rollback:
            hints.append(f"{keys.rollback}: emergency rollback (break-glass)")
    if waiting_approvals:
        noun = "approval" if waiting_approvals == 1 else "approvals"
        parts.append(
            Content.assemble(
                badge_part(Badge(Level.WARNING, f"{waiting_approvals} {noun} waiting", "◷"))
            )
        )
    if keys.operators:
        hints.append(f"{keys.operators}: operators")
    parts.extend(Content.assemble((hint, "$text-muted")) for hint in hints)
    return LeaseLine(level, parts)


class LeaseStatusLine(Static):
    """One line (two when narrow) under the header: the lease as this console sees it."""

    DEFAULT_CSS = """
    LeaseStatusLine {
        height: auto;
        padding: 0 1;
        background: $panel;
        color: $foreground;
    }
    LeaseStatusLine.-critical {
        background: $error 15%;
    }
    LeaseStatusLine.-warning {
        background: $warning 10%;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create an empty line."""
        super().__init__("", id=id, markup=False)
        self.line: LeaseLine | None = None
        """What the line shows."""

    @property
    def plain_text(self) -> str:
        """The line as plain text, for tests."""
        return self.line.plain if self.line is not None else ""

    def show(self, line: LeaseLine) -> None:
        """Show a line (repaints only when it changed)."""
        previous = self.line
        if previous is not None and previous.level == line.level:
            same = [(p.plain, p.spans) for p in previous.parts] == [
                (p.plain, p.spans) for p in line.parts
            ]
            if same:
                return
        self.line = line
        set_level_class(self, line.level)
        self.update(Content(SEPARATOR).join(line.parts))


def line_keys(display: Mapping[str, str]) -> LeaseLineKeys:
    """Keys by binding action (``take_lead``, ``hand_over``, ``operators``, ``rollback``)."""
    return LeaseLineKeys(
        take_lead=display.get("take_lead", ""),
        hand_over=display.get("hand_over", ""),
        operators=display.get("operators", ""),
        rollback=display.get("rollback", ""),
    )
