"""A minimal HTTP/1.1 keep-alive server and client on raw asyncio streams.

This module owns the wire format of the sandbox: every listener of the sandbox
fleet (the eighteen orchestrators, the two ingresses and the control endpoint)
is an :class:`HttpServer`, and the traffic generator talks through
:class:`HttpConnection`. Both are deliberately small: the sandbox must serve
150 requests/s in well under a quarter of one core, which a full web framework
or a heavy client would not leave room for.

Only what the sandbox needs is implemented: request line, headers,
``Content-Length`` bodies, keep-alive, and on the client side also chunked and
read-until-close bodies (HAProxy's own error pages).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

_REASONS = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

#: Largest request body the sandbox accepts (control requests are tiny).
MAX_BODY = 64 * 1024


class HttpProtocolError(Exception):
    """The peer sent something that is not the HTTP/1.1 the sandbox speaks."""


@dataclass(slots=True)
class Request:
    """One parsed HTTP request.

    Attributes:
        method: Upper-case request method.
        path: Request target without the query string.
        query: The raw query string ("" when absent).
        headers: Header names lower-cased; the last value wins.
        body: The request body.
        peer_closed: Whether the client has gone away (for handlers that wait long).
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""
    peer_closed: Callable[[], bool] = field(default=lambda: False)


@dataclass(slots=True)
class Response:
    """One HTTP response to serialise.

    Attributes:
        status: Status code.
        body: Body bytes.
        content_type: Value of the ``Content-Type`` header ("" to omit it).
        headers: Extra headers, in order.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self, keep_alive: bool) -> bytes:
        """Serialise the response, head and body, into one buffer.

        Args:
            keep_alive: Whether the connection stays open afterwards.

        Returns:
            The bytes to write on the wire.
        """
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}"]
        if self.content_type:
            lines.append(f"Content-Type: {self.content_type}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]


def _parse_head(head: bytes) -> tuple[list[str], list[str], dict[str, str]]:
    """Split an HTTP message head into its first line parts and headers.

    Args:
        head: The bytes up to and including the blank line.

    Returns:
        The first line split on spaces (at most three parts) and the headers.

    Raises:
        HttpProtocolError: When the head is not decodable or malformed.
    """
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
        raise HttpProtocolError("undecodable head") from exc
    lines = text.split("\r\n")
    first = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpProtocolError(f"malformed header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return first, lines, headers


class HttpServer:
    """One loopback HTTP/1.1 listener that can be closed and reopened on its port.

    Closing drops the listening socket and every open connection, so clients see
    "connection refused" (the sandbox's *down* fault); reopening binds the same
    port again.
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        """Create the listener (not yet bound).

        Args:
            handler: Coroutine turning a request into a response.
            host: Address to bind; loopback unless told otherwise.
            port: Port to bind; 0 picks a free one on first start.
        """
        self._handler = handler
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """Base URL of the listener, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        """Whether the listening socket is open."""
        return self._server is not None

    async def start(self) -> None:
        """Bind and start accepting; on a restart the same port is bound again."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True, backlog=128
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop every open connection (and in-flight handler)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # always inside the connection task
        self._tasks.add(task)
        self._writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Small request/response pairs: Nagle would add ~40 ms per exchange.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            try:
                request, keep_alive = await self._read_request(reader, head)
                request.peer_closed = reader.at_eof
            except HttpProtocolError as exc:
                writer.write(Response(400, str(exc).encode(), "text/plain").encode(False))
                await writer.drain()
                return
            try:
                response = await self._handler(request)
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as exc:
                # A handler bug must cost one request, never the connection loop.
                print(f"sandbox: {request.method} {request.path}: {exc!r}", file=sys.stderr)
                response = Response(500, f"internal error: {exc}".encode(), "text/plain")
                keep_alive = False
            writer.write(response.encode(keep_alive))
            await writer.drain()
            if not keep_alive:
                return

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader, head: bytes) -> tuple[Request, bool]:
        first, _, headers = _parse_head(head)
        if len(first) != 3 or not first[2].startswith("HTTP/1."):
            raise HttpProtocolError(f"malformed request line {first!r}")
        method, target, version = first
        if "transfer-encoding" in headers:
            raise HttpProtocolError("chunked request bodies are not supported")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            raise HttpProtocolError("bad Content-Length") from exc
        if length < 0 or length > MAX_BODY:
            raise HttpProtocolError(f"Content-Length {length} out of range")
        body = await reader.readexactly(length) if length else b""
        path, _, query = target.partition("?")
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and not (
            version == "HTTP/1.0" and connection != "keep-alive"
        )
        return Request(method.upper(), path, query, headers, body), keep_alive


@dataclass(slots=True)
class ClientResponse:
    """A response read by :class:`HttpConnection`.

    Attributes:
        status: Status code.
        headers: Header names lower-cased.
        body: Body bytes.
    """

    status: int
    headers: dict[str, str]
    body: bytes


class HttpConnection:
    """One keep-alive client connection to one ``host:port``; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        """Prepare a connection (opened lazily on the first request).

        Args:
            host: Server address.
            port: Server port.
        """
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> ClientResponse:
        """Send one request and read its response.

        Args:
            method: Request method.
            path: Request target.
            headers: Extra request headers.
            body: Request body.

        Returns:
            The response.

        Raises:
            OSError: When the connection cannot be made or breaks.
            HttpProtocolError: When the response is malformed.
            asyncio.IncompleteReadError: When the server closes mid-response.
        """
        reused = self._writer is not None and not self._writer.is_closing()
        try:
            return await self._exchange(method, path, headers, body)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            partial = getattr(exc, "partial", b"")
            # A kept-alive connection the server closed while idle fails before a single
            # byte comes back; an idempotent request is then simply sent again, once.
            if not (reused and not partial and method in ("GET", "HEAD")):
                raise
        return await self._exchange(method, path, headers, body)

    async def _exchange(
        self, method: str, path: str, headers: dict[str, str] | None, body: bytes
    ) -> ClientResponse:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader, writer = self._reader, self._writer
        assert reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if headers:
            lines.extend(f"{name}: {value}" for name, value in headers.items())
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            return await self._read_response(reader, method)
        except BaseException:
            self.close()
            raise

    async def _read_response(self, reader: asyncio.StreamReader, method: str) -> ClientResponse:
        head = await reader.readuntil(b"\r\n\r\n")
        first, _, headers = _parse_head(head)
        if len(first) < 2 or not first[0].startswith("HTTP/1."):
            raise HttpProtocolError(f"malformed status line {first!r}")
        try:
            status = int(first[1])
        except ValueError as exc:
            raise HttpProtocolError(f"bad status {first[1]!r}") from exc
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError as exc:
                raise HttpProtocolError("bad Content-Length") from exc
            body = await reader.readexactly(length)
        else:
            body = await reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return ClientResponse(status, headers, body)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise HttpProtocolError("bad chunk size") from exc
            if size == 0:
                # Trailers (normally none) end with an empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    def close(self) -> None:
        """Close the socket (the next request reconnects)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = None
        self._writer = None
