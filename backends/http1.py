"""A lean HTTP/1.1 ``GET`` for the health probes: one keep-alive connection per origin.

The monitor probes eighteen health endpoints every second. Through httpx each
probe cost about 1.5 ms of CPU in the client stack alone (httpx, httpcore, h11,
anyio), about ten times what the request itself needs, and that was most of
the console's CPU. This module does only what a probe needs, on asyncio
streams:

- ``GET`` with a few fixed headers; the response's status, reason phrase,
  headers (names lower-cased; repeated ones joined with ``", "`` as httpx does)
  and its body, read to the end;
- bodies by ``Content-Length``, ``Transfer-Encoding: chunked`` or up to the
  close, ``gzip`` and ``deflate`` decoded, never more than ``max_body`` decoded
  bytes (:class:`BodyTooLarge` as soon as it is passed);
- keep-alive: a connection goes back to its origin's idle list only after a
  complete response that allows reuse; a connection found closed when reused
  is replaced once, as httpcore does; idle ones are dropped after
  :data:`IDLE_EXPIRY_S`;
- TLS with the caller's (verifying) context.

Anything malformed, and a connection lost during the response, raises
:class:`ProtocolError`; no connection at all raises :class:`ConnectFailed`
with the OS's error (``ConnectionRefusedError``, ``socket.gaierror``, a TLS
verification failure, ...) as its cause. Time limits are the caller's
(``asyncio.timeout``): a request cancelled mid-way closes its connection, which
is never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

MAX_HEADER_LINES = 100
"""Response header lines read before the response is refused."""

MAX_LINE_BYTES = 64 * 1024
"""The longest status, header or chunk-size line accepted."""

IDLE_EXPIRY_S = 4.0
"""An idle connection older than this is closed instead of reused (servers often drop
idle keep-alive connections after 5 s; reusing one just as it goes wastes a round trip)."""

MAX_IDLE_PER_ORIGIN = 2
"""Idle connections kept per origin."""

MAX_ORIGINS = 256
"""Origins with idle connections kept; past this the least recently used one's are closed."""

REQUEST_HEADERS = (
    b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nUser-Agent: acgs-console\r\n"
)

_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")

_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: ([^\r\n]*))?\r?\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NO_BODY = frozenset({204, 304})


class ProtocolError(Exception):
    """The peer answered with something that is not an HTTP/1.1 response."""


class BodyTooLarge(Exception):
    """The body (decoded) is larger than the limit; reading stopped there."""


class ConnectFailed(Exception):
    """No connection: the OS's error (refused, unresolvable, TLS refused, ...) is the cause."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete response."""

    status: int
    reason: str
    headers: dict[str, str]
    """Lower-cased names; a repeated header's values joined with ``", "``."""
    body: bytes


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and now - self.idle_since < IDLE_EXPIRY_S
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Decoder:
    """Content-Encoding (gzip, deflate or none), decoding at most ``limit`` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise ProtocolError(f"unsupported content encoding {encoding!r}")
        self.coding = codings[0] if codings else ""
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] = []
        self._z: zlib._Decompress | None = None
        if self.coding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif self.coding == "deflate":
            self._z = zlib.decompressobj()
        self._first = True

    def feed(self, data: bytes) -> None:
        if self._z is None:
            self._keep(data)
            return
        try:
            if self.coding == "deflate" and self._first and data:
                self._first = False
                try:
                    out = self._z.decompress(data, self.limit - self.size + 1)
                except zlib.error:
                    # "deflate" sent raw, without the zlib wrapper (as httpx also accepts).
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                    out = self._z.decompress(data, self.limit - self.size + 1)
            else:
                out = self._z.decompress(data, self.limit - self.size + 1)
            self._keep(out)
            while self._z.unconsumed_tail:
                out = self._z.decompress(self._z.unconsumed_tail, self.limit - self.size + 1)
                self._keep(out)
        except zlib.error as exc:
            raise ProtocolError(f"cannot decode the {self.coding} body: {exc}") from None

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise BodyTooLarge
        if data:
            self.parts.append(data)

    def body(self) -> bytes:
        if self._z is not None:
            try:
                self._keep(self._z.flush())
            except zlib.error as exc:
                raise ProtocolError(f"cannot decode the {self.coding} body: {exc}") from None
        return b"".join(self.parts)


Origin = tuple[str, str, int]


class LeanGet:
    """Keep-alive ``GET`` requests, one small idle list of connections per origin."""

    def __init__(self, tls: Callable[[], ssl.SSLContext]) -> None:
        """Create the client (nothing connects yet).

        Args:
            tls: Returns the verifying TLS context for ``https`` origins (called on the
                first one).
        """
        self._tls = tls
        self._idle: dict[Origin, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._closed = False

    @property
    def idle_connections(self) -> int:
        """Idle keep-alive connections held now."""
        return sum(len(v) for v in self._idle.values())

    @property
    def origins(self) -> int:
        """Origins holding idle connections now."""
        return sum(1 for v in self._idle.values() if v)

    async def get(
        self,
        scheme: str,
        host: str,
        port: int,
        target: bytes,
        host_header: bytes,
        max_body: int,
        accept: bytes = b"application/json",
    ) -> Reply:
        """One ``GET`` (redirects are the caller's).

        Args:
            scheme: ``http`` or ``https``.
            host: The host to connect to.
            port: The port.
            target: The request target (path and query), ASCII.
            host_header: The ``Host`` header's value.
            max_body: Decoded body bytes accepted.
            accept: The ``Accept`` header's value.

        Raises:
            ProtocolError: The answer is not a valid HTTP/1.1 response.
            BodyTooLarge: The body passed ``max_body``.
            ConnectFailed: No connection (refused, unreachable, TLS refused, ...).
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        origin = (scheme, host, port)
        request = b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\n%s\r\n" % (
            target,
            host_header,
            accept,
            REQUEST_HEADERS,
        )
        connection = self._take(origin)
        if connection is not None:
            try:
                return await self._exchange(origin, connection, request, max_body, reused=True)
            except _Stale:
                pass  # the server had closed it: once more on a new connection
        connection = await self._connect(scheme, host, port)
        try:
            return await self._exchange(origin, connection, request, max_body, reused=False)
        except _Stale:
            raise ProtocolError("Server disconnected without sending a response.") from None

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.usable(now):
                return connection
            connection.close()
        return None

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        try:
            if scheme == "https":
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._tls(), server_hostname=host, limit=MAX_LINE_BYTES
                )
            else:
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE_BYTES)
        except OSError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self,
        origin: Origin,
        connection: _Connection,
        request: bytes,
        max_body: int,
        *,
        reused: bool,
    ) -> Reply:
        self._busy.add(connection)
        done = False
        try:
            try:
                connection.writer.write(request)
                await connection.writer.drain()
                line = await connection.reader.readline()
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                if reused:
                    raise _Stale from None
                raise ProtocolError(f"connection lost before the response: {exc}") from None
            if not line:
                raise _Stale
            reply, keep = await self._response(connection.reader, line, max_body)
            done = keep
            return reply
        except asyncio.LimitOverrunError:
            raise ProtocolError("a response line is too long") from None
        except ValueError as exc:  # StreamReader: a line past its limit
            raise ProtocolError(f"malformed response: {exc}") from None
        except OSError as exc:  # reset or broken in the middle of the response
            raise ProtocolError(f"connection lost: {exc.strerror or exc}") from None
        finally:
            self._busy.discard(connection)
            if done and not self._closed:
                self._put(origin, connection)
            else:
                connection.close()

    def _put(self, origin: Origin, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        idle = self._idle.pop(origin, [])
        self._idle[origin] = idle  # most recently used last
        idle.append(connection)
        while len(idle) > MAX_IDLE_PER_ORIGIN:
            idle.pop(0).close()
        while len(self._idle) > MAX_ORIGINS:
            for old in self._idle.pop(next(iter(self._idle))):
                old.close()

    async def _response(
        self, reader: asyncio.StreamReader, line: bytes, max_body: int
    ) -> tuple[Reply, bool]:
        while True:
            match = _STATUS_LINE.fullmatch(line)
            if match is None:
                raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
            version = (int(match.group(1)), int(match.group(2)))
            status = int(match.group(3))
            reason = (match.group(4) or b"").decode("latin-1").strip()
            headers = await self._headers(reader)
            if 100 <= status < 200 and status != 101:
                line = await reader.readline()  # an interim response: the real one follows
                if not line:
                    raise ProtocolError("Server disconnected without sending a response.")
                continue
            break
        if status == 101:
            raise ProtocolError("the server switched protocols")
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = version >= (1, 1) and "close" not in tokens
        decoder = _Decoder(headers.get("content-encoding", ""), max_body)
        transfer = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if status in _NO_BODY:
            keep = keep and (length is None or length.strip() == "0") and transfer is None
        elif transfer is not None:
            codings = [c.strip().lower() for c in transfer.split(",")]
            if codings[-1] != "chunked" or any(c not in ("chunked", "identity") for c in codings):
                raise ProtocolError(f"unsupported transfer encoding {transfer!r}")
            await self._chunked(reader, decoder)
        elif length is not None:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise ProtocolError(f"invalid Content-Length {length!r}")
            size = int(next(iter(values)))
            if decoder.coding == "" and size > max_body:
                raise BodyTooLarge
            remaining = size
            while remaining:
                data = await reader.read(min(remaining, 65536))
                if not data:
                    raise ProtocolError("peer closed connection without sending complete body")
                remaining -= len(data)
                decoder.feed(data)
        else:
            keep = False  # the body ends when the connection does
            while data := await reader.read(65536):
                decoder.feed(data)
        return Reply(status, reason, headers, decoder.body()), keep

    @staticmethod
    async def _headers(reader: asyncio.StreamReader) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES + 1):
            line = await reader.readline()
            if not line:
                raise ProtocolError("peer closed connection in the middle of the headers")
            if line in (b"\r\n", b"\n"):
                return headers
            name, sep, value = line.partition(b":")
            if not sep or _TOKEN.fullmatch(name) is None:
                raise ProtocolError(f"malformed header line {line[:80]!r}")
            key = name.decode("ascii").lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        raise ProtocolError(f"more than {MAX_HEADER_LINES} header lines")

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader, decoder: _Decoder) -> None:
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise ProtocolError("peer closed connection in the middle of a chunked body")
            size_text = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                # Hex digits only: int(x, 16) would also take "0x10", "1_0" or "+f".
                raise ProtocolError(f"malformed chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                for _ in range(MAX_HEADER_LINES + 1):  # trailers, then the blank line
                    trailer = await reader.readline()
                    if not trailer:
                        raise ProtocolError("peer closed connection in the chunked trailer")
                    if trailer in (b"\r\n", b"\n"):
                        return
                raise ProtocolError("too many trailer lines")
            while size:
                data = await reader.read(min(size, 65536))
                if not data:
                    raise ProtocolError("peer closed connection in the middle of a chunk")
                size -= len(data)
                decoder.feed(data)
            if await reader.readline() not in (b"\r\n", b"\n"):
                raise ProtocolError("a chunk does not end with CRLF")

    async def aclose(self) -> None:
        """Close every connection (idle and busy)."""
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in list(self._busy):
            connection.close()


class _Stale(Exception):
    """A reused connection turned out to be closed before any answer."""
