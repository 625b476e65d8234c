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
from textual.containers import Grid, Horizontal, Vertical
from textual.content import Content

from backends.models import Environment, EnvironmentSnapshot, RedisStatus
from widgets.metric_tile import MetricTile
from widgets.orchestrators import OrchestratorTable
from widgets.repaint import QuietBorderTitle, QuietStatic, wobbles
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


class EnvironmentSummary(Horizontal):
    """The one-line verdict on an environment (always visible).

    Two parts: the verdict (name, state, orchestrators up, hash), then the
    reasons. The reasons carry numbers that move every sweep (``P99 7.80 ms``);
    in a part of their own only those characters travel, not the whole line.
    """

    DEFAULT_CSS = """
    EnvironmentSummary {
        height: 1;
        width: 1fr;
        padding: 0 1;
    }
    EnvironmentSummary.-stale {
        color: $stale;
    }
    EnvironmentSummary > QuietStatic {
        height: 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    EnvironmentSummary > .summary--verdict {
        width: auto;
        max-width: 100%;
    }
    EnvironmentSummary > .summary--reasons {
        width: 1fr;
    }
    """

    def __init__(self, environment: Environment, *, id: str | None = None) -> None:
        """Create the line for one environment.

        Args:
            environment: blue or green.
            id: The widget id.
        """
        super().__init__(id=id)
        self.environment = environment
        self.plain_text = ""
        """The line as shown (plain text), for tests and reports."""
        self._shown: tuple[str, bool] = ("", False)

    def compose(self) -> ComposeResult:
        """The verdict part and the reasons part."""
        yield QuietStatic(self._waiting(), classes="summary--verdict")
        yield QuietStatic(classes="summary--reasons")

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
        head = Content.assemble(*parts)
        reasons = Content(" · " + ", ".join(verdict.reasons) if verdict.reasons else "")
        plain = head.plain + reasons.plain
        set_level_class(self, Level.STALE if stale else None)
        if (plain, stale) != self._shown:
            self._shown = (plain, stale)
            self.plain_text = plain
            self.query_one(".summary--verdict", QuietStatic).show_content(head)
            self.query_one(".summary--reasons", QuietStatic).show_content(reasons)
            self.tooltip = plain


class EnvironmentPanel(QuietBorderTitle, Vertical):
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
    EnvironmentPanel > .panel--compliance {
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    EnvironmentPanel > .panel--stores {
        height: 2;
        padding: 0 1;
    }
    EnvironmentPanel > .panel--stores > QuietStatic {
        height: 2;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    EnvironmentPanel .stores--state {
        width: auto;
    }
    EnvironmentPanel .stores--detail {
        width: 1fr;
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
        self._ping: tuple[float, datetime] | None = None
        """The Redis round trip on screen and the data time it was painted."""
        self.border_title = f"{environment.value} · ? unknown"

    def compose(self) -> ComposeResult:
        """Table, compliance line, metric tiles, data stores."""
        yield OrchestratorTable(self._services)
        yield QuietStatic(
            f"compliance ? unknown · {WAITING}\nfailed: unknown", classes="panel--compliance"
        )
        with Grid():
            for spec in TILES:
                yield MetricTile(
                    spec.field, spec.label, history=self._history, id=f"tile-{spec.field}"
                )
        # Engine and state, then the details in a column of their own: a Redis round
        # trip that moves repaints its digits, not the line up to them.
        with Horizontal(classes="panel--stores"):
            yield QuietStatic("Redis ? unknown\nPostgreSQL ? unknown", classes="stores--state")
            yield QuietStatic(classes="stores--detail")

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
        self.query_one(selector, QuietStatic).show_content(content)

    def _settled_redis(self, status: RedisStatus, at: datetime | None) -> RedisStatus:
        """Redis as shown: a round trip that only wobbles keeps the number on screen a while.

        See :func:`widgets.repaint.wobbles`; the state, role and cluster show at once.
        """
        shown, ping = self._ping, status.ping_ms
        if ping is None or at is None:
            self._ping = None
            return status
        if shown is not None and wobbles(shown[0], ping, (at - shown[1]).total_seconds()):
            return status.model_copy(update={"ping_ms": shown[0]})
        self._ping = (ping, at)
        return status

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
        self.set_border_title(title)
        subtitle = stale_note(since) if stale else ""
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle

        self.table.show(env.services, stale=stale, at=since)

        # Two lines, always: the failed checks have a line of their own, so a check
        # failing never changes the panel's height (a new layout repaints the screen).
        badge, score, failed = compliance_line(env.compliance, thresholds)
        parts: list[str | tuple[str, str]] = [
            ("compliance ", "bold"),
            badge_part(badge, stale=stale),
            f" {score}",
            "\n",
            ("failed: ", "bold"),
            failed or "none",
        ]
        if env.compliance.notes:
            parts.append(f" · note: {'; '.join(env.compliance.notes)}")
        self._set(".panel--compliance", Content.assemble(*parts), stale)
        details = [f"{c.name}: {c.detail}" for c in env.compliance.failed]
        self.query_one(".panel--compliance", QuietStatic).tooltip = "\n".join(details) or None

        for spec in TILES:
            metric = getattr(env.metrics, spec.field)
            self.tile(spec.field).show(
                metric,
                metric_level(spec.field, metric, thresholds, traffic_share=share),
                sample=sample,
                panel_stale=stale,
            )

        redis_badge, redis_detail = redis_line(self._settled_redis(env.redis, since))
        pg_badge, pg_detail = replication_line(env.replication)
        states = Content.assemble(
            ("Redis      ", "bold"),
            badge_part(redis_badge, stale=stale),
            "\n",
            ("PostgreSQL ", "bold"),
            badge_part(pg_badge, stale=stale),
        )
        self._set(".stores--state", states, stale)
        self._set(".stores--detail", Content(f"  {redis_detail}\n  {pg_detail}"), stale)
        self.query_one(
            ".panel--stores", Horizontal
        ).tooltip = (
            f"Redis: {redis_badge.text}  {redis_detail}\nPostgreSQL: {pg_badge.text}  {pg_detail}"
        )
