"""The harness's engines are the real thing: each answers in its own protocol.

HAProxy's runtime API on both admin sockets and its traffic path to the fleet, Redis, the
PostgreSQL primary and its streaming replica, and Prometheus with samples scraped from the
sandbox fleet. Also the life cycle every engine shares: stop reaps the child, a failed start
shows the engine's log, a missing binary names its apt package.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
import redis

from console.engines import (
    EngineMissing,
    EngineStartError,
    HAProxy,
    PostgresCluster,
    Prometheus,
    RedisServer,
    find_binary,
    free_port,
)

if TYPE_CHECKING:
    from conftest import Fleet

pytestmark = pytest.mark.engines

STANDARD_PORTS = {5432, 6379, 9090, 80, 443, 8404}
ORCHESTRATORS = {
    "performance_suite",
    "cache_optimizer",
    "constitutional_compliance_framework",
    "test_orchestrator",
    "security_orchestrator",
    "deployment_orchestrator",
    "monitoring_orchestrator",
    "documentation_orchestrator",
    "unified_orchestrator",
}


def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


# -- HAProxy ----------------------------------------------------------------------------


def runtime_api(address: str | os.PathLike[str] | tuple[str, int], command: str) -> str:
    """One HAProxy runtime API command over a raw socket (independent of console.engines)."""
    family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
    target: Any = address if isinstance(address, tuple) else os.fspath(address)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(target)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def servers_state(reply: str) -> dict[str, dict[str, str]]:
    """Parse ``show servers state`` into {server name: {column: value}}."""
    lines = [line for line in reply.splitlines() if line.strip()]
    header = next(line for line in lines if line.startswith("# be_id"))
    columns = header.lstrip("# ").split()
    rows = [dict(zip(columns, line.split(), strict=False)) for line in lines[2:]]
    return {row["srv_name"]: row for row in rows if not row["be_id"].startswith("#")}


def tcp_address(admin_tcp: str) -> tuple[str, int]:
    host, port = admin_tcp.rsplit(":", 1)
    return host, int(port)


def test_haproxy_show_info_answers_on_unix_and_tcp_admin_sockets(haproxy: HAProxy) -> None:
    over_unix = runtime_api(haproxy.admin_socket, "show info")
    over_tcp = runtime_api(tcp_address(haproxy.admin_tcp), "show info")

    for reply in (over_unix, over_tcp):
        assert "Name: HAProxy" in reply
        assert f"Pid: {haproxy.pid}" in reply
    assert haproxy.admin_tcp.startswith("127.0.0.1:")
    assert haproxy.frontend_port not in STANDARD_PORTS


def test_haproxy_backend_lists_blue_and_green_at_their_weights(
    haproxy: HAProxy, fleet: Fleet
) -> None:
    state = servers_state(runtime_api(haproxy.admin_socket, "show servers state acgs"))

    assert set(state) == {"blue", "green"}
    assert state["blue"]["be_name"] == haproxy.backend == "acgs"
    assert (state["blue"]["srv_uweight"], state["green"]["srv_uweight"]) == ("256", "0")
    for env in ("blue", "green"):
        host, port = fleet.ingress_address(env)
        assert (state[env]["srv_addr"], state[env]["srv_port"]) == (host, str(port))


def test_haproxy_frontend_carries_traffic_to_the_blue_ingress(haproxy: HAProxy) -> None:
    response = httpx.get(f"{haproxy.frontend_url}/health", timeout=5)

    assert response.status_code == 200
    assert response.json()["environment"] == "blue"


def test_haproxy_weights_move_traffic_and_a_restart_resets_them(
    fresh_haproxy: Callable[..., HAProxy],
) -> None:
    proxy = fresh_haproxy()
    for command in ("set weight acgs/green 256", "set weight acgs/blue 0"):
        # Any non-empty reply to a `set` is an error.
        assert runtime_api(proxy.admin_socket, command).strip() == ""

    state = servers_state(proxy.admin_command("show servers state acgs", via="tcp"))
    assert (state["blue"]["srv_uweight"], state["green"]["srv_uweight"]) == ("0", "256")
    assert httpx.get(f"{proxy.frontend_url}/health", timeout=5).json()["environment"] == "green"

    old_pid = proxy.pid
    proxy.kill()
    with pytest.raises(OSError):
        runtime_api(proxy.admin_socket, "show info")
    proxy.restart()

    assert proxy.pid != old_pid
    state = servers_state(proxy.admin_command("show servers state acgs"))
    assert (state["blue"]["srv_uweight"], state["green"]["srv_uweight"]) == ("256", "0")


# -- Redis --------------------------------------------------------------------------------


def test_redis_answers_ping_and_info(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
        info = client.info("server")
        assert info["tcp_port"] == redis_server.port
        assert redis_server.port not in STANDARD_PORTS
        assert int(str(info["redis_version"]).split(".")[0]) >= 6
        key = f"engines-test:{uuid.uuid4()}"
        client.set(key, "written", ex=60)
        assert client.get(key) == b"written"
    finally:
        client.close()


def test_redis_password_is_enforced_and_stop_restart_work(
    fresh_redis: Callable[..., RedisServer],
) -> None:
    server = fresh_redis(password="s3cret with space")
    anonymous = redis.Redis.from_url(server.url)
    authed = redis.Redis.from_url(server.url, password=server.password)
    try:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        assert authed.ping() is True
        assert "s3cret" not in repr(server)

        server.stop()
        with pytest.raises(redis.ConnectionError):
            authed.ping()
        server.start()
        assert authed.ping() is True
    finally:
        anonymous.close()
        authed.close()


# -- PostgreSQL ---------------------------------------------------------------------------


def fetch_one(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def test_pg_replica_is_in_recovery_and_primary_is_not(pg_cluster: PostgresCluster) -> None:
    assert fetch_one(pg_cluster.primary_dsn, "SELECT pg_is_in_recovery()") is False
    assert fetch_one(pg_cluster.replica_dsn, "SELECT pg_is_in_recovery()") is True
    assert {pg_cluster.primary.port, pg_cluster.replica.port}.isdisjoint(STANDARD_PORTS)
    assert fetch_one(
        pg_cluster.primary_dsn,
        "SELECT state FROM pg_stat_replication WHERE application_name <> ''",
    ) in ("startup", "catchup", "streaming")
    assert (
        fetch_one(
            pg_cluster.primary_dsn,
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
            (pg_cluster.slot,),
        )
        is True
    )


def test_pg_row_written_on_primary_appears_on_replica(pg_cluster: PostgresCluster) -> None:
    marker = str(uuid.uuid4())
    with psycopg.connect(pg_cluster.primary_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS engines_probe (marker text PRIMARY KEY)")
        conn.execute("INSERT INTO engines_probe (marker) VALUES (%s)", (marker,))

    def on_replica() -> bool:
        try:
            found = fetch_one(
                pg_cluster.replica_dsn,
                "SELECT count(*) FROM engines_probe WHERE marker = %s",
                (marker,),
            )
        except psycopg.errors.UndefinedTable:
            return False
        return bool(found == 1)

    wait_until(on_replica, timeout=15, what="the row to replicate")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        fetch_one(pg_cluster.replica_dsn, "INSERT INTO engines_probe VALUES ('x') RETURNING 1")


def test_pg_primary_can_be_stopped_and_started_while_replica_stays(
    fresh_pg_cluster: Callable[[], PostgresCluster],
) -> None:
    cluster = fresh_pg_cluster()
    cluster.stop_primary()

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.primary_dsn, connect_timeout=2)
    assert fetch_one(cluster.replica_dsn, "SELECT pg_is_in_recovery()") is True

    cluster.start_primary()
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE after_restart (n int)")
        conn.execute("INSERT INTO after_restart VALUES (42)")

    def replicated() -> bool:
        try:
            return bool(fetch_one(cluster.replica_dsn, "SELECT n FROM after_restart") == 42)
        except psycopg.errors.UndefinedTable:
            return False

    wait_until(replicated, timeout=20, what="replication to resume after the primary restart")


# -- Prometheus ---------------------------------------------------------------------------


def test_prometheus_scrapes_every_fleet_service(prometheus: Prometheus, fleet: Fleet) -> None:
    samples = prometheus.wait_for_sample('up{environment="green"} == 1', timeout=20)
    assert {s["metric"]["service"] for s in samples} <= ORCHESTRATORS

    expected = {(s.environment, s.service) for s in fleet.services}
    assert len(expected) == 18

    def all_up() -> bool:
        series = prometheus.query('up{job="acgs"} == 1')
        return {(s["metric"]["environment"], s["metric"]["service"]) for s in series} == expected

    wait_until(all_up, timeout=20, what="all 18 fleet services to be up in Prometheus")


def test_prometheus_returns_acgs_metric_scraped_from_the_fleet(prometheus: Prometheus) -> None:
    samples = prometheus.wait_for_sample(
        'acgs_cache_hit_rate{environment="blue", service="cache_optimizer"}', timeout=20
    )

    assert len(samples) == 1
    metric = samples[0]["metric"]
    assert metric["job"] == "acgs"
    assert "exported_environment" not in metric
    assert 0.0 <= float(samples[0]["value"][1]) <= 1.0


def test_prometheus_can_be_taken_down_and_up(
    fresh_prometheus: Callable[..., Prometheus],
) -> None:
    server = fresh_prometheus(targets=[])
    assert httpx.get(f"{server.url}/-/ready", timeout=5).status_code == 200

    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/-/ready", timeout=2)

    server.start()
    assert httpx.get(f"{server.url}/-/ready", timeout=5).status_code == 200
    assert server.query("vector(1)")[0]["value"][1] == "1"


# -- life cycle shared by every engine ---------------------------------------------------------


def test_stop_reaps_the_child_so_no_zombie_is_left(
    fresh_redis: Callable[..., RedisServer],
) -> None:
    server = fresh_redis()
    pid = server.pid
    assert pid is not None and server.running

    server.stop()

    assert not server.running
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_failed_start_reports_the_engine_log(
    tmp_path: Path, start_engine: Callable[..., Any]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_engine(lambda: RedisServer(tmp_path / "redis", port=port))

        with pytest.raises(EngineStartError) as failure:
            server.start(timeout=10)

    assert failure.value.engine == "redis-server"
    assert "Address already in use" in str(failure.value)
    assert str(server.log_path) in str(failure.value)
    assert not server.running


def test_free_port_is_a_bindable_loopback_port() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 1024 < port < 65536


def test_missing_binary_names_the_apt_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EngineMissing) as missing:
        find_binary("redis-server")
    assert missing.value.package == "redis-server"
    assert "apt-get install redis-server" in str(missing.value)


@pytest.mark.parametrize(("ci", "outcome"), [("true", "fail"), ("", "skip")])
def test_missing_engine_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, start_engine: Callable[..., Any], ci: str, outcome: str
) -> None:
    monkeypatch.setenv("CI", ci)

    def missing() -> None:
        raise EngineMissing("prometheus")

    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected) as raised:
        start_engine(missing)
    assert "'prometheus'" in str(raised.value)
    assert "apt-get install prometheus" in str(raised.value)


@pytest.mark.parametrize(
    ("factory", "binary", "package"),
    [
        ("fresh_redis", "redis-server", "redis-server"),
        ("fresh_pg_cluster", "postgres", "postgresql"),
    ],
)
def test_a_harness_fixture_with_its_binary_missing_fails_under_ci_naming_it(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    factory: str,
    binary: str,
    package: str,
) -> None:
    """The real fixture path, not a stand-in: CI set, binary gone, the test fails naming it."""
    import console.engines as engines

    make = request.getfixturevalue(factory)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    # Nor in the places find_binary looks beside PATH (/usr/sbin, /usr/lib/postgresql/*/bin).
    monkeypatch.setattr(engines, "Path", _PathWithoutSystemDirs)
    with pytest.raises(pytest.fail.Exception) as failed:
        make()
    message = str(failed.value)
    assert f"{binary!r}" in message
    assert f"apt-get install {package}" in message
    assert "CI is set" in message


class _PathWithoutSystemDirs(type(Path())):  # type: ignore[misc]
    """``pathlib.Path`` for console.engines, with the system binary directories empty."""

    _HIDDEN = ("/usr/sbin", "/usr/local/sbin", "/usr/lib/postgresql")

    def is_file(self, *args: Any, **kwargs: Any) -> bool:
        if str(self).startswith(self._HIDDEN):
            return False
        return super().is_file(*args, **kwargs)

    def glob(self, pattern: str, *args: Any, **kwargs: Any) -> Any:
        if str(self).startswith(self._HIDDEN):
            return iter(())
        return super().glob(pattern, *args, **kwargs)


def test_auto_port_taken_in_a_race_is_replaced(
    tmp_path: Path, start_engine: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import console.engines as engines

    real_free_port = engines.free_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        offered = iter([taken.getsockname()[1]])
        # The first "free" port is already taken, as when another process wins the race.
        monkeypatch.setattr(engines, "free_port", lambda: next(offered, None) or real_free_port())
        server = start_engine(lambda: RedisServer(tmp_path / "redis"))
        try:
            server.start()
            assert server.port != taken.getsockname()[1]
            assert redis.Redis(port=server.port).ping() is True
        finally:
            server.stop()
    assert "Address already in use" in server.log_path.read_text()


def test_haproxy_will_not_share_an_admin_port_with_a_running_instance(
    tmp_path: Path, start_engine: Callable[..., Any], fresh_haproxy: Callable[..., HAProxy]
) -> None:
    first = fresh_haproxy(health_checks=False)
    second = start_engine(
        lambda: HAProxy(
            tmp_path / "second",
            blue=("127.0.0.1", 9),
            green=("127.0.0.1", 9),
            admin_port=first.admin_port,
            health_checks=False,
        )
    )
    try:
        with pytest.raises(EngineStartError, match="Address already in use"):
            second.start(timeout=10)
    finally:
        second.stop()
    assert "Name: HAProxy" in first.admin_command("show info", via="tcp")
