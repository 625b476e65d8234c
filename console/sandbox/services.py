"""The sandbox's ACGS orchestrators and environment ingresses.

One :class:`SandboxService` is one orchestrator of one environment: its own
loopback listener answering ``GET /health`` (the ACGS JSON body and the
``X-Constitutional-Hash`` header) and ``GET /metrics`` (Prometheus exposition
from its own registry, with the ACGS metric names labelled by environment and
service). It also "handles" traffic the environment's :class:`Ingress`
dispatches to it in-process: a latency drawn so a healthy service has P99 around
3 ms (median about 1 ms), a cache hit about nine times in ten, and the metrics
recorded.

Faults (see :mod:`console.sandbox.faults`) are read from the shared
:class:`FaultBoard` on every request, so an injected fault takes effect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from console.sandbox.faults import Fault, FaultKind, FaultTable
from console.sandbox.httpd import HttpServer, Request, Response

HASH_HEADER = "X-Constitutional-Hash"
SERVED_BY_HEADER = "X-ACGS-Served-By"

#: Fine around 1-10 ms, where the runbook's P99 < 5 ms target lives.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

#: Versions the sandbox reports: green is the release being rolled out.
VERSIONS = {"blue": "2.3.0", "green": "2.4.0"}

#: Median latency of a cache hit; lognormal spread chosen so P99 is about 3 ms.
_HIT_MEDIAN_S = 0.0009
_MISS_FACTOR = 1.6
_LATENCY_SIGMA = 0.45
_HIT_RATIO = 0.92
_CACHE_WINDOW = 500
_COMPLIANCE_WINDOW = 200

GARBAGE_BODY = b"\x00\xff<html>upstream said: \xde\xad\xbe\xef not json {{{"


class FaultBoard:
    """The fault table plus a notification whenever it changes (for hung requests)."""

    def __init__(self) -> None:
        """Start with no faults."""
        self.table = FaultTable()
        self._changed = asyncio.Event()
        self.held = 0
        """Requests currently held by a *hang* fault."""

    def notify(self) -> None:
        """Wake everything waiting on a change (call after editing :attr:`table`)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_while(self, still: Callable[[], bool], request: Request) -> None:
        """Wait until ``still()`` turns false, re-checking on every change.

        Args:
            still: The condition to wait out (e.g. "this service is hung").
            request: The request being held; when its client gives up, so do we.

        Raises:
            ConnectionAbortedError: The client closed the connection meanwhile (so a long
                hang does not pile up handlers for clients long gone).
        """
        self.held += 1
        try:
            while still():
                if request.peer_closed():
                    raise ConnectionAbortedError("client went away during a hang")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._changed.wait()
        finally:
            self.held -= 1


class _Window:
    """A fixed-size window of booleans with a running count of the true ones."""

    def __init__(self, size: int, fill: Callable[[], bool]) -> None:
        self._items: deque[bool] = deque((fill() for _ in range(size)), maxlen=size)
        self._true = sum(self._items)

    def push(self, item: bool) -> None:
        if len(self._items) == self._items.maxlen:
            self._true -= self._items[0]
        self._items.append(item)
        self._true += item

    @property
    def ratio(self) -> float:
        return self._true / len(self._items) if self._items else math.nan


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class SandboxService:
    """One ACGS orchestrator of one environment, with its own listener and registry."""

    def __init__(
        self,
        environment: str,
        name: str,
        constitutional_hash: str,
        board: FaultBoard,
        rng: random.Random,
    ) -> None:
        """Create the service (its listener is started by the fleet).

        Args:
            environment: ``blue`` or ``green``.
            name: One of the nine orchestrator names.
            constitutional_hash: The hash a healthy service carries.
            board: Shared fault board.
            rng: Random source for latencies, cache hits and errors.
        """
        self.environment = environment
        self.name = name
        self.version = VERSIONS.get(environment, "1.0.0")
        self.constitutional_hash = constitutional_hash
        self._board = board
        self._rng = rng
        self.registry = CollectorRegistry()
        labels = ("environment", "service")
        values = (environment, name)
        self._duration = Histogram(
            "acgs_request_duration_seconds",
            "Time the orchestrator took to handle a request.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(*values)
        self._requests = Counter(
            "acgs_requests_total",
            "Requests handled, by status code.",
            (*labels, "status_code"),
            registry=self.registry,
        )
        # Children created up front so rate() has a baseline from the first scrape.
        for code in ("200", "500"):
            self._requests.labels(*values, code)
        self._cache_hit_rate = Gauge(
            "acgs_cache_hit_rate",
            "Share of recent lookups served from cache (0..1).",
            labels,
            registry=self.registry,
        ).labels(*values)
        self._compliance = Gauge(
            "acgs_constitutional_compliance_score",
            "Share of recent responses that passed constitutional validation (0..100).",
            labels,
            registry=self.registry,
        ).labels(*values)
        self._hash_failures = Counter(
            "acgs_constitutional_hash_validation_failures_total",
            "Requests whose constitutional hash failed validation.",
            labels,
            registry=self.registry,
        ).labels(*values)
        self._auth_failures = Counter(
            "acgs_authentication_failures_total",
            "Requests rejected for missing or bad credentials.",
            labels,
            registry=self.registry,
        ).labels(*values)
        # The cache has been warm since start-up: its window starts from real draws.
        self._cache_window = _Window(_CACHE_WINDOW, lambda: rng.random() < _HIT_RATIO)
        self._compliance_window = _Window(_COMPLIANCE_WINDOW, lambda: True)
        self._cache_hit_rate.set(self._cache_window.ratio)
        self._compliance.set(100.0 * self._compliance_window.ratio)
        self.server = HttpServer(self.handle)

    @property
    def base_url(self) -> str:
        """The service's base URL."""
        return self.server.url

    def faults(self) -> dict[FaultKind, Fault]:
        """The faults in effect on this service right now."""
        return self._board.table.effective(self.environment, self.name)

    def _hung(self) -> bool:
        return FaultKind.HANG in self.faults()

    async def handle(self, request: Request) -> Response:
        """Answer a request made to the service's own listener.

        Args:
            request: The request.

        Returns:
            ``/health``, ``/metrics``, or the traffic response for any other path.
        """
        if self._hung():
            await self._board.wait_while(self._hung, request)
        if request.method == "GET" and request.path == "/health":
            return self.health_response()
        if request.method == "GET" and request.path == "/metrics":
            return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        return await self.handle_traffic(request)

    def _hash_headers(
        self, faults: dict[FaultKind, Fault]
    ) -> tuple[list[tuple[str, str]], str | None]:
        if FaultKind.MISSING_HASH in faults:
            return [], None
        wrong = faults.get(FaultKind.WRONG_HASH)
        carried = str(wrong.value) if wrong is not None else self.constitutional_hash
        return [(HASH_HEADER, carried)], carried

    def health_response(self) -> Response:
        """Build the ``/health`` answer under the current faults.

        Returns:
            The ACGS health JSON with its hash header, or what the faults make of it.
        """
        faults = self.faults()
        headers, carried = self._hash_headers(faults)
        if FaultKind.GARBAGE in faults:
            return Response(200, GARBAGE_BODY, "application/json", headers)
        error_rate = faults.get(FaultKind.ERROR_RATE)
        degraded = error_rate is not None and float(error_rate.value or 0.0) > 0.0
        body: dict[str, object] = {
            "status": "degraded" if degraded else "healthy",
            "service": self.name,
            "version": self.version,
            "timestamp": _now_iso(),
        }
        if carried is not None:
            body["constitutional_hash"] = carried
        body["environment"] = self.environment
        return Response(200, json.dumps(body).encode(), "application/json", headers)

    def _draw_latency(self, hit: bool) -> float:
        median = _HIT_MEDIAN_S if hit else _HIT_MEDIAN_S * _MISS_FACTOR
        return self._rng.lognormvariate(math.log(median), _LATENCY_SIGMA)

    async def handle_traffic(self, request: Request) -> Response:
        """Handle one unit of ACGS traffic: latency, cache, errors, hash, metrics.

        Args:
            request: The request (from the ingress or straight to the service).

        Returns:
            The traffic response.
        """
        faults = self.faults()
        if FaultKind.HANG in faults:
            await self._board.wait_while(self._hung, request)
            faults = self.faults()
        headers, carried = self._hash_headers(faults)
        headers.append((SERVED_BY_HEADER, f"{self.environment}/{self.name}"))
        if "authorization" not in request.headers:
            self._auth_failures.inc()
            self._requests.labels(self.environment, self.name, "401").inc()
            return Response(401, b'{"error":"missing credentials"}', "application/json", headers)
        cache_fault = faults.get(FaultKind.CACHE_MISS)
        hit_ratio = float(cache_fault.value or 0.0) if cache_fault is not None else _HIT_RATIO
        hit = self._rng.random() < hit_ratio
        latency = self._draw_latency(hit)
        slow = faults.get(FaultKind.SLOW)
        if slow is not None:
            latency *= float(slow.value or 1.0)
        # The drawn latency is what the service reports: the event loop's timer
        # granularity and a busy host would otherwise make a healthy sandbox look
        # unhealthy. The client still waits that long for real.
        await asyncio.sleep(latency)
        error = faults.get(FaultKind.ERROR_RATE)
        failed = error is not None and self._rng.random() < float(error.value or 0.0)
        status = 500 if failed else 200
        request_hash = request.headers.get(HASH_HEADER.lower())
        valid = carried == self.constitutional_hash and request_hash in (
            None,
            self.constitutional_hash,
        )
        if not valid:
            self._hash_failures.inc()
        self._compliance_window.push(valid)
        self._cache_window.push(hit)
        self._compliance.set(100.0 * self._compliance_window.ratio)
        self._cache_hit_rate.set(self._cache_window.ratio)
        self._duration.observe(latency)
        self._requests.labels(self.environment, self.name, str(status)).inc()
        if FaultKind.GARBAGE in faults:
            return Response(status, GARBAGE_BODY, "application/json", headers)
        payload: dict[str, object] = {
            "environment": self.environment,
            "service": self.name,
            "cache": "hit" if hit else "miss",
        }
        if failed:
            payload["error"] = "injected failure"
        if carried is not None:
            payload["constitutional_hash"] = carried
        return Response(status, json.dumps(payload).encode(), "application/json", headers)


class Ingress:
    """An environment's front door: dispatches traffic round-robin to its nine services."""

    def __init__(
        self,
        environment: str,
        services: list[SandboxService],
        constitutional_hash: str,
        board: FaultBoard,
    ) -> None:
        """Create the ingress (its listener is started by the fleet).

        Args:
            environment: ``blue`` or ``green``.
            services: The environment's services, in dispatch order.
            constitutional_hash: The environment's expected hash.
            board: Shared fault board.
        """
        self.environment = environment
        self._services = services
        self._hash = constitutional_hash
        self._board = board
        self._next = 0
        self.server = HttpServer(self.handle)

    def _hung(self) -> bool:
        return FaultKind.HANG in self._board.table.environment_faults(self.environment)

    async def handle(self, request: Request) -> Response:
        """Answer ``/health`` for the environment, or dispatch traffic to a service.

        Args:
            request: The request.

        Returns:
            The chosen service's traffic response, or 503 when that service is down.
        """
        if self._hung():
            await self._board.wait_while(self._hung, request)
        if request.method == "GET" and request.path == "/health":
            return self._health()
        service = self._services[self._next]
        self._next = (self._next + 1) % len(self._services)
        if FaultKind.DOWN in service.faults():
            body = json.dumps({"error": "service unavailable", "service": service.name}).encode()
            return Response(
                503,
                body,
                "application/json",
                [(SERVED_BY_HEADER, f"{self.environment}/{service.name}")],
            )
        return await service.handle_traffic(request)

    def _health(self) -> Response:
        down = [s.name for s in self._services if FaultKind.DOWN in s.faults()]
        body = {
            "status": "degraded" if down else "healthy",
            "service": f"{self.environment}-ingress",
            "environment": self.environment,
            "services_down": down,
            "timestamp": _now_iso(),
            "constitutional_hash": self._hash,
        }
        return Response(
            200, json.dumps(body).encode(), "application/json", [(HASH_HEADER, self._hash)]
        )
