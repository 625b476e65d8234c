"""The compliance score: the formula on fixed observations, then on the real fleet.

The pure tests hand :func:`assess_compliance` fixed ServiceHealth and metrics
(it does no I/O: these are its inputs, not a mock of anything it talks to). The
engine test scores the sandbox fleet as probed for real, before and after a
wrong-hash fault.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest

from backends.health import HealthProber, make_client
from backends.metrics import METRIC_NAMES, metric_value
from backends.models import (
    ORCHESTRATORS,
    ComplianceResult,
    Environment,
    EnvironmentMetrics,
    HashVerdict,
    ServiceHealth,
    ServiceState,
)
from backends.scrape import DirectScrapeSource
from console.compliance import (
    CHECK_BODY_HASH,
    CHECK_GAUGE,
    CHECK_HASH_FAILURES,
    CHECK_HEADER_HASH,
    CHECK_SERVICES_UP,
    assess_compliance,
)

if TYPE_CHECKING:
    from conftest import Fleet

HASH = "cdd01ef066bc6cf2"
GREEN = Environment.GREEN


def svc(name: str, **kw: Any) -> ServiceHealth:
    fields: dict[str, Any] = {
        "environment": GREEN,
        "service": name,
        "url": f"http://x/{name}/health",
        "state": ServiceState.UP,
        "body_hash": HASH,
        "header_hash": HASH,
        "body_hash_verdict": HashVerdict.OK,
        "header_hash_verdict": HashVerdict.OK,
    }
    fields.update(kw)
    return ServiceHealth(**fields)


def metrics(**values: Any) -> EnvironmentMetrics:
    """All metrics known and good, except the ones given (a number, None, or kwargs dict)."""
    good: dict[str, float] = {
        "p99_latency_ms": 3.0,
        "requests_per_second": 150.0,
        "error_rate": 0.0,
        "cache_hit_rate": 0.9,
        "compliance_score": 100.0,
        "hash_validation_failure_rate": 0.0,
        "auth_failures_per_minute": 0.0,
    }
    out = {}
    for name in METRIC_NAMES:
        given = values.get(name, good[name])
        if isinstance(given, dict):
            out[name] = metric_value(name, source="prometheus", **given)
        else:
            out[name] = metric_value(name, given, source="prometheus")
    return EnvironmentMetrics(**out)


ALL_UP = [svc(name) for name in ORCHESTRATORS]


def check(result: ComplianceResult, name: str) -> Any:
    return next(c for c in result.checks if c.name == name)


def test_everything_passing_is_100() -> None:
    result = assess_compliance(ALL_UP, metrics(), ORCHESTRATORS)
    assert result.score == 100.0
    assert result.failed == []
    assert [c.name for c in result.checks] == [
        CHECK_SERVICES_UP,
        CHECK_BODY_HASH,
        CHECK_HEADER_HASH,
        CHECK_GAUGE,
        CHECK_HASH_FAILURES,
    ]
    assert check(result, CHECK_SERVICES_UP).detail == "9/9 up"


def test_one_service_down_fails_up_and_leaves_its_hash_unchecked() -> None:
    services = [
        *ALL_UP[:-1],
        svc(
            ORCHESTRATORS[-1],
            state=ServiceState.DOWN,
            reason="connection refused",
            body_hash=None,
            header_hash=None,
            body_hash_verdict=HashVerdict.UNKNOWN,
            header_hash_verdict=HashVerdict.UNKNOWN,
        ),
    ]
    result = assess_compliance(services, metrics(), ORCHESTRATORS)
    up = check(result, CHECK_SERVICES_UP)
    assert up.passed is False
    assert up.detail == "8/9 up; unified_orchestrator: down (connection refused)"
    body = check(result, CHECK_BODY_HASH)
    # A hash nobody could read is not a pass: unknown, counted as failed.
    assert body.passed is None and "unified_orchestrator" in body.detail
    assert result.score == pytest.approx(100 * 2 / 5)
    assert {c.name for c in result.failed} == {
        CHECK_SERVICES_UP,
        CHECK_BODY_HASH,
        CHECK_HEADER_HASH,
    }


def test_a_missing_expected_service_is_not_up() -> None:
    result = assess_compliance(ALL_UP[1:], metrics(), ORCHESTRATORS)
    assert check(result, CHECK_SERVICES_UP).passed is False
    assert "performance_suite: not probed" in check(result, CHECK_SERVICES_UP).detail
    assert result.score is not None and result.score < 100


def test_wrong_body_hash_on_one_response_fails_the_body_check_only() -> None:
    services = [
        *ALL_UP[1:],
        svc(ORCHESTRATORS[0], body_hash="0000deadbeef0000", body_hash_verdict=HashVerdict.MISMATCH),
    ]
    result = assess_compliance(services, metrics(), ORCHESTRATORS, expected_hash=HASH)
    body = check(result, CHECK_BODY_HASH)
    assert body.passed is False
    assert (
        body.detail
        == "mismatch, expected 'cdd01ef066bc6cf2': performance_suite ('0000deadbeef0000')"
    )
    assert check(result, CHECK_HEADER_HASH).passed is True
    assert result.score == 80.0


def test_missing_header_fails_the_header_check() -> None:
    services = [
        *ALL_UP[1:],
        svc(ORCHESTRATORS[0], header_hash=None, header_hash_verdict=HashVerdict.MISSING),
    ]
    result = assess_compliance(services, metrics(), ORCHESTRATORS)
    header = check(result, CHECK_HEADER_HASH)
    assert header.passed is False and header.detail == "missing: performance_suite"
    assert result.score == 80.0


def test_unexpected_service_is_judged_too() -> None:
    extra = svc("rogue_service", header_hash="x", header_hash_verdict=HashVerdict.MISMATCH)
    result = assess_compliance([*ALL_UP, extra], metrics(), ORCHESTRATORS)
    assert check(result, CHECK_HEADER_HASH).passed is False
    assert check(result, CHECK_SERVICES_UP).passed is True


@pytest.mark.parametrize("value", [99.99, 0.0])
def test_gauge_below_100_fails(value: float) -> None:
    result = assess_compliance(ALL_UP, metrics(compliance_score=value), ORCHESTRATORS)
    gauge = check(result, CHECK_GAUGE)
    assert gauge.passed is False and f"{value:g}" in gauge.detail
    assert result.score == 80.0


@pytest.mark.parametrize(
    "unknown",
    [
        {"value": None, "error": "connection refused"},
        {"value": float("nan")},
        {"value": None, "error": "no data for 'green'"},
    ],
)
def test_unknown_gauge_fails_as_unknown(unknown: dict[str, Any]) -> None:
    result = assess_compliance(ALL_UP, metrics(compliance_score=unknown), ORCHESTRATORS)
    gauge = check(result, CHECK_GAUGE)
    assert gauge.passed is None and gauge.detail.startswith("unknown: ")
    assert result.score == 80.0
    assert result.notes == ()


def test_stale_gauge_fails_as_unknown() -> None:
    from datetime import timedelta

    from backends.models import utcnow

    old = utcnow() - timedelta(seconds=60)
    stale = {"value": 100.0, "sampled_at": old, "max_age_s": 5.0}
    result = assess_compliance(ALL_UP, metrics(compliance_score=stale), ORCHESTRATORS)
    gauge = check(result, CHECK_GAUGE)
    assert gauge.passed is None and gauge.detail.startswith("stale")


def test_gauge_not_exported_at_all_is_left_out_with_a_note() -> None:
    absent = {"value": None, "error": "no such series", "absent": True}
    result = assess_compliance(ALL_UP, metrics(compliance_score=absent), ORCHESTRATORS)
    assert CHECK_GAUGE not in {c.name for c in result.checks}
    assert len(result.checks) == 4 and result.score == 100.0
    assert len(result.notes) == 1 and "not counted" in result.notes[0]


def test_hash_validation_failures_in_the_window_fail() -> None:
    result = assess_compliance(ALL_UP, metrics(hash_validation_failure_rate=0.002), ORCHESTRATORS)
    failures = check(result, CHECK_HASH_FAILURES)
    assert failures.passed is False and "0.2 %" in failures.detail
    unknown = assess_compliance(
        ALL_UP,
        metrics(hash_validation_failure_rate={"value": None, "error": "timeout after 2 s"}),
        ORCHESTRATORS,
    )
    assert check(unknown, CHECK_HASH_FAILURES).passed is None
    assert "timeout after 2 s" in check(unknown, CHECK_HASH_FAILURES).detail


def test_an_idle_environment_has_no_hash_failures_but_unknown_traffic_is_unknown() -> None:
    nan = {"value": float("nan")}
    idle = assess_compliance(
        ALL_UP,
        metrics(requests_per_second=0.0, hash_validation_failure_rate=nan),
        ORCHESTRATORS,
    )
    assert check(idle, CHECK_HASH_FAILURES).passed is True
    assert "no requests in the window" in check(idle, CHECK_HASH_FAILURES).detail
    blind = assess_compliance(
        ALL_UP,
        metrics(
            requests_per_second={"value": None, "error": "x"}, hash_validation_failure_rate=nan
        ),
        ORCHESTRATORS,
    )
    assert check(blind, CHECK_HASH_FAILURES).passed is None


def test_nothing_observed_is_never_a_pass() -> None:
    nothing = {name: {"value": None, "error": "connection refused"} for name in METRIC_NAMES}
    result = assess_compliance([], metrics(**nothing), ORCHESTRATORS)
    assert result.score == 0.0
    assert all(c.passed is not True for c in result.checks)
    empty = assess_compliance([], metrics(**nothing), [])
    assert empty.score == 0.0


# -- the real fleet ---------------------------------------------------------------------------


def _control(fleet: Fleet, path: str, payload: dict[str, object]) -> None:
    response = httpx.post(fleet.control_url + path, json=payload, timeout=5.0)
    assert response.status_code == 200, response.text


async def _score(
    fleet: Fleet, prober: HealthProber, source: DirectScrapeSource
) -> ComplianceResult:
    services = await prober.probe_many(
        (GREEN, s.service, s.base_url + "/health")
        for s in fleet.services
        if s.environment == "green"
    )
    metrics_now = (await source.fetch())[GREEN]
    return assess_compliance(services, metrics_now, ORCHESTRATORS, expected_hash=HASH)


@pytest.mark.engines
async def test_fleet_compliance_100_then_a_wrong_hash_shows_by_name(fleet: Fleet) -> None:
    client = make_client(1.0)
    prober = HealthProber(client, HASH, 1.0)
    targets = {GREEN: [s.base_url + "/metrics" for s in fleet.services if s.environment == "green"]}
    source = DirectScrapeSource(client, targets)
    try:
        # The first scrape has no rates yet: the failure share is unknown, so not 100 %.
        first = await _score(fleet, prober, source)
        assert check(first, CHECK_HASH_FAILURES).passed is None
        before = await _score(fleet, prober, source)
        assert before.score == 100.0, before.failed
        _control(
            fleet,
            "/control/fault",
            {"environment": "green", "service": "cache_optimizer", "kind": "wrong_hash"},
        )
        try:
            during = await _score(fleet, prober, source)
        finally:
            _control(
                fleet, "/control/clear", {"environment": "green", "service": "cache_optimizer"}
            )
        failed = {c.name: c.detail for c in during.failed}
        assert CHECK_BODY_HASH in failed and CHECK_HEADER_HASH in failed
        assert "cache_optimizer ('0000deadbeef0000')" in failed[CHECK_BODY_HASH]
        assert during.score is not None and during.score <= 60.0
        after = await _score(fleet, prober, source)
        assert {CHECK_BODY_HASH, CHECK_HEADER_HASH}.isdisjoint(c.name for c in after.failed)
    finally:
        await client.aclose()
