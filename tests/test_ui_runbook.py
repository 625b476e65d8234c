"""The runbook screen under Pilot: checklists, gates, notes, reasons, typed names, resume.

The snapshots are fixed (the UI boundary); the session behind the screen is real: the
shipped runbook, the real engine, a real SQLite audit trail. Traffic steps move a real
HAProxy (servers that answer nothing: only its weights are under test). The clock is
settable, so the SVG snapshots are deterministic.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import ui_fixtures as fx
from pilot_support import click_when_drawn
from pilot_support import wait_until as wait_for
from runbook_fixtures import QUIET, Clock, alert, snapshot
from ui_runbook_fixtures import NOTE, degraded_green, make_session, ui_config, walk_to
from walk_fixtures import python_argv, weights

from backends.models import AlertPhase, Snapshot
from backends.traffic import HAProxyRuntimeSwitch
from console.deployment import STATE_ACTION, DeploymentSession, scan_deployments
from console.engines import HAProxy, free_port
from console.runbook.engine import StepState
from console.ui.screens.runbook import RunbookScreen
from console.ui.screens.runbook_dialogs import EndDialog, ReasonDialog, ResumeDialog

SIZES = [(80, 24), (120, 40)]
SKIP_REASON = "no dependency audit tool at this site yet"


async def type_text(pilot: Any, text: str) -> None:
    """Type into the focused input, key by key."""
    await pilot.press(*["space" if c == " " else c for c in text])


def actions(session: DeploymentSession, step_id: str | None = None) -> list[str]:
    """The audit actions recorded for the session's deployment (state records left out)."""
    return [
        r.action
        for r in session.trail.records(deployment_id=session.deployment_id)
        if r.action != STATE_ACTION and (step_id is None or r.evidence.get("step") == step_id)
    ]


def app_for(
    tmp_path: Path, session: DeploymentSession, snaps: list[Snapshot], **kwargs: Any
) -> Any:
    """A console on fixed snapshots, frozen at the session's clock, driving ``session``."""
    app, _ = fx.make_app(
        tmp_path / "state", snaps, now=session.clock(), config=session.config, **kwargs
    )
    app.runbook_driver.attach(session)
    return app


async def open_runbook(pilot: Any) -> RunbookScreen:
    app = pilot.app
    await wait_for(pilot, lambda: app.sweeps_completed >= 1, "the first sweep")
    await pilot.press("d")
    await wait_for(pilot, lambda: isinstance(app.screen, RunbookScreen), "the runbook screen")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, RunbookScreen)
    return screen


@pytest.fixture
def proxy(tmp_path: Path, start_engine: Callable[[Callable[[], Any]], Any]) -> Iterator[HAProxy]:
    """A HAProxy whose blue and green answer nothing: its weights are the point."""
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


async def failed_performance_state(tmp_path: Path) -> tuple[DeploymentSession, Snapshot]:
    """Pre-deployment done (one step skipped), Phase 1 stopped at a failed performance check."""
    clock = Clock(fx.T0)
    session = make_session(ui_config(tmp_path), clock)
    session.start()
    await walk_to(session, clock, "app-performance", skip={"pre-dependency-audit": SKIP_REASON})
    clock.advance(5)
    snap = degraded_green(clock.now)
    session.observe(snap)
    record = await session.proceed()
    assert record.state is StepState.FAILED
    clock.advance(0.8)
    return session, snap


# --- snapshots ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_checklist_snapshot(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    import asyncio

    session, snap = asyncio.run(failed_performance_state(tmp_path))
    app = app_for(tmp_path, session, [snap])

    async def run_before(pilot: Any) -> None:
        await open_runbook(pilot)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


# --- gates ----------------------------------------------------------------------------------


async def test_a_failing_check_keeps_the_gate_closed_and_says_why(tmp_path: Path) -> None:
    session, snap = await failed_performance_state(tmp_path)
    app = app_for(tmp_path, session, [snap])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runbook(pilot)
        gate = screen.gate_bar
        assert "✖ gate closed" in gate.plain_text
        assert "p99_latency_ms" in gate.plain_text and "7.2" in gate.plain_text
        assert screen.query_one("#gate-continue").disabled
        assert screen.check_action("continue", ()) is None
        row = screen.checklist
        assert row.cell_text("app-performance", "state") == "✖ failed"
        assert "7.2" in row.cell_text("app-performance", "evidence")
        details = screen.details.plain_text
        assert "Performance targets met: P99 <5ms" in details  # the runbook's own line
        assert "✖ fail" in details and "(want < 5)" in details
        attempts = session.record("app-performance").attempts
        await pilot.press("c")
        await pilot.pause()
        assert session.record("app-performance").attempts == attempts, "a closed gate ran"
        # The phase budget runs as a countdown (Phase 1 has 30 minutes).
        assert "left of 30m" in screen.query_one("#rb-header").plain_text
        # The pre-deployment page shows the skip and its reason.
        await pilot.press("left_square_bracket")
        await pilot.pause()
        assert screen.checklist.cell_text("pre-dependency-audit", "state") == "↷ skipped"
        assert SKIP_REASON in screen.checklist.cell_text("pre-dependency-audit", "evidence")


async def test_the_gate_opens_when_the_evidence_passes(tmp_path: Path) -> None:
    session, snap = await failed_performance_state(tmp_path)
    clock = session.clock
    assert isinstance(clock, Clock)
    good = snapshot(clock.now - timedelta(seconds=0.5))
    app = app_for(tmp_path, session, [snap, good])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runbook(pilot)
        await wait_for(pilot, lambda: "gate open" in screen.gate_bar.plain_text, "the gate to open")
        assert not screen.query_one("#gate-continue").disabled
        await pilot.press("c")
        await wait_for(
            pilot, lambda: session.record("app-performance").state is StepState.PASSED, "the pass"
        )
        assert session.engine.current_step_id == "app-security"
        assert actions(session, "app-performance")[-1] == "step.passed"


async def test_skipping_a_failed_check_needs_a_reason(tmp_path: Path) -> None:
    session, snap = await failed_performance_state(tmp_path)
    app = app_for(tmp_path, session, [snap])
    async with app.run_test(size=(120, 40)) as pilot:
        await open_runbook(pilot)
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, ReasonDialog), "the reason dialog")
        dialog = app.screen
        confirm = dialog.query_one("#dialog-confirm")
        assert confirm.disabled, "a skip without a reason"
        await pilot.press("enter")
        assert isinstance(app.screen, ReasonDialog), "an empty reason was accepted"
        await type_text(pilot, "latency target waived by the change board CAB-77")
        assert not confirm.disabled
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: session.record("app-performance").state is StepState.SKIPPED, "skip"
        )
    record = session.record("app-performance")
    assert record.reason == "latency target waived by the change board CAB-77"
    assert record.evidence["skipped_from"] == "failed"
    skipped = [
        r
        for r in session.trail.records(deployment_id=session.deployment_id)
        if r.action == "step.skipped"
    ]
    assert skipped[-1].evidence["reason"] == record.reason
    assert skipped[-1].evidence["step"] == "app-performance"


async def test_an_unconfigured_command_is_attested_with_a_note(tmp_path: Path) -> None:
    clock = Clock(fx.T0)
    session = make_session(ui_config(tmp_path), clock)
    session.start()
    await walk_to(session, clock, "pre-validation-runner")
    clock.advance(1)
    snap = snapshot(clock.now)
    clock.advance(0.5)
    app = app_for(tmp_path, session, [snap])
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runbook(pilot)
        assert "no command is configured" in screen.details.plain_text
        assert "Attest…" in str(screen.query_one("#gate-continue").label)
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ReasonDialog), "the note dialog")
        assert "acgs_validation_test_runner.py" in str(
            app.screen.query_one(".dialog-lines").render()
        )
        await pilot.press("escape")
        await pilot.pause()
        assert session.record("pre-validation-runner").state is StepState.PENDING
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ReasonDialog), "the note dialog")
        await type_text(pilot, "ran it by hand: 212 passed")
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: session.record("pre-validation-runner").state is StepState.ATTESTED,
            "the attestation",
        )
    record = session.record("pre-validation-runner")
    assert record.reason == "ran it by hand: 212 passed"
    assert record.operator == fx.OPERATOR
    assert record.evidence["unconfigured_command"] == "python tools/acgs_validation_test_runner.py"


async def test_command_output_streams_into_the_log_and_can_be_cancelled(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "for i in range(3):\n"
        "    print(f'validation batch {i} ok', flush=True)\n"
        "time.sleep(60)\n"
    )
    config = ui_config(
        tmp_path, commands={"pre-validation-runner": {"argv": python_argv(code), "timeout_s": 90}}
    )
    clock = Clock(fx.T0)
    session = make_session(config, clock)
    session.start()
    await walk_to(session, clock, "pre-validation-runner")
    clock.advance(1)
    snap = snapshot(clock.now)
    clock.advance(0.5)
    app = app_for(tmp_path, session, [snap])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runbook(pilot)
        assert sys.executable in screen.details.plain_text  # the configured argv
        assert str(screen.query_one("#gate-continue").label) == "Run command"
        await pilot.press("c")
        log = screen.details.log_widget
        await wait_for(pilot, lambda: log.line_count >= 3, "the output to stream")
        assert "validation batch 2 ok" in "\n".join(log.lines)
        assert session.record("pre-validation-runner").state is StepState.RUNNING
        assert screen.check_action("continue", ()) is None
        assert screen.check_action("cancel_command", ()) is True
        assert screen.query_one("#gate-cancel").display
        await pilot.press("k")
        await wait_for(
            pilot,
            lambda: session.record("pre-validation-runner").state is StepState.FAILED,
            "the cancel",
        )
    record = session.record("pre-validation-runner")
    assert record.evidence["cancelled"] is True
    assert record.reason.startswith("cancelled by")
    assert "validation batch 0 ok" in record.evidence["output_tail"]


@pytest.mark.engines
async def test_the_100_percent_switch_needs_green_typed(tmp_path: Path, proxy: HAProxy) -> None:
    clock = Clock(fx.T0)
    switch = HAProxyRuntimeSwitch(str(proxy.admin_socket), backend=proxy.backend)
    session = make_session(ui_config(tmp_path), clock, traffic=switch)
    session.start()

    def snap(at: Any) -> Snapshot:
        return snapshot(at, green_percentage=_green(proxy))

    await walk_to(session, clock, "switch-10", snap=snap)
    for step in ("switch-10", "monitor-10", "switch-50", "monitor-50"):
        clock.advance(1)
        session.observe(snap(clock.now))
        await session.proceed()
        if step.startswith("monitor"):
            for _ in range(3):
                clock.advance(1)
                session.observe(snap(clock.now))
            session.tick()
        assert session.record(step).state is StepState.PASSED, session.record(step).reason
    assert weights(proxy) == (128, 128)
    clock.advance(1)
    live = snap(clock.now)
    clock.advance(0.5)
    app = app_for(tmp_path, session, [live])
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runbook(pilot)
        assert "type 'green' to confirm" in screen.gate_bar.plain_text
        assert screen.query_one("#gate-continue").disabled
        screen.query_one("#gate-typed").focus()
        await type_text(pilot, "blue")
        await pilot.pause()
        assert screen.query_one("#gate-continue").disabled, "the wrong name opened the gate"
        await pilot.press("enter")
        await pilot.pause()
        assert weights(proxy) == (128, 128)
        for _ in range(4):
            await pilot.press("backspace")
        await type_text(pilot, "green")
        await wait_for(
            pilot, lambda: not screen.query_one("#gate-continue").disabled, "the gate to open"
        )
        assert str(screen.query_one("#gate-continue").label) == "Set 100% green"
        await click_when_drawn(pilot, "#gate-continue")
        await wait_for(
            pilot, lambda: session.record("switch-100").state is StepState.PASSED, "the switch"
        )
    assert weights(proxy) == (0, 256)
    assert session.record("switch-100").evidence["read_back"]["green_weight"] == 256


def _green(proxy: HAProxy) -> float:
    blue, green = weights(proxy)
    return 100.0 * green / (blue + green)


@pytest.mark.engines
async def test_a_failed_window_offers_rollback_and_holds_the_gate(
    tmp_path: Path, proxy: HAProxy
) -> None:
    clock = Clock(fx.T0)
    switch = HAProxyRuntimeSwitch(str(proxy.admin_socket), backend=proxy.backend)
    session = make_session(
        ui_config(tmp_path, monitor_windows={"monitor-10": 120}), clock, traffic=switch
    )
    session.start()
    await walk_to(
        session, clock, "switch-10", snap=lambda at: snapshot(at, green_percentage=_green(proxy))
    )
    clock.advance(1)
    session.observe(snapshot(clock.now, green_percentage=_green(proxy)))
    await session.proceed()
    clock.advance(1)
    session.observe(snapshot(clock.now, green_percentage=10.0))
    await session.proceed()  # the 10% window opens
    clock.advance(10)
    quiet = snapshot(clock.now, green_percentage=10.0)
    clock.advance(0.5)
    app = app_for(tmp_path, session, [quiet])
    firing = (
        alert(phase=AlertPhase.FIRING, at=clock.now - timedelta(seconds=3)),
        *QUIET[1:],
    )
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runbook(pilot)
        assert "window 10s of 2m" in screen.details.plain_text
        assert "1m49s left" in screen.details.plain_text
        assert screen.check_action("continue", ()) is None
        # Green degrades: the next sweep carries a firing critical alert.
        app.runbook_driver.observe(snapshot(clock.now, green_percentage=10.0, alerts=firing))
        await wait_for(pilot, lambda: session.rollback_offered, "rollback to be offered")
        await pilot.pause()
        banner = screen.query_one("#rb-banner")
        assert banner.has_class("-shown")
        assert "ROLLBACK OFFERED" in str(banner.render())
        assert "F9" in str(banner.render())
    record = session.record("monitor-10")
    assert record.state is StepState.FAILED and record.failed_by_alert
    # The way on stays closed: the window cannot be skipped, switch-50 is not reached.
    assert session.engine.current_step_id == "monitor-10"
    assert not session.gate_view().can_skip
    assert session.record("switch-50").state is StepState.PENDING
    assert "rollback.offered" in actions(session)
    assert weights(proxy) == (230, 26)


# --- resume ---------------------------------------------------------------------------------


@pytest.mark.engines
async def test_an_unfinished_deployment_is_offered_at_start_up(
    tmp_path: Path, proxy: HAProxy
) -> None:
    clock = Clock(fx.T0)
    config = ui_config(
        tmp_path,
        traffic={"kind": "haproxy", "admin": str(proxy.admin_socket), "backend": proxy.backend},
        monitor_windows={"monitor-10": 120},
    )
    first = make_session(config, clock, traffic=HAProxyRuntimeSwitch(str(proxy.admin_socket)))
    first.start()
    await walk_to(first, clock, "switch-10")
    clock.advance(1)
    first.observe(snapshot(clock.now))
    await first.proceed()  # 10% green
    clock.advance(1)
    first.observe(snapshot(clock.now, green_percentage=10.0))
    await first.proceed()  # the window runs ... and this console "dies" here
    deployment_id = first.deployment_id
    assert [d.deployment_id for d in scan_deployments(first.trail).unfinished] == [deployment_id]

    clock.advance(30)
    second = make_session(config, clock, traffic=HAProxyRuntimeSwitch(str(proxy.admin_socket)))
    app = app_for(tmp_path, second, [snapshot(clock.now, green_percentage=10.0)])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ResumeDialog), "the resume prompt")
        text = str(app.screen.query_one("#resume-text").render())
        assert deployment_id in text and "monitor-10" in text
        await click_when_drawn(pilot, "#resume-go")
        await wait_for(pilot, lambda: isinstance(app.screen, RunbookScreen), "the runbook screen")
        await wait_for(pilot, lambda: second.split is not None, "the read-back")
        screen = app.screen
        await pilot.pause()
        assert second.deployment_id == deployment_id
        record = second.record("monitor-10")
        assert record.state is StepState.FAILED
        assert record.reason.startswith("interrupted")
        assert second.split is not None and second.split.green_percentage == pytest.approx(
            100 * 26 / 256
        )
        assert screen.checklist.cell_text("monitor-10", "state") == "✖ failed"
        assert "Run window again" in str(screen.query_one("#gate-continue").label)
    read_back = [
        r
        for r in second.trail.records(deployment_id=deployment_id)
        if r.action == "traffic.read_back"
    ]
    assert read_back[-1].evidence["split"]["green_weight"] == 26


async def test_ending_a_deployment_needs_a_reason(tmp_path: Path) -> None:
    session, snap = await failed_performance_state(tmp_path)
    app = app_for(tmp_path, session, [snap])
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runbook(pilot)
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, EndDialog), "the end dialog")
        await pilot.press("enter")
        assert isinstance(app.screen, EndDialog)
        await type_text(pilot, "green not ready: rescheduled")
        await pilot.press("enter")
        await wait_for(pilot, lambda: session.finished, "the end")
    assert session.engine.state.outcome == "aborted"
    assert actions(session)[-1] == "deployment.aborted"


async def test_a_read_only_console_cannot_drive(tmp_path: Path) -> None:
    session, snap = await failed_performance_state(tmp_path)
    app = app_for(tmp_path, session, [snap], read_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runbook(pilot)
        for action in ("continue", "skip", "end", "start"):
            assert screen.check_action(action, ()) is False
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, RunbookScreen)


async def test_attestation_note_reaches_the_audit_trail_with_the_operator(tmp_path: Path) -> None:
    clock = Clock(fx.T0)
    session = make_session(ui_config(tmp_path), clock)
    session.start()
    await walk_to(session, clock, "pre-env-hash")
    record = session.record("pre-validation-runner")
    assert record.reason == NOTE
    stored = [
        r
        for r in session.trail.records(deployment_id=session.deployment_id)
        if r.action == "step.attested"
    ]
    assert stored[-1].operator == fx.OPERATOR
    assert stored[-1].evidence["reason"] == NOTE


# --- the words and symbols ------------------------------------------------------------------


def test_every_step_state_reads_without_colour() -> None:
    from widgets.step_view import STEP_BADGES

    assert set(STEP_BADGES) == set(StepState)
    glyphs = [b.glyph for b in STEP_BADGES.values()]
    words = [b.word for b in STEP_BADGES.values()]
    assert len(set(glyphs)) == len(glyphs) and len(set(words)) == len(words)
    assert [b.text for b in STEP_BADGES.values()] == [
        "○ pending",
        "▶ running",
        "✔ passed",
        "✖ failed",
        "↷ skipped",
        "✎ attested",
    ]


def test_phase_budgets_count_down_and_say_when_they_are_overrun() -> None:
    from console.runbook.engine import PhaseClock
    from widgets.step_view import phase_countdown
    from widgets.verdicts import Level

    def clock(elapsed: float, *, budget: float | None = 300, done: bool = False) -> PhaseClock:
        start = fx.T0
        return PhaseClock(
            phase_id="phase-2",
            budget_s=budget,
            started_at=start,
            finished_at=start + timedelta(seconds=elapsed) if done else None,
            elapsed_s=elapsed,
            remaining_s=None if budget is None else budget - elapsed,
        )

    assert phase_countdown(clock(100)) == (Level.OK, "3m20s left of 5m")
    assert phase_countdown(clock(280)) == (Level.WARNING, "20s left of 5m")
    assert phase_countdown(clock(363)) == (Level.CRITICAL, "1m03s OVER the 5m budget")
    assert phase_countdown(clock(250, done=True)) == (Level.OK, "done in 4m10s of 5m")
    assert phase_countdown(clock(400, done=True)) == (
        Level.WARNING,
        "done in 6m40s of 5m (over budget)",
    )
    assert phase_countdown(clock(65, budget=None)) == (Level.OK, "running 1m05s (no budget)")


def test_evidence_lines_name_exit_codes_read_backs_and_windows() -> None:
    from console.runbook.engine import StepRecord
    from console.runbook.loader import load_runbook
    from widgets.step_view import evidence_summary

    runbook = load_runbook()
    _, _, command = runbook.locate("decommission-blue")
    failed = StepRecord(
        step_id="decommission-blue",
        state=StepState.FAILED,
        reason="exited with code 3",
        evidence={"argv": ["x"], "exit_code": 3, "timed_out": False, "cancelled": False},
    )
    assert evidence_summary(command, failed) == "exit 3: exited with code 3"
    _, _, traffic = runbook.locate("switch-10")
    moved = StepRecord(
        step_id="switch-10",
        state=StepState.PASSED,
        evidence={
            "read_back": {"green_percentage": 10.15625, "blue_weight": 230, "green_weight": 26}
        },
    )
    assert evidence_summary(traffic, moved) == "read back 10.1562% green (weights 230/26)"
    _, _, window = runbook.locate("monitor-10")
    watched = StepRecord(
        step_id="monitor-10",
        state=StepState.PASSED,
        evidence={"snapshots": 118, "duration_s": 120.0},
    )
    assert evidence_summary(window, watched) == "118 snapshots over 2m"
    pending = StepRecord(step_id="monitor-10")
    assert evidence_summary(window, pending) == ""


async def test_the_planned_rollback_starts_as_its_own_checklist_flow(tmp_path: Path) -> None:
    clock = Clock()
    session = make_session(ui_config(tmp_path), clock)
    app = app_for(tmp_path, session, [snapshot(clock.now)])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_runbook(pilot)
        assert screen.check_action("start_planned_rollback", ()) is True
        await pilot.press("p")
        await wait_for(pilot, lambda: session.active, "the planned rollback to start")
        assert session.engine.procedure.id == "planned-rollback"
        steps = [s for _, s in session.engine.procedure.steps()]
        kinds = [(s.kind, getattr(s, "green_percentage", None)) for s in steps]
        traffic = [pct for kind, pct in kinds if str(kind).endswith("traffic")]
        assert traffic == [50, 0], kinds  # 50 % -> (monitor) -> 0 %
        assert any(str(s.kind).endswith("monitor") for s in steps)
        # While it runs, neither a deployment nor another planned rollback can start.
        assert not screen.check_action("start_planned_rollback", ())
