"""The dashboard App under Pilot: live updates, staleness, navigation, themes, keys, polling.

The snapshot source is a fake (the UI boundary); timestamps and the App's
clock are fixed (see ``ui_fixtures``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import ui_fixtures as fx
from pilot_support import notes_seen
from pilot_support import wait_until as wait_for

from backends.models import ORCHESTRATORS, Environment, Snapshot
from console.ui.app import ConsoleApp
from console.ui.screens.help import HelpScreen
from console.ui.ui_state import STATE_FILE
from themes.themes import THEME_NAMES


def notifications(app: ConsoleApp) -> list[str]:
    """Every notification shown so far, expired ones included."""
    return notes_seen(app)


class MutableClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def app_on(
    tmp_path: Path,
    snapshots: list[Snapshot],
    *,
    then: str = "hang",
    clock: Callable[[], datetime] | None = None,
    **kwargs: Any,
) -> tuple[ConsoleApp, fx.FakeSource]:
    source = fx.FakeSource(snapshots, then=then)
    app = ConsoleApp(
        kwargs.pop("config", None) or fx.make_config(),
        source,
        clock=clock or source.following_clock(),
        state_dir=tmp_path / "state",
        poll_interval_s=0.0,
        environ=kwargs.pop("environ", {}),
        **kwargs,
    )
    return app, source


# --- live updates -------------------------------------------------------------------------


async def test_waiting_state_before_the_first_sweep(tmp_path: Path) -> None:
    app, source = app_on(tmp_path, [fx.healthy()], then="hold")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: source.calls == 1, "the first sweep to start")
        dash = app.dashboard
        assert "waiting for the first sweep" in dash.query_one("#header").plain_text
        for env in Environment:
            assert dash.summary(env).plain_text.startswith(f"{env.value.upper():<5} ? unknown")
            assert dash.panel(env).table.cell_text("cache_optimizer", "state") == "? unknown"
        source.release()
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "the first snapshot")
        assert "swept 0 s ago" in dash.query_one("#header").plain_text
        assert dash.summary("blue").plain_text.startswith("BLUE  ✔ healthy · 9/9 up · hash ✔ ok")


async def test_live_updates_change_cells_in_place_by_row_key(tmp_path: Path) -> None:
    t = fx.T0
    sequence = [
        fx.healthy(t, 1),
        fx.green_degraded(t + timedelta(seconds=1), 2),
        fx.healthy(t + timedelta(seconds=2), 3, wobble=0.5),
    ]
    app, source = app_on(tmp_path, sequence, then="hold")
    async with app.run_test(size=(120, 40)) as pilot:
        source.release()
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        green = app.dashboard.panel("green")
        table = green.table
        tile = green.tile("p99_latency_ms")
        assert table.row_keys == list(ORCHESTRATORS)
        assert table.cell_text("cache_optimizer", "state") == "✔ up"
        assert table.cell_text("security_orchestrator", "hash") == "✔ ok"
        first_latency = table.cell_text("performance_suite", "latency")

        source.release()
        await wait_for(pilot, lambda: app.rendered_sequence == 2, "snapshot 2")
        assert app.dashboard.panel("green").table is table, "the table was recomposed"
        assert table.row_keys == list(ORCHESTRATORS)
        assert table.row_count == len(ORCHESTRATORS)
        assert table.cell_text("cache_optimizer", "state") == "✖ down"
        assert table.cell_text("security_orchestrator", "hash") == "✖ mismatch"
        assert table.cell_text("performance_suite", "latency") != first_latency
        assert tile.level.value == "critical"
        assert tile.value_text == "7.80 ms"
        assert list(tile.history) == [2.2, 7.8]

        source.release()
        await wait_for(pilot, lambda: app.rendered_sequence == 3, "snapshot 3")
        assert table.row_keys == list(ORCHESTRATORS)
        assert table.cell_text("cache_optimizer", "state") == "✔ up"
        assert tile.level.value == "ok"
        assert len(tile.history) == 3
        assert source.max_in_flight == 1


async def test_unknown_shows_unknown_never_the_last_good_number(tmp_path: Path) -> None:
    t = fx.T0
    app, source = app_on(
        tmp_path,
        [fx.healthy(t, 1), fx.prometheus_unreachable(t + timedelta(seconds=1), 2)],
        then="hold",
    )
    async with app.run_test(size=(120, 40)) as pilot:
        source.release()
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        tile = app.dashboard.panel("green").tile("p99_latency_ms")
        assert tile.value_text == "2.20 ms"
        source.release()
        await wait_for(pilot, lambda: app.rendered_sequence == 2, "snapshot 2")
        assert tile.value_text.startswith("unknown: prometheus")
        assert "2.20" not in tile.value_text
        assert tile.level.value == "unknown"
        assert list(tile.history) == [2.2], "an unknown value must not enter the sparkline"
        blue_tile = app.dashboard.panel("blue").tile("p99_latency_ms")
        assert blue_tile.level.value == "stale"
        assert "since 09:25:19" in blue_tile.value_text
        alerts = app.dashboard.query_one("#alerts").plain_text
        assert "6 rules without data" in alerts
        assert "P99 Latency (blue, green)" in alerts


async def test_a_hung_sweep_turns_the_screen_stale(tmp_path: Path) -> None:
    clock = MutableClock(fx.NOW)
    app, source = app_on(tmp_path, [fx.healthy()], clock=clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        await wait_for(pilot, lambda: source.calls == 2, "the second (hanging) sweep")
        dash = app.dashboard
        assert not dash.stale
        clock.at = fx.T0 + timedelta(seconds=12)
        app.render_dashboard()
        await pilot.pause()
        assert dash.stale
        header = dash.query_one("#header").plain_text
        assert "◌ last sweep 12 s ago, stale since 09:26:00 UTC" in header
        panel = dash.panel("blue")
        assert panel.has_class("-stale")
        assert panel.border_subtitle == "◌ stale since 09:26:00 UTC"
        assert "◌ stale" in dash.summary("green").plain_text
        # No tick mark survives on stale data (reads without colour).
        cell = panel.table.get_cell("performance_suite", "state")
        assert str(cell) == "◌ up"
        assert "◌ stale since 09:26:00 UTC" in dash.query_one("#traffic").plain_text


async def test_polls_never_overlap_and_refresh_is_dropped_while_one_runs(tmp_path: Path) -> None:
    app, source = app_on(tmp_path, [fx.healthy()], then="hold")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: source.calls == 1, "the first sweep")
        for _ in range(3):
            await pilot.press("r")
        await pilot.pause(0.05)
        assert source.calls == 1
        assert source.max_in_flight == 1


class FailingSource:
    def __init__(self) -> None:
        self.calls = 0

    async def sweep(self) -> Snapshot:
        self.calls += 1
        raise RuntimeError("boom")

    async def close(self) -> None:
        return None


async def test_a_failing_source_is_shown_and_backs_off(tmp_path: Path) -> None:
    source = FailingSource()
    app = ConsoleApp(
        fx.make_config(),
        source,
        clock=lambda: fx.NOW,
        state_dir=tmp_path,
        environ={},
        poll_interval_s=0.2,
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: source.calls >= 1 and app._error is not None, "a failure")
        await pilot.pause()
        header = app.dashboard.query_one("#header").plain_text
        assert "✖ sweep failed: RuntimeError: boom" in header
        await pilot.pause(0.3)
        # Backoff doubles from 0.2 s: after ~0.3 s at most two attempts were made.
        assert source.calls <= 2


async def test_source_closed_on_exit(tmp_path: Path) -> None:
    app, source = app_on(tmp_path, [fx.healthy()])
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
    assert source.closed


async def test_source_factory_runs_off_the_ui_thread(tmp_path: Path) -> None:
    threads: list[threading.Thread] = []

    def factory(config: object) -> fx.FakeSource:
        threads.append(threading.current_thread())
        return fx.FakeSource([fx.healthy()])

    app = ConsoleApp(
        fx.make_config(),
        source_factory=factory,
        clock=lambda: fx.NOW,
        state_dir=tmp_path,
        environ={},
        poll_interval_s=0.0,
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
    assert threads and threads[0] is not threading.main_thread()


async def test_deployment_shows_in_the_header(tmp_path: Path) -> None:
    app, _ = app_on(tmp_path, [fx.mid_switch()])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        header = app.dashboard.query_one("#header")
        assert "no deployment" in header.plain_text
        app.set_deployment("d-42", "4 traffic switch")
        assert "deploy d-42 phase 4 traffic switch" in header.plain_text
        assert "alice@ops-bastion (ssh 10.0.0.5)" in header.plain_text
        traffic = app.dashboard.query_one("#traffic").plain_text
        assert "blue 50.0%" in traffic and "50.0% green" in traffic


# --- layout -------------------------------------------------------------------------------


async def test_panels_side_by_side_when_wide_and_stacked_when_narrow(tmp_path: Path) -> None:
    app, _ = app_on(tmp_path, [fx.healthy()])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        blue, green = app.dashboard.panel("blue"), app.dashboard.panel("green")
        assert blue.region.y == green.region.y and blue.region.x < green.region.x
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert blue.region.x == green.region.x or green.region.height == 0
        assert app.dashboard.has_class("-narrow")
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert blue.region.y == green.region.y and blue.region.x < green.region.x


async def test_80x24_shows_header_verdicts_traffic_and_alerts_without_scrolling(
    tmp_path: Path,
) -> None:
    app, _ = app_on(tmp_path, [fx.green_degraded()])
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        await pilot.pause()
        dash = app.dashboard
        screen = dash.region
        for selector in ("#header", "#verdict-blue", "#verdict-green", "#traffic", "#alerts"):
            region = dash.query_one(selector).region
            assert region.height > 0, selector
            assert screen.contains_region(region), selector
        alerts = dash.query_one("#alerts")
        assert alerts.region.height >= 5, "the four alerts and the border must all fit"
        assert "P99 > 5 ms: 1m12s of 2m" in alerts.plain_text


# --- navigation, themes, keys -------------------------------------------------------------


async def test_help_lists_every_key_and_closes(tmp_path: Path) -> None:
    app, _ = app_on(tmp_path, [fx.healthy()])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        ids = {row.binding_id for row in app.screen.rows}
        for binding in [*ConsoleApp.BINDINGS, *type(app.dashboard).BINDINGS]:
            assert binding.id in ids, binding.id  # type: ignore[union-attr]
            assert binding.tooltip, binding.id  # type: ignore[union-attr]
        keys = {row.key for row in app.screen.rows}
        assert {"f9", "?", "t", "r", "q", "1", "2"} <= keys
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.dashboard


async def test_rendering_waits_while_a_modal_covers_the_dashboard(tmp_path: Path) -> None:
    t = fx.T0
    app, source = app_on(
        tmp_path, [fx.healthy(t, 1), fx.green_degraded(t + timedelta(seconds=1), 2)], then="hold"
    )
    async with app.run_test(size=(120, 40)) as pilot:
        source.release()
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        await pilot.press("question_mark")
        await pilot.pause()
        source.release()
        await wait_for(pilot, lambda: app.sweeps_completed == 2, "sweep 2 behind the modal")
        await pilot.pause()
        assert app.dashboard.snapshot is not None and app.dashboard.snapshot.sequence == 1
        assert app.rendered_sequence == 1
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.rendered_sequence == 2, "the pending frame")
        green = app.dashboard.panel("green").table
        assert green.cell_text("cache_optimizer", "state") == "✖ down"


def record_rollback_presses(app: ConsoleApp) -> list[float]:
    """Record what reaches the rollback driver (the rollback itself: test_ui_rollback.py)."""
    presses: list[float] = []

    def press(started: float, **_: object) -> bool:
        presses.append(started)
        return True

    app.rollback.press = press  # type: ignore[method-assign]
    return presses


async def test_rollback_key_works_on_every_screen(tmp_path: Path) -> None:
    app, _ = app_on(tmp_path, [fx.healthy()])
    presses = record_rollback_presses(app)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        await pilot.press("f9")
        await pilot.pause()
        assert len(presses) == 1
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("f9")
        await pilot.pause()
        assert len(presses) == 2


async def test_read_only_console_cannot_reach_rollback(tmp_path: Path) -> None:
    app, _ = app_on(tmp_path, [fx.healthy()], read_only=True)
    presses = record_rollback_presses(app)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        await pilot.press("f9")
        await pilot.pause()
        assert presses == []
        assert all("Rollback" not in c.title for c in app.console_commands())
        assert (
            "f9" not in app.screen.active_bindings or not app.screen.active_bindings["f9"].enabled
        )


async def test_keymap_from_config_remaps_by_binding_id(tmp_path: Path) -> None:
    config = fx.make_config(ui={"keymap": {"rollback": "f12", "no-such-binding": "x"}})
    app, _ = app_on(tmp_path, [fx.healthy()], config=config)
    presses = record_rollback_presses(app)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        await pilot.press("f9")
        await pilot.pause()
        assert presses == []
        await pilot.press("f12")
        await pilot.pause()
        assert len(presses) == 1
        assert any("no-such-binding" in n for n in notifications(app))


async def test_palette_offers_console_commands(tmp_path: Path) -> None:
    app, _ = app_on(tmp_path, [fx.healthy()])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"acgs-high")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.theme == "acgs-high-contrast", "the palette's theme")
        assert app.screen is app.dashboard
        titles = [c.title for c in app.console_commands()]
        assert titles[0] == "Rollback to blue"
        assert {"Sweep now", "Keys", "Jump to blue", "Jump to green"} <= set(titles)


async def test_theme_cycles_and_the_choice_persists(tmp_path: Path) -> None:
    app, _ = app_on(tmp_path, [fx.healthy()])
    assert app.theme == "acgs-dark"
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 1, "snapshot 1")
        await pilot.press("t")
        await pilot.pause()
        assert app.theme == THEME_NAMES[1] == "acgs-light"
    saved = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert saved == {"theme": "acgs-light", "config_theme": "acgs-dark"}

    again, _ = app_on(tmp_path, [fx.healthy()])
    assert again.theme == "acgs-light"
    # The config changing its theme is the newer decision.
    changed, _ = app_on(
        tmp_path, [fx.healthy()], config=fx.make_config(ui={"theme": "acgs-high-contrast"})
    )
    assert changed.theme == "acgs-high-contrast"
    # $TEXTUAL_THEME wins for this run.
    env, _ = app_on(tmp_path, [fx.healthy()], environ={"TEXTUAL_THEME": "acgs-high-contrast"})
    assert env.theme == "acgs-high-contrast"


async def test_bad_theme_falls_back_with_a_notification(tmp_path: Path) -> None:
    app, _ = app_on(tmp_path, [fx.healthy()], config=fx.make_config(ui={"theme": "neon"}))
    assert app.theme == "acgs-dark"
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert any("'neon'" in n and "acgs-light" in n for n in notifications(app))


@pytest.mark.parametrize("theme", THEME_NAMES)
async def test_every_theme_renders_every_state(tmp_path: Path, theme: str) -> None:
    states = [fx.healthy(), fx.green_degraded(), fx.prometheus_unreachable(), fx.mid_switch()]
    app, _ = app_on(
        tmp_path,
        fx.series(fx.healthy, 3)
        + [
            s.model_copy(update={"sequence": 10 + i, "taken_at": fx.T0 + timedelta(seconds=i + 1)})
            for i, s in enumerate(states)
        ],
        config=fx.make_config(ui={"theme": theme}),
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.rendered_sequence == 13, "every state")
        assert app.theme == theme
        assert not notifications(app)
