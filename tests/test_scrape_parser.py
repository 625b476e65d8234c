"""The direct scrape's exposition parser: only the series it uses, read as strictly as before.

The reference is prometheus_client's own parser (what the direct scrape used
before): on the sandbox fleet's real ``/metrics`` and on hand-made expositions
with every corner of the text format, both must reduce to the same sample.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backends.scrape import (
    AUTH_FAILURES,
    CACHE_HIT,
    COMPLIANCE,
    DURATION_BUCKET,
    HASH_FAILURES,
    REQUESTS,
    TargetSample,
    parse_exposition,
    parse_sample_line,
)

if TYPE_CHECKING:
    from conftest import Fleet

AT = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)


def reference(text: str) -> TargetSample:
    """The sample as prometheus_client's parser reads the exposition."""
    requests: float | None = None
    errors = 0.0
    buckets: dict[float, float] = {}
    hash_failures: float | None = None
    auth_failures: float | None = None
    cache: list[float] = []
    compliance: list[float] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            value = float(s.value)
            if s.name == REQUESTS:
                requests = (requests or 0.0) + value
                code = s.labels.get("status_code") or s.labels.get("code") or ""
                if len(code) == 3 and code.startswith("5") and code.isdigit():
                    errors += value
            elif s.name == DURATION_BUCKET:
                buckets[float(s.labels["le"])] = buckets.get(float(s.labels["le"]), 0.0) + value
            elif s.name == CACHE_HIT:
                cache.append(value)
            elif s.name == COMPLIANCE:
                compliance.append(value)
            elif s.name == HASH_FAILURES:
                hash_failures = (hash_failures or 0.0) + value
            elif s.name == AUTH_FAILURES:
                auth_failures = (auth_failures or 0.0) + value
    return TargetSample(
        t=1.0,
        at=AT,
        requests=requests,
        errors_5xx=errors,
        buckets=buckets,
        hash_failures=hash_failures,
        auth_failures=auth_failures,
        cache_hit=tuple(cache),
        compliance=tuple(compliance),
    )


def same(a: TargetSample, b: TargetSample) -> bool:
    def norm(x: tuple[float, ...]) -> tuple[object, ...]:
        return tuple("nan" if math.isnan(v) else v for v in x)

    return (
        a.requests == b.requests
        and a.errors_5xx == b.errors_5xx
        and a.buckets == b.buckets
        and a.hash_failures == b.hash_failures
        and a.auth_failures == b.auth_failures
        and norm(a.cache_hit) == norm(b.cache_hit)
        and norm(a.compliance) == norm(b.compliance)
    )


@pytest.mark.engines
def test_the_fleet_s_real_expositions_read_as_prometheus_client_reads_them(
    fleet: Fleet,
) -> None:
    with httpx.Client(timeout=5.0) as client:
        for svc in fleet.services:
            text = client.get(svc.base_url + "/metrics").text
            mine = parse_exposition(text, 1.0, AT)
            assert same(mine, reference(text)), svc
            assert mine.requests is not None and mine.buckets and mine.cache_hit


CORNERS = """\
# HELP process_cpu_seconds_total Not ours: skipped unread.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
python_info{implementation="CPython",version="3.11"} 1.0
# TYPE acgs_requests_total counter
acgs_requests_total{service="a",status_code="200"} 1000
acgs_requests_total{status_code="503",service="b"} 7 1718000000000
acgs_requests_total{ service = "c" , status_code = "500" , } 3
acgs_requests_total{path="/x\\"y\\\\z\\n",status_code="200"} 10
acgs_requests_total{code="502"} 2
acgs_requests_total{status="5xx"} 4
acgs_requests_total 1e2
# TYPE acgs_request_duration_seconds histogram
acgs_request_duration_seconds_bucket{le="0.001"} 5
acgs_request_duration_seconds_bucket{le="0.005",service="b"} 9.5
acgs_request_duration_seconds_bucket{le="+Inf"} 12
acgs_request_duration_seconds_bucket{service="b",le="+Inf"} 12
acgs_request_duration_seconds_count 12
acgs_request_duration_seconds_sum 0.03
# TYPE acgs_cache_hit_rate gauge
acgs_cache_hit_rate{service="a"} 0.91
acgs_cache_hit_rate{service="b"} NaN
acgs_cache_hit_rate{service="c"} +Inf
acgs_cache_hit_rate{service="d"} -Inf
acgs_constitutional_compliance_score 99.5
acgs_constitutional_hash_validation_failures_total 0
acgs_authentication_failures_total{reason="bad token"} 6
acgs_authentication_failures_total{reason="no token"} .5
acgs_requests_totally_different 999
"""


def test_every_corner_of_the_text_format_reads_as_before() -> None:
    mine = parse_exposition(CORNERS, 1.0, AT)
    assert same(mine, reference(CORNERS))
    assert mine.requests == 1000 + 7 + 3 + 10 + 2 + 4 + 100
    assert mine.errors_5xx == 7 + 3 + 2  # "5xx" is not a status code
    assert mine.buckets == {0.001: 5.0, 0.005: 9.5, math.inf: 24.0}
    assert mine.auth_failures == 6.5 and mine.hash_failures == 0.0
    assert mine.compliance == (99.5,)


def test_labels_unescape_and_an_exemplar_or_a_timestamp_is_ignored() -> None:
    name, labels, value = parse_sample_line(r'x{a="q\"uo\\te\nnl",b=""} 3 1718000000.5')
    assert (name, labels, value) == ("x", {"a": 'q"uo\\te\nnl', "b": ""}, 3.0)
    name, labels, value = parse_sample_line('x_bucket{le="0.5"} 4 # {trace_id="abc"} 0.3 1.0')
    assert (name, labels, value) == ("x_bucket", {"le": "0.5"}, 4.0)
    assert parse_sample_line("x -1.5e-3") == ("x", {}, -0.0015)


@pytest.mark.parametrize(
    "line",
    [
        'acgs_requests_total{status_code="200" 5',  # unterminated label set
        'acgs_requests_total{status_code="200"} five',
        'acgs_requests_total{status_code="200"}',  # no value
        "acgs_requests_total{status_code=200} 5",  # unquoted label value
        'acgs_requests_total{status_code="200"} 5 6 7',
        "acgs_cache_hit_rate 1_000",
        "acgs_cache_hit_rate 0x10",
        'acgs_cache_hit_rate{a="1"}{b="2"} 1',
        "acgs_cache_hit_rate in",
    ],
)
def test_a_malformed_line_of_a_series_in_use_fails_the_exposition(line: str) -> None:
    with pytest.raises(ValueError):
        parse_exposition(f"acgs_requests_total 1\n{line}\n", 1.0, AT)


def test_values_read_as_prometheus_reads_them() -> None:
    for raw, value in [("Infinity", math.inf), ("-inf", -math.inf), ("1E3", 1000.0), ("7.", 7.0)]:
        assert parse_sample_line(f"x {raw}")[2] == value
    assert math.isnan(parse_sample_line("x nan")[2])


def test_lines_of_other_series_are_not_even_read() -> None:
    text = "something_else{{{ garbage\nacgs_unused_series oops\nacgs_requests_total 5\n"
    assert parse_exposition(text, 1.0, AT).requests == 5.0
