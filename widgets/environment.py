"""One environment on screen: its verdict line and its panel.

:class:`EnvironmentSummary` is the one-line verdict (``BLUE ✔ healthy · 9/9 up
· hash ok``) that stays visible even at 80x24. :class:`EnvironmentPanel` is
the detail: the orchestrator table, the compliance score with its failed
checks, four metric tiles, and Redis and PostgreSQL replication status.
A stale snapshot greys the panel out and its border says since when.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.content import Content
from textual.widgets import Static

from backends.models import Environment, EnvironmentSnapshot
from widgets.metric_tile import MetricTile
from widgets.orchestrators import OrchestratorTable
from widgets.styling import badge_part, set_level_class
from widgets.verdicts import (
    TILES,
    Badge,
    EnvironmentVerdict,
    Level,
    clock_time,
    compliance_line,
    metric_level,
    redis_line,
    replication_line,
)

if TYPE_CHECKING:
    from console.config import Thresholds

WAITING = "waiting for the first sweep"


def stale_note(since: datetime | None) -> str:
    """``◌ stale since 12:00:05 UTC``."""
    return f"◌ stale since {clock_time(since)} UTC"


class EnvironmentSummary(Static):
    """The one-line verdict on an environment (always visible)."""

    DEFAULT_CSS = """
    EnvironmentSummary {
        height: 1;
        width: 1fr;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    EnvironmentSummary.-stale {
        color: $stale;
    }
    """

    def __init__(self, environment: Environment, *, id: str | None = None) -> None:
        """Create the line for one environment.

        Args:
            environment: blue or green.
            id: The widget id.
        """
        self.environment = environment
        self.plain_text = ""
        """The line as shown (plain text), for tests and reports."""
        self._shown: tuple[str, bool] = ("", False)
        super().__init__(self._waiting(), id=id)

    def _name_part(self) -> tuple[str, str]:
        return (f"{self.environment.value.upper():<5}", f"$env-{self.environment.value} bold")

    def _waiting(self) -> Content:
        content = Content.assemble(
            self._name_part(), " ", badge_part(Badge(Level.UNKNOWN, "unknown")), f" · {WAITING}"
        )
        self.plain_text = content.plain
        return content

    def show(self, verdict: EnvironmentVerdict, *, stale: bool, since: datetime | None) -> None:
        """Show an environment's verdict.

        Args:
            verdict: The judged environment.
            stale: The snapshot is older than its allowed age.
            since: When the shown data was taken (for the stale note).
        """
        parts: list[str | tuple[str, str]] = [
            self._name_part(),
            " ",
            badge_part(verdict.badge, stale=stale),
            f" · {verdict.up}/{verdict.total} up · hash ",
            badge_part(verdict.hash_badge, stale=stale),
        ]
        if stale:
            parts.append(f" · {stale_note(since)}")
        if verdict.reasons:
            parts.append(" · " + ", ".join(verdict.reasons))
        content = Content.assemble(*parts)
        set_level_class(self, Level.STALE if stale else None)
        if (content.plain, stale) != self._shown:
            self._shown = (content.plain, stale)
            self.plain_text = content.plain
            self.update(content)
        self.tooltip = content.plain


class EnvironmentPanel(Vertical):
    """The detail of one environment: orchestrators, compliance, metrics, data stores."""

    DEFAULT_CSS = """
    EnvironmentPanel {
        height: auto;
        width: 1fr;
        border: round $env-blue;
        border-title-color: $env-blue;
        border-title-style: bold;
        border-subtitle-color: $stale;
        padding: 0 0;
    }
    EnvironmentPanel.-green {
        border: round $env-green;
        border-title-color: $env-green;
    }
    EnvironmentPanel.-stale {
        border: round $stale;
        border-title-color: $stale;
        color: $stale;
    }
    EnvironmentPanel > Static {
        height: auto;
        padding: 0 1;
    }
    EnvironmentPanel > .panel--stores {
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    EnvironmentPanel > Grid {
        grid-size: 2;
        grid-gutter: 0 1;
        height: auto;
        padding: 0 1;
    }
    """

    def __init__(
        self,
        environment: Environment,
        services: Sequence[str],
        *,
        history: int = 300,
        id: str | None = None,
    ) -> None:
        """Create the panel.

        Args:
            environment: blue or green.
            services: The orchestrators the configuration lists for it.
            history: Samples kept per sparkline.
            id: The widget id.
        """
        super().__init__(id=id, classes=f"-{environment.value}")
        self.environment = environment
        self._services = list(services)
        self._history = history
        self._shown: dict[str, tuple[str, bool]] = {}
        self.border_title = f"{environment.value} · ? unknown"

    def compose(self) -> ComposeResult:
        """Table, compliance line, metric tiles, data stores."""
        yield OrchestratorTable(self._services)
        yield Static(f"compliance ? unknown · {WAITING}", classes="panel--compliance")
        with Grid():
            for spec in TILES:
                yield MetricTile(
                    spec.field, spec.label, history=self._history, id=f"tile-{spec.field}"
                )
        yield Static("Redis ? unknown\nPostgreSQL ? unknown", classes="panel--stores")

    @property
    def table(self) -> OrchestratorTable:
        """The orchestrator table."""
        return self.query_one(OrchestratorTable)

    def tile(self, field: str) -> MetricTile:
        """The metric tile of one metric field."""
        return self.query_one(f"#tile-{field}", MetricTile)

    def _set(self, selector: str, content: Content, stale: bool) -> None:
        """Update a line only when it changed (a quiet estate costs no repaint)."""
        if self._shown.get(selector) == (content.plain, stale):
            return
        self._shown[selector] = (content.plain, stale)
        self.query_one(selector, Static).update(content)

    def show(
        self,
        env: EnvironmentSnapshot,
        verdict: EnvironmentVerdict,
        thresholds: Thresholds,
        *,
        stale: bool,
        since: datetime | None,
        sample: object,
        share: float | None = None,
    ) -> None:
        """Show one environment of one sweep.

        Args:
            env: The environment's part of the snapshot.
            verdict: Its verdict (see :func:`widgets.verdicts.environment_verdict`).
            thresholds: The runbook's thresholds (metric levels).
            stale: The snapshot is older than its allowed age.
            since: When the data was taken (for the stale note).
            sample: Identifies the sweep (sparklines add one point per sweep).
            share: The environment's share of the traffic (judges its requests/s).
        """
        set_level_class(self, Level.STALE if stale else None)
        title = f"{self.environment.value} · {verdict.badge.text} · {verdict.up}/{verdict.total} up"
        if self.border_title != title:
            self.border_title = title
        subtitle = stale_note(since) if stale else ""
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle

        self.table.show(env.services, stale=stale)

        badge, score, failed = compliance_line(env.compliance, thresholds)
        parts: list[str | tuple[str, str]] = [
            ("compliance ", "bold"),
            badge_part(badge, stale=stale),
            f" {score}",
        ]
        if failed:
            parts.append(f" · failed: {failed}")
        if env.compliance.notes:
            parts.append(f" · note: {'; '.join(env.compliance.notes)}")
        self._set(".panel--compliance", Content.assemble(*parts), stale)
        details = [f"{c.name}: {c.detail}" for c in env.compliance.failed]
        self.query_one(".panel--compliance", Static).tooltip = "\n".join(details) or None

        for spec in TILES:
            metric = getattr(env.metrics, spec.field)
            self.tile(spec.field).show(
                metric,
                metric_level(spec.field, metric, thresholds, traffic_share=share),
                sample=sample,
                panel_stale=stale,
            )

        redis_badge, redis_detail = redis_line(env.redis)
        pg_badge, pg_detail = replication_line(env.replication)
        stores = Content.assemble(
            ("Redis      ", "bold"),
            badge_part(redis_badge, stale=stale),
            f"  {redis_detail}" if redis_detail else "",
            "\n",
            ("PostgreSQL ", "bold"),
            badge_part(pg_badge, stale=stale),
            f"  {pg_detail}" if pg_detail else "",
        )
        self._set(".panel--stores", stores, stale)
        self.query_one(".panel--stores", Static).tooltip = stores.plain
