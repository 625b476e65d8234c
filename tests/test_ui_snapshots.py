"""SVG snapshots of the dashboard in the four states the issue names, at 80x24 and 120x40.

Each app plays a warm-up series of 40 snapshots (so the sparklines draw),
then its source hangs; the App's clock stays 0.8 s after the last snapshot,
so every screenshot is deterministic. Update with ``--snapshot-update`` and
look at the SVGs before accepting them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ui_fixtures as fx

SIZES = [(80, 24), (120, 40)]


def _run_before(app: Any) -> Any:
    async def run_before(pilot: Any) -> None:
        for _ in range(1000):
            if app.rendered_sequence == fx.WARMUP:
                break
            await pilot.pause(0.01)
        assert app.rendered_sequence == fx.WARMUP, "the warm-up series did not finish"
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("state", list(fx.STATES))
def test_dashboard_snapshot(
    snap_compare: Any, tmp_path: Path, state: str, size: tuple[int, int]
) -> None:
    deployment = ("d-20250314-1", "4 traffic switch") if state == "mid_switch" else None
    app, _ = fx.make_app(tmp_path, fx.series(fx.STATES[state]), deployment=deployment)
    assert snap_compare(app, terminal_size=size, run_before=_run_before(app))
