"""The runbook engine: transitions, gates, commands, traffic, monitor windows, resume.

Snapshots are fixed models (the engine's input); commands and traffic switches are real
tiny programs; the clock is a settable one so monitor windows take no wall time.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from runbook_fixtures import (
    T0,
    Clock,
    Sink,
    alert,
    env_snapshot,
    make_config,
    script,
    snapshot,
)

from backends.models import AlertPhase, AlertSeverity, ServiceState
from backends.traffic import CommandTrafficSwitch
from console.config import AppConfig
from console.runbook.engine import (
    AuditSinkError,
    EngineError,
    RunbookEngine,
    StepState,
    deployment_id_for,
)
from console.runbook.loader import parse_runbook
from console.runbook.model import Runbook, StepKind

DATA = Path(__file__).parent / "data"

HEADER = """
title = "Mini runbook"
version = "0.1"
constitutional_hash = "cdd01ef066bc6cf2"

[[procedures]]
id = "deployment"
title = "Mini deployment"
source = "## Mini"
"""


def phase(pid: str, *steps: str, budget: float | None = None) -> str:
    head = f'[[procedures.phases]]\nid = "{pid}"\ntitle = "{pid}"\nsource = "### {pid}"\n'
    if budget is not None:
        head += f"budget_s = {budget}\n"
    return head + "\n".join(steps)


def step(sid: str, kind: str, extra: str = "") -> str:
    return (
        f'[[procedures.phases.steps]]\nid = "{sid}"\nkind = "{kind}"\ntitle = "{sid}"\n'
        f'section = "Mini"\nsource = "- {sid}"\n' + textwrap.dedent(extra).strip() + "\n"
    )


def mini(*phases: str) -> Runbook:
    return parse_runbook(HEADER + "\n".join(phases), "mini.toml")


HEALTHY = step(
    "healthy",
    "check",
    """
    checks = [
      { all_services = "up", environment = "green", min_count = 9 },
      { metric = "p99_latency_ms", environment = "green", op = "<", value = 5 },
    ]
    """,
)
SIGN = step("sign", "attestation", 'prompt = "Sign it"')


def start(
    rb: Runbook, cfg: AppConfig | None = None, **kw: Any
) -> tuple[RunbookEngine, Clock, Sink]:
    clock: Clock = kw.pop("clock", None) or Clock()
    sink: Sink = kw.pop("sink", None) or Sink()
    engine = RunbookEngine.start(rb, cfg or make_config(), "alice", sink=sink, clock=clock, **kw)
    return engine, clock, sink


def see(engine: RunbookEngine, clock: Clock, **kw: Any) -> None:
    engine.observe(snapshot(clock.now, **kw))


# --- start, gates, checks, skip -------------------------------------------------


def test_start_emits_events_and_the_deployment_id() -> None:
    engine, _clock, sink = start(mini(phase("p1", HEALTHY, SIGN, budget=60)))
    assert engine.deployment_id == "20250107_100000" == deployment_id_for(T0)
    assert sink.actions() == ["deployment.started", "phase.started"]
    started = sink.of("deployment.started")[0]
    assert (started["deployment_id"], started["operator"], started["procedure"]) == (
        "20250107_100000",
        "alice",
        "deployment",
    )
    assert engine.current_step_id == "healthy"
    assert engine.record("healthy").state is StepState.PENDING


def test_gate_opens_only_on_a_fresh_passing_snapshot() -> None:
    engine, clock, _ = start(mini(phase("p1", HEALTHY, SIGN)))
    gate = engine.gate()
    assert gate is not None and not gate.open
    assert any("no snapshot observed yet" in r for r in gate.reasons)
    see(engine, clock)
    gate = engine.gate()
    assert gate is not None and gate.open and gate.kind is StepKind.CHECK
    clock.advance(10)  # the snapshot is now stale
    gate = engine.gate()
    assert gate is not None and not gate.open
    assert any("stale after 5 s" in r for r in gate.reasons)
    # A check on stale data fails, with the reason as evidence.
    record = engine.check("alice")
    assert record.state is StepState.FAILED
    assert "stale" in record.reason
    assert engine.current_step_id == "healthy"


def test_check_fails_with_measured_values_then_passes() -> None:
    engine, clock, sink = start(mini(phase("p1", HEALTHY, SIGN)))
    slow = env_snapshot("green", metric_values={"p99_latency_ms": 7.25})
    see(engine, clock, green=slow)
    record = engine.check("alice")
    assert record.state is StepState.FAILED
    p99 = next(o for o in record.evidence["outcomes"] if "p99" in o["check"])
    assert (p99["verdict"], p99["measured"], p99["threshold"], p99["value"]) == (
        "fail",
        "7.25",
        "< 5",
        7.25,
    )
    assert sink.of("step.failed")[0]["reason"].startswith("green p99_latency_ms <")
    clock.advance(1)
    see(engine, clock)
    assert engine.check("alice").state is StepState.PASSED
    assert engine.record("healthy").attempts == 2
    assert engine.current_step_id == "sign"


def test_unknown_data_keeps_the_gate_closed_and_skip_needs_a_reason() -> None:
    two_checks = step(
        "second", "check", 'checks = [{ redis = "operational", environment = "green" }]'
    )
    engine, clock, sink = start(mini(phase("p1", HEALTHY, two_checks, SIGN)))
    blind = env_snapshot("green", metric_values={"p99_latency_ms": None})
    see(engine, clock, green=blind)
    gate = engine.gate()
    assert gate is not None and not gate.open
    assert any("unknown" in r and "empty query result" in r for r in gate.reasons)
    record = engine.check("alice")
    assert record.state is StepState.FAILED
    assert any(o["verdict"] == "unknown" for o in record.evidence["outcomes"])
    for empty in ("", "   "):
        with pytest.raises(EngineError, match="needs a reason"):
            engine.skip("alice", empty)
    engine.skip("alice", "Prometheus is down; latency read from the LB's own stats")
    skipped = engine.record("healthy")
    assert skipped.state is StepState.SKIPPED
    assert skipped.reason == "Prometheus is down; latency read from the LB's own stats"
    event = sink.of("step.skipped")[0]
    assert (event["step"], event["operator"], event["evidence"]["skipped_from"]) == (
        "healthy",
        "alice",
        "failed",
    )
    assert "Prometheus is down" in event["reason"]
    # A check that has not been run cannot be skipped.
    assert engine.current_step_id == "second"
    with pytest.raises(EngineError, match="only a failed step can be skipped"):
        engine.skip("alice", "no time")


def test_actions_must_match_the_current_step() -> None:
    engine, _clock, _ = start(mini(phase("p1", HEALTHY, SIGN)))
    with pytest.raises(EngineError, match="'sign' is not the current step"):
        engine.attest("alice", "done", step_id="sign")
    with pytest.raises(EngineError, match="is a check step"):
        engine.attest("alice", "done")


def test_sink_failure_is_reported() -> None:
    def broken(action: str, evidence: dict[str, Any]) -> None:
        raise OSError("disk full")

    with pytest.raises(AuditSinkError, match="disk full"):
        RunbookEngine.start(mini(phase("p1", SIGN)), make_config(), "alice", sink=broken)


# --- command steps ----------------------------------------------------------------


def test_command_without_argv_is_an_attestation_never_a_skip() -> None:
    rb = mini(phase("p1", step("run-it", "command", 'runbook_command = "./deploy.sh"'), SIGN))
    engine, _clock, sink = start(rb)
    gate = engine.gate()
    assert gate is not None and gate.kind is StepKind.ATTESTATION
    with pytest.raises(EngineError, match="attest it with a note"):
        asyncio.run(engine.run_command("alice"))
    with pytest.raises(EngineError, match="needs a note"):
        engine.attest("alice", " ")
    record = engine.attest("alice", "ran ./deploy.sh by hand on bastion-1, exit 0")
    assert record.state is StepState.ATTESTED
    assert record.evidence["unconfigured_command"] == "./deploy.sh"
    assert sink.of("step.attested")[0]["kind"] == "attestation"


def test_every_command_of_the_shipped_runbook_is_attestable_without_config() -> None:
    from console.runbook.loader import load_runbook

    rb = load_runbook()
    engine = RunbookEngine.start(rb, make_config(), "alice")
    commands = [s for _, s in engine.procedure.steps() if s.kind == "command"]
    assert commands
    assert {engine.effective_kind(s) for s in commands} == {StepKind.ATTESTATION}
    cfg = make_config(commands={"deploy-infrastructure-green": {"argv": ["true"]}})
    engine = RunbookEngine.start(rb, cfg, "alice")
    kinds = {s.id: engine.effective_kind(s) for s in commands}
    assert kinds["deploy-infrastructure-green"] is StepKind.COMMAND
    assert kinds["smoke-tests-green"] is StepKind.ATTESTATION


def command_engine(
    tmp_path: Path, body: str, timeout_s: float = 20.0, args: list[str] | None = None
):  # type: ignore[no-untyped-def]
    prog = script(tmp_path / "step.sh", body)
    cfg = make_config(
        commands={
            "run-it": {
                "argv": [str(prog), *(args or [])],
                "cwd": str(tmp_path),
                "timeout_s": timeout_s,
            }
        }
    )
    return start(mini(phase("p1", step("run-it", "command"), SIGN)), cfg)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_dead(pid: int, within_s: float = 5.0) -> bool:
    for _ in range(int(within_s / 0.05)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return not alive(pid)


async def test_command_output_streams_line_by_line_and_passes(tmp_path: Path) -> None:
    engine, _clock, sink = command_engine(
        tmp_path,
        """
        echo "deploying $1 with $2"
        echo "warning: to stderr" >&2
        printf 'no trailing newline in %s' "$(basename "$(pwd)")"
        """,
        args=["{deployment_id}", "{constitutional_hash}"],
    )
    lines: list[str] = []
    record = await engine.run_command("alice", on_output=lines.append)
    assert lines == [
        "deploying 20250107_100000 with cdd01ef066bc6cf2",
        "warning: to stderr",
        f"no trailing newline in {tmp_path.name}",
    ]
    assert record.state is StepState.PASSED
    assert record.evidence["exit_code"] == 0
    assert record.evidence["output_tail"] == lines
    assert record.evidence["argv"][1:] == ["20250107_100000", "cdd01ef066bc6cf2"]
    assert sink.actions()[-2:] == ["step.started", "step.passed"]
    assert engine.current_step_id == "sign"


async def test_command_output_without_newlines_still_streams(tmp_path: Path) -> None:
    engine, _, _ = command_engine(tmp_path, "head -c 300000 /dev/zero | tr '\\0' x\n")
    lines: list[str] = []
    record = await engine.run_command("alice", on_output=lines.append)
    assert record.state is StepState.PASSED
    assert len(lines) >= 2 and "".join(lines) == "x" * 300000


async def test_command_non_zero_exit_fails_and_can_run_again(tmp_path: Path) -> None:
    engine, _, _sink = command_engine(tmp_path, "echo 'smoke test 3 failed'\nexit 3\n")
    record = await engine.run_command("alice")
    assert record.state is StepState.FAILED
    assert record.reason == "exited with code 3"
    assert record.evidence["exit_code"] == 3
    assert record.evidence["output_tail"] == ["smoke test 3 failed"]
    assert engine.current_step_id == "run-it"
    record = await engine.run_command("alice")
    assert record.attempts == 2 and record.state is StepState.FAILED


async def test_command_timeout_stops_it_and_what_it_started(tmp_path: Path) -> None:
    engine, _, _ = command_engine(
        tmp_path,
        """
        sleep 60 &
        echo $! > child.pid
        echo started
        sleep 60
        """,
        timeout_s=1.0,
    )
    record = await engine.run_command("alice")
    assert record.state is StepState.FAILED
    assert record.reason == "timed out after 1 s and was stopped"
    assert record.evidence["timed_out"] is True
    assert record.evidence["output_tail"] == ["started"]
    child = int((tmp_path / "child.pid").read_text())
    assert await wait_dead(child)


async def test_command_cancel_by_operator(tmp_path: Path) -> None:
    engine, _, _ = command_engine(tmp_path, "echo ready\nexec sleep 60\n")
    ready = asyncio.Event()

    def on_line(line: str) -> None:
        if line == "ready":
            ready.set()

    task = asyncio.create_task(engine.run_command("alice", on_output=on_line))
    await asyncio.wait_for(ready.wait(), 10)
    assert engine.record("run-it").state is StepState.RUNNING
    assert engine.cancel_command("bob")
    record = await asyncio.wait_for(task, 10)
    assert record.state is StepState.FAILED
    assert record.reason == "cancelled by bob"
    assert record.evidence["cancelled"] is True
    assert not engine.cancel_command("bob")  # nothing runs any more


async def test_cancelling_the_task_stops_the_command(tmp_path: Path) -> None:
    engine, _, _ = command_engine(tmp_path, "echo $$ > cmd.pid\necho ready\nexec sleep 60\n")
    ready = asyncio.Event()
    task = asyncio.create_task(
        engine.run_command("alice", on_output=lambda line: ready.set() if line == "ready" else None)
    )
    await asyncio.wait_for(ready.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.record("run-it").state is StepState.FAILED
    assert "cancelled" in engine.record("run-it").reason
    assert await wait_dead(int((tmp_path / "cmd.pid").read_text()))


async def test_command_that_cannot_start(tmp_path: Path) -> None:
    cfg = make_config(commands={"run-it": {"argv": [str(tmp_path / "missing.sh")]}})
    engine, _, _ = start(mini(phase("p1", step("run-it", "command"), SIGN)), cfg)
    record = await engine.run_command("alice")
    assert record.state is StepState.FAILED
    assert record.reason.startswith("cannot start")
    assert record.evidence["exit_code"] is None


# --- traffic steps ------------------------------------------------------------------


def file_switch(
    tmp_path: Path,
    *,
    set_body: str | None = None,
    read_body: str | None = None,
    read: bool = True,
    reset: bool = True,
) -> CommandTrafficSwitch:
    """A real command switch: the 'load balancer' keeps its split in a file."""
    if reset:
        (tmp_path / "split").write_text("0\n")
    setter = script(tmp_path / "lb-set.sh", set_body or 'echo "$1" > split\n')
    reader = script(tmp_path / "lb-read.sh", read_body or "cat split\n")
    return CommandTrafficSwitch(
        [str(setter), "{green_percentage}"],
        [str(reader)] if read else None,
        cwd=tmp_path,
        timeout_s=5,
    )


SWITCH_10 = step("switch-10", "traffic", "green_percentage = 10")
SWITCH_100 = step(
    "switch-100",
    "traffic",
    """
    green_percentage = 100
    confirm_typed = "green"
    """,
)


async def test_traffic_step_sets_and_verifies_the_read_back(tmp_path: Path) -> None:
    engine, clock, sink = start(mini(phase("p2", SWITCH_10, SIGN)), traffic=file_switch(tmp_path))
    see(engine, clock)
    record = await engine.shift_traffic("alice")
    assert record.state is StepState.PASSED
    assert (tmp_path / "split").read_text().strip() == "10"
    assert record.evidence["read_back"]["green_percentage"] == 10
    assert record.evidence["set_read_back"]["green_percentage"] == 10
    assert record.evidence["metrics"]["before"]["green"]["requests_per_second"] == 150
    assert engine.state.baseline is not None and engine.state.baseline.taken_at == T0
    assert sink.of("step.started")[0]["green_percentage"] == 10


async def test_traffic_switch_failure_is_evidence(tmp_path: Path) -> None:
    switch = file_switch(
        tmp_path, set_body='echo "backend acgs: no such server green" >&2\nexit 1\n'
    )
    engine, _, _ = start(mini(phase("p2", SWITCH_10, SIGN)), traffic=switch)
    record = await engine.shift_traffic("alice")
    assert record.state is StepState.FAILED
    assert "no such server green" in record.reason
    assert "TrafficSwitchError" in record.evidence["error"]
    with pytest.raises(EngineError, match="cannot be skipped"):
        engine.skip("alice", "whatever")


async def test_traffic_without_read_back_or_drifting_read_back_fails(tmp_path: Path) -> None:
    blind, _, _ = start(
        mini(phase("p2", SWITCH_10, SIGN)), traffic=file_switch(tmp_path, read=False)
    )
    record = await blind.shift_traffic("alice")
    assert record.state is StepState.FAILED
    assert "read-back is unknown" in record.reason
    # The switch verified 10 %, but a second read shows someone moved it back.
    drift = tmp_path / "drift"
    drift.mkdir()
    reader = "if [ -e read-once ]; then echo 0; else touch read-once; cat split; fi\n"
    engine, _, _ = start(
        mini(phase("p2", SWITCH_10, SIGN)), traffic=file_switch(drift, read_body=reader)
    )
    record = await engine.shift_traffic("alice")
    assert record.state is StepState.FAILED
    assert record.reason == "an independent read-back says 0% green, wanted 10%"


async def test_destructive_step_needs_the_name_typed_and_four_eyes(tmp_path: Path) -> None:
    engine, _clock, sink = start(mini(phase("p2", SWITCH_100, SIGN)), traffic=file_switch(tmp_path))
    gate = engine.gate()
    assert gate is not None and gate.confirm_typed == "green" and gate.four_eyes
    for typed in (None, "blue", "Green"):
        with pytest.raises(EngineError, match="type 'green' to confirm"):
            await engine.shift_traffic("alice", typed=typed, approved_by="bob")
    with pytest.raises(EngineError, match="needs a second operator's approval"):
        await engine.shift_traffic("alice", typed="green")
    with pytest.raises(EngineError, match="alice cannot approve it"):
        await engine.shift_traffic("alice", typed="green", approved_by="alice")
    assert (tmp_path / "split").read_text().strip() == "0"  # nothing moved
    record = await engine.shift_traffic("alice", typed="green", approved_by="bob")
    assert record.state is StepState.PASSED and record.approved_by == "bob"
    assert sink.of("step.passed")[0]["approved_by"] == "bob"
    # Without four-eyes configured, typing the name is enough.
    solo = make_config(coordination={"four_eyes_gates": []})
    other = tmp_path / "solo"
    other.mkdir()
    engine, _, _ = start(mini(phase("p2", SWITCH_100, SIGN)), solo, traffic=file_switch(other))
    assert (await engine.shift_traffic("alice", typed="green")).state is StepState.PASSED


async def test_preconditions_guard_a_destructive_command(tmp_path: Path) -> None:
    decommission = step(
        "decommission-blue",
        "command",
        """
        confirm_typed = "blue"
        preconditions = [{ traffic_green = "==", value = 100 }]
        """,
    )
    cfg = make_config(commands={"decommission-blue": {"argv": ["true"]}})
    engine, clock, _ = start(mini(phase("p3", decommission, SIGN)), cfg)
    see(engine, clock, green_percentage=50)
    with pytest.raises(EngineError, match="cannot start: green traffic == 100%: fail"):
        await engine.run_command("alice", typed="blue", approved_by="bob")
    see(engine, clock, green_percentage=100)
    record = await engine.run_command("alice", typed="blue", approved_by="bob")
    assert record.state is StepState.PASSED


async def test_no_traffic_switch_connected() -> None:
    engine, _, _ = start(mini(phase("p2", SWITCH_10, SIGN)))
    with pytest.raises(EngineError, match="no traffic switch"):
        await engine.shift_traffic("alice")


# --- monitor windows ----------------------------------------------------------------

MONITOR = step(
    "monitor-10",
    "monitor",
    """
    duration_s = 120
    environment = "both"
    """,
)


def feed(engine: RunbookEngine, clock: Clock, seconds: int, **kw: Any) -> None:
    for _ in range(seconds):
        clock.advance(1)
        see(engine, clock, **kw)


def test_monitor_window_passes_after_its_duration() -> None:
    engine, clock, _sink = start(mini(phase("p2", MONITOR, SIGN)))
    see(engine, clock)
    engine.start_monitor("alice")
    feed(engine, clock, 60)
    progress = engine.monitor_progress()
    assert progress is not None and (progress.elapsed_s, progress.remaining_s) == (60, 60)
    assert engine.record("monitor-10").state is StepState.RUNNING
    warning = (
        alert(
            "cache-hit-warning",
            name="Cache Hit Rate",
            severity=AlertSeverity.WARNING,
            phase=AlertPhase.FIRING,
        ),
    )
    feed(engine, clock, 5, alerts=warning)  # a warning does not fail the window
    spike = env_snapshot("green", metric_values={"p99_latency_ms": 4.6, "cache_hit_rate": 0.86})
    feed(engine, clock, 1, green=spike)
    feed(engine, clock, 54)
    record = engine.record("monitor-10")
    assert record.state is StepState.PASSED
    assert record.evidence["snapshots"] == 120
    assert record.evidence["max_gap_s"] == 1.0
    assert record.evidence["warnings_seen"] == ["Cache Hit Rate: P99 > 5 ms for > 2 min"]
    worst = record.evidence["metrics"]["worst"]
    assert (worst["green"]["p99_latency_ms"], worst["green"]["cache_hit_rate"]) == (4.6, 0.86)
    assert worst["blue"]["p99_latency_ms"] == 3.2
    assert record.evidence["metrics"]["last"]["green"]["p99_latency_ms"] == 3.2
    assert engine.current_step_id == "sign"
    assert engine.monitor_progress() is None


def test_monitor_window_length_from_the_config() -> None:
    cfg = make_config(monitor_windows={"monitor-10": 5})
    engine, clock, sink = start(mini(phase("p2", MONITOR, SIGN)), cfg)
    engine.start_monitor("alice")
    assert sink.of("step.started")[0]["duration_s"] == 5
    feed(engine, clock, 5)
    assert engine.record("monitor-10").state is StepState.PASSED


@pytest.mark.parametrize("automatic", [False, True])
def test_critical_alert_fails_the_window_and_offers_rollback(automatic: bool) -> None:
    offers: list[tuple[str, bool]] = []
    cfg = make_config(rollback={"automatic": automatic})
    engine, clock, sink = start(
        mini(phase("p2", MONITOR, SIGN)), cfg, on_rollback=lambda r, a: offers.append((r, a))
    )
    engine.start_monitor("alice")
    feed(engine, clock, 30)
    firing = (alert(phase=AlertPhase.FIRING, at=clock.now),)
    feed(engine, clock, 1, alerts=firing)
    record = engine.record("monitor-10")
    assert record.state is StepState.FAILED and record.failed_by_alert
    assert record.reason == "critical alert firing during the window: P99 Latency (green)"
    assert record.evidence["alerts"][0]["rule_id"] == "p99-latency-critical"
    assert record.evidence["elapsed_s"] == 31
    assert engine.rollback_offered and engine.automatic_rollback is automatic
    assert offers == [(record.reason, automatic)]
    assert sink.of("rollback.offered")[0]["automatic"] is automatic
    # The gate stays closed: the window cannot be skipped, and nothing after it is reachable.
    assert engine.current_step_id == "monitor-10"
    with pytest.raises(EngineError, match="failed on a firing alert"):
        engine.skip("alice", "looks fine to me")
    with pytest.raises(EngineError, match="is a monitor step"):
        engine.attest("alice", "fine")
    # Running the window again declines the offered rollback, on the record.
    engine.start_monitor("alice")
    assert not engine.rollback_offered
    assert sink.of("rollback.declined")[0]["operator"] == "alice"


def test_monitor_window_without_data_throughout_does_not_pass() -> None:
    engine, clock, _ = start(mini(phase("p2", MONITOR, SIGN)))
    engine.start_monitor("alice")
    feed(engine, clock, 10)
    clock.advance(111)
    engine.tick()
    record = engine.record("monitor-10")
    assert record.state is StepState.FAILED
    assert record.reason.startswith("no usable data for 110.0 s during the window")
    assert not record.failed_by_alert and not engine.rollback_offered
    # An empty window, then: nothing observed at all.
    engine.start_monitor("alice")
    clock.advance(121)
    engine.tick()
    assert engine.record("monitor-10").reason == "no usable snapshot during the window"
    # Such a failure (no data, no alert) may be skipped with a reason.
    engine.skip("alice", "metrics pipeline down; watched the LB dashboard for 2 minutes")
    assert engine.current_step_id == "sign"


def test_unknown_critical_rules_do_not_vouch_for_the_window() -> None:
    engine, clock, _ = start(mini(phase("p2", MONITOR, SIGN)))
    engine.start_monitor("alice")
    feed(engine, clock, 120, alerts=(alert(unknown=True),))
    record = engine.record("monitor-10")
    assert record.state is StepState.FAILED
    assert "rules without data: P99 Latency" in record.reason


async def test_traffic_moved_during_the_window_fails_it(tmp_path: Path) -> None:
    engine, clock, _ = start(
        mini(phase("p2", SWITCH_10, MONITOR, SIGN)), traffic=file_switch(tmp_path)
    )
    see(engine, clock)
    await engine.shift_traffic("alice")
    engine.start_monitor("alice")
    feed(engine, clock, 10, green_percentage=10.15625)  # 26/256: within tolerance
    assert engine.record("monitor-10").state is StepState.RUNNING
    feed(engine, clock, 1, green_percentage=0)
    record = engine.record("monitor-10")
    assert record.state is StepState.FAILED
    assert "traffic split changed to 0% green" in record.reason


# --- reports, phase clocks, ending early -------------------------------------------

REPORT = step("report", "report", 'report = "deployment"')


async def test_report_step_uses_the_writer_or_becomes_an_attestation(tmp_path: Path) -> None:
    async def writer(kind: str, state: dict[str, Any]) -> str:
        path = tmp_path / f"{state['deployment_id']}-{kind}.json"
        path.write_text(json.dumps(state))
        return str(path)

    engine, _, _ = start(mini(phase("p3", REPORT, SIGN)), reporter=writer)
    record = await engine.make_report("alice")
    assert record.state is StepState.PASSED
    assert (
        json.loads(Path(record.evidence["location"]).read_text())["deployment_id"]
        == engine.deployment_id
    )

    async def failing(kind: str, state: dict[str, Any]) -> str:
        raise OSError("read-only file system")

    engine, _, _ = start(mini(phase("p3", REPORT, SIGN)), reporter=failing)
    record = await engine.make_report("alice")
    assert record.state is StepState.FAILED and "read-only file system" in record.reason
    engine, _, _ = start(mini(phase("p3", REPORT, SIGN)))
    assert engine.effective_kind(engine.procedure.phases[0].steps[0]) is StepKind.ATTESTATION


def test_phase_clock_counts_down_and_reports_overrun() -> None:
    engine, clock, sink = start(
        mini(phase("p1", SIGN, budget=60), phase("p2", step("last", "attestation")))
    )
    clock.advance(45)
    pc = engine.phase_clock("p1")
    assert (pc.elapsed_s, pc.remaining_s, pc.overrun) == (45, 15, False)
    clock.advance(45)
    assert engine.phase_clock("p1").overrun
    engine.attest("alice", "signed")
    done = sink.of("phase.completed")[0]
    assert (done["phase"], done["elapsed_s"], done["over_budget"]) == ("p1", 90, True)
    assert engine.phase_clock("p1").elapsed_s == 90  # frozen once the phase is over
    assert engine.phase_clock("p2").remaining_s is None
    engine.attest("alice", "signed too")
    assert engine.finished and engine.state.outcome == "completed"
    assert sink.actions()[-1] == "deployment.completed"
    assert sink.of("deployment.completed")[0]["attested"] == ["sign", "last"]


def test_ending_early_after_a_rollback() -> None:
    engine, _clock, sink = start(mini(phase("p2", MONITOR, SIGN)))
    with pytest.raises(EngineError, match="needs a reason"):
        engine.end("alice", "rolled_back", "")
    engine.end("alice", "rolled_back", "P99 critical at 10%; rolled back to blue")
    assert engine.finished and engine.gate() is None
    assert sink.of("deployment.rolled_back")[0]["current"] == "monitor-10"
    with pytest.raises(EngineError, match="is over"):
        engine.start_monitor("alice")


def test_reference_procedures_are_not_walked() -> None:
    from console.runbook.loader import load_runbook

    with pytest.raises(EngineError, match=r"run by console\.rollback"):
        RunbookEngine.start(load_runbook(), make_config(), "alice", procedure="emergency-rollback")
    with pytest.raises(EngineError, match="no procedure 'nope'"):
        RunbookEngine.start(load_runbook(), make_config(), "alice", procedure="nope")


# --- serialize / restore -------------------------------------------------------------


async def test_state_round_trips_and_resumes_exactly_there(tmp_path: Path) -> None:
    rb = mini(phase("p1", HEALTHY, budget=1800), phase("p2", SWITCH_10, MONITOR, SIGN, budget=300))
    persisted: list[str] = []  # what a store would keep: the state after every event
    engine, clock, _sink = start(
        rb, traffic=file_switch(tmp_path), on_state=lambda d: persisted.append(json.dumps(d))
    )
    see(engine, clock)
    engine.check("alice")
    clock.advance(1)
    see(engine, clock)
    await engine.shift_traffic("alice")
    engine.start_monitor("alice")
    feed(engine, clock, 30, green_percentage=10)
    saved = json.loads(persisted[-1])
    # Every transition was checkpointed (a running window's progress is not: it restarts anyway).
    assert saved["steps"] == json.loads(json.dumps(engine.to_dict()))["steps"]
    assert len(persisted) == engine.state.events
    # SIGKILL here: a new process, a new engine, the same state.
    clock.advance(20)
    sink2 = Sink()
    restored = RunbookEngine.restore(
        saved,
        rb,
        make_config(),
        "carol",
        sink=sink2,
        clock=clock,
        traffic=file_switch(tmp_path, reset=False),
    )
    assert restored.deployment_id == engine.deployment_id
    assert restored.current_step_id == "monitor-10"
    for sid in ("healthy", "switch-10"):
        assert restored.to_dict()["steps"][sid] == saved["steps"][sid]
    interrupted = restored.record("monitor-10")
    assert interrupted.state is StepState.FAILED
    assert interrupted.reason == "interrupted: the monitor window must be run again"
    assert sink2.actions() == ["step.interrupted", "deployment.resumed"]
    assert sink2.of("deployment.resumed")[0]["operator"] == "carol"
    assert restored.state.baseline == engine.state.baseline
    assert restored.state.phase_started == engine.state.phase_started
    assert restored.phase_clock("p2").elapsed_s == 51
    split = await restored.read_back_traffic("carol")
    assert split.green_percentage == 10
    # And it carries on.
    restored.start_monitor("carol")
    feed(restored, clock, 120, green_percentage=10)
    assert restored.record("monitor-10").state is StepState.PASSED
    restored.attest("carol", "done")
    assert restored.finished


async def test_restore_marks_an_interrupted_command(tmp_path: Path) -> None:
    engine, _, _ = command_engine(tmp_path, "echo ready\nexec sleep 60\n")
    ready = asyncio.Event()
    task = asyncio.create_task(
        engine.run_command("alice", on_output=lambda line: ready.set() if line == "ready" else None)
    )
    await asyncio.wait_for(ready.wait(), 10)
    saved = engine.to_dict()
    assert saved["steps"]["run-it"]["state"] == "running"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    restored = RunbookEngine.restore(saved, engine.runbook, engine.config, "alice")
    record = restored.record("run-it")
    assert record.state is StepState.FAILED
    assert record.reason.startswith("interrupted: the console stopped while the command ran")


def test_restore_refuses_a_changed_runbook_or_garbage() -> None:
    engine, _, _ = start(mini(phase("p1", HEALTHY, SIGN)))
    saved = engine.to_dict()
    with pytest.raises(EngineError, match="the runbook changed since it started"):
        RunbookEngine.restore(saved, mini(phase("p1", HEALTHY)), make_config(), "alice")
    with pytest.raises(EngineError, match="ran under constitutional hash cdd01ef066bc6cf2"):
        RunbookEngine.restore(
            saved, engine.runbook, make_config(constitutional_hash="0123456789abcdef"), "alice"
        )
    with pytest.raises(EngineError, match="malformed"):
        RunbookEngine.restore({"deployment_id": 5}, engine.runbook, make_config(), "alice")


# --- the whole shipped deployment, on fixed snapshots --------------------------------


async def test_walk_the_shipped_deployment_end_to_end(tmp_path: Path) -> None:
    """Every step of the shipped deployment procedure, through its real gates."""
    from console.runbook.loader import load_runbook

    rb = load_runbook()
    (tmp_path / "score.txt").write_text("98.5/100\n")
    cfg = make_config(
        security={
            "vulnerability_report": str(DATA / "trivy-clean.json"),
            "sbom": str(DATA / "cyclonedx.json"),
            "security_score_file": str(tmp_path / "score.txt"),
        },
        monitor_windows={"monitor-10": 3, "monitor-50": 3, "post-switch-monitoring": 5},
        commands={"smoke-tests-green": {"argv": ["sh", "-c", "echo 9/9 smoke tests passed"]}},
    )
    switch = file_switch(tmp_path)
    engine, clock, sink = start(rb, cfg, traffic=switch)

    def current_snapshot() -> None:
        green = float((tmp_path / "split").read_text())
        blue_down = engine.record("decommission-blue").state is StepState.ATTESTED
        blue = env_snapshot("blue", state=ServiceState.DOWN if blue_down else ServiceState.UP)
        clock.advance(1)
        engine.observe(snapshot(clock.now, green_percentage=green, blue=blue))

    seen: list[tuple[str, str]] = []
    while not engine.finished:
        current_snapshot()
        gate = engine.gate()
        assert gate is not None
        if gate.kind is StepKind.MONITOR and gate.state is StepState.RUNNING:
            continue
        assert gate.open, (gate.step_id, gate.reasons)
        seen.append((gate.step_id, gate.kind.value))
        approved = "bob" if gate.four_eyes else None
        record = await engine.proceed(
            "alice", note=f"checked {gate.step_id}", typed=gate.confirm_typed, approved_by=approved
        )
        assert record.state is not StepState.FAILED, (gate.step_id, record.reason)

    states = {sid: r.state for sid, r in engine.state.steps.items()}
    assert StepState.FAILED not in states.values() and StepState.SKIPPED not in states.values()
    assert states["smoke-tests-green"] is StepState.PASSED
    assert states["switch-100"] is StepState.PASSED
    assert (tmp_path / "split").read_text().strip() == "100"
    assert [sid for sid, kind in seen if kind == "traffic"] == [
        "switch-10",
        "switch-50",
        "switch-100",
    ]
    assert sink.actions()[-1] == "deployment.completed"
    completed = [e["phase"] for e in sink.of("phase.completed")]
    assert completed == ["pre-deployment", "phase-1", "phase-2", "phase-3", "success-criteria"]
    # Every event carries the deployment and the hash; every step has a terminal event.
    assert all(e["deployment_id"] == engine.deployment_id for _, e in sink.events)
    assert all(e["constitutional_hash"] == "cdd01ef066bc6cf2" for _, e in sink.events)
    finished = {e["step"] for a, e in sink.events if a in ("step.passed", "step.attested")}
    assert finished == set(states)


async def test_green_degrading_in_the_ten_percent_window(tmp_path: Path) -> None:
    """Degradation at 10 %: the window fails, rollback is offered, 50 % is out of reach."""
    from console.runbook.loader import load_runbook

    rb = load_runbook()
    cfg = make_config(monitor_windows={"monitor-10": 120})
    engine, clock, _sink = start(rb, cfg, traffic=file_switch(tmp_path))
    for phase_ in engine.procedure.phases[:2]:  # pre-deployment and phase 1: not under test
        for s in phase_.steps:
            engine.state.steps[s.id].state = StepState.SKIPPED
    engine.state.steps["switch-10"].state = StepState.PENDING
    see(engine, clock)
    await engine.shift_traffic("alice")
    engine.start_monitor("alice")
    feed(engine, clock, 40, green_percentage=10)
    slow = env_snapshot("green", metric_values={"p99_latency_ms": 9.0})
    firing = (alert(phase=AlertPhase.FIRING, at=clock.now),)
    feed(engine, clock, 1, green_percentage=10, green=slow, alerts=firing)
    assert engine.rollback_offered
    assert engine.current_step_id == "monitor-10"
    gate = engine.gate()
    assert gate is not None and gate.step_id == "monitor-10" and gate.state is StepState.FAILED
    with pytest.raises(EngineError, match="'switch-50' is not the current step"):
        await engine.shift_traffic("alice", "switch-50")
    assert (tmp_path / "split").read_text().strip() == "10"


# --- the audit trail as the sink -------------------------------------------------------


def test_engine_events_land_in_the_hash_chained_audit_trail(tmp_path: Path) -> None:
    from console.audit import open_trail
    from console.runbook.engine import audit_sink

    cfg = make_config(
        audit={
            "sqlite_path": str(tmp_path / "audit.sqlite3"),
            "spool_path": str(tmp_path / "spool"),
        }
    )
    trail = open_trail(cfg, operator="console")
    try:
        engine, clock, _ = start(mini(phase("p1", HEALTHY, SIGN)), cfg, sink=audit_sink(trail))
        engine.observe(snapshot(clock.now, green=env_snapshot("green", state=ServiceState.DOWN)))
        engine.check("alice")
        engine.skip("alice", "green is being redeployed; checked by hand")
        engine.attest("bob", "signed off")
        records = list(trail.records(deployment_id=engine.deployment_id))
        assert [r.action for r in records] == [
            "deployment.started",
            "phase.started",
            "step.failed",
            "step.skipped",
            "step.attested",
            "phase.completed",
            "deployment.completed",
        ]
        assert [r.operator for r in records[2:5]] == ["alice", "alice", "bob"]
        assert records[3].evidence["reason"] == "green is being redeployed; checked by hand"
        assert records[2].evidence["evidence"]["outcomes"][0]["verdict"] == "fail"
        assert trail.verify().ok
    finally:
        trail.close()
