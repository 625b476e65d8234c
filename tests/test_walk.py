"""A whole deployment walked through the TUI against the real engines.

The sandbox fleet (blue and green, nine orchestrators each) sits behind a real HAProxy
(the traffic switch); the real Monitor sweeps it every second (health, hashes, metrics
scraped from the services, Redis, PostgreSQL replication, the alert rules); the audit trail
is a real SQLite store. The fleet's traffic goes through HAProxy, with a steady probe stream
straight to green so green's metrics are known before it takes user traffic. Monitor windows
are shortened to 2 s by ``monitor_windows``.

The operator's part is done with keys and dialogs under Pilot: Continue on every gate,
notes for attestations, the environment's name typed for the destructive steps; no step is
skipped. HAProxy's own ``show servers state`` is read at each traffic step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pilot_support import wait_until as wait_for
from walk_fixtures import (
    clear_faults,
    fleet_fault,
    fleet_traffic,
    python_argv,
    walk_config,
    weights,
)

from console.config import AppConfig
from console.deployment import DeploymentSession
from console.monitor import Monitor
from console.rule_inputs import ConfiguredRuleInputs
from console.runbook.engine import StepState
from console.runbook.model import StepKind
from console.ui.app import ConsoleApp
from console.ui.screens.runbook import RunbookScreen
from console.ui.screens.runbook_dialogs import ReasonDialog

pytestmark = pytest.mark.engines

EXPECTED_WEIGHTS = {"switch-10": (230, 26), "switch-50": (128, 128), "switch-100": (0, 256)}
"""HAProxy's (blue, green) weights after each traffic step: absolute weights out of 256."""

GATE_WAIT_S = 40.0


def monitor_source(config: AppConfig) -> Monitor:
    """The console's real snapshot source."""
    return Monitor(config, inputs=ConfiguredRuleInputs(config))


def blue_down_argv(control_url: str) -> list[str]:
    """The decommission command: shuts blue's services (the fleet's "down" fault)."""
    code = (
        "import json, urllib.request as u\n"
        f"req = u.Request({control_url + '/control/fault'!r}, method='POST',\n"
        "    data=json.dumps({'environment': 'blue', 'kind': 'down'}).encode(),\n"
        "    headers={'content-type': 'application/json'})\n"
        "print(u.urlopen(req, timeout=5).read().decode())\n"
        "print('blue: graceful shutdown done, data preserved')\n"
    )
    return python_argv(code)


async def type_text(pilot: Any, text: str) -> None:
    await pilot.press(*["space" if c == " " else c for c in text])


def make_app(config: AppConfig, tmp_path: Path) -> ConsoleApp:
    return ConsoleApp(
        config,
        source_factory=monitor_source,
        state_dir=tmp_path / "ui-state",
        environ={},
    )


async def start_deployment(pilot: Any, app: ConsoleApp) -> tuple[RunbookScreen, DeploymentSession]:
    await wait_for(pilot, lambda: app.sweeps_completed >= 1, "the first sweep", 30)

    def settled() -> bool:
        # The estate the runbook starts from: the split read back, no critical alert firing
        # (the shared fleet may still carry an earlier test's faults in its metrics window).
        snap = app.runbook_driver.latest
        return (
            snap is not None
            and not snap.traffic.stale
            and snap.traffic.green_percentage is not None
            and not any(a.severity == "critical" for a in snap.firing)
        )

    await wait_for(pilot, settled, "a settled estate before the deployment", 60)
    await pilot.press("d")
    await wait_for(pilot, lambda: isinstance(app.screen, RunbookScreen), "the runbook", 10)
    screen = app.screen
    assert isinstance(screen, RunbookScreen)
    await wait_for(pilot, lambda: screen.check_action("start", ()) is True, "the session", 10)
    await pilot.press("n")
    session = app.runbook_driver.session
    assert session is not None
    await wait_for(pilot, lambda: session.active, "the deployment to start", 10)
    return screen, session


async def do_step(
    pilot: Any, app: ConsoleApp, screen: RunbookScreen, session: DeploymentSession
) -> str:
    """Pass the current step through the UI; returns its id."""
    step_id = session.engine.current_step_id
    assert step_id is not None

    def gate_open() -> bool:
        view = screen.view
        return view is not None and view.step_id == step_id and view.open

    def typed_needed() -> str | None:
        view = screen.view
        return view.confirm_typed if view is not None and view.step_id == step_id else None

    name = typed_needed()
    if name is not None and screen.gate_bar.typed != name:
        screen.query_one("#gate-typed").focus()
        await type_text(pilot, name)
        screen.query_one("#rb-checklist").focus()
    try:
        await wait_for(pilot, gate_open, f"the gate of {step_id} to open", GATE_WAIT_S)
    except AssertionError:
        view = screen.view
        state = session.engine.state
        raise AssertionError(
            f"gate of {step_id} stayed closed: {view.reasons if view else '?'}; "
            f"alerts fired: {[f.model_dump(mode='json') for f in state.fired]}; "
            f"split read back: {[m.model_dump(mode='json') for m in state.traffic_seen]}"
        ) from None
    record = session.record(step_id)
    before = (record.state, record.attempts, record.finished_at)
    view = screen.view
    assert view is not None
    await pilot.press("c")
    if view.kind is StepKind.ATTESTATION:
        await wait_for(pilot, lambda: isinstance(app.screen, ReasonDialog), "the note dialog", 10)
        await type_text(pilot, "seen ok")
        await pilot.press("enter")

    def moved() -> bool:
        r = session.record(step_id)
        return (r.state, r.attempts, r.finished_at) != before and r.state is not StepState.RUNNING

    await wait_for(pilot, moved, f"{step_id} to finish", 60)
    record = session.record(step_id)
    assert record.state in (StepState.PASSED, StepState.ATTESTED), (step_id, record.reason)
    return step_id


async def test_a_whole_deployment_through_the_tui(
    tmp_path: Path,
    fleet: Any,
    fresh_haproxy: Callable[..., Any],
    redis_server: Any,
    pg_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))  # reports land here
    haproxy = fresh_haproxy()
    config = walk_config(
        tmp_path,
        fleet,
        haproxy,
        redis_url=redis_server.url,
        pg=pg_cluster,
        commands={
            "pre-validation-runner": {
                "argv": python_argv("print('comprehensive validation: 0 failures')"),
                "timeout_s": 30,
            },
            "decommission-blue": {"argv": blue_down_argv(fleet.control_url), "timeout_s": 30},
            "update-deployment-records": {
                "argv": [
                    *python_argv("import sys; print('recorded', sys.argv[1], sys.argv[2])"),
                    "{deployment_id}",
                    "{constitutional_hash}",
                ],
                "timeout_s": 30,
            },
        },
    )
    app = make_app(config, tmp_path)
    seen: dict[str, tuple[int, int]] = {}
    phases_seen: list[str] = []
    try:
        with fleet_traffic(fleet, haproxy):
            async with app.run_test(size=(120, 40)) as pilot:
                screen, session = await start_deployment(pilot, app)
                assert weights(haproxy) == (256, 0)
                for _ in range(200):
                    if session.finished:
                        break
                    phase = session.current_phase()
                    if phase is not None and phase.id not in phases_seen:
                        phases_seen.append(phase.id)
                    step_id = await do_step(pilot, app, screen, session)
                    if step_id in EXPECTED_WEIGHTS:
                        seen[step_id] = weights(haproxy)
                        read_back = session.record(step_id).evidence["read_back"]
                        assert (read_back["blue_weight"], read_back["green_weight"]) == seen[
                            step_id
                        ]
                assert session.finished
                await pilot.pause()
                header = app.screen.query_one("#rb-header").plain_text
                assert "completed" in header
    finally:
        clear_faults(fleet)
    engine = session.engine
    assert engine.state.outcome == "completed"
    assert phases_seen == ["pre-deployment", "phase-1", "phase-2", "phase-3", "success-criteria"]
    assert seen == EXPECTED_WEIGHTS
    # The windows ran on live snapshots, the commands really ran, the report was written.
    for window in ("monitor-10", "monitor-50", "post-switch-monitoring"):
        evidence = session.record(window).evidence
        assert session.record(window).state is StepState.PASSED
        assert evidence["snapshots"] >= 1 and evidence["duration_s"] == 2.0
    assert session.record("decommission-blue").evidence["exit_code"] == 0
    assert session.record("blue-shutdown-observed").state is StepState.PASSED
    # Zero downtime is a real check on the environment that carried traffic: it passed,
    # with blue's own alerts after it stopped taking traffic (its planned shutdown) seen
    # and not counted.
    zero = session.record("success-zero-downtime")
    assert zero.state is StepState.PASSED, zero.reason
    [alerts_outcome] = [
        o for o in zero.evidence["outcomes"] if o["check"].startswith("no critical alerts")
    ]
    assert alerts_outcome["verdict"] == "pass"
    blue_after = [
        f
        for f in engine.state.fired
        if f.environment == "blue" and f.severity == "critical" and f.serving is False
    ]
    assert blue_after, "blue's shutdown should have made its critical alerts fire"
    assert all(f.first_seen >= session.record("switch-100").finished_at for f in blue_after)
    assert "not counted" in alerts_outcome["detail"]
    assert f"{blue_after[0].name} (blue)" in alerts_outcome["detail"]
    # The split the check judged by: HAProxy's read-back, 0 -> 10 -> 50 -> 100 % green.
    known = [
        m.green_percentage for m in engine.state.traffic_seen if m.green_percentage is not None
    ]
    changes = [v for i, v in enumerate(known) if i == 0 or v != known[i - 1]]
    # Each step's split shows up, in order. Between them a read-back may catch HAProxy
    # between the two weight commands of one switch (green set to 256 while blue is still
    # 128 reads 66.7 %): that was HAProxy's real state for that instant.
    milestones = iter(changes)
    assert all(any(v == want for v in milestones) for want in (0.0, 10.15625, 50.0, 100.0)), changes
    assert changes[-1] == 100.0, changes
    update = session.record("update-deployment-records").evidence["output_tail"]
    assert update == [f"recorded {engine.deployment_id} cdd01ef066bc6cf2"]
    location = session.record("generate-deployment-report").evidence["location"]
    assert Path(location.split(" and ")[0]).is_file()
    # Every transition is in the chain, and the chain verifies.
    actions = [r.action for r in session.trail.records(deployment_id=engine.deployment_id)]
    assert actions[0] == "deployment.started"
    assert "deployment.completed" in actions
    assert "step.skipped" not in actions
    assert actions.count("step.passed") + actions.count("step.attested") >= len(engine.state.steps)
    result = session.trail.verify()
    assert result.ok, result.summary()


async def test_green_degrading_in_the_10_percent_window_offers_rollback(
    tmp_path: Path,
    fleet: Any,
    fresh_haproxy: Callable[..., Any],
    redis_server: Any,
    pg_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    haproxy = fresh_haproxy()
    config = walk_config(
        tmp_path,
        fleet,
        haproxy,
        redis_url=redis_server.url,
        pg=pg_cluster,
        windows={"monitor-10": 60.0},
        # The runbook's "P99 > 5 ms for > 2 min", without the two minutes.
        thresholds={"p99_latency_critical_for_s": 0.0},
    )
    app = make_app(config, tmp_path)
    try:
        with fleet_traffic(fleet, haproxy):
            async with app.run_test(size=(120, 40)) as pilot:
                screen, session = await start_deployment(pilot, app)
                # Pre-deployment and Phase 1 through the session (the UI walk is above).
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 120
                while session.engine.current_step_id != "switch-10":
                    assert loop.time() < deadline, session.gate_view().reasons
                    view = session.gate_view()
                    if not view.open:
                        await pilot.pause(0.2)
                        continue
                    note = "checked" if view.kind is StepKind.ATTESTATION else None
                    await session.proceed(note=note)
                # 10 % through the UI.
                await do_step(pilot, app, screen, session)
                assert weights(haproxy) == (230, 26)
                # The window opens; green degrades during it.
                await wait_for(pilot, lambda: bool(screen.view and screen.view.open), "gate", 30)
                await pilot.press("c")
                await wait_for(
                    pilot,
                    lambda: session.record("monitor-10").state is StepState.RUNNING,
                    "the window to open",
                    30,
                )
                with fleet_fault(fleet, "green", "slow", 10):
                    await wait_for(
                        pilot,
                        lambda: session.record("monitor-10").state is StepState.FAILED,
                        "the window to fail",
                        60,
                    )
                    record = session.record("monitor-10")
                    assert record.failed_by_alert, record.reason
                    assert "P99" in record.reason and "green" in record.reason
                    assert session.rollback_offered
                    banner = screen.query_one("#rb-banner")
                    await wait_for(pilot, lambda: banner.has_class("-shown"), "the banner", 30)
                    assert "ROLLBACK OFFERED" in str(banner.render())
                    # The gate stays closed: no skipping the window, 50 % is not reached.
                    view = session.gate_view()
                    assert not view.can_skip and "firing alert" in view.skip_reason
                    assert session.engine.current_step_id == "monitor-10"
                    assert session.record("switch-50").state is StepState.PENDING
                    assert weights(haproxy) == (230, 26), "nothing moved traffic by itself"
    finally:
        clear_faults(fleet)
    alerts = session.record("monitor-10").evidence["alerts"]
    assert any(a["environment"] == "green" and a["severity"] == "critical" for a in alerts)
    actions = [r.action for r in session.trail.records(deployment_id=session.deployment_id)]
    assert "rollback.offered" in actions
    assert session.trail.verify().ok
