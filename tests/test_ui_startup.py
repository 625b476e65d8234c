"""Cold start: the first sweep starts before the UI, and its result is in the first frame.

The CLI builds the monitor on the sweep thread while it imports the UI
(:func:`console.sweeps.start_first_sweep` with ``hold``), lets the sweep run once
the imports are done (``go``), waits briefly for it, and hands loop, source and
result to the App, which draws them when the dashboard mounts. What the first data
frame does not need (the rollback thread, the runbook start-up) runs after it.
The real path, end to end, is driven in a terminal by
``tests/test_sandbox_cli.py::test_readme_first_command_shows_the_console_on_the_sandbox``
and measured by ``bench/bench_dashboard.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import ui_fixtures as fx
from pilot_support import wait_until
from rich.console import RenderableType
from textual.screen import Screen

from console.sweeps import GO_WAIT_S, FirstSweep, start_first_sweep
from console.ui.app import STARTUP_GRACE_S, ConsoleApp


def _stop(first: FirstSweep) -> None:
    first.future.cancel()
    first.loop.stop()


def test_a_held_first_sweep_builds_the_source_but_sweeps_only_after_go() -> None:
    built = threading.Event()
    threads: list[threading.Thread] = []
    source = fx.FakeSource([fx.healthy(sequence=7)])

    def factory(config: object) -> fx.FakeSource:
        threads.append(threading.current_thread())
        built.set()
        return source

    first = start_first_sweep(fx.make_config(), factory, hold=True)
    try:
        assert built.wait(5), "the source was not built while the caller worked"
        assert threads[0] is not threading.current_thread()
        assert not first.wait(0.3), "the first sweep ran before go()"
        assert source.calls == 0
        first.go()
        assert first.wait(5)
        result = first.future.result()
        assert result.source is source and first.built == [source]
        assert result.snapshot is not None and result.snapshot.sequence == 7
        assert result.error is None and source.calls == 1
    finally:
        _stop(first)


def test_a_held_first_sweep_runs_anyway_when_go_never_comes() -> None:
    source = fx.FakeSource([fx.healthy()])
    first = start_first_sweep(fx.make_config(), lambda _c: source, hold=True)
    try:
        assert first.wait(GO_WAIT_S + 5)
        assert first.future.result().snapshot is not None
    finally:
        _stop(first)


def test_a_failing_factory_and_a_hung_sweep_are_named_not_raised() -> None:
    def broken(config: object) -> fx.FakeSource:
        raise RuntimeError("no such estate")

    first = start_first_sweep(fx.make_config(), broken)
    try:
        assert first.wait(5)
        result = first.future.result()
        assert result.source is None and result.snapshot is None
        assert result.error == "cannot start the monitor: RuntimeError: no such estate"
    finally:
        _stop(first)

    hung = fx.FakeSource([], then="hang")
    first = start_first_sweep(fx.make_config(), lambda _c: hung, timeout_s=0.2)
    try:
        assert first.wait(5)
        result = first.future.result()
        # The source is kept (the next sweeps may answer); the sweep is a named failure.
        assert result.source is hung and result.snapshot is None
        assert result.error == "no answer within 0.2 s"
    finally:
        _stop(first)


class _FramesApp(ConsoleApp):
    """Records, for each frame of the dashboard, which snapshot had been drawn into it."""

    frames: list[int | None]

    def _display(self, screen: Screen[object], renderable: RenderableType | None) -> None:
        if renderable is not None and screen is self._dashboard_or_none():
            self.frames.append(self.rendered_sequence)
        super()._display(screen, renderable)


def _app(tmp_path: Path, first: FirstSweep, source: fx.FakeSource) -> _FramesApp:
    app = _FramesApp(
        fx.make_config(),
        source_factory=lambda _c: source,
        first_sweep=first,
        clock=source.following_clock() if source.snapshots else lambda: fx.NOW,
        state_dir=tmp_path,
        environ={},
        poll_interval_s=30.0,
    )
    app.frames = []
    return app


async def test_a_first_sweep_done_before_the_app_is_drawn_into_its_first_frame(
    tmp_path: Path,
) -> None:
    source = fx.FakeSource([fx.healthy(sequence=1), fx.healthy(sequence=2)], then="repeat")
    first = start_first_sweep(fx.make_config(), lambda _c: source)
    assert first.wait(5)
    app = _app(tmp_path, first, source)
    async with app.run_test(size=(120, 40)) as pilot:
        # Drawn while the dashboard mounted, into its very first frame: no sweep round
        # trip, no second sweep.
        await wait_until(pilot, lambda: bool(app.frames), "the first frame")
        assert app.frames[0] == 1
        assert app.rendered_sequence == 1 and app.sweeps_completed == 1
        assert source.calls == 1
        verdict = app.dashboard.summary("green").plain_text
        assert "9/9 up" in verdict
        # The rest of the start-up followed the data frame: the rollback thread runs.
        await wait_until(pilot, lambda: app.rollback._loop is not None, "rollback thread")
        app.action_refresh()
        await wait_until(pilot, lambda: app.rendered_sequence == 2, "the next sweep")
    assert source.closed
    assert not first.loop.running


async def test_the_rest_of_the_start_up_waits_for_data_but_not_forever(tmp_path: Path) -> None:
    source = fx.FakeSource([], then="hang")
    first = start_first_sweep(fx.make_config(), lambda _c: source)
    app = _app(tmp_path, first, source)
    async with app.run_test(size=(80, 24)) as pilot:
        started = time.monotonic()
        await pilot.pause(0.2)
        assert app.rendered_sequence is None
        assert app.rollback._loop is None, "deferred start-up ran before any data"
        await wait_until(pilot, lambda: app.rollback._loop is not None, "the grace")
        assert time.monotonic() - started >= STARTUP_GRACE_S - 0.3
    # Quit while the first sweep still hangs: it is cancelled and its source closed.
    assert source.closed
    assert first.future.cancelled()
    assert not first.loop.running
