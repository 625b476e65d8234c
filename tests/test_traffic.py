"""The traffic switches against the real thing.

HAProxy: 200 real requests through its frontend to the sandbox fleet's ingresses (each
answer names the environment that served it) split within 5 points of 0 / 10 / 50 / 100 %
green and back to 0, over the unix socket and over TCP; HAProxy's own error text becomes a
TrafficSwitchError; a read-back that disagrees raises; HAProxy down gives an unreadable
split, never an exception; per-server request counters follow the traffic.
The command switch: a real script in tmp_path records the percentage, a read-back script
prints it; non-zero exit, timeout, missing command and bad read-back are errors.
The sandbox router: set and read back over the fleet's control endpoint.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from backends.models import Environment
from backends.traffic import (
    CommandTrafficSwitch,
    HAProxyRuntimeSwitch,
    RequestCounter,
    SandboxRouterSwitch,
    TrafficSwitchError,
    weights_for,
)
from console.engines import HAProxy, free_port

if TYPE_CHECKING:
    from conftest import Fleet

pytestmark = pytest.mark.engines

SERVED_BY = "X-ACGS-Served-By"
REQUESTS = 200


def switch_for(proxy: HAProxy, via: str, **kwargs: object) -> HAProxyRuntimeSwitch:
    admin = str(proxy.admin_socket) if via == "unix" else proxy.admin_tcp
    return HAProxyRuntimeSwitch(admin, timeout_s=2.0, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def frontend(haproxy: HAProxy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=haproxy.frontend_url, timeout=5.0) as client:
        yield client


@pytest.fixture
async def restore_blue(haproxy: HAProxy) -> AsyncIterator[None]:
    """The shared HAProxy goes back to all-blue whatever the test did."""
    yield
    await HAProxyRuntimeSwitch(str(haproxy.admin_socket)).set_green_percentage(0)


async def green_share(client: httpx.AsyncClient, n: int = REQUESTS) -> float:
    """Send n real requests through HAProxy; percentage answered by green."""
    served: dict[str, int] = {"blue": 0, "green": 0}
    for i in range(n):
        response = await client.get(f"/api/v1/requests/{i}")
        by = response.headers.get(SERVED_BY)
        assert by, f"response {response.status_code} without {SERVED_BY}: {response.text[:200]}"
        served[by.split("/", 1)[0]] += 1
    assert sum(served.values()) == n
    return 100.0 * served["green"] / n


def test_weights_are_absolute_and_sum_to_256() -> None:
    assert weights_for(0) == (256, 0)
    assert weights_for(10) == (230, 26)
    assert weights_for(50) == (128, 128)
    assert weights_for(100) == (0, 256)
    for bad in (-1, 100.5, float("nan"), float("inf")):
        with pytest.raises(TrafficSwitchError):
            weights_for(bad)


@pytest.mark.parametrize("via", ["unix", "tcp"])
@pytest.mark.usefixtures("restore_blue")
async def test_haproxy_split_matches_real_traffic(
    haproxy: HAProxy, frontend: httpx.AsyncClient, via: str
) -> None:
    switch = switch_for(haproxy, via)

    for p in (0, 10, 50, 100, 0):
        split = await switch.set_green_percentage(p)
        blue_w, green_w = weights_for(p)
        assert (split.blue_weight, split.green_weight) == (blue_w, green_w)
        assert split.green_percentage == pytest.approx(100.0 * green_w / 256)
        assert split.error is None

        read = await switch.read_split()
        assert read.green_percentage == split.green_percentage

        share = await green_share(frontend)
        assert abs(share - p) <= 5.0, f"{p} % green asked, {share:.1f} % of requests on green"


@pytest.mark.usefixtures("restore_blue")
async def test_request_counters_follow_the_traffic(
    haproxy: HAProxy, frontend: httpx.AsyncClient
) -> None:
    switch = switch_for(haproxy, "tcp")
    assert isinstance(switch, RequestCounter)
    await switch.set_green_percentage(0)

    before = await switch.request_counts()
    await green_share(frontend, 20)
    after = await switch.request_counts()

    assert after[Environment.BLUE] - before[Environment.BLUE] == 20
    assert after[Environment.GREEN] == before[Environment.GREEN]
    per_server = await switch.server_request_counts()
    assert set(per_server) == {"blue", "green"}


async def test_haproxy_error_text_becomes_the_exception(haproxy: HAProxy) -> None:
    no_backend = switch_for(haproxy, "unix", backend="no_such_backend")
    with pytest.raises(TrafficSwitchError) as caught:
        await no_backend.set_green_percentage(10)
    assert "No such backend" in caught.value.detail
    assert "No such backend" in str(caught.value)

    unreadable = await no_backend.read_split()
    assert unreadable.green_percentage is None
    assert unreadable.error and "find backend" in unreadable.error

    no_server = switch_for(haproxy, "tcp", green_server="no_such_server")
    with pytest.raises(TrafficSwitchError) as caught:
        await no_server.set_green_percentage(0)
    assert "No such server" in caught.value.detail

    switch = switch_for(haproxy, "tcp")
    with pytest.raises(TrafficSwitchError) as caught:
        await switch.set_weight("green", 300)
    assert "0..256" in str(caught.value)

    # Nothing moved.
    assert (await switch.read_split()).green_weight == 0


async def test_bad_percentage_is_refused_before_touching_haproxy(haproxy: HAProxy) -> None:
    switch = switch_for(haproxy, "unix")
    for bad in (-5, 101, float("nan")):
        with pytest.raises(TrafficSwitchError):
            await switch.set_green_percentage(bad)
    split = await switch.read_split()
    assert (split.blue_weight, split.green_weight) == (256, 0)


@pytest.mark.usefixtures("restore_blue")
async def test_unexpected_read_back_raises(haproxy: HAProxy) -> None:
    # Blue and green named as the same server: the second set overwrites the first, so
    # HAProxy's read-back cannot match what was asked for.
    confused = switch_for(haproxy, "unix", green_server="blue")

    with pytest.raises(TrafficSwitchError) as caught:
        await confused.set_green_percentage(10)

    assert "read-back" in str(caught.value)


async def test_haproxy_down_gives_unreadable_split(
    fresh_haproxy: Callable[..., HAProxy],
) -> None:
    proxy = fresh_haproxy(health_checks=False)
    switch = switch_for(proxy, "unix")
    assert (await switch.read_split()).green_percentage == 0.0

    await asyncio.to_thread(proxy.stop)

    for via in ("unix", "tcp"):
        down = await switch_for(proxy, via).read_split()
        assert down.green_percentage is None
        assert down.error and "cannot reach the HAProxy runtime API" in down.error
        with pytest.raises(TrafficSwitchError):
            await switch_for(proxy, via).set_green_percentage(0)


async def test_silent_admin_socket_is_a_timeout() -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        switch = HAProxyRuntimeSwitch(f"127.0.0.1:{port}", timeout_s=0.3)
        split = await asyncio.wait_for(switch.read_split(), 10)
    finally:
        server.close()

    assert split.green_percentage is None
    assert split.error and "did not answer" in split.error


async def test_garbage_from_the_admin_address_is_unreadable_never_a_split(
    haproxy: HAProxy,
) -> None:
    """host:port of something that is not the runtime API: HAProxy's own HTTP frontend."""
    switch = HAProxyRuntimeSwitch(f"127.0.0.1:{haproxy.frontend_port}", timeout_s=2.0)

    split = await switch.read_split()
    assert split.green_percentage is None
    assert split.blue_weight is None and split.green_weight is None
    assert split.error and "servers state" in split.error and "400 Bad request" in split.error
    with pytest.raises(TrafficSwitchError):
        await switch.set_green_percentage(0)
    # The real runtime API was never touched.
    assert (await switch_for(haproxy, "unix").read_split()).green_weight == 0


def test_admin_and_names_are_validated() -> None:
    with pytest.raises(ValueError, match="unix socket path or host:port"):
        HAProxyRuntimeSwitch("localhost")
    with pytest.raises(ValueError, match="backend"):
        HAProxyRuntimeSwitch("127.0.0.1:9999", backend="acgs; disable server acgs/blue")
    assert HAProxyRuntimeSwitch("unix:/run/haproxy.sock").admin == "unix:/run/haproxy.sock"


# --- the command switch -------------------------------------------------------------------


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def lb(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A tiny "load balancer": set.sh records the percentage, read.sh prints it."""
    state = tmp_path / "green.txt"
    state.write_text("0\n", encoding="utf-8")
    setter = script(tmp_path / "set.sh", 'printf "%s\\n" "$2" > "$1"\n')
    reader = script(tmp_path / "read.sh", 'cat "$1"\n')
    return state, setter, reader


async def test_command_switch_sets_and_reads_back(lb: tuple[Path, Path, Path]) -> None:
    state, setter, reader = lb
    switch = CommandTrafficSwitch(
        [str(setter), str(state), "{green_percentage}"], [str(reader), str(state)], timeout_s=5
    )

    for p, written in ((10, "10"), (12.5, "12.5"), (100, "100"), (0, "0")):
        split = await switch.set_green_percentage(p)
        assert state.read_text(encoding="utf-8").strip() == written
        assert split.green_percentage == pytest.approx(p)
        assert (await switch.read_split()).green_percentage == pytest.approx(p)


async def test_command_switch_without_read_back_is_unverified(
    lb: tuple[Path, Path, Path],
) -> None:
    state, setter, _ = lb
    switch = CommandTrafficSwitch([str(setter), str(state), "{green_percentage}"])

    split = await switch.set_green_percentage(25)

    assert state.read_text(encoding="utf-8").strip() == "25"
    assert split.green_percentage is None
    assert split.error and "not verified" in split.error
    unread = await switch.read_split()
    assert unread.green_percentage is None and unread.error


async def test_command_nonzero_exit_carries_stderr(tmp_path: Path) -> None:
    failing = script(tmp_path / "fail.sh", 'echo "lb: backend acgs is locked" >&2\nexit 3\n')
    switch = CommandTrafficSwitch([str(failing), "{green_percentage}"], timeout_s=5)

    with pytest.raises(TrafficSwitchError) as caught:
        await switch.set_green_percentage(10)

    assert "status 3" in str(caught.value)
    assert caught.value.detail == "lb: backend acgs is locked"


async def test_command_timeout_kills_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    slow = script(tmp_path / "slow.sh", f'echo $$ > "{pid_file}"\nexec sleep 30\n')
    switch = CommandTrafficSwitch([str(slow), "{green_percentage}"], timeout_s=0.5)

    with pytest.raises(TrafficSwitchError, match=r"did not finish within 0\.5 s"):
        await asyncio.wait_for(switch.set_green_percentage(10), 10)

    pid = int(pid_file.read_text(encoding="utf-8"))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped, not left running


async def test_command_timeout_kills_what_the_command_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    forking = script(tmp_path / "fork.sh", f'sleep 30 &\necho $! > "{pid_file}"\nwait\n')
    switch = CommandTrafficSwitch([str(forking), "{green_percentage}"], timeout_s=0.5)

    with pytest.raises(TrafficSwitchError, match="killed"):
        await asyncio.wait_for(switch.set_green_percentage(10), 10)

    pid = int(pid_file.read_text(encoding="utf-8"))
    deadline = time.monotonic() + 5
    while True:
        try:
            status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
        except FileNotFoundError:
            break  # gone
        if "State:\tZ" in status:
            break  # dead, waiting for its new parent to reap it
        assert time.monotonic() < deadline, "the command's child survived the timeout"
        await asyncio.sleep(0.05)


async def test_command_read_back_that_disagrees_raises(lb: tuple[Path, Path, Path]) -> None:
    state, setter, _ = lb
    stuck = script(state.parent / "stuck.sh", "echo 55\n")
    switch = CommandTrafficSwitch(
        [str(setter), str(state), "{green_percentage}"], [str(stuck)], timeout_s=5
    )

    with pytest.raises(TrafficSwitchError, match="shows 55 %"):
        await switch.set_green_percentage(10)


async def test_command_read_back_garbage_is_unreadable(tmp_path: Path) -> None:
    for i, output in enumerate(("<html>502 Bad Gateway</html>", "", "150")):
        noisy = script(tmp_path / f"noisy{i}.sh", f"echo '{output}'\n")
        switch = CommandTrafficSwitch(["true", "{green_percentage}"], [str(noisy)], timeout_s=5)
        split = await switch.read_split()
        assert split.green_percentage is None, output
        assert split.error


async def test_missing_command_is_an_error(tmp_path: Path) -> None:
    switch = CommandTrafficSwitch([str(tmp_path / "nope.sh"), "{green_percentage}"])

    with pytest.raises(TrafficSwitchError, match="not found"):
        await switch.set_green_percentage(0)


async def test_bad_percentage_never_runs_the_command(lb: tuple[Path, Path, Path]) -> None:
    state, setter, reader = lb
    switch = CommandTrafficSwitch(
        [str(setter), str(state), "{green_percentage}"], [str(reader), str(state)]
    )

    with pytest.raises(TrafficSwitchError):
        await switch.set_green_percentage(250)

    assert state.read_text(encoding="utf-8").strip() == "0"


def test_command_template_needs_the_placeholder() -> None:
    with pytest.raises(ValueError, match="green_percentage"):
        CommandTrafficSwitch(["./switch.sh", "50"])


# --- the sandbox router ---------------------------------------------------------------------


async def test_sandbox_router_sets_and_reads_back(fleet: Fleet) -> None:
    switch = SandboxRouterSwitch(fleet.control_url, timeout_s=2.0)
    original = (await switch.read_split()).green_percentage
    assert original is not None
    try:
        split = await switch.set_green_percentage(25)
        assert split.green_percentage == 25.0
        async with httpx.AsyncClient() as client:
            state = (await client.get(f"{fleet.control_url}/control/split")).json()
        assert state["green_percentage"] == 25.0

        with pytest.raises(TrafficSwitchError):
            await switch.set_green_percentage(-1)

        counts = await switch.request_counts()
        assert set(counts) == {Environment.BLUE, Environment.GREEN}
        assert all(n >= 0 for n in counts.values())
    finally:
        await switch.set_green_percentage(original)
        await switch.aclose()


async def test_sandbox_router_unreachable_is_unreadable() -> None:
    switch = SandboxRouterSwitch(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    try:
        split = await switch.read_split()
        assert split.green_percentage is None
        assert split.error and "cannot reach" in split.error
        with pytest.raises(TrafficSwitchError):
            await switch.set_green_percentage(0)
    finally:
        await switch.aclose()
