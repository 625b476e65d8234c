"""Metrics without Prometheus: scrape the services' ``/metrics`` directly.

This module owns :class:`DirectScrapeSource`, the embedded default when no
Prometheus is configured. Every fetch GETs each service's ``/metrics`` (one
shared :class:`httpx.AsyncClient`, concurrently, each bounded by its timeout),
parses only the sample lines of the series it uses (:func:`parse_exposition`),
keeps a ring of samples per service covering the window, and computes what the
default PromQL templates compute:

- requests/s: ``sum(rate(acgs_requests_total))``, the rate from counter deltas
  with counter resets handled as Prometheus does (a drop means the counter
  restarted from zero);
- P99: ``histogram_quantile(0.99, sum by (le) (rate(..._bucket)))`` with the
  same linear interpolation inside the bucket;
- error rate and hash-validation failure rate: 5xx / failures rate over the
  request rate; authentication failures per minute;
- cache hit rate: the average of the gauges; compliance score: their minimum.

A rate needs two scrapes of a service inside the window; until then the value
is unknown ("not enough history yet"), never zero. Only services whose newest
successful scrape is younger than ``max_age_s`` take part (a service that stops
answering drops out, like a series Prometheus marks stale).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from backends import http1
from backends.health import ProbeClient, connect_reason
from backends.metrics import METRIC_NAMES, metric_value
from backends.models import Environment, EnvironmentMetrics, MetricValue, utcnow

MAX_EXPOSITION_BYTES = 16 * 1024 * 1024
"""A ``/metrics`` body larger than this is refused (reading stops past it)."""

REQUESTS = "acgs_requests_total"
DURATION_BUCKET = "acgs_request_duration_seconds_bucket"
CACHE_HIT = "acgs_cache_hit_rate"
COMPLIANCE = "acgs_constitutional_compliance_score"
HASH_FAILURES = "acgs_constitutional_hash_validation_failures_total"
AUTH_FAILURES = "acgs_authentication_failures_total"

_STATUS_LABELS = ("status_code", "code", "status")
_EXPOSITION_TYPES = frozenset({"", "text/plain", "application/openmetrics-text"})
_ACCEPT = b"text/plain;version=0.0.4;q=1,*/*;q=0.1"
"""The text exposition, which :func:`parse_exposition` reads (what Prometheus asks for)."""


class _ScrapeError(Exception):
    """Internal: a scrape answered with something that is not a usable exposition."""


_FIVE_XX = re.compile(r"^5\d\d$")


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile`` over cumulative buckets.

    Args:
        q: The quantile, 0..1.
        buckets: ``(upper bound, cumulative count)`` pairs, any order; must include +Inf.

    Returns:
        The interpolated quantile; NaN when there is nothing to compute from.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets)
    if len(ordered) < 2 or ordered[-1][0] != math.inf:
        return math.nan
    # Rates of cumulative buckets can come out non-monotonic by float error; Prometheus
    # evens them out the same way.
    counts: list[float] = []
    for _, count in ordered:
        counts.append(max(count, counts[-1]) if counts else count)
    total = counts[-1]
    if total <= 0 or math.isnan(total):
        return math.nan
    rank = q * total
    b = bisect.bisect_left(counts, rank, 0, len(counts) - 1)
    if b == len(counts) - 1:
        return ordered[-2][0]
    if b == 0 and ordered[0][0] <= 0:
        return ordered[0][0]
    start, end, count = 0.0, ordered[b][0], counts[b]
    if b > 0:
        start = ordered[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count <= 0:
        return end
    return start + (end - start) * (rank / count)


def _increase(values: Sequence[float]) -> float:
    """A counter's increase over consecutive samples, counting each reset as a restart at 0."""
    total = 0.0
    for before, after in itertools.pairwise(values):
        total += after - before if after >= before else after
    return total


@dataclass(frozen=True, slots=True)
class TargetSample:
    """What one scrape of one service said, reduced to what the metrics need.

    Attributes:
        t: Monotonic time of the scrape (seconds).
        at: Wall time of the scrape.
        requests: Sum of ``acgs_requests_total`` over its series; None when not exported.
        errors_5xx: The 5xx part of that sum.
        buckets: ``le`` -> cumulative count, summed over the histogram's series.
        hash_failures: Sum of the hash-validation failure counter; None when not exported.
        auth_failures: Sum of the authentication failure counter; None when not exported.
        cache_hit: The cache hit gauges' values.
        compliance: The compliance score gauges' values.
    """

    t: float
    at: datetime
    requests: float | None
    errors_5xx: float
    buckets: dict[float, float]
    hash_failures: float | None
    auth_failures: float | None
    cache_hit: tuple[float, ...]
    compliance: tuple[float, ...]


_WANTED = frozenset(
    {REQUESTS, DURATION_BUCKET, CACHE_HIT, COMPLIANCE, HASH_FAILURES, AUTH_FAILURES}
)
"""The sample names the metrics are computed from; every other line is skipped unread."""

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"'
_LABEL_PAIR = re.compile(_LABEL)
_LABEL_BLOCK = rf"\{{[ \t]*(?:{_LABEL}[ \t]*(?:,[ \t]*{_LABEL}[ \t]*)*,?[ \t]*)?\}}"
_SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)[ \t]*"
    rf"(?P<labels>{_LABEL_BLOCK})?"
    r"[ \t]+(?P<value>[^ \t#]+)"
    r"(?:[ \t]+-?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)?"  # a timestamp (unused)
    r"(?:[ \t]+#[ \t].*)?"  # an OpenMetrics exemplar (unused)
    r"[ \t]*"
)
_ESCAPES = re.compile(r"\\(.)")
_VALUE = re.compile(
    r"[+-]?(?:inf(?:inity)?|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)", re.I
)
"""A sample value as Prometheus reads one (Go's ParseFloat, decimal)."""


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPES.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_sample_line(line: str) -> tuple[str, dict[str, str], float]:
    """One sample line of a text exposition: ``name{label="value",...} value [timestamp]``.

    Args:
        line: The line, without its newline.

    Returns:
        The sample's name, labels and value.

    Raises:
        ValueError: When the line is not a valid sample line.
    """
    match = _SAMPLE.fullmatch(line)
    if match is None:
        raise ValueError(f"not a sample line: {line[:120]!r}")
    raw = match.group("value")
    if _VALUE.fullmatch(raw) is None:
        raise ValueError(f"not a sample value: {raw[:40]!r} in {line[:120]!r}")
    block = match.group("labels")
    labels = {k: _unescape(v) for k, v in _LABEL_PAIR.findall(block)} if block is not None else {}
    return match.group("name"), labels, float(raw)


def parse_exposition(text: str, t: float, at: datetime) -> TargetSample:
    """Reduce a Prometheus text exposition to a :class:`TargetSample`.

    Only the sample lines of the series the metrics use (:data:`_WANTED`) are
    parsed, and each is checked as strictly as a Prometheus scrape would: a
    malformed one fails the whole exposition. Comments (``# HELP``, ``# TYPE``,
    ``# EOF``) and every other series are skipped without being read, which is
    most of what a real service exports (process and runtime series).

    Args:
        text: The ``/metrics`` body.
        t: Monotonic time of the scrape.
        at: Wall time of the scrape.

    Returns:
        The sample.

    Raises:
        ValueError: When a line of those series is not a valid sample line.
    """
    requests: float | None = None
    errors = 0.0
    buckets: dict[float, float] = {}
    hash_failures: float | None = None
    auth_failures: float | None = None
    cache: list[float] = []
    compliance: list[float] = []
    for line in text.splitlines():
        if not line.startswith("acgs_"):
            continue
        named = _NAME.match(line)
        if named is None or named.group() not in _WANTED:
            continue
        name, labels, value = parse_sample_line(line)
        if name == REQUESTS:
            requests = (requests or 0.0) + value
            status = next((labels[k] for k in _STATUS_LABELS if k in labels), "")
            if _FIVE_XX.match(status):
                errors += value
        elif name == DURATION_BUCKET:
            le = float(labels.get("le", "nan"))
            if not math.isnan(le):
                buckets[le] = buckets.get(le, 0.0) + value
        elif name == CACHE_HIT:
            cache.append(value)
        elif name == COMPLIANCE:
            compliance.append(value)
        elif name == HASH_FAILURES:
            hash_failures = (hash_failures or 0.0) + value
        elif name == AUTH_FAILURES:
            auth_failures = (auth_failures or 0.0) + value
    return TargetSample(
        t=t,
        at=at,
        requests=requests,
        errors_5xx=errors,
        buckets=buckets,
        hash_failures=hash_failures,
        auth_failures=auth_failures,
        cache_hit=tuple(cache),
        compliance=tuple(compliance),
    )


@dataclass
class _Target:
    url: str
    ring: deque[TargetSample] = field(default_factory=deque)
    error: str | None = None
    """Why the newest scrape failed; None when it succeeded."""


@dataclass(frozen=True, slots=True)
class _Rates:
    """One service's per-second rates over the window."""

    requests: float
    errors_5xx: float
    buckets: dict[float, float]
    hash_failures: float
    auth_failures: float


def _rates(samples: Sequence[TargetSample]) -> _Rates | None:
    """A service's rates over its samples in the window.

    None without two scrapes, or without a request counter to divide by.
    """
    if len(samples) < 2:
        return None
    duration = samples[-1].t - samples[0].t
    if duration <= 0:
        return None
    requests = [s.requests for s in samples]
    if any(r is None for r in requests):
        return None

    def rate(values: Sequence[float]) -> float:
        return _increase(values) / duration

    les = set(samples[0].buckets)
    for s in samples[1:]:
        les &= set(s.buckets)
    return _Rates(
        requests=rate([r for r in requests if r is not None]),
        errors_5xx=rate([s.errors_5xx for s in samples]),
        buckets={le: rate([s.buckets[le] for s in samples]) for le in les},
        # A counter a service does not export (yet) has not counted anything.
        hash_failures=rate([s.hash_failures or 0.0 for s in samples]),
        auth_failures=rate([s.auth_failures or 0.0 for s in samples]),
    )


class DirectScrapeSource:
    """Both environments' metrics from the services' own ``/metrics`` endpoints."""

    name = "scrape"

    def __init__(
        self,
        client: httpx.AsyncClient,
        targets: Mapping[Environment, Sequence[str]],
        window_s: float = 60.0,
        timeout_s: float = 1.0,
        max_age_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the source.

        Args:
            client: The shared HTTP client; the source does not close it.
            targets: Each environment's ``/metrics`` URLs.
            window_s: The rate window in seconds (the ring keeps this much history).
            timeout_s: Per-scrape timeout in seconds.
            max_age_s: A service whose newest good scrape is older than this takes no part.
            clock: Monotonic clock (seconds); tests pass a controlled one.
        """
        self._client = client
        self.window_s = window_s
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self._clock = clock
        self._targets: dict[Environment, list[_Target]] = {
            env: [_Target(url) for url in targets.get(env, ())] for env in Environment
        }
        self._lock = asyncio.Lock()

    async def fetch(self) -> dict[Environment, EnvironmentMetrics]:
        """Scrape every service once more and compute both environments' metrics.

        Returns:
            Environment -> metrics; unknown values carry ``error``.
        """
        async with self._lock:
            everyone = [target for targets in self._targets.values() for target in targets]
            await asyncio.gather(*(self._scrape(target) for target in everyone))
            now = self._clock()
            return {env: self._compute(self._targets[env], now) for env in Environment}

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""

    async def _scrape_lean(self, client: ProbeClient, url: str) -> bytes:
        """One ``/metrics`` through the client's lean connections (see :mod:`backends.http1`)."""
        try:
            reply = await client.lean_get(url, max_body=MAX_EXPOSITION_BYTES, accept=_ACCEPT)
        except http1.BodyTooLarge:
            raise _ScrapeError("exposition over 16 MiB") from None
        except http1.ProtocolError as exc:
            raise _ScrapeError(f"protocol error: {exc}") from None
        if reply.status != 200:
            raise _ScrapeError(f"HTTP {reply.status}")
        media = reply.headers.get("content-type", "").split(";", 1)[0].strip()
        if media.lower() not in _EXPOSITION_TYPES:
            raise _ScrapeError(f"wrong content type {media!r}, not an exposition")
        return reply.body

    async def _scrape(self, target: _Target) -> None:
        client = self._client
        try:
            async with asyncio.timeout(self.timeout_s):
                if isinstance(client, ProbeClient) and client.lean is not None:
                    chunks = [await self._scrape_lean(client, target.url)]
                else:
                    chunks = await self._scrape_httpx(target.url)
            t, at = self._clock(), utcnow()
            text = b"".join(chunks).decode("utf-8")
            sample = parse_exposition(text, t, at)
        except TimeoutError:
            target.error = f"timeout after {self.timeout_s:g} s"
        except (httpx.ConnectError, http1.ConnectFailed) as exc:
            target.error = connect_reason(exc)
        except httpx.HTTPError as exc:
            target.error = f"{type(exc).__name__}: {exc}"
        except _ScrapeError as exc:
            target.error = str(exc)
        except UnicodeDecodeError:
            target.error = "exposition is not UTF-8"
        except Exception as exc:  # a bad exposition must not break the monitor loop
            target.error = f"malformed exposition: {exc}"
        else:
            target.error = None
            target.ring.append(sample)
        self._prune(target)

    async def _scrape_httpx(self, url: str) -> list[bytes]:
        """One ``/metrics`` through httpx (a client that is not :func:`make_client`'s)."""
        async with self._client.stream("GET", url) as response:
            if response.status_code != 200:
                raise _ScrapeError(f"HTTP {response.status_code}")
            media = response.headers.get("content-type", "").split(";", 1)[0].strip()
            if media.lower() not in _EXPOSITION_TYPES:
                raise _ScrapeError(f"wrong content type {media!r}, not an exposition")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_EXPOSITION_BYTES:
                    raise _ScrapeError("exposition over 16 MiB")
                chunks.append(chunk)
        return chunks

    def _prune(self, target: _Target) -> None:
        horizon = self._clock() - self.window_s
        while target.ring and target.ring[0].t < horizon:
            target.ring.popleft()

    def _compute(self, targets: list[_Target], now: float) -> EnvironmentMetrics:
        fresh = [t for t in targets if t.ring and now - t.ring[-1].t <= self.max_age_s]
        src = self.name
        if not fresh:
            errors = sorted({t.error for t in targets if t.error})
            why = (
                "no targets configured"
                if not targets
                else ("scrape failed: " + "; ".join(errors))
                if errors
                else "no scrape yet"
            )
            return EnvironmentMetrics(
                **{n: metric_value(n, None, source=src, error=why) for n in METRIC_NAMES}
            )
        sampled_at = min(t.ring[-1].at for t in fresh)

        def value(name: str, number: float | None, error: str | None = None) -> MetricValue:
            return metric_value(
                name,
                number,
                source=src,
                sampled_at=sampled_at,
                max_age_s=self.max_age_s,
                error=error,
            )

        values: dict[str, MetricValue] = {}
        rates = [r for r in (_rates(list(t.ring)) for t in fresh) if r is not None]
        if not rates:
            short = "not enough history yet (a rate needs two scrapes in the window)"
            if not any(t.ring[-1].requests is not None for t in fresh):
                short = f"no such series ({REQUESTS} is not exported)"
            for name in (
                "p99_latency_ms",
                "requests_per_second",
                "error_rate",
                "hash_validation_failure_rate",
                "auth_failures_per_minute",
            ):
                values[name] = value(name, None, short)
        else:
            total = sum(r.requests for r in rates)
            quiet = "no requests in the window"
            values["requests_per_second"] = value("requests_per_second", total)
            if total > 0:
                values["error_rate"] = value("error_rate", sum(r.errors_5xx for r in rates) / total)
                values["hash_validation_failure_rate"] = value(
                    "hash_validation_failure_rate", sum(r.hash_failures for r in rates) / total
                )
            else:
                values["error_rate"] = value("error_rate", None, quiet)
                values["hash_validation_failure_rate"] = value(
                    "hash_validation_failure_rate", None, quiet
                )
            values["auth_failures_per_minute"] = value(
                "auth_failures_per_minute", 60.0 * sum(r.auth_failures for r in rates)
            )
            les: dict[float, float] = {}
            for r in rates:
                for le, v in r.buckets.items():
                    les[le] = les.get(le, 0.0) + v
            if not les:
                values["p99_latency_ms"] = metric_value(
                    "p99_latency_ms",
                    None,
                    source=src,
                    error=f"no such series ({DURATION_BUCKET} is not exported)",
                    absent=True,
                )
            else:
                p99 = histogram_quantile(0.99, list(les.items()))
                values["p99_latency_ms"] = (
                    value("p99_latency_ms", None, quiet)
                    if math.isnan(p99)
                    else value("p99_latency_ms", 1000.0 * p99)
                )
        values["cache_hit_rate"] = self._gauge("cache_hit_rate", fresh, sampled_at, mean=True)
        values["compliance_score"] = self._gauge("compliance_score", fresh, sampled_at, mean=False)
        return EnvironmentMetrics(**values)

    def _gauge(
        self, name: str, fresh: list[_Target], sampled_at: datetime, *, mean: bool
    ) -> MetricValue:
        """The average (``avg``) or minimum (``min``) of a gauge over the fresh services."""
        series = CACHE_HIT if mean else COMPLIANCE
        numbers = [
            v for t in fresh for v in (t.ring[-1].cache_hit if mean else t.ring[-1].compliance)
        ]
        if not numbers:
            if all(t.ring[-1].requests is not None for t in fresh):
                # The services answer with their ACGS metrics, just not this one.
                return metric_value(
                    name,
                    None,
                    source=self.name,
                    error=f"no such series ({series} is not exported)",
                    absent=True,
                )
            return metric_value(
                name,
                None,
                source=self.name,
                error=f"no data (no {REQUESTS} or {series} in /metrics)",
            )
        if any(not math.isfinite(v) for v in numbers):
            bad = next(v for v in numbers if not math.isfinite(v))
            return metric_value(
                name, None, source=self.name, error=f"a service reports {series} = {bad}"
            )
        number = sum(numbers) / len(numbers) if mean else min(numbers)
        return metric_value(
            name, number, source=self.name, sampled_at=sampled_at, max_age_s=self.max_age_s
        )
