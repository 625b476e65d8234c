"""The engine's traffic steps against a real HAProxy: the weights it leaves are the runbook's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runbook_fixtures import Clock, Sink, make_config, snapshot

from backends.traffic import HAProxyRuntimeSwitch, parse_servers_state
from console.engines import HAProxy, free_port
from console.runbook.engine import RunbookEngine, StepState
from console.runbook.loader import parse_runbook

pytestmark = pytest.mark.engines

RUNBOOK = """
title = "Traffic only"
version = "0.1"
constitutional_hash = "cdd01ef066bc6cf2"

[[procedures]]
id = "deployment"
title = "Phase 2 only"
source = "### Phase 2: Traffic Switching (5 minutes)"

[[procedures.phases]]
id = "phase-2"
title = "Phase 2"
source = "### Phase 2: Traffic Switching (5 minutes)"
budget_s = 300
"""
STEPS = [
    ("switch-10", "traffic", "green_percentage = 10"),
    ("monitor-10", "monitor", "duration_s = 120"),
    ("switch-50", "traffic", "green_percentage = 50"),
    ("monitor-50", "monitor", "duration_s = 120"),
    ("switch-100", "traffic", 'green_percentage = 100\nconfirm_typed = "green"'),
]


@pytest.fixture
def proxy(tmp_path: Path, start_engine: Callable[[Callable[[], Any]], Any]) -> Iterator[HAProxy]:
    # Nothing needs to answer behind it: only the weights are under test.
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


def weights(proxy: HAProxy) -> tuple[int, int]:
    rows = parse_servers_state(
        proxy.admin_command(f"show servers state {proxy.backend}"), proxy.backend
    )
    return int(rows["blue"]["srv_uweight"]), int(rows["green"]["srv_uweight"])


async def test_phase_two_moves_the_real_load_balancer(proxy: HAProxy) -> None:
    text = RUNBOOK + "".join(
        f'[[procedures.phases.steps]]\nid = "{sid}"\nkind = "{kind}"\ntitle = "{sid}"\n'
        f'section = "Step 2.1: Gradual Traffic Migration"\nsource = "# {sid}"\n{extra}\n'
        for sid, kind, extra in STEPS
    )
    clock, sink = Clock(), Sink()
    switch = HAProxyRuntimeSwitch(str(proxy.admin_socket), backend=proxy.backend)
    engine = RunbookEngine.start(
        parse_runbook(text), make_config(), "alice", sink=sink, clock=clock, traffic=switch
    )
    assert weights(proxy) == (256, 0)
    seen: list[tuple[str, tuple[int, int]]] = []
    while not engine.finished:
        split = await switch.read_split()
        clock.advance(1)
        engine.observe(snapshot(clock.now, green_percentage=split.green_percentage))
        gate = engine.gate()
        assert gate is not None
        if gate.kind.value == "monitor":
            if gate.state is StepState.PENDING:
                engine.start_monitor("alice")
            assert engine.record(gate.step_id).state is not StepState.FAILED
            continue
        assert gate.open, gate
        record = await engine.shift_traffic("alice", typed=gate.confirm_typed, approved_by="bob")
        assert record.state is StepState.PASSED, record.reason
        seen.append((gate.step_id, weights(proxy)))
        assert record.evidence["read_back"]["green_weight"] == seen[-1][1][1]
    assert seen == [("switch-10", (230, 26)), ("switch-50", (128, 128)), ("switch-100", (0, 256))]
    assert sink.actions()[-1] == "deployment.completed"
