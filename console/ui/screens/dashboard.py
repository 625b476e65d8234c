"""The live dashboard: header, both environments, traffic split, alerts.

Layout, top to bottom (fixed parts stay visible at 80x24; only the panels scroll)::

    header           hash verdict · deployment · operator · age of last sweep
    verdicts         BLUE ✔ healthy ...   GREEN ▲ degraded ...   (stacked below 100 columns)
    traffic          blue 90.0% ████████████░░ 10.0% green
    panels           [blue panel] [green panel]                  (stacked below 100 columns)
    alerts           firing and pending, with timers
    footer

The screen renders what the App hands it (a snapshot and the time); it does
no I/O and keeps no history beyond the sparklines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer

from backends.models import Environment, Snapshot
from widgets.alerts import AlertsPanel
from widgets.environment import EnvironmentPanel, EnvironmentSummary, stale_note
from widgets.status_header import StatusHeader
from widgets.styling import badge_part
from widgets.traffic import TrafficSplitBar
from widgets.verdicts import (
    Badge,
    Level,
    environment_verdict,
    estate_hash,
    format_duration,
    snapshot_age,
    traffic_share,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from console.config import AppConfig


@dataclass(frozen=True)
class DashboardState:
    """Everything the dashboard shows besides the snapshot itself."""

    now: datetime
    operator: str
    deployment_id: str | None = None
    phase: str | None = None
    error: str | None = None
    """The last sweep's failure (the source raised or hung), if the last sweep failed."""


def format_age(seconds: float) -> str:
    """``0 s``, ``12 s``, ``1m12s``: whole seconds, so the header does not churn each sweep."""
    if seconds < 60:
        return f"{int(seconds)} s"
    return format_duration(seconds)


class DashboardScreen(Screen[None]):
    """Blue and green side by side (stacked when narrow), with traffic and alerts."""

    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]

    BINDINGS = [
        Binding(
            "1",
            "jump('blue')",
            "Blue",
            id="jump-blue",
            tooltip="Scroll to the blue environment's panel",
            show=False,
        ),
        Binding(
            "2",
            "jump('green')",
            "Green",
            id="jump-green",
            tooltip="Scroll to the green environment's panel",
            show=False,
        ),
    ]

    class Uncovered(Message):
        """The dashboard is on top again (a modal closed): time to draw what arrived."""

    def on_screen_resume(self) -> None:
        """Tell the App the dashboard is visible again."""
        self.post_message(self.Uncovered())

    def __init__(
        self,
        config: AppConfig,
        *,
        history: int = 300,
        on_ready: Callable[[], object] | None = None,
    ) -> None:
        """Create the dashboard for a configuration.

        Args:
            config: The console configuration (environments, thresholds, hash).
            history: Samples kept per sparkline.
            on_ready: Called once its widgets are mounted, before its first frame is
                painted (the App draws the data it already has into that frame).
        """
        super().__init__()
        self.config = config
        self._history = history
        self._on_ready = on_ready
        self.snapshot: Snapshot | None = None
        """The snapshot on screen."""
        self.stale = False
        """Whether the snapshot on screen is older than its allowed age."""

    def on_mount(self) -> None:
        """The widgets are there: let the App draw what it has before the first paint."""
        if self._on_ready is not None:
            self._on_ready()

    def compose(self) -> ComposeResult:
        """Header, verdicts, traffic, panels, alerts, footer."""
        yield StatusHeader(id="header")
        with Horizontal(id="verdicts"):
            for env in Environment:
                yield EnvironmentSummary(env, id=f"verdict-{env.value}")
        yield TrafficSplitBar(id="traffic")
        with VerticalScroll(id="body"), Container(id="panels"):
            for env in Environment:
                services = list(self.config.env(env).services)
                yield EnvironmentPanel(
                    env, services, history=self._history, id=f"panel-{env.value}"
                )
        yield AlertsPanel(id="alerts")
        yield Footer(show_command_palette=False)

    def panel(self, environment: Environment | str) -> EnvironmentPanel:
        """One environment's panel."""
        return self.query_one(f"#panel-{Environment(environment).value}", EnvironmentPanel)

    def summary(self, environment: Environment | str) -> EnvironmentSummary:
        """One environment's verdict line."""
        return self.query_one(f"#verdict-{Environment(environment).value}", EnvironmentSummary)

    def action_jump(self, environment: str) -> None:
        """Scroll an environment's panel into view."""
        self.query_one("#body", VerticalScroll).scroll_to_widget(
            self.panel(environment), animate=False, top=True
        )

    # -- rendering ----------------------------------------------------------------------------

    def _header_parts(self, state: DashboardState) -> list[Content]:
        snapshot = self.snapshot
        expected = self.config.constitutional_hash
        if snapshot is None:
            hash_part = Content.assemble(
                ("hash ", "bold"), badge_part(Badge(Level.UNKNOWN, "unknown")), f" {expected}"
            )
        else:
            services = [*snapshot.blue.services, *snapshot.green.services]
            badge = estate_hash(services)
            ok = sum(1 for s in services if s.hash_ok)
            hash_part = Content.assemble(
                ("hash ", "bold"),
                badge_part(badge, stale=self.stale),
                f" {expected} {ok}/{len(services)}",
            )
        if state.deployment_id:
            deployment = Content.assemble(
                ("deploy ", "bold"), state.deployment_id, f" phase {state.phase or '?'}"
            )
        else:
            deployment = Content("no deployment")
        operator = Content(state.operator)
        if state.error is not None:
            age = Content.assemble(
                badge_part(Badge(Level.CRITICAL, "sweep failed")), f": {state.error}"
            )
            if snapshot is not None:
                age = Content.assemble(
                    age, f" · last good {format_age(snapshot_age(snapshot, state.now))} ago"
                )
        elif snapshot is None:
            age = Content.assemble(badge_part(Badge(Level.UNKNOWN, "waiting for the first sweep")))
        elif self.stale:
            age = Content.assemble(
                (
                    f"◌ last sweep {format_age(snapshot_age(snapshot, state.now))} ago, "
                    f"{stale_note(snapshot.taken_at).removeprefix('◌ ')}",
                    "$stale bold",
                )
            )
        else:
            age = Content(f"swept {format_age(snapshot_age(snapshot, state.now))} ago")
        return [hash_part, deployment, operator, age]

    def show(self, snapshot: Snapshot | None, state: DashboardState) -> None:
        """Render a snapshot (or the waiting state) as of ``state.now``.

        Called by the App for every new snapshot and once a second in
        between, so ages, timers and staleness move even while a sweep hangs.
        Widgets repaint only what changed.
        """
        if snapshot is not None and (
            self.snapshot is None or snapshot.taken_at >= self.snapshot.taken_at
        ):
            self.snapshot = snapshot
        snapshot = self.snapshot
        thresholds = self.config.thresholds
        self.stale = (
            snapshot is not None and snapshot_age(snapshot, state.now) > thresholds.stale_after_s
        )
        self.query_one(StatusHeader).show(self._header_parts(state))
        if snapshot is None:
            return
        since = snapshot.taken_at
        for env in Environment:
            env_snapshot = snapshot.env(env)
            share = traffic_share(snapshot.traffic, env)
            verdict = environment_verdict(
                env_snapshot,
                thresholds,
                stale=self.stale,
                expected_services=len(self.config.env(env).services),
                share=share,
            )
            self.summary(env).show(verdict, stale=self.stale, since=since)
            self.panel(env).show(
                env_snapshot,
                verdict,
                thresholds,
                stale=self.stale,
                since=since,
                sample=(snapshot.sequence, snapshot.taken_at),
                share=share,
            )
        self.query_one(TrafficSplitBar).show(snapshot.traffic, stale=self.stale, since=since)
        self.query_one(AlertsPanel).show(snapshot.alerts, state.now, stale=self.stale)

    def restyle(self) -> None:
        """Recolour what cannot follow a theme change by itself (table cells)."""
        for env in Environment:
            self.panel(env).table.restyle()
