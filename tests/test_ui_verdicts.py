"""The dashboard's visual vocabulary: levels, badges, verdicts, alert timers (no Textual)."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import ui_fixtures as fx

from backends.models import (
    AlertPhase,
    AlertSeverity,
    ComplianceCheck,
    ComplianceResult,
    Environment,
    HashVerdict,
    MetricValue,
    ProbeState,
    ReplicationStatus,
    ServiceState,
)
from console.config import Thresholds
from widgets.series import BucketedSeries, worst_of
from widgets.verdicts import (
    SYMBOLS,
    Level,
    alert_badge,
    alert_text,
    compliance_line,
    environment_verdict,
    format_duration,
    format_latency,
    format_metric,
    hash_badge,
    metric_level,
    ordered_alerts,
    probe_badge,
    replication_line,
    service_badge,
    service_label,
    traffic_share,
    worst,
)

T = Thresholds()


def mv(value: float | None, *, stale: bool = False) -> MetricValue:
    return MetricValue(name="m", value=value, stale=stale)


def test_every_level_has_its_own_symbol_and_word() -> None:
    assert len(set(SYMBOLS.values())) == len(Level)
    for state in ServiceState:
        badge = service_badge(state)
        assert badge.glyph and badge.word, state
        assert badge.text.startswith(badge.glyph + " ")
    for probe in ProbeState:
        assert probe_badge(probe).word


def test_service_states_read_without_colour() -> None:
    assert service_badge(ServiceState.UP).text == "✔ up"
    assert service_badge(ServiceState.DEGRADED).text == "▲ degraded"
    assert service_badge(ServiceState.DOWN).text == "✖ down"
    assert service_badge(ServiceState.UNKNOWN).text == "? unknown"
    assert service_badge(ServiceState.BAD_RESPONSE).level is Level.CRITICAL


def test_not_configured_is_shown_and_never_passes() -> None:
    badge = probe_badge(ProbeState.NOT_CONFIGURED)
    assert badge.word == "not configured"
    assert badge.level is not Level.OK
    rep, _ = replication_line(ReplicationStatus(state=ProbeState.NOT_CONFIGURED))
    assert rep.level is not Level.OK


def test_replication_ok_but_unsynchronized_is_not_ok() -> None:
    unknown, _ = replication_line(ReplicationStatus(state=ProbeState.OK, synchronized=None))
    behind, _ = replication_line(ReplicationStatus(state=ProbeState.OK, synchronized=False))
    assert unknown.level is Level.UNKNOWN
    assert behind.level is Level.CRITICAL


@pytest.mark.parametrize(
    ("body", "header", "expected"),
    [
        (HashVerdict.OK, HashVerdict.OK, "✔ ok"),
        (HashVerdict.MISMATCH, HashVerdict.MISMATCH, "✖ mismatch"),
        (HashVerdict.OK, HashVerdict.MISSING, "✖ hdr missing"),
        (HashVerdict.MISMATCH, HashVerdict.OK, "✖ body mismatch"),
        (HashVerdict.OK, HashVerdict.UNKNOWN, "? unknown"),
        (HashVerdict.UNKNOWN, HashVerdict.UNKNOWN, "? unknown"),
    ],
)
def test_hash_badge(body: HashVerdict, header: HashVerdict, expected: str) -> None:
    assert hash_badge(body, header).text == expected


def test_worst_ranks_unknown_above_warning_and_empty_is_unknown() -> None:
    assert worst([Level.OK, Level.WARNING, Level.UNKNOWN]) is Level.UNKNOWN
    assert worst([Level.UNKNOWN, Level.CRITICAL]) is Level.CRITICAL
    assert worst([Level.OK]) is Level.OK
    assert worst([]) is Level.UNKNOWN


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("p99_latency_ms", 3.9, Level.OK),
        ("p99_latency_ms", 4.5, Level.WARNING),
        ("p99_latency_ms", 5.0, Level.WARNING),
        ("p99_latency_ms", 5.01, Level.CRITICAL),
        ("requests_per_second", 150.0, Level.OK),
        ("requests_per_second", 110.0, Level.WARNING),
        ("requests_per_second", 99.0, Level.CRITICAL),
        ("cache_hit_rate", 0.90, Level.OK),
        ("cache_hit_rate", 0.86, Level.WARNING),
        ("cache_hit_rate", 0.84, Level.CRITICAL),
        ("error_rate", 0.0, Level.OK),
        ("error_rate", 0.005, Level.WARNING),
        ("error_rate", 0.02, Level.CRITICAL),
    ],
)
def test_metric_levels_follow_the_runbook_thresholds(
    field: str, value: float, expected: Level
) -> None:
    assert metric_level(field, mv(value), T) is expected


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_missing_or_non_finite_metric_is_unknown(bad: float | None) -> None:
    assert metric_level("p99_latency_ms", mv(bad), T) is Level.UNKNOWN


def test_stale_metric_is_stale_even_when_its_number_would_pass() -> None:
    assert metric_level("p99_latency_ms", mv(1.0, stale=True), T) is Level.STALE


def test_formats() -> None:
    assert format_metric("p99_latency_ms", 2.345) == "2.35 ms"
    assert format_metric("requests_per_second", 412.4) == "412 rps"
    assert format_metric("cache_hit_rate", 0.934) == "93.4 %"
    assert format_metric("error_rate", 0.0002) == "0.02 %"
    assert format_latency(None) == "—"
    assert format_latency(2.04) == "2.0 ms"
    assert format_latency(1530) == "1.5 s"
    assert format_duration(72) == "1m12s"
    assert format_duration(120) == "2m"
    assert format_duration(45) == "45s"
    assert format_duration(3900) == "1h05m"
    assert service_label("security_orchestrator") == "security"
    assert service_label("constitutional_compliance_framework") == "compliance_framework"
    assert service_label("performance_suite") == "performance_suite"


def test_compliance_unknown_checks_are_unknown_not_ok() -> None:
    partly = ComplianceResult(
        checks=(ComplianceCheck(name="a", passed=True), ComplianceCheck(name="b", passed=None))
    )
    failing = ComplianceResult(
        checks=(ComplianceCheck(name="a", passed=False), ComplianceCheck(name="b", passed=None))
    )
    assert compliance_line(partly, T)[0].level is Level.UNKNOWN
    assert compliance_line(failing, T)[0].level is Level.CRITICAL
    assert compliance_line(failing, T)[2] == "a, b"
    assert compliance_line(ComplianceResult(), T)[0].level is Level.UNKNOWN


def test_alert_timer_text() -> None:
    snap = fx.green_degraded()
    p99 = next(a for a in snap.alerts if a.summary == "P99 > 5 ms")
    assert alert_text(p99, fx.T0) == "P99 > 5 ms: 1m12s of 2m"
    immediate = next(a for a in snap.alerts if a.summary == "compliance < 100%")
    assert alert_text(immediate, fx.T0 + timedelta(seconds=6)) == "compliance < 100%: for 40s"
    assert alert_badge(p99).text == "◷ pending"
    assert alert_badge(immediate).text == "✖ FIRING"


def test_alerts_order_firing_critical_first() -> None:
    snap = fx.green_degraded()
    ordered = ordered_alerts(snap.alerts, fx.T0)
    phases = [(a.phase, a.severity) for a in ordered]
    assert phases[0] == (AlertPhase.FIRING, AlertSeverity.CRITICAL)
    assert phases[-1] == (AlertPhase.PENDING, AlertSeverity.WARNING)


def test_environment_verdicts_of_the_four_states() -> None:
    healthy = fx.healthy()
    assert environment_verdict(healthy.blue, T, expected_services=9).badge.text == "✔ healthy"

    degraded = fx.green_degraded()
    green = environment_verdict(degraded.green, T, expected_services=9)
    assert green.badge.level is Level.CRITICAL
    assert (green.up, green.total) == (8, 9)
    assert green.hash_badge.level is Level.CRITICAL
    assert "1 down" in green.reasons
    assert any(r.startswith("P99 ") for r in green.reasons)

    prom = fx.prometheus_unreachable()
    for env in (prom.blue, prom.green):
        verdict = environment_verdict(env, T, expected_services=9)
        assert verdict.badge.level is Level.UNKNOWN, verdict
        assert "metrics unknown" in verdict.reasons

    stale = environment_verdict(healthy.blue, T, stale=True, expected_services=9)
    assert stale.badge.text == "◌ stale"


def test_missing_orchestrators_count_as_unknown() -> None:
    env = fx.healthy().blue
    env = env.model_copy(update={"services": env.services[:7]})
    verdict = environment_verdict(env, T, expected_services=9)
    assert verdict.badge.level is Level.UNKNOWN
    assert verdict.total == 9
    assert "2 unknown" in verdict.reasons


def test_throughput_is_judged_by_the_share_of_traffic() -> None:
    idle = mv(0.0)
    assert metric_level("requests_per_second", idle, T, traffic_share=0.0) is Level.OK
    assert metric_level("requests_per_second", idle, T, traffic_share=1.0) is Level.CRITICAL
    # Unknown share: held to the full number, never a pass by default.
    assert metric_level("requests_per_second", idle, T) is Level.CRITICAL
    half = mv(55.0)
    assert metric_level("requests_per_second", half, T, traffic_share=0.5) is Level.WARNING
    assert metric_level("requests_per_second", mv(61.0), T, traffic_share=0.5) is Level.OK
    snap = fx.mid_switch()
    assert traffic_share(snap.traffic, Environment.GREEN) == 0.5
    unknown = snap.traffic.model_copy(update={"green_percentage": None})
    assert traffic_share(unknown, Environment.BLUE) is None


def test_sparkline_series_changes_once_per_bucket() -> None:
    series = BucketedSeries(capacity=12, columns=4, summary=max)
    assert series.per == 3
    drawn = []
    for value in [1.0, 5.0, 2.0, 3.0, 1.0, 1.0, 9.0]:
        series.add(value)
        drawn.append(series.drawn())
    # Before the first bucket completes, the partial one shows; afterwards only complete ones.
    assert drawn[0] == [1.0] and drawn[1] == [5.0]
    assert drawn[2] == drawn[3] == drawn[4] == [5.0]
    assert drawn[5] == drawn[6] == [5.0, 3.0]
    for value in range(20):
        series.add(float(value))
    assert len(series.drawn()) == 4
    assert len(series) <= 12
    assert worst_of("cache_hit_rate") is min and worst_of("p99_latency_ms") is max
