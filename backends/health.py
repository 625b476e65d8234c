"""Health and constitutional-hash probing of the orchestrator services over HTTP.

This module owns one question: what does a service's health endpoint say right
now? :class:`HealthProber` sends one ``GET`` per service through one shared,
keep-alive client (see :func:`make_client`) and turns whatever comes back, or
does not, into a :class:`~backends.models.ServiceHealth` with a named state and
reason. With the client :func:`make_client` builds, the probes go through
:mod:`backends.http1` (a lean HTTP/1.1 ``GET`` on asyncio streams, a tenth of
httpx's CPU per request); any other :class:`httpx.AsyncClient` (or one that
honours proxy settings) is used as it is. Both paths reach the same verdicts.

It never raises for an observation failure: connection refused, a timeout, a
malformed or oversized body, an HTML error page, a wrong content type or a
redirect loop are all states, not exceptions.

The constitutional hash is checked in two places, independently: the JSON
body's ``constitutional_hash`` field and the ``X-Constitutional-Hash`` response
header.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpx

from backends import http1
from backends.models import Environment, HashVerdict, ServiceHealth, ServiceState

MAX_BODY_BYTES = 64 * 1024
"""A health body larger than this is a bad response; reading stops past it."""

MAX_REDIRECTS = 5
"""Redirect hops a probe follows before it gives up with "too many redirects"."""

HASH_HEADER = "X-Constitutional-Hash"
"""The response header the ACGS security middleware sets."""

HEALTHY_STATUSES = frozenset({"healthy", "ok", "up", "pass", "passing"})
"""Values of the body's ``status`` field that mean the service is fully up."""


POOL_PER_ORIGIN_CONNECTIONS = 8
"""Connections one origin (scheme, host, port) may hold open at once."""

POOL_PER_ORIGIN_KEEPALIVE = 2
"""Idle keep-alive connections kept per origin (a sweep sends one request to each)."""

MAX_ORIGINS = 256
"""Origins with a pool of their own; past this the least recently used pool is closed."""


class PoolPerOrigin(httpx.AsyncBaseTransport):
    """An httpx transport that keeps one small connection pool per origin.

    httpcore's pool checks every connection it holds (a ``select`` and a
    ``getpeername`` each) whenever a request is assigned or a response closes,
    so one pool shared by eighteen services did work quadratic in their number
    on every sweep. A pool per origin holds one or two connections and checks
    only those; keep-alive reuse is the same. The TLS context is made once, on
    the first ``https`` origin, and shared by every ``https`` pool. Beside the
    pools, :attr:`lean` holds the health probes' and scrapes' own connections
    (:mod:`backends.http1`), with the same TLS context.
    """

    def __init__(self, *, trust_env: bool = False) -> None:
        """Create the transport (no pool and no TLS context yet).

        Args:
            trust_env: Passed to the TLS context (``SSL_CERT_FILE`` and friends).
        """
        self._trust_env = trust_env
        self._pools: dict[tuple[bytes, bytes, int | None], httpx.AsyncHTTPTransport] = {}
        self._tls: ssl.SSLContext | None = None
        """The verifying TLS context, made on the first ``https`` origin (loading the CA
        bundle takes tens of milliseconds: not for an estate that has none)."""
        self._no_tls: ssl.SSLContext | None = None
        self._closed = False
        self.lean = http1.LeanGet(self.tls_context)
        """The health probes' own keep-alive connections (see :mod:`backends.http1`)."""

    def tls_context(self) -> ssl.SSLContext:
        """The verifying TLS context every ``https`` origin shares (made on first use)."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context(trust_env=self._trust_env)
        return self._tls

    def _pool(self, url: httpx.URL) -> httpx.AsyncHTTPTransport:
        key = (url.raw_scheme, url.raw_host, url.port)
        pool = self._pools.pop(key, None)
        if pool is None:
            if url.raw_scheme == b"https":
                context = self.tls_context()
            else:
                if self._no_tls is None:
                    # Trusts no certificate at all: a plain-http pool can never carry TLS.
                    self._no_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context = self._no_tls
            pool = httpx.AsyncHTTPTransport(
                verify=context,
                limits=httpx.Limits(
                    max_connections=POOL_PER_ORIGIN_CONNECTIONS,
                    max_keepalive_connections=POOL_PER_ORIGIN_KEEPALIVE,
                ),
                trust_env=self._trust_env,
            )
        self._pools[key] = pool  # most recently used last
        return pool

    @property
    def origins(self) -> int:
        """Origins holding a pool now."""
        return len(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request through its origin's pool."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        pool = self._pool(request.url)
        while len(self._pools) > MAX_ORIGINS:
            oldest = next(iter(self._pools))
            await self._pools.pop(oldest).aclose()
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        """Close every pool (and the probes' own connections)."""
        self._closed = True
        await self.lean.aclose()
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


class ProbeClient(httpx.AsyncClient):
    """The :class:`httpx.AsyncClient` :func:`make_client` builds, with its transport at hand."""

    def __init__(self, pool: PoolPerOrigin, **kwargs: Any) -> None:
        """Create the client on ``pool`` (the keyword arguments are httpx's)."""
        super().__init__(transport=pool, **kwargs)
        self.pool = pool
        """The per-origin pools, and the probes' lean connections."""

    @property
    def lean(self) -> http1.LeanGet | None:
        """The lean connections, unless proxies are honoured (only httpx knows them)."""
        return None if self.trust_env else self.pool.lean

    async def lean_get(
        self, url: str, *, max_body: int, accept: bytes = b"application/json"
    ) -> http1.Reply:
        """``GET`` through the lean connections, following redirects as httpx does.

        Raises:
            RuntimeError: Proxies are honoured (use httpx).
            httpx.InvalidURL, httpx.UnsupportedProtocol: Not an http(s) URL.
            http1.ProtocolError: A malformed answer, or more than :data:`MAX_REDIRECTS`.
            http1.BodyTooLarge: The body passed ``max_body``.
            http1.ConnectFailed: No connection.
        """
        lean = self.lean
        if lean is None:
            raise RuntimeError("this client honours proxies: use httpx")
        current = httpx.URL(url)
        for _hop in range(MAX_REDIRECTS + 1):
            reply = await _lean_get(lean, current, max_body, accept)
            location = reply.headers.get("location")
            if location is None or reply.status not in _REDIRECTS:
                return reply
            current = _redirect_url(current, location)
        raise http1.ProtocolError(f"too many redirects (more than {MAX_REDIRECTS})")


async def _lean_get(
    lean: http1.LeanGet, url: httpx.URL, max_body: int, accept: bytes = b"application/json"
) -> http1.Reply:
    scheme = url.scheme
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{scheme}://'.")
    if not url.host:
        raise httpx.InvalidURL(f"Request URL is missing a host: {url}")
    return await lean.get(
        scheme,
        url.host,
        url.port or (443 if scheme == "https" else 80),
        url.raw_path,
        url.netloc,
        max_body,
        accept,
    )


def make_client(timeout_s: float = 1.0, *, trust_env: bool = False) -> httpx.AsyncClient:
    """Build the one HTTP client every probe of a console shares.

    Keep-alive connections are pooled per origin (:class:`PoolPerOrigin`), so
    a steady sweep costs no new TCP handshakes and no pool bookkeeping over
    other services' connections; :class:`HealthProber` sends its probes through
    the pool's lean connections (:mod:`backends.http1`) unless ``trust_env``
    asks for proxies, which only httpx honours. Redirects are followed up to
    :data:`MAX_REDIRECTS` for other users of the client;
    :class:`HealthProber` follows them itself so it can name a loop.

    Args:
        timeout_s: Default per-request timeout in seconds (connect, read, write, pool).
        trust_env: Honour ``HTTP(S)_PROXY`` and friends. Off by default: the
            console talks to service endpoints directly, and a proxy set for
            other tools must not silently sit between it and the estate.

    Returns:
        The client; the caller closes it with ``await client.aclose()``.
    """
    return ProbeClient(
        PoolPerOrigin(trust_env=trust_env),
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        headers={"Accept": "application/json", "User-Agent": "acgs-console"},
        trust_env=trust_env,
    )


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
"""Statuses followed when they carry a ``Location`` (as httpx follows them)."""


def _redirect_url(current: httpx.URL, location: str) -> httpx.URL:
    """Where a ``Location`` header leads from ``current`` (httpx's own rules)."""
    try:
        url = httpx.URL(location)
    except httpx.InvalidURL as exc:
        raise http1.ProtocolError(f"Invalid URL in location header: {exc}.") from None
    if url.scheme and not url.host:
        url = url.copy_with(host=current.host)
    if url.is_relative_url:
        url = current.join(url)
    if current.fragment and not url.fragment:
        url = url.copy_with(fragment=current.fragment)
    return url


class _Bad(Exception):
    """Internal: the probe reached a verdict early (state and reason)."""

    def __init__(self, state: ServiceState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


def _leaf_errors(exc: BaseException) -> list[BaseException]:
    """The innermost causes of an exception, through chains and exception groups."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, BaseExceptionGroup):
            stack.extend(cur.exceptions)
            continue
        nxt = cur.__cause__ or cur.__context__
        if nxt is None:
            leaves.append(cur)
        else:
            stack.append(nxt)
    return leaves


def connect_reason(exc: BaseException) -> str:
    """Name a connection failure: "connection refused", "cannot resolve host", ...

    Args:
        exc: The exception the client raised (httpx, requests or the OS's own).

    Returns:
        A short reason for an operator.
    """
    leaves = _leaf_errors(exc)
    if leaves and all(
        isinstance(e, ConnectionRefusedError)
        or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED)
        for e in leaves
    ):
        return "connection refused"
    for e in leaves:
        if isinstance(e, socket.gaierror):
            return f"cannot resolve host ({e.strerror or e})"
    for e in leaves:
        if isinstance(e, OSError) and e.strerror:
            return f"cannot connect: {e.strerror}"
    return f"cannot connect: {exc or type(exc).__name__}"


def _content_type(response: httpx.Response) -> str:
    """The media type of a response, lower-cased, without parameters ("" when absent)."""
    value: str = response.headers.get("content-type", "")
    return value.split(";", 1)[0].strip().lower()


def _looks_like_html(body: bytes) -> bool:
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<title"))


def _is_json_type(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _verdict(seen: str | None, expected: str) -> HashVerdict:
    if seen is None or seen == "":
        return HashVerdict.MISSING
    return HashVerdict.OK if seen == expected else HashVerdict.MISMATCH


async def _read_capped(response: httpx.Response) -> bytes:
    """Read a streamed body, stopping as soon as it passes :data:`MAX_BODY_BYTES`.

    Raises:
        _Bad: When the body is larger than the cap.
    """
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Bad(ServiceState.BAD_RESPONSE, "body over 64 KiB")
    chunks: list[bytes] = []
    size = 0
    # Decoded bytes, so a small compressed body cannot inflate past the cap.
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Bad(ServiceState.BAD_RESPONSE, "body over 64 KiB")
        chunks.append(chunk)
    return b"".join(chunks)


class HealthProber:
    """Probes services' health endpoints and checks their constitutional hash."""

    def __init__(
        self, client: httpx.AsyncClient, expected_hash: str, timeout_s: float = 1.0
    ) -> None:
        """Create a prober.

        Args:
            client: The shared client (see :func:`make_client`); the prober does not close it.
            expected_hash: The constitutional hash every service must carry.
            timeout_s: Deadline for one probe, all redirect hops and the body included.
        """
        self._client = client
        self._lean = client.lean if isinstance(client, ProbeClient) else None
        self._urls: dict[str, httpx.URL] = {}
        self.expected_hash = expected_hash
        self.timeout_s = timeout_s

    async def probe_many(
        self, targets: Iterable[tuple[Environment, str, str]]
    ) -> list[ServiceHealth]:
        """Probe many services concurrently.

        Args:
            targets: ``(environment, service, url)`` triples.

        Returns:
            One result per target, in the order given.
        """
        return list(await asyncio.gather(*(self.probe(e, s, u) for e, s, u in targets)))

    async def probe(self, environment: Environment, service: str, url: str) -> ServiceHealth:
        """Probe one service's health endpoint.

        Never raises for anything the service or the network does; the
        returned state and reason say what happened.

        Args:
            environment: The environment the service belongs to.
            service: The service name.
            url: The full health URL.

        Returns:
            The service's health.
        """
        base: dict[str, Any] = {"environment": environment, "service": service, "url": url}
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._lean is not None:
                    return await self._probe_lean(self._lean, base, url, started)
                return await self._probe(base, url, started)
        except _Bad as bad:
            return ServiceHealth(**base, state=bad.state, reason=bad.reason)
        except (TimeoutError, httpx.TimeoutException):
            return ServiceHealth(
                **base, state=ServiceState.DOWN, reason=f"timeout after {self.timeout_s:g} s"
            )
        except (httpx.ConnectError, http1.ConnectFailed) as exc:
            return ServiceHealth(**base, state=ServiceState.DOWN, reason=connect_reason(exc))
        except http1.BodyTooLarge:
            return ServiceHealth(**base, state=ServiceState.BAD_RESPONSE, reason="body over 64 KiB")
        except (httpx.RemoteProtocolError, httpx.DecodingError, http1.ProtocolError) as exc:
            return ServiceHealth(
                **base,
                state=ServiceState.BAD_RESPONSE,
                reason=f"protocol error: {exc or type(exc).__name__}",
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return ServiceHealth(**base, state=ServiceState.UNKNOWN, reason=f"invalid URL: {exc}")
        except httpx.HTTPError as exc:
            return ServiceHealth(
                **base,
                state=ServiceState.UNKNOWN,
                reason=f"{type(exc).__name__}: {exc or 'no detail'}",
            )
        except Exception as exc:  # the probe must never break the monitor loop
            return ServiceHealth(
                **base,
                state=ServiceState.UNKNOWN,
                reason=f"probe error: {type(exc).__name__}: {exc}",
            )

    async def _probe(self, base: dict[str, Any], url: str, started: float) -> ServiceHealth:
        request = self._client.build_request("GET", url)
        visited = [str(request.url)]
        for _hop in range(MAX_REDIRECTS + 1):
            response = await self._client.send(request, stream=True, follow_redirects=False)
            try:
                next_request = response.next_request
                if next_request is None:
                    body = await _read_capped(response)
                    latency_ms = (time.perf_counter() - started) * 1000.0
                    return self._judge(base, response, body, latency_ms)
            finally:
                await response.aclose()
            target = str(next_request.url)
            if target in visited:
                loop = " -> ".join([*visited[visited.index(target) :], target])
                raise _Bad(ServiceState.BAD_RESPONSE, f"redirect loop: {loop}")
            visited.append(target)
            request = next_request
        raise _Bad(ServiceState.BAD_RESPONSE, f"too many redirects (more than {MAX_REDIRECTS})")

    def _url(self, url: str) -> httpx.URL:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = httpx.URL(url)
            if len(self._urls) < 1024:
                self._urls[url] = parsed
        return parsed

    async def _probe_lean(
        self, lean: http1.LeanGet, base: dict[str, Any], url: str, started: float
    ) -> ServiceHealth:
        current = self._url(url)
        visited = [str(current)]
        for _hop in range(MAX_REDIRECTS + 1):
            reply = await _lean_get(lean, current, MAX_BODY_BYTES)
            location = reply.headers.get("location")
            if location is None or reply.status not in _REDIRECTS:
                latency_ms = (time.perf_counter() - started) * 1000.0
                return self._verdict(
                    base,
                    reply.status,
                    reply.reason,
                    reply.headers.get(HASH_HEADER.lower()),
                    reply.headers.get("content-type", "").split(";", 1)[0].strip().lower(),
                    reply.body,
                    latency_ms,
                )
            current = _redirect_url(current, location)
            target = str(current)
            if target in visited:
                loop = " -> ".join([*visited[visited.index(target) :], target])
                raise _Bad(ServiceState.BAD_RESPONSE, f"redirect loop: {loop}")
            visited.append(target)
        raise _Bad(ServiceState.BAD_RESPONSE, f"too many redirects (more than {MAX_REDIRECTS})")

    def _judge(
        self, base: dict[str, Any], response: httpx.Response, body: bytes, latency_ms: float
    ) -> ServiceHealth:
        """Turn a complete response into a health verdict."""
        return self._verdict(
            base,
            response.status_code,
            response.reason_phrase,
            response.headers.get(HASH_HEADER),
            _content_type(response),
            body,
            latency_ms,
        )

    def _verdict(
        self,
        base: dict[str, Any],
        status: int,
        reason_phrase: str,
        header_hash: str | None,
        media_type: str,
        body: bytes,
        latency_ms: float,
    ) -> ServiceHealth:
        """Turn a complete response (status, hash header, media type, body) into a verdict."""
        fields: dict[str, Any] = {
            **base,
            "latency_ms": latency_ms,
            "http_status": status,
            "header_hash": header_hash,
        }
        if header_hash:
            fields["header_hash_verdict"] = _verdict(header_hash, self.expected_hash)

        document: dict[str, Any] | None = None
        problem: str | None = None
        if media_type == "text/html" or _looks_like_html(body):
            problem = "HTML error page"
        else:
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError):
                problem = "malformed JSON" + ("" if body else " (empty body)")
                if not _is_json_type(media_type):
                    problem += f", content type {media_type or '(none)'!r}"
            else:
                if not isinstance(parsed, dict):
                    problem = f"JSON is a {type(parsed).__name__}, not an object"
                elif not _is_json_type(media_type):
                    problem = f"wrong content type {media_type or '(none)'!r}"
                document = parsed if isinstance(parsed, dict) else None

        if document is not None:
            # The service itself answered: a hash it does not carry is missing, not unknown.
            seen = document.get("constitutional_hash")
            fields["body_hash"] = seen if isinstance(seen, str) else None
            if seen is None or isinstance(seen, str):
                fields["body_hash_verdict"] = _verdict(seen, self.expected_hash)
            else:
                fields["body_hash"] = repr(seen)
                fields["body_hash_verdict"] = HashVerdict.MISMATCH
            if not header_hash:
                fields["header_hash_verdict"] = HashVerdict.MISSING
            version = document.get("version")
            if isinstance(version, str) or (
                isinstance(version, int | float)
                and not isinstance(version, bool)
                and math.isfinite(version)
            ):
                fields["version"] = str(version)

        if not 200 <= status < 300:
            reason = f"HTTP {status} {reason_phrase}".rstrip()
            if 300 <= status < 400:
                reason += " (redirect without a Location)"
            elif problem == "HTML error page":
                reason += " (HTML error page)"
            state = ServiceState.DOWN if status >= 500 else ServiceState.BAD_RESPONSE
            return ServiceHealth(**fields, state=state, reason=reason)
        if problem is not None:
            return ServiceHealth(**fields, state=ServiceState.BAD_RESPONSE, reason=problem)
        assert document is not None
        health = document.get("status")
        if not isinstance(health, str):
            state, reason = ServiceState.DEGRADED, "no 'status' in the health body"
        elif health.strip().lower() in HEALTHY_STATUSES:
            state, reason = ServiceState.UP, ""
        else:
            state, reason = ServiceState.DEGRADED, f"status {health!r}"
        if state is ServiceState.UP:
            # Healthy but not constitutional: say so where the state is shown.
            reason = "; ".join(
                f"{where} hash {verdict.value}"
                for where in ("body", "header")
                if (verdict := fields.get(f"{where}_hash_verdict"))
                in (HashVerdict.MISMATCH, HashVerdict.MISSING)
            )
        return ServiceHealth(**fields, state=state, reason=reason)
