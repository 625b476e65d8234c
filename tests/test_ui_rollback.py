"""The rollback key in the TUI, under Pilot, against a real HAProxy in front of the real fleet.

Every rollback here moves real traffic: a ``fresh_haproxy`` (one per test: these tests stop
it or move its weights) sits in front of the session's sandbox fleet with green at 50 %,
and a small request loop sends traffic through its frontend, so "requests reach blue" is
judged on HAProxy's own per-server counters. Only the dashboard's snapshot source is a
fake (the UI boundary): it decides whether blue *looks* safe, nothing else. The weights
are checked on HAProxy's admin socket directly, and the incident record in the real
SQLite audit trail under ``tmp_path``.

The SVG snapshots render fixed progress events (fixed milliseconds, incident id and
paths) through the App's own message path, so they are deterministic; the folding of
events into what the screen says is tested on its own at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import ui_fixtures as fx
from pilot_support import notes_seen
from pilot_support import wait_until as wait_for
from runbook_fixtures import QUIET, Clock, alert
from runbook_fixtures import snapshot as rb_snapshot
from ui_runbook_fixtures import NOTE, make_session, walk_to
from walk_fixtures import python_argv, walk_config

from backends.models import (
    AlertPhase,
    ComplianceCheck,
    ComplianceResult,
    Environment,
    Snapshot,
    TrafficSplit,
    utcnow,
)
from backends.traffic import parse_servers_state
from console.audit import open_trail
from console.config import AppConfig
from console.engines import HAProxy
from console.rollback import (
    STEP_AUDIT,
    STEP_BLUE_HEALTHY,
    STEP_COMPLIANCE,
    STEP_READ_BACK,
    STEP_REPORT,
    STEP_REQUESTS,
    STEP_SWITCH,
    STEP_TITLES,
    AuditOutcome,
    RollbackEvent,
    RollbackEventKind,
    RollbackOutcome,
    RollbackResult,
    RollbackSafety,
    RollbackStep,
    SafetyVerdict,
    SwitchAttempt,
)
from console.ui.app import ConsoleApp
from console.ui.screens.help import HelpScreen
from console.ui.screens.rollback import (
    RollbackConfirmScreen,
    RollbackPhase,
    RollbackProgress,
    RollbackScreen,
)
from widgets.rollback_steps import (
    ManualFallback,
    PreflightReasons,
    RollbackHeadline,
    RollbackSteps,
    RollbackView,
    StepState,
)

HASH = fx.HASH
AUTH = {"Authorization": "Bearer test", "X-Constitutional-Hash": HASH}
FALLBACK = "Set acgs/green to weight 0 by hand on lb-1, then page the SRE lead (test text)."
OPERATOR = "test-operator"


# --- helpers ------------------------------------------------------------------------------


def notifications(app: ConsoleApp) -> list[str]:
    """Every notification shown so far, expired ones included."""
    return notes_seen(app)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fleet_config(
    tmp_path: Path,
    fleet: Any,
    proxy: HAProxy | None,
    *,
    each_environment: dict[str, Any] | None = None,
    **extra: Any,
) -> AppConfig:
    """A console config for the session fleet behind ``proxy``, audit and reports in tmp."""
    environments: dict[str, Any] = {
        env: {
            "services": {
                s.service: {"base_url": s.base_url} for s in fleet.services if s.environment == env
            },
            **(each_environment or {}),
        }
        for env in ("blue", "green")
    }
    admin = str(proxy.admin_socket) if proxy is not None else str(tmp_path / "no-such.sock")
    data: dict[str, Any] = {
        "operator": OPERATOR,
        "environments": environments,
        "traffic": {"kind": "haproxy", "admin": admin, "timeout_s": 1.0},
        "audit": {
            "sqlite_path": str(tmp_path / "audit.sqlite3"),
            "spool_path": str(tmp_path / "audit-spool.jsonl"),
        },
        "rollback": {
            "retries": 2,
            "retry_backoff_s": 0.05,
            "verify_window_s": 0.3,
            "verify_timeout_s": 3.0,
            "report_dir": str(tmp_path / "incidents"),
            "manual_fallback": FALLBACK,
        },
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return AppConfig(**data)


def weights(proxy: HAProxy) -> tuple[int, int]:
    """Blue and green weights as HAProxy itself reports them (not through the console)."""
    rows = parse_servers_state(proxy.admin_command("show servers state acgs"), "acgs")
    return int(rows["blue"]["srv_uweight"]), int(rows["green"]["srv_uweight"])


def set_green_50(proxy: HAProxy) -> None:
    for command in ("set weight acgs/blue 128", "set weight acgs/green 128"):
        assert proxy.admin_command(command).strip() == ""
    assert weights(proxy) == (128, 128)


def audit_actions(cfg: AppConfig) -> list[str]:
    trail = open_trail(cfg)
    try:
        assert trail.verify().ok
        return [r.action for r in trail.records()]
    finally:
        trail.close()


@contextlib.asynccontextmanager
async def traffic_through(url: str, workers: int = 3) -> AsyncIterator[dict[str, int]]:
    """A steady stream of requests to ``url`` while the block runs; counts who served."""
    served: dict[str, int] = {"blue": 0, "green": 0}
    stop = asyncio.Event()

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                response = await client.get(url + "/api/v1/constitutional/validate", headers=AUTH)
            except httpx.HTTPError:
                await asyncio.sleep(0.02)
                continue
            env = response.headers.get("x-acgs-served-by", "unknown").partition("/")[0]
            served[env] = served.get(env, 0) + 1
            await asyncio.sleep(0.01)

    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(workers)]
        try:
            deadline = time.monotonic() + 10
            while served["blue"] == 0 or served["green"] == 0:
                assert time.monotonic() < deadline, f"traffic never reached both sides: {served}"
                await asyncio.sleep(0.05)
            yield served
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


class LiveSource:
    """A fake dashboard source: every sweep a snapshot built now (so it is current).

    Args:
        make: Builds the snapshot from ``(taken_at, sequence)``.
        age: How old each snapshot is when returned (a stale dashboard when large).
        then_hang: After this many sweeps, hang like a dead probe (None: never).
    """

    def __init__(
        self,
        make: Callable[[datetime, int], Snapshot],
        *,
        age: timedelta = timedelta(0),
        then_hang: int | None = None,
    ) -> None:
        self.make = make
        self.age = age
        self.then_hang = then_hang
        self.calls = 0

    async def sweep(self) -> Snapshot:
        self.calls += 1
        if self.then_hang is not None and self.calls > self.then_hang:
            await asyncio.Event().wait()
        return self.make(utcnow() - self.age, self.calls)

    async def close(self) -> None:
        return None


def healthy_blue(at: datetime, sequence: int) -> Snapshot:
    return fx.healthy(at, sequence)


def unhealthy_blue(at: datetime, sequence: int) -> Snapshot:
    """Blue with cache_optimizer down (the fleet's real blue is healthy)."""
    base = fx.healthy(at, sequence)
    services = fx._services(Environment.BLUE, at, down=("cache_optimizer",))
    return base.model_copy(update={"blue": fx._env(Environment.BLUE, at, services=services)})


def make_console(tmp_path: Path, cfg: AppConfig, source: Any, **kwargs: Any) -> ConsoleApp:
    return ConsoleApp(
        cfg,
        source,
        state_dir=tmp_path / "ui-state",
        poll_interval_s=0.2,
        environ={},
        **kwargs,
    )


async def first_sweep(pilot: Any, app: ConsoleApp) -> None:
    await wait_for(pilot, lambda: app.rendered_sequence is not None, "the first sweep")


async def rollback_ended(pilot: Any, app: ConsoleApp, count: int = 1) -> RollbackResult:
    await wait_for(
        pilot,
        lambda: len(app.rollback.results) >= count and app.rollback.phase is RollbackPhase.IDLE,
        "the rollback to end",
    )
    await pilot.pause()
    return app.rollback.results[-1]


async def press_quickly(pilot: Any, *keys: str) -> None:
    """Keys back to back, as a fast hand does.

    ``pilot.press`` waits for the whole process to go idle after each key, which, with
    a rollback thread and a traffic loop busy, can take longer than the rollback itself;
    the keys here go through the same driver path without that wait.
    """
    from textual import events

    app = pilot.app
    for key in keys:
        event = events.Key(key, None)
        event.set_sender(app)
        app._driver.send_message(event)
    await pilot.pause(0.01)


def rows(app: ConsoleApp) -> dict[str, str]:
    screen = app.screen
    assert isinstance(screen, RollbackScreen), type(screen).__name__
    steps = screen.query_one(RollbackSteps)
    return {name: steps.row(name).plain_text for name in STEP_TITLES}


# --- F9 against the real load balancer ------------------------------------------------------


@pytest.mark.engines
async def test_f9_on_the_dashboard_rolls_back_through_haproxy_and_verifies(
    tmp_path: Path, fleet: Any, fresh_haproxy: Callable[..., HAProxy]
) -> None:
    proxy = fresh_haproxy()
    set_green_50(proxy)
    cfg = fleet_config(tmp_path, fleet, proxy)
    app = make_console(tmp_path, cfg, LiveSource(healthy_blue))
    async with app.run_test(size=(120, 40)) as pilot, traffic_through(proxy.frontend_url):
        await first_sweep(pilot, app)
        assert app.screen is app.dashboard
        await pilot.press("f9")
        result = await rollback_ended(pilot, app)

        # HAProxy itself, asked on its admin socket: 0 % green.
        assert weights(proxy) == (256, 0)
        assert result.outcome is RollbackOutcome.VERIFIED, result.problems
        assert result.success and result.trigger == "hotkey" and not result.confirmed
        assert result.safety is not None and result.safety.source == "dashboard snapshot"
        assert result.operator == OPERATOR

        # The screen: every step passed, timed from the key press, against the budget.
        screen = app.screen
        assert isinstance(screen, RollbackScreen)
        assert screen.verdict_text == "✔ ROLLED BACK TO BLUE AND VERIFIED"
        shown = rows(app)
        for name, text in shown.items():
            assert text.startswith("✔ ok "), text
            step = result.step(name)
            assert step is not None and f"{step.ended_ms:.1f} ms" in text
            assert STEP_TITLES[name] in text
        assert "0 % green (weights blue=256 green=0)" in shown[STEP_READ_BACK]
        assert "record #" in shown[STEP_AUDIT]
        budget = screen.query_one(RollbackHeadline).budget_text
        assert budget.startswith(f"total {result.total_ms:.1f} ms of the 30 s budget")
        assert budget.endswith("✔ within budget")
        assert not screen.query_one(ManualFallback).has_class("-shown")

    # The incident record, in the real audit store under tmp_path.
    assert audit_actions(cfg).count("rollback") == 1
    assert all(Path(p).is_file() for p in result.report_paths)


@pytest.mark.engines
async def test_f9_acts_from_a_modal_with_an_input_focused_and_a_second_press_does_not_double(
    tmp_path: Path, fleet: Any, fresh_haproxy: Callable[..., HAProxy]
) -> None:
    proxy = fresh_haproxy()
    set_green_50(proxy)
    # A longer quiet window keeps the rollback running while the keys arrive.
    cfg = fleet_config(
        tmp_path, fleet, proxy, rollback={"verify_window_s": 2.0, "verify_timeout_s": 6.0}
    )
    app = make_console(tmp_path, cfg, LiveSource(healthy_blue))
    async with app.run_test(size=(120, 40)) as pilot, traffic_through(proxy.frontend_url):
        await first_sweep(pilot, app)
        # The command palette: a modal screen with its Input focused.
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: type(app.focused).__name__ == "CommandInput", "the palette")
        await press_quickly(pilot, "f9", "f9")
        await wait_for(pilot, lambda: isinstance(app.screen, RollbackScreen), "the rollback screen")
        # A third press while it runs: nothing new, the running one stays in front.
        await press_quickly(pilot, "f9")
        assert app.rollback.phase is RollbackPhase.RUNNING
        assert any("not starting another" in n for n in notifications(app))
        result = await rollback_ended(pilot, app)
        assert isinstance(app.screen, RollbackScreen)
        assert weights(proxy) == (256, 0)
        assert result.outcome is RollbackOutcome.VERIFIED, result.problems
        assert len(app.rollback.results) == 1
        # Back goes to what was underneath.
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, RollbackScreen)
    assert audit_actions(cfg).count("rollback") == 1


@pytest.mark.engines
async def test_unsafe_blue_asks_escape_cancels_and_confirm_runs(
    tmp_path: Path, fleet: Any, fresh_haproxy: Callable[..., HAProxy]
) -> None:
    proxy = fresh_haproxy()
    set_green_50(proxy)
    cfg = fleet_config(tmp_path, fleet, proxy)
    app = make_console(tmp_path, cfg, LiveSource(unhealthy_blue))
    async with app.run_test(size=(120, 40)) as pilot, traffic_through(proxy.frontend_url):
        await first_sweep(pilot, app)
        await pilot.press("f9")
        await wait_for(
            pilot, lambda: isinstance(app.screen, RollbackConfirmScreen), "the confirmation"
        )
        confirm = app.screen
        assert isinstance(confirm, RollbackConfirmScreen)
        assert "blue unhealthy: 8/9 orchestrators up" in confirm.reasons_text
        assert "cache_optimizer (down: connection refused)" in confirm.reasons_text
        # F9 again while asked: no second question, nothing starts.
        await pilot.press("f9")
        await pilot.pause()
        assert app.screen is confirm

        await pilot.press("escape")
        await wait_for(pilot, lambda: app.rollback.phase is RollbackPhase.IDLE, "the cancel")
        assert not isinstance(app.screen, RollbackConfirmScreen | RollbackScreen)
        await wait_for(
            pilot, lambda: "rollback.refused" in audit_actions(cfg), "the refusal record"
        )
        assert weights(proxy) == (128, 128), "a cancelled rollback moved traffic"
        assert app.rollback.results == []

        await pilot.press("f9")
        await wait_for(
            pilot, lambda: isinstance(app.screen, RollbackConfirmScreen), "the confirmation"
        )
        await pilot.press("y")
        result = await rollback_ended(pilot, app)
        assert weights(proxy) == (256, 0)
        assert result.confirmed and result.safety is not None and not result.safety.safe
        assert result.outcome is RollbackOutcome.VERIFIED, result.problems
        screen = app.screen
        assert isinstance(screen, RollbackScreen)
        assert "confirmed by the operator" in screen.query_one(RollbackHeadline).context_text
        reasons = screen.query_one(PreflightReasons)
        assert reasons.has_class("-shown") and "cache_optimizer" in reasons.plain_text
    actions = audit_actions(cfg)
    assert actions.count("rollback") == 1 and actions.count("rollback.refused") == 1


@pytest.mark.engines
async def test_haproxy_down_the_screen_says_the_switch_failed_and_shows_the_fallback(
    tmp_path: Path, fleet: Any, fresh_haproxy: Callable[..., HAProxy]
) -> None:
    proxy = fresh_haproxy()
    set_green_50(proxy)
    cfg = fleet_config(tmp_path, fleet, proxy)
    app = make_console(tmp_path, cfg, LiveSource(healthy_blue))
    async with app.run_test(size=(120, 40)) as pilot:
        await first_sweep(pilot, app)
        proxy.stop()
        await pilot.press("f9")
        result = await rollback_ended(pilot, app)

        assert result.outcome is RollbackOutcome.SWITCH_FAILED
        assert not result.success and not result.switched
        screen = app.screen
        assert isinstance(screen, RollbackScreen)
        assert screen.verdict_text == "✖ SWITCH FAILED: TRAFFIC IS NOT CONFIRMED ON BLUE"
        fallback = screen.query_one(ManualFallback)
        assert fallback.has_class("-shown") and fallback.plain_text == FALLBACK
        shown = rows(app)
        assert shown[STEP_SWITCH].startswith("✖ failed ")
        assert shown[STEP_READ_BACK].startswith("✖ failed ")
        for name in (STEP_BLUE_HEALTHY, STEP_REQUESTS, STEP_COMPLIANCE):
            assert shown[name].startswith("○ skipped "), shown[name]
        # Each failed attempt arrived as it happened, with its backoff (3 = 1 + 2 retries).
        attempts = app.rollback.view.attempts  # type: ignore[union-attr]
        assert [a.attempt for a in attempts] == [1, 2, 3]
        assert [a.retry_in_s for a in attempts] == [0.05, 0.1, None]
        texts = [a.text for a in attempts]
        assert "retrying in 0.05 s" in texts[0] and "no retries left" in texts[2]
        everything = " ".join(shown.values()) + screen.verdict_text
        assert "ROLLED BACK" not in everything
        assert screen.query_one(RollbackHeadline).budget_text.endswith("not verified")
        assert f"cannot reach the HAProxy runtime API at {proxy.admin_socket}" in shown[STEP_SWITCH]
    assert audit_actions(cfg).count("rollback") == 1


@pytest.mark.engines
async def test_rollback_completes_with_prometheus_redis_postgres_gone_and_a_stale_dashboard(
    tmp_path: Path, fleet: Any, fresh_haproxy: Callable[..., HAProxy]
) -> None:
    proxy = fresh_haproxy()
    set_green_50(proxy)
    dead = closed_port()
    dsn = f"host=127.0.0.1 port={dead} dbname=acgs user=acgs connect_timeout=1"
    cfg = fleet_config(
        tmp_path,
        fleet,
        proxy,
        each_environment={
            "redis": {"url": f"redis://127.0.0.1:{dead}/0"},
            "postgres": {"primary_dsn": dsn},
        },
        prometheus={"url": f"http://127.0.0.1:{dead}"},
        audit={"postgres_dsn": dsn},
    )
    # One snapshot, an hour old, then the source hangs: the dashboard is stale.
    source = LiveSource(healthy_blue, age=timedelta(hours=1), then_hang=1)
    app = make_console(tmp_path, cfg, source)
    async with app.run_test(size=(120, 40)) as pilot, traffic_through(proxy.frontend_url):
        await first_sweep(pilot, app)
        await pilot.press("f9")
        result = await rollback_ended(pilot, app)
        assert weights(proxy) == (256, 0)
        assert result.outcome is RollbackOutcome.VERIFIED, result.problems
        # The stale dashboard was not trusted: blue was probed directly.
        assert result.safety is not None and "direct probe of blue" in result.safety.source
        assert result.audit is not None and result.audit.spooled and not result.audit.stored
        assert "spooled locally" in rows(app)[STEP_AUDIT]
    assert (tmp_path / "audit-spool.jsonl").read_text().strip()


# --- automatic rollback: app.start_rollback -------------------------------------------------


@pytest.mark.engines
async def test_start_rollback_automatic_runs_the_same_procedure_and_says_so(
    tmp_path: Path, fleet: Any, fresh_haproxy: Callable[..., HAProxy]
) -> None:
    proxy = fresh_haproxy()
    set_green_50(proxy)
    cfg = fleet_config(tmp_path, fleet, proxy, rollback={"automatic": True})
    app = make_console(tmp_path, cfg, LiveSource(healthy_blue))
    async with app.run_test(size=(120, 40)) as pilot, traffic_through(proxy.frontend_url):
        await first_sweep(pilot, app)
        assert app.start_rollback("P99 Latency on green: P99 > 5 ms") is True
        # While it runs, the key does not start another.
        await pilot.press("f9")
        result = await rollback_ended(pilot, app)
        assert weights(proxy) == (256, 0)
        assert result.outcome is RollbackOutcome.VERIFIED, result.problems
        assert result.automatic and result.trigger == "automatic"
        assert result.reason == "automatic: P99 Latency on green: P99 > 5 ms"
        assert any(n.startswith("Automatic rollback to blue started") for n in notifications(app))
        screen = app.screen
        assert isinstance(screen, RollbackScreen)
        assert "trigger: automatic" in screen.query_one(RollbackHeadline).context_text
    assert audit_actions(cfg).count("rollback") == 1


def offline_config(tmp_path: Path, **rollback: Any) -> AppConfig:
    """The fixture estate, with a load balancer that is not there and audit in tmp_path.

    Enough for everything before the switch: with a current snapshot the pre-flight
    needs no I/O at all.
    """
    return fx.make_config(
        traffic={"kind": "haproxy", "admin": str(tmp_path / "no-lb.sock"), "timeout_s": 0.5},
        audit={
            "sqlite_path": str(tmp_path / "audit.sqlite3"),
            "spool_path": str(tmp_path / "audit-spool.jsonl"),
        },
        rollback={"report_dir": str(tmp_path / "incidents"), **rollback},
    )


async def test_automatic_off_only_offers_the_rollback(tmp_path: Path) -> None:
    cfg = offline_config(tmp_path)
    app = make_console(tmp_path, cfg, LiveSource(healthy_blue))
    async with app.run_test(size=(120, 40)) as pilot:
        await first_sweep(pilot, app)
        assert app.start_rollback("Error Rate on green: error rate > 1%") is True
        await wait_for(pilot, lambda: isinstance(app.screen, RollbackConfirmScreen), "the offer")
        offer = app.screen
        assert isinstance(offer, RollbackConfirmScreen)
        assert offer.offer == "Error Rate on green: error rate > 1%"
        assert offer.reasons_text == "✔ blue looks safe"
        # A second request while asked starts nothing.
        assert app.start_rollback("another alert") is False
        await pilot.press("n")
        await wait_for(pilot, lambda: app.rollback.phase is RollbackPhase.IDLE, "the cancel")
        assert app.rollback.results == []
        await wait_for(
            pilot, lambda: "rollback.refused" in audit_actions(cfg), "the refusal record"
        )
    assert "rollback" not in audit_actions(cfg)


async def test_automatic_onto_an_unsafe_blue_is_refused_recorded_and_asked(
    tmp_path: Path,
) -> None:
    cfg = offline_config(tmp_path, automatic=True)
    app = make_console(tmp_path, cfg, LiveSource(unhealthy_blue))
    async with app.run_test(size=(120, 40)) as pilot:
        await first_sweep(pilot, app)
        assert app.start_rollback("Compliance Violation on green") is True
        await wait_for(pilot, lambda: isinstance(app.screen, RollbackConfirmScreen), "the question")
        assert any("Automatic rollback NOT run" in n for n in notifications(app))
        assert "cache_optimizer (down" in app.screen.reasons_text  # type: ignore[attr-defined]
        await wait_for(
            pilot, lambda: "rollback.refused" in audit_actions(cfg), "the refusal record"
        )
        assert app.rollback.results == []
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.rollback.phase is RollbackPhase.IDLE, "the cancel")
        await wait_for(
            pilot, lambda: audit_actions(cfg).count("rollback.refused") == 2, "both refusals"
        )
    # Two decisions, two records: the automatic refusal and the operator's.
    actions = audit_actions(cfg)
    assert "rollback" not in actions and actions.count("rollback.refused") == 2
    reports = list((tmp_path / "incidents").glob("incident-*.md"))
    assert len(reports) == 1 and "NOT STARTED" in reports[0].read_text()


async def test_a_decommissioned_blue_asks_first_even_when_healthy(tmp_path: Path) -> None:
    cfg = offline_config(tmp_path)
    app = make_console(tmp_path, cfg, LiveSource(healthy_blue))
    async with app.run_test(size=(120, 40)) as pilot:
        await first_sweep(pilot, app)
        app.rollback.blue_decommissioned = True  # known to be shut down, whatever the runbook says
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, RollbackConfirmScreen), "the question")
        text = app.screen.reasons_text  # type: ignore[attr-defined]
        assert text.startswith("✖ blue is decommissioned (shut down in Phase 3.1)")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.rollback.phase is RollbackPhase.IDLE, "the cancel")
        assert app.rollback.results == []


async def test_read_only_console_never_rolls_back(tmp_path: Path) -> None:
    cfg = offline_config(tmp_path, automatic=True)
    app = make_console(tmp_path, cfg, LiveSource(healthy_blue), read_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await first_sweep(pilot, app)
        await pilot.press("f9")
        await pilot.pause()
        assert app.start_rollback("P99 Latency on green") is False
        await pilot.pause()
        assert app.rollback.phase is RollbackPhase.IDLE
        assert app.screen is app.dashboard
        assert any("read-only" in n for n in notifications(app))


async def test_the_rollback_screen_shows_f9_and_back_in_its_footer_and_help(
    tmp_path: Path,
) -> None:
    cfg = offline_config(tmp_path, retries=0)
    app = make_console(tmp_path, cfg, LiveSource(unhealthy_blue))
    async with app.run_test(size=(120, 40)) as pilot:
        await first_sweep(pilot, app)
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, RollbackConfirmScreen), "the question")
        bindings = app.screen.active_bindings
        assert bindings["enter"].binding.id == "rollback-confirm"
        assert bindings["y"].binding.id == "rollback-confirm"
        assert bindings["escape"].binding.id == "rollback-cancel"
        await pilot.press("enter")
        # No load balancer at all: the switch fails and the screen says so.
        await rollback_ended(pilot, app)
        screen = app.screen
        assert isinstance(screen, RollbackScreen)
        assert screen.verdict_text == "✖ SWITCH FAILED: TRAFFIC IS NOT CONFIRMED ON BLUE"
        bindings = screen.active_bindings
        assert bindings["f9"].binding.id == "rollback" and bindings["f9"].enabled
        assert bindings["escape"].binding.id == "rollback-back"
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        ids = {(r.key, r.binding_id) for r in app.screen.rows}
        assert {("f9", "rollback"), ("esc", "rollback-back")} <= ids


async def test_a_failing_switch_is_loud_even_with_the_rollback_screen_hidden(
    tmp_path: Path,
) -> None:
    # No load balancer at all; a long backoff leaves time to hide the screen before the
    # switch gives up (hiding it after a failed attempt also says so at once).
    cfg = offline_config(tmp_path, retries=1, retry_backoff_s=2.0, manual_fallback=FALLBACK)
    app = make_console(tmp_path, cfg, LiveSource(healthy_blue))
    async with app.run_test(size=(120, 40)) as pilot:
        await first_sweep(pilot, app)
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, RollbackScreen), "the screen")
        await press_quickly(pilot, "escape")
        await wait_for(pilot, lambda: app.screen is app.dashboard, "the dashboard")
        result = await rollback_ended(pilot, app)
        assert result.outcome is RollbackOutcome.SWITCH_FAILED and not result.success
        said = notifications(app)
        assert any(
            n.startswith("Rollback: SWITCH FAILED: TRAFFIC IS NOT CONFIRMED ON BLUE") for n in said
        ), said
        assert any(n.startswith("Rollback ended: SWITCH FAILED") and FALLBACK in n for n in said)
        assert not any("verified" in n.lower() and "not" not in n.lower() for n in said)


# --- F9 on the runbook screen: a running command, a monitor window, engines stopped -----------


def runbook_config(
    tmp_path: Path,
    fleet: Any,
    proxy: HAProxy,
    *,
    prometheus: Any = None,
    redis: Any = None,
    cluster: Any = None,
    automatic: bool = False,
    commands: dict[str, Any] | None = None,
    windows: dict[str, float] | None = None,
) -> AppConfig:
    """The walk's config (real fleet, real HAProxy, optionally real Prometheus/Redis/PG)."""
    extra: dict[str, Any] = {
        "rollback": {
            "automatic": automatic,
            "retries": 2,
            "retry_backoff_s": 0.05,
            "verify_window_s": 0.3,
            "verify_timeout_s": 3.0,
            "report_dir": str(tmp_path / "incidents"),
            "manual_fallback": FALLBACK,
        },
        "operator": fx.OPERATOR,
    }
    if prometheus is not None:
        extra["prometheus"] = {"url": prometheus.url}
    return walk_config(
        tmp_path,
        fleet,
        proxy,
        redis_url=redis.url if redis is not None else None,
        pg=cluster,
        audit_dsn=cluster.primary_dsn if cluster is not None else None,
        commands=commands,
        windows=windows,
        **extra,
    )


def green_of(proxy: HAProxy) -> float:
    blue, green = weights(proxy)
    return 100.0 * green / (blue + green)


async def walk_through(
    session: Any, clock: Clock, last_step: str, snap: Callable[[datetime], Snapshot]
) -> None:
    """Drive ``session`` until ``last_step`` is done, on fixed snapshots and a fake clock.

    Checks pass on the snapshots, unconfigured commands are attested (with the typed name
    when the step is destructive), traffic steps move the real HAProxy, windows run out.
    """
    from console.runbook.engine import StepState
    from console.runbook.model import StepKind

    done = (StepState.PASSED, StepState.ATTESTED)
    for _ in range(300):
        current = session.engine.current()
        assert current is not None, f"the procedure ended before {last_step}"
        _, step = current
        clock.advance(1)  # the "no alerts during the phase" checks allow 5 s between sweeps
        session.observe(snap(clock.now))
        kind = session.engine.effective_kind(step)
        record = await session.proceed(
            note=NOTE if kind is StepKind.ATTESTATION else None,
            typed=step.confirm_typed.value if step.confirm_typed is not None else None,
        )
        if record.state is StepState.RUNNING:  # a monitor window: let it run out quietly
            for _ in range(3):
                clock.advance(1)
                session.observe(snap(clock.now))
            session.tick()
            record = session.record(step.id)
        assert record.state in done, (step.id, record.reason)
        if step.id == last_step:
            return
    raise AssertionError(f"never reached {last_step}")


LONG_COMMAND = (
    "import time\nfor i in range(600):\n    print(f'validation batch {i} ok', flush=True)\n"
    "    time.sleep(0.1)\n"
)


@pytest.mark.engines
@pytest.mark.parametrize("during", ["running command", "monitor window", "critical alert"])
async def test_rollback_from_the_runbook_screen_with_prometheus_redis_postgres_stopped(
    tmp_path: Path,
    fleet: Any,
    fresh_haproxy: Callable[..., HAProxy],
    fresh_prometheus: Callable[..., Any],
    fresh_redis: Callable[..., Any],
    fresh_pg_cluster: Callable[..., Any],
    during: str,
) -> None:
    """Issue 6, points 1, 3 and 6, in the TUI on a real deployment session.

    ``running command``: F9 while a runbook command streams its output; ``monitor
    window``: F9 while Phase 2's 10 % window is open; ``critical alert``: no key at all,
    a critical alert fails that window and ``rollback.automatic`` runs the procedure.
    In each, the real Prometheus, Redis and PostgreSQL (the audit store too) the config
    names were running and are stopped before the rollback, and the dashboard is stale
    (fixed snapshots of long ago): only HAProxy and the fleet are left.
    """
    from backends.traffic import HAProxyRuntimeSwitch
    from console.runbook.engine import StepState
    from console.ui.screens.runbook import RunbookScreen

    proxy = fresh_haproxy()
    prometheus, redis, cluster = fresh_prometheus(), fresh_redis(), fresh_pg_cluster()
    cfg = runbook_config(
        tmp_path,
        fleet,
        proxy,
        prometheus=prometheus,
        redis=redis,
        cluster=cluster,
        automatic=during == "critical alert",
        # Only where it is the point: walked past, the command would run for a minute.
        commands=(
            {"pre-validation-runner": {"argv": python_argv(LONG_COMMAND), "timeout_s": 120}}
            if during == "running command"
            else {}
        ),
        windows={"monitor-10": 600.0, "monitor-50": 2.0, "post-switch-monitoring": 2.0},
    )
    clock = Clock(fx.T0)
    session = make_session(cfg, clock, traffic=HAProxyRuntimeSwitch(str(proxy.admin_socket)))
    session.start()  # PostgreSQL is still up: the deployment's records go into its chain

    def snap(at: datetime) -> Snapshot:
        return rb_snapshot(at, green_percentage=green_of(proxy))

    if during == "running command":
        set_green_50(proxy)
        await walk_to(session, clock, "pre-validation-runner", snap=snap)
        step_id = "pre-validation-runner"
    else:
        await walk_to(session, clock, "switch-10", snap=snap)
        await walk_through(session, clock, "switch-10", snap)
        assert weights(proxy) == (230, 26)
        clock.advance(1)
        session.observe(snap(clock.now))
        window = await session.proceed()  # the 10 % window opens (600 s)
        assert window.state is StepState.RUNNING
        step_id = "monitor-10"
    clock.advance(1)
    shown = snap(clock.now)
    clock.advance(0.5)
    app, _ = fx.make_app(tmp_path / "state", [shown], now=clock.now, config=cfg)
    app.runbook_driver.attach(session)

    async with app.run_test(size=(120, 40)) as pilot, traffic_through(proxy.frontend_url):
        await wait_for(pilot, lambda: app.sweeps_completed >= 1, "the first sweep")
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, RunbookScreen), "the runbook")
        screen = app.screen
        assert isinstance(screen, RunbookScreen)
        if during == "running command":
            await pilot.press("c")
            log = screen.details.log_widget
            await wait_for(pilot, lambda: log.line_count >= 3, "the command's output")
        else:
            assert "window" in screen.details.plain_text
        assert session.record(step_id).state is StepState.RUNNING

        # Everything but the load balancer and the fleet goes away.
        prometheus.stop()
        redis.stop()
        cluster.replica.stop()
        cluster.stop_primary()

        if during == "critical alert":
            firing = (alert(phase=AlertPhase.FIRING, at=clock.now - timedelta(seconds=3)),)
            app.runbook_driver.observe(
                rb_snapshot(clock.now, green_percentage=10.0, alerts=(*firing, *QUIET[1:]))
            )
        else:
            await pilot.press("f9")
        result = await rollback_ended(pilot, app)
        lines_at_the_end = screen.details.log_widget.line_count

        assert weights(proxy) == (256, 0)
        assert result.outcome is RollbackOutcome.VERIFIED, result.problems
        assert result.requests is not None and (result.requests.blue_requests or 0) > 0
        assert result.safety is not None and result.safety.safe
        # The stale dashboard was not trusted: blue was probed directly.
        assert "direct probe of blue" in result.safety.source, result.safety.source
        assert "stale" in result.safety.source
        # PostgreSQL is down: the incident record waits in the local spool.
        assert result.audit is not None and result.audit.spooled and not result.audit.stored
        assert isinstance(app.screen, RollbackScreen)
        assert "spooled locally" in rows(app)[STEP_AUDIT]
        if during == "critical alert":
            assert result.automatic and result.trigger == "automatic"
            assert result.reason.startswith("automatic: critical alert"), result.reason
            assert any(
                n.startswith("Automatic rollback to blue started") for n in notifications(app)
            )
            assert session.record(step_id).state is StepState.FAILED
        else:
            assert result.trigger == "hotkey" and not result.automatic
        if during != "running command":
            # Traffic is back on blue: the deployment in progress ended as rolled back.
            assert session.engine.state.outcome == "rolled_back"
        if during == "running command":
            # The rollback neither waited for the command nor stopped it; the deployment
            # stays open while the command runs, and the console says so.
            assert session.record(step_id).state is StepState.RUNNING
            assert session.engine.state.outcome == "in_progress"
            assert app.runbook_driver.pending_end is not None
            assert any(
                "stays open while it is running pre-validation-runner" in n
                for n in notifications(app)
            )
            await wait_for(
                pilot,
                lambda: screen.details.log_widget.line_count > lines_at_the_end,
                "more output after the rollback",
            )
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen, "the runbook screen")
            await pilot.press("k")
            await wait_for(
                pilot, lambda: session.record(step_id).state is StepState.FAILED, "the cancel"
            )
            # With the command gone, the deployment ends as rolled back by itself.
            await wait_for(
                pilot,
                lambda: session.engine.state.outcome == "rolled_back",
                "the deployment to end as rolled back",
            )
            assert app.runbook_driver.pending_end is None
    spooled = (tmp_path / "audit-spool.jsonl").read_text()
    assert result.incident_id in spooled


@pytest.mark.engines
async def test_after_blue_was_decommissioned_f9_asks_first(
    tmp_path: Path, fleet: Any, fresh_haproxy: Callable[..., HAProxy]
) -> None:
    """Issue 6, point 2: the runbook's Phase 3.1 shut blue down, so F9 names it and asks.

    Blue's services still answer (a graceful shutdown may leave health endpoints up): the
    runbook's own record is what says blue is decommissioned.
    """
    from backends.traffic import HAProxyRuntimeSwitch
    from console.runbook.engine import StepState

    proxy = fresh_haproxy()
    cfg = runbook_config(
        tmp_path,
        fleet,
        proxy,
        windows={"monitor-10": 2, "monitor-50": 2, "post-switch-monitoring": 2},
    )
    clock = Clock(fx.T0)
    session = make_session(cfg, clock, traffic=HAProxyRuntimeSwitch(str(proxy.admin_socket)))
    session.start()

    def snap(at: datetime) -> Snapshot:
        return rb_snapshot(at, green_percentage=green_of(proxy))

    await walk_to(session, clock, "switch-10", snap=snap)
    await walk_through(session, clock, "decommission-blue", snap)
    assert session.record("decommission-blue").state is StepState.ATTESTED
    assert weights(proxy) == (0, 256)
    clock.advance(1)
    app, _ = fx.make_app(tmp_path / "state", [snap(clock.now)], now=clock.now, config=cfg)
    app.runbook_driver.attach(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.sweeps_completed >= 1, "the first sweep")
        assert app.rollback.decommissioned()
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, RollbackConfirmScreen), "the question")
        confirm = app.screen
        assert isinstance(confirm, RollbackConfirmScreen)
        # The only reason: blue itself answers healthy to the direct probe.
        assert confirm.reasons_text.startswith("✖ blue is decommissioned"), confirm.reasons_text
        assert "direct probe of blue" in confirm.safety.source
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.rollback.phase is RollbackPhase.IDLE, "the cancel")
        assert app.rollback.results == []
        assert weights(proxy) == (0, 256), "a cancelled rollback moved traffic"


# --- SVG snapshots: fixed events through the App's message path -----------------------------

INCIDENT = "20250314_092600-5e1f0a"
REPORT = "/var/lib/acgs-console/incidents/incident-" + INCIDENT
SAFE = RollbackSafety(
    verdict=SafetyVerdict.SAFE,
    source="dashboard snapshot",
    checked_at=datetime(2025, 3, 14, 9, 26, 0, tzinfo=UTC),
)


def _step(
    name: str, start: float, end: float, detail: str, *, ok: bool = True, skipped: bool = False
) -> RollbackStep:
    return RollbackStep(
        name=name,
        title=STEP_TITLES[name],
        ok=ok and not skipped,
        skipped=skipped,
        started_ms=start,
        ended_ms=end,
        detail=detail,
    )


def _event(kind: RollbackEventKind, at: float, **fields: Any) -> RollbackEvent:
    return RollbackEvent(kind=kind, at_ms=at, incident_id=INCIDENT, **fields)


def _result(outcome: RollbackOutcome, steps: list[RollbackStep], **fields: Any) -> RollbackResult:
    total = max(s.ended_ms for s in steps)
    return RollbackResult(
        incident_id=INCIDENT,
        reason="emergency rollback from the console's rollback key",
        operator=fx.OPERATOR,
        trigger="hotkey",
        started_at=datetime(2025, 3, 14, 9, 26, 0, tzinfo=UTC),
        outcome=outcome,
        steps=tuple(steps),
        switch="haproxy /run/haproxy/admin.sock",
        switched=outcome is not RollbackOutcome.SWITCH_FAILED,
        success=outcome is RollbackOutcome.VERIFIED,
        total_ms=total,
        budget_s=30.0,
        within_budget=True,
        safety=SAFE,
        audit=AuditOutcome(stored=True, spooled=False, seq=42, hash="9f2c" * 16),
        report_paths=(REPORT + ".md", REPORT + ".json"),
        constitutional_hash=HASH,
        read_back=TrafficSplit(
            green_percentage=0.0 if outcome is not RollbackOutcome.SWITCH_FAILED else None,
            blue_weight=256,
            green_weight=0,
            source="haproxy",
            read_at=datetime(2025, 3, 14, 9, 26, 0, tzinfo=UTC),
        ),
        compliance=ComplianceResult(
            checks=(ComplianceCheck(name="hash:body", passed=True, detail="9/9"),)
        ),
        **fields,
    )


def _events_for(
    steps: list[RollbackStep],
    result: RollbackResult,
    between: dict[str, list[RollbackEvent]] | None = None,
) -> list[RollbackEvent]:
    events = [_event(RollbackEventKind.STARTED, 0.2, message="emergency rollback to blue")]
    for step in steps:
        events.append(
            _event(
                RollbackEventKind.STEP_STARTED, step.started_ms, step=step.name, title=step.title
            )
        )
        events += (between or {}).get(step.name, [])
        events.append(
            _event(
                RollbackEventKind.STEP_FINISHED,
                step.ended_ms,
                step=step.name,
                title=step.title,
                message=step.detail,
                finished_step=step,
            )
        )
    events.append(
        _event(RollbackEventKind.FINISHED, result.total_ms, message="done", result=result)
    )
    return events


def succeeded_events() -> list[RollbackEvent]:
    steps = [
        _step(STEP_SWITCH, 0.3, 3.1, "0 % green (weights blue=256 green=0), from haproxy"),
        _step(
            STEP_READ_BACK,
            3.1,
            4.6,
            "0 % green (weights blue=256 green=0), from haproxy /run/haproxy/admin.sock",
        ),
        _step(STEP_BLUE_HEALTHY, 4.7, 19.8, "9/9 orchestrators up"),
        _step(
            STEP_REQUESTS,
            4.7,
            1068.2,
            "blue +212, green +0 in 1063 ms (haproxy per-server sessions); green quiet for 1 s",
        ),
        _step(
            STEP_COMPLIANCE,
            19.8,
            20.4,
            "hash:body: 9/9 responses carry cdd01ef066bc6cf2; "
            "hash:header: 9/9 responses carry cdd01ef066bc6cf2",
        ),
        _step(STEP_AUDIT, 1068.3, 1074.9, "record #42 (9f2c9f2c9f2c9f2c...)"),
        _step(STEP_REPORT, 1075.0, 1075.4, f"{REPORT}.md and {REPORT}.json"),
    ]
    return _events_for(steps, _result(RollbackOutcome.VERIFIED, steps))


def switch_failed_events() -> list[RollbackEvent]:
    error = "cannot connect to the HAProxy runtime API at /run/haproxy/admin.sock: [Errno 2] No such file or directory"
    steps = [
        _step(STEP_SWITCH, 0.3, 602.9, f"failed 3 time(s); last error: {error}", ok=False),
        _step(STEP_READ_BACK, 603.0, 603.6, f"not read back: {error}", ok=False),
        *(
            _step(name, 603.7, 603.7, "skipped: traffic is not confirmed on blue", skipped=True)
            for name in (STEP_BLUE_HEALTHY, STEP_REQUESTS, STEP_COMPLIANCE)
        ),
        _step(STEP_AUDIT, 603.8, 611.2, "record #43 (0b7e0b7e0b7e0b7e...)"),
        _step(STEP_REPORT, 611.3, 611.7, f"{REPORT}.md and {REPORT}.json"),
    ]
    attempts = [
        _event(
            RollbackEventKind.ATTEMPT_FAILED,
            at,
            step=STEP_SWITCH,
            message=error,
            attempt=n,
            retry_in_s=retry,
        )
        for n, at, retry in ((1, 1.2, 0.2), (2, 202.4, 0.4), (3, 602.8, None))
    ]
    fallback = _event(
        RollbackEventKind.MANUAL_FALLBACK, 603.7, message=f"{FALLBACK} (the switch said: {error})"
    )
    result = _result(
        RollbackOutcome.SWITCH_FAILED,
        steps,
        attempts=tuple(
            SwitchAttempt(
                attempt=e.attempt or 0,
                ok=False,
                started_ms=e.at_ms - 1,
                ended_ms=e.at_ms,
                error=error,
            )
            for e in attempts
        ),
        manual_fallback=FALLBACK,
        problems=tuple(f"{s.title}: {s.detail}" for s in steps if not s.ok),
    )
    events = _events_for(steps, result, {STEP_SWITCH: attempts})
    # The fallback comes after the read-back fails, before the skipped steps.
    index = next(
        i
        for i, e in enumerate(events)
        if e.kind is RollbackEventKind.STEP_STARTED and e.step == STEP_BLUE_HEALTHY
    )
    events.insert(index, fallback)
    return events


SNAPSHOT_EVENTS: dict[str, Callable[[], list[RollbackEvent]]] = {
    "succeeded": succeeded_events,
    "switch_failed": switch_failed_events,
}


def _show_events(app: Any, events: list[RollbackEvent]) -> Any:
    async def run_before(pilot: Any) -> None:
        for _ in range(1000):
            if app.rendered_sequence == fx.WARMUP:
                break
            await pilot.pause(0.01)
        for event in events:
            app.post_message(RollbackProgress(event))
        for _ in range(1000):
            view = app.rollback.view
            if isinstance(app.screen, RollbackScreen) and view is not None and view.result:
                break
            await pilot.pause(0.01)
        assert isinstance(app.screen, RollbackScreen)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("state", list(SNAPSHOT_EVENTS))
def test_rollback_screen_snapshot(
    snap_compare: Any, tmp_path: Path, state: str, size: tuple[int, int]
) -> None:
    cfg = fx.make_config(rollback={"manual_fallback": FALLBACK})
    app, _ = fx.make_app(tmp_path, fx.series(fx.healthy), config=cfg)
    assert snap_compare(
        app, terminal_size=size, run_before=_show_events(app, SNAPSHOT_EVENTS[state]())
    )


# --- what the screen says, from the events alone ---------------------------------------------


def test_all_steps_ok_is_not_success_until_the_result_says_verified() -> None:
    view = RollbackView(INCIDENT, manual_fallback=FALLBACK)
    events = succeeded_events()
    for event in events[:-1]:
        view.apply(event)
    assert all(line.state is StepState.OK for line in view.steps.values())
    assert view.running and not view.succeeded
    assert view.headline()[1] == "ROLLING BACK TO BLUE"
    assert view.budget_text(None).startswith("elapsed ")

    unverified = events[-1].result.model_copy(  # type: ignore[union-attr]
        update={"outcome": RollbackOutcome.UNVERIFIED, "success": False}
    )
    view.apply(events[-1].model_copy(update={"result": unverified}))
    assert not view.running and not view.succeeded
    assert view.headline()[1] == "TRAFFIC ON BLUE (READ BACK), VERIFICATION FOUND PROBLEMS"
    assert view.budget_text(None).endswith("not verified")


def test_a_failed_attempt_is_said_at_once_then_the_fallback() -> None:
    view = RollbackView(INCIDENT, manual_fallback=FALLBACK)
    events = switch_failed_events()
    first_attempt = next(
        i for i, e in enumerate(events) if e.kind is RollbackEventKind.ATTEMPT_FAILED
    )
    for event in events[: first_attempt + 1]:
        view.apply(event)
    assert view.headline()[1] == "SWITCH ATTEMPT 1 FAILED: retrying in 0.2 s"
    assert view.fallback is None
    for event in events[first_attempt + 1 :]:
        view.apply(event)
        if event.kind is RollbackEventKind.MANUAL_FALLBACK:
            assert view.running
            assert view.headline()[1] == "SWITCH FAILED: TRAFFIC IS NOT CONFIRMED ON BLUE"
            assert view.fallback == FALLBACK
    assert view.headline()[1] == "SWITCH FAILED: TRAFFIC IS NOT CONFIRMED ON BLUE"
    assert [a.retry_in_s for a in view.attempts] == [0.2, 0.4, None]
    assert view.steps[STEP_BLUE_HEALTHY].state is StepState.SKIPPED


def test_a_switch_that_succeeds_on_a_retry_is_no_longer_failing() -> None:
    # What the hidden rollback screen warns about (RollbackDriver.hidden) and what its
    # headline says are the same judgement: a retry that worked ends the failing.
    view = RollbackView(INCIDENT, manual_fallback=FALLBACK)
    events = succeeded_events()
    retry = _event(
        RollbackEventKind.ATTEMPT_FAILED,
        1.0,
        step=STEP_SWITCH,
        message="connection refused",
        attempt=1,
        retry_in_s=0.2,
    )
    view.apply(events[0])
    view.apply(events[1])  # the switch step starts
    view.apply(retry)
    assert view.switch_failing
    assert view.headline()[1] == "SWITCH ATTEMPT 1 FAILED: retrying in 0.2 s"
    view.apply(events[2])  # ... and ends OK on the second attempt
    assert view.steps[STEP_SWITCH].state is StepState.OK
    assert view.attempts and not view.switch_failing
    assert view.headline()[1] == "ROLLING BACK TO BLUE"


def test_events_of_another_rollback_are_ignored_and_a_crash_is_no_success() -> None:
    view = RollbackView(INCIDENT, manual_fallback=FALLBACK)
    view.apply(_event(RollbackEventKind.STARTED, 0.1, message="go"))
    view.apply(_event(RollbackEventKind.STEP_STARTED, 0.2, step=STEP_SWITCH, title="switch"))
    other = succeeded_events()[-1].model_copy(update={"incident_id": "someone-else"})
    assert view.apply(other) is False
    assert view.running and view.steps[STEP_SWITCH].state is StepState.RUNNING
    view.crash("RuntimeError: boom", FALLBACK)
    assert not view.running and not view.succeeded
    assert view.headline()[1] == "ROLLBACK FAILED: TRAFFIC IS NOT CONFIRMED ON BLUE"
    assert view.fallback == FALLBACK
    assert view.steps[STEP_SWITCH].state is StepState.FAILED
