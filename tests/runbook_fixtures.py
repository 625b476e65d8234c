"""Builders for the runbook tests: fixed Snapshots, a settable clock, a recording sink, configs.

The engine's input is the Snapshot, so the tests construct Snapshot models directly
(healthy by default; every field can be degraded, unknown or missing).
"""

from __future__ import annotations

import stat
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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

T0 = datetime(2025, 1, 7, 10, 0, 0, tzinfo=UTC)
HASH = "cdd01ef066bc6cf2"


class Clock:
    """A settable clock for the engine."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class Sink:
    """Records every event the engine emits."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, action: str, evidence: dict[str, Any]) -> None:
        self.events.append((action, evidence))

    def actions(self) -> list[str]:
        return [a for a, _ in self.events]

    def of(self, action: str) -> list[dict[str, Any]]:
        return [e for a, e in self.events if a == action]


GOOD_METRICS: dict[str, float] = {
    "p99_latency_ms": 3.2,
    "requests_per_second": 150.0,
    "error_rate": 0.0,
    "cache_hit_rate": 0.92,
    "compliance_score": 100.0,
    "hash_validation_failure_rate": 0.0,
    "auth_failures_per_minute": 0.0,
}


def metrics(**override: float | MetricValue | None) -> EnvironmentMetrics:
    """Healthy metrics; ``name=None`` makes one unknown, ``name=MetricValue(...)`` sets it."""
    values: dict[str, MetricValue] = {}
    for name, good in GOOD_METRICS.items():
        v = override.get(name, good)
        if isinstance(v, MetricValue):
            values[name] = v
        elif v is None:
            values[name] = MetricValue(name=name, value=None, error="empty query result")
        else:
            values[name] = MetricValue(name=name, value=float(v), source="test")
    return EnvironmentMetrics(**values)


def env_snapshot(
    environment: str,
    *,
    state: ServiceState = ServiceState.UP,
    hash_verdict: HashVerdict = HashVerdict.OK,
    services: tuple[str, ...] = ORCHESTRATORS,
    metric_values: dict[str, float | MetricValue | None] | None = None,
    redis: RedisStatus | None = None,
    replication: ReplicationStatus | None = None,
    compliance: ComplianceResult | None = None,
) -> EnvironmentSnapshot:
    env = Environment(environment)
    return EnvironmentSnapshot(
        environment=env,
        services=tuple(
            ServiceHealth(
                environment=env,
                service=s,
                url=f"http://127.0.0.1:1/{s}/health",
                state=state,
                reason="" if state is ServiceState.UP else "connection refused",
                body_hash=HASH,
                header_hash=HASH,
                body_hash_verdict=hash_verdict,
                header_hash_verdict=hash_verdict,
            )
            for s in services
        ),
        metrics=metrics(**(metric_values or {})),
        compliance=compliance
        or ComplianceResult(
            checks=(
                ComplianceCheck(name="hash in every response", passed=True),
                ComplianceCheck(name="compliance gauge at 100", passed=True),
            )
        ),
        redis=redis or RedisStatus(state=ProbeState.OK, ping_ms=0.4, role="master"),
        replication=replication
        or ReplicationStatus(
            state=ProbeState.OK,
            primary_reachable=True,
            replicas=(
                ReplicaLag(
                    application_name="replica1", state="streaming", sync_state="async", byte_lag=0
                ),
            ),
            expected_replicas=1,
            replica_in_recovery=True,
            synchronized=True,
        ),
    )


def alert(
    rule_id: str = "p99-latency-critical",
    *,
    name: str = "P99 Latency",
    severity: AlertSeverity = AlertSeverity.CRITICAL,
    phase: AlertPhase = AlertPhase.INACTIVE,
    environment: str | None = "green",
    unknown: bool = False,
    at: datetime = T0,
) -> AlertState:
    return AlertState(
        rule_id=rule_id,
        name=name,
        environment=Environment(environment) if environment else None,
        severity=severity,
        phase=phase,
        summary="P99 > 5 ms for > 2 min",
        for_seconds=120,
        active_since=at if phase is not AlertPhase.INACTIVE else None,
        value=7.5 if phase is AlertPhase.FIRING else 3.0,
        unknown=unknown,
        detail="no data" if unknown else "",
    )


QUIET = (
    alert(),
    alert("cache-hit-warning", name="Cache Hit Rate", severity=AlertSeverity.WARNING),
)


def snapshot(
    at: datetime,
    *,
    green_percentage: float | None = 0.0,
    alerts: tuple[AlertState, ...] = QUIET,
    blue: EnvironmentSnapshot | None = None,
    green: EnvironmentSnapshot | None = None,
    sequence: int = 0,
    constitutional_hash: str = HASH,
) -> Snapshot:
    return Snapshot(
        taken_at=at,
        duration_ms=12.0,
        blue=blue or env_snapshot("blue"),
        green=green or env_snapshot("green"),
        traffic=TrafficSplit(
            green_percentage=green_percentage,
            source="test haproxy",
            error=None if green_percentage is not None else "admin socket refused",
            read_at=at,
        ),
        alerts=alerts,
        constitutional_hash=constitutional_hash,
        sequence=sequence,
    )


def make_config(**extra: Any) -> AppConfig:
    services = {
        name: {"base_url": f"http://127.0.0.1:{19000 + i}"} for i, name in enumerate(ORCHESTRATORS)
    }
    return AppConfig(
        environments={"blue": {"services": services}, "green": {"services": services}},
        traffic={"kind": "sandbox", "control_url": "http://127.0.0.1:1"},
        **extra,
    )


def script(path: Path, body: str) -> Path:
    """Write an executable script (a real tiny program for command steps and switches)."""
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body).lstrip())
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path
