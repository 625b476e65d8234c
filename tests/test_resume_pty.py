"""SIGKILL the whole console mid-phase, start it again: it offers to resume exactly there.

The real console (``python -m console --config CFG``) runs in a 120x40 pseudo-terminal
(``TERM=xterm-256color``), its output fed to a ``pyte`` screen, against the real engines: the
sandbox fleet behind a real HAProxy (the traffic switch), Redis and PostgreSQL for the
probes, a SQLite audit trail. It is driven by keystrokes, like an operator at a terminal:
``d`` opens the runbook, ``n`` starts a deployment, ``c`` goes ahead at each gate (with a
note for the attestation), through the 10 % traffic step and into its monitor window. Then the
process is killed with SIGKILL, a new console starts in a new pseudo-terminal, and the screen
must offer to resume the same deployment at the same step; resuming reads the split back from
HAProxy, and the percentage on the screen is the one HAProxy's own weights give.

The runbook is a short one of this test's own (an attestation, 10 %, the window, 50 %), so
the keys reach the middle of Phase 2 in seconds rather than through the whole checklist.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from pty_support import SCREEN_WAIT_S, Terminal, terminal_env
from walk_fixtures import fleet_traffic, walk_config, weights

from console.audit import open_trail
from console.deployment import scan_deployments

pytestmark = pytest.mark.engines


RUNBOOK = """
title = "Resume rehearsal"
version = "0.1"
constitutional_hash = "cdd01ef066bc6cf2"

[[procedures]]
id = "deployment"
title = "Resume rehearsal"
source = "## Resume rehearsal"

[[procedures.phases]]
id = "phase-1"
title = "Phase 1: Green Environment Preparation"
source = "### Phase 1: Green Environment Preparation (30 minutes)"
budget_s = 1800

[[procedures.phases.steps]]
id = "green-smoke-attested"
kind = "attestation"
title = "Green smoke-tested"
section = "Step 1.3: Smoke Testing"
source = "### Step 1.3: Smoke Testing"
prompt = "Confirm green passed its smoke tests."

[[procedures.phases]]
id = "phase-2"
title = "Phase 2: Traffic Switching"
source = "### Phase 2: Traffic Switching (5 minutes)"
budget_s = 300

[[procedures.phases.steps]]
id = "switch-10"
kind = "traffic"
title = "10% of traffic to green"
section = "Step 2.1: Gradual Traffic Migration"
source = "# Start with 10% traffic to green"
green_percentage = 10

[[procedures.phases.steps]]
id = "monitor-10"
kind = "monitor"
title = "Monitor at 10% for 2 minutes"
section = "Step 2.1: Gradual Traffic Migration"
source = "# Monitor for 2 minutes"
duration_s = 120

[[procedures.phases.steps]]
id = "switch-50"
kind = "traffic"
title = "50% of traffic to green"
section = "Step 2.1: Gradual Traffic Migration"
source = "# Increase to 50% if healthy"
green_percentage = 50
"""


@contextlib.contextmanager
def console(config_file: Path, state_home: Path) -> Iterator[Terminal]:
    env = terminal_env(state_home)
    term = Terminal([sys.executable, "-m", "console", "--config", str(config_file)], env)
    try:
        yield term
    finally:
        term.close()


DEPLOYMENT_ID = re.compile(r"\bdeploy(?:ment)? (\d{8}_\d{6})\b")


def toasts(text: str) -> str:
    """The notifications' text (right of their ``▌`` edge), lines joined, spaces collapsed."""
    parts = [line[line.index("▌") + 1 :] for line in text.splitlines() if "▌" in line]
    return " ".join(" ".join(parts).split())


def shown_split(blue_weight: int, green_weight: int) -> str:
    """How the console shows a split of these HAProxy weights (``10.1562% green``)."""
    return f"{100.0 * green_weight / (blue_weight + green_weight):g}% green"


def wait_for_weights(term: Terminal, haproxy: Any, want: tuple[int, int]) -> None:
    """Keep the terminal read while HAProxy's own weights are not yet ``want``."""
    deadline = time.monotonic() + SCREEN_WAIT_S
    while weights(haproxy) != want:
        assert time.monotonic() < deadline, f"HAProxy weights {weights(haproxy)}, want {want}"
        term.pump(0.2)


def test_sigkill_the_tui_mid_phase_and_resume_exactly_there(
    tmp_path: Path,
    fleet: Any,
    fresh_haproxy: Callable[..., Any],
    redis_server: Any,
    pg_cluster: Any,
) -> None:
    haproxy = fresh_haproxy()
    runbook = tmp_path / "runbook.toml"
    runbook.write_text(RUNBOOK)
    config = walk_config(
        tmp_path,
        fleet,
        haproxy,
        redis_url=redis_server.url,
        pg=pg_cluster,
        windows={"monitor-10": 600.0},  # still running when the console is killed
        runbook=runbook,
    )
    config_file = tmp_path / "acgs-console.toml"
    config_file.write_text(tomlkit.dumps(config.model_dump(mode="json", exclude_none=True)))
    state_home = tmp_path / "xdg-state"
    assert weights(haproxy) == (256, 0)

    with fleet_traffic(fleet, haproxy):
        # --- the first console: keys up to the 10 % window, then SIGKILL ------------------
        with console(config_file, state_home) as first:
            first.wait_for("the dashboard", lambda t: "BLUE" in t and "GREEN" in t and " up" in t)
            first.press("d")
            # The runbook's keys drive once the lease is known (it is taken after the first
            # data frame): until then the console is read-only and n does nothing.
            first.wait_for(
                "the runbook screen, driving",
                lambda t: "Press n to start one" in t and "▶ driving" in t,
            )
            first.press("n")
            deployment_id = first.wait_for(
                "the deployment to start", lambda t: (m := DEPLOYMENT_ID.search(t)) and m[1]
            )
            first.wait_for("the attestation's gate", lambda t: "gate open" in t)
            first.press("c")
            first.wait_for("the note dialog", lambda t: "Attest: Green smoke-tested" in t)
            first.press("smoke tests seen green")
            first.press("\r")
            first.wait_for("Phase 2", lambda t: "» 10% of traffic to green" in t)
            first.wait_for("switch-10's gate", lambda t: "gate open" in t)
            first.press("c")
            wait_for_weights(first, haproxy, (230, 26))
            first.wait_for("switch-10 passed", lambda t: "✔ passed      10% of traffic" in t)
            first.wait_for(
                "the window's gate", lambda t: "» Monitor at 10%" in t and "gate open" in t
            )
            first.press("c")
            first.wait_for(
                "the window to run", lambda t: re.search(r"running\s+» Monitor at 10%", t)
            )
            killed_at = first.text()
            status = first.kill()
        assert status == -signal.SIGKILL, killed_at
        assert weights(haproxy) == (230, 26), "the kill moved no traffic"

        # --- a new console in a new terminal: it offers to resume exactly there -----------
        with console(config_file, state_home) as second:
            offer = second.wait_for(
                "the resume prompt", lambda t: "Unfinished deployment found" in t and t
            )
            assert f"Deployment {deployment_id} (Resume rehearsal" in offer, offer
            assert "stands at phase phase-2, step monitor-10" in offer, offer
            second.press("\r")  # Resume is the default answer
            blue_w, green_w = weights(haproxy)
            assert (blue_w, green_w) == (230, 26)
            expected = shown_split(blue_w, green_w)
            assert expected == "10.1562% green"
            note = second.wait_for(
                "the read-back", lambda t: "reads back" in toasts(t) and toasts(t)
            )
            assert (
                f"resumed {deployment_id} at step monitor-10; "
                f"the load balancer reads back {expected}"
            ) in note, note
            screen = second.wait_for(
                "the runbook screen", lambda t: f"deploy {deployment_id} · Phase 2" in t and t
            )
            assert f"/ {expected}" in screen.splitlines()[0], screen
            assert re.search(r"✔ passed\s+10% of traffic to green", screen), screen
            assert re.search(
                r"✖ failed\s+» Monitor at 10% for 2 minutes\s+interrupted: the monitor window",
                screen,
            ), screen
            second.kill()

    # The audit trail says the same: the window interrupted, the split HAProxy read back.
    trail = open_trail(config)
    try:
        records = [r for r in trail.records() if r.deployment_id == deployment_id]
        actions = [r.action for r in records]
        assert actions.count("deployment.started") == 1
        resumed = actions.index("deployment.resumed")
        assert actions[resumed - 1] == "step.interrupted"
        read_back = records[actions.index("traffic.read_back")].evidence["split"]
        assert (read_back["blue_weight"], read_back["green_weight"]) == (230, 26)
        [saved] = scan_deployments(trail).unfinished
        assert (saved.deployment_id, saved.current_step) == (deployment_id, "monitor-10")
        assert trail.verify().ok
    finally:
        trail.close()
