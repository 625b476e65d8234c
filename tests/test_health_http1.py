"""The lean HTTP/1.1 path of the probes against real servers: encodings, closes, reuse.

Each case runs through both ways a probe can go (the lean client of
:func:`backends.health.make_client`, and a plain httpx client) and must give the
same verdict through either.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from backends.health import MAX_BODY_BYTES, HealthProber, ProbeClient, make_client
from backends.models import Environment, ServiceHealth, ServiceState

HASH = "cdd01ef066bc6cf2"
TIMEOUT_S = 1.0
BODY = json.dumps({"status": "healthy", "constitutional_hash": HASH}).encode()

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


def response(body: bytes, *, encoding: str | None = None, extra: str = "") -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"X-Constitutional-Hash: {HASH}\r\nContent-Length: {len(body)}\r\n"
    )
    if encoding:
        head += f"Content-Encoding: {encoding}\r\n"
    return (head + extra + "\r\n").encode() + body


class Server:
    """A loopback server answering every request with ``reply``; counts connections."""

    def __init__(self, reply: bytes, *, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/health"
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(self.reply)
                await writer.drain()
                if self.close_after:
                    break  # close without saying so (no "Connection: close")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


CLIENTS: dict[str, Callable[[], httpx.AsyncClient]] = {
    "lean": lambda: make_client(TIMEOUT_S),
    "httpx": lambda: httpx.AsyncClient(timeout=TIMEOUT_S),
}


@pytest.fixture(params=sorted(CLIENTS))
async def prober(request: pytest.FixtureRequest) -> AsyncIterator[HealthProber]:
    client = CLIENTS[request.param]()
    assert isinstance(client, ProbeClient) == (request.param == "lean")
    try:
        yield HealthProber(client, HASH, TIMEOUT_S)
    finally:
        await client.aclose()


async def probe(prober: HealthProber, reply: bytes, **kw: bool) -> tuple[ServiceHealth, Server]:
    server = await Server(reply, **kw).start()
    try:
        return await prober.probe(Environment.BLUE, "x", server.url), server
    finally:
        await server.close()


@pytest.mark.parametrize(
    "encoding, data",
    [
        ("gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),
        ("deflate", zlib.compress(BODY)[2:-4]),  # raw deflate, without the zlib wrapper
        ("identity", BODY),
    ],
    ids=["gzip", "deflate", "raw-deflate", "identity"],
)
async def test_a_compressed_body_is_decoded(
    prober: HealthProber, encoding: str, data: bytes
) -> None:
    health, _ = await probe(prober, response(data, encoding=encoding))
    assert health.state is ServiceState.UP, health.reason
    assert health.hash_ok


async def test_a_small_body_that_inflates_past_64_kib_is_refused(prober: HealthProber) -> None:
    bomb = gzip.compress(b'{"status": "healthy", "pad": "' + b"x" * (50 * MAX_BODY_BYTES) + b'"}')
    assert len(bomb) < MAX_BODY_BYTES / 10
    health, _ = await probe(prober, response(bomb, encoding="gzip"))
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason == "body over 64 KiB"


async def test_a_corrupt_compressed_body_is_a_protocol_error(prober: HealthProber) -> None:
    health, _ = await probe(prober, response(b"not gzip at all", encoding="gzip"))
    assert health.state is ServiceState.BAD_RESPONSE
    assert health.reason.startswith("protocol error")


async def test_a_server_that_closes_after_each_answer_is_still_up(prober: HealthProber) -> None:
    """The idle connection is found closed on reuse and replaced, not reported."""
    server = await Server(response(BODY), close_after=True).start()
    try:
        for _ in range(4):
            health = await prober.probe(Environment.BLUE, "x", server.url)
            assert health.state is ServiceState.UP, health.reason
            await asyncio.sleep(0.05)
    finally:
        await server.close()
    assert server.connections == 4


async def test_connection_close_is_honoured(prober: HealthProber) -> None:
    server = await Server(response(BODY, extra="Connection: close\r\n")).start()
    try:
        for _ in range(3):
            health = await prober.probe(Environment.BLUE, "x", server.url)
            assert health.state is ServiceState.UP, health.reason
    finally:
        await server.close()
    assert server.connections == 3


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        # Python's int(x, 16) takes these; HTTP's chunk size is hex digits only.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\n{}\r\n0\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n{}",
    ],
    ids=[
        "short-body",
        "bad-length",
        "bad-chunk",
        "0x-chunk",
        "signed-chunk",
        "not-http",
        "bad-header",
    ],
)
async def test_a_broken_answer_is_a_bad_response_never_up(
    prober: HealthProber, reply: bytes
) -> None:
    server = await Server(reply, close_after=True).start()
    try:
        health = await prober.probe(Environment.BLUE, "x", server.url)
    finally:
        await server.close()
    assert health.state is ServiceState.BAD_RESPONSE, (health.state, health.reason)
    assert health.reason.startswith("protocol error"), health.reason


async def test_a_probe_cut_off_by_its_timeout_leaves_no_connection_behind() -> None:
    started = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        started.set()
        try:
            await reader.read()  # until the client goes away
        finally:
            writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/health"
    client = make_client(TIMEOUT_S)
    try:
        assert isinstance(client, ProbeClient)
        health = await HealthProber(client, HASH, 0.3).probe(Environment.BLUE, "x", url)
        assert health.state is ServiceState.DOWN and health.reason == "timeout after 0.3 s"
        assert started.is_set()
        assert client.pool.lean.idle_connections == 0
    finally:
        await client.aclose()
        server.close()
