"""Alert rules: every runbook line, the pending/firing state machine, unknown input, export.

The state machine is stepped with injected time (no clock, no sleeping). The
export is checked by the real ``promtool`` and loaded into a real Prometheus.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from backends.models import (
    ORCHESTRATORS,
    AlertPhase,
    AlertSeverity,
    ComplianceCheck,
    ComplianceResult,
    Environment,
    EnvironmentMetrics,
    EnvironmentSnapshot,
    HashVerdict,
    MetricValue,
    ProbeState,
    RedisStatus,
    ReplicationStatus,
    ServiceHealth,
    ServiceState,
)
from console.config import AppConfig, Thresholds
from console.rules import (
    AlertRule,
    AuditVerification,
    RuleEvaluator,
    RuleInputs,
    SecurityValidation,
    VulnerabilityReport,
    alert_passes,
    all_pass,
    build_rules,
    format_duration,
    prometheus_rules_yaml,
    run_rules_export,
)

RUNBOOK = Path(__file__).parent / "data" / "acgs-production-deployment-runbook.md"
T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
BLUE, GREEN = Environment.BLUE, Environment.GREEN


# -- building observations --------------------------------------------------------------------


def metric(name: str, value: float | None, *, stale: bool = False) -> MetricValue:
    return MetricValue(
        name=name, value=value, stale=stale, error=None if value is not None else "no data"
    )


GOOD_METRICS: dict[str, float | None] = {
    "p99_latency_ms": 3.0,
    "requests_per_second": 150.0,
    "error_rate": 0.0,
    "cache_hit_rate": 0.92,
    "compliance_score": 100.0,
    "hash_validation_failure_rate": 0.0,
    "auth_failures_per_minute": 0.0,
}


def metrics(**override: float | MetricValue | None) -> EnvironmentMetrics:
    values: dict[str, Any] = {**GOOD_METRICS, **override}
    return EnvironmentMetrics(
        **{k: v if isinstance(v, MetricValue) else metric(k, v) for k, v in values.items()}
    )


def service(
    env: Environment,
    name: str,
    state: ServiceState = ServiceState.UP,
    *,
    status: int | None = 200,
    body: HashVerdict = HashVerdict.OK,
    header: HashVerdict = HashVerdict.OK,
) -> ServiceHealth:
    return ServiceHealth(
        environment=env,
        service=name,
        url=f"http://127.0.0.1:1/{name}/health",
        state=state,
        http_status=status,
        body_hash_verdict=body,
        header_hash_verdict=header,
        body_hash="cdd01ef066bc6cf2" if body is HashVerdict.OK else None,
        header_hash="cdd01ef066bc6cf2" if header is HashVerdict.OK else None,
    )


def all_checks(passed: bool | None = True, n: int = 5) -> ComplianceResult:
    return ComplianceResult(
        checks=tuple(ComplianceCheck(name=f"check {i}", passed=passed) for i in range(n))
    )


def env_snapshot(
    env: Environment,
    *,
    services: tuple[ServiceHealth, ...] | None = None,
    env_metrics: EnvironmentMetrics | None = None,
    compliance: ComplianceResult | None = None,
) -> EnvironmentSnapshot:
    return EnvironmentSnapshot(
        environment=env,
        services=services
        if services is not None
        else tuple(service(env, n) for n in ORCHESTRATORS),
        metrics=env_metrics or metrics(),
        compliance=compliance if compliance is not None else all_checks(),
        redis=RedisStatus(state=ProbeState.OK),
        replication=ReplicationStatus(state=ProbeState.OK, synchronized=True),
    )


def both(**green: Any) -> dict[Environment, EnvironmentSnapshot]:
    """Blue healthy; green built from the keyword arguments."""
    return {BLUE: env_snapshot(BLUE), GREEN: env_snapshot(GREEN, **green)}


GOOD_INPUTS = RuleInputs(
    audit=AuditVerification(ok=True),
    security_score=MetricValue(name="security_score", value=98.0),
    vulnerabilities=VulnerabilityReport(critical=0, high=0),
    security_validation=SecurityValidation(passed=True),
)


def by_id(alerts: Any, rule_id: str) -> Any:
    matches = [a for a in alerts if a.rule_id == rule_id]
    assert len(matches) == 1, f"no single alert {rule_id!r} in {[a.rule_id for a in alerts]}"
    return matches[0]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- the rule set --------------------------------------------------------------------------


def runbook_alert_lines() -> list[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    section = text.split("## Monitoring Thresholds and Alerts", 1)[1].split("\n## ", 1)[0]
    lines = [
        m.group(1) + ": " + m.group(2)
        for m in re.finditer(r"^- \*\*(.+?)\*\*: (.+)$", section, re.M)
    ]
    assert len(lines) == 17, lines  # the section's seventeen alert lines
    return lines


def test_every_runbook_alert_line_is_a_rule() -> None:
    rules = build_rules(Thresholds())
    implemented = {r.runbook_text for r in rules}
    for line in runbook_alert_lines():
        assert line in implemented, f"runbook line without a rule: {line!r}"
    assert implemented <= set(runbook_alert_lines())


def test_per_environment_instances_and_unique_ids() -> None:
    rules = build_rules(Thresholds())
    assert len({r.id for r in rules}) == len(rules)
    per_key: dict[str, list[AlertRule]] = {}
    for rule in rules:
        per_key.setdefault(rule.key, []).append(rule)
    assert len(per_key) == 17
    for key, instances in per_key.items():
        envs = {r.environment for r in instances}
        assert envs in ({BLUE, GREEN}, {None}), (key, envs)
    estate = {k for k, v in per_key.items() if v[0].environment is None}
    assert estate == {
        "constitutional.audit_trail_corruption",
        "performance.throughput.critical",
        "performance.throughput.warning",
        "security.score",
        "security.vulnerability_detected",
        "security.constitutional_breach",
    }
    assert len(rules) == 11 * 2 + 6


def test_thresholds_durations_severities_from_the_runbook() -> None:
    rules = {r.id: r for r in build_rules(Thresholds())}
    expect = {
        "performance.p99_latency.critical/green": (">", 5.0, 120.0, "critical", "P99 > 5 ms"),
        "performance.p99_latency.warning/blue": (">", 4.0, 300.0, "warning", "P99 > 4 ms"),
        "performance.throughput.critical": ("<", 100.0, 60.0, "critical", None),
        "performance.throughput.warning": ("<", 120.0, 180.0, "warning", None),
        "performance.cache_hit_rate.critical/green": ("<", 0.85, 300.0, "critical", None),
        "performance.cache_hit_rate.warning/green": ("<", 0.87, 600.0, "warning", None),
        "constitutional.compliance_violation/blue": ("<", 100.0, 0.0, "critical", None),
        "constitutional.compliance_degradation/blue": ("<", 99.0, 0.0, "warning", None),
        "constitutional.hash_validation_failures/green": (">", 0.01, 0.0, "warning", None),
        "security.score": ("<", 90.0, 0.0, "critical", "security score < 90/100"),
        "security.unauthorized_access/green": (">", 10.0, 0.0, "critical", None),
    }
    for rule_id, (cmp, threshold, for_s, severity, summary) in expect.items():
        rule = rules[rule_id]
        assert (rule.comparison.value, rule.threshold, rule.for_seconds, rule.severity.value) == (
            cmp,
            threshold,
            for_s,
            severity,
        ), rule_id
        if summary:
            assert rule.summary == summary


def test_thresholds_come_from_the_config() -> None:
    custom = Thresholds(p99_latency_ms_critical=7.5, p99_latency_critical_for_s=30)
    rule = next(r for r in build_rules(custom) if r.id == "performance.p99_latency.critical/blue")
    assert (rule.threshold, rule.for_seconds, rule.summary) == (7.5, 30.0, "P99 > 7.5 ms")


# -- the state machine ---------------------------------------------------------------------


def test_pending_then_firing_after_the_for_duration_then_clearing() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    rid = "performance.p99_latency.critical/green"
    slow = both(env_metrics=metrics(p99_latency_ms=6.0))

    first = by_id(ev.evaluate(slow, at(0), GOOD_INPUTS), rid)
    assert first.phase is AlertPhase.PENDING
    assert first.active_since == at(0)
    assert first.value == 6.0
    assert not alert_passes(first)

    mid = by_id(ev.evaluate(slow, at(119), GOOD_INPUTS), rid)
    assert mid.phase is AlertPhase.PENDING
    assert mid.elapsed(at(119)) == 119

    fired = by_id(ev.evaluate(slow, at(120), GOOD_INPUTS), rid)
    assert fired.phase is AlertPhase.FIRING
    assert fired.active_since == at(0)
    assert fired.severity is AlertSeverity.CRITICAL

    still = by_id(ev.evaluate(slow, at(500), GOOD_INPUTS), rid)
    assert still.phase is AlertPhase.FIRING

    cleared = by_id(ev.evaluate(both(), at(501), GOOD_INPUTS), rid)
    assert cleared.phase is AlertPhase.INACTIVE
    assert cleared.active_since is None
    assert alert_passes(cleared)

    again = by_id(ev.evaluate(slow, at(502), GOOD_INPUTS), rid)
    assert again.phase is AlertPhase.PENDING
    assert again.active_since == at(502), "a cleared alert starts a new pending period"


def test_warning_and_critical_latency_rules_run_independently() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    between = both(env_metrics=metrics(p99_latency_ms=4.5))
    for t in (0, 299, 300):
        alerts = ev.evaluate(between, at(t), GOOD_INPUTS)
    assert by_id(alerts, "performance.p99_latency.warning/green").phase is AlertPhase.FIRING
    assert by_id(alerts, "performance.p99_latency.critical/green").phase is AlertPhase.INACTIVE
    assert by_id(alerts, "performance.p99_latency.warning/blue").phase is AlertPhase.INACTIVE


def test_a_rule_without_for_fires_at_once() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    alerts = ev.evaluate(
        both(env_metrics=metrics(auth_failures_per_minute=11.0)), at(0), GOOD_INPUTS
    )
    alert = by_id(alerts, "security.unauthorized_access/green")
    assert alert.phase is AlertPhase.FIRING
    assert alert.value == 11.0


def test_everything_nominal_passes() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    alerts = ev.evaluate(both(), at(0), GOOD_INPUTS)
    bad = [(a.rule_id, a.phase, a.detail) for a in alerts if not alert_passes(a)]
    assert bad == []
    assert all_pass(alerts)
    assert not all_pass(())


def test_unknown_input_never_fires_and_never_passes() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    rid = "performance.p99_latency.critical/green"
    missing = both(env_metrics=metrics(p99_latency_ms=None))
    for t in range(0, 1000, 60):
        alert = by_id(ev.evaluate(missing, at(t), GOOD_INPUTS), rid)
        assert alert.phase is AlertPhase.INACTIVE
        assert alert.unknown
        assert not alert_passes(alert)
        assert "no data" in alert.detail
    assert not all_pass(ev.evaluate(missing, at(1000), GOOD_INPUTS))


@pytest.mark.parametrize(
    "bad_value",
    [
        MetricValue(name="p99_latency_ms", value=9.0, stale=True),
        MetricValue(name="p99_latency_ms", value=float("nan")),
        MetricValue(name="p99_latency_ms", value=None, error="Prometheus down"),
    ],
    ids=["stale", "nan", "error"],
)
def test_stale_nan_or_error_metric_is_unknown(bad_value: MetricValue) -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    alerts = ev.evaluate(both(env_metrics=metrics(p99_latency_ms=bad_value)), at(0), GOOD_INPUTS)
    alert = by_id(alerts, "performance.p99_latency.critical/green")
    assert alert.unknown and alert.phase is AlertPhase.INACTIVE and not alert_passes(alert)


def test_unknown_resets_the_pending_timer() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    rid = "performance.p99_latency.critical/green"
    slow = both(env_metrics=metrics(p99_latency_ms=6.0))
    gap = both(env_metrics=metrics(p99_latency_ms=None))
    assert by_id(ev.evaluate(slow, at(0), GOOD_INPUTS), rid).phase is AlertPhase.PENDING
    assert by_id(ev.evaluate(gap, at(60), GOOD_INPUTS), rid).unknown
    back = by_id(ev.evaluate(slow, at(121), GOOD_INPUTS), rid)
    assert back.phase is AlertPhase.PENDING, "a gap in the data is not two minutes of breach"
    assert back.active_since == at(121)
    assert by_id(ev.evaluate(slow, at(241), GOOD_INPUTS), rid).phase is AlertPhase.FIRING


def test_a_firing_alert_whose_data_vanishes_stops_firing_but_does_not_pass() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    rid = "security.unauthorized_access/blue"
    attack = {
        BLUE: env_snapshot(BLUE, env_metrics=metrics(auth_failures_per_minute=50.0)),
        GREEN: env_snapshot(GREEN),
    }
    gone = {
        BLUE: env_snapshot(BLUE, env_metrics=metrics(auth_failures_per_minute=None)),
        GREEN: env_snapshot(GREEN),
    }
    assert by_id(ev.evaluate(attack, at(0), GOOD_INPUTS), rid).phase is AlertPhase.FIRING
    after = by_id(ev.evaluate(gone, at(1), GOOD_INPUTS), rid)
    assert after.phase is AlertPhase.INACTIVE and after.unknown and not alert_passes(after)


# -- partial knowledge ---------------------------------------------------------------------


def test_hash_mismatch_fires_on_one_wrong_hash_even_with_unknown_services() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    services = (
        *tuple(service(GREEN, n) for n in ORCHESTRATORS[:7]),
        service(GREEN, ORCHESTRATORS[7], header=HashVerdict.MISMATCH),
        service(
            GREEN,
            ORCHESTRATORS[8],
            ServiceState.DOWN,
            status=None,
            body=HashVerdict.UNKNOWN,
            header=HashVerdict.UNKNOWN,
        ),
    )
    alert = by_id(
        ev.evaluate(both(services=services), at(0), GOOD_INPUTS),
        "constitutional.hash_mismatch/green",
    )
    assert alert.phase is AlertPhase.FIRING
    assert alert.value == 1
    assert "header hash mismatch" in alert.detail


def test_hash_mismatch_is_unknown_while_a_service_cannot_be_checked() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    services = (
        *tuple(service(GREEN, n) for n in ORCHESTRATORS[:8]),
        service(
            GREEN,
            ORCHESTRATORS[8],
            ServiceState.DOWN,
            status=None,
            body=HashVerdict.UNKNOWN,
            header=HashVerdict.UNKNOWN,
        ),
    )
    alert = by_id(
        ev.evaluate(both(services=services), at(0), GOOD_INPUTS),
        "constitutional.hash_mismatch/green",
    )
    assert alert.unknown and not alert_passes(alert)


def test_missing_hash_header_fires() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    services = tuple(service(BLUE, n, header=HashVerdict.MISSING) for n in ORCHESTRATORS)
    alerts = ev.evaluate(
        {BLUE: env_snapshot(BLUE, services=services), GREEN: env_snapshot(GREEN)},
        at(0),
        GOOD_INPUTS,
    )
    assert by_id(alerts, "constitutional.hash_mismatch/blue").value == 9
    assert by_id(alerts, "constitutional.hash_mismatch/blue").phase is AlertPhase.FIRING
    assert alert_passes(by_id(alerts, "constitutional.hash_mismatch/green"))


def test_compliance_with_a_failed_check_fires_both_rules() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    checks = (*all_checks(True, 4).checks, ComplianceCheck(name="services up", passed=False))
    alerts = ev.evaluate(both(compliance=ComplianceResult(checks=checks)), at(0), GOOD_INPUTS)
    violation = by_id(alerts, "constitutional.compliance_violation/green")
    assert violation.phase is AlertPhase.FIRING and violation.value == 80.0
    assert "services up" in violation.detail
    assert by_id(alerts, "constitutional.compliance_degradation/green").phase is AlertPhase.FIRING


def test_compliance_with_an_unevaluable_check_is_unknown() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    checks = (*all_checks(True, 4).checks, ComplianceCheck(name="compliance gauge", passed=None))
    alerts = ev.evaluate(both(compliance=ComplianceResult(checks=checks)), at(0), GOOD_INPUTS)
    for rid in (
        "constitutional.compliance_violation/green",
        "constitutional.compliance_degradation/green",
    ):
        alert = by_id(alerts, rid)
        assert alert.unknown and alert.phase is AlertPhase.INACTIVE, rid
        assert "compliance gauge" in alert.detail


def test_compliance_degradation_is_decided_when_the_unknowns_cannot_matter() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    # 100 checks: 97 pass, 2 fail, 1 unknown -> the score is 97 or 98, below 99 either way.
    checks = (
        *tuple(ComplianceCheck(name=f"c{i}", passed=True) for i in range(97)),
        ComplianceCheck(name="f1", passed=False),
        ComplianceCheck(name="f2", passed=False),
        ComplianceCheck(name="u", passed=None),
    )
    alerts = ev.evaluate(both(compliance=ComplianceResult(checks=checks)), at(0), GOOD_INPUTS)
    alert = by_id(alerts, "constitutional.compliance_degradation/green")
    assert alert.phase is AlertPhase.FIRING and not alert.unknown
    assert alert.value == 98.0  # the best the score can be


def test_no_compliance_checks_is_unknown() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    alerts = ev.evaluate(both(compliance=ComplianceResult()), at(0), GOOD_INPUTS)
    assert by_id(alerts, "constitutional.compliance_violation/green").unknown


def test_throughput_is_judged_on_the_estate() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    rid = "performance.throughput.critical"
    # Blue serves everything, idle green serves nothing: the estate is fine.
    idle = both(env_metrics=metrics(requests_per_second=0.0))
    assert alert_passes(by_id(ev.evaluate(idle, at(0), GOOD_INPUTS), rid))
    # Green unknown but blue alone is above the line: decided, passes.
    unknown_green = both(env_metrics=metrics(requests_per_second=None))
    assert alert_passes(by_id(ev.evaluate(unknown_green, at(1), GOOD_INPUTS), rid))
    # Both low: 40 + 30 < 100.
    low = {
        BLUE: env_snapshot(BLUE, env_metrics=metrics(requests_per_second=40.0)),
        GREEN: env_snapshot(GREEN, env_metrics=metrics(requests_per_second=30.0)),
    }
    alert = by_id(ev.evaluate(low, at(2), GOOD_INPUTS), rid)
    assert alert.phase is AlertPhase.PENDING and alert.value == 70.0
    assert by_id(ev.evaluate(low, at(62), GOOD_INPUTS), rid).phase is AlertPhase.FIRING
    # Blue low and green unknown: could be either side of 100 -> unknown.
    low_unknown = {
        BLUE: env_snapshot(BLUE, env_metrics=metrics(requests_per_second=40.0)),
        GREEN: env_snapshot(GREEN, env_metrics=metrics(requests_per_second=None)),
    }
    assert by_id(ev.evaluate(low_unknown, at(63), GOOD_INPUTS), rid).unknown


def test_service_unavailable_on_5xx_or_no_answer() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    rid = "performance.service_unavailable/green"
    five = (
        *tuple(service(GREEN, n) for n in ORCHESTRATORS[:8]),
        service(GREEN, ORCHESTRATORS[8], ServiceState.DOWN, status=503),
    )
    alert = by_id(ev.evaluate(both(services=five), at(0), GOOD_INPUTS), rid)
    assert alert.phase is AlertPhase.FIRING and "HTTP 503" in alert.detail
    refused = (
        *tuple(service(GREEN, n) for n in ORCHESTRATORS[:8]),
        service(GREEN, ORCHESTRATORS[8], ServiceState.DOWN, status=None),
    )
    assert by_id(ev.evaluate(both(services=refused), at(1), GOOD_INPUTS), rid).phase is (
        AlertPhase.FIRING
    )
    assert by_id(ev.evaluate(both(services=()), at(2), GOOD_INPUTS), rid).unknown


def test_constitutional_service_unavailable_watches_the_compliance_framework() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    rid = "constitutional.service_unavailable/blue"
    down = tuple(
        service(
            BLUE,
            n,
            ServiceState.DOWN if n == "constitutional_compliance_framework" else ServiceState.UP,
            status=None if n == "constitutional_compliance_framework" else 200,
        )
        for n in ORCHESTRATORS
    )
    alerts = ev.evaluate(
        {BLUE: env_snapshot(BLUE, services=down), GREEN: env_snapshot(GREEN)}, at(0), GOOD_INPUTS
    )
    alert = by_id(alerts, rid)
    assert alert.phase is AlertPhase.FIRING and alert.severity is AlertSeverity.WARNING
    others = tuple(s for s in down if s.service != "constitutional_compliance_framework")
    alerts = ev.evaluate(
        {BLUE: env_snapshot(BLUE, services=others), GREEN: env_snapshot(GREEN)}, at(1), GOOD_INPUTS
    )
    assert by_id(alerts, rid).unknown, "not probed at all is unknown"


# -- input hooks ---------------------------------------------------------------------------


def test_input_hooks_missing_are_unknown() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    alerts = ev.evaluate(both(), at(0), None)
    for rid in (
        "constitutional.audit_trail_corruption",
        "security.score",
        "security.vulnerability_detected",
        "security.constitutional_breach",
    ):
        alert = by_id(alerts, rid)
        assert alert.unknown and alert.phase is AlertPhase.INACTIVE, rid
        assert "given" in alert.detail
    assert not all_pass(alerts)


@pytest.mark.parametrize(
    ("inputs", "rule_id"),
    [
        (
            RuleInputs(audit=AuditVerification(ok=False, detail="record 7: prev_hash breaks")),
            "constitutional.audit_trail_corruption",
        ),
        (
            RuleInputs(security_score=MetricValue(name="security_score", value=89.0)),
            "security.score",
        ),
        (
            RuleInputs(vulnerabilities=VulnerabilityReport(critical=0, high=1)),
            "security.vulnerability_detected",
        ),
        (
            RuleInputs(security_validation=SecurityValidation(passed=False)),
            "security.constitutional_breach",
        ),
    ],
)
def test_input_hooks_fire(inputs: RuleInputs, rule_id: str) -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    alert = by_id(ev.evaluate(both(), at(0), inputs), rule_id)
    assert alert.phase is AlertPhase.FIRING and alert.severity is AlertSeverity.CRITICAL


def test_unreadable_audit_trail_is_unknown() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    inputs = RuleInputs(audit=AuditVerification(ok=None, detail="store unreachable"))
    alert = by_id(ev.evaluate(both(), at(0), inputs), "constitutional.audit_trail_corruption")
    assert alert.unknown and alert.phase is AlertPhase.INACTIVE
    assert alert.detail == "store unreachable"


def test_stale_security_score_is_unknown() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    inputs = RuleInputs(security_score=MetricValue(name="security_score", value=99.0, stale=True))
    assert by_id(ev.evaluate(both(), at(0), inputs), "security.score").unknown


def test_a_missing_environment_is_unknown_not_a_crash() -> None:
    ev = RuleEvaluator(build_rules(Thresholds()))
    alerts = ev.evaluate({BLUE: env_snapshot(BLUE)}, at(0), GOOD_INPUTS)
    green = [a for a in alerts if a.environment is GREEN]
    assert green and all(a.unknown for a in green)
    assert all(alert_passes(a) for a in alerts if a.environment is BLUE)


def test_duplicate_rule_ids_are_refused() -> None:
    rules = build_rules(Thresholds())
    with pytest.raises(ValueError, match="duplicate rule ids"):
        RuleEvaluator([*rules, rules[0]])


# -- export --------------------------------------------------------------------------------


def sandbox_config(**prometheus: Any) -> AppConfig:
    services = {n: {"base_url": "http://127.0.0.1:9"} for n in ORCHESTRATORS}
    return AppConfig(
        environments={"blue": {"services": services}, "green": {"services": services}},
        traffic={"kind": "sandbox", "control_url": "http://127.0.0.1:9"},
        prometheus=prometheus,
    )


def promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None
    )
    if found is None:
        message = "promtool not found: install the apt package 'prometheus' (provides promtool)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{message} (CI is set: a missing tool is a failure)", pytrace=False)
        pytest.skip(message)
    return found


def promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_format_duration() -> None:
    assert [format_duration(s) for s in (120, 60, 300, 600, 90, 1.5, 7200)] == [
        "2m",
        "1m",
        "5m",
        "10m",
        "90s",
        "1500ms",
        "2h",
    ]


def test_export_is_accepted_by_promtool(tmp_path: Path) -> None:
    text = prometheus_rules_yaml(sandbox_config())
    path = tmp_path / "acgs-rules.yml"
    path.write_text(text, encoding="utf-8")
    result = promtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 22 rules found" in result.stdout

    doc = yaml.safe_load(text)
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert len(rules) == 22
    p99 = [r for r in rules if r["alert"] == "ACGSP99LatencyCritical"]
    assert {r["labels"]["environment"] for r in p99} == {"blue", "green"}
    green = next(r for r in p99 if r["labels"]["environment"] == "green")
    assert green["for"] == "2m"
    assert green["labels"]["severity"] == "critical"
    assert green["annotations"]["summary"] == "P99 > 5 ms"
    assert 'environment="green"' in green["expr"]
    assert "acgs_request_duration_seconds_bucket" in green["expr"]
    assert green["expr"].endswith("> 5")
    throughput = next(r for r in rules if r["alert"] == "ACGSThroughputCritical")
    assert throughput["expr"].startswith("(sum(") and throughput["expr"].endswith("< 100")
    assert 'environment=~"blue|green"' in throughput["expr"]
    assert throughput["for"] == "1m"
    cache = next(r for r in rules if r["alert"] == "ACGSCacheHitRateWarning")
    assert cache["for"] == "10m" and cache["expr"].endswith("< 0.87")
    # Immediate rules carry no `for`.
    assert "for" not in next(r for r in rules if r["alert"] == "ACGSServiceUnavailable")
    # Console-only rules are listed in the header comment.
    header = text.split("groups:", 1)[0]
    for name in (
        "Audit Trail Corruption",
        "Security Score",
        "Vulnerability Detected",
        "Constitutional Security Breach",
        "Constitutional Service Unavailable",
    ):
        assert name in header


def test_export_uses_the_configured_label_selector_and_window(tmp_path: Path) -> None:
    cfg = sandbox_config(
        environment_label="deployment_color", extra_selector='job="acgs"', window="5m"
    )
    text = prometheus_rules_yaml(cfg)
    path = tmp_path / "rules.yml"
    path.write_text(text, encoding="utf-8")
    result = promtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = yaml.safe_load(text)
    expr = next(
        r["expr"]
        for g in doc["groups"]
        for r in g["rules"]
        if r["labels"]["rule_id"] == "performance.p99_latency.critical/blue"
    )
    assert 'deployment_color="blue",job="acgs"' in expr
    assert "[5m]" in expr and "by (deployment_color, le)" in expr


def test_promtool_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: promtool refuses a rule with broken PromQL."""
    text = prometheus_rules_yaml(sandbox_config()).replace('> 5"', '> > 5"', 1)
    path = tmp_path / "broken.yml"
    path.write_text(text, encoding="utf-8")
    assert promtool_check(path).returncode != 0


def test_rules_export_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "acgs-console.toml"
    lines = ["[traffic]", 'kind = "sandbox"', 'control_url = "http://127.0.0.1:9"']
    for env in ("blue", "green"):
        for name in ORCHESTRATORS:
            lines += [f"[environments.{env}.services.{name}]", 'base_url = "http://127.0.0.1:9"']
    lines += ["[thresholds]", "p99_latency_ms_critical = 6.0"]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.yml"
    args = argparse.Namespace(config=str(config), output=str(out))
    assert run_rules_export(args) == 0
    assert "> 6" in out.read_text(encoding="utf-8")
    assert promtool_check(out).returncode == 0

    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml\n", encoding="utf-8")
    assert run_rules_export(argparse.Namespace(config=str(bad), output=str(out))) == 2


@pytest.mark.engines
def test_prometheus_loads_the_exported_rules(tmp_path: Path, fresh_prometheus: Any) -> None:
    path = tmp_path / "acgs-rules.yml"
    path.write_text(prometheus_rules_yaml(sandbox_config()), encoding="utf-8")
    prom = fresh_prometheus(rule_files=[path])
    body = httpx.get(f"{prom.url}/api/v1/rules", timeout=5).json()
    assert body["status"] == "success"
    rules = [r for g in body["data"]["groups"] for r in g["rules"]]
    assert len(rules) == 22
    assert {g["name"] for g in body["data"]["groups"]} == {
        "acgs-constitutional",
        "acgs-performance",
        "acgs-security",
    }
    assert all(r["type"] == "alerting" for r in rules)
