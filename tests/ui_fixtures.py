"""Fixed snapshots and a fake snapshot source for the dashboard tests.

The fake source is the UI boundary: the dashboard only ever sees Snapshots,
so a widget test may hand it fixed ones (the monitor that produces real ones
is tested against real engines elsewhere). Every timestamp is fixed, and the
App's clock is frozen at :data:`NOW`, so SVG snapshots are deterministic.

States (the ones the issue names):

* :func:`healthy` -- everything up, hashes ok, metrics within thresholds;
* :func:`green_degraded` -- green P99 critical, one orchestrator down, a hash
  mismatch, alerts firing and pending;
* :func:`prometheus_unreachable` -- blue metrics stale, green metrics unknown,
  metric rules without data;
* :func:`mid_switch` -- traffic at 50/50 during a deployment.

:func:`series` wraps a state into a warm-up sequence (changing values, one
second apart) so the sparklines have something to draw.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backends.models import (
    ORCHESTRATORS,
    AlertPhase,
    AlertSeverity,
    AlertState,
    ComplianceCheck,
    ComplianceResult,
    Environment,
    EnvironmentMetrics,
    EnvironmentSnapshot,
    HashVerdict,
    MetricValue,
    ProbeState,
    RedisStatus,
    ReplicaLag,
    ReplicationStatus,
    ServiceHealth,
    ServiceState,
    Snapshot,
    TrafficSplit,
)
from console.config import AppConfig

HASH = "cdd01ef066bc6cf2"
T0 = datetime(2025, 3, 14, 9, 26, 0, tzinfo=UTC)
"""Time of the last snapshot of every state."""
NOW = T0 + timedelta(milliseconds=800)
"""The frozen "now" of the App under test."""
OPERATOR = "alice@ops-bastion (ssh 10.0.0.5)"
WARMUP = 40
"""Snapshots per warm-up series."""
SPARK_SAMPLES = 60
"""Samples a sparkline spans in the tests (two per column, so the warm-up draws 20)."""


def clock_at(at: datetime) -> Callable[[], datetime]:
    """A frozen clock."""
    return lambda: at


def make_config(**overrides: object) -> AppConfig:
    """A valid configuration naming the nine orchestrators in both environments."""
    base = {Environment.BLUE: 8100, Environment.GREEN: 8150}
    environments = {
        env.value: {
            "services": {
                name: {"base_url": f"http://127.0.0.1:{base[env] + i}"}
                for i, name in enumerate(ORCHESTRATORS)
            }
        }
        for env in Environment
    }
    data: dict[str, object] = {
        "environments": environments,
        "traffic": {"kind": "sandbox", "control_url": "http://127.0.0.1:8099"},
        "operator": OPERATOR,
    }
    data.update(overrides)
    return AppConfig(**data)  # type: ignore[arg-type]


# --- building blocks ----------------------------------------------------------------------


def _services(
    env: Environment,
    at: datetime,
    *,
    down: Sequence[str] = (),
    mismatch: Sequence[str] = (),
    latency: float = 2.0,
) -> tuple[ServiceHealth, ...]:
    out = []
    for i, name in enumerate(ORCHESTRATORS):
        if name in down:
            out.append(
                ServiceHealth(
                    environment=env,
                    service=name,
                    url=f"http://127.0.0.1:{8100 + i}/health",
                    state=ServiceState.DOWN,
                    reason="connection refused",
                    checked_at=at,
                )
            )
            continue
        wrong = name in mismatch
        out.append(
            ServiceHealth(
                environment=env,
                service=name,
                url=f"http://127.0.0.1:{8100 + i}/health",
                state=ServiceState.UP,
                latency_ms=latency + 0.3 * i,
                http_status=200,
                version="2.4.1",
                body_hash="0000deadbeef0000" if wrong else HASH,
                header_hash="0000deadbeef0000" if wrong else HASH,
                body_hash_verdict=HashVerdict.MISMATCH if wrong else HashVerdict.OK,
                header_hash_verdict=HashVerdict.MISMATCH if wrong else HashVerdict.OK,
                checked_at=at,
            )
        )
    return tuple(out)


def _metric(
    name: str,
    value: float | None,
    unit: str,
    at: datetime,
    *,
    stale: bool = False,
    error: str | None = None,
    source: str = "prometheus",
) -> MetricValue:
    return MetricValue(
        name=name,
        value=value,
        unit=unit,
        sampled_at=at if value is not None else None,
        source=source,
        stale=stale,
        error=error,
    )


def _metrics(
    at: datetime,
    *,
    p99: float = 2.4,
    rps: float = 412.0,
    cache: float = 0.93,
    errors: float = 0.0002,
    compliance: float = 100.0,
) -> EnvironmentMetrics:
    return EnvironmentMetrics(
        p99_latency_ms=_metric("p99_latency_ms", p99, "ms", at),
        requests_per_second=_metric("requests_per_second", rps, "req/s", at),
        error_rate=_metric("error_rate", errors, "ratio", at),
        cache_hit_rate=_metric("cache_hit_rate", cache, "ratio", at),
        compliance_score=_metric("compliance_score", compliance, "%", at),
        hash_validation_failure_rate=_metric("hash_validation_failure_rate", 0.0, "ratio", at),
        auth_failures_per_minute=_metric("auth_failures_per_minute", 0.0, "/min", at),
    )


def _unknown_metrics(
    at: datetime, *, stale_since: datetime | None, error: str
) -> EnvironmentMetrics:
    """Prometheus unreachable: stale carried values (when ``stale_since``) or nothing."""

    def metric(name: str, last: float, unit: str) -> MetricValue:
        if stale_since is None:
            return _metric(name, None, unit, at, error=error)
        return MetricValue(
            name=name,
            value=last,
            unit=unit,
            sampled_at=stale_since,
            source="prometheus",
            stale=True,
            error=error,
        )

    return EnvironmentMetrics(
        p99_latency_ms=metric("p99_latency_ms", 2.4, "ms"),
        requests_per_second=metric("requests_per_second", 410.0, "req/s"),
        error_rate=metric("error_rate", 0.0002, "ratio"),
        cache_hit_rate=metric("cache_hit_rate", 0.93, "ratio"),
        compliance_score=metric("compliance_score", 100.0, "%"),
        hash_validation_failure_rate=metric("hash_validation_failure_rate", 0.0, "ratio"),
        auth_failures_per_minute=metric("auth_failures_per_minute", 0.0, "/min"),
    )


def _compliance(
    services: Sequence[ServiceHealth], *, gauge_ok: bool | None = True
) -> ComplianceResult:
    checks = [
        ComplianceCheck(
            name=f"hash:{s.service}",
            passed=s.hash_ok if s.state is not ServiceState.DOWN else None,
            detail="ok" if s.hash_ok else f"{s.state.value}: {s.reason or 'hash not ok'}",
        )
        for s in services
    ]
    checks.append(
        ComplianceCheck(
            name="compliance-gauge",
            passed=gauge_ok,
            detail="gauge 100" if gauge_ok else "gauge unknown",
        )
    )
    return ComplianceResult(checks=tuple(checks))


def _redis(at: datetime) -> RedisStatus:
    return RedisStatus(
        state=ProbeState.OK, ping_ms=0.4, role="master", connected_clients=12, checked_at=at
    )


def _replication(at: datetime, *, lag_bytes: int = 0) -> ReplicationStatus:
    return ReplicationStatus(
        state=ProbeState.OK,
        primary_reachable=True,
        replicas=(
            ReplicaLag(
                application_name="replica1",
                client_addr="127.0.0.1",
                state="streaming",
                sync_state="async",
                byte_lag=lag_bytes,
                replay_lag_seconds=0.0,
            ),
        ),
        expected_replicas=1,
        replica_in_recovery=True,
        synchronized=True,
        checked_at=at,
    )


def _env(
    env: Environment,
    at: datetime,
    *,
    services: tuple[ServiceHealth, ...] | None = None,
    metrics: EnvironmentMetrics | None = None,
    gauge_ok: bool | None = True,
    redis: RedisStatus | None = None,
    replication: ReplicationStatus | None = None,
) -> EnvironmentSnapshot:
    services = services if services is not None else _services(env, at)
    return EnvironmentSnapshot(
        environment=env,
        services=services,
        metrics=metrics if metrics is not None else _metrics(at),
        compliance=_compliance(services, gauge_ok=gauge_ok),
        redis=redis if redis is not None else _redis(at),
        replication=replication if replication is not None else _replication(at),
        taken_at=at,
    )


def _traffic(green: float | None, at: datetime, error: str | None = None) -> TrafficSplit:
    weight = None if green is None else round(256 * green / 100)
    return TrafficSplit(
        green_percentage=green,
        blue_weight=None if weight is None else 256 - weight,
        green_weight=weight,
        source="haproxy",
        error=error,
        read_at=at,
    )


def _alert(
    rule_id: str,
    name: str,
    env: Environment | None,
    severity: AlertSeverity,
    phase: AlertPhase,
    summary: str,
    for_seconds: float,
    active_for: float | None,
    at: datetime,
    *,
    value: float | None = None,
    unknown: bool = False,
) -> AlertState:
    return AlertState(
        rule_id=rule_id,
        name=name,
        environment=env,
        severity=severity,
        phase=phase,
        summary=summary,
        for_seconds=for_seconds,
        active_since=None if active_for is None else at - timedelta(seconds=active_for),
        value=value,
        unknown=unknown,
    )


# --- the four states ----------------------------------------------------------------------


def healthy(at: datetime = T0, sequence: int = 1, *, wobble: float = 0.0) -> Snapshot:
    """Everything up, hashes ok, metrics within thresholds, traffic all on blue."""
    blue = _env(
        Environment.BLUE,
        at,
        metrics=_metrics(at, p99=2.4 + wobble, rps=412 + 20 * wobble, cache=0.93 + 0.01 * wobble),
    )
    green = _env(
        Environment.GREEN,
        at,
        metrics=_metrics(at, p99=2.2 + 0.5 * wobble, rps=150 + 10 * wobble, cache=0.94),
    )
    return Snapshot(
        taken_at=at,
        duration_ms=38.0,
        blue=blue,
        green=green,
        traffic=_traffic(0.0, at),
        alerts=(),
        constitutional_hash=HASH,
        sequence=sequence,
    )


def green_degraded(at: datetime = T0, sequence: int = 1, *, wobble: float = 0.0) -> Snapshot:
    """Green: P99 critical, cache_optimizer down, security_orchestrator hash mismatch."""
    base = healthy(at, sequence, wobble=wobble)
    services = _services(
        Environment.GREEN,
        at,
        down=("cache_optimizer",),
        mismatch=("security_orchestrator",),
        latency=6.5,
    )
    green = _env(
        Environment.GREEN,
        at,
        services=services,
        metrics=_metrics(at, p99=7.8 + wobble, rps=180 + 10 * wobble, cache=0.86, errors=0.004),
    )
    alerts = (
        _alert(
            "constitutional.hash_mismatch/green",
            "Constitutional Hash Mismatch",
            Environment.GREEN,
            AlertSeverity.CRITICAL,
            AlertPhase.FIRING,
            "a response is missing or mismatching the constitutional hash",
            0,
            34,
            at,
        ),
        _alert(
            "constitutional.compliance_violation/green",
            "Compliance Violation",
            Environment.GREEN,
            AlertSeverity.CRITICAL,
            AlertPhase.FIRING,
            "compliance < 100%",
            0,
            34,
            at,
            value=80.0,
        ),
        _alert(
            "performance.p99_latency.critical/green",
            "P99 Latency",
            Environment.GREEN,
            AlertSeverity.CRITICAL,
            AlertPhase.PENDING,
            "P99 > 5 ms",
            120,
            72,
            at,
            value=7.8,
        ),
        _alert(
            "performance.cache_hit_rate.warning/green",
            "Cache Hit Rate",
            Environment.GREEN,
            AlertSeverity.WARNING,
            AlertPhase.PENDING,
            "cache hit < 87%",
            600,
            95,
            at,
            value=0.86,
        ),
    )
    return base.model_copy(update={"green": green, "traffic": _traffic(10.0, at), "alerts": alerts})


PROMETHEUS_ERROR = "prometheus http://127.0.0.1:19090: connection refused"


def prometheus_unreachable(
    at: datetime = T0, sequence: int = 1, *, wobble: float = 0.0
) -> Snapshot:
    """Prometheus gone: blue carries stale values (last sample 42 s ago), green has none."""
    base = healthy(at, sequence, wobble=wobble)
    blue = _env(
        Environment.BLUE,
        at,
        metrics=_unknown_metrics(
            at, stale_since=at - timedelta(seconds=42), error=PROMETHEUS_ERROR
        ),
        gauge_ok=None,
    )
    green = _env(
        Environment.GREEN,
        at,
        metrics=_unknown_metrics(at, stale_since=None, error=PROMETHEUS_ERROR),
        gauge_ok=None,
    )
    alerts = tuple(
        _alert(
            f"{key}/{env.value}",
            name,
            env,
            severity,
            AlertPhase.INACTIVE,
            summary,
            for_s,
            None,
            at,
            unknown=True,
        )
        for env in Environment
        for key, name, severity, summary, for_s in (
            (
                "performance.p99_latency.critical",
                "P99 Latency",
                AlertSeverity.CRITICAL,
                "P99 > 5 ms",
                120,
            ),
            (
                "performance.cache_hit_rate.critical",
                "Cache Hit Rate",
                AlertSeverity.CRITICAL,
                "cache hit < 85%",
                300,
            ),
            (
                "constitutional.compliance_violation",
                "Compliance Violation",
                AlertSeverity.CRITICAL,
                "compliance < 100%",
                0,
            ),
        )
    )
    return base.model_copy(update={"blue": blue, "green": green, "alerts": alerts})


def mid_switch(at: datetime = T0, sequence: int = 1, *, wobble: float = 0.0) -> Snapshot:
    """Traffic at 50/50 mid-deployment; both sides healthy; one warning pending."""
    base = healthy(at, sequence, wobble=wobble)
    green = base.green.model_copy(
        update={"metrics": _metrics(at, p99=4.3 + 0.2 * wobble, rps=205 + 10 * wobble, cache=0.91)}
    )
    blue = base.blue.model_copy(
        update={"metrics": _metrics(at, p99=2.5 + 0.2 * wobble, rps=207 + 10 * wobble, cache=0.93)}
    )
    alerts = (
        _alert(
            "performance.p99_latency.warning/green",
            "P99 Latency",
            Environment.GREEN,
            AlertSeverity.WARNING,
            AlertPhase.PENDING,
            "P99 > 4 ms",
            300,
            72,
            at,
            value=4.3,
        ),
    )
    return base.model_copy(
        update={"blue": blue, "green": green, "traffic": _traffic(50.0, at), "alerts": alerts}
    )


STATES: dict[str, Callable[..., Snapshot]] = {
    "healthy": healthy,
    "green_degraded": green_degraded,
    "prometheus_unreachable": prometheus_unreachable,
    "mid_switch": mid_switch,
}


def series(state: Callable[..., Snapshot], n: int = WARMUP, end: datetime = T0) -> list[Snapshot]:
    """``n`` snapshots of a state, one second apart, ending at ``end``, values wobbling."""
    return [
        state(end - timedelta(seconds=n - 1 - i), i + 1, wobble=0.6 * math.sin(i / 3.0))
        for i in range(n)
    ]


# --- the fake source ----------------------------------------------------------------------


class FakeSource:
    """Returns the given snapshots in order, then (by default) hangs like a dead probe.

    Thread-safe: the App runs ``sweep`` on its own sweep loop.

    Args:
        snapshots: What successive sweeps return.
        then: After the list: ``"hang"`` (never answer), ``"repeat"`` the last one,
            or ``"hold"`` (answer only when :meth:`release` allows).
    """

    def __init__(self, snapshots: Sequence[Snapshot], then: str = "hang") -> None:
        self.snapshots = list(snapshots)
        self.then = then
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False
        self.last: Snapshot | None = None
        self._released = 0
        self._lock = threading.Lock()

    def release(self, n: int = 1) -> None:
        """In ``"hold"`` mode: let ``n`` more sweeps answer."""
        with self._lock:
            self._released += n

    async def sweep(self) -> Snapshot:
        with self._lock:
            index = self.calls
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.then == "hold":
                while True:
                    with self._lock:
                        if self._released > index:
                            break
                    await asyncio.sleep(0.005)
            await asyncio.sleep(0)
            if index >= len(self.snapshots) and self.then == "hang":
                await asyncio.Event().wait()
            snapshot = self.snapshots[min(index, len(self.snapshots) - 1)]
            with self._lock:
                self.last = snapshot
            return snapshot
        finally:
            with self._lock:
                self.in_flight -= 1

    async def close(self) -> None:
        self.closed = True

    def following_clock(self, lag: timedelta = NOW - T0) -> Callable[[], datetime]:
        """A clock that stays ``lag`` after the last snapshot returned (fresh, but frozen)."""

        def now() -> datetime:
            with self._lock:
                last = self.last
            return (last.taken_at if last is not None else self.snapshots[0].taken_at) + lag

        return now


def make_app(
    state_dir: Path,
    snapshots: Sequence[Snapshot],
    *,
    then: str = "hang",
    now: datetime | None = None,
    config: AppConfig | None = None,
    environ: dict[str, str] | None = None,
    deployment: tuple[str, str] | None = None,
    read_only: bool = False,
) -> tuple[object, FakeSource]:
    """A ConsoleApp on a fake source with a frozen clock and a private state dir.

    Args:
        now: Freeze the clock here; default: 0.8 s after the last snapshot returned.
    """
    from console.ui.app import ConsoleApp

    source = FakeSource(snapshots, then=then)
    app = ConsoleApp(
        config or make_config(),
        source,
        clock=clock_at(now) if now is not None else source.following_clock(),
        state_dir=state_dir,
        poll_interval_s=0.0,
        sparkline_samples=SPARK_SAMPLES,
        environ=environ if environ is not None else {},
        read_only=read_only,
    )
    if deployment is not None:
        app.set_deployment(*deployment)
    return app, source
