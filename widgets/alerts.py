"""The alerts panel: firing and pending alerts with their timers.

::

    ✖ FIRING   critical green  P99 > 5 ms: 2m05s of 2m
    ◷ pending  warning  green  cache hit < 87%: 1m12s of 10m
    ? 6 rules without data: P99 Latency (blue, green), Throughput (estate), ...

Rules whose input is unknown neither fire nor pass; they are summed up on
one line so a dead Prometheus does not push the real alerts off the screen.
"""

from __future__ import annotations

from datetime import datetime

from textual.content import Content
from textual.widgets import Static

from backends.models import AlertState
from widgets.styling import badge_part, set_level_class
from widgets.verdicts import Badge, Level, alert_badge, alert_text, ordered_alerts, unknown_alerts


def alert_lines(alerts: tuple[AlertState, ...], now: datetime, *, stale: bool) -> list[Content]:
    """The panel's lines, most urgent first."""
    lines: list[Content] = []
    for alert in ordered_alerts(alerts, now):
        where = alert.environment.value if alert.environment is not None else "estate"
        lines.append(
            Content.assemble(
                badge_part(alert_badge(alert), stale=stale, width=10),
                f" {alert.severity.value:<8} {where:<6} ",
                alert_text(alert, now),
            )
        )
    unknown = unknown_alerts(alerts)
    if unknown:
        scopes: dict[str, list[str]] = {}
        for alert in unknown:
            where = alert.environment.value if alert.environment is not None else "estate"
            scopes.setdefault(alert.name, [])
            if where not in scopes[alert.name]:
                scopes[alert.name].append(where)
        names = ", ".join(f"{name} ({', '.join(w)})" for name, w in scopes.items())
        count = len(unknown)
        lines.append(
            Content.assemble(
                badge_part(Badge(Level.UNKNOWN, "unknown"), stale=stale, width=10),
                f" {count} rule{'s' if count != 1 else ''} without data: {names}",
            )
        )
    if not lines:
        lines.append(
            Content.assemble(
                badge_part(Badge(Level.OK, "none"), stale=stale, width=10),
                " no alert firing or pending",
            )
        )
    return lines


class AlertsPanel(Static):
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
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    AlertsPanel.-stale {
        color: $stale;
        border-top: solid $stale;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create the panel (unknown until the first sweep)."""
        super().__init__(
            Content.assemble(
                badge_part(Badge(Level.UNKNOWN, "unknown"), width=10),
                " waiting for the first sweep",
            ),
            id=id,
        )
        self.border_title = "alerts"
        self.plain_text = ""
        """The panel as shown (plain text), for tests."""
        self._shown: tuple[str, bool] = ("", False)

    def show(self, alerts: tuple[AlertState, ...], now: datetime, *, stale: bool) -> None:
        """Show a snapshot's alerts.

        Args:
            alerts: The snapshot's alert states.
            now: The current time (the timers count up to it).
            stale: The snapshot is older than its allowed age.
        """
        lines = alert_lines(alerts, now, stale=stale)
        content = Content("\n").join(lines)
        firing = sum(1 for a in alerts if a.phase.value == "firing")
        pending = sum(1 for a in alerts if a.phase.value == "pending")
        title = f"alerts · {firing} firing · {pending} pending"
        if stale:
            title += " · ◌ stale"
        set_level_class(self, Level.STALE if stale else None)
        if self.border_title != title:
            self.border_title = title
        if (content.plain, stale) != self._shown:
            self._shown = (content.plain, stale)
            self.plain_text = content.plain
            self.update(content)
