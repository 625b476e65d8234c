"""Check predicates: structured conditions over the live Snapshot, never ``eval``.

A runbook check step lists predicates as TOML tables; which predicate a table is
follows from the one key that names it::

    { metric = "p99_latency_ms", environment = "green", op = "<", value = 5 }
    { all_services = "up", environment = "green", min_count = 9 }
    { hash = "ok", environment = "both" }
    { compliance_score = 100, environment = "green" }            # op defaults to ">="
    { replication = "synchronized", environment = "both" }
    { database = "reachable", environment = "green" }
    { redis = "operational", environment = "both" }
    { traffic_green = "==", value = 0 }
    { no_alerts_firing = true, severity = "critical", during = "phase" }
    { no_alerts_firing = true, severity = "critical", environment = "serving", during = "procedure" }
    { monitoring = "reporting", environment = "both" }
    { security = "vulnerabilities" }   # or "sbom", or "score" with op/threshold
    { step_passed = "smoke-tests-green", accept_attested = true }
    { no_increase = "error_rate", environment = "green", baseline = "blue" }

Each predicate evaluates to one :class:`Outcome` per environment it covers:
``pass``, ``fail`` or ``unknown``, with the measured value and the threshold as
evidence. No snapshot, a stale snapshot, a metric without a value, a probe that
is not configured: all ``unknown``, and an unknown outcome never opens a gate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from backends.models import (
    AlertPhase,
    AlertState,
    Environment,
    EnvironmentMetrics,
    EnvironmentSnapshot,
    HashVerdict,
    MetricValue,
    ProbeState,
    ServiceState,
    Snapshot,
)
from console.config import Thresholds
from console.runbook import security as sec

Op = Literal["<", "<=", ">", ">=", "==", "!="]
EnvScope = Literal["blue", "green", "both"]
AlertScope = Literal["blue", "green", "both", "serving"]
"""Whose alerts count: an environment, both, or ``serving``: the environment(s) that carried
traffic (a share above 0 in the load balancer's read-back) when the alert was active."""
MetricName = Literal[
    "p99_latency_ms",
    "requests_per_second",
    "error_rate",
    "cache_hit_rate",
    "compliance_score",
    "hash_validation_failure_rate",
    "auth_failures_per_minute",
]
THRESHOLD_NAMES: frozenset[str] = frozenset(
    name
    for name, info in Thresholds.model_fields.items()
    if info.annotation in (float, int) and name != "stale_after_s"
)
"""Threshold names a predicate may refer to instead of a literal value."""


class Verdict(StrEnum):
    """One predicate's conclusion for one environment."""

    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"


class Outcome(BaseModel):
    """Evidence: one predicate judged on one environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    check: str
    """The predicate in words, e.g. ``p99_latency_ms < 5``."""
    environment: str | None = None
    verdict: Verdict
    measured: str = ""
    """What was seen, as shown (``4.2 ms``, ``9/9 up``, ``unknown``)."""
    value: float | None = None
    """The measured number, where there is one."""
    threshold: str = ""
    """What it was compared with (``< 5``)."""
    detail: str = ""
    """Why, when it is not a plain pass (``connection refused``, ``snapshot 12 s old``)."""


class _Mk:
    """Builds outcomes sharing a check, environment and threshold."""

    def __init__(
        self, check: str, environment: str | None = None, threshold: str = "", measured: str = ""
    ) -> None:
        self.check = check
        self.environment = environment
        self.threshold = threshold
        self.measured = measured

    def __call__(
        self,
        verdict: Verdict,
        measured: str | None = None,
        *,
        value: float | None = None,
        threshold: str | None = None,
        detail: str = "",
    ) -> Outcome:
        return Outcome(
            check=self.check,
            environment=self.environment,
            verdict=verdict,
            measured=self.measured if measured is None else measured,
            value=value,
            threshold=self.threshold if threshold is None else threshold,
            detail=detail,
        )


class FiredAlert(BaseModel):
    """An alert seen firing while a procedure ran: one record per rule, environment, phase
    and ``serving``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule_id: str
    name: str
    severity: str
    environment: str | None
    phase_id: str
    first_seen: datetime
    active_since: datetime | None = None
    """When the rule's condition began to hold (None: not given)."""
    serving: bool | None = None
    """Whether its environment carried traffic at some moment from ``active_since`` to
    ``first_seen`` (load balancer read-back); None when the split was not known then, or
    for a rule of no environment (which always counts)."""


class BlindStretch(BaseModel):
    """A stretch of time in which an alert rule had no data (it could not say if it fired).

    Seen blind again within ``stale_after_s`` of its end, the same stretch goes on.
    """

    model_config = ConfigDict(extra="forbid")

    rule_id: str
    name: str
    severity: str
    environment: str | None
    serving: bool | None
    """As :attr:`FiredAlert.serving`, for the moments the rule was blind."""
    phase_id: str
    """The phase it began in."""
    start: datetime
    end: datetime | None = None
    """The first snapshot after it in which the rule had data again (None: not yet)."""
    last_seen: datetime
    """The last snapshot in which the rule had no data."""

    def length_within(self, start: datetime, end: datetime) -> float:
        """Seconds of this stretch inside ``[start, end]``."""
        lo = max(self.start, start)
        hi = min(self.end or end, end)
        return max(0.0, (hi - lo).total_seconds())


class TrafficMark(BaseModel):
    """The traffic split read back from the load balancer, from ``at`` until the next mark."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    green_percentage: float | None
    """None: the split could not be read back (or only a stale value)."""


class WatchSpan(BaseModel):
    """A stretch of time in which the alert rules were seen, snapshot after snapshot."""

    model_config = ConfigDict(extra="forbid")

    start: datetime
    end: datetime


def serves(environment: str, green_percentage: float | None) -> bool | None:
    """Whether ``environment`` takes a share of traffic (None: the split is unknown)."""
    if green_percentage is None or not math.isfinite(green_percentage):
        return None
    share = green_percentage if environment == "green" else 100.0 - green_percentage
    return share > 0.0


def served_between(
    environment: str, marks: Sequence[TrafficMark], start: datetime, end: datetime
) -> bool | None:
    """Whether ``environment`` carried traffic at any moment of ``[start, end]``.

    ``marks`` (in time order) each hold until the next one. True as soon as one mark in
    force during the interval gives it a share; otherwise None when part of the interval
    is not covered by a known split (before the first mark, or a mark without a value),
    False only when every moment is known to carry no traffic to it.
    """
    if end < start:
        start, end = end, start
    in_force: TrafficMark | None = None
    during: list[TrafficMark] = []
    for m in sorted(marks, key=lambda m: m.at):
        if m.at <= start:
            in_force = m
        elif m.at <= end:
            during.append(m)
    verdicts = [None if in_force is None else serves(environment, in_force.green_percentage)]
    verdicts += [serves(environment, m.green_percentage) for m in during]
    if any(v is True for v in verdicts):
        return True
    return None if any(v is None for v in verdicts) else False


def sweep_mark(snap: Snapshot) -> TrafficMark:
    """The sweep's own read of the split: in force for the alert states of its snapshot.

    A stale or missing read-back is a mark without a value, at the snapshot's time.
    """
    split = snap.traffic
    known = None if split.stale else split.green_percentage
    return TrafficMark(
        at=split.read_at if known is not None else snap.taken_at, green_percentage=known
    )


def alert_serving(
    alert: AlertState, marks: Sequence[TrafficMark], snap: Snapshot, mark: TrafficMark
) -> bool | None:
    """Whether the alert's environment carried traffic while the alert was active.

    ``marks`` include the sweep's own ``mark`` (:func:`sweep_mark`). None for an
    estate-wide alert, or when the split is unknown for part of that time.
    """
    if alert.environment is None:
        return None
    start = alert.active_since or mark.at
    return served_between(alert.environment.value, marks, start, max(snap.taken_at, mark.at))


def unwatched(
    spans: Sequence[WatchSpan], start: datetime, end: datetime, allowed_s: float
) -> list[tuple[datetime, datetime]]:
    """The stretches of ``[start, end]`` longer than ``allowed_s`` that no span covers."""
    gaps: list[tuple[datetime, datetime]] = []
    cursor = start
    for span in sorted(spans, key=lambda s: s.start):
        if span.end <= cursor:
            continue
        if (span.start - cursor).total_seconds() > allowed_s:
            gaps.append((cursor, span.start))
        cursor = max(cursor, span.end)
        if cursor >= end:
            break
    if (end - cursor).total_seconds() > allowed_s:
        gaps.append((cursor, end))
    return gaps


def bracketed_serving(
    marks: Sequence[TrafficMark], environment: str, since: datetime, until: datetime
) -> bool | None:
    """Whether ``environment`` carried traffic from ``since`` to ``until``, when the split
    read back then was unknown: the known read-backs just before ``since``, within the
    span, and just after ``until`` must all agree (all with a share, or all without one).

    None when a side has no known read-back or they disagree (the split may have moved
    while it could not be read): the alert then stays unknown, never a pass.
    """

    known = [m for m in marks if serves(environment, m.green_percentage) is not None]
    before = [m for m in known if m.at <= since]
    after = [m for m in known if m.at >= until]
    if not before or not after:
        return None
    inside = [m for m in known if since < m.at < until]
    answers = {serves(environment, m.green_percentage) for m in (before[-1], *inside, after[0])}
    return answers.pop() if len(answers) == 1 else None


@dataclass(frozen=True)
class AlertHistory:
    """What the engine saw of the alert rules since the procedure started.

    A predicate judging a phase or the whole procedure needs it: without one, or with a
    stretch of the period no snapshot covered, "no alert fired" is unknown, never a pass.
    """

    procedure_started_at: datetime
    phase_started_at: datetime | None = None
    """When the current phase started (None: not started)."""
    watched: Sequence[WatchSpan] = ()
    """When alert states were seen (a stretch between spans is unwatched)."""
    traffic: Sequence[TrafficMark] = ()
    """The split read back over time, in time order."""
    fired: Sequence[FiredAlert] = ()
    """Alerts seen firing."""
    blind: Sequence[BlindStretch] = ()
    """Rules without data, and for how long (longer than ``stale_after_s`` is unknown)."""


@dataclass(frozen=True)
class SecurityInputs:
    """Where the security evidence comes from (config ``[security]``)."""

    vulnerability_report: Path | None = None
    sbom: Path | None = None
    security_score_file: Path | None = None
    security_score_metric: MetricValue | None = None


@dataclass(frozen=True)
class EvaluationContext:
    """Everything a predicate may look at."""

    snapshot: Snapshot | None
    now: datetime
    thresholds: Thresholds
    expected_hash: str
    security: SecurityInputs = SecurityInputs()
    step_states: Mapping[str, str] = field(default_factory=dict)
    """Step id -> state value (``passed``, ``attested``, ...) in the running procedure."""
    baseline: Snapshot | None = None
    """The snapshot taken when traffic first moved (the pre-migration baseline)."""
    history: AlertHistory | None = None
    """Alerts seen since the procedure started (None: no history kept)."""
    phase_id: str | None = None

    @property
    def stale_after_s(self) -> float:
        """Age beyond which a snapshot no longer counts."""
        return self.thresholds.stale_after_s

    def freshness_problem(self) -> str | None:
        """Why the snapshot cannot be judged (None when it can)."""
        if self.snapshot is None:
            return "no snapshot observed yet"
        age = (self.now - self.snapshot.taken_at).total_seconds()
        if age > self.stale_after_s:
            return f"snapshot is {age:.1f} s old (stale after {self.stale_after_s:g} s)"
        return None


def compare(measured: float, op: str, bound: float, tolerance: float = 0.0) -> bool:
    """``measured op bound``; ``==``/``!=`` allow ``tolerance``."""
    if op == "<":
        return measured < bound
    if op == "<=":
        return measured <= bound
    if op == ">":
        return measured > bound
    if op == ">=":
        return measured >= bound
    if op == "==":
        return abs(measured - bound) <= tolerance
    if op == "!=":
        return abs(measured - bound) > tolerance
    raise ValueError(f"unknown comparison {op!r}")


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _envs(scope: str) -> list[Environment]:
    return list(Environment) if scope == "both" else [Environment(scope)]


def _metric_unknown_reason(m: MetricValue) -> str:
    if m.error:
        return m.error
    if m.stale:
        return "stale sample"
    if m.value is None:
        return "no value"
    return "not a finite number"


class _Predicate(BaseModel):
    """Base of every predicate: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    TAG: ClassVar[str]
    NEEDS_SNAPSHOT: ClassVar[bool] = True

    def describe(self) -> str:  # pragma: no cover - every subclass overrides
        """The predicate in words."""
        raise NotImplementedError

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:  # pragma: no cover
        raise NotImplementedError

    def _scope(self) -> list[str | None]:
        env = getattr(self, "environment", None)
        return [e.value for e in _envs(env)] if isinstance(env, str) else [None]

    def evaluate(self, ctx: EvaluationContext) -> list[Outcome]:
        """Judge this predicate in ``ctx``; one outcome per environment covered."""
        if self.NEEDS_SNAPSHOT:
            problem = ctx.freshness_problem()
            if problem is not None:
                return [
                    Outcome(
                        check=self.describe(),
                        environment=e,
                        verdict=Verdict.UNKNOWN,
                        measured="unknown",
                        detail=problem,
                    )
                    for e in self._scope()
                ]
            assert ctx.snapshot is not None
            return self._judge(ctx, ctx.snapshot)
        return self._judge_without_snapshot(ctx)

    def _judge_without_snapshot(self, ctx: EvaluationContext) -> list[Outcome]:  # pragma: no cover
        raise NotImplementedError


def _resolve_bound(value: float | None, threshold: str | None, thresholds: Thresholds) -> float:
    if threshold is not None:
        return float(getattr(thresholds, threshold))
    assert value is not None
    return value


def _check_threshold_name(v: str | None) -> str | None:
    if v is not None and v not in THRESHOLD_NAMES:
        raise ValueError(
            f"unknown threshold {v!r}; use one of the [thresholds] names: "
            + ", ".join(sorted(THRESHOLD_NAMES))
        )
    return v


class MetricCheck(_Predicate):
    """A metric of an environment against a bound (a number or a ``[thresholds]`` name)."""

    TAG: ClassVar[str] = "metric"
    metric: MetricName
    environment: EnvScope = "green"
    op: Op
    value: float | None = None
    """A literal bound ..."""
    threshold: str | None = None
    """... or the name of a ``[thresholds]`` value (so the site's config decides)."""

    _name = field_validator("threshold")(_check_threshold_name)

    @model_validator(mode="after")
    def _one_bound(self) -> MetricCheck:
        if (self.value is None) == (self.threshold is None):
            raise ValueError(
                "give exactly one of 'value' (a number) or 'threshold' (a [thresholds] name)"
            )
        return self

    def describe(self) -> str:
        bound = self.threshold if self.threshold is not None else _fmt(self.value or 0.0)
        return f"{self.environment} {self.metric} {self.op} {bound}"

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        bound = _resolve_bound(self.value, self.threshold, ctx.thresholds)
        out = []
        for env in _envs(self.environment):
            m: MetricValue = getattr(snap.env(env).metrics, self.metric)
            base = _Mk(
                check=self.describe(),
                environment=env.value,
                threshold=f"{self.op} {_fmt(bound)}",
            )
            if not m.known or m.value is None:
                out.append(
                    base(
                        verdict=Verdict.UNKNOWN,
                        measured="unknown",
                        detail=_metric_unknown_reason(m),
                    )
                )
                continue
            ok = compare(m.value, self.op, bound)
            out.append(
                base(
                    verdict=Verdict.PASS if ok else Verdict.FAIL,
                    measured=f"{_fmt(m.value)} {m.unit}".strip(),
                    value=m.value,
                )
            )
        return out


class ServicesCheck(_Predicate):
    """Every orchestrator of an environment up (or, after a shutdown, down)."""

    TAG: ClassVar[str] = "all_services"
    all_services: Literal["up", "down"]
    environment: EnvScope = "green"
    min_count: int = Field(1, ge=1)
    """How many services must be observed (the runbook's "all 9")."""

    def describe(self) -> str:
        return f"{self.environment}: all services {self.all_services} (at least {self.min_count})"

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        return [self._one(snap.env(env)) for env in _envs(self.environment)]

    def _one(self, es: EnvironmentSnapshot) -> Outcome:
        base = _Mk(
            check=self.describe(),
            environment=es.environment.value,
            threshold=f"{self.all_services}, >= {self.min_count}",
        )
        services = es.services
        if not services:
            return base(verdict=Verdict.UNKNOWN, measured="no services observed")
        want = ServiceState.UP if self.all_services == "up" else ServiceState.DOWN
        matching = [s for s in services if s.state is want]
        unknown = [s for s in services if s.state is ServiceState.UNKNOWN]
        wrong = [s for s in services if s.state not in (want, ServiceState.UNKNOWN)]
        measured = f"{len(matching)}/{len(services)} {self.all_services}"
        if wrong:
            detail = "; ".join(
                f"{s.service}: {s.state.value}" + (f" ({s.reason})" if s.reason else "")
                for s in wrong
            )
            return base(verdict=Verdict.FAIL, measured=measured, value=len(matching), detail=detail)
        if unknown:
            detail = "; ".join(
                f"{s.service}: unknown" + (f" ({s.reason})" if s.reason else "") for s in unknown
            )
            return base(
                verdict=Verdict.UNKNOWN,
                measured=measured,
                value=len(matching),
                detail=detail,
            )
        if len(matching) < self.min_count:
            return base(
                verdict=Verdict.FAIL,
                measured=measured,
                value=len(matching),
                detail=f"only {len(matching)} service(s) observed, {self.min_count} expected",
            )
        return base(verdict=Verdict.PASS, measured=measured, value=len(matching))


class HashCheck(_Predicate):
    """Every service of an environment carries the constitutional hash (body and header)."""

    TAG: ClassVar[str] = "hash"
    hash: Literal["ok"]
    environment: EnvScope = "both"
    min_count: int = Field(1, ge=1)

    def describe(self) -> str:
        return (
            f"{self.environment}: constitutional hash ok in every service "
            f"(at least {self.min_count})"
        )

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        out = []
        for env in _envs(self.environment):
            es = snap.env(env)
            base = _Mk(
                check=self.describe(),
                environment=env.value,
                threshold=f"{ctx.expected_hash} in body and header",
            )
            if snap.constitutional_hash != ctx.expected_hash:
                out.append(
                    base(
                        verdict=Verdict.FAIL,
                        measured=snap.constitutional_hash,
                        detail=f"snapshot judged against {snap.constitutional_hash}, "
                        f"the console expects {ctx.expected_hash}",
                    )
                )
                continue
            if not es.services:
                out.append(base(verdict=Verdict.UNKNOWN, measured="no services observed"))
                continue
            ok = [s for s in es.services if s.hash_ok]
            violations = [v for s in es.services for v in s.violations]
            unknown = [
                s.service
                for s in es.services
                if not s.hash_ok
                and not s.violations
                and HashVerdict.UNKNOWN in (s.body_hash_verdict, s.header_hash_verdict)
            ]
            measured = f"{len(ok)}/{len(es.services)} ok"
            if violations:
                out.append(
                    base(
                        verdict=Verdict.FAIL,
                        measured=measured,
                        value=len(ok),
                        detail="; ".join(violations),
                    )
                )
            elif unknown:
                out.append(
                    base(
                        verdict=Verdict.UNKNOWN,
                        measured=measured,
                        value=len(ok),
                        detail="hash not seen: " + ", ".join(unknown),
                    )
                )
            elif len(ok) < self.min_count:
                out.append(
                    base(
                        verdict=Verdict.FAIL,
                        measured=measured,
                        value=len(ok),
                        detail=f"only {len(ok)} service(s) observed, {self.min_count} expected",
                    )
                )
            else:
                out.append(base(verdict=Verdict.PASS, measured=measured, value=len(ok)))
        return out


class ComplianceScoreCheck(_Predicate):
    """The console's transparent compliance score (share of compliance checks passing)."""

    TAG: ClassVar[str] = "compliance_score"
    compliance_score: float = Field(ge=0, le=100)
    op: Op = ">="
    environment: EnvScope = "green"

    def describe(self) -> str:
        return f"{self.environment}: compliance score {self.op} {_fmt(self.compliance_score)}%"

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        out = []
        for env in _envs(self.environment):
            result = snap.env(env).compliance
            base = _Mk(
                check=self.describe(),
                environment=env.value,
                threshold=f"{self.op} {_fmt(self.compliance_score)}%",
            )
            score = result.score
            if score is None:
                out.append(
                    base(
                        verdict=Verdict.UNKNOWN,
                        measured="unknown",
                        detail="no compliance checks were evaluated",
                    )
                )
                continue
            ok = compare(score, self.op, self.compliance_score)
            detail = "; ".join(f"{c.name}: {c.detail or 'not passed'}" for c in result.failed)
            out.append(
                base(
                    verdict=Verdict.PASS if ok else Verdict.FAIL,
                    measured=f"{_fmt(score)}%",
                    value=score,
                    detail=detail,
                )
            )
        return out


_UNKNOWN_PROBE = (ProbeState.NOT_CONFIGURED, ProbeState.UNKNOWN, ProbeState.TIMEOUT)


class ReplicationCheck(_Predicate):
    """PostgreSQL streaming replication synchronized (``pg_stat_replication``)."""

    TAG: ClassVar[str] = "replication"
    replication: Literal["synchronized"]
    environment: EnvScope = "both"

    def describe(self) -> str:
        return f"{self.environment}: database replication synchronized"

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        out = []
        for env in _envs(self.environment):
            r = snap.env(env).replication
            base = _Mk(check=self.describe(), environment=env.value, threshold="synchronized")
            lag = ", ".join(
                f"{x.application_name} {x.state}/{x.sync_state}"
                + (f" {x.byte_lag} B" if x.byte_lag is not None else "")
                for x in r.replicas
            )
            measured = f"{len(r.replicas)}/{r.expected_replicas} replicas" + (
                f": {lag}" if lag else ""
            )
            if r.state in _UNKNOWN_PROBE:
                out.append(
                    base(
                        verdict=Verdict.UNKNOWN,
                        measured=r.state.value,
                        detail=r.reason or r.state.value,
                    )
                )
            elif r.synchronized is True:
                out.append(base(verdict=Verdict.PASS, measured=measured))
            elif r.synchronized is False or r.state is not ProbeState.OK:
                out.append(
                    base(
                        verdict=Verdict.FAIL,
                        measured=measured,
                        detail=r.reason or r.state.value,
                    )
                )
            else:
                out.append(
                    base(
                        verdict=Verdict.UNKNOWN,
                        measured=measured,
                        detail=r.reason or "synchronization could not be determined",
                    )
                )
        return out


class DatabaseCheck(_Predicate):
    """The environment's PostgreSQL primary answers."""

    TAG: ClassVar[str] = "database"
    database: Literal["reachable"]
    environment: EnvScope = "green"

    def describe(self) -> str:
        return f"{self.environment}: database connectivity established"

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        out = []
        for env in _envs(self.environment):
            r = snap.env(env).replication
            base = _Mk(
                check=self.describe(),
                environment=env.value,
                threshold="primary reachable",
            )
            if r.primary_reachable is True:
                out.append(base(verdict=Verdict.PASS, measured="reachable"))
            elif r.primary_reachable is False and r.state not in _UNKNOWN_PROBE:
                out.append(
                    base(
                        verdict=Verdict.FAIL,
                        measured=r.state.value,
                        detail=r.reason or "primary unreachable",
                    )
                )
            else:
                out.append(
                    base(
                        verdict=Verdict.UNKNOWN,
                        measured=r.state.value,
                        detail=r.reason or "reachability unknown",
                    )
                )
        return out


class RedisCheck(_Predicate):
    """The environment's Redis operational (PING; in cluster mode ``cluster_state:ok``)."""

    TAG: ClassVar[str] = "redis"
    redis: Literal["operational"]
    environment: EnvScope = "both"

    def describe(self) -> str:
        return f"{self.environment}: Redis operational"

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        out = []
        for env in _envs(self.environment):
            r = snap.env(env).redis
            base = _Mk(check=self.describe(), environment=env.value, threshold="operational")
            if r.state in _UNKNOWN_PROBE:
                out.append(
                    base(
                        verdict=Verdict.UNKNOWN,
                        measured=r.state.value,
                        detail=r.reason or r.state.value,
                    )
                )
            elif r.operational:
                ping = f", PING {_fmt(r.ping_ms)} ms" if r.ping_ms is not None else ""
                out.append(base(verdict=Verdict.PASS, measured=f"ok{ping}", value=r.ping_ms))
            else:
                why = r.reason or (
                    f"cluster_state {r.cluster_state}" if r.cluster_enabled else r.state.value
                )
                out.append(base(verdict=Verdict.FAIL, measured=r.state.value, detail=why))
        return out


class TrafficCheck(_Predicate):
    """The green share of traffic, as read back from the load balancer."""

    TAG: ClassVar[str] = "traffic_green"
    traffic_green: Op
    value: float = Field(ge=0, le=100)
    tolerance: float = Field(0.5, ge=0)
    """Allowed difference for ``==``/``!=`` (weights are whole numbers out of 256)."""

    def describe(self) -> str:
        return f"green traffic {self.traffic_green} {_fmt(self.value)}%"

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        t = snap.traffic
        base = _Mk(check=self.describe(), threshold=f"{self.traffic_green} {_fmt(self.value)}%")
        if t.green_percentage is None or not math.isfinite(t.green_percentage):
            return [
                base(
                    verdict=Verdict.UNKNOWN,
                    measured="unknown",
                    detail=t.error or "the split could not be read back",
                )
            ]
        ok = compare(t.green_percentage, self.traffic_green, self.value, self.tolerance)
        return [
            base(
                verdict=Verdict.PASS if ok else Verdict.FAIL,
                measured=f"{_fmt(t.green_percentage)}% green",
                value=t.green_percentage,
                detail=f"read back from {t.source}" if t.source else "",
            )
        ]


class AlertsCheck(_Predicate):
    """No alert firing now (or none fired during the phase / the procedure).

    ``environment = "serving"`` judges the environment(s) that carried traffic when an
    alert was active, as the load balancer read it back: blue while it has a share, green
    from its first share on. An alert of an environment that took no traffic then (blue
    after the switch to 100 % green, during its planned shutdown) does not count and is
    listed as such; one seen while the split was unknown makes the check unknown. Alerts
    of no environment (the audit chain, security) always count.

    ``during = "phase"``/``"procedure"`` needs the engine's :class:`AlertHistory`: without
    it, or with a stretch of the period longer than ``stale_after_s`` in which no snapshot
    showed the alert rules (the console was not running, the monitor stalled) or a rule in
    scope had no data, the verdict is unknown, never a pass.
    """

    TAG: ClassVar[str] = "no_alerts_firing"
    no_alerts_firing: Literal[True]
    severity: Literal["critical", "warning", "any"] = "any"
    environment: AlertScope = "both"
    """``blue``, ``green``, ``both``, or ``serving`` (whichever carried traffic at the time)."""
    during: Literal["now", "phase", "procedure"] = "now"
    """``now``: the current snapshot; ``phase``/``procedure``: also any alert fired since then."""

    def describe(self) -> str:
        sev = "" if self.severity == "any" else f"{self.severity} "
        when = "" if self.during == "now" else f" during the {self.during}"
        where = "serving environment" if self.environment == "serving" else self.environment
        return f"no {sev}alerts firing ({where}){when}"

    def _scope(self) -> list[str | None]:
        return [None]

    def _severity_ok(self, severity: str) -> bool:
        return self.severity == "any" or severity == self.severity

    def _counts(self, environment: str | None, serving: bool | None) -> bool | None:
        """True: the alert counts; False: out of scope; None: cannot tell (split unknown)."""
        if environment is None or self.environment == "both":
            return True
        if self.environment == "serving":
            return serving
        return self.environment == environment

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        base = _Mk(check=self.describe(), threshold="none firing")
        if not snap.alerts:
            return [
                base(
                    verdict=Verdict.UNKNOWN,
                    measured="no alert rules evaluated",
                    detail="the snapshot carries no alert states",
                )
            ]
        hist = ctx.history
        mark = sweep_mark(snap)
        marks = [*(hist.traffic if hist else ()), mark]

        fails: list[str] = []
        unsure: list[str] = []
        ignored: list[str] = []
        counted = 0
        firing_keys: set[tuple[str, str | None]] = set()
        for a in snap.alerts:
            if not self._severity_ok(a.severity.value):
                continue
            env = a.environment.value if a.environment else None
            serving = alert_serving(a, marks, snap, mark) if self.environment == "serving" else None
            counts = self._counts(env, serving)
            firing = a.phase is AlertPhase.FIRING
            label = f"{a.name} ({env or 'all'})"
            if counts is False:
                if firing:
                    ignored.append(f"{label} firing while {env} takes no traffic")
                continue
            counted += 1
            if firing:
                firing_keys.add((a.rule_id, env))
                if counts:
                    fails.append(f"{label}: {a.summary}")
                else:
                    unsure.append(f"{label} firing; whether {env} takes traffic is unknown")
            elif a.unknown:
                unsure.append(f"{a.name}: {a.detail or 'input unknown'}")

        if self.during != "now":
            self._judge_history(ctx, snap, fails, unsure, ignored, firing_keys)

        if fails:
            return [
                base(
                    verdict=Verdict.FAIL,
                    measured=f"{len(fails)} firing/fired",
                    value=float(len(fails)),
                    detail="; ".join(fails),
                )
            ]
        if unsure:
            return [
                base(
                    verdict=Verdict.UNKNOWN,
                    measured=f"{len(unsure)} unknown",
                    detail="; ".join(unsure),
                )
            ]
        when = "" if self.during == "now" else f", none fired during the {self.during}"
        return [
            base(
                verdict=Verdict.PASS,
                measured=f"0 of {counted} firing{when}",
                value=0.0,
                detail=("not counted: " + "; ".join(ignored)) if ignored else "",
            )
        ]

    def _judge_history(
        self,
        ctx: EvaluationContext,
        snap: Snapshot,
        fails: list[str],
        unsure: list[str],
        ignored: list[str],
        firing_keys: set[tuple[str, str | None]],
    ) -> None:
        """Add what the phase's or the procedure's alert history says to the lists."""
        hist = ctx.history
        if hist is None:
            unsure.append(f"no alert history is kept for the {self.during}")
            return
        start = hist.procedure_started_at if self.during == "procedure" else hist.phase_started_at
        if start is None:
            unsure.append("the phase has not started: no alert history for it")
            return
        for a, b in unwatched(hist.watched, start, snap.taken_at, ctx.stale_after_s):
            unsure.append(
                f"alert rules not seen from {a.isoformat()} to {b.isoformat()} "
                f"({(b - a).total_seconds():.0f} s, allowed {ctx.stale_after_s:g} s)"
            )

        def in_period(f: FiredAlert) -> bool:
            return self._severity_ok(f.severity) and (
                self.during == "procedure" or f.phase_id == ctx.phase_id
            )

        done: set[tuple[str, str | None, bool | None]] = set()
        for f in hist.fired:
            if not in_period(f):
                continue
            serving = f.serving
            if serving is None and f.environment is not None:
                serving = bracketed_serving(
                    hist.traffic, f.environment, f.active_since or f.first_seen, f.first_seen
                )
            counts = self._counts(f.environment, serving)
            key = (f.rule_id, f.environment, counts)
            if key in done:
                continue
            done.add(key)
            label = f"{f.name} ({f.environment or 'all'}) fired at {f.first_seen.isoformat()}"
            if counts is False:
                ignored.append(f"{label} while {f.environment} took no traffic")
            elif counts is None:
                unsure.append(f"{label}, when the traffic split was unknown")
            elif (f.rule_id, f.environment) not in firing_keys:
                fails.append(label)
        for stretch in hist.blind:
            if not self._severity_ok(stretch.severity):
                continue
            counts = self._counts(stretch.environment, stretch.serving)
            length = stretch.length_within(start, snap.taken_at)
            if counts is False or length <= ctx.stale_after_s:
                continue
            unsure.append(
                f"{stretch.name} ({stretch.environment or 'all'}) had no data for {length:.0f} s from "
                f"{stretch.start.isoformat()}"
                + (", when the traffic split was unknown" if counts is None else "")
            )


class MonitoringCheck(_Predicate):
    """Monitoring reports: every metric has a known value and alert rules are evaluated."""

    TAG: ClassVar[str] = "monitoring"
    monitoring: Literal["reporting"]
    environment: EnvScope = "both"

    def describe(self) -> str:
        return f"{self.environment}: monitoring and alerting reporting"

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        out = []
        names = list(EnvironmentMetrics.model_fields)
        for env in _envs(self.environment):
            metrics = snap.env(env).metrics
            base = _Mk(
                check=self.describe(),
                environment=env.value,
                threshold="every metric known, alert rules evaluated",
            )
            missing = [
                f"{n} ({_metric_unknown_reason(getattr(metrics, n))})"
                for n in names
                if not getattr(metrics, n).known
            ]
            if not snap.alerts:
                missing.append("no alert rule states")
            known = sum(1 for n in names if getattr(metrics, n).known)
            measured = f"{known}/{len(names)} metrics"
            out.append(
                base(
                    verdict=Verdict.FAIL if missing else Verdict.PASS,
                    measured=measured,
                    detail="; ".join(missing),
                )
            )
        return out


class SecurityCheck(_Predicate):
    """The site's security tools' output: vulnerability report, SBOM or security score."""

    TAG: ClassVar[str] = "security"
    NEEDS_SNAPSHOT: ClassVar[bool] = False
    security: Literal["vulnerabilities", "sbom", "score"]
    max_critical: int = Field(0, ge=0)
    """vulnerabilities: allowed critical findings."""
    max_high: int = Field(0, ge=0)
    """vulnerabilities: allowed high findings."""
    op: Op = ">="
    """score: the comparison."""
    value: float | None = Field(None, ge=0, le=100)
    """score: a literal bound ..."""
    threshold: str | None = None
    """score: ... or a ``[thresholds]`` name (default ``security_score_target``)."""

    _name = field_validator("threshold")(_check_threshold_name)

    @model_validator(mode="after")
    def _score_bound(self) -> SecurityCheck:
        if self.value is not None and self.threshold is not None:
            raise ValueError("give at most one of 'value' or 'threshold'")
        if self.security != "score" and (self.value is not None or self.threshold is not None):
            raise ValueError("'value'/'threshold' only apply to security = \"score\"")
        return self

    def describe(self) -> str:
        if self.security == "vulnerabilities":
            return f"vulnerability scan: <= {self.max_critical} critical, <= {self.max_high} high"
        if self.security == "sbom":
            return "SBOM parses and lists components"
        bound = self.threshold or (
            _fmt(self.value) if self.value is not None else "security_score_target"
        )
        return f"security score {self.op} {bound}"

    def _judge_without_snapshot(self, ctx: EvaluationContext) -> list[Outcome]:
        base = _Mk(check=self.describe())
        s = ctx.security
        try:
            if self.security == "vulnerabilities":
                if s.vulnerability_report is None:
                    return [
                        base(
                            verdict=Verdict.UNKNOWN,
                            measured="no report",
                            threshold=f"<= {self.max_critical} critical, <= {self.max_high} high",
                            detail="no vulnerability report configured "
                            "(set security.vulnerability_report)",
                        )
                    ]
                j = sec.judge_vulnerabilities(
                    sec.load_vulnerability_report(s.vulnerability_report),
                    self.max_critical,
                    self.max_high,
                )
            elif self.security == "sbom":
                if s.sbom is None:
                    return [
                        base(
                            verdict=Verdict.UNKNOWN,
                            measured="no SBOM",
                            threshold=">= 1 component",
                            detail="no SBOM configured (set security.sbom)",
                        )
                    ]
                j = sec.judge_sbom(sec.load_sbom(s.sbom))
            else:
                bound = (
                    self.value
                    if self.value is not None
                    else float(getattr(ctx.thresholds, self.threshold or "security_score_target"))
                )
                if s.security_score_file is not None:
                    score = sec.load_security_score(s.security_score_file)
                elif s.security_score_metric is not None:
                    score = sec.score_from_metric(s.security_score_metric)
                else:
                    return [
                        base(
                            verdict=Verdict.UNKNOWN,
                            measured="no score",
                            threshold=f"{self.op} {_fmt(bound)}/100",
                            detail="no security score given (set security.security_score_file)",
                        )
                    ]
                j = sec.judge_score(score, self.op, bound)
                return [
                    base(
                        verdict=Verdict(j.verdict.value),
                        measured=j.measured,
                        value=score.score,
                        threshold=j.target,
                        detail=j.detail,
                    )
                ]
        except sec.SecurityInputError as exc:
            return [base(verdict=Verdict.UNKNOWN, measured="unreadable", detail=str(exc))]
        return [
            base(
                verdict=Verdict(j.verdict.value),
                measured=j.measured,
                threshold=j.target,
                detail=j.detail,
            )
        ]


class StepCheck(_Predicate):
    """Another step of the same procedure passed (its command exited 0, ...)."""

    TAG: ClassVar[str] = "step_passed"
    NEEDS_SNAPSHOT: ClassVar[bool] = False
    step_passed: str
    accept_attested: bool = False
    """Count an operator attestation of that step as passing (when no command was configured)."""

    def describe(self) -> str:
        return f"step {self.step_passed!r} passed"

    def _judge_without_snapshot(self, ctx: EvaluationContext) -> list[Outcome]:
        state = ctx.step_states.get(self.step_passed, "pending")
        base = _Mk(
            check=self.describe(),
            measured=state,
            threshold="passed" + (" or attested" if self.accept_attested else ""),
        )
        if state == "passed" or (state == "attested" and self.accept_attested):
            return [base(verdict=Verdict.PASS)]
        if state in ("failed", "skipped"):
            return [base(verdict=Verdict.FAIL, detail=f"step {self.step_passed!r} {state}")]
        detail = (
            "only attested, not measured"
            if state == "attested"
            else f"step {self.step_passed!r} has not completed"
        )
        return [base(verdict=Verdict.UNKNOWN, detail=detail)]


class NoIncreaseCheck(_Predicate):
    """A higher-is-worse metric did not rise above the pre-migration baseline.

    Compares the environment's current value with the baseline environment's value in
    the snapshot taken when traffic first moved (blue, carrying all traffic then).
    """

    TAG: ClassVar[str] = "no_increase"
    no_increase: MetricName
    environment: Literal["blue", "green"] = "green"
    baseline: Literal["blue", "green"] = "blue"
    tolerance: float = Field(0.0, ge=0)
    """Allowed absolute increase."""

    def describe(self) -> str:
        return (
            f"{self.environment} {self.no_increase} no higher than "
            f"{self.baseline}'s before migration"
        )

    def _judge(self, ctx: EvaluationContext, snap: Snapshot) -> list[Outcome]:
        base = _Mk(check=self.describe(), environment=self.environment)
        if ctx.baseline is None:
            return [
                base(
                    verdict=Verdict.UNKNOWN,
                    measured="no baseline",
                    detail="no snapshot was captured before traffic moved",
                )
            ]
        before: MetricValue = getattr(ctx.baseline.env(self.baseline).metrics, self.no_increase)
        now: MetricValue = getattr(snap.env(self.environment).metrics, self.no_increase)
        if not before.known or before.value is None:
            return [
                base(
                    verdict=Verdict.UNKNOWN,
                    measured="unknown",
                    detail=f"baseline {self.baseline} {self.no_increase}: "
                    + _metric_unknown_reason(before),
                )
            ]
        bound = before.value + self.tolerance
        threshold = f"<= {_fmt(bound)} (baseline {_fmt(before.value)} + {_fmt(self.tolerance)})"
        if not now.known or now.value is None:
            return [
                base(
                    verdict=Verdict.UNKNOWN,
                    measured="unknown",
                    threshold=threshold,
                    detail=_metric_unknown_reason(now),
                )
            ]
        ok = now.value <= bound
        return [
            base(
                verdict=Verdict.PASS if ok else Verdict.FAIL,
                value=now.value,
                measured=_fmt(now.value),
                threshold=threshold,
            )
        ]


_CLASSES: tuple[type[_Predicate], ...] = (
    MetricCheck,
    ServicesCheck,
    HashCheck,
    ComplianceScoreCheck,
    ReplicationCheck,
    DatabaseCheck,
    RedisCheck,
    TrafficCheck,
    AlertsCheck,
    MonitoringCheck,
    SecurityCheck,
    StepCheck,
    NoIncreaseCheck,
)
PREDICATE_KEYS: tuple[str, ...] = tuple(c.TAG for c in _CLASSES)
"""The keys that name a predicate; a check table carries exactly one of them."""


def _predicate_tag(v: Any) -> str | None:
    if isinstance(v, dict):
        present = [k for k in PREDICATE_KEYS if k in v]
        return present[0] if len(present) == 1 else None
    tag = getattr(v, "TAG", None)
    return tag if isinstance(tag, str) else None


Predicate = Annotated[
    Annotated[MetricCheck, Tag("metric")]
    | Annotated[ServicesCheck, Tag("all_services")]
    | Annotated[HashCheck, Tag("hash")]
    | Annotated[ComplianceScoreCheck, Tag("compliance_score")]
    | Annotated[ReplicationCheck, Tag("replication")]
    | Annotated[DatabaseCheck, Tag("database")]
    | Annotated[RedisCheck, Tag("redis")]
    | Annotated[TrafficCheck, Tag("traffic_green")]
    | Annotated[AlertsCheck, Tag("no_alerts_firing")]
    | Annotated[MonitoringCheck, Tag("monitoring")]
    | Annotated[SecurityCheck, Tag("security")]
    | Annotated[StepCheck, Tag("step_passed")]
    | Annotated[NoIncreaseCheck, Tag("no_increase")],
    Discriminator(
        _predicate_tag,
        custom_error_type="check_kind",
        custom_error_message="a check table needs exactly one of: " + ", ".join(PREDICATE_KEYS),
    ),
]
"""Any predicate, chosen by the one naming key its table carries."""
