"""Builders for the runbook screen tests: a config with an audit store, a session on a clock.

The runbook screen renders a :class:`~console.deployment.DeploymentSession`; these tests
drive real sessions (a real SQLite audit trail, the shipped runbook, the real engine) on
fixed Snapshots and a settable clock, so what the screen shows is deterministic. The
walk against the real engines is in ``test_walk.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import ui_fixtures as fx
from runbook_fixtures import Clock, env_snapshot, snapshot
from walk_fixtures import security_files

from backends.models import Snapshot
from backends.traffic import TrafficSwitch
from console.audit import open_trail
from console.config import AppConfig
from console.deployment import DeploymentSession
from console.runbook.engine import StepState
from console.runbook.loader import load_runbook_for
from console.runbook.model import StepKind

NOTE = "checked by hand: ok"


def ui_config(tmp_path: Path, **extra: Any) -> AppConfig:
    """The dashboard tests' config plus an audit store, security files and no four-eyes."""
    data: dict[str, Any] = {
        "audit": {
            "sqlite_path": str(tmp_path / "audit.sqlite3"),
            "spool_path": str(tmp_path / "audit-spool.jsonl"),
        },
        "security": security_files(tmp_path / "security"),
        "coordination": {"four_eyes_gates": [], "lock_file": str(tmp_path / "console.lock")},
        "monitor_windows": {"monitor-10": 2, "monitor-50": 2, "post-switch-monitoring": 2},
    }
    data.update(extra)
    return fx.make_config(**data)


def make_session(
    config: AppConfig,
    clock: Callable[[], datetime],
    *,
    traffic: TrafficSwitch | None = None,
) -> DeploymentSession:
    """A session on the shipped runbook, the configured SQLite trail and ``clock``."""
    runbook = load_runbook_for(config)
    trail = open_trail(config, operator=fx.OPERATOR)
    return DeploymentSession(
        config, runbook, trail, operator=fx.OPERATOR, clock=clock, traffic=traffic
    )


def degraded_green(at: datetime, p99: float = 7.2) -> Snapshot:
    """Healthy, except green's P99 above the 5 ms target."""
    return snapshot(at, green=env_snapshot("green", metric_values={"p99_latency_ms": p99}))


async def walk_to(
    session: DeploymentSession,
    clock: Clock,
    step_id: str,
    *,
    snap: Callable[[datetime], Snapshot] = snapshot,
    skip: dict[str, str] | None = None,
    seconds_per_step: float = 20.0,
) -> None:
    """Drive the session through every step before ``step_id`` on fixed snapshots.

    Attestations get :data:`NOTE`; steps named in ``skip`` are skipped with that reason.
    """
    skip = skip or {}
    for _ in range(200):
        current = session.engine.current_step_id
        if current == step_id:
            return
        assert current is not None, f"the procedure ended before {step_id}"
        clock.advance(seconds_per_step)
        session.observe(snap(clock.now))
        if current in skip:
            session.skip(skip[current])
            continue
        view = session.gate_view(typed=None)
        assert view.open, (current, view.reasons)
        record = await session.proceed(note=NOTE if view.kind is StepKind.ATTESTATION else None)
        assert record.state in (StepState.PASSED, StepState.ATTESTED), (current, record.reason)
    raise AssertionError(f"never reached {step_id}")
