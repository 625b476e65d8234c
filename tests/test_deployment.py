"""The deployment session: every transition in the audit chain, the state saved, resume.

Real audit stores (SQLite; PostgreSQL from ``fresh_pg_cluster`` where the store goes down
and up), the shipped runbook, the real engine, fixed Snapshots on a settable clock. The
resume after SIGKILL runs the session in a child process against a real HAProxy, kills it
mid-phase and takes the deployment up again here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ui_fixtures as fx
from runbook_fixtures import Clock, snapshot
from ui_runbook_fixtures import degraded_green, make_session, ui_config, walk_to
from walk_fixtures import python_argv, weights

from backends.models import utcnow
from backends.traffic import HAProxyRuntimeSwitch
from console.audit import open_trail
from console.config import AppConfig
from console.coordination import open_coordinator
from console.deployment import (
    STATE_ACTION,
    DeploymentError,
    DeploymentSession,
    coordinator_approver,
    scan_deployments,
)
from console.engines import HAProxy, free_port
from console.runbook.engine import StepState
from console.runbook.loader import load_runbook_for

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def chain(session: DeploymentSession) -> list[Any]:
    """Every stored record of the session's deployment (its saved states too), in chain order."""
    return [
        r
        for r in session.trail.records()
        if r.deployment_id == session.deployment_id
        or (r.action == STATE_ACTION and r.evidence.get("deployment_id") == session.deployment_id)
    ]


@pytest.fixture
def proxy(tmp_path: Path, start_engine: Callable[[Callable[[], Any]], Any]) -> Iterator[HAProxy]:
    """A HAProxy whose servers answer nothing: its weights are what the tests read."""
    engine: HAProxy = start_engine(
        lambda: HAProxy(
            tmp_path / "h",
            blue=("127.0.0.1", free_port()),
            green=("127.0.0.1", free_port()),
            health_checks=False,
        ).start()
    )
    try:
        yield engine
    finally:
        engine.stop()


# --- every transition, and the state after it ------------------------------------------------


async def test_every_transition_is_an_audit_record_followed_by_the_saved_state(
    tmp_path: Path,
) -> None:
    clock = Clock(fx.T0)
    session = make_session(ui_config(tmp_path), clock)
    engine = session.start()
    assert engine.deployment_id == "20250314_092600"  # YYYYMMDD_HHMMSS of the start
    records = chain(session)
    assert [r.action for r in records] == ["deployment.started", "phase.started", STATE_ACTION]
    assert records[-1].evidence["state"] == engine.to_dict()
    assert records[-1].evidence["current_step"] == "pre-verify-hash"

    clock.advance(1)
    session.observe(snapshot(clock.now))
    await session.proceed()
    clock.advance(1)
    session.observe(snapshot(clock.now))
    await session.proceed(note="ran the validation runner by hand: 0 failures")
    records = chain(session)
    assert [r.action for r in records[3:]] == [
        "step.passed",
        STATE_ACTION,
        "step.attested",
        STATE_ACTION,
    ]
    assert records[-1].evidence["state"] == engine.to_dict()
    assert records[-1].evidence["current_step"] == "pre-compliance-score"
    # Every record carries who, when and the constitutional hash; the chain verifies.
    assert all(r.constitutional_hash == "cdd01ef066bc6cf2" for r in records)
    assert records[5].operator == fx.OPERATOR
    assert session.trail.verify().ok


async def test_the_scan_finds_unfinished_deployments_and_not_finished_ones(tmp_path: Path) -> None:
    clock = Clock(fx.T0)
    config = ui_config(tmp_path)
    first = make_session(config, clock)
    first.start()
    await walk_to(first, clock, "pre-blue-healthy")
    scan = scan_deployments(first.trail)
    assert scan.error is None
    [saved] = scan.unfinished
    assert saved.deployment_id == first.deployment_id
    assert (saved.current_phase, saved.current_step) == ("pre-deployment", "pre-blue-healthy")
    assert saved.started_by == fx.OPERATOR and saved.later_actions == []
    first.end("aborted", "rehearsal only")
    clock.advance(5)
    second = make_session(config, clock)
    second.start()
    scan = scan_deployments(second.trail)
    assert [d.deployment_id for d in scan.unfinished] == [second.deployment_id]
    assert [d.outcome for d in scan.deployments] == ["in_progress", "aborted"]


async def test_a_running_command_is_saved_running_and_resumes_as_interrupted(
    tmp_path: Path,
) -> None:
    config = ui_config(
        tmp_path,
        commands={
            "pre-validation-runner": {
                "argv": python_argv("import time; print('started', flush=True); time.sleep(60)"),
                "timeout_s": 120,
            }
        },
    )
    clock = Clock(fx.T0)
    session = make_session(config, clock)
    session.start()
    await walk_to(session, clock, "pre-validation-runner")
    clock.advance(1)
    session.observe(snapshot(clock.now))
    lines: list[str] = []
    task = asyncio.create_task(session.proceed(on_output=lines.append))
    deadline = time.monotonic() + 30  # a bound on waiting, not a timing assertion
    while not lines and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert lines == ["started"]
    # While the command runs, the chain already says so: a console killed now resumes here.
    [saved] = scan_deployments(session.trail).unfinished
    assert saved.state["steps"]["pre-validation-runner"]["state"] == "running"
    assert session.busy == "running pre-validation-runner"
    assert session.cancel_command()
    record = await task
    assert record.state is StepState.FAILED and record.evidence["cancelled"] is True

    clock.advance(60)
    other = make_session(config, clock)
    other.resume(saved)
    resumed = other.record("pre-validation-runner")
    assert resumed.state is StepState.FAILED
    assert resumed.reason.startswith("interrupted: the console stopped while the command ran")
    assert [r.action for r in chain(other)][-3:] == [
        "step.interrupted",
        "deployment.resumed",
        STATE_ACTION,
    ]


async def test_skip_records_the_failing_check_then_the_reason(tmp_path: Path) -> None:
    clock = Clock(fx.T0)
    session = make_session(ui_config(tmp_path), clock)
    session.start()
    await walk_to(session, clock, "app-performance")
    clock.advance(1)
    session.observe(degraded_green(clock.now))
    with pytest.raises(DeploymentError, match="needs a reason"):
        session.skip("  ")
    record = session.skip("P99 target waived for this release (CAB-77)")
    assert record.state is StepState.SKIPPED
    actions = [r.action for r in chain(session) if r.evidence.get("step") == "app-performance"]
    assert actions == ["step.failed", "step.skipped"]
    failed = next(r for r in chain(session) if r.action == "step.failed")
    outcomes = failed.evidence["evidence"]["outcomes"]
    assert any(o["verdict"] == "fail" and o["value"] == 7.2 for o in outcomes)
    # A check that passes is not skipped: Continue is the way.
    clock.advance(1)
    session.observe(snapshot(clock.now))
    assert session.engine.current_step_id == "app-security"
    with pytest.raises(DeploymentError, match="the checks pass"):
        session.skip("no reason to")


async def test_one_deployment_at_a_time(tmp_path: Path) -> None:
    clock = Clock(fx.T0)
    session = make_session(ui_config(tmp_path), clock)
    session.start()
    with pytest.raises(DeploymentError, match="still in progress"):
        session.start()
    session.end("aborted", "wrong change window")
    with pytest.raises(DeploymentError, match="already holds a deployment 20250314_092600"):
        session.start()  # the same second: the id is taken
    clock.advance(1)
    assert session.start().deployment_id == "20250314_092601"


async def test_four_eyes_gates_wait_for_a_second_operator(tmp_path: Path) -> None:
    config = ui_config(
        tmp_path,
        coordination={
            "four_eyes_gates": ["pre-verify-hash"],
            "lock_file": str(tmp_path / "console.lock"),
        },
    )
    clock = Clock(fx.T0)
    session = make_session(config, clock)
    session.start()
    clock.advance(1)
    session.observe(snapshot(clock.now))
    view = session.gate_view()
    assert not view.open and view.four_eyes
    assert any("second operator" in r for r in view.reasons)
    with pytest.raises(DeploymentError, match="four eyes"):
        await session.proceed()

    alice = open_coordinator(config, operator=fx.OPERATOR)
    bob = open_coordinator(config, operator="bob@ops-bastion")
    try:
        await alice.acquire()
        session.approver = coordinator_approver(alice, timeout_s=10)
        assert session.gate_view().open
        task = asyncio.create_task(session.proceed())
        deadline = time.monotonic() + 30
        while not (pending := await bob.pending_approvals()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [p.gate for p in pending] == ["pre-verify-hash"]
        await bob.approve("pre-verify-hash", pending[0].request_id)
        record = await task
    finally:
        await alice.aclose()
        await bob.aclose()
    assert record.state is StepState.PASSED
    assert record.approved_by == "bob@ops-bastion"


# --- the audit store goes away and comes back ------------------------------------------------


class RecordingTrail:
    """The real trail, noting every record the session hands it (to compare with the chain)."""

    def __init__(self, trail: Any) -> None:
        self._trail = trail
        self.sent: list[tuple[str, str | None]] = []

    def append(self, action: str, **kwargs: Any) -> Any:
        evidence = kwargs.get("evidence") or {}
        self.sent.append((action, evidence.get("step") or evidence.get("current_step")))
        return self._trail.append(action, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trail, name)


@pytest.mark.engines
async def test_postgres_stops_mid_deployment_and_every_record_arrives_in_order(
    tmp_path: Path, fresh_pg_cluster: Callable[[], Any]
) -> None:
    cluster = fresh_pg_cluster()
    config = ui_config(
        tmp_path,
        audit={
            "postgres_dsn": cluster.primary_dsn,
            "spool_path": str(tmp_path / "audit-spool.jsonl"),
        },
    )
    clock = Clock(fx.T0)
    trail = RecordingTrail(open_trail(config, operator=fx.OPERATOR))
    session = DeploymentSession(
        config,
        load_runbook_for(config),
        trail,
        operator=fx.OPERATOR,
        clock=clock,  # type: ignore[arg-type]
    )
    try:
        session.start()
        await walk_to(session, clock, "pre-env-hash")
        assert trail.status().pending == 0

        cluster.stop_primary()
        await walk_to(session, clock, "pre-redis")  # the deployment goes on
        assert trail.status().pending > 0, "records written while PostgreSQL was down"
        # The spool holds the newest state: a console restarted now would still resume.
        scan = scan_deployments(trail)  # type: ignore[arg-type]
        assert scan.error is not None and "only the local spool was searched" in scan.error
        [saved] = scan.unfinished
        assert saved.current_step == "pre-redis" and saved.saved_seq is None

        cluster.start_primary()
        flushed = session.flush()
        assert flushed.error is None and flushed.pending == 0
        await walk_to(session, clock, "pre-security-score")
        assert trail.status().pending == 0
        stored = [
            (r.action, r.evidence.get("step") or r.evidence.get("current_step"))
            for r in trail.records()
        ]
        assert stored == trail.sent, "every record, once, in the order it happened"
        assert [r.seq for r in trail.records()] == list(range(1, len(trail.sent) + 1))
        assert trail.verify().ok
    finally:
        trail.close()


# --- SIGKILL mid-phase, resume in another process --------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from backends.models import utcnow
    from console.config import AppConfig
    from console.deployment import open_session
    from console.runbook.model import StepKind
    from runbook_fixtures import snapshot

    async def main() -> None:
        config = AppConfig(**json.loads(open(sys.argv[1]).read()))
        session = open_session(config, operator="alice@ops-bastion")
        session.start()
        while session.engine.current_step_id != {stop!r}:
            split = await session.traffic.read_split()
            session.observe(snapshot(utcnow(), green_percentage=split.green_percentage))
            kind = session.gate_view().kind
            note = "checked" if kind is StepKind.ATTESTATION else None
            record = await session.proceed(note=note)
            assert record.state.value in ("passed", "attested", "running"), record
        split = await session.traffic.read_split()
        session.observe(snapshot(utcnow(), green_percentage=split.green_percentage))
        await session.proceed()  # the window opens: the step runs
        print("READY", session.deployment_id, session.engine.current_step_id, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


@pytest.mark.engines
async def test_sigkill_mid_phase_then_resume_exactly_there(tmp_path: Path, proxy: HAProxy) -> None:
    def config_for(window_s: float) -> AppConfig:
        return ui_config(
            tmp_path,
            traffic={"kind": "haproxy", "admin": str(proxy.admin_socket), "backend": "acgs"},
            monitor_windows={"monitor-10": window_s, "monitor-50": 2},
            rollback={"report_dir": str(tmp_path / "reports")},
        )

    config_file = tmp_path / "child-config.json"
    config_file.write_text(json.dumps(config_for(600).model_dump(mode="json", exclude_none=True)))
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), tests=str(TESTS), stop="monitor-10"))
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    child = subprocess.Popen(
        [sys.executable, str(script), str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 120)
        assert line.startswith("READY"), line + child.stdout.read()
        _, deployment_id, step = line.split()
        assert step == "monitor-10"
        assert weights(proxy) == (230, 26)  # 10 % green, set by the child
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    config = config_for(2)
    session = make_session(
        config, utcnow, traffic=HAProxyRuntimeSwitch(str(proxy.admin_socket), backend="acgs")
    )
    [saved] = scan_deployments(session.trail).unfinished
    assert saved.deployment_id == deployment_id
    assert (saved.current_phase, saved.current_step) == ("phase-2", "monitor-10")
    assert saved.state["steps"]["monitor-10"]["state"] == "running"
    assert saved.later_actions == [], "the saved state is the chain's last word"

    session.resume(saved)
    split = await session.read_back_traffic()
    assert split.green_weight == 26 and split.blue_weight == 230
    record = session.record("monitor-10")
    assert record.state is StepState.FAILED
    assert record.reason == "interrupted: the monitor window must be run again"
    assert session.record("switch-10").state is StepState.PASSED
    assert session.engine.current_step_id == "monitor-10"

    # And on from there: the window again, then 50 %.
    session.observe(snapshot(utcnow(), green_percentage=split.green_percentage))
    await session.proceed()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        session.observe(snapshot(utcnow(), green_percentage=split.green_percentage))
        if session.record("monitor-10").state is not StepState.RUNNING:
            break
        await asyncio.sleep(0.1)
    assert session.record("monitor-10").state is StepState.PASSED, session.record("monitor-10")
    session.observe(snapshot(utcnow(), green_percentage=split.green_percentage))
    assert (await session.proceed()).state is StepState.PASSED
    assert weights(proxy) == (128, 128)
    actions = [r.action for r in chain(session) if r.action != STATE_ACTION]
    assert actions.count("deployment.started") == 1
    resumed = actions.index("deployment.resumed")
    assert actions[resumed - 1] == "step.interrupted"
    assert actions[resumed + 1] == "traffic.read_back"
    assert actions[resumed + 2 :] == [
        "step.started",  # monitor-10, again
        "step.passed",
        "step.started",  # switch-50
        "step.passed",
    ]
    assert session.trail.verify().ok


async def test_the_deployment_report_lists_the_actions_not_the_saved_states(
    tmp_path: Path,
) -> None:
    from console.report import build_deployment_report

    clock = Clock(fx.T0)
    session = make_session(ui_config(tmp_path), clock)
    session.start()
    await walk_to(session, clock, "pre-blue-healthy")
    report = build_deployment_report(session.trail, session.deployment_id or "")
    events = [r.action for r in chain(session) if r.action != STATE_ACTION]
    assert [e.action for e in report.timeline] == events
    assert report.chain.ok
    assert any(r.action == STATE_ACTION for r in chain(session))


async def test_events_after_the_last_saved_state_are_named(tmp_path: Path) -> None:
    clock = Clock(fx.T0)
    session = make_session(ui_config(tmp_path), clock)
    session.start()
    await walk_to(session, clock, "pre-compliance-score")
    # A console killed between an event and the state after it: the event is in the chain.
    session.trail.append(
        "step.passed",
        evidence={"step": "pre-compliance-score"},
        deployment_id=session.deployment_id,
    )
    session.trail.append("rollback", evidence={}, deployment_id=session.deployment_id)
    [saved] = scan_deployments(session.trail).unfinished
    assert saved.current_step == "pre-compliance-score"
    assert saved.later_actions == ["step.passed"]
