"""The sandbox's traffic generator and its in-process router.

The generator sends real HTTP requests at a steady rate (150 requests/s by
default) over a few raw keep-alive connections. With a *target* (the HAProxy
frontend) every request goes there and the load balancer decides where it
lands; without one, the :class:`SplitRouter` picks blue or green for each
request according to the green percentage set through ``/control/split`` and
the request goes to that environment's ingress. Optional *probe* streams send a
fixed rate straight to one environment regardless of the split, the way a
performance validation loads green before it takes user traffic.

Requests never pile up: each destination has a bounded pool of connections,
and a request that finds the pool exhausted (a hung backend) is dropped and
counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from console.sandbox.httpd import HttpConnection, HttpProtocolError

#: API paths the generated traffic cycles through (the ingress ignores them).
_PATHS = (
    "/api/v1/constitutional/validate",
    "/api/v1/policies/evaluate",
    "/api/v1/governance/decisions",
    "/api/v1/cache/lookup",
)
_TICK_S = 0.02
_REQUEST_TIMEOUT_S = 2.0
_MAX_CONNECTIONS = 32
#: Idle connections older than this are closed (HAProxy drops idle ones after 10 s).
_IDLE_CLOSE_S = 5.0


class SplitRouter:
    """Blue/green choice honouring a green percentage, deterministically.

    It spreads green requests evenly (error diffusion, like a weighted
    round-robin), so 30 % green means exactly 3 in every 10 requests.
    """

    def __init__(self, green_percentage: float = 0.0) -> None:
        """Create the router.

        Args:
            green_percentage: Share of requests for green, 0..100.
        """
        self._green = 0.0
        self._credit = 0.0
        self.green_percentage = green_percentage

    @property
    def green_percentage(self) -> float:
        """Share of requests routed to green, 0..100."""
        return self._green

    @green_percentage.setter
    def green_percentage(self, value: float) -> None:
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"green_percentage must be between 0 and 100, got {value:g}")
        self._green = float(value)
        self._credit = 0.0

    def pick(self) -> str:
        """Choose the environment for the next request.

        Returns:
            ``blue`` or ``green``.
        """
        self._credit += self._green
        if self._credit >= 100.0:
            self._credit -= 100.0
            return "green"
        return "blue"


@dataclass
class TrafficStats:
    """What the generator has sent and what came back."""

    sent: int = 0
    completed: int = 0
    dropped: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    status: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        """The stats as a JSON-ready mapping.

        Returns:
            Counts of sent, completed, dropped, errors, status codes, environments.
        """
        return {
            "sent": self.sent,
            "completed": self.completed,
            "dropped": self.dropped,
            "errors": dict(self.errors),
            "status": dict(self.status),
            "served_by_environment": dict(self.served_by),
        }


class _Destination:
    """A bounded pool of keep-alive connections to one ``host:port``."""

    def __init__(self, url: str, headers: dict[str, str], stats: TrafficStats) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"traffic target must be http://host:port, got {url!r}")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port
        self._headers = headers
        self._stats = stats
        self._idle: list[tuple[HttpConnection, float]] = []
        self._busy = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._path_index = 0

    def send(self) -> None:
        """Start one request, or drop it when every connection is busy."""
        self._stats.sent += 1
        if self._idle:
            conn = self._idle.pop()[0]
        elif self._busy < _MAX_CONNECTIONS:
            conn = HttpConnection(self._host, self._port)
        else:
            self._stats.dropped += 1
            return
        self._busy += 1
        path = _PATHS[self._path_index]
        self._path_index = (self._path_index + 1) % len(_PATHS)
        task = asyncio.create_task(self._one(conn, path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, conn: HttpConnection, path: str) -> None:
        stats = self._stats
        reusable = False
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                response = await conn.request("GET", path, self._headers)
            stats.completed += 1
            stats.status[str(response.status)] += 1
            served = response.headers.get("x-acgs-served-by", "")
            stats.served_by[served.partition("/")[0] or "unknown"] += 1
            reusable = True
        except TimeoutError:
            stats.errors["timeout"] += 1
        except ConnectionRefusedError:
            stats.errors["connection_refused"] += 1
        except (OSError, asyncio.IncompleteReadError, HttpProtocolError) as exc:
            stats.errors[type(exc).__name__] += 1
        finally:
            self._busy -= 1
            if reusable:
                self._idle.append((conn, asyncio.get_running_loop().time()))
            else:
                conn.close()

    def prune(self, now: float) -> None:
        """Close connections idle for longer than the servers keep them.

        Args:
            now: The event loop's current time.
        """
        # The list is a stack: the least recently used connections are at the bottom.
        while self._idle and now - self._idle[0][1] > _IDLE_CLOSE_S:
            self._idle.pop(0)[0].close()

    async def close(self) -> None:
        """Cancel in-flight requests and close every connection."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn, _ in self._idle:
            conn.close()
        self._idle.clear()


class TrafficGenerator:
    """Steady-rate HTTP traffic through a target URL or the in-process router."""

    def __init__(
        self,
        ingress: dict[str, str],
        constitutional_hash: str,
        rate: float = 150.0,
        target: str | None = None,
    ) -> None:
        """Create the generator (call :meth:`start` to run it).

        Args:
            ingress: Environment -> ingress base URL, for the router and probes.
            constitutional_hash: Hash sent in each request's header.
            rate: Requests per second of the main stream.
            target: Where the main stream goes; ``None`` for the in-process router.
        """
        self._ingress = dict(ingress)
        self._headers = {
            "Authorization": "Bearer sandbox-traffic",
            "X-Constitutional-Hash": constitutional_hash,
            "User-Agent": "acgs-sandbox-traffic/1",
        }
        self.router = SplitRouter()
        self.stats = TrafficStats()
        self._rate = 0.0
        self._target: str | None = None
        self._probes: dict[str, float] = {}
        self._destinations: dict[str, _Destination] = {}
        self._task: asyncio.Task[None] | None = None
        self._set(rate, target)

    @staticmethod
    def _check_rate(rate: float, what: str) -> float:
        if not 0.0 <= rate <= 5000.0:
            raise ValueError(f"{what} must be between 0 and 5000 requests/s, got {rate:g}")
        return float(rate)

    def _set(self, rate: float, target: str | None) -> None:
        rate = self._check_rate(rate, "rate")
        if target is not None:
            _Destination(target, self._headers, self.stats)  # validates the URL
        self._rate = rate
        self._target = target

    @property
    def rate(self) -> float:
        """Requests per second of the main stream."""
        return self._rate

    @property
    def target(self) -> str | None:
        """Target URL of the main stream, or ``None`` when the router is used."""
        return self._target

    def configure(
        self,
        rate: float | None = None,
        target: str | None = None,
        *,
        set_target: bool = False,
        probes: dict[str, float] | None = None,
    ) -> None:
        """Change the rate, the target and/or the probe streams.

        Args:
            rate: New main-stream rate (unchanged when ``None``).
            target: New target URL, or ``None`` for the router (only with ``set_target``).
            set_target: Whether ``target`` is to be applied.
            probes: Environment -> extra requests/s sent straight to its ingress.

        Raises:
            ValueError: On a bad rate, URL or environment.
        """
        new_probes = dict(self._probes)
        if probes is not None:
            new_probes = {}
            for env, value in probes.items():
                if env not in self._ingress:
                    raise ValueError(f"unknown environment {env!r} for a probe stream")
                checked = self._check_rate(float(value), f"probe rate for {env}")
                if checked > 0:
                    new_probes[env] = checked
        self._set(self._rate if rate is None else rate, target if set_target else self._target)
        self._probes = new_probes

    def state(self) -> dict[str, Any]:
        """The generator's settings and counts, JSON-ready.

        Returns:
            Target, rate, probes, router split and stats.
        """
        return {
            "target": self._target,
            "rate": self._rate,
            "probe": dict(self._probes),
            "router_active": self._target is None,
            "green_percentage": self.router.green_percentage,
            "stats": self.stats.as_json(),
        }

    def _destination(self, url: str) -> _Destination:
        dest = self._destinations.get(url)
        if dest is None:
            dest = self._destinations[url] = _Destination(url, self._headers, self.stats)
        return dest

    def start(self) -> None:
        """Start sending (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sandbox-traffic")

    async def stop(self) -> None:
        """Stop sending and close every connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for dest in self._destinations.values():
            await dest.close()
        self._destinations.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Per stream: (rate it was started with, start time, requests due so far).
        started: dict[str, tuple[float, float, int]] = {}
        pruned = loop.time()
        while True:
            await asyncio.sleep(_TICK_S)
            now = loop.time()
            streams = {"main": self._rate, **{f"probe:{e}": r for e, r in self._probes.items()}}
            for name, rate in streams.items():
                base = started.get(name)
                if base is None or base[0] != rate:
                    started[name] = base = (rate, now, 0)
                due = int((now - base[1]) * rate) - base[2]
                if due > rate:
                    # The loop was starved for over a second: do not burst to catch up.
                    started[name] = (rate, now, 0)
                    continue
                if due <= 0:
                    continue
                started[name] = (base[0], base[1], base[2] + due)
                for _ in range(due):
                    self._send_one(name)
            for name in [n for n in started if n not in streams]:
                del started[name]
            if now - pruned > 1.0:
                pruned = now
                for dest in self._destinations.values():
                    dest.prune(now)

    def _send_one(self, stream: str) -> None:
        if stream.startswith("probe:"):
            url = self._ingress[stream.partition(":")[2]]
        elif self._target is not None:
            url = self._target
        else:
            url = self._ingress[self.router.pick()]
        self._destination(url).send()
