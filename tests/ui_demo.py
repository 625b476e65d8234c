"""Run the dashboard on a fake, changing source, to look at it in a terminal (tmux).

Not a test: a tool for eyeballing the layout at 120x40 and 80x24::

    tmux new -d -s ui -x 120 -y 40 '.venv/bin/python tests/ui_demo.py cycle'
    tmux capture-pane -p -t ui

Modes: one of the fixture states (``healthy``, ``green_degraded``,
``prometheus_unreachable``, ``mid_switch``), ``cycle`` (each state for 8 s),
or ``hang`` (healthy for 5 sweeps, then the source hangs: the screen turns stale).
Append ``:still`` for data that does not change between sweeps (the idle case).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ui_fixtures as fx

from backends.models import Snapshot, utcnow


class DemoSource:
    """Fresh snapshots of the fixture states, stamped with the real time."""

    def __init__(self, mode: str) -> None:
        self.still = mode.endswith(":still")
        self.mode = mode.removesuffix(":still")
        self.counter = itertools.count(1)

    async def sweep(self) -> Snapshot:
        seq = next(self.counter)
        if self.mode == "hang" and seq > 5:
            await asyncio.Event().wait()
        if self.mode == "cycle":
            names = list(fx.STATES)
            state = fx.STATES[names[(seq // 8) % len(names)]]
        elif self.mode == "hang":
            state = fx.healthy
        else:
            state = fx.STATES[self.mode]
        wobble = 0.0 if self.still else 0.6 * math.sin(seq / 3.0)
        return state(utcnow(), seq, wobble=wobble)

    async def close(self) -> None:
        return None


def main() -> int:
    from console.ui.app import ConsoleApp

    mode = sys.argv[1] if len(sys.argv) > 1 else "cycle"
    app = ConsoleApp(
        fx.make_config(),
        DemoSource(mode),
        state_dir=Path(tempfile.mkdtemp(prefix="acgs-ui-demo-")),
    )
    if mode.startswith("mid_switch"):
        app.set_deployment("d-20250314-1", "4 traffic switch")
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
