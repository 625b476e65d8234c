"""The sandbox's pieces on their own: fault model, split router, HTTP wire, CLI mapping, config.

No subprocesses here; the HTTP tests run the sandbox's server and client against each other
(and against raw sockets) in one event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import tomllib
from pathlib import Path

import pytest

from console.config import load_config
from console.sandbox.cli import add_fault_arguments, fault_request
from console.sandbox.estate import CONFIG_MARKER, FleetInfo, SandboxError, SandboxEstate
from console.sandbox.faults import (
    DEFAULT_WRONG_HASH,
    ENVIRONMENTS,
    SERVICES,
    FaultError,
    FaultKind,
    FaultTable,
    check_target,
    make_fault,
)
from console.sandbox.httpd import HttpConnection, HttpProtocolError, HttpServer, Request, Response
from console.sandbox.traffic import SplitRouter

# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected_kind", "expected_value"),
    [
        ("down", None, FaultKind.DOWN, None),
        ("slow", None, FaultKind.SLOW, 10.0),
        ("slow", "2.5", FaultKind.SLOW, 2.5),
        ("error-rate", 0.2, FaultKind.ERROR_RATE, 0.2),
        ("5xx", None, FaultKind.ERROR_RATE, 1.0),
        ("wrong_hash", None, FaultKind.WRONG_HASH, DEFAULT_WRONG_HASH),
        ("WRONG-HASH", " abc ", FaultKind.WRONG_HASH, "abc"),
        ("missing_hash", None, FaultKind.MISSING_HASH, None),
        ("garbage", None, FaultKind.GARBAGE, None),
        ("hang", None, FaultKind.HANG, None),
        ("cache_miss", None, FaultKind.CACHE_MISS, 0.5),
    ],
)
def test_make_fault_accepts_every_kind(
    kind: str, value: object, expected_kind: FaultKind, expected_value: object
) -> None:
    fault = make_fault(kind, value)
    assert fault.kind is expected_kind
    assert fault.value == expected_value


@pytest.mark.parametrize(
    ("kind", "value", "needle"),
    [
        ("melt", None, "unknown fault kind 'melt'"),
        (3, None, "kind must be a string"),
        ("slow", 0.5, "between 1 and 10000"),
        ("slow", float("nan"), "finite"),
        ("slow", True, "must be a number"),
        ("slow", [2], "must be a number"),
        ("error_rate", -0.1, "between 0 and 1"),
        ("cache_miss", 2, "between 0 and 1"),
        ("wrong_hash", "", "printable string"),
        ("wrong_hash", 12, "printable string"),
        ("hang", 1, "takes no value"),
    ],
)
def test_make_fault_rejects_bad_input_by_name(kind: object, value: object, needle: str) -> None:
    with pytest.raises(FaultError, match=needle):
        make_fault(kind, value)


def test_check_target_names_what_is_valid() -> None:
    assert check_target("green", None) == ("green", None)
    assert check_target("blue", "cache_optimizer") == ("blue", "cache_optimizer")
    with pytest.raises(FaultError, match="valid: blue, green"):
        check_target("red", None)
    with pytest.raises(FaultError, match="unknown service"):
        check_target("blue", "cache")


def test_fault_table_overlays_service_on_environment_and_clears_by_scope() -> None:
    table = FaultTable()
    table.set("green", None, make_fault("slow", 3))
    table.set("green", "cache_optimizer", make_fault("slow", 7))
    table.set("green", "cache_optimizer", make_fault("garbage"))
    table.set("blue", None, make_fault("hang"))

    assert table.effective("green", "cache_optimizer")[FaultKind.SLOW].value == 7
    assert table.effective("green", "test_orchestrator")[FaultKind.SLOW].value == 3
    assert set(table.effective("green", "cache_optimizer")) == {FaultKind.SLOW, FaultKind.GARBAGE}
    assert set(table.effective("blue", "cache_optimizer")) == {FaultKind.HANG}

    table.clear("green", "cache_optimizer")
    assert table.effective("green", "cache_optimizer")[FaultKind.SLOW].value == 3
    table.set("green", "cache_optimizer", make_fault("down"))
    table.clear("green")
    assert table.effective("green", "cache_optimizer") == {}
    assert table.environment_faults("blue") == {FaultKind.HANG: make_fault("hang")}
    table.clear()
    assert table.as_json() == []


# -- router -----------------------------------------------------------------------------------


@pytest.mark.parametrize("percentage", [0, 1, 10, 30, 33.3, 50, 99, 100])
def test_split_router_sends_exactly_the_green_share(percentage: float) -> None:
    router = SplitRouter(percentage)
    picks = [router.pick() for _ in range(1000)]
    assert abs(picks.count("green") - percentage * 10) <= 1
    assert set(picks) <= {"blue", "green"}


def test_split_router_refuses_out_of_range() -> None:
    router = SplitRouter()
    with pytest.raises(ValueError, match="between 0 and 100"):
        router.green_percentage = 100.5
    assert router.green_percentage == 0


# -- the HTTP wire ----------------------------------------------------------------------------


async def _echo(request: Request) -> Response:
    body = f"{request.method} {request.path} {request.query} {len(request.body)}".encode()
    return Response(200, body, "text/plain", [("X-Seen-Host", request.headers.get("host", ""))])


async def test_server_and_client_keep_one_connection_alive() -> None:
    server = HttpServer(_echo)
    await server.start()
    try:
        conn = HttpConnection("127.0.0.1", server.port)
        first = await conn.request("GET", "/a?x=1")
        writer = conn._writer
        second = await conn.request("POST", "/b", body=b"12345")
        assert first.body == b"GET /a x=1 0"
        assert second.body == b"POST /b  5"
        assert conn._writer is writer, "the second request reused the connection"
        assert first.headers["x-seen-host"] == f"127.0.0.1:{server.port}"
        conn.close()
    finally:
        await server.close()


async def test_closed_server_refuses_and_reopens_on_the_same_port() -> None:
    server = HttpServer(_echo)
    await server.start()
    port = server.port
    conn = HttpConnection("127.0.0.1", port)
    await conn.request("GET", "/")
    await server.close()
    assert not server.listening
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError, OSError)):
        await conn.request("GET", "/")
    with pytest.raises(ConnectionRefusedError):
        await HttpConnection("127.0.0.1", port).request("GET", "/")
    await server.start()
    try:
        assert server.port == port
        assert (await HttpConnection("127.0.0.1", port).request("GET", "/")).status == 200
    finally:
        await server.close()


async def test_server_answers_400_to_a_malformed_request() -> None:
    server = HttpServer(_echo)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"NONSENSE\r\n\r\n")
        reply = await reader.read()
        assert reply.startswith(b"HTTP/1.1 400 ")
        writer.close()
    finally:
        await server.close()


async def test_a_failing_handler_costs_one_request_not_the_server() -> None:
    calls = 0

    async def flaky(request: Request) -> Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return Response(200, b"fine", "text/plain")

    server = HttpServer(flaky)
    await server.start()
    try:
        first = await HttpConnection("127.0.0.1", server.port).request("GET", "/")
        assert (first.status, first.body) == (500, b"internal error: boom")
        second = await HttpConnection("127.0.0.1", server.port).request("GET", "/")
        assert (second.status, second.body) == (200, b"fine")
    finally:
        await server.close()


async def _raw_server(reply: bytes) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_client_reads_chunked_and_until_close_bodies() -> None:
    chunked = await _raw_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    until_close = await _raw_server(b"HTTP/1.1 503 Service Unavailable\r\n\r\nno server")
    broken = await _raw_server(b"SPDY/9 what\r\n\r\n")
    try:
        port = chunked.sockets[0].getsockname()[1]
        assert (await HttpConnection("127.0.0.1", port).request("GET", "/")).body == b"hello world"
        port = until_close.sockets[0].getsockname()[1]
        response = await HttpConnection("127.0.0.1", port).request("GET", "/")
        assert (response.status, response.body) == (503, b"no server")
        port = broken.sockets[0].getsockname()[1]
        with pytest.raises(HttpProtocolError):
            await HttpConnection("127.0.0.1", port).request("GET", "/")
    finally:
        for server in (chunked, until_close, broken):
            server.close()


async def test_client_resends_a_get_when_an_idle_keep_alive_connection_was_closed() -> None:
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        # Promises keep-alive, then drops the connection, as a proxy's idle timeout does.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        conn = HttpConnection("127.0.0.1", server.sockets[0].getsockname()[1])
        assert (await conn.request("GET", "/")).body == b"ok"
        await asyncio.sleep(0.05)
        assert (await conn.request("GET", "/")).body == b"ok"
        assert served == 2
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await asyncio.sleep(0.05)
            await conn.request("POST", "/", body=b"x")  # not idempotent: no resend
    finally:
        server.close()


# -- sandbox fault arguments ------------------------------------------------------------------


def _fault_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_fault_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "path", "body"),
    [
        (
            ["green", "--slow", "10"],
            "/control/fault",
            {"environment": "green", "kind": "slow", "value": 10.0},
        ),
        (["blue", "--down"], "/control/fault", {"environment": "blue", "kind": "down"}),
        (
            ["green", "--service", "cache_optimizer", "--error-rate", "0.2"],
            "/control/fault",
            {
                "environment": "green",
                "kind": "error_rate",
                "value": 0.2,
                "service": "cache_optimizer",
            },
        ),
        (
            ["green", "--wrong-hash"],
            "/control/fault",
            {"environment": "green", "kind": "wrong_hash", "value": "0000deadbeef0000"},
        ),
        (
            ["green", "--wrong-hash", "abcd"],
            "/control/fault",
            {"environment": "green", "kind": "wrong_hash", "value": "abcd"},
        ),
        (
            ["blue", "--missing-hash"],
            "/control/fault",
            {"environment": "blue", "kind": "missing_hash"},
        ),
        (["blue", "--garbage"], "/control/fault", {"environment": "blue", "kind": "garbage"}),
        (["blue", "--hang"], "/control/fault", {"environment": "blue", "kind": "hang"}),
        (
            ["blue", "--cache-miss", "0.3"],
            "/control/fault",
            {"environment": "blue", "kind": "cache_miss", "value": 0.3},
        ),
        (["--clear"], "/control/clear", {}),
        (["green", "--clear"], "/control/clear", {"environment": "green"}),
        (
            ["green", "--service", "test_orchestrator", "--clear"],
            "/control/clear",
            {"environment": "green", "service": "test_orchestrator"},
        ),
    ],
)
def test_fault_flags_map_to_control_requests(
    argv: list[str], path: str, body: dict[str, object]
) -> None:
    assert fault_request(_fault_args(*argv)) == (path, body)


def test_fault_flags_need_an_environment_to_break() -> None:
    with pytest.raises(ValueError, match="blue or green"):
        fault_request(_fault_args("--down"))
    with pytest.raises(ValueError, match="needs the environment"):
        fault_request(_fault_args("--service", "cache_optimizer", "--clear"))
    with pytest.raises(SystemExit):
        _fault_args("green", "--down", "--hang")


# -- the written console config ---------------------------------------------------------------


def _fleet_info() -> FleetInfo:
    services = [
        {"environment": env, "service": name, "base_url": f"http://127.0.0.1:{20000 + i}"}
        for i, (env, name) in enumerate((e, n) for e in ENVIRONMENTS for n in SERVICES)
    ]
    return FleetInfo(
        "http://127.0.0.1:19999",
        {"blue": "http://127.0.0.1:19998", "green": "http://127.0.0.1:19997"},
        services,
    )


def test_embedded_defaults_config_is_valid_and_says_so(tmp_path: Path) -> None:
    estate = SandboxEstate(tmp_path, engines="none")
    estate.fleet = _fleet_info()
    estate.endpoints.fallbacks = {"haproxy": "--engines none", "prometheus": "binary missing"}
    path = tmp_path / "c.toml"
    estate.write_config(path)
    text = path.read_text()
    assert text.startswith(CONFIG_MARKER)
    assert "# Real engines: none." in text
    assert "# Embedded default for prometheus: binary missing." in text
    cfg, _ = load_config(path)
    assert cfg.traffic.kind == "sandbox"
    assert cfg.traffic.control_url == "http://127.0.0.1:19999"
    assert cfg.prometheus.url is None
    assert cfg.sandbox is not None and cfg.sandbox.real_engines == []
    assert (
        cfg.env("green").services["unified_orchestrator"].base_url.startswith("http://127.0.0.1:")
    )
    assert cfg.env("blue").redis is None and cfg.env("blue").postgres is None
    assert cfg.audit.sqlite_path == tmp_path / "audit.sqlite"
    assert cfg.coordination.lock_file == tmp_path / "console.lock"


def test_real_engines_config_points_at_them(tmp_path: Path) -> None:
    estate = SandboxEstate(tmp_path)
    estate.fleet = _fleet_info()
    ep = estate.endpoints
    ep.haproxy_admin = str(tmp_path / "admin.sock")
    ep.prometheus_url = "http://127.0.0.1:19090"
    ep.redis_urls = {"blue": "redis://127.0.0.1:16001/0", "green": "redis://127.0.0.1:16002/0"}
    ep.coordination_redis_url = "redis://127.0.0.1:16003/0"
    ep.postgres_primary_dsn = "host=127.0.0.1 port=15432 user=postgres dbname=postgres"
    ep.postgres_replica_dsns = ["host=127.0.0.1 port=15433 user=postgres dbname=postgres"]
    path = tmp_path / "c.toml"
    estate.write_config(path)
    assert "# Real engines: haproxy, prometheus, redis, postgresql." in path.read_text()
    cfg, _ = load_config(path)
    assert cfg.traffic.kind == "haproxy" and cfg.traffic.admin == ep.haproxy_admin
    assert cfg.prometheus.url == "http://127.0.0.1:19090"
    assert cfg.env("green").redis is not None
    assert cfg.env("green").redis.url == "redis://127.0.0.1:16002/0"
    pg = cfg.env("blue").postgres
    assert pg is not None and pg.expected_replicas == 1 and len(pg.replica_dsns) == 1
    assert cfg.audit.postgres_dsn == ep.postgres_primary_dsn
    assert cfg.coordination.redis_url == "redis://127.0.0.1:16003/0"
    assert cfg.sandbox is not None
    assert cfg.sandbox.real_engines == ["haproxy", "prometheus", "redis", "postgresql"]
    assert tomllib.loads(path.read_text())["sandbox"]["control_url"] == "http://127.0.0.1:19999"


def test_write_config_never_overwrites_someone_elses_file(tmp_path: Path) -> None:
    estate = SandboxEstate(tmp_path, engines="none")
    estate.fleet = _fleet_info()
    theirs = tmp_path / "acgs-console.toml"
    theirs.write_text('constitutional_hash = "cdd01ef066bc6cf2"\n')
    with pytest.raises(SandboxError, match="not written by the sandbox"):
        estate.write_config(theirs)
    assert theirs.read_text() == 'constitutional_hash = "cdd01ef066bc6cf2"\n'
    estate.write_config(theirs, force=True)
    estate.write_config(theirs)  # ours now: rewriting it is fine
    assert theirs.read_text().startswith(CONFIG_MARKER)
