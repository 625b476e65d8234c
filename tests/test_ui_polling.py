"""The sweep machinery: the private sweep loop, stale-frame replacement, identity, UI state."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
import ui_fixtures as fx

from console.identity import operator_identity, ssh_client
from console.sweeps import SweepLoop
from console.ui.polling import SweepCompleted, SweepFailed
from console.ui.ui_state import STATE_FILE, load_theme, save_theme


def test_a_newer_result_replaces_an_older_queued_one() -> None:
    old = SweepCompleted(fx.healthy(sequence=1), 0.01)
    new = SweepCompleted(fx.healthy(sequence=2), 0.01)
    failed = SweepFailed("boom", 0.01)
    assert old.can_replace(new)
    # A failure behind a snapshot must not throw the snapshot away ...
    assert not old.can_replace(failed)
    # ... but an old failure gives way to anything newer.
    assert failed.can_replace(new)
    assert failed.can_replace(SweepFailed("again", 0.01))


async def test_sweep_loop_runs_on_its_own_thread_and_times_out_cleanly() -> None:
    loop = SweepLoop()
    try:
        seen: list[threading.Thread] = []
        cancelled = threading.Event()

        async def where() -> str:
            seen.append(threading.current_thread())
            return "done"

        assert await loop.run(where(), timeout=5) == "done"
        assert seen[0] is not threading.current_thread()

        async def hang() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with pytest.raises(TimeoutError):
            await loop.run(hang(), timeout=0.05)
        # The hung coroutine is cancelled on the sweep loop too, not left running there.
        assert await asyncio.to_thread(cancelled.wait, 5)
    finally:
        loop.stop()
    assert not loop.running


def test_operator_identity() -> None:
    env = {"USER": "alice", "SSH_CONNECTION": "10.0.0.5 51234 10.0.0.1 22"}
    assert operator_identity(None, env, "bastion") == "alice@bastion (ssh 10.0.0.5)"
    assert operator_identity(None, {"USER": "bob"}, "ops1") == "bob@ops1"
    assert operator_identity("carol@desk", env, "bastion") == "carol@desk"
    assert ssh_client({"SSH_CLIENT": "192.0.2.7 40000 22"}) == "192.0.2.7"
    assert ssh_client({}) is None
    assert "@" in operator_identity(None, {}, "h")


def test_theme_choice_persists_until_the_config_changes(tmp_path: Path) -> None:
    assert load_theme(tmp_path, "acgs-dark") is None
    save_theme(tmp_path, "acgs-light", "acgs-dark")
    assert json.loads((tmp_path / STATE_FILE).read_text())["theme"] == "acgs-light"
    assert load_theme(tmp_path, "acgs-dark") == "acgs-light"
    assert load_theme(tmp_path, "acgs-high-contrast") is None
    (tmp_path / STATE_FILE).write_text("not json")
    assert load_theme(tmp_path, "acgs-dark") is None
    (tmp_path / STATE_FILE).write_text("[1, 2]")
    assert load_theme(tmp_path, "acgs-dark") is None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
async def test_the_sweep_thread_carries_its_name_at_the_os_level() -> None:
    loop = SweepLoop(name="acgs-sweeps")
    try:

        async def native_id() -> int:
            return threading.get_native_id()

        tid = await loop.run(native_id(), timeout=5)
        comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        assert comm == "acgs-sweeps"
    finally:
        loop.stop()
