"""The PostgreSQL replication probe against a real primary and streaming replica.

Synchronized on the real replica; replay paused on the replica plus writes on the primary
show the byte lag and "not synchronized", resuming brings it back; a stopped primary is
refused and comes back; a wrong password is auth_failed (and never shown); a role without
pg_monitor cannot read the details; a server that never answers is a timeout, one that
answers garbage an error; DSNs that
point at the wrong server, an unreachable replica and too few replicas are named.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from backends.models import ProbeState, ReplicationStatus
from backends.postgres import ReplicationProber, close_replication_probers, probe_replication
from console.engines import HAProxy, PostgresCluster, free_port

pytestmark = pytest.mark.engines

MB = 1024 * 1024


@pytest.fixture(autouse=True)
async def _close_probers() -> AsyncIterator[None]:
    yield
    await close_replication_probers()


async def probe(
    primary: str | None,
    replicas: list[str],
    *,
    password: SecretStr | None = None,
    expected: int = 1,
    max_bytes: int = 16 * MB,
    max_seconds: float = 5.0,
    timeout_s: float = 2.0,
) -> ReplicationStatus:
    # The outer bound only keeps a broken probe from hanging the suite.
    return await asyncio.wait_for(
        probe_replication(primary, replicas, password, expected, max_bytes, max_seconds, timeout_s),
        timeout_s * 5 + 5,
    )


async def poll(
    make: Callable[[], Any],
    until: Callable[[ReplicationStatus], bool],
    what: str,
    timeout: float = 20.0,
) -> ReplicationStatus:
    deadline = time.monotonic() + timeout
    while True:
        status: ReplicationStatus = await make()
        if until(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout:g} s; last status: {status!r}")
        await asyncio.sleep(0.2)


def execute(dsn: str, *statements: str) -> list[Any]:
    out: list[Any] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            cur = conn.execute(statement)
            out.append(cur.fetchall() if cur.description else None)
    return out


async def test_not_configured() -> None:
    status = await probe(None, [])

    assert status.state is ProbeState.NOT_CONFIGURED
    assert status.synchronized is None


async def test_synchronized_on_the_real_replica(pg_cluster: PostgresCluster) -> None:
    status = await poll(
        lambda: probe(pg_cluster.primary_dsn, [pg_cluster.replica_dsn]),
        lambda s: s.synchronized is True,
        "synchronized",
    )

    assert status.state is ProbeState.OK, status
    assert status.primary_reachable is True
    assert status.replica_in_recovery is True
    assert status.expected_replicas == 1
    (row,) = status.replicas
    assert row.state == "streaming"
    assert row.sync_state == "async"
    assert row.client_addr == "127.0.0.1"
    assert row.byte_lag is not None and row.byte_lag <= 16 * MB
    assert row.replay_lag_seconds is not None and row.replay_lag_seconds <= 5.0


async def test_paused_replay_shows_lag_then_resynchronizes(pg_cluster: PostgresCluster) -> None:
    primary, replica = pg_cluster.primary_dsn, pg_cluster.replica_dsn
    max_bytes = 64 * 1024

    def check() -> Any:
        return probe(primary, [replica], max_bytes=max_bytes, max_seconds=60.0)

    await poll(check, lambda s: s.synchronized is True, "synchronized before the pause")
    table = f"lag_{uuid.uuid4().hex[:8]}"
    try:
        execute(replica, "SELECT pg_wal_replay_pause()")
        # About 1 MB of WAL: far past max_bytes while the replica does not replay.
        execute(
            primary,
            f"CREATE TABLE {table} (x text)",
            f"INSERT INTO {table} SELECT repeat('x', 200) FROM generate_series(1, 5000)",
        )

        lagging = await poll(check, lambda s: s.synchronized is False, "not synchronized")
        assert lagging.state is ProbeState.DEGRADED
        assert lagging.primary_reachable is True
        assert lagging.replica_in_recovery is True
        (row,) = lagging.replicas
        assert row.byte_lag is not None and row.byte_lag > max_bytes
        assert f"{row.byte_lag} bytes behind" in lagging.reason
    finally:
        execute(replica, "SELECT pg_wal_replay_resume()")

    back = await poll(check, lambda s: s.synchronized is True, "synchronized after resume")
    assert back.state is ProbeState.OK
    (row,) = back.replicas
    assert row.byte_lag is not None and row.byte_lag <= max_bytes
    execute(primary, f"DROP TABLE {table}")


async def test_closed_port_is_refused() -> None:
    status = await probe(f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres", [])

    assert status.state is ProbeState.REFUSED, status
    assert status.primary_reachable is False
    assert status.synchronized is None
    assert "refused" in status.reason


async def test_stopped_primary_is_refused_and_comes_back(
    fresh_pg_cluster: Callable[[], PostgresCluster],
) -> None:
    cluster = fresh_pg_cluster()
    prober = ReplicationProber(
        cluster.primary_dsn, [cluster.replica_dsn], None, 1, 16 * MB, 5.0, timeout_s=2.0
    )
    try:
        await poll(prober.probe, lambda s: s.synchronized is True, "synchronized")

        await asyncio.to_thread(cluster.stop_primary)
        down = await prober.probe()
        assert down.state is ProbeState.REFUSED, down
        assert down.synchronized is None
        # The replica itself still answers, and is still a standby.
        assert down.replica_in_recovery is True

        await asyncio.to_thread(cluster.start_primary)
        back = await poll(prober.probe, lambda s: s.synchronized is True, "synchronized again")
        assert back.state is ProbeState.OK
    finally:
        await prober.aclose()


@pytest.fixture
def password_role(pg_cluster: PostgresCluster) -> Iterator[tuple[str, str]]:
    """A login role that must give its password (scram), on the shared primary.

    Only this role's pg_hba line is added (first, so it wins); the file is restored after.
    """
    role = f"probe_{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    hba = pg_cluster.primary.datadir / "pg_hba.conf"
    original = hba.read_text(encoding="utf-8")
    execute(pg_cluster.primary_dsn, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original, encoding="utf-8")
    execute(pg_cluster.primary_dsn, "SELECT pg_reload_conf()")
    try:
        yield role, password
    finally:
        hba.write_text(original, encoding="utf-8")
        execute(pg_cluster.primary_dsn, "SELECT pg_reload_conf()", f"DROP ROLE {role}")


def dsn_as(cluster: PostgresCluster, role: str) -> str:
    return f"host=127.0.0.1 port={cluster.primary.port} user={role} dbname=postgres"


async def test_wrong_password_is_auth_failed_and_never_shown(
    pg_cluster: PostgresCluster, password_role: tuple[str, str]
) -> None:
    role, right = password_role
    wrong = f"wrong-{uuid.uuid4().hex}"

    status = await probe(dsn_as(pg_cluster, role), [], password=SecretStr(wrong))

    assert status.state is ProbeState.AUTH_FAILED, status
    assert status.synchronized is None
    assert "password authentication failed" in status.reason
    assert wrong not in status.model_dump_json() and right not in status.model_dump_json()

    missing = await probe(dsn_as(pg_cluster, role), [], password=None)
    assert missing.state is ProbeState.AUTH_FAILED, missing


async def test_role_without_pg_monitor_cannot_read_details_until_granted(
    pg_cluster: PostgresCluster, password_role: tuple[str, str]
) -> None:
    role, right = password_role
    dsn = dsn_as(pg_cluster, role)

    status = await probe(dsn, [], password=SecretStr(right))
    # Connected, but pg_stat_replication hides its columns: unknown, never synchronized.
    assert status.state is ProbeState.ERROR, status
    assert "pg_monitor" in status.reason
    assert status.synchronized is None

    execute(pg_cluster.primary_dsn, f"GRANT pg_monitor TO {role}")
    granted = await poll(
        lambda: probe(dsn, [], password=SecretStr(right)),
        lambda s: s.synchronized is True,
        "synchronized with pg_monitor",
    )
    assert granted.replicas and granted.replicas[0].state == "streaming"


async def test_silent_server_is_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        status = await probe(
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres", [], timeout_s=0.5
        )
    finally:
        server.close()

    assert accepted, "the probe should have connected"
    assert status.state is ProbeState.TIMEOUT, status
    assert status.synchronized is None


async def test_garbage_reply_is_a_named_error(haproxy: HAProxy) -> None:
    """A real server that does not speak the PostgreSQL protocol (HAProxy's HTTP frontend)."""
    garbage = f"host=127.0.0.1 port={haproxy.frontend_port} user=postgres dbname=postgres"

    status = await probe(garbage, [])

    assert status.state is ProbeState.ERROR, status
    assert status.primary_reachable is False
    assert status.synchronized is None
    assert "invalid response" in status.reason


async def test_garbage_from_the_replica_dsn_is_not_synchronized(
    pg_cluster: PostgresCluster, haproxy: HAProxy
) -> None:
    garbage = f"host=127.0.0.1 port={haproxy.frontend_port} user=postgres dbname=postgres"

    status = await probe(pg_cluster.primary_dsn, [garbage])

    assert status.state is ProbeState.DEGRADED, status
    assert status.synchronized is False
    assert status.replica_in_recovery is None
    assert "not checked" in status.reason


async def test_primary_dsn_pointing_at_the_replica_is_named(pg_cluster: PostgresCluster) -> None:
    status = await probe(pg_cluster.replica_dsn, [pg_cluster.primary_dsn])

    assert status.state is ProbeState.DEGRADED, status
    assert status.synchronized is False
    assert "in recovery" in status.reason
    # The "replica" DSN is the primary: not in recovery.
    assert status.replica_in_recovery is False
    assert "not in recovery" in status.reason


async def test_unreachable_replica_is_not_synchronized(pg_cluster: PostgresCluster) -> None:
    closed = f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"

    status = await poll(
        lambda: probe(pg_cluster.primary_dsn, [pg_cluster.replica_dsn, closed]),
        lambda s: s.replicas != () and s.replicas[0].byte_lag is not None,
        "replica row with lag",
    )

    assert status.state is ProbeState.DEGRADED, status
    assert status.synchronized is False
    assert status.replica_in_recovery is None
    assert "not checked: refused" in status.reason


async def test_fewer_streaming_replicas_than_expected(pg_cluster: PostgresCluster) -> None:
    status = await probe(pg_cluster.primary_dsn, [pg_cluster.replica_dsn], expected=2)

    assert status.state is ProbeState.DEGRADED, status
    assert status.synchronized is False
    assert "1 of 2 expected replicas streaming" in status.reason


async def test_garbage_dsn_is_an_error() -> None:
    status = await probe("this is not a dsn", [])

    assert status.state is ProbeState.ERROR, status
    assert status.synchronized is None
    assert status.reason
