"""The probes' HTTP client: keep-alive connections per origin, TLS still verified.

Real loopback servers that count the connections they accept (plain HTTP, and
HTTPS with a self-signed certificate made by ``openssl``), probed through the
client :func:`backends.health.make_client` builds: the probes through its lean
connections (:mod:`backends.http1`), other requests through httpx's pools, one
per origin.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends import http1
from backends.health import HealthProber, ProbeClient, make_client
from backends.models import Environment, ServiceState

HASH = "cdd01ef066bc6cf2"
TIMEOUT_S = 2.0
BODY = json.dumps({"status": "healthy", "constitutional_hash": HASH}).encode()


class CountingServer:
    """A keep-alive loopback HTTP server that counts connections and requests."""

    def __init__(self, *, redirect_to: str | None = None) -> None:
        self.connections = 0
        self.open = 0
        self.requests = 0
        self.redirect_to = redirect_to
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self, tls: ssl.SSLContext | None = None) -> CountingServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                path = head.split(b" ", 2)[1].decode()
                if self.redirect_to is not None and path == "/health":
                    reply = (
                        "HTTP/1.1 302 Found\r\nContent-Length: 0\r\n"
                        f"Location: {self.redirect_to}/health\r\n\r\n"
                    ).encode()
                else:
                    reply = (
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"X-Constitutional-Hash: {HASH}\r\n".encode()
                        + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
                        + BODY
                    )
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def servers() -> AsyncIterator[list[CountingServer]]:
    made: list[CountingServer] = []
    try:
        yield made
    finally:
        for server in made:
            await server.close()


async def start(made: list[CountingServer], **kwargs: object) -> CountingServer:
    server = await CountingServer(**kwargs).start()  # type: ignore[arg-type]
    made.append(server)
    return server


async def wait_for(predicate: object, seconds: float = 5.0) -> None:
    assert callable(predicate)
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_each_origin_keeps_its_own_connection_across_sweeps(
    servers: list[CountingServer],
) -> None:
    a, b, c = [await start(servers) for _ in range(3)]
    client = make_client(TIMEOUT_S)
    prober = HealthProber(client, HASH, TIMEOUT_S)
    try:
        targets = [(Environment.BLUE, s.url[-5:], s.url + "/health") for s in (a, b, c)]
        for _ in range(4):  # four sweeps, each probing the three services concurrently
            results = await prober.probe_many(targets)
            assert [r.state for r in results] == [ServiceState.UP] * 3, results
        # Keep-alive: one connection per service for all four sweeps.
        assert [s.connections for s in (a, b, c)] == [1, 1, 1]
        assert [s.requests for s in (a, b, c)] == [4, 4, 4]
        assert isinstance(client, ProbeClient)
        assert (client.pool.lean.origins, client.pool.lean.idle_connections) == (3, 3)
        # Other requests on the same client go through httpx, a pool per origin.
        for _ in range(2):
            for server in (a, b):
                assert (await client.get(server.url + "/health")).status_code == 200
        assert [s.connections for s in (a, b, c)] == [2, 2, 1]
        assert client.pool.origins == 2
    finally:
        await client.aclose()
    # Closing the client closes every pool's connections.
    await wait_for(lambda: a.open == b.open == c.open == 0)


async def test_a_redirect_to_another_origin_goes_through_that_origin_s_pool(
    servers: list[CountingServer],
) -> None:
    target = await start(servers)
    moved = await start(servers, redirect_to=target.url)
    client = make_client(TIMEOUT_S)
    try:
        prober = HealthProber(client, HASH, TIMEOUT_S)
        for _ in range(2):
            result = await prober.probe(Environment.GREEN, "moved", moved.url + "/health")
            assert result.state is ServiceState.UP, result.reason
        assert (moved.connections, target.connections) == (1, 1)
        assert (moved.requests, target.requests) == (2, 2)
        assert isinstance(client, ProbeClient) and client.pool.lean.origins == 2
    finally:
        await client.aclose()


async def test_past_the_origin_limit_the_least_recently_used_pool_is_closed(
    servers: list[CountingServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "MAX_ORIGINS", 2)
    a, b, c = [await start(servers) for _ in range(3)]
    client = make_client(TIMEOUT_S)
    prober = HealthProber(client, HASH, TIMEOUT_S)
    try:
        for server in (a, b, a, c):  # b is now the least recently used
            result = await prober.probe(Environment.BLUE, "s", server.url + "/health")
            assert result.state is ServiceState.UP, result.reason
        assert isinstance(client, ProbeClient) and client.pool.lean.origins == 2
        await wait_for(lambda: b.open == 0)
        assert a.open == 1 and c.open == 1
        # b comes back with a new pool (and a new connection); a stays as it was.
        await prober.probe(Environment.BLUE, "s", b.url + "/health")
        assert (a.connections, b.connections, c.connections) == (1, 2, 1)
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("tls")
    key, cert = where / "key.pem", where / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(Path(cert), Path(key))
    return context


async def test_https_is_verified_and_an_untrusted_certificate_is_no_answer(
    self_signed: ssl.SSLContext,
) -> None:
    server = await CountingServer().start(tls=self_signed)
    plain = await CountingServer().start()
    client = make_client(TIMEOUT_S)
    try:
        prober = HealthProber(client, HASH, TIMEOUT_S)
        result = await prober.probe(Environment.BLUE, "tls", server.url + "/health")
        # The certificate is nobody's the console trusts: down, with the reason, never up.
        assert result.state is ServiceState.DOWN
        assert "certificate" in result.reason.lower(), result.reason
        assert server.requests == 0
        # The plain-HTTP origin next to it is unaffected.
        result = await prober.probe(Environment.BLUE, "plain", plain.url + "/health")
        assert result.state is ServiceState.UP
    finally:
        await client.aclose()
        await server.close()
        await plain.close()
