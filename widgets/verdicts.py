"""How each observed state reads on screen: a level, a symbol and a word.

This module owns the console's visual vocabulary, free of Textual so it can be
tested (and reused by reports) on its own:

* :class:`Level` -- ok / warning / critical / unknown / stale -- and the
  symbol and word that go with it, so no state is ever told by colour alone;
* the badges of orchestrator states, hash verdicts and engine probes;
* the metric tiles' levels, judged against the runbook's thresholds;
* the per-environment and estate-wide verdicts and the alert lines.

Missing data is never a pass here: a value that is ``None``, NaN or stale
judges as ``unknown`` or ``stale``, never as ``ok``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from backends.models import (
    AlertPhase,
    AlertSeverity,
    AlertState,
    ComplianceResult,
    Environment,
    EnvironmentSnapshot,
    HashVerdict,
    MetricValue,
    ProbeState,
    RedisStatus,
    ReplicationStatus,
    ServiceHealth,
    ServiceState,
    Snapshot,
    TrafficSplit,
)

if TYPE_CHECKING:
    from console.config import Thresholds


class Level(StrEnum):
    """How good a thing is; the CSS class of a widget is ``-<level>``."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"
    STALE = "stale"


SYMBOLS: dict[Level, str] = {
    Level.OK: "✔",
    Level.WARNING: "▲",
    Level.CRITICAL: "✖",
    Level.UNKNOWN: "?",
    Level.STALE: "◌",
}
"""One symbol per level; each reads without colour."""

PENDING_SYMBOL = "◷"
"""An alert whose condition holds but whose timer has not run out."""

NOT_CONFIGURED_SYMBOL = "○"
"""An engine the configuration does not name (shown, never passing)."""

_RANK: dict[Level, int] = {
    Level.OK: 0,
    Level.WARNING: 1,
    Level.UNKNOWN: 2,
    Level.STALE: 3,
    Level.CRITICAL: 4,
}


def worst(levels: list[Level] | tuple[Level, ...]) -> Level:
    """The worst of several levels (critical > stale > unknown > warning > ok).

    Unknown ranks above warning: an unknown value keeps a gate closed, a
    warning does not. An empty list is unknown, never ok.
    """
    if not levels:
        return Level.UNKNOWN
    return max(levels, key=_RANK.__getitem__)


@dataclass(frozen=True)
class Badge:
    """A state as shown: level (for colour), symbol and word (for everyone)."""

    level: Level
    word: str
    symbol: str = ""

    @property
    def glyph(self) -> str:
        """The symbol, defaulting to the level's."""
        return self.symbol or SYMBOLS[self.level]

    @property
    def text(self) -> str:
        """``"✔ up"``: symbol and word."""
        return f"{self.glyph} {self.word}"


def level_badge(level: Level) -> Badge:
    """The plain badge of a level (``✔ ok``, ``▲ warning``, ...)."""
    return Badge(level, level.value)


# --- orchestrators, hashes, engines -------------------------------------------------------

_SERVICE: dict[ServiceState, Badge] = {
    ServiceState.UP: Badge(Level.OK, "up"),
    ServiceState.DEGRADED: Badge(Level.WARNING, "degraded"),
    ServiceState.DOWN: Badge(Level.CRITICAL, "down"),
    ServiceState.BAD_RESPONSE: Badge(Level.CRITICAL, "bad reply"),
    ServiceState.UNKNOWN: Badge(Level.UNKNOWN, "unknown"),
}


def service_badge(state: ServiceState) -> Badge:
    """The badge of an orchestrator's probed state."""
    return _SERVICE[state]


def service_label(service: str) -> str:
    """A short display name for an orchestrator (the full name stays the row key).

    ``security_orchestrator`` -> ``security``;
    ``constitutional_compliance_framework`` -> ``compliance_framework``.
    """
    label = service.removesuffix("_orchestrator")
    return label.removeprefix("constitutional_")


def hash_badge(body: HashVerdict, header: HashVerdict) -> Badge:
    """One badge for the body and header hash verdicts of a response."""
    if body is HashVerdict.OK and header is HashVerdict.OK:
        return Badge(Level.OK, "ok")
    bad = [
        (where, verdict)
        for where, verdict in (("body", body), ("header", header))
        if verdict in (HashVerdict.MISMATCH, HashVerdict.MISSING)
    ]
    if bad:
        if len(bad) == 2 and bad[0][1] is bad[1][1]:
            return Badge(Level.CRITICAL, bad[0][1].value)
        where, verdict = bad[0]
        short = "hdr" if where == "header" else where
        return Badge(Level.CRITICAL, f"{short} {verdict.value}")
    return Badge(Level.UNKNOWN, "unknown")


_PROBE: dict[ProbeState, Badge] = {
    ProbeState.OK: Badge(Level.OK, "ok"),
    ProbeState.DEGRADED: Badge(Level.WARNING, "degraded"),
    ProbeState.AUTH_FAILED: Badge(Level.CRITICAL, "auth failed"),
    ProbeState.REFUSED: Badge(Level.CRITICAL, "refused"),
    ProbeState.TIMEOUT: Badge(Level.CRITICAL, "timeout"),
    ProbeState.ERROR: Badge(Level.CRITICAL, "error"),
    ProbeState.NOT_CONFIGURED: Badge(Level.UNKNOWN, "not configured", NOT_CONFIGURED_SYMBOL),
    ProbeState.UNKNOWN: Badge(Level.UNKNOWN, "unknown"),
}


def probe_badge(state: ProbeState) -> Badge:
    """The badge of an engine probe (Redis, PostgreSQL)."""
    return _PROBE[state]


def format_bytes(n: int) -> str:
    """``0 B``, ``12 KiB``, ``3.4 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def redis_line(status: RedisStatus) -> tuple[Badge, str]:
    """Redis's badge and a detail such as ``master, 0.4 ms, cluster ok``."""
    badge = probe_badge(status.state)
    if status.state is ProbeState.OK and status.cluster_enabled and status.cluster_state != "ok":
        badge = Badge(Level.CRITICAL, f"cluster {status.cluster_state or 'unknown'}")
    parts: list[str] = []
    if status.role:
        parts.append(status.role)
    if status.ping_ms is not None:
        parts.append(f"{status.ping_ms:.1f} ms")
    if status.cluster_enabled:
        parts.append(f"cluster {status.cluster_state or 'unknown'}")
    if status.reason and status.state is not ProbeState.OK:
        parts.append(status.reason)
    return badge, ", ".join(parts)


def replication_line(status: ReplicationStatus) -> tuple[Badge, str]:
    """PostgreSQL's badge and a detail such as ``1/1 replicas streaming, lag 0 B / 0.0 s``.

    Reachable but not synchronized (too few replicas, lag over budget) is
    critical; synchronized unknown is unknown -- never ok.
    """
    badge = probe_badge(status.state)
    if status.state is ProbeState.OK:
        if status.synchronized is False:
            badge = Badge(Level.CRITICAL, "not in sync")
        elif status.synchronized is None:
            badge = Badge(Level.UNKNOWN, "sync unknown")
        else:
            badge = Badge(Level.OK, "in sync")
    parts: list[str] = []
    if status.state not in (ProbeState.NOT_CONFIGURED,):
        streaming = sum(1 for r in status.replicas if r.state == "streaming")
        if status.primary_reachable is not None or status.replicas:
            parts.append(f"{streaming}/{status.expected_replicas} replicas streaming")
        lags_b = [r.byte_lag for r in status.replicas if r.byte_lag is not None]
        lags_s = [r.replay_lag_seconds for r in status.replicas if r.replay_lag_seconds is not None]
        if lags_b or lags_s:
            lag_b = format_bytes(max(lags_b)) if lags_b else "? B"
            lag_s = f"{max(lags_s):.1f} s" if lags_s else "? s"
            parts.append(f"lag {lag_b} / {lag_s}")
    if status.reason and badge.level is not Level.OK:
        parts.append(status.reason)
    return badge, ", ".join(parts)


# --- metrics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricTileSpec:
    """One of the four metric tiles of an environment panel."""

    field: str
    """The :class:`~backends.models.EnvironmentMetrics` field."""
    label: str
    """What the tile is called on screen."""


TILES: tuple[MetricTileSpec, ...] = (
    MetricTileSpec("p99_latency_ms", "P99 latency"),
    MetricTileSpec("requests_per_second", "requests/s"),
    MetricTileSpec("cache_hit_rate", "cache hit"),
    MetricTileSpec("error_rate", "error rate"),
)
"""The tiles, in display order."""


def metric_number(metric: MetricValue) -> float | None:
    """The value when it is a finite number (stale or not), else None."""
    if metric.value is None or not math.isfinite(metric.value):
        return None
    return metric.value


def format_metric(field: str, value: float) -> str:
    """A metric's value with its unit, as the runbook writes it."""
    if field == "p99_latency_ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
    if field == "requests_per_second":
        return f"{value:.1f} rps" if value < 100 else f"{value:.0f} rps"
    if field in ("cache_hit_rate", "error_rate", "hash_validation_failure_rate"):
        pct = 100 * value
        return f"{pct:.2f} %" if pct < 10 else f"{pct:.1f} %"
    if field == "compliance_score":
        return f"{value:.1f} %"
    return f"{value:g}"


def metric_level(
    field: str,
    metric: MetricValue,
    thresholds: Thresholds,
    *,
    traffic_share: float | None = None,
) -> Level:
    """The instantaneous level of a metric against the runbook's thresholds.

    The ``for N minutes`` part of a rule is the alerts' business (they show
    the timer); a tile shows where the number stands now.

    Throughput: the runbook's "< 100 RPS" is about the estate, and during a
    switch the idle side rightly serves nothing. An environment's requests/s
    is therefore judged against the thresholds scaled by its share of the
    traffic split (0..1, as read back): an idle side is never "too slow", the
    side with all the traffic is held to the full number. An unknown share
    holds each side to the full number (no pass by default).

    Args:
        field: The :class:`~backends.models.EnvironmentMetrics` field.
        metric: The value.
        thresholds: The runbook's thresholds.
        traffic_share: The environment's share of the traffic (requests/s only).
    """
    if metric.stale:
        return Level.STALE
    value = metric_number(metric)
    if value is None:
        return Level.UNKNOWN
    t = thresholds
    if field == "p99_latency_ms":
        if value > t.p99_latency_ms_critical:
            return Level.CRITICAL
        return Level.WARNING if value > t.p99_latency_ms_warning else Level.OK
    if field == "requests_per_second":
        share = 1.0 if traffic_share is None else min(max(traffic_share, 0.0), 1.0)
        if value < t.rps_critical * share:
            return Level.CRITICAL
        return Level.WARNING if value < t.rps_warning * share else Level.OK
    if field == "cache_hit_rate":
        if value < t.cache_hit_critical:
            return Level.CRITICAL
        return Level.WARNING if value < t.cache_hit_warning else Level.OK
    if field == "error_rate":
        if value > t.error_rate_critical:
            return Level.CRITICAL
        return Level.WARNING if value > t.error_rate_warning else Level.OK
    return Level.OK


def clock_time(at: datetime | None) -> str:
    """``HH:MM:SS`` in UTC (the audit trail's clock), or ``--:--:--``."""
    if at is None:
        return "--:--:--"
    return at.astimezone(UTC).strftime("%H:%M:%S")


def compliance_line(result: ComplianceResult, thresholds: Thresholds) -> tuple[Badge, str, str]:
    """Compliance badge, the score text, and the failed checks (comma-separated)."""
    score = result.score
    failed = ", ".join(c.name for c in result.failed)
    if score is None:
        return Badge(Level.UNKNOWN, "unknown"), "no checks", failed
    if score >= thresholds.compliance_critical:
        return level_badge(Level.OK), f"{score:.1f} %", failed
    # Only checks that could not be evaluated: unknown (still not a pass), not a violation.
    if all(c.passed is None for c in result.failed):
        return level_badge(Level.UNKNOWN), f"{score:.1f} %", failed
    return level_badge(Level.CRITICAL), f"{score:.1f} %", failed


# --- environments and the estate ---------------------------------------------------------


@dataclass(frozen=True)
class EnvironmentVerdict:
    """The one-line verdict on an environment."""

    badge: Badge
    up: int
    total: int
    hash_badge: Badge
    reasons: tuple[str, ...]


_VERDICT_WORD: dict[Level, str] = {
    Level.OK: "healthy",
    Level.WARNING: "degraded",
    Level.CRITICAL: "critical",
    Level.UNKNOWN: "unknown",
    Level.STALE: "stale",
}


def estate_hash(services: list[ServiceHealth] | tuple[ServiceHealth, ...]) -> Badge:
    """One hash badge for many responses: any violation is critical; any unknown is unknown."""
    if not services:
        return Badge(Level.UNKNOWN, "unknown")
    badges = [hash_badge(s.body_hash_verdict, s.header_hash_verdict) for s in services]
    bad = sum(1 for b in badges if b.level is Level.CRITICAL)
    unknown = sum(1 for b in badges if b.level is Level.UNKNOWN)
    if bad:
        return Badge(Level.CRITICAL, f"{bad} violation{'s' if bad > 1 else ''}")
    if unknown:
        return Badge(Level.UNKNOWN, f"{unknown} unverified")
    return Badge(Level.OK, "ok")


def traffic_share(split: TrafficSplit | None, environment: Environment) -> float | None:
    """An environment's share of the traffic (0..1) as read back; None when unknown."""
    if split is None or split.green_percentage is None:
        return None
    green = min(max(split.green_percentage, 0.0), 100.0) / 100.0
    return green if environment is Environment.GREEN else 1.0 - green


def environment_verdict(
    env: EnvironmentSnapshot,
    thresholds: Thresholds,
    *,
    stale: bool = False,
    expected_services: int | None = None,
    share: float | None = None,
) -> EnvironmentVerdict:
    """Judge one environment: the worst of its orchestrators, hashes, metrics and engines.

    Args:
        env: The environment's part of a snapshot.
        thresholds: The runbook's thresholds.
        stale: The whole snapshot is older than its allowed age.
        expected_services: How many orchestrators the configuration names
            (missing ones count as unknown).
        share: The environment's share of the traffic (see :func:`metric_level`).
    """
    total = max(expected_services or 0, len(env.services))
    levels: list[Level] = []
    reasons: list[str] = []
    down = [s for s in env.services if service_badge(s.state).level is Level.CRITICAL]
    degraded = [s for s in env.services if s.state is ServiceState.DEGRADED]
    unknown = [s for s in env.services if s.state is ServiceState.UNKNOWN]
    missing = total - len(env.services)
    if down:
        levels.append(Level.CRITICAL)
        reasons.append(f"{len(down)} down")
    if degraded:
        levels.append(Level.WARNING)
        reasons.append(f"{len(degraded)} degraded")
    if unknown or missing > 0:
        levels.append(Level.UNKNOWN)
        reasons.append(f"{len(unknown) + max(missing, 0)} unknown")
    hashes = estate_hash(env.services)
    if hashes.level is Level.CRITICAL:
        # The hash badge itself says how many; no reason text needed.
        levels.append(Level.CRITICAL)
    elif hashes.level is Level.UNKNOWN and not (unknown or down):
        levels.append(Level.UNKNOWN)
    for spec in TILES:
        metric: MetricValue = getattr(env.metrics, spec.field)
        lvl = metric_level(spec.field, metric, thresholds, traffic_share=share)
        if lvl in (Level.CRITICAL, Level.WARNING):
            levels.append(lvl)
            value = metric_number(metric)
            shown = format_metric(spec.field, value) if value is not None else "?"
            reasons.append(f"{spec.label.split()[0]} {shown}")
        elif lvl in (Level.UNKNOWN, Level.STALE):
            levels.append(Level.UNKNOWN)
    if any(
        metric_level(s.field, getattr(env.metrics, s.field), thresholds, traffic_share=share)
        in (Level.UNKNOWN, Level.STALE)
        for s in TILES
    ):
        reasons.append("metrics unknown")
    comp_badge, comp_score, _ = compliance_line(env.compliance, thresholds)
    if comp_badge.level is not Level.OK:
        levels.append(comp_badge.level)
        reasons.append(f"compliance {comp_score}")
    for name, badge in (
        ("redis", redis_line(env.redis)[0]),
        ("postgres", replication_line(env.replication)[0]),
    ):
        if badge.level is Level.CRITICAL:
            levels.append(Level.WARNING)
            reasons.append(f"{name} {badge.word}")
    level = worst(levels) if levels else Level.OK
    if stale:
        level = Level.STALE
    return EnvironmentVerdict(
        badge=Badge(level, _VERDICT_WORD[level]),
        up=env.services_up,
        total=total,
        hash_badge=hashes,
        reasons=tuple(reasons),
    )


# --- traffic ------------------------------------------------------------------------------


def traffic_badge(split: TrafficSplit | None) -> Badge:
    """Known or unknown: the split as read back from the load balancer."""
    if split is None or split.green_percentage is None:
        return Badge(Level.UNKNOWN, "unknown")
    return Badge(Level.OK, "read back")


# --- alerts -------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``45s``, ``2m``, ``1m12s``, ``1h05m``."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m" if secs == 0 else f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def alert_timer(alert: AlertState, now: datetime) -> str:
    """``1m12s of 2m`` (with a timer) or ``for 12s`` (immediate)."""
    elapsed = format_duration(alert.elapsed(now))
    if alert.for_seconds > 0:
        return f"{elapsed} of {format_duration(alert.for_seconds)}"
    return f"for {elapsed}"


def alert_text(alert: AlertState, now: datetime) -> str:
    """``P99 > 5 ms: 1m12s of 2m`` (with a timer) or ``... : for 12s`` (immediate)."""
    return f"{alert.summary}: {alert_timer(alert, now)}"


def alert_badge(alert: AlertState) -> Badge:
    """``✖ FIRING`` / ``▲ FIRING`` / ``◷ pending`` / ``? unknown``."""
    if alert.unknown:
        return Badge(Level.UNKNOWN, "unknown")
    if alert.phase is AlertPhase.FIRING:
        level = Level.CRITICAL if alert.severity is AlertSeverity.CRITICAL else Level.WARNING
        return Badge(level, "FIRING")
    if alert.phase is AlertPhase.PENDING:
        return Badge(Level.WARNING, "pending", PENDING_SYMBOL)
    return Badge(Level.OK, "inactive")


def ordered_alerts(alerts: tuple[AlertState, ...], now: datetime) -> list[AlertState]:
    """Firing before pending, critical before warning, longest-running first."""
    shown = [a for a in alerts if a.phase is not AlertPhase.INACTIVE and not a.unknown]

    def key(a: AlertState) -> tuple[int, int, float]:
        return (
            0 if a.phase is AlertPhase.FIRING else 1,
            0 if a.severity is AlertSeverity.CRITICAL else 1,
            -a.elapsed(now),
        )

    return sorted(shown, key=key)


def unknown_alerts(alerts: tuple[AlertState, ...]) -> list[AlertState]:
    """Rules whose input was unknown (they neither fire nor pass)."""
    return [a for a in alerts if a.unknown]


def snapshot_age(snapshot: Snapshot, now: datetime) -> float:
    """Seconds since the snapshot was taken (never negative)."""
    return max(0.0, (now - snapshot.taken_at).total_seconds())


def format_latency(ms: float | None) -> str:
    """``2.4 ms``, ``123 ms``, ``1.2 s``; ``—`` when there is no measurement."""
    if ms is None or not math.isfinite(ms):
        return "—"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.1f} s"
