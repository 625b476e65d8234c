"""Repainting only what changed: the cell diff, the readable cadence, and the terminal it leaves.

The decisive test drives the real App through changing snapshots with a
driver that feeds everything Textual writes into a ``pyte`` terminal, and
checks after each step that the terminal shows exactly what a full repaint
of the screen would: partial repaints must never leave stale cells behind.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import ui_fixtures as fx
from pilot_support import on_pyte, repainted_from_scratch, terminal
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from backends.models import (
    AlertPhase,
    AlertSeverity,
    AlertState,
    Environment,
    ServiceState,
    Snapshot,
)
from widgets.alerts import MAX_LINES, MIN_LINES, SHRINK_AFTER_S, AlertsPanel
from widgets.repaint import SETTLE_FACTOR, SETTLE_S, QuietStatic, changed_span, wobbles
from widgets.series import BARS, spark_bars

RED, GREEN = Style(color="red"), Style(color="green")


# --- the cell diff ---------------------------------------------------------------------------


def strip(*parts: tuple[str, Style | None]) -> Strip:
    return Strip([Segment(text, style) for text, style in parts])


def test_identical_lines_have_no_changed_span() -> None:
    assert changed_span(strip(("P99 2.98 ms", RED)), strip(("P99 ", RED), ("2.98 ms", RED))) is None


def test_the_changed_span_covers_only_the_changed_cells() -> None:
    before = strip(("swept ", None), ("1", GREEN), (" s ago", None))
    after = strip(("swept ", None), ("2", GREEN), (" s ago", None))
    assert changed_span(before, after) == (6, 7)
    # A style change is a change, even with the same text.
    assert changed_span(before, strip(("swept ", None), ("1", RED), (" s ago", None))) == (6, 7)


def test_a_shorter_line_clears_the_cells_it_no_longer_covers() -> None:
    assert changed_span(strip(("1m12s of 2m", None)), strip(("9s of 2m", None))) == (0, 11)
    assert changed_span(strip(("ab", None)), strip(("abcd", None))) == (2, 4)


def test_a_change_never_starts_on_the_right_half_of_a_wide_character() -> None:
    assert changed_span(strip(("日x", None)), strip(("日y", None))) == (2, 3)
    assert changed_span(strip(("日x", None)), strip(("本x", None))) == (0, 2)


# --- the readable cadence --------------------------------------------------------------------


def test_a_wobbling_number_settles_for_a_while_but_a_move_shows_at_once() -> None:
    assert wobbles(30.0, 33.0, 1.0)
    assert wobbles(30.0, 30.0 * SETTLE_FACTOR, 0.0)
    assert wobbles(30.0, 30.0 / SETTLE_FACTOR, 0.0)
    assert not wobbles(30.0, 30.0 * SETTLE_FACTOR + 0.01, 0.0)
    assert not wobbles(30.0, 300.0, 1.0), "a tenfold latency must show at once"
    assert not wobbles(30.0, 33.0, SETTLE_S), "what is shown is refreshed every few seconds"
    assert not wobbles(30.0, 33.0, -1.0), "a clock going backwards is no reason to hold"
    assert not wobbles(0.0, 0.1, 1.0)


def healthy_with_latency(at: datetime, sequence: int, latency_ms: float) -> Snapshot:
    snapshot = fx.healthy(at, sequence)
    services = tuple(
        s.model_copy(update={"latency_ms": latency_ms}) if s.service == "test_orchestrator" else s
        for s in snapshot.green.services
    )
    return snapshot.model_copy(
        update={"green": snapshot.green.model_copy(update={"services": services})}
    )


async def test_the_latency_column_settles_wobble_and_shows_moves(tmp_path: Path) -> None:
    t = fx.T0
    latencies = [20.0, 22.0, 21.0, 23.0, 22.0, 21.0, 35.0, 60.0, None]
    snapshots = [
        healthy_with_latency(t + timedelta(seconds=i), i + 1, v or 20.0)
        for i, v in enumerate(latencies)
    ]
    down = snapshots[-1]
    services = tuple(
        s.model_copy(
            update={"state": ServiceState.DOWN, "latency_ms": None, "reason": "connection refused"}
        )
        if s.service == "test_orchestrator"
        else s
        for s in down.green.services
    )
    snapshots[-1] = down.model_copy(
        update={"green": down.green.model_copy(update={"services": services})}
    )
    app, source = fx.make_app(tmp_path, snapshots, then="hold")
    shown: list[str] = []
    async with app.run_test(size=(120, 40)) as pilot:
        for i in range(len(snapshots)):
            source.release()
            for _ in range(400):
                if app.rendered_sequence == i + 1:
                    break
                await pilot.pause(0.01)
            table = app.dashboard.panel("green").table
            shown.append(table.cell_text("test_orchestrator", "latency"))
            # What the latency column widget shows is that text, on that orchestrator's line.
            column = table.query_one(".orchestrators--latency", QuietStatic)
            row = table.row_keys.index("test_orchestrator")
            assert column.render().plain.split("\n")[row] == shown[-1]
        state = app.dashboard.panel("green").table.cell_text("test_orchestrator", "state")
    # 22 and 21 ms only wobble around 20 ms; five seconds on, the newest is shown; 35 ms
    # is within a factor of two of it; 60 ms is a move and shows at once; an orchestrator
    # going down shows at once.
    assert shown[:5] == ["20 ms"] * 5
    assert shown[5] == "21 ms"
    assert shown[6] == "21 ms"
    assert shown[7] == "60 ms"
    assert shown[8] == "—"
    assert state == "✖ down"


# --- sparklines ------------------------------------------------------------------------------


def test_spark_bars_scale_between_the_lowest_and_the_highest_value() -> None:
    assert spark_bars([], 5) == BARS[0] * 5
    assert spark_bars([3.0], 4) == BARS[-1] * 4
    assert spark_bars([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 8) == BARS
    assert spark_bars([5.0, 5.0, 5.0], 3) == BARS[0] * 3
    # More values than columns: each column shows its values' summary (the worst).
    assert spark_bars([0.0, 10.0, 0.0, 0.0], 2, max) == BARS[-1] + BARS[0]
    assert spark_bars([0.0, 10.0, 10.0, 10.0], 2, min) == BARS[0] + BARS[-1]
    assert len(spark_bars([float(i) for i in range(30)], 26)) == 26
    assert spark_bars([1.0, 2.0], 0) == ""


# --- the alerts panel keeps its height -------------------------------------------------------


def pending(name: str, at: datetime) -> AlertState:
    return AlertState(
        rule_id=name,
        name=name,
        summary=f"{name} > 5",
        severity=AlertSeverity.WARNING,
        environment=Environment.GREEN,
        phase=AlertPhase.PENDING,
        active_since=at,
        for_seconds=120,
    )


def test_alert_rows_keep_room_and_shrink_only_after_a_while() -> None:
    panel = AlertsPanel()
    assert not panel.is_mounted
    now = fx.T0
    panel._reserve(2, now)
    assert panel._reserved == MIN_LINES
    panel._reserve(6, now)
    assert panel._reserved == 6, "more alerts: room at once"
    panel._reserve(1, now + timedelta(seconds=SHRINK_AFTER_S - 1))
    assert panel._reserved == 6, "fewer alerts: the room is kept for a while"
    panel._reserve(1, now + timedelta(seconds=SHRINK_AFTER_S + 1))
    assert panel._reserved == MIN_LINES
    panel._reserve(40, now + timedelta(seconds=SHRINK_AFTER_S + 2))
    assert panel._reserved == MAX_LINES, "beyond its maximum the panel scrolls"


async def test_on_a_tall_terminal_alerts_coming_and_going_do_not_move_the_layout(
    tmp_path: Path,
) -> None:
    t = fx.T0
    snapshots = []
    for i in range(6):
        snapshot = fx.healthy(t + timedelta(seconds=i), i + 1)
        alerts = tuple(pending(f"rule{k}", t) for k in range(i % 3 * 2))
        snapshots.append(snapshot.model_copy(update={"alerts": alerts}))
    app, source = fx.make_app(tmp_path, snapshots, then="hold")
    async with app.run_test(size=(120, 40)) as pilot:
        regions = set()
        for i in range(len(snapshots)):
            source.release()
            for _ in range(400):
                if app.rendered_sequence == i + 1:
                    break
                await pilot.pause(0.01)
            await pilot.pause()
            regions.add(app.dashboard.query_one("#body").region)
        assert len(regions) == 1


# --- the terminal after partial repaints ----------------------------------------------------


def wobbled(state: Any, i: int) -> Snapshot:
    snapshot: Snapshot = state(fx.T0 + timedelta(seconds=i), i + 1, wobble=math.sin(i))
    services = tuple(
        s.model_copy(update={"latency_ms": (s.latency_ms or 0) * (1 + i % 4)})
        for s in snapshot.blue.services
    )
    return snapshot.model_copy(
        update={"blue": snapshot.blue.model_copy(update={"services": services})}
    )


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_terminal_matches_a_full_repaint_after_every_update(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    states = [fx.healthy, fx.green_degraded, fx.prometheus_unreachable, fx.mid_switch, fx.healthy]
    snapshots = [wobbled(states[i // 3 % len(states)], i) for i in range(15)]
    clock = {"now": snapshots[0].taken_at}
    app, source = fx.make_app(tmp_path, snapshots, then="hold")
    app.clock = lambda: clock["now"]
    on_pyte(app, *size)
    async with app.run_test(size=size, headless=False) as pilot:
        for i, snapshot in enumerate(snapshots):
            clock["now"] = snapshot.taken_at + timedelta(milliseconds=800)
            source.release()
            for _ in range(400):
                if app.rendered_sequence == i + 1:
                    break
                await pilot.pause(0.01)
            await pilot.pause(0.05)
            shown = terminal()
            assert shown == await repainted_from_scratch(app, pilot), f"after snapshot {i + 1}"
        # Stale, then a theme change: whole-widget restyles must land too.
        clock["now"] = snapshots[-1].taken_at + timedelta(seconds=30)
        app.render_dashboard()
        await pilot.pause(0.05)
        shown = terminal()
        assert "stale since" in "\n".join(shown)
        assert shown == await repainted_from_scratch(app, pilot)
        app.action_cycle_theme()
        await pilot.pause(0.05)
        shown = terminal()
        assert shown == await repainted_from_scratch(app, pilot)


def test_a_wobbling_redis_round_trip_keeps_its_number_but_a_state_change_shows() -> None:
    from backends.models import ProbeState, RedisStatus
    from widgets.environment import EnvironmentPanel

    panel = EnvironmentPanel(Environment.BLUE, [])
    t = fx.T0

    def ping(ms: float | None, state: ProbeState = ProbeState.OK) -> RedisStatus:
        return RedisStatus(state=state, ping_ms=ms, role="master", checked_at=t)

    assert panel._settled_redis(ping(0.40), t).ping_ms == 0.40
    assert panel._settled_redis(ping(0.44), t + timedelta(seconds=1)).ping_ms == 0.40
    assert panel._settled_redis(ping(4.0), t + timedelta(seconds=2)).ping_ms == 4.0
    later = t + timedelta(seconds=2 + SETTLE_S)
    assert panel._settled_redis(ping(4.1), later).ping_ms == 4.1
    down = panel._settled_redis(ping(None, ProbeState.REFUSED), later)
    assert down.state is ProbeState.REFUSED and down.ping_ms is None
