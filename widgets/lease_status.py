"""The lease line: who drives this deployment, since when, when the lease runs out, and why.

::

    ▶ driving bob@host-b · fence 5 · since 14:02:07 · lease renewed on time · h: hand over
    ▶ driving bob@host-b · fence 5 · since 14:02:07 · lease runs out here in 4 s · h: hand over
    ▲ read-only alice@host-a drives since 14:02:07 (93 s ago) · lease expires in 12 s · fence 4
    ✖ read-only lease renewal failed (Redis did not answer); read-only until a renewal succeeds

The line renders a :class:`console.coordination.LeaseStatus` as of a given time, so the
countdown moves once a second without any I/O; the App hands it the status and the keys
(after ``ui.keymap``) that take or hand over the lead. The reason a console is read-only is
always on the line: a console never turns read-only silently.

On screen the parts that move with the clock (the countdowns, the holder's age) stand
apart at the right end of the line, in a widget of their own: Textual sends a changed
span from the left edge of the widget holding it, so a countdown inside the line would
resend most of the line every second (about 20 KB a minute over SSH), where apart it
resends a few cells. The driving console's own countdown shows only when it matters:
while renewals come on time (the local deadline more than half a lease away) the line
says so and stays still; once a renewal is late, the seconds left count down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content

from widgets.repaint import QuietStatic
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
    ticking: frozenset[int] = frozenset()
    """Indexes of the parts that move with the clock (countdowns, ages)."""
    attached: frozenset[int] = frozenset()
    """Indexes of the parts that continue the part before them (joined by a space)."""

    def _join(self, indexes: list[int]) -> Content:
        pieces: list[Content | str] = []
        for n, i in enumerate(indexes):
            if n:
                pieces.append(" " if i in self.attached and indexes[n - 1] == i - 1 else SEPARATOR)
            pieces.append(self.parts[i])
        return Content.assemble(*pieces)

    @property
    def plain(self) -> str:
        """The whole line as plain text, every part in its place."""
        return self._join(list(range(len(self.parts)))).plain

    @property
    def steady(self) -> Content:
        """The parts that stay while the clock runs (the left of the line on screen)."""
        return self._join([i for i in range(len(self.parts)) if i not in self.ticking])

    @property
    def clock(self) -> Content:
        """The parts that move with the clock (the right end of the line on screen)."""
        return self._join([i for i in range(len(self.parts)) if i in self.ticking])


def _clock(at: datetime | None) -> str:
    return at.astimezone().strftime("%H:%M:%S") if at is not None else "?"


def _seconds(value: float) -> str:
    return f"{max(0.0, value):.0f} s"


class _Parts:
    """A line's parts as they are built, with which of them tick and which attach."""

    def __init__(self) -> None:
        self.parts: list[Content] = []
        self.ticking: set[int] = set()
        self.attached: set[int] = set()

    def add(self, part: Content, *, ticking: bool = False, attached: bool = False) -> None:
        if ticking:
            self.ticking.add(len(self.parts))
        if attached:
            self.attached.add(len(self.parts))
        self.parts.append(part)


def _lease_length(holder: object) -> float | None:
    """The lease's length in seconds, from the holder's last renewal to its expiry."""
    renewed = getattr(holder, "renewed_at", None)
    expires = getattr(holder, "expires_at", None)
    if renewed is None or expires is None:
        return None
    length = (expires - renewed).total_seconds()
    return length if length > 0 else None


def _holder_parts(line: _Parts, status: LeaseStatus, now: datetime) -> None:
    holder = status.holder
    if holder is None:
        line.add(Content("nobody holds the lease"))
        return
    since = holder.acquired_at
    line.add(Content.assemble((holder.operator, "bold"), f" drives since {_clock(since)}"))
    if since is not None:
        ago = _seconds((now - since).total_seconds())
        line.add(Content(f"({ago} ago)"), ticking=True, attached=True)
    remaining = holder.remaining_s(now)
    if remaining is not None:
        line.add(Content(f"lease expires in {_seconds(remaining)}"), ticking=True)
    elif holder.mode == "lock_file":
        line.add(Content("held until released"))
    if holder.fence is not None:
        line.add(Content(f"fence {holder.fence}"))


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
    line = _Parts()
    hints: list[str] = []
    if role == "driving":
        level, badge = Level.OK, DRIVING
        line.add(Content.assemble(badge_part(badge), " ", (status.operator, "bold")))
        if status.fence is not None:
            line.add(Content(f"fence {status.fence}"))
        holder = status.holder
        if holder is not None and holder.acquired_at is not None:
            line.add(Content(f"since {_clock(holder.acquired_at)}"))
        if status.deadline_in_s is not None and status.mode == "redis":
            lease_s = _lease_length(holder)
            if lease_s is not None and status.deadline_in_s > lease_s / 2:
                # Renewed on time: a countdown cycling between two thirds of the lease and
                # all of it says nothing, and would repaint (and resend) every second.
                line.add(Content("lease renewed on time"))
            else:
                line.add(
                    Content(f"lease runs out here in {_seconds(status.deadline_in_s)}"),
                    ticking=True,
                )
        if keys.hand_over:
            hints.append(f"{keys.hand_over}: hand over")
    elif role in ("observing", "free"):
        level, badge = Level.WARNING, READ_ONLY
        line.add(Content.assemble(badge_part(badge)))
        _holder_parts(line, status, now)
        if keys.take_lead:
            hints.append(
                f"{keys.take_lead}: take the lead"
                + (" once the lease is free" if status.holder is not None else "")
            )
    elif role == "observer":
        level, badge = Level.UNKNOWN, OBSERVER
        line.add(Content.assemble(badge_part(badge), " --read-only: this console never drives"))
        _holder_parts(line, status, now)
    else:  # suspended, lost, unavailable: say exactly why
        level, badge = Level.CRITICAL, CUT_OFF
        line.add(Content.assemble(badge_part(badge), " ", status.reason))
        if role != "suspended" and keys.take_lead:
            hints.append(f"{keys.take_lead}: take the lead")
        if keys.rollback:
            hints.append(f"{keys.rollback}: emergency rollback (break-glass)")
    if waiting_approvals:
        noun = "approval" if waiting_approvals == 1 else "approvals"
        line.add(
            Content.assemble(
                badge_part(Badge(Level.WARNING, f"{waiting_approvals} {noun} waiting", "◷"))
            )
        )
    if keys.operators:
        hints.append(f"{keys.operators}: operators")
    for hint in hints:
        line.add(Content.assemble((hint, "$text-muted")))
    return LeaseLine(level, line.parts, frozenset(line.ticking), frozenset(line.attached))


class LeaseStatusLine(Horizontal):
    """One line (two when narrow) under the header: the lease as this console sees it.

    The steady parts fill the line from the left (and wrap when narrow); the parts
    that tick stand at its right end, padded to the widest they have been, so a
    countdown going from 10 s to 9 s changes a few cells and never the layout.
    """

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
    LeaseStatusLine > .lease--steady {
        width: 1fr;
        height: auto;
    }
    LeaseStatusLine > .lease--clock {
        width: auto;
        height: 1;
        padding: 0 0 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create an empty line."""
        super().__init__(id=id)
        self.line: LeaseLine | None = None
        """What the line shows."""
        self._steady = QuietStatic("", markup=False, classes="lease--steady")
        self._clock = QuietStatic("", markup=False, classes="lease--clock")
        self._clock.display = False
        self._clock_width = 0
        """The widest the ticking parts have been since the line took its shape."""

    def compose(self) -> ComposeResult:
        """The steady parts, then the ticking ones."""
        yield self._steady
        yield self._clock

    @property
    def plain_text(self) -> str:
        """The line as plain text, for tests."""
        return self.line.plain if self.line is not None else ""

    def show(self, line: LeaseLine) -> None:
        """Show a line (repaints only the cells that changed)."""
        previous = self.line
        if previous is not None and previous.level == line.level:
            same = [(p.plain, p.spans) for p in previous.parts] == [
                (p.plain, p.spans) for p in line.parts
            ]
            if same:
                return
        shape = (line.level, len(line.parts), line.ticking)
        if previous is None or (previous.level, len(previous.parts), previous.ticking) != shape:
            self._clock_width = 0  # a new kind of line: the clock column may shrink again
        self.line = line
        set_level_class(self, line.level)
        self._steady.show_content(line.steady)
        clock = line.clock
        self._clock_width = max(self._clock_width, clock.cell_length)
        if clock.cell_length < self._clock_width:
            clock = Content.assemble(clock, " " * (self._clock_width - clock.cell_length))
        self._clock.show_content(clock)
        if self._clock.display != bool(line.ticking):
            self._clock.display = bool(line.ticking)


def line_keys(display: Mapping[str, str]) -> LeaseLineKeys:
    """Keys by binding action (``take_lead``, ``hand_over``, ``operators``, ``rollback``)."""
    return LeaseLineKeys(
        take_lead=display.get("take_lead", ""),
        hand_over=display.get("hand_over", ""),
        operators=display.get("operators", ""),
        rollback=display.get("rollback", ""),
    )
