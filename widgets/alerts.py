"""The alerts panel: firing and pending alerts with their timers.

::

    ✖ FIRING   critical green  P99 > 5 ms: 2m05s of 2m
    ◷ pending  warning  green  cache hit < 87%: 1m12s of 10m
    ? 6 rules without data: P99 Latency (blue, green), Throughput (estate), ...

Rules whose input is unknown neither fire nor pass; they are summed up on
one line so a dead Prometheus does not push the real alerts off the screen.

The panel's height decides the dashboard's layout: every change of it moves
the panels above and repaints the whole screen (a reader loses their place,
a slow link gets 40 KB). So on a tall terminal the panel keeps all its lines
even when nothing fires; on a short one it keeps room for a few, grows at
once when more are needed, and gives lines back only after
:data:`SHRINK_AFTER_S` without needing them. Alerts that come and go during
an incident leave the layout still.

On screen the timers stand in a column of their own, after the longest
summary: they tick every second, and Textual sends a changed span from the
left edge of the widget holding it, so a timer at the end of a full-width
line would resend the whole line each second (over SSH, per alert).
"""

from __future__ import annotations

from datetime import datetime

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content

from backends.models import AlertState
from widgets.repaint import QuietBorderTitle, QuietStatic
from widgets.styling import badge_part, set_level_class
from widgets.verdicts import (
    Badge,
    Level,
    alert_badge,
    alert_text,
    alert_timer,
    ordered_alerts,
    unknown_alerts,
)

SHRINK_AFTER_S = 60.0
"""Seconds the panel keeps lines it no longer needs before giving them back."""

MAX_LINES = 7
"""Lines of alerts shown before the panel scrolls (its border takes one more)."""

MIN_LINES = 3
"""Lines the panel always keeps on a short terminal (a few alerts come and go in place)."""

TALL_TERMINAL = 30
"""From this many rows the panel keeps all its :data:`MAX_LINES`: the layout never moves."""


def _what(alert: AlertState, *, stale: bool) -> list[str | tuple[str, str]]:
    where = alert.environment.value if alert.environment is not None else "estate"
    return [
        badge_part(alert_badge(alert), stale=stale, width=10),
        f" {alert.severity.value:<8} {where:<6} ",
    ]


def unknown_line(alerts: tuple[AlertState, ...], *, stale: bool) -> Content | None:
    """The line on the rules without data, or None when every rule has its input."""
    unknown = unknown_alerts(alerts)
    if not unknown:
        return None
    scopes: dict[str, list[str]] = {}
    for alert in unknown:
        where = alert.environment.value if alert.environment is not None else "estate"
        scopes.setdefault(alert.name, [])
        if where not in scopes[alert.name]:
            scopes[alert.name].append(where)
    names = ", ".join(f"{name} ({', '.join(w)})" for name, w in scopes.items())
    count = len(unknown)
    return Content.assemble(
        badge_part(Badge(Level.UNKNOWN, "unknown"), stale=stale, width=10),
        f" {count} rule{'s' if count != 1 else ''} without data: {names}",
    )


def none_line(*, stale: bool) -> Content:
    """The line when no rule fires, is pending or lacks its input."""
    return Content.assemble(
        badge_part(Badge(Level.OK, "none"), stale=stale, width=10),
        " no alert firing or pending",
    )


def summary_line(alerts: tuple[AlertState, ...], now: datetime, *, stale: bool) -> Content | None:
    """The line on the rules without data, or "none" when nothing fires; None otherwise."""
    unknown = unknown_line(alerts, stale=stale)
    if unknown is not None:
        return unknown
    return none_line(stale=stale) if not ordered_alerts(alerts, now) else None


def alert_lines(alerts: tuple[AlertState, ...], now: datetime, *, stale: bool) -> list[Content]:
    """The panel's lines, most urgent first, each with its timer at the end."""
    lines = [
        Content.assemble(*_what(alert, stale=stale), alert_text(alert, now))
        for alert in ordered_alerts(alerts, now)
    ]
    summary = summary_line(alerts, now, stale=stale)
    if summary is not None:
        lines.append(summary)
    return lines


def alert_columns(
    alerts: tuple[AlertState, ...], now: datetime, *, stale: bool
) -> tuple[list[Content], list[Content]]:
    """The firing and pending alerts as two columns: what (up to the colon) and the timer."""
    what: list[Content] = []
    timers: list[Content] = []
    for alert in ordered_alerts(alerts, now):
        what.append(Content.assemble(*_what(alert, stale=stale), f"{alert.summary}:"))
        timers.append(Content(alert_timer(alert, now)))
    return what, timers


class AlertsPanel(QuietBorderTitle, Vertical):
    """Firing and pending alerts, their timers, and the rules without data."""

    DEFAULT_CSS = """
    AlertsPanel {
        height: auto;
        max-height: 8;
        overflow-y: auto;
        border-top: solid $primary;
        border-title-color: $primary;
        border-title-style: bold;
        padding: 0 1;
    }
    AlertsPanel.-stale {
        color: $stale;
        border-top: solid $stale;
    }
    AlertsPanel > Horizontal {
        height: auto;
    }
    AlertsPanel .alerts--what {
        width: auto;
        max-width: 80%;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    AlertsPanel .alerts--timer {
        width: 1fr;
        padding: 0 0 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    AlertsPanel .alerts--summary {
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create the panel (unknown until the first sweep)."""
        super().__init__(id=id)
        self.border_title = "alerts"
        self.plain_text = ""
        """The panel as shown (plain text), for tests."""
        self._shown: tuple[str, bool, int] = ("", False, 0)
        self._reserved = 0
        self._last_full: datetime | None = None

    def compose(self) -> ComposeResult:
        """The alerts (what, timer) and the summary line."""
        with Horizontal(classes="alerts--rows"):
            yield QuietStatic(classes="alerts--what")
            yield QuietStatic(classes="alerts--timer")
        yield QuietStatic(
            Content.assemble(
                badge_part(Badge(Level.UNKNOWN, "unknown"), width=10),
                " waiting for the first sweep",
            ),
            classes="alerts--summary",
        )

    def on_mount(self) -> None:
        """Take the room a tall terminal gives the panel before the first sweep arrives."""
        if self.screen.size.height >= TALL_TERMINAL:
            self._reserved = MAX_LINES
            self.styles.min_height = MAX_LINES + 1

    def _reserve(self, needed: int, now: datetime) -> None:
        """Grow to ``needed`` lines at once; shrink only after a while without needing them."""
        tall = self.is_mounted and self.screen.size.height >= TALL_TERMINAL
        needed = max(MAX_LINES if tall else MIN_LINES, min(needed, MAX_LINES))
        if needed >= self._reserved or self._last_full is None:
            self._last_full = now
        elif (now - self._last_full).total_seconds() < SHRINK_AFTER_S:
            needed = self._reserved
        else:
            self._last_full = now
        if needed != self._reserved:
            self._reserved = needed
            self.styles.min_height = needed + 1

    def show(self, alerts: tuple[AlertState, ...], now: datetime, *, stale: bool) -> None:
        """Show a snapshot's alerts.

        The rows keep their number of lines (blank ones below the alerts) and the
        line on the rules without data keeps its place at the bottom, so alerts
        coming and going change cells, not the panel's layout.

        Args:
            alerts: The snapshot's alert states.
            now: The current time (the timers count up to it).
            stale: The snapshot is older than its allowed age.
        """
        what, timers = alert_columns(alerts, now, stale=stale)
        unknown = unknown_line(alerts, stale=stale)
        if not what and unknown is None:
            what, timers = [none_line(stale=stale)], [Content("")]
        plain = "\n".join(
            [f"{w.plain} {t.plain}".rstrip() for w, t in zip(what, timers, strict=True)]
            + ([unknown.plain] if unknown is not None else [])
        )
        firing = sum(1 for a in alerts if a.phase.value == "firing")
        pending = sum(1 for a in alerts if a.phase.value == "pending")
        title = f"alerts · {firing} firing · {pending} pending"
        if stale:
            title += " · ◌ stale"
        set_level_class(self, Level.STALE if stale else None)
        self.set_border_title(title)
        self._reserve(len(what) + 1, now)
        if (plain, stale, self._reserved) == self._shown:
            return
        self._shown = (plain, stale, self._reserved)
        self.plain_text = plain
        blank = [Content("")] * (max(len(what), self._reserved - 1) - len(what))
        self.query_one(".alerts--what", QuietStatic).show_content(
            Content("\n").join([*what, *blank])
        )
        # Only the digits that moved travel: the timer column starts where they do.
        self.query_one(".alerts--timer", QuietStatic).show_content(
            Content("\n").join([*timers, *blank])
        )
        self.query_one(".alerts--summary", QuietStatic).show_content(unknown or Content(""))
