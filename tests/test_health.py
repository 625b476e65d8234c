"""Health and hash probing against real HTTP servers.

Two kinds of server are real here: small loopback servers started by each test
that answer with exactly the bytes the case needs (a hang, an HTML error page, a
redirect loop, an endless body ...), and the sandbox fleet (``fleet`` fixture)
with faults injected through its control endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.health import HEALTHY_STATUSES, MAX_BODY_BYTES, HealthProber, make_client
from backends.models import Environment, HashVerdict, ServiceHealth, ServiceState
from console.engines import free_port

if TYPE_CHECKING:
    from conftest import Fleet

HASH = "cdd01ef066bc6cf2"
TIMEOUT_S = 0.5

StreamBody = Callable[[asyncio.StreamWriter], Awaitable[None]]
Reply = bytes | StreamBody | None
"""Raw response bytes; a coroutine writing the response itself; None: never answer."""
Responder = Callable[[str], Reply]


def http(
    status: int = 200,
    body: bytes = b"",
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
    reason: str = "Whatever",
) -> bytes:
    """A complete HTTP/1.1 response with a Content-Length."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def health_body(**overrides: object) -> bytes:
    """The ACGS health JSON (``None`` values drop the field)."""
    doc: dict[str, object] = {
        "status": "healthy",
        "service": "cache_optimizer",
        "version": "2.4.0",
        "timestamp": "2025-01-01T00:00:00Z",
        "constitutional_hash": HASH,
    }
    doc.update(overrides)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def healthy(**overrides: object) -> bytes:
    return http(body=health_body(**overrides), headers={"X-Constitutional-Hash": HASH})


class RawServer:
    """A loopback HTTP server answering each request path with what ``respond`` says."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("latin-1")
                reply = self.respond(path)
                if reply is None:
                    await asyncio.Event().wait()  # accept, read, never answer
                elif isinstance(reply, bytes):
                    if not reply:
                        return  # close without a response
                    writer.write(reply)
                    await writer.drain()
                else:
                    await reply(writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Responder], Awaitable[RawServer]]]:
    """Factory: ``await serve(respond)`` starts a RawServer, closed when the test ends."""
    servers: list[RawServer] = []

    async def start(respond: Responder) -> RawServer:
        server = await RawServer(respond).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


def plain_httpx_client() -> httpx.AsyncClient:
    """An httpx client that is not :func:`make_client`'s: the prober goes through httpx."""
    return httpx.AsyncClient(
        timeout=TIMEOUT_S,
        follow_redirects=True,
        headers={"Accept": "application/json", "User-Agent": "acgs-console"},
    )


CLIENTS = {"lean": lambda: make_client(TIMEOUT_S), "httpx": plain_httpx_client}
"""Both ways a probe can go: every case must give the same verdict through either."""


@pytest.fixture(params=sorted(CLIENTS))
async def prober(request: pytest.FixtureRequest) -> AsyncIterator[HealthProber]:
    client = CLIENTS[request.param]()
    try:
        yield HealthProber(client, HASH, timeout_s=TIMEOUT_S)
    finally:
        await client.aclose()


async def probe_reply(
    serve: Callable[[Responder], Awaitable[RawServer]], prober: HealthProber, reply: Reply
) -> ServiceHealth:
    server = await serve(lambda _path: reply)
    return await prober.probe(Environment.GREEN, "cache_optimizer", server.url + "/health")


# -- healthy and hash ---------------------------------------------------------------------


async def test_healthy_service_is_up_with_both_hashes_ok(serve, prober) -> None:
    health = await probe_reply(serve, prober, healthy())
    assert health.state is ServiceState.UP
    assert health.reason == ""
    assert health.http_status == 200
    assert health.version == "2.4.0"
    assert health.body_hash == HASH and health.header_hash == HASH
    assert health.body_hash_verdict is HashVerdict.OK
    assert health.header_hash_verdict is HashVerdict.OK
    assert health.hash_ok and health.violations == []
    assert health.latency_ms is not None and health.latency_ms > 0
    assert health.environment is Environment.GREEN and health.service == "cache_optimizer"


async def test_wrong_hash_in_body_and_header_is_a_named_violation(serve, prober) -> None:
    reply = http(
        body=health_body(constitutional_hash="0000deadbeef0000"),
        headers={"X-Constitutional-Hash": "ffffffffffffffff"},
    )
    health = await probe_reply(serve, prober, reply)
    assert health.state is ServiceState.UP  # healthy, but not constitutional
    assert health.body_hash_verdict is HashVerdict.MISMATCH
    assert health.header_hash_verdict is HashVerdict.MISMATCH
    assert health.body_hash == "0000deadbeef0000"
    assert health.header_hash == "ffffffffffffffff"
    assert not health.hash_ok
    assert "body hash mismatch" in health.reason and "header hash mismatch" in health.reason
    assert any("0000deadbeef0000" in v for v in health.violations)


async def test_missing_header_is_missing_not_ok(serve, prober) -> None:
    health = await probe_reply(serve, prober, http(body=health_body()))
    assert health.body_hash_verdict is HashVerdict.OK
    assert health.header_hash_verdict is HashVerdict.MISSING
    assert health.header_hash is None
    assert not health.hash_ok
    assert health.reason == "header hash missing"


async def test_missing_body_hash_is_missing(serve, prober) -> None:
    reply = http(
        body=health_body(constitutional_hash=None), headers={"X-Constitutional-Hash": HASH}
    )
    health = await probe_reply(serve, prober, reply)
    assert health.body_hash_verdict is HashVerdict.MISSING
    assert health.header_hash_verdict is HashVerdict.OK
    assert not health.hash_ok


async def test_non_string_body_hash_is_a_mismatch(serve, prober) -> None:
    reply = http(
        body=health_body(constitutional_hash=12345), headers={"X-Constitutional-Hash": HASH}
    )
    health = await probe_reply(serve, prober, reply)
    assert health.body_hash_verdict is HashVerdict.MISMATCH
    assert health.body_hash == "12345"


async def test_status_not_healthy_is_degraded(serve, prober) -> None:
    health = await probe_reply(serve, prober, healthy(status="degraded"))
    assert health.state is ServiceState.DEGRADED
    assert health.reason == "status 'degraded'"
    assert health.hash_ok  # the hash is judged independently of the health


async def test_no_status_field_is_degraded(serve, prober) -> None:
    health = await probe_reply(serve, prober, healthy(status=None))
    assert health.state is ServiceState.DEGRADED
    assert "status" in health.reason


# -- the network fails ----------------------------------------------------------------


async def test_connection_refused(prober) -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    health = await prober.probe(Environment.BLUE, "performance_suite", url)
    assert health.state is ServiceState.DOWN
    assert health.reason == "connection refused"
    assert health.http_status is None and health.latency_ms is None
    assert health.body_hash_verdict is HashVerdict.UNKNOWN
    assert health.header_hash_verdict is HashVerdict.UNKNOWN
    assert not health.hash_ok


async def test_hang_past_the_timeout_is_a_timeout(serve, prober) -> None:
    health = await probe_reply(serve, prober, None)
    assert health.state is ServiceState.DOWN
    assert health.reason == f"timeout after {TIMEOUT_S:g} s"
    assert health.body_hash_verdict is HashVerdict.UNKNOWN


async def test_body_trickling_past_the_deadline_is_a_timeout(serve, prober) -> None:
    """Each chunk is within the read timeout, the whole is not: the deadline covers it all."""

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(TIMEOUT_S / 5)

    health = await probe_reply(serve, prober, trickle)
    assert health.state is ServiceState.DOWN
    assert health.reason.startswith("timeout after")


async def test_server_closing_without_answer_is_a_bad_response(serve, prober) -> None:
    health = await probe_reply(serve, prober, b"")
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason.startswith("protocol error")


async def test_invalid_url_is_unknown(prober) -> None:
    health = await prober.probe(Environment.BLUE, "x", "ftp://127.0.0.1/health")
    assert health.state is ServiceState.UNKNOWN
    assert health.reason.startswith("invalid URL")


# -- bad bodies ----------------------------------------------------------------------------


async def test_garbage_body_is_malformed_json(serve, prober) -> None:
    reply = http(body=b"\x00\xffnot json {{{", headers={"X-Constitutional-Hash": HASH})
    health = await probe_reply(serve, prober, reply)
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "malformed JSON"
    assert health.body_hash_verdict is HashVerdict.UNKNOWN
    # The header is there, so it can still be judged.
    assert health.header_hash_verdict is HashVerdict.OK


async def test_html_error_page(serve, prober) -> None:
    page = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
    health = await probe_reply(serve, prober, http(body=page, content_type="text/html"))
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "HTML error page"
    # An HTML page is not the service talking: a missing header is unknown, not "missing".
    assert health.header_hash_verdict is HashVerdict.UNKNOWN


async def test_html_error_page_with_json_content_type_is_still_html(serve, prober) -> None:
    page = b"\n  <html><head><title>Error</title></head></html>"
    health = await probe_reply(serve, prober, http(body=page))
    assert health.reason == "HTML error page"


async def test_5xx_is_down(serve, prober) -> None:
    page = b"<html><body>503 Service Unavailable</body></html>"
    reply = http(503, page, "text/html", reason="Service Unavailable")
    health = await probe_reply(serve, prober, reply)
    assert health.state is ServiceState.DOWN
    assert health.http_status == 503
    assert health.reason == "HTTP 503 Service Unavailable (HTML error page)"


async def test_404_is_a_bad_response(serve, prober) -> None:
    health = await probe_reply(serve, prober, http(404, b'{"detail":"no"}', reason="Not Found"))
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "HTTP 404 Not Found"


async def test_oversized_body_with_length(serve, prober) -> None:
    body = b'{"pad":"' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    health = await probe_reply(serve, prober, http(body=body))
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "body over 64 KiB"


async def test_endless_chunked_body_stops_reading_past_64_kib(serve, prober) -> None:
    """No Content-Length and a body that never ends: the probe stops at the cap, not the timeout."""
    sent = 0

    async def endless(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 8192
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            await writer.drain()

    health = await probe_reply(serve, prober, endless)
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "body over 64 KiB"


async def test_chunked_body_just_over_64_kib_is_refused(serve, prober) -> None:
    """Valid JSON, no Content-Length to go by: the streamed size alone decides."""
    doc = health_body()
    body = doc[:-1] + b', "pad": "' + b"x" * (MAX_BODY_BYTES - len(doc)) + b'"}'
    assert MAX_BODY_BYTES < len(body) < MAX_BODY_BYTES + 64

    async def chunked(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"X-Constitutional-Hash: " + HASH.encode() + b"\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(body), 4096):
            part = body[start : start + 4096]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    health = await probe_reply(serve, prober, chunked)
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "body over 64 KiB"


async def test_exactly_64_kib_is_accepted(serve, prober) -> None:
    doc = health_body()
    body = doc[:-1] + b', "pad": "' + b"x" * (MAX_BODY_BYTES - len(doc) - 11) + b'"}'
    assert len(body) == MAX_BODY_BYTES
    health = await probe_reply(
        serve, prober, http(body=body, headers={"X-Constitutional-Hash": HASH})
    )
    assert health.state is ServiceState.UP


async def test_wrong_content_type(serve, prober) -> None:
    reply = http(
        body=health_body(), content_type="text/plain", headers={"X-Constitutional-Hash": HASH}
    )
    health = await probe_reply(serve, prober, reply)
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "wrong content type 'text/plain'"
    # The JSON was readable, so the hashes were still judged.
    assert health.body_hash_verdict is HashVerdict.OK


async def test_missing_content_type(serve, prober) -> None:
    health = await probe_reply(serve, prober, http(body=health_body(), content_type=None))
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "wrong content type '(none)'"


async def test_problem_json_content_type_is_json(serve, prober) -> None:
    reply = http(
        body=health_body(),
        content_type="application/health+json; charset=utf-8",
        headers={"X-Constitutional-Hash": HASH},
    )
    health = await probe_reply(serve, prober, reply)
    assert health.state is ServiceState.UP


async def test_json_that_is_not_an_object(serve, prober) -> None:
    health = await probe_reply(serve, prober, http(body=b'["healthy"]'))
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "JSON is a list, not an object"


async def test_deeply_nested_json_does_not_crash(serve, prober) -> None:
    health = await probe_reply(serve, prober, http(body=b"[" * 60000))
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "malformed JSON"


# -- redirects -------------------------------------------------------------------------------


async def test_redirect_loop(serve, prober) -> None:
    def respond(path: str) -> bytes:
        target = "/b" if path == "/a" else "/a"
        return http(302, b"", None, {"Location": target}, "Found")

    server = await serve(respond)
    health = await prober.probe(Environment.BLUE, "x", server.url + "/a")
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason.startswith("redirect loop: ")
    assert health.reason.endswith("/a -> " + server.url + "/b -> " + server.url + "/a")


async def test_too_many_redirects(serve, prober) -> None:
    def respond(path: str) -> bytes:
        n = int(path.rsplit("/", 1)[1])
        return http(307, b"", None, {"Location": f"/r/{n + 1}"}, "Temporary Redirect")

    server = await serve(respond)
    health = await prober.probe(Environment.BLUE, "x", server.url + "/r/0")
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason.startswith("too many redirects")


async def test_one_redirect_is_followed(serve, prober) -> None:
    def respond(path: str) -> bytes:
        if path == "/health":
            return http(301, b"", None, {"Location": "/health/"}, "Moved Permanently")
        return healthy()

    server = await serve(respond)
    health = await prober.probe(Environment.BLUE, "x", server.url + "/health")
    assert health.state is ServiceState.UP
    assert health.hash_ok


async def test_redirect_without_location_is_a_bad_response(serve, prober) -> None:
    health = await probe_reply(serve, prober, http(302, b"", None, reason="Found"))
    assert health.state is ServiceState.BAD_RESPONSE
    assert "without a Location" in health.reason


# -- many at once ---------------------------------------------------------------------------


async def test_probe_many_keeps_order_and_one_hang_spoils_nothing(serve, prober) -> None:
    good = await serve(lambda _p: healthy())
    hung = await serve(lambda _p: None)
    targets = [
        (Environment.BLUE, "a", good.url + "/health"),
        (Environment.BLUE, "b", hung.url + "/health"),
        (Environment.GREEN, "c", f"http://127.0.0.1:{free_port()}/health"),
        (Environment.GREEN, "d", good.url + "/health"),
    ]
    results = await prober.probe_many(targets)
    assert [r.service for r in results] == ["a", "b", "c", "d"]
    assert [r.state for r in results] == [
        ServiceState.UP,
        ServiceState.DOWN,
        ServiceState.DOWN,
        ServiceState.UP,
    ]
    assert results[1].reason.startswith("timeout") and results[2].reason == "connection refused"


async def test_keep_alive_reuses_one_connection(prober) -> None:
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(healthy())
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/health"
    try:
        for _ in range(5):
            assert (await prober.probe(Environment.BLUE, "x", url)).state is ServiceState.UP
    finally:
        server.close()
    assert connections == 1


# -- arbitrary bodies never break the probe ---------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        st.binary(max_size=512),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["status", "constitutional_hash", "version", "x"]),
                    children,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(lambda doc: json.dumps(doc).encode()),
    ),
    status=st.sampled_from([200, 204, 301, 404, 500, 503]),
    content_type=st.sampled_from(["application/json", "text/html", "text/plain", None]),
)
def test_any_response_is_a_state_never_an_exception(
    body: bytes, status: int, content_type: str | None
) -> None:
    async def run(make: Callable[[], httpx.AsyncClient]) -> ServiceHealth:
        server = await RawServer(lambda _p: http(status, body, content_type)).start()
        client = make()
        try:
            return await HealthProber(client, HASH, TIMEOUT_S).probe(
                Environment.BLUE, "x", server.url + "/health"
            )
        finally:
            await client.aclose()
            await server.close()

    health = asyncio.run(run(CLIENTS["lean"]))
    # The lean client and httpx reach the same verdict on the same bytes.
    through_httpx = asyncio.run(run(CLIENTS["httpx"]))
    ignore = {"latency_ms", "checked_at", "url"}
    assert health.model_dump(exclude=ignore) == through_httpx.model_dump(exclude=ignore)
    assert isinstance(health.state, ServiceState)
    if health.state is ServiceState.UP:
        # Only a 2xx JSON object saying healthy can be "up".
        assert 200 <= status < 300 and content_type == "application/json"
        assert json.loads(body)["status"].strip().lower() in HEALTHY_STATUSES
    if health.state is not ServiceState.UP:
        assert health.reason


# -- the sandbox fleet, with faults injected --------------------------------------------------


def _control(fleet: Fleet, path: str, payload: dict[str, object]) -> None:
    response = httpx.post(fleet.control_url + path, json=payload, timeout=5.0)
    assert response.status_code == 200, response.text


@contextlib.contextmanager
def fault(fleet: Fleet, environment: str, service: str, kind: str, value: object = None):
    payload: dict[str, object] = {"environment": environment, "service": service, "kind": kind}
    if value is not None:
        payload["value"] = value
    _control(fleet, "/control/fault", payload)
    try:
        yield
    finally:
        _control(fleet, "/control/clear", {"environment": environment, "service": service})


def _url(fleet: Fleet, environment: str, service: str) -> str:
    svc = next(s for s in fleet.services if (s.environment, s.service) == (environment, service))
    return svc.base_url + "/health"


@pytest.mark.engines
async def test_fleet_all_eighteen_up_with_the_hash(fleet: Fleet, prober: HealthProber) -> None:
    results = await prober.probe_many(
        (Environment(s.environment), s.service, s.base_url + "/health") for s in fleet.services
    )
    assert len(results) == 18
    bad = [
        (r.environment.value, r.service, r.state.value, r.reason)
        for r in results
        if r.state is not ServiceState.UP
    ]
    assert bad == []
    assert all(r.hash_ok for r in results)
    assert {r.version for r in results if r.environment is Environment.GREEN} == {"2.4.0"}


@pytest.mark.engines
@pytest.mark.parametrize(
    ("kind", "value", "state", "reason", "body", "header"),
    [
        (
            "wrong_hash",
            None,
            ServiceState.UP,
            "body hash mismatch; header hash mismatch",
            HashVerdict.MISMATCH,
            HashVerdict.MISMATCH,
        ),
        (
            "missing_hash",
            None,
            ServiceState.UP,
            "body hash missing; header hash missing",
            HashVerdict.MISSING,
            HashVerdict.MISSING,
        ),
        (
            "garbage",
            None,
            ServiceState.BAD_RESPONSE,
            "malformed JSON",
            HashVerdict.UNKNOWN,
            HashVerdict.OK,
        ),
        (
            "error_rate",
            0.3,
            ServiceState.DEGRADED,
            "status 'degraded'",
            HashVerdict.OK,
            HashVerdict.OK,
        ),
        (
            "down",
            None,
            ServiceState.DOWN,
            "connection refused",
            HashVerdict.UNKNOWN,
            HashVerdict.UNKNOWN,
        ),
        (
            "hang",
            None,
            ServiceState.DOWN,
            f"timeout after {TIMEOUT_S:g} s",
            HashVerdict.UNKNOWN,
            HashVerdict.UNKNOWN,
        ),
    ],
)
async def test_fleet_fault_gives_a_named_state(
    fleet: Fleet,
    prober: HealthProber,
    kind: str,
    value: object,
    state: ServiceState,
    reason: str,
    body: HashVerdict,
    header: HashVerdict,
) -> None:
    url = _url(fleet, "green", "cache_optimizer")
    neighbour = _url(fleet, "green", "test_orchestrator")
    with fault(fleet, "green", "cache_optimizer", kind, value):
        health = await prober.probe(Environment.GREEN, "cache_optimizer", url)
        other = await prober.probe(Environment.GREEN, "test_orchestrator", neighbour)
    assert (health.state, health.reason) == (state, reason)
    assert (health.body_hash_verdict, health.header_hash_verdict) == (body, header)
    assert other.state is ServiceState.UP and other.hash_ok  # the fault stays where it was put
    # Cleared: the service is itself again.
    after = await prober.probe(Environment.GREEN, "cache_optimizer", url)
    assert after.state is ServiceState.UP and after.hash_ok
