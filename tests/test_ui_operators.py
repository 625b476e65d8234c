"""Several operators at once, in the TUI: two consoles under Pilot in one test, real Redis.

Each test runs two (sometimes three) :class:`~console.ui.app.ConsoleApp` instances side by
side in one event loop, as two operators over SSH would: distinct identities
(``config.operator``), one shared SQLite audit trail under ``tmp_path``, one
``coordination.deployment`` name and a real Redis (the session's ``redis_server``, or a
``fresh_redis`` where a test stops or restarts it). The dashboards' snapshot sources are
fakes (the UI boundary); everything behind the lease, the events, the four-eyes requests,
the audit records and the traffic switch is real. The partition is a TCP relay in front of
Redis that stops forwarding (``test_coordination.Relay``), as a cut cable would.

Waits are bounded loops over ``pilot.pause`` (a bound on waiting, not a timing assertion);
the one timing bound is the issue's own: another console shows a step within 1 s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import ui_fixtures as fx
from pilot_support import click_when_drawn, notes_seen
from pilot_support import wait_until as until
from runbook_fixtures import Clock, snapshot
from test_coordination import Relay
from test_ui_rollback import set_green_50, traffic_through, weights
from ui_runbook_fixtures import NOTE, ui_config, walk_to

from backends.models import Snapshot, utcnow
from backends.traffic import HAProxyRuntimeSwitch
from console.audit import open_trail
from console.config import AppConfig
from console.coordination import EventKind, NotDriving, Role
from console.deployment import STATE_ACTION, DeploymentError
from console.engines import HAProxy, RedisServer, free_port
from console.runbook.engine import StepState
from console.ui.app import ConsoleApp
from console.ui.screens.operators import BREAK_GLASS_REASON, BreakGlassScreen, OperatorsScreen
from console.ui.screens.rollback import RollbackPhase
from console.ui.screens.runbook import RunbookScreen
from console.ui.screens.runbook_dialogs import ReasonDialog, ResumeDialog
from widgets.lease_status import LeaseStatusLine

ALICE = "alice@host-a"
BOB = "bob@host-b"
CAROL = "carol@host-c"
LEASE_MS = 4000
"""Long enough that a renewal (its store timeout is a sixth of the lease) survives a loaded
CI machine running three consoles on one event loop; the expiry test uses :data:`SHORT_LEASE_MS`."""
SHORT_LEASE_MS = 3000
"""For the expiry test: quick to run out, yet its 0.5 s store timeout survives the relay (on
its own thread and event loop, beside the two consoles') on a loaded machine."""
SIZE = (120, 40)
TRIES = 1000
"""Pauses of 0.02 s: a bound on waiting, not a timing assertion."""


# --- building the consoles ------------------------------------------------------------------


def deployment_name() -> str:
    """A lease name no other test shares (the session's Redis is shared)."""
    return "ui-" + uuid.uuid4().hex[:10]


def config_for(
    tmp_path: Path,
    operator: str,
    redis_url: str | None,
    deployment: str,
    *,
    four_eyes: tuple[str, ...] = (),
    lease_ms: int = LEASE_MS,
    **extra: Any,
) -> AppConfig:
    """One operator's config: the shared audit trail in ``tmp_path``, the shared lease name."""
    coordination: dict[str, Any] = {
        "lease_ms": lease_ms,
        "deployment": deployment,
        "four_eyes_gates": list(four_eyes),
        "lock_file": str(tmp_path / "console.lock"),
    }
    if redis_url is not None:
        coordination["redis_url"] = redis_url
    return ui_config(tmp_path, operator=operator, coordination=coordination, **extra)


class LiveSnapshots:
    """A fake dashboard source: a healthy snapshot taken "now" on every sweep."""

    def __init__(self, make: Callable[[datetime], Snapshot] = snapshot) -> None:
        self.make = make
        self.calls = 0

    async def sweep(self) -> Snapshot:
        self.calls += 1
        return self.make(utcnow())

    async def close(self) -> None:
        return None


def console(tmp_path: Path, cfg: AppConfig, name: str, **kwargs: Any) -> ConsoleApp:
    """A coordinating console on live fake snapshots, its UI state private to ``name``."""
    return ConsoleApp(
        cfg,
        kwargs.pop("source", None) or LiveSnapshots(),
        state_dir=tmp_path / f"ui-{name}",
        poll_interval_s=0.5,
        environ={},
        coordinate=True,
        **kwargs,
    )


# --- waiting and looking --------------------------------------------------------------------


async def started(pilot: Any, app: ConsoleApp) -> None:
    await until(
        pilot,
        lambda: app.operators.started and app.runbook_driver.session is not None,
        f"{app.operator}'s console to start",
    )


def role(app: ConsoleApp) -> Role:
    coordinator = app.operators.coordinator
    assert coordinator is not None, app.operators.error
    return coordinator.role


def lease_text(app: ConsoleApp) -> str:
    """The lease line on the screen in front (the dashboard's or the runbook's)."""
    lines = app.screen.query(LeaseStatusLine)
    return lines.first().plain_text if lines else ""


def notes(app: ConsoleApp) -> list[str]:
    """Every notification shown so far, expired ones included."""
    return notes_seen(app)


def keys(app: ConsoleApp) -> set[str]:
    """The keys that do something on the screen in front."""
    return {k for k, b in app.screen.active_bindings.items() if b.enabled}


async def type_text(pilot: Any, text: str) -> None:
    await pilot.press(*["space" if c == " " else c for c in text])


async def open_runbook(pilot: Any) -> RunbookScreen:
    app = pilot.app
    if not isinstance(app.screen, RunbookScreen):
        await pilot.press("d")
    await until(pilot, lambda: isinstance(app.screen, RunbookScreen), "the runbook screen")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, RunbookScreen)
    return screen


def records(cfg: AppConfig, deployment_id: str | None = None) -> list[Any]:
    """Every stored audit record (state records left out), checked chain first."""
    trail = open_trail(cfg)
    try:
        assert trail.verify().ok
        return [r for r in trail.records(deployment_id=deployment_id) if r.action != STATE_ACTION]
    finally:
        trail.close()


# --- lock and read-only ---------------------------------------------------------------------


async def test_the_holder_drives_and_the_other_console_is_read_only_and_shows_who(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    dep = deployment_name()
    a = console(tmp_path, config_for(tmp_path, ALICE, redis_server.url, dep), "a")
    b = console(tmp_path, config_for(tmp_path, BOB, redis_server.url, dep), "b")
    async with a.run_test(size=SIZE) as pa:
        await started(pa, a)
        assert role(a) is Role.DRIVING and a.operators.can_drive()
        async with b.run_test(size=SIZE) as pb:
            await started(pb, b)
            assert role(b) is Role.OBSERVING and not b.operators.can_drive()
            holder = b.operators.coordinator.status().holder  # type: ignore[union-attr]
            assert holder is not None and holder.operator == ALICE

            # Both say who drives, on the line under the header.
            await until(pb, lambda: "drives since" in lease_text(b), "B's lease line")
            line_b = lease_text(b)
            assert line_b.startswith("▲ read-only") and ALICE in line_b
            assert "lease expires in" in line_b and "fence" in line_b
            assert "l: take the lead once the lease is free" in line_b
            await until(pa, lambda: "▶ driving" in lease_text(a), "A's lease line")
            assert ALICE in lease_text(a) and "h: hand over" in lease_text(a)

            # Hand over is A's; take the lead is B's (and only works once the lease is free).
            assert "h" in keys(a) and "l" not in keys(a)
            assert "l" in keys(b) and "h" not in keys(b)
            await pb.press("l")
            await until(pb, lambda: any("Could not take the lead" in n for n in notes(b)), "no")
            assert role(b) is Role.OBSERVING and role(a) is Role.DRIVING
            assert any(ALICE in n for n in notes(b) if "Could not take the lead" in n)


async def test_a_console_without_the_lead_hides_and_refuses_every_driving_action(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    dep = deployment_name()
    a = console(tmp_path, config_for(tmp_path, ALICE, redis_server.url, dep), "a")
    b = console(tmp_path, config_for(tmp_path, BOB, redis_server.url, dep), "b")
    carol = console(
        tmp_path, config_for(tmp_path, CAROL, redis_server.url, dep), "c", read_only=True
    )
    async with a.run_test(size=SIZE) as pa:
        await started(pa, a)
        async with b.run_test(size=SIZE) as pb, carol.run_test(size=SIZE) as pc:
            await started(pb, b)
            await started(pc, carol)
            # A can start a deployment; B's runbook offers no driving key at all.
            screen_a = await open_runbook(pa)
            assert screen_a.check_action("start", ()) is True
            screen_b = await open_runbook(pb)
            for action in ("continue", "skip", "end", "start", "resume", "cancel_command"):
                assert screen_b.check_action(action, ()) is False, action
            assert not {"n", "c", "s", "x", "u"} & keys(b)
            await pb.press("n")
            await pb.pause()
            session_b = b.runbook_driver.session
            assert session_b is not None and not session_b.active

            # Refused below the keys too, saying who drives.
            assert not b.runbook_driver.start_new()
            await until(pb, lambda: any(ALICE in n for n in notes(b)), "B says who drives")
            with pytest.raises(DeploymentError, match=ALICE):
                session_b.start()
            assert not session_b.active

            # The observer console: never drives, never takes the lead, F9 does nothing.
            assert role(carol) is Role.OBSERVER
            assert carol.check_action("take_lead", ()) is False
            assert carol.check_action("rollback", ()) is False
            await pc.press("f9")
            await pc.pause()
            assert not isinstance(carol.screen, BreakGlassScreen)
            assert carol.rollback.phase is RollbackPhase.IDLE
            assert "observer" in lease_text(carol)
            assert all("Take the lead" not in c.title for c in carol.console_commands())
            titles = [c.title for c in b.console_commands()]
            assert "Take the lead" in titles and "Hand over the lead" not in titles
            assert "Hand over the lead" in [c.title for c in a.console_commands()]


async def test_without_redis_a_lock_file_serves_one_host_and_a_quitting_console_hands_over(
    tmp_path: Path,
) -> None:
    dep = deployment_name()
    a = console(tmp_path, config_for(tmp_path, ALICE, None, dep), "a")
    b = console(tmp_path, config_for(tmp_path, BOB, None, dep), "b")
    run_a: Any = a.run_test(size=SIZE)
    pa = await run_a.__aenter__()
    try:
        await started(pa, a)
        assert role(a) is Role.DRIVING
        assert a.operators.coordinator.mode == "lock_file"  # type: ignore[union-attr]
        async with b.run_test(size=SIZE) as pb:
            await started(pb, b)
            assert role(b) is Role.OBSERVING
            await until(pb, lambda: ALICE in lease_text(b), "B names A")
            assert "held until released" in lease_text(b)
            # A quits: the kernel drops its lock, and B takes the lead.
            await run_a.__aexit__(None, None, None)
            run_a = None
            await until(pb, lambda: role(b) is Role.FREE, "the lock is free")
            await pb.press("l")
            await until(pb, lambda: b.operators.can_drive(), "B drives")
            await until(pb, lambda: "▶ driving" in lease_text(b), "B's line")
    finally:
        if run_a is not None:
            await run_a.__aexit__(None, None, None)


# --- hand-over and shared live state --------------------------------------------------------


async def start_deployment(pilot: Any) -> str:
    """On the runbook: start a deployment and run its first check (pre-verify-hash)."""
    app = pilot.app
    screen = await open_runbook(pilot)
    session = app.runbook_driver.session
    assert session is not None
    await pilot.press("n")
    await until(pilot, lambda: session.active and not session.view_only, "the deployment")
    await until(pilot, lambda: screen.view is not None and screen.view.open, "the first gate")
    assert session.deployment_id is not None
    return session.deployment_id


async def test_a_step_on_the_driver_shows_on_the_other_console_within_one_second(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    dep = deployment_name()
    a = console(tmp_path, config_for(tmp_path, ALICE, redis_server.url, dep), "a")
    b = console(tmp_path, config_for(tmp_path, BOB, redis_server.url, dep), "b")
    async with a.run_test(size=SIZE) as pa:
        await started(pa, a)
        async with b.run_test(size=SIZE) as pb:
            await started(pb, b)
            deployment_id = await start_deployment(pa)
            session_a = a.runbook_driver.session
            session_b = b.runbook_driver.session
            assert session_a is not None and session_b is not None
            # B shows A's deployment (read-only) and its phase in the header.
            await until(
                pb, lambda: session_b.deployment_id == deployment_id, "B shows the deployment"
            )
            assert session_b.view_only
            assert b._deployment[0] == deployment_id
            assert b._deployment[1] == "Pre-Deployment Checklist"
            header = b.dashboard.query_one("#header").plain_text  # type: ignore[attr-defined]
            assert f"deploy {deployment_id}" in header

            await pa.press("c")
            while session_a.record("pre-verify-hash").state is not StepState.PASSED:
                await pa.pause(0.005)
            seen_at = time.monotonic()
            while session_b.record("pre-verify-hash").state is not StepState.PASSED:
                assert time.monotonic() - seen_at < 1.0, "B did not show A's step within 1 s"
                await pb.pause(0.01)
            assert session_b.view_only and b.operators.reloads >= 2
            assert any(e.action == "step.passed" for e in b.operators.received)


async def test_a_console_cut_off_from_the_events_catches_up_from_the_audit_trail(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """B's link to Redis is cut while A passes a step, so B never gets the event; once the
    link is back B's subscription reconnects, resyncs from the audit store and shows the step."""
    relay = await Relay(redis_server.port).start()
    dep = deployment_name()
    a = console(tmp_path, config_for(tmp_path, ALICE, redis_server.url, dep), "a")
    b = console(tmp_path, config_for(tmp_path, BOB, relay.url, dep), "b")
    witness = aioredis.Redis.from_url(redis_server.url)
    heard = witness.pubsub()
    try:
        async with a.run_test(size=SIZE) as pa:
            await started(pa, a)
            async with b.run_test(size=SIZE) as pb:
                await started(pb, b)
                deployment_id = await start_deployment(pa)
                session_a = a.runbook_driver.session
                session_b = b.runbook_driver.session
                assert session_a is not None and session_b is not None
                await until(
                    pb, lambda: session_b.deployment_id == deployment_id, "B shows the deployment"
                )
                subscription = b.operators.subscription
                assert subscription is not None
                await until(pb, lambda: subscription.connected, "B listens")
                resyncs = subscription.resyncs
                # A witness straight on Redis sees what A publishes while B cannot.
                await heard.subscribe(f"acgs-console:{{{dep}}}:events")

                relay.partition()
                await pa.press("c")
                await until(
                    pa,
                    lambda: session_a.record("pre-verify-hash").state is StepState.PASSED,
                    "A's step",
                )
                published: list[str] = []

                async def listen() -> bool:
                    message = await heard.get_message(ignore_subscribe_messages=True, timeout=0.05)
                    if message is not None:
                        published.append(message["data"].decode())
                    return any('"step.passed"' in m for m in published)

                for _ in range(TRIES):
                    if await listen():
                        break
                    await pa.pause(0.02)
                assert any('"step.passed"' in m for m in published), "A did not publish its step"
                assert session_b.record("pre-verify-hash").state is not StepState.PASSED

                relay.heal()  # drops B's dead connections: the feed reconnects and resyncs
                await until(pb, lambda: subscription.resyncs > resyncs, "B resyncs")
                await until(
                    pb,
                    lambda: session_b.record("pre-verify-hash").state is StepState.PASSED,
                    "B catches up from the audit trail",
                )
                assert session_b.view_only and session_b.deployment_id == deployment_id
                # It came from the audit store, not from the event B never received.
                assert not any(
                    e.action == "step.passed" and e.data.get("step") == "pre-verify-hash"
                    for e in b.operators.received
                )
    finally:
        await heard.aclose()  # type: ignore[no-untyped-call]
        await witness.aclose()
        await relay.close()


async def test_hand_over_the_other_console_takes_the_lead_and_records_its_own_fence(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    dep = deployment_name()
    cfg_a = config_for(tmp_path, ALICE, redis_server.url, dep)
    a = console(tmp_path, cfg_a, "a")
    b = console(tmp_path, config_for(tmp_path, BOB, redis_server.url, dep), "b")
    async with a.run_test(size=SIZE) as pa:
        await started(pa, a)
        async with b.run_test(size=SIZE) as pb:
            await started(pb, b)
            deployment_id = await start_deployment(pa)
            session_a = a.runbook_driver.session
            session_b = b.runbook_driver.session
            assert session_a is not None and session_b is not None
            await pa.press("c")
            await until(
                pa,
                lambda: session_a.record("pre-verify-hash").state is StepState.PASSED,
                "A's first step",
            )
            fence_a = a.operators.coordinator.fence  # type: ignore[union-attr]
            assert fence_a is not None

            # A hands over; B sees the lease free and takes it.
            await pa.press("h")
            await until(pa, lambda: not a.operators.can_drive(), "A handed over")
            assert "h" not in keys(a)
            await until(pb, lambda: role(b) is Role.FREE, "B sees the lease free")
            await until(pb, lambda: "nobody holds the lease" in lease_text(b), "B's line")
            await pb.press("l")
            await until(pb, lambda: b.operators.can_drive(), "B drives")
            fence_b = b.operators.coordinator.fence  # type: ignore[union-attr]
            assert fence_b is not None and fence_b > fence_a
            # B drives from the audit trail: it is offered A's deployment and resumes it.
            await until(pb, lambda: isinstance(b.screen, ResumeDialog), "the resume prompt")
            await pb.press("enter")
            await until(
                pb,
                lambda: session_b.active and not session_b.view_only,
                "B resumed the deployment",
            )
            assert session_b.deployment_id == deployment_id
            assert session_b.record("pre-verify-hash").state is StepState.PASSED
            screen_b = await open_runbook(pb)
            await until(pb, lambda: screen_b.check_action("continue", ()) is True, "B's gate")
            await pb.press("c")
            await until(pb, lambda: isinstance(b.screen, ReasonDialog), "the note dialog")
            await type_text(pb, NOTE)
            await pb.press("enter")
            await until(
                pb,
                lambda: session_b.record("pre-validation-runner").state is StepState.ATTESTED,
                "B's attestation",
            )
            # A follows B now, read-only, and says who drives.
            await until(
                pa,
                lambda: (
                    session_a.view_only
                    and session_a.record("pre-validation-runner").state is StepState.ATTESTED
                ),
                "A follows B",
            )
            await until(pa, lambda: BOB in lease_text(a), "A's line names B")
            assert any("took the lead" in n and BOB in n for n in notes(a))

    # Every record of the deployment carries the fence of the console that made it.
    made = records(cfg_a, deployment_id)
    by_alice = [r for r in made if r.operator == ALICE]
    by_bob = [r for r in made if r.operator == BOB]
    assert {r.action for r in by_alice} >= {"deployment.started", "step.passed"}
    assert {r.action for r in by_bob} >= {"deployment.resumed", "step.attested"}
    assert {r.fence for r in by_alice} == {fence_a}
    assert {r.fence for r in by_bob} == {fence_b}


# --- expiry while partitioned ---------------------------------------------------------------


async def test_a_partitioned_holder_turns_read_only_by_itself_and_the_other_takes_over(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    relay = await Relay(redis_server.port).start()
    dep = deployment_name()
    a = console(tmp_path, config_for(tmp_path, ALICE, relay.url, dep, lease_ms=SHORT_LEASE_MS), "a")
    b = console(
        tmp_path, config_for(tmp_path, BOB, redis_server.url, dep, lease_ms=SHORT_LEASE_MS), "b"
    )
    try:
        async with a.run_test(size=SIZE) as pa:
            await started(pa, a)
            async with b.run_test(size=SIZE) as pb:
                await started(pb, b)
                screen_a = await open_runbook(pa)
                assert screen_a.check_action("start", ()) is True, a.operators.reason()
                assert a.operators.can_drive(), a.operators.reason()

                relay.partition()
                # A turns read-only by itself (its renewal fails, its deadline passes) and
                # says why; B cannot take the lease until it expired in Redis.
                await until(pa, lambda: not a.operators.can_drive(), "A read-only")
                assert screen_a.check_action("start", ()) is False
                await until(
                    pa,
                    lambda: any("no longer drives" in n for n in notes(a)),
                    "A says it no longer drives",
                )
                said = next(n for n in notes(a) if "no longer drives" in n)
                assert "renewal failed" in said or "expired" in said, said
                await until(pa, lambda: role(a) is Role.LOST, "A's lease ran out")
                await until(pa, lambda: "expired" in lease_text(a), "the line says it expired")
                assert lease_text(a).startswith("✖ read-only")

                for _ in range(TRIES):
                    if b.operators.can_drive():
                        break
                    if "l" in keys(b):
                        await pb.press("l")
                    await pb.pause(0.05)
                assert b.operators.can_drive(), "B could not take over after A's lease expired"
                # A was read-only before B held the lease, and still is.
                assert not a.operators.can_drive()

                relay.heal()
                await until(pa, lambda: role(a) is Role.OBSERVING, "A observes B after healing")
                await until(pa, lambda: BOB in lease_text(a), "A's line names B")
                assert not a.operators.can_drive()
    finally:
        await relay.close()


# --- break-glass ----------------------------------------------------------------------------


def fleet_config(
    tmp_path: Path, operator: str, redis_url: str, deployment: str, fleet: Any, proxy: HAProxy
) -> AppConfig:
    """A console on the session fleet behind ``proxy``: its rollback moves real traffic."""
    environments = {
        env: {
            "services": {
                s.service: {"base_url": s.base_url} for s in fleet.services if s.environment == env
            }
        }
        for env in ("blue", "green")
    }
    return config_for(
        tmp_path,
        operator,
        redis_url,
        deployment,
        environments=environments,
        traffic={"kind": "haproxy", "admin": str(proxy.admin_socket), "timeout_s": 1.0},
        rollback={
            "retries": 2,
            "retry_backoff_s": 0.05,
            "verify_window_s": 0.3,
            "verify_timeout_s": 3.0,
            "report_dir": str(tmp_path / "incidents"),
        },
    )


@pytest.mark.engines
async def test_break_glass_from_a_console_without_the_lead_rolls_back_with_its_identity(
    tmp_path: Path,
    redis_server: RedisServer,
    fleet: Any,
    fresh_haproxy: Callable[..., HAProxy],
) -> None:
    proxy = fresh_haproxy()
    set_green_50(proxy)
    dep = deployment_name()
    cfg_a = fleet_config(tmp_path, ALICE, redis_server.url, dep, fleet, proxy)
    cfg_b = fleet_config(tmp_path, BOB, redis_server.url, dep, fleet, proxy)
    healthy = LiveSnapshots(lambda at: fx.healthy(at, 1))
    a = console(tmp_path, cfg_a, "a", source=LiveSnapshots(lambda at: fx.healthy(at, 1)))
    b = console(tmp_path, cfg_b, "b", source=healthy)
    reason = "green P99 at 9 ms for 3 minutes, alice unreachable"
    async with a.run_test(size=SIZE) as pa:
        await started(pa, a)
        async with b.run_test(size=SIZE) as pb, traffic_through(proxy.frontend_url):
            await started(pb, b)
            await until(pb, lambda: b.rendered_sequence is not None, "B's first sweep")
            assert not b.operators.can_drive() and b.check_action("rollback", ())

            await pb.press("f9")
            await until(pb, lambda: isinstance(b.screen, BreakGlassScreen), "the reason")
            field = b.screen.query_one("#glass-reason")
            assert field.value == BREAK_GLASS_REASON  # type: ignore[attr-defined]
            assert ALICE in b.screen.why  # type: ignore[attr-defined]
            assert weights(proxy) == (128, 128), "nothing moves before the reason is given"
            field.value = reason  # type: ignore[attr-defined]
            await pb.press("enter")
            # The rollback shows on the driver's console within 1 s of the key press.
            pressed_at = time.monotonic()
            while not any("started the emergency rollback" in n and BOB in n for n in notes(a)):
                assert time.monotonic() - pressed_at < 1.0, "A did not show B's rollback in 1 s"
                await pa.pause(0.01)
            await until(
                pb,
                lambda: len(b.rollback.results) == 1 and b.rollback.phase is RollbackPhase.IDLE,
                "the rollback to end",
            )
            result = b.rollback.results[0]
            assert weights(proxy) == (256, 0)
            assert result.success, result.problems
            assert result.operator == BOB and result.trigger == "break-glass"
            assert reason in result.reason
            await until(pb, lambda: len(b.operators.glass_results) == 1, "the break-glass record")
            # A hears about it, and still holds the lease: break-glass takes no lock.
            await until(
                pa, lambda: any("BREAK-GLASS" in n and BOB in n for n in notes(a)), "A is told"
            )
            assert a.operators.can_drive() and not b.operators.can_drive()
            # The holder's own F9: an ordinary rollback, recorded under its fencing number.
            fence_a = a.operators.coordinator.fence  # type: ignore[union-attr]
            assert fence_a is not None
            await pa.press("f9")
            await until(
                pa,
                lambda: len(a.rollback.results) == 1 and a.rollback.phase is RollbackPhase.IDLE,
                "A's rollback to end",
            )
            assert a.rollback.results[0].success, a.rollback.results[0].problems
            assert a.rollback.results[0].trigger != "break-glass"

    made = records(cfg_a)
    glass = [r for r in made if r.action == "break_glass"]
    assert len(glass) == 1
    assert glass[0].operator == BOB and glass[0].evidence["reason"] == reason
    assert glass[0].evidence["lease_holder"] == ALICE
    assert glass[0].evidence["console_was_driving"] is False
    incident = {r.operator: r for r in made if r.action == "rollback"}
    assert set(incident) == {ALICE, BOB}
    # Break-glass holds no lease, so no fence; the holder's rollback carries its own.
    assert incident[BOB].fence is None
    assert incident[ALICE].fence == fence_a


async def test_with_redis_down_the_console_is_read_only_says_why_and_f9_still_offers_rollback(
    tmp_path: Path, fresh_redis: Callable[..., RedisServer]
) -> None:
    server = fresh_redis()
    url = server.url
    server.stop()  # configured, and down
    a = console(tmp_path, config_for(tmp_path, ALICE, url, deployment_name()), "a")
    async with a.run_test(size=SIZE) as pa:
        await started(pa, a)
        assert role(a) is Role.UNAVAILABLE and not a.operators.can_drive()
        await until(pa, lambda: "unreachable" in lease_text(a), "the reason on the line")
        assert lease_text(a).startswith("✖ read-only")
        assert "emergency rollback stays available" in lease_text(a)
        screen = await open_runbook(pa)
        assert screen.check_action("start", ()) is False
        await until(pa, lambda: "unreachable" in lease_text(a), "the runbook's lease line")
        # Four-eyes gates are closed too: nobody can even ask for an approval.
        with pytest.raises(NotDriving):
            await a.operators.coordinator.request_approval("switch-100")  # type: ignore[union-attr]
        # F9 is still there: break-glass asks for the reason (escape: nothing moves).
        await pa.press("f9")
        await until(pa, lambda: isinstance(a.screen, BreakGlassScreen), "the break-glass question")
        await pa.press("escape")
        await until(pa, lambda: any("cancelled" in n for n in notes(a)), "the cancel")
        assert a.rollback.phase is RollbackPhase.IDLE and a.rollback.results == []


@pytest.mark.engines
async def test_with_redis_down_both_consoles_are_read_only_and_break_glass_really_rolls_back(
    tmp_path: Path,
    fleet: Any,
    fresh_haproxy: Callable[..., HAProxy],
    fresh_redis: Callable[..., RedisServer],
) -> None:
    server = fresh_redis()
    url = server.url
    server.stop()  # configured, and down for both consoles
    proxy = fresh_haproxy()
    set_green_50(proxy)
    dep = deployment_name()
    cfg_a = fleet_config(tmp_path, ALICE, url, dep, fleet, proxy)
    cfg_b = fleet_config(tmp_path, BOB, url, dep, fleet, proxy)
    a = console(tmp_path, cfg_a, "a", source=LiveSnapshots(lambda at: fx.healthy(at, 1)))
    b = console(tmp_path, cfg_b, "b", source=LiveSnapshots(lambda at: fx.healthy(at, 1)))
    reason = "Redis is down and green returns 500s"
    async with a.run_test(size=SIZE) as pa:
        await started(pa, a)
        async with b.run_test(size=SIZE) as pb, traffic_through(proxy.frontend_url):
            await started(pb, b)
            # Nobody drives: both read-only, gates closed, each saying why.
            for app, pilot in ((a, pa), (b, pb)):
                assert role(app) is Role.UNAVAILABLE and not app.operators.can_drive()
                await until(pilot, lambda app=app: "unreachable" in lease_text(app), "the reason")
                screen = await open_runbook(pilot)
                assert screen.check_action("start", ()) is False
                with pytest.raises(NotDriving, match="unreachable"):
                    await app.operators.coordinator.request_approval("switch-100")  # type: ignore[union-attr]
                await pilot.press("d")  # back to the dashboard
            await until(pb, lambda: b.rendered_sequence is not None, "B's first sweep")
            assert b.check_action("rollback", ())

            # The emergency brake still works: a reason, then traffic really goes to blue.
            await pb.press("f9")
            await until(pb, lambda: isinstance(b.screen, BreakGlassScreen), "the reason")
            assert "unreachable" in b.screen.why  # type: ignore[attr-defined]
            assert weights(proxy) == (128, 128)
            b.screen.query_one("#glass-reason").value = reason  # type: ignore[attr-defined]
            await pb.press("enter")
            await until(
                pb,
                lambda: len(b.rollback.results) == 1 and b.rollback.phase is RollbackPhase.IDLE,
                "the rollback to end",
            )
            result = b.rollback.results[0]
            assert result.success, result.problems
            assert weights(proxy) == (256, 0)
            assert result.operator == BOB and result.trigger == "break-glass"
            await until(pb, lambda: len(b.operators.glass_results) == 1, "the break-glass record")
            assert not a.operators.can_drive() and not b.operators.can_drive()

    made = records(cfg_b)
    glass = [r for r in made if r.action == "break_glass"]
    assert len(glass) == 1
    assert glass[0].operator == BOB and glass[0].evidence["reason"] == reason
    assert glass[0].evidence["console_was_driving"] is False and glass[0].fence is None
    assert [r.operator for r in made if r.action == "rollback"] == [BOB]


# --- four eyes ------------------------------------------------------------------------------


@pytest.mark.engines
async def test_four_eyes_the_driver_cannot_approve_its_own_gate_the_other_console_can(
    tmp_path: Path,
    redis_server: RedisServer,
    start_engine: Callable[[Callable[[], Any]], Any],
) -> None:
    proxy: HAProxy = start_engine(
        lambda: HAProxy(
            tmp_path / "h",
            blue=("127.0.0.1", free_port()),
            green=("127.0.0.1", free_port()),
            health_checks=False,
        ).start()
    )
    try:
        await _four_eyes(tmp_path, redis_server, proxy)
    finally:
        proxy.stop()


def _green(proxy: HAProxy) -> float:
    blue, green = weights(proxy)
    return 100.0 * green / (blue + green)


async def _four_eyes(tmp_path: Path, redis_server: RedisServer, proxy: HAProxy) -> None:
    from console.deployment import DeploymentSession
    from console.runbook.loader import load_runbook_for

    dep = deployment_name()
    cfg_a = config_for(tmp_path, ALICE, redis_server.url, dep, four_eyes=("switch-100",))
    cfg_b = config_for(tmp_path, BOB, redis_server.url, dep, four_eyes=("switch-100",))
    clock = Clock(fx.T0)

    def snap(at: datetime) -> Snapshot:
        return snapshot(at, green_percentage=_green(proxy))

    # Alice's deployment, walked to the 50 % monitor window before the consoles open.
    switch = HAProxyRuntimeSwitch(str(proxy.admin_socket), backend=proxy.backend)
    trail = open_trail(cfg_a, operator=ALICE)
    session = DeploymentSession(
        cfg_a, load_runbook_for(cfg_a), trail, operator=ALICE, clock=clock, traffic=switch
    )
    session.start()
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
    assert session.engine.current_step_id == "switch-100"
    clock.advance(1)

    a = console(tmp_path, cfg_a, "a", source=LiveSnapshots(lambda _: snap(clock.now)), clock=clock)
    a.runbook_driver.attach(session)
    b = console(tmp_path, cfg_b, "b")
    async with a.run_test(size=SIZE) as pa:
        await started(pa, a)
        assert session.approver is not None and session.drive_guard is not None
        async with b.run_test(size=SIZE) as pb:
            await started(pb, b)
            screen = await open_runbook(pa)
            assert screen.view is not None and screen.view.four_eyes
            screen.query_one("#gate-typed").focus()
            await type_text(pa, "green")
            await until(
                pa, lambda: not screen.query_one("#gate-continue").disabled, "the gate to open"
            )
            await click_when_drawn(pa, "#gate-continue")
            await until(pa, lambda: bool(a.operators.approvals), "A's request is listed")
            assert session.busy is not None and "approve switch-100" in session.busy
            assert weights(proxy) == (128, 128), "traffic moved before the second operator"

            # Alice cannot approve her own request, from her own console.
            a.screen.set_focus(None)
            await pa.press("o")
            await until(pa, lambda: isinstance(a.screen, OperatorsScreen), "A's operators screen")
            await until(pa, lambda: a.screen.selected() is not None, "A's row")  # type: ignore[attr-defined]
            await pa.press("a")
            await until(pa, lambda: any("Refused" in n for n in notes(a)), "the refusal")
            refusal = next(n for n in notes(a) if "Refused" in n)
            assert "second, different operator" in refusal and "switch-100" in refusal
            assert weights(proxy) == (128, 128)

            # Bob is told, and approves from his console; Alice's gate opens.
            await until(
                pb,
                lambda: any("approve gate switch-100" in n for n in notes(b)),
                "B is told about the request",
            )
            await until(pb, lambda: "1 approval waiting" in lease_text(b), "B's line")
            await pb.press("o")
            await until(pb, lambda: isinstance(b.screen, OperatorsScreen), "B's operators screen")
            ops = b.screen
            assert isinstance(ops, OperatorsScreen)
            await until(pb, lambda: ops.selected() is not None, "B's row")
            assert ops.selected().requester == ALICE  # type: ignore[union-attr]
            await pb.press("a")
            await until(
                pa,
                lambda: session.record("switch-100").state is StepState.PASSED,
                "the 100 % switch",
            )
            assert weights(proxy) == (0, 256)
            # The traffic change shows on B's console within 1 s.
            session_b = b.runbook_driver.session
            assert session_b is not None
            passed_at = time.monotonic()
            while session_b.record("switch-100").state is not StepState.PASSED:
                assert time.monotonic() - passed_at < 1.0, "B did not show the switch in 1 s"
                await pb.pause(0.01)
            assert session_b.view_only
            assert any(
                e.kind is EventKind.TRAFFIC and e.data.get("step") == "switch-100"
                for e in b.operators.received
            )
            assert session.record("switch-100").approved_by == BOB
            await until(pb, lambda: any("Approved gate switch-100" in n for n in notes(b)), "ok")
            fence_a = a.operators.coordinator.fence  # type: ignore[union-attr]

    passed = [
        r
        for r in records(cfg_a, session.deployment_id)
        if r.action == "step.passed" and r.evidence.get("step") == "switch-100"
    ]
    assert len(passed) == 1
    assert passed[0].operator == ALICE and passed[0].fence == fence_a
    assert passed[0].evidence["approved_by"] == BOB


# --- Redis restart mid-deployment -----------------------------------------------------------


async def test_a_redis_restart_mid_deployment_the_holder_takes_the_lease_again_and_b_resyncs(
    tmp_path: Path, fresh_redis: Callable[..., RedisServer]
) -> None:
    server = fresh_redis()
    dep = deployment_name()
    cfg_a = config_for(tmp_path, ALICE, server.url, dep)
    a = console(tmp_path, cfg_a, "a")
    b = console(tmp_path, config_for(tmp_path, BOB, server.url, dep), "b")
    async with a.run_test(size=SIZE) as pa:
        await started(pa, a)
        async with b.run_test(size=SIZE) as pb:
            await started(pb, b)
            deployment_id = await start_deployment(pa)
            session_a = a.runbook_driver.session
            session_b = b.runbook_driver.session
            assert session_a is not None and session_b is not None
            await pa.press("c")
            await until(
                pb,
                lambda: (
                    session_b.deployment_id == deployment_id
                    and session_b.record("pre-verify-hash").state is StepState.PASSED
                ),
                "B follows A",
            )
            fence_before = a.operators.coordinator.fence  # type: ignore[union-attr]
            subscription = b.operators.subscription
            assert subscription is not None
            resyncs_before = subscription.resyncs

            await asyncio.to_thread(server.restart)  # no persistence: the lease is gone

            # A takes the lease again (a new, higher fence) and says why.
            await until(
                pa,
                lambda: (
                    a.operators.can_drive()
                    and a.operators.coordinator.fence not in (None, fence_before)
                ),  # type: ignore[union-attr]
                "A takes the lease again",
            )
            fence_after = a.operators.coordinator.fence  # type: ignore[union-attr]
            assert fence_after is not None and fence_before is not None
            assert fence_after > fence_before
            reason = a.operators.coordinator.status().reason  # type: ignore[union-attr]
            assert "Redis restarted" in reason or "renewal" in reason, reason
            await until(pa, lambda: any("drives" in n or "no longer" in n for n in notes(a)), "")
            # B reconnected and reloaded from the audit trail; it still shows A as the holder.
            await until(pb, lambda: subscription.resyncs > resyncs_before, "B resyncs")
            await until(pb, lambda: ALICE in lease_text(b), "B names A again")
            assert session_b.view_only and session_b.deployment_id == deployment_id

            # The deployment goes on under the new fence, and B sees it.
            await open_runbook(pa)
            await pa.press("c")
            await until(pa, lambda: isinstance(a.screen, ReasonDialog), "the note dialog")
            await type_text(pa, NOTE)
            await pa.press("enter")
            await until(
                pb,
                lambda: session_b.record("pre-validation-runner").state is StepState.ATTESTED,
                "B shows the step after the restart",
            )

    attested = [r for r in records(cfg_a, deployment_id) if r.action == "step.attested"]
    assert [r.fence for r in attested] == [fence_after]


# --- acgs-console --read-only, the real command in a terminal ------------------------------


def terminal(config_file: Path, state_home: Path, *flags: str) -> Any:
    """``python -m console --config FILE [flags]`` in a 120x40 pseudo-terminal."""
    import sys

    from pty_support import Terminal, terminal_env

    env = terminal_env(state_home)
    argv = [sys.executable, "-m", "console", "--config", str(config_file), *flags]
    return Terminal(argv, env)


F9 = "\x1b[20~"
ROLLBACK_SCREENS = (
    "break-glass: emergency rollback",
    "confirm emergency rollback to blue",
    "EMERGENCY ROLLBACK TO BLUE",
)


@pytest.mark.engines
def test_the_read_only_flag_opens_an_observer_that_never_takes_the_lease(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """``acgs-console --read-only`` for real: the free lease stays free, ``l`` and F9 do
    nothing; a console without the flag, same config otherwise, takes the lease at once and
    answers F9, and the observer names it."""
    import redis
    import tomlkit

    dep = deployment_name()
    files = {}
    for name, operator in (("observer", CAROL), ("driver", ALICE)):
        cfg = config_for(tmp_path, operator, redis_server.url, dep)
        files[name] = tmp_path / f"{name}.toml"
        files[name].write_text(tomlkit.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    lease_key = f"acgs-console:{{{dep}}}:lease"
    holder_key = f"acgs-console:{{{dep}}}:holder"
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    observer = terminal(files["observer"], tmp_path / "state-observer", "--read-only")
    driver = None
    try:
        observer.wait_for("the observer's lease line", lambda t: "--read-only" in t)
        assert "observer" in observer.text()
        observer.press("l")
        observer.press(F9)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            observer.pump(0.1)
        assert not any(marker in observer.text() for marker in ROLLBACK_SCREENS), observer.text()
        assert not client.exists(lease_key), "the observer took the lease"

        driver = terminal(files["driver"], tmp_path / "state-driver")
        driver.wait_for("the driver's lease line", lambda t: "▶ driving" in t)
        assert client.hget(holder_key, "operator") == ALICE
        observer.wait_for("the observer names the driver", lambda t: ALICE in t)
        assert "--read-only" in observer.text()
        # The same key on a console that may act does something.
        driver.press(F9)
        driver.wait_for(
            "F9 on the driver", lambda t: any(marker in t for marker in ROLLBACK_SCREENS)
        )
        observer.press(F9)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            observer.pump(0.1)
        assert not any(marker in observer.text() for marker in ROLLBACK_SCREENS), observer.text()
        assert client.hget(holder_key, "operator") == ALICE
    finally:
        observer.close()
        if driver is not None:
            driver.close()
        client.close()


# --- the words on the lease line (no engine: a status as the coordinator reports it) --------


def _status(role_: Role, **fields: Any) -> Any:
    from console.coordination import LeaseStatus

    base: dict[str, Any] = {
        "deployment": "d1",
        "mode": "redis",
        "where": "redis://127.0.0.1:1/0",
        "operator": BOB,
        "role": role_,
        "can_drive": role_ is Role.DRIVING,
        "reason": "",
    }
    base.update(fields)
    return LeaseStatus(**base)


def test_the_lease_line_says_who_drives_since_when_and_the_countdown() -> None:
    from datetime import timedelta

    from backends.lease import LeaseHolder
    from widgets.lease_status import LeaseLineKeys, lease_line
    from widgets.verdicts import Level

    now = fx.T0
    holder = LeaseHolder(
        deployment="d1",
        operator=ALICE,
        fence=7,
        acquired_at=now - timedelta(seconds=93),
        expires_at=now + timedelta(seconds=12),
        mode="redis",
    )
    all_keys = LeaseLineKeys(take_lead="l", hand_over="h", operators="o", rollback="f9")
    seen = lease_line(_status(Role.OBSERVING, holder=holder), now, all_keys, waiting_approvals=2)
    assert seen.level is Level.WARNING
    text = seen.plain
    assert text.startswith("▲ read-only · alice@host-a drives since ")
    assert "(93 s ago)" in text and "lease expires in 12 s" in text and "fence 7" in text
    assert "◷ 2 approvals waiting" in text and "l: take the lead once the lease is free" in text
    assert "h: hand over" not in text

    own = holder.model_copy(update={"operator": BOB})
    driving = lease_line(
        _status(Role.DRIVING, holder=own, fence=7, deadline_in_s=4.2), now, all_keys
    )
    assert driving.level is Level.OK
    assert driving.plain.startswith(f"▶ driving {BOB} · fence 7 · since ")
    assert "lease runs out here in 4 s" in driving.plain and "h: hand over" in driving.plain
    assert "take the lead" not in driving.plain

    why = "coordination store redis://127.0.0.1:1/0 unreachable (refused): read-only"
    down = lease_line(_status(Role.UNAVAILABLE, reason=why), now, all_keys)
    assert down.level is Level.CRITICAL
    assert down.plain.startswith(f"✖ read-only {why}")
    assert "f9: emergency rollback (break-glass)" in down.plain

    free = lease_line(_status(Role.FREE), now, LeaseLineKeys(take_lead="l"))
    assert free.plain == "▲ read-only · nobody holds the lease · l: take the lead"
    watcher = lease_line(_status(Role.OBSERVER, holder=holder), now, LeaseLineKeys())
    assert watcher.plain.startswith("◉ observer --read-only: this console never drives")
    assert "take the lead" not in watcher.plain


def test_engine_records_become_small_events_of_the_right_kind() -> None:
    from console.coordination import EventKind
    from console.ui.screens.operators import shared_event

    kind, data = shared_event(
        "step.passed",
        {
            "deployment_id": "d",
            "step": "switch-10",
            "kind": "traffic",
            "state": "passed",
            "evidence": {"big": "x" * 5000},
            "phase": "phase-2",
        },
    )
    assert kind is EventKind.TRAFFIC
    assert data == {"step": "switch-10", "phase": "phase-2", "state": "passed", "kind": "traffic"}
    kind, data = shared_event("traffic.read_back", {"split": {"green_percentage": 10.0}})
    assert kind is EventKind.TRAFFIC and data == {"green_percentage": 10.0}
    kind, _ = shared_event("rollback.offered", {"reason": "P99 critical"})
    assert kind is EventKind.ROLLBACK
    kind, data = shared_event(
        "step.failed", {"step": "app-performance", "kind": "check", "reason": "r" * 1000}
    )
    assert kind is EventKind.STEP and len(data["reason"]) == 300
