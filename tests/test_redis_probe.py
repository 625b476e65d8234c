"""The Redis probe against real redis-server processes.

Healthy, keyspace hit ratio, cluster mode (``cluster_state`` fail, then ok once slots are
assigned), a replica whose master link is down, auth failure (no password and a wrong one),
refusal, a server that accepts and never answers, a server that answers garbage (HAProxy's
HTTP frontend), connection reuse without leaks, and
reconnecting after a restart. Every failure is a named state; none is operational.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from backends.models import ProbeState, RedisStatus
from backends.redis_probe import RedisProber, close_redis_probers, probe_redis
from console.engines import HAProxy, RedisServer, free_port

pytestmark = pytest.mark.engines

PROBE_CLIENT_NAME = "acgs-console-probe"


@pytest.fixture(autouse=True)
async def _close_probers() -> AsyncIterator[None]:
    yield
    await close_redis_probers()


class _ConfiguredRedis(RedisServer):
    """A RedisServer with extra redis.conf lines (cluster mode, replicaof)."""

    def __init__(self, workdir: Path, extra: list[str]) -> None:
        port = None
        if any(line.startswith("cluster-enabled yes") for line in extra):
            # A cluster node also listens on port + 10000, so its port must be <= 55535.
            port = next(p for p in iter(free_port, None) if p <= 55535)
        super().__init__(workdir, port=port)
        self._extra = extra

    def _prepare(self) -> None:
        super()._prepare()
        with self.config_path.open("a", encoding="utf-8") as handle:
            handle.write("\n".join(self._extra) + "\n")


@pytest.fixture
def configured_redis(
    tmp_path: Path, start_engine: Callable[[Callable[[], RedisServer]], RedisServer]
) -> Iterator[Callable[[list[str]], RedisServer]]:
    made: list[RedisServer] = []

    def make(extra: list[str]) -> RedisServer:
        server = start_engine(lambda: _ConfiguredRedis(tmp_path / f"redis{len(made)}", extra))
        made.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in made:
            server.stop()


class SilentServer:
    """A TCP server that accepts connections and never answers; counts open connections."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SilentServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        try:
            await reader.read()  # until the client closes
        finally:
            self.open -= 1
            writer.close()


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout:g} s")
        await asyncio.sleep(0.1)


async def probe_client_count(url: str, password: str | None = None) -> int:
    client = aioredis.Redis.from_url(url, password=password, decode_responses=True)
    try:
        clients = await client.client_list()
    finally:
        await client.aclose()
    return sum(1 for c in clients if c.get("name") == PROBE_CLIENT_NAME)


def assert_not_operational(status: RedisStatus, state: ProbeState) -> None:
    assert status.state is state, status
    assert status.reason, "a failed probe must say why"
    assert not status.operational
    assert status.ping_ms is None


async def test_healthy_redis_reports_ping_role_clients_memory(redis_server: RedisServer) -> None:
    status = await probe_redis(redis_server.url)

    assert status.state is ProbeState.OK, status
    assert status.operational
    assert status.ping_ms is not None and status.ping_ms >= 0
    assert status.role == "master"
    assert status.connected_clients is not None and status.connected_clients >= 1
    assert status.used_memory_bytes is not None and status.used_memory_bytes > 0
    assert status.cluster_enabled is False
    assert status.cluster_state is None


async def test_keyspace_hit_ratio_is_none_before_lookups_then_hits_over_lookups(
    fresh_redis: Callable[..., RedisServer],
) -> None:
    server = fresh_redis()
    assert (await probe_redis(server.url)).keyspace_hit_ratio is None

    client = aioredis.Redis.from_url(server.url)
    try:
        await client.set("present", "1")
        for _ in range(3):
            assert await client.get("present") == b"1"
        assert await client.get("absent") is None
    finally:
        await client.aclose()

    status = await probe_redis(server.url)
    assert status.keyspace_hit_ratio == pytest.approx(3 / 4)


async def test_cluster_mode_reports_cluster_state_fail_then_ok(
    configured_redis: Callable[[list[str]], RedisServer], tmp_path: Path
) -> None:
    server = configured_redis(
        ["cluster-enabled yes", f'cluster-config-file "{tmp_path / "nodes.conf"}"']
    )

    status = await probe_redis(server.url)
    # A lone cluster node without slots: reachable, but the cluster is not serving.
    assert status.cluster_enabled is True
    assert status.cluster_state == "fail"
    assert status.state is ProbeState.DEGRADED
    assert "cluster_state" in status.reason
    assert not status.operational

    admin = aioredis.Redis.from_url(server.url)
    try:
        await admin.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")  # type: ignore[no-untyped-call]
    finally:
        await admin.aclose()

    async def cluster_ok() -> bool:
        return (await probe_redis(server.url)).cluster_state == "ok"

    await wait_for(cluster_ok, what="cluster_state ok")
    status = await probe_redis(server.url)
    assert status.state is ProbeState.OK
    assert status.operational


async def test_replica_with_master_link_down_is_degraded(
    configured_redis: Callable[[list[str]], RedisServer],
) -> None:
    server = configured_redis([f"replicaof 127.0.0.1 {free_port()}"])

    status = await probe_redis(server.url)

    assert status.role == "slave"
    assert status.state is ProbeState.DEGRADED
    assert "master" in status.reason
    assert not status.operational


async def test_missing_password_is_auth_failed(fresh_redis: Callable[..., RedisServer]) -> None:
    server = fresh_redis(password="correct-horse-7")

    status = await probe_redis(server.url)

    assert_not_operational(status, ProbeState.AUTH_FAILED)
    assert "no password configured" in status.reason


async def test_wrong_password_is_auth_failed_and_never_shown(
    fresh_redis: Callable[..., RedisServer],
) -> None:
    server = fresh_redis(password="correct-horse-7")
    wrong = "wrong-battery-9"

    status = await probe_redis(server.url, password=SecretStr(wrong))

    assert_not_operational(status, ProbeState.AUTH_FAILED)
    dumped = status.model_dump_json()
    assert wrong not in dumped and "correct-horse-7" not in dumped

    ok = await probe_redis(server.url, password=SecretStr("correct-horse-7"))
    assert ok.state is ProbeState.OK, ok


async def test_closed_port_is_refused() -> None:
    status = await probe_redis(f"redis://127.0.0.1:{free_port()}/0")

    assert_not_operational(status, ProbeState.REFUSED)


async def test_silent_server_is_timeout_and_its_connections_are_closed() -> None:
    async with SilentServer() as silent:
        url = f"redis://127.0.0.1:{silent.port}/0"
        for _ in range(3):
            # The guard only keeps a broken probe from hanging the suite.
            status = await asyncio.wait_for(probe_redis(url, timeout_s=0.3), 10)
            assert_not_operational(status, ProbeState.TIMEOUT)
        assert silent.accepted >= 3, "each sweep should have tried again"

        async def all_closed() -> bool:
            return silent.open == 0

        await wait_for(all_closed, timeout=5, what="timed-out connections closed")


async def test_garbage_reply_is_a_named_error_never_ok(haproxy: HAProxy) -> None:
    """A real server that does not speak RESP: HAProxy's HTTP frontend answers a 400 page."""
    status = await probe_redis(f"redis://127.0.0.1:{haproxy.frontend_port}/0", timeout_s=2.0)

    assert_not_operational(status, ProbeState.ERROR)
    assert "Protocol Error" in status.reason and "HTTP/1.1 400" in status.reason
    assert status.role is None and status.connected_clients is None


@pytest.mark.parametrize(
    ("url", "state"),
    [
        (None, ProbeState.NOT_CONFIGURED),
        ("", ProbeState.NOT_CONFIGURED),
        ("http://127.0.0.1:1/0", ProbeState.ERROR),
        ("redis://127.0.0.1:notaport", ProbeState.ERROR),
    ],
)
async def test_unusable_url_is_a_named_state(url: str | None, state: ProbeState) -> None:
    status = await probe_redis(url)

    assert status.state is state, status
    assert status.reason
    assert not status.operational


async def test_sweeps_reuse_one_connection(fresh_redis: Callable[..., RedisServer]) -> None:
    server = fresh_redis()

    for _ in range(25):
        assert (await probe_redis(server.url)).state is ProbeState.OK

    assert await probe_client_count(server.url) == 1
    await close_redis_probers()
    assert await probe_client_count(server.url) == 0


async def test_reconnects_after_the_server_stops_and_restarts(
    fresh_redis: Callable[..., RedisServer],
) -> None:
    server = fresh_redis()
    prober = RedisProber(server.url, timeout_s=1.0)
    try:
        assert (await prober.probe()).state is ProbeState.OK

        await asyncio.to_thread(server.stop)
        # The kept connection is dead; the probe says what a new one finds.
        assert_not_operational(await prober.probe(), ProbeState.REFUSED)

        await asyncio.to_thread(server.start)
        assert (await prober.probe()).state is ProbeState.OK

        # Restarted between two sweeps: the stale connection is replaced silently.
        await asyncio.to_thread(server.restart)
        back = await prober.probe()
        assert back.state is ProbeState.OK, back
    finally:
        await prober.aclose()
