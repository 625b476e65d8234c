"""The metrics-source contract and what every source shares.

This module owns :class:`MetricsSource`, the protocol the monitor polls for
both environments' :class:`~backends.models.EnvironmentMetrics`, and the small
helpers both implementations use: the metric names and units, turning a raw
number into a :class:`~backends.models.MetricValue` (NaN and Inf become
unknown, never a value), staleness, and an all-unknown result for when a
source cannot answer at all.

Implementations: :class:`backends.prometheus.PrometheusSource` (PromQL through
prometheus-api-client) and :class:`backends.scrape.DirectScrapeSource` (reads
the services' ``/metrics`` itself).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Protocol, runtime_checkable

from backends.models import Environment, EnvironmentMetrics, MetricValue, utcnow

METRIC_UNITS: dict[str, str] = {
    "p99_latency_ms": "ms",
    "requests_per_second": "req/s",
    "error_rate": "ratio",
    "cache_hit_rate": "ratio",
    "compliance_score": "%",
    "hash_validation_failure_rate": "ratio",
    "auth_failures_per_minute": "/min",
}
"""Every field of :class:`EnvironmentMetrics`, with the unit its value is in."""

METRIC_NAMES: tuple[str, ...] = tuple(METRIC_UNITS)

assert set(METRIC_NAMES) == set(EnvironmentMetrics.model_fields), "METRIC_UNITS out of date"


@runtime_checkable
class MetricsSource(Protocol):
    """Where the console's performance and compliance metrics come from.

    ``fetch`` never raises for an observation failure: a metric that could
    not be had is a :class:`MetricValue` with ``value=None`` and ``error``.
    """

    name: str
    """Short source name shown beside every value ("prometheus", "scrape")."""

    async def fetch(self) -> dict[Environment, EnvironmentMetrics]:
        """Both environments' metrics, as of now."""
        ...

    async def aclose(self) -> None:
        """Release what the source holds (sessions, threads)."""
        ...


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as ``1m``, ``90s`` or ``1m30s``.

    The direct-scrape source uses it to take the same window as the PromQL
    templates' ``$window``.

    Args:
        text: The duration.

    Returns:
        Seconds.

    Raises:
        ValueError: When ``text`` is not a Prometheus duration.
    """
    stripped = text.strip()
    parts = _DURATION_PART.findall(stripped)
    if not stripped or "".join(n + u for n, u in parts) != stripped:
        raise ValueError(f"not a Prometheus duration: {text!r} (e.g. '1m', '30s', '1m30s')")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def is_stale(sampled_at: datetime | None, max_age_s: float, now: datetime | None = None) -> bool:
    """Whether a sample is older than ``max_age_s`` (a missing time is not stale, it is unknown).

    Args:
        sampled_at: When the sample was taken.
        max_age_s: Allowed age in seconds.
        now: The time to judge against (default: now).

    Returns:
        True when the sample is too old.
    """
    if sampled_at is None:
        return False
    return ((now or utcnow()) - sampled_at).total_seconds() > max_age_s


def metric_value(
    name: str,
    value: float | None,
    *,
    source: str,
    sampled_at: datetime | None = None,
    max_age_s: float | None = None,
    error: str | None = None,
    absent: bool = False,
    now: datetime | None = None,
) -> MetricValue:
    """Build a :class:`MetricValue`, turning NaN and Inf into unknown with a reason.

    Args:
        name: The EnvironmentMetrics field name.
        value: The number, or None when there is none.
        source: The source's name.
        sampled_at: When the sample was taken.
        max_age_s: Allowed age; None disables the staleness check.
        error: Why there is no value (ignored when there is one).
        absent: The source positively has no such series.
        now: The time to judge staleness against.

    Returns:
        The value, never carrying NaN or Inf.
    """
    if value is not None and not math.isfinite(value):
        if math.isnan(value):
            error = "NaN (nothing to compute from, e.g. 0/0)"
        else:
            error = ("+Inf" if value > 0 else "-Inf") + " (not finite)"
        value = None
    if value is None and error is None:
        error = "no data"
    stale = value is not None and max_age_s is not None and is_stale(sampled_at, max_age_s, now)
    return MetricValue(
        name=name,
        value=value,
        unit=METRIC_UNITS.get(name, ""),
        sampled_at=sampled_at,
        source=source,
        stale=stale,
        error=None if value is not None else error,
        absent=absent and value is None,
    )


def unknown_metrics(source: str, error: str) -> EnvironmentMetrics:
    """An EnvironmentMetrics whose every value is unknown for the same reason.

    Args:
        source: The source's name.
        error: Why nothing could be had (e.g. "connection refused").

    Returns:
        All-unknown metrics.
    """
    return EnvironmentMetrics(
        **{name: metric_value(name, None, source=source, error=error) for name in METRIC_NAMES}
    )
