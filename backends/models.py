"""The shared vocabulary: pydantic models every layer speaks.

Back-ends return these, the monitor assembles them into one immutable
:class:`Snapshot` per sweep, rules and gates judge them, widgets render them.
All models are frozen: a snapshot that reached the screen is never changed.

A value that could not be observed is carried as ``None`` together with a
state that says why (``unknown``, ``stale``, ``down``, ...). Nothing here ever
turns missing data into a pass.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ORCHESTRATORS: tuple[str, ...] = (
    "performance_suite",
    "cache_optimizer",
    "constitutional_compliance_framework",
    "test_orchestrator",
    "security_orchestrator",
    "deployment_orchestrator",
    "monitoring_orchestrator",
    "documentation_orchestrator",
    "unified_orchestrator",
)
"""The nine ACGS orchestrators, in the runbook's order."""

DEFAULT_CONSTITUTIONAL_HASH = "cdd01ef066bc6cf2"


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class Frozen(BaseModel):
    """Base for every model: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Environment(StrEnum):
    """The two sides of the blue-green deployment."""

    BLUE = "blue"
    GREEN = "green"


class ServiceState(StrEnum):
    """What a health probe concluded about one orchestrator."""

    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"
    BAD_RESPONSE = "bad_response"
    UNKNOWN = "unknown"


class HashVerdict(StrEnum):
    """The constitutional hash as seen in one place (body or header)."""

    OK = "ok"
    MISMATCH = "mismatch"
    MISSING = "missing"
    UNKNOWN = "unknown"


class ServiceHealth(Frozen):
    """One orchestrator's health, as probed over HTTP."""

    environment: Environment
    service: str
    url: str
    state: ServiceState
    reason: str = ""
    """Why the state is what it is: "connection refused", "timeout after 1.0 s", "malformed JSON", ..."""
    latency_ms: float | None = None
    http_status: int | None = None
    version: str | None = None
    body_hash: str | None = None
    header_hash: str | None = None
    body_hash_verdict: HashVerdict = HashVerdict.UNKNOWN
    header_hash_verdict: HashVerdict = HashVerdict.UNKNOWN
    checked_at: datetime = Field(default_factory=utcnow)
    stale: bool = False
    """True when this is not a fresh observation: the last one is past its age (shown as stale)."""

    @property
    def hash_ok(self) -> bool:
        """True only when both body and header carry the expected hash."""
        return (
            self.body_hash_verdict is HashVerdict.OK and self.header_hash_verdict is HashVerdict.OK
        )

    @property
    def violations(self) -> list[str]:
        """Named constitutional-hash violations for this response."""
        out: list[str] = []
        for where, verdict, seen in (
            ("body", self.body_hash_verdict, self.body_hash),
            ("header", self.header_hash_verdict, self.header_hash),
        ):
            if verdict is HashVerdict.MISMATCH:
                out.append(f"{self.service}: {where} hash mismatch ({seen!r})")
            elif verdict is HashVerdict.MISSING:
                out.append(f"{self.service}: {where} hash missing")
        return out


class MetricValue(Frozen):
    """One measured number, with where and when it came from.

    ``value`` is ``None`` when nothing usable came back (empty result, NaN,
    error); ``error`` then says what happened. ``stale`` is set when the
    sample is older than its allowed age.
    """

    name: str
    value: float | None = None
    unit: str = ""
    sampled_at: datetime | None = None
    source: str = ""
    stale: bool = False
    error: str | None = None
    absent: bool = False
    """The source answered and positively has no such series (the services do not
    export it) -- as opposed to "no data" because something failed. ``value`` is
    ``None`` either way; only the compliance score treats the two differently."""

    @property
    def known(self) -> bool:
        """True when there is a finite, fresh value to judge."""
        return self.value is not None and math.isfinite(self.value) and not self.stale


class EnvironmentMetrics(Frozen):
    """The performance and compliance metrics of one environment."""

    p99_latency_ms: MetricValue
    requests_per_second: MetricValue
    error_rate: MetricValue
    """Share of 5xx responses, 0..1."""
    cache_hit_rate: MetricValue
    """0..1."""
    compliance_score: MetricValue
    """The ``acgs_constitutional_compliance_score`` gauge, 0..100."""
    hash_validation_failure_rate: MetricValue
    """Share of requests failing hash validation, 0..1."""
    auth_failures_per_minute: MetricValue

    def all(self) -> list[MetricValue]:
        """Every metric, in display order."""
        return [
            self.p99_latency_ms,
            self.requests_per_second,
            self.error_rate,
            self.cache_hit_rate,
            self.compliance_score,
            self.hash_validation_failure_rate,
            self.auth_failures_per_minute,
        ]


class ProbeState(StrEnum):
    """The outcome of probing an engine (Redis, PostgreSQL, the load balancer)."""

    OK = "ok"
    DEGRADED = "degraded"
    AUTH_FAILED = "auth_failed"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    ERROR = "error"
    NOT_CONFIGURED = "not_configured"
    UNKNOWN = "unknown"


class RedisStatus(Frozen):
    """One environment's Redis, as seen by PING and INFO."""

    state: ProbeState
    reason: str = ""
    ping_ms: float | None = None
    role: str | None = None
    connected_clients: int | None = None
    used_memory_bytes: int | None = None
    cluster_enabled: bool | None = None
    cluster_state: str | None = None
    keyspace_hit_ratio: float | None = None
    checked_at: datetime = Field(default_factory=utcnow)
    stale: bool = False
    """True when this is not a fresh observation: the last one is past its age (shown as stale)."""

    @property
    def operational(self) -> bool:
        """Reachable, and in cluster mode the cluster says ``ok``."""
        if self.state is not ProbeState.OK:
            return False
        return not self.cluster_enabled or self.cluster_state == "ok"


class ReplicaLag(Frozen):
    """One row of ``pg_stat_replication`` on the primary."""

    application_name: str
    client_addr: str | None = None
    state: str
    sync_state: str
    byte_lag: int | None = None
    replay_lag_seconds: float | None = None


class ReplicationStatus(Frozen):
    """PostgreSQL connectivity and streaming replication for one environment."""

    state: ProbeState
    reason: str = ""
    primary_reachable: bool | None = None
    replicas: tuple[ReplicaLag, ...] = ()
    expected_replicas: int = 0
    replica_in_recovery: bool | None = None
    """``pg_is_in_recovery()`` on the replica DSN, when one is configured."""
    synchronized: bool | None = None
    """Streaming, enough replicas, and lag within the configured bytes and seconds. None = unknown."""
    checked_at: datetime = Field(default_factory=utcnow)
    stale: bool = False
    """True when this is not a fresh observation: the last one is past its age (shown as stale)."""


class TrafficSplit(Frozen):
    """The traffic split as read back from the load balancer (never as last set)."""

    green_percentage: float | None
    """None when it could not be read back."""
    blue_weight: int | None = None
    green_weight: int | None = None
    source: str = ""
    error: str | None = None
    read_at: datetime = Field(default_factory=utcnow)
    stale: bool = False
    """True when this is not a fresh observation: the last one is past its age (shown as stale)."""

    @property
    def blue_percentage(self) -> float | None:
        """The share of traffic that goes to blue."""
        return None if self.green_percentage is None else 100.0 - self.green_percentage


class ComplianceCheck(Frozen):
    """One term of the compliance score."""

    name: str
    passed: bool | None
    """None when the check could not be evaluated; it then counts as failed."""
    detail: str = ""


class ComplianceResult(Frozen):
    """The transparent compliance score: share of checks that pass.

    ``score = 100 * passed / total``; a check that could not be evaluated
    counts as failed. 100 % only when every check passes.
    """

    checks: tuple[ComplianceCheck, ...] = ()
    notes: tuple[str, ...] = ()
    """Why a check was left out of the score (e.g. a gauge no service exports)."""

    @property
    def score(self) -> float | None:
        """Percentage of checks that passed, None when there are no checks."""
        if not self.checks:
            return None
        return 100.0 * sum(1 for c in self.checks if c.passed is True) / len(self.checks)

    @property
    def failed(self) -> list[ComplianceCheck]:
        """The checks that failed or could not be evaluated."""
        return [c for c in self.checks if c.passed is not True]


class EnvironmentSnapshot(Frozen):
    """Everything observed about one environment in one sweep."""

    environment: Environment
    services: tuple[ServiceHealth, ...] = ()
    metrics: EnvironmentMetrics
    compliance: ComplianceResult = ComplianceResult()
    redis: RedisStatus
    replication: ReplicationStatus
    taken_at: datetime = Field(default_factory=utcnow)

    @property
    def services_up(self) -> int:
        """How many orchestrators answered ``up``."""
        return sum(1 for s in self.services if s.state is ServiceState.UP)


class AlertSeverity(StrEnum):
    """The runbook's two response classes."""

    CRITICAL = "critical"
    WARNING = "warning"


class AlertPhase(StrEnum):
    """Prometheus-style alert lifecycle."""

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


class AlertState(Frozen):
    """One alert rule's state at the time of a snapshot."""

    rule_id: str
    name: str
    environment: Environment | None
    severity: AlertSeverity
    phase: AlertPhase
    summary: str
    """E.g. ``P99 > 5 ms``."""
    for_seconds: float
    active_since: datetime | None = None
    value: float | None = None
    unknown: bool = False
    """True when the rule's input was unknown (treated as not passing for gates)."""
    detail: str = ""
    """What the rule saw, or why its input is unknown ("no security scan result given", ...)."""

    def elapsed(self, now: datetime) -> float:
        """Seconds the condition has held at ``now``."""
        if self.active_since is None:
            return 0.0
        return max(0.0, (now - self.active_since).total_seconds())


class Snapshot(Frozen):
    """One immutable sweep of the whole estate."""

    taken_at: datetime
    duration_ms: float
    blue: EnvironmentSnapshot
    green: EnvironmentSnapshot
    traffic: TrafficSplit
    alerts: tuple[AlertState, ...] = ()
    constitutional_hash: str = DEFAULT_CONSTITUTIONAL_HASH
    sequence: int = 0

    def env(self, environment: Environment | str) -> EnvironmentSnapshot:
        """The snapshot of one environment."""
        return self.blue if Environment(environment) is Environment.BLUE else self.green

    @property
    def firing(self) -> list[AlertState]:
        """Alerts currently firing."""
        return [a for a in self.alerts if a.phase is AlertPhase.FIRING]


class AuditRecord(Frozen):
    """One append-only, hash-chained audit record."""

    seq: int
    at: datetime
    operator: str
    action: str
    deployment_id: str | None = None
    constitutional_hash: str
    fence: int | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str
