"""Metrics sources: Prometheus (the harness's real one) and the direct scrape.

The direct-scrape arithmetic is checked exactly against a real ``/metrics``
server whose counters the test sets, with a controlled clock; the Prometheus
source against a Prometheus that is down, one that hangs, one that answers
nothing or NaN, and the harness's Prometheus scraping the sandbox fleet. The
last test feeds the same fleet traffic to both sources and shows that they
agree within 10 % on requests/s, P99 and every other metric.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from backends.health import make_client
from backends.metrics import METRIC_NAMES, MetricsSource, metric_value, parse_duration
from backends.models import Environment, EnvironmentMetrics
from backends.prometheus import PrometheusSource, build_selector
from backends.scrape import DirectScrapeSource, _increase, histogram_quantile
from console.config import PrometheusQueries
from console.engines import free_port

if TYPE_CHECKING:
    from conftest import Fleet

    from console.engines import Prometheus

BLUE, GREEN = Environment.BLUE, Environment.GREEN
LABELS = {BLUE: "blue", GREEN: "green"}
QUERIES: dict[str, str] = PrometheusQueries().model_dump()


# -- the arithmetic -------------------------------------------------------------------------


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.001, 10.0), (0.002, 60.0), (0.005, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.001 + 0.001 * 40 / 50)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.002 + 0.003 * 39 / 40)
    # Order does not matter; the first bucket starts at zero.
    assert histogram_quantile(0.05, list(reversed(buckets))) == pytest.approx(0.0005)


def test_histogram_quantile_edges_are_prometheus_s() -> None:
    # Rank in the +Inf bucket: the highest finite bound.
    assert histogram_quantile(0.99, [(0.001, 10.0), (math.inf, 100.0)]) == 0.001
    assert math.isnan(histogram_quantile(0.99, [(0.001, 0.0), (math.inf, 0.0)]))  # no requests
    assert math.isnan(histogram_quantile(0.99, [(0.001, 5.0), (0.01, 9.0)]))  # no +Inf
    assert math.isnan(histogram_quantile(0.99, [(math.inf, 9.0)]))  # one bucket
    assert histogram_quantile(1.5, [(0.001, 1.0), (math.inf, 1.0)]) == math.inf
    # Float noise making a cumulative count dip is evened out, not a crash.
    assert histogram_quantile(0.5, [(1.0, 10.0), (2.0, 9.999), (math.inf, 20.0)]) == 1.0


def test_metric_value_never_carries_nan_or_inf() -> None:
    nan = metric_value("p99_latency_ms", math.nan, source="scrape")
    assert nan.value is None and (nan.error or "").startswith("NaN") and not nan.known
    inf = metric_value("p99_latency_ms", -math.inf, source="scrape")
    assert inf.value is None and inf.error == "-Inf (not finite)"
    none = metric_value("p99_latency_ms", None, source="scrape")
    assert none.error == "no data" and none.unit == "ms"
    fine = metric_value("p99_latency_ms", 3.0, source="scrape", error="ignored")
    assert fine.value == 3.0 and fine.error is None and fine.known


def test_parse_duration() -> None:
    assert parse_duration("1m") == 60.0
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("250ms") == 0.25
    for bad in ("", "1", "m", "1 m", "1mm", "-1s", "1x"):
        with pytest.raises(ValueError, match="not a Prometheus duration"):
            parse_duration(bad)


def test_counter_increase_counts_a_reset_as_a_restart() -> None:
    assert _increase([10.0, 20.0, 5.0, 15.0]) == 10.0 + 5.0 + 10.0
    assert _increase([3.0]) == 0.0


def test_selector_escapes_label_values() -> None:
    assert build_selector("environment", ["blue", "green"]) == 'environment=~"blue|green"'
    sel = build_selector("env", ["prod-blue", 'we"ird'], '{job="acgs"}')
    assert sel == 'env=~"prod\\\\-blue|we\\"ird",job="acgs"'


def test_prometheus_source_rejects_an_unknown_metric_name() -> None:
    with pytest.raises(ValueError, match="no such metric p98"):
        PrometheusSource("http://127.0.0.1:1", {"p98": "x"}, "environment", LABELS)
    with pytest.raises(ValueError, match="label"):
        PrometheusSource("http://127.0.0.1:1", {}, "bad-label", LABELS)


def test_both_sources_are_metrics_sources() -> None:
    client = httpx.AsyncClient()
    assert isinstance(DirectScrapeSource(client, {}), MetricsSource)
    assert isinstance(
        PrometheusSource("http://127.0.0.1:1", QUERIES, "environment", LABELS), MetricsSource
    )


# -- a /metrics server the test controls ------------------------------------------------------


class Exposition:
    """One service's counters and gauges, served as Prometheus text."""

    def __init__(self) -> None:
        self.ok = 0.0
        self.err = 0.0
        self.buckets = {0.001: 0.0, 0.002: 0.0, 0.005: 0.0, math.inf: 0.0}
        self.hash_failures: float | None = 0.0
        self.auth_failures = 0.0
        self.cache = 0.9
        self.compliance: float | None = 100.0
        self.raw: tuple[str, str] | None = None
        """(content type, body) served instead, when set."""

    def observe(self, n: int, le: float) -> None:
        for bound in self.buckets:
            if bound >= le:
                self.buckets[bound] += n

    def text(self) -> str:
        lines = [
            "# TYPE acgs_requests_total counter",
            f'acgs_requests_total{{environment="blue",status_code="200"}} {self.ok}',
            f'acgs_requests_total{{environment="blue",status_code="500"}} {self.err}',
            "# TYPE acgs_request_duration_seconds histogram",
        ]
        for bound, count in self.buckets.items():
            le = "+Inf" if bound == math.inf else repr(bound)
            lines.append(f'acgs_request_duration_seconds_bucket{{le="{le}"}} {count}')
        lines += [
            f"acgs_request_duration_seconds_count {self.buckets[math.inf]}",
            "acgs_request_duration_seconds_sum 0.5",
            "# TYPE acgs_cache_hit_rate gauge",
            f"acgs_cache_hit_rate {self.cache}",
            "# TYPE acgs_authentication_failures_total counter",
            f"acgs_authentication_failures_total {self.auth_failures}",
        ]
        if self.hash_failures is not None:
            lines.append(f"acgs_constitutional_hash_validation_failures_total {self.hash_failures}")
        if self.compliance is not None:
            lines.append(f"acgs_constitutional_compliance_score {self.compliance}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """A real loopback HTTP server whose ``/metrics`` is an :class:`Exposition`."""

    def __init__(self) -> None:
        self.exposition = Exposition()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    async def start(self) -> MetricsServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            content_type, text = self.exposition.raw or (
                "text/plain; version=0.0.4",
                self.exposition.text(),
            )
            body = text.encode()
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["lean", "httpx"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """Both ways a scrape can go: :func:`make_client`'s lean connections, or plain httpx."""
    made = (
        make_client(1.0)
        if request.param == "lean"
        else httpx.AsyncClient(timeout=1.0, follow_redirects=True)
    )
    async with made as c:
        yield c


@pytest.fixture
async def two_services() -> AsyncIterator[tuple[MetricsServer, MetricsServer]]:
    a, b = await MetricsServer().start(), await MetricsServer().start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


# -- direct scrape, exact ----------------------------------------------------------------------


async def test_scrape_needs_two_scrapes_for_a_rate_then_computes_exactly(
    client: httpx.AsyncClient, two_services: tuple[MetricsServer, MetricsServer]
) -> None:
    a, b = two_services
    clock = Clock()
    source = DirectScrapeSource(
        client, {BLUE: [a.url, b.url]}, window_s=60, max_age_s=5, clock=clock
    )
    a.exposition.cache, b.exposition.cache = 0.8, 0.9
    b.exposition.compliance = 99.5

    first = (await source.fetch())[BLUE]
    # One scrape: no rate yet -- unknown, not zero.
    for name in ("requests_per_second", "p99_latency_ms", "error_rate"):
        metric = getattr(first, name)
        assert metric.value is None and "not enough history" in (metric.error or "")
    # Gauges need one scrape only.
    assert first.cache_hit_rate.value == pytest.approx(0.85)
    assert first.compliance_score.value == 99.5
    assert (
        first.compliance_score.source == "scrape" and first.compliance_score.sampled_at is not None
    )

    # 10 s later: a served 900 ok + 100 errors, b 1000 ok; 3 hash and 6 auth failures.
    clock.t += 10
    a.exposition.ok, a.exposition.err, b.exposition.ok = 900, 100, 1000
    a.exposition.hash_failures = 3
    b.exposition.auth_failures = 6
    a.exposition.observe(980, 0.001)
    a.exposition.observe(20, 0.004)
    b.exposition.observe(1000, 0.002)
    second = (await source.fetch())[BLUE]
    assert second.requests_per_second.value == pytest.approx(200.0)
    assert second.error_rate.value == pytest.approx(100 / 2000)
    assert second.hash_validation_failure_rate.value == pytest.approx(3 / 2000)
    assert second.auth_failures_per_minute.value == pytest.approx(60 * 6 / 10)
    # Buckets summed: <=1 ms 980, <=2 ms 1980, <=5 ms 2000. Rank 1980 of 2000 lands at the
    # top of the 1-2 ms bucket.
    assert second.p99_latency_ms.value == pytest.approx(2.0)
    assert second.p99_latency_ms.unit == "ms"
    assert all(m.known for m in second.all())

    # The green side has no targets at all: every value unknown, with the reason.
    green = (await source.fetch())[GREEN]
    assert all(m.value is None and m.error == "no targets configured" for m in green.all())


async def test_scrape_counter_reset_is_a_restart(
    client: httpx.AsyncClient, two_services: tuple[MetricsServer, MetricsServer]
) -> None:
    a, _ = two_services
    clock = Clock()
    source = DirectScrapeSource(client, {BLUE: [a.url]}, window_s=60, clock=clock)
    a.exposition.ok = 5000
    await source.fetch()
    clock.t += 2
    a.exposition.ok = 5100
    await source.fetch()
    clock.t += 2
    a.exposition.ok = 60  # the service restarted: 60 since then, not -5040
    metrics = (await source.fetch())[BLUE]
    assert metrics.requests_per_second.value == pytest.approx((100 + 60) / 4)


async def test_scrape_window_forgets_old_samples(
    client: httpx.AsyncClient, two_services: tuple[MetricsServer, MetricsServer]
) -> None:
    a, _ = two_services
    clock = Clock()
    source = DirectScrapeSource(client, {BLUE: [a.url]}, window_s=10, clock=clock)
    await source.fetch()
    for step in range(1, 5):  # 1000 requests in the first 4 s, then 10/s
        clock.t += 4
        a.exposition.ok = 1000 + (step - 1) * 40
        await source.fetch()
    # Samples at +8, +12, +16 are inside the 10 s window; only the quiet traffic remains.
    assert (await source.fetch())[BLUE].requests_per_second.value == pytest.approx(10.0)


async def test_scrape_no_requests_in_window_is_unknown_not_zero_error_rate(
    client: httpx.AsyncClient, two_services: tuple[MetricsServer, MetricsServer]
) -> None:
    a, _ = two_services
    clock = Clock()
    source = DirectScrapeSource(client, {BLUE: [a.url]}, clock=clock)
    await source.fetch()
    clock.t += 5
    metrics = (await source.fetch())[BLUE]
    assert metrics.requests_per_second.value == 0.0  # a measured zero is a value
    for name in ("error_rate", "p99_latency_ms", "hash_validation_failure_rate"):
        metric = getattr(metrics, name)
        assert metric.value is None and metric.error == "no requests in the window"


async def test_scrape_service_that_stops_answering_drops_out_then_all_unknown(
    client: httpx.AsyncClient, two_services: tuple[MetricsServer, MetricsServer]
) -> None:
    a, b = two_services
    clock = Clock()
    source = DirectScrapeSource(client, {BLUE: [a.url, b.url]}, max_age_s=5, clock=clock)
    a.exposition.compliance, b.exposition.compliance = 100.0, 90.0
    assert (await source.fetch())[BLUE].compliance_score.value == 90.0
    await b.close()
    clock.t += 1
    # Within max_age the last good scrape still counts ...
    assert (await source.fetch())[BLUE].compliance_score.value == 90.0
    clock.t += 5
    # ... after it, b takes no part.
    assert (await source.fetch())[BLUE].compliance_score.value == 100.0
    await a.close()
    clock.t += 6
    metrics = (await source.fetch())[BLUE]
    for metric in metrics.all():
        assert metric.value is None
        assert metric.error == "scrape failed: connection refused"


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        ("text/plain", 'acgs_requests_total{status_code="200" 5 {{\n', "malformed exposition"),
        ("text/html", "<html><body>502 Bad Gateway</body></html>", "wrong content type"),
    ],
)
async def test_scrape_malformed_exposition_is_unknown(
    client: httpx.AsyncClient,
    two_services: tuple[MetricsServer, MetricsServer],
    content_type: str,
    body: str,
    error: str,
) -> None:
    a, _ = two_services
    a.exposition.raw = (content_type, body)
    source = DirectScrapeSource(client, {BLUE: [a.url]})
    metrics = (await source.fetch())[BLUE]
    assert all(m.value is None and not m.absent for m in metrics.all())
    assert (metrics.cache_hit_rate.error or "").startswith("scrape failed: " + error)


async def test_scrape_exposition_without_acgs_series_is_no_data_not_absent(
    client: httpx.AsyncClient, two_services: tuple[MetricsServer, MetricsServer]
) -> None:
    """Only a service that exports its request counter can say "I do not export the gauge"."""
    a, _ = two_services
    a.exposition.raw = ("text/plain", "# TYPE up gauge\nup 1\nsomething_else_total 3\n")
    metrics = (await DirectScrapeSource(client, {BLUE: [a.url]}).fetch())[BLUE]
    assert metrics.compliance_score.value is None and not metrics.compliance_score.absent
    assert (metrics.compliance_score.error or "").startswith("no data")


async def test_scrape_nan_gauge_is_unknown(
    client: httpx.AsyncClient, two_services: tuple[MetricsServer, MetricsServer]
) -> None:
    a, _ = two_services
    a.exposition.cache = math.nan
    metrics = (await DirectScrapeSource(client, {BLUE: [a.url]}).fetch())[BLUE]
    assert metrics.cache_hit_rate.value is None and "nan" in (metrics.cache_hit_rate.error or "")


async def test_scrape_gauge_not_exported_is_absent_not_failed(
    client: httpx.AsyncClient, two_services: tuple[MetricsServer, MetricsServer]
) -> None:
    a, _ = two_services
    a.exposition.compliance = None
    a.exposition.hash_failures = None
    clock = Clock()
    source = DirectScrapeSource(client, {BLUE: [a.url]}, clock=clock)
    await source.fetch()
    clock.t += 1
    a.exposition.ok = 50
    metrics = (await source.fetch())[BLUE]
    assert metrics.compliance_score.value is None and metrics.compliance_score.absent
    # A failure counter nobody exports has counted nothing (the PromQL templates' "or 0").
    assert metrics.hash_validation_failure_rate.value == 0.0


# -- Prometheus that cannot answer ---------------------------------------------------------------


def _source(url: str, queries: dict[str, str] | None = None, **kw: Any) -> PrometheusSource:
    return PrometheusSource(
        url, QUERIES if queries is None else queries, "environment", LABELS, **kw
    )


async def _fetch(source: PrometheusSource) -> dict[Environment, EnvironmentMetrics]:
    try:
        return await source.fetch()
    finally:
        await source.aclose()


async def test_prometheus_down_is_unknown_with_the_reason() -> None:
    result = await _fetch(_source(f"http://127.0.0.1:{free_port()}"))
    for env in Environment:
        for metric in result[env].all():
            assert metric.value is None and not metric.known
            assert metric.error == "connection refused"
            assert metric.source == "prometheus"


async def test_prometheus_hanging_is_a_timeout() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await _fetch(_source(f"http://127.0.0.1:{port}", timeout_s=0.3))
    finally:
        server.close()
    errors = {m.error for env in Environment for m in result[env].all()}
    assert errors == {"timeout after 0.3 s"}


async def test_something_that_is_not_prometheus_is_unknown() -> None:
    async def html(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"<html>hello</html>"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(html, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await _fetch(_source(f"http://127.0.0.1:{port}"))
    finally:
        server.close()
    metric = result[BLUE].p99_latency_ms
    assert metric.value is None and (metric.error or "").startswith("not a Prometheus API answer")


# -- the harness's Prometheus and the fleet ------------------------------------------------------


def _put(fleet: Fleet, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = httpx.put(fleet.control_url + path, json=payload, timeout=5.0)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


WINDOW_S = 10
WINDOW = f"{WINDOW_S}s"


@pytest.fixture(scope="module")
def steady_traffic(fleet: Fleet, prometheus: Prometheus) -> Iterator[float]:
    """150 requests/s through the in-process router, half to green; yields when it started."""
    before = httpx.get(fleet.control_url + "/control/state", timeout=5.0).json()
    _put(fleet, "/control/traffic", {"target": None, "rate": 150})
    _put(fleet, "/control/split", {"green_percentage": 50})
    started = time.monotonic()
    try:
        yield started
    finally:
        _put(fleet, "/control/split", {"green_percentage": before["split"]["green_percentage"]})
        _put(
            fleet,
            "/control/traffic",
            {"target": before["traffic"]["target"], "rate": before["traffic"]["rate"]},
        )


def _wait_for_green_rate(prometheus: Prometheus, window: str) -> None:
    prometheus.wait_for_sample(
        f'sum by (environment) (rate(acgs_requests_total{{environment="green"}}[{window}])) > 10',
        timeout=30,
    )


def _wait_for_both_rates(prometheus: Prometheus, window: str) -> None:
    """Until both environments' request rates over ``window`` are above 10 per second."""
    prometheus.wait_for_sample(
        f"count(sum by (environment) (rate(acgs_requests_total[{window}])) > 10) == 2",
        timeout=30,
    )


@pytest.mark.engines
async def test_prometheus_real_values_from_fleet_traffic(
    prometheus: Prometheus, steady_traffic: float
) -> None:
    _wait_for_both_rates(prometheus, WINDOW)
    result = await _fetch(_source(prometheus.url, window=WINDOW))
    for env in Environment:
        m = result[env]
        assert all(v.known for v in m.all()), {v.name: v.error for v in m.all() if not v.known}
        assert m.requests_per_second.value is not None and m.requests_per_second.value > 5
        assert m.p99_latency_ms.value is not None and 0.5 < m.p99_latency_ms.value < 50
        assert m.cache_hit_rate.value is not None and 0.5 < m.cache_hit_rate.value <= 1
        assert m.compliance_score.value == 100.0
        assert m.hash_validation_failure_rate.value == 0.0
        assert m.auth_failures_per_minute.value == 0.0
        for v in m.all():
            assert v.source == "prometheus" and not v.stale and v.error is None
            assert v.sampled_at is not None
            age = time.time() - v.sampled_at.timestamp()
            assert -1 < age < 5  # the sample's own time, from a 1 s scrape


@pytest.mark.engines
async def test_prometheus_old_samples_are_stale(
    prometheus: Prometheus, steady_traffic: float
) -> None:
    _wait_for_green_rate(prometheus, WINDOW)
    result = await _fetch(_source(prometheus.url, max_age_s=0.0, window=WINDOW))
    metric = result[BLUE].requests_per_second
    assert metric.value is not None and metric.stale and not metric.known


@pytest.mark.engines
async def test_prometheus_returning_nothing_is_unknown(prometheus: Prometheus) -> None:
    prometheus.wait_for_sample("acgs_requests_total")
    # Nothing at all for the environments: no request counter either.
    nothing = "sum by ($label) (acgs_no_such_metric_total{$selector})"
    result = await _fetch(
        _source(prometheus.url, {"requests_per_second": nothing, "cache_hit_rate": nothing})
    )
    for env in Environment:
        for name in ("requests_per_second", "cache_hit_rate"):
            metric = getattr(result[env], name)
            assert metric.value is None and not metric.absent
            assert metric.error == f"no data for {env.value!r}"
        # A metric without a query is unknown too, never a pass.
        assert result[env].p99_latency_ms.error == "no query configured"


@pytest.mark.engines
async def test_prometheus_series_not_exported_while_scraped_is_absent(
    prometheus: Prometheus, steady_traffic: float
) -> None:
    _wait_for_green_rate(prometheus, WINDOW)
    queries = dict(QUERIES)
    queries["compliance_score"] = "min by ($label) (acgs_no_such_gauge{$selector})"
    result = await _fetch(_source(prometheus.url, queries, window=WINDOW))
    for env in Environment:
        metric = result[env].compliance_score
        assert metric.value is None and metric.absent
        assert "no such series" in (metric.error or "")


@pytest.mark.engines
@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("0 * sum by ($label) (acgs_requests_total{$selector}) / 0", "NaN"),
        ("(1 + 0 * sum by ($label) (acgs_requests_total{$selector})) / 0", "+Inf"),
    ],
)
async def test_prometheus_nan_and_inf_are_unknown(
    prometheus: Prometheus, template: str, error: str
) -> None:
    prometheus.wait_for_sample("acgs_requests_total")
    result = await _fetch(_source(prometheus.url, {"compliance_score": template}))
    for env in Environment:
        metric = result[env].compliance_score
        assert metric.value is None and not metric.known
        assert (metric.error or "").startswith(error)


@pytest.mark.engines
async def test_prometheus_rejecting_a_query_says_why(prometheus: Prometheus) -> None:
    result = await _fetch(
        _source(
            prometheus.url, {"requests_per_second": "sum by ($label) (rate(x{$selector}[$window]"}
        )
    )
    metric = result[BLUE].requests_per_second
    assert metric.value is None
    assert (metric.error or "").startswith("HTTP 400: ") and "parse error" in (metric.error or "")


@pytest.mark.engines
async def test_prometheus_and_direct_scrape_agree_on_the_same_traffic(
    fleet: Fleet, prometheus: Prometheus, steady_traffic: float
) -> None:
    """Same fleet, same traffic, same window: RPS and P99 within 10 %."""
    targets: dict[Environment, list[str]] = {env: [] for env in Environment}
    for svc in fleet.services:
        targets[Environment(svc.environment)].append(svc.base_url + "/metrics")
    window = WINDOW
    _wait_for_green_rate(prometheus, window)
    async with httpx.AsyncClient(timeout=2.0) as client:
        scrape = DirectScrapeSource(client, targets, window_s=WINDOW_S, timeout_s=2.0)
        prom = _source(prometheus.url, window=window)
        try:
            # Fill the scrape ring over one window of steady traffic (the traffic has also
            # been steady for at least that long in Prometheus's window).
            started = time.monotonic()
            while time.monotonic() - started < WINDOW_S + 0.5 or (
                time.monotonic() - steady_traffic < WINDOW_S + 2
            ):
                await scrape.fetch()
                await asyncio.sleep(0.5)
            by_scrape, by_prom = await asyncio.gather(scrape.fetch(), prom.fetch())
        finally:
            await prom.aclose()
    for env in Environment:
        for name in ("requests_per_second", "p99_latency_ms"):
            s = getattr(by_scrape[env], name)
            p = getattr(by_prom[env], name)
            assert s.known and p.known, (env, name, s.error, p.error)
            assert s.source == "scrape" and p.source == "prometheus"
            assert s.value == pytest.approx(p.value, rel=0.10), (env, name, s.value, p.value)
    # The rest of the metrics are there from both sources too, and agree as well (the
    # failure shares of this clean traffic are zero in both: 0 == 0, not "close to").
    for env in Environment:
        assert {m.name for m in by_scrape[env].all() if m.known} == set(METRIC_NAMES)
        for name in METRIC_NAMES:
            s = getattr(by_scrape[env], name)
            p = getattr(by_prom[env], name)
            assert p.known, (env, name, p.error)
            assert s.value is not None and p.value is not None
            assert s.value == pytest.approx(p.value, rel=0.10, abs=1e-9), (
                env,
                name,
                s.value,
                p.value,
            )


@pytest.mark.engines
async def test_one_query_per_metric_answers_for_both_environments(
    prometheus: Prometheus, steady_traffic: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each metric is one PromQL query grouped by environment, not one per environment."""
    _wait_for_both_rates(prometheus, WINDOW)
    sent: list[str] = []
    real = PrometheusSource._query_blocking

    def recording(self: PrometheusSource, query: str) -> Any:
        sent.append(query)
        return real(self, query)  # the real query, to the real Prometheus

    monkeypatch.setattr(PrometheusSource, "_query_blocking", recording)
    result = await _fetch(_source(prometheus.url, window=WINDOW))
    # One per metric, plus the one that dates the newest sample.
    assert len(sent) == len(METRIC_NAMES) + 1, sent
    assert len(set(sent)) == len(sent)
    for query in sent:
        assert "by (environment" in query, query
        assert 'environment=~"blue|green"' in query, query
    for env in Environment:
        unknown = {m.name: m.error for m in result[env].all() if not m.known}
        assert unknown == {}, (env, unknown)


@pytest.mark.engines
async def test_scrape_of_a_hung_service_is_a_timeout_and_never_holds_the_fetch(
    fleet: Fleet, client: httpx.AsyncClient
) -> None:
    """The fleet's hang fault holds /metrics too: the scrape gives up at its timeout."""
    hung = next(
        s for s in fleet.services if (s.environment, s.service) == ("green", "test_orchestrator")
    )
    other = next(
        s for s in fleet.services if (s.environment, s.service) == ("blue", "test_orchestrator")
    )
    targets = {GREEN: [hung.base_url + "/metrics"], BLUE: [other.base_url + "/metrics"]}
    fault = {"environment": "green", "service": "test_orchestrator"}
    response = httpx.post(
        fleet.control_url + "/control/fault", json={**fault, "kind": "hang"}, timeout=5
    )
    assert response.status_code == 200, response.text
    try:
        source = DirectScrapeSource(client, targets, timeout_s=0.3)
        started = time.monotonic()
        result = await source.fetch()
        elapsed = time.monotonic() - started
    finally:
        httpx.post(fleet.control_url + "/control/clear", json=fault, timeout=5)
    assert elapsed < 0.3 + 1.0, f"the fetch took {elapsed:.2f} s"
    for metric in result[GREEN].all():
        assert metric.value is None and not metric.known
        assert metric.error == "scrape failed: timeout after 0.3 s", metric.error
    # The other environment's target answered: its gauges are there on the first scrape.
    assert result[BLUE].cache_hit_rate.known, result[BLUE].cache_hit_rate.error


def test_prometheus_client_library_is_imported_lazily() -> None:
    """The first frame must not wait for prometheus-api-client (requests, urllib3, ...)."""
    code = (
        "import sys; import backends.prometheus, backends.scrape, backends.health; "
        "heavy = ('prometheus_api_client', 'requests', 'urllib3'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == ""


async def test_scrape_follows_a_redirect_to_the_exposition(client: httpx.AsyncClient) -> None:
    """``/metrics`` mounted as a sub-app answers ``307 -> /metrics/`` (Starlette does)."""
    text = Exposition().text().encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/metrics":
                    writer.write(
                        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /metrics/\r\n"
                        b"Content-Length: 0\r\n\r\n"
                    )
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                        + f"Content-Length: {len(text)}\r\n\r\n".encode()
                        + text
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/metrics"
    try:
        metrics = (await DirectScrapeSource(client, {BLUE: [url]}).fetch())[BLUE]
    finally:
        server.close()
    assert metrics.cache_hit_rate.value == pytest.approx(0.9), metrics.cache_hit_rate.error
