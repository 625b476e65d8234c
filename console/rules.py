"""The runbook's alert rules: rule objects, their evaluation over time, and their export.

This module owns the runbook's "Monitoring Thresholds and Alerts" section,
every line of it, as :class:`AlertRule` objects (:func:`build_rules`), the
:class:`RuleEvaluator` that turns a stream of observations into
Prometheus-style alert states (inactive -> pending -> firing), the input hooks
for what the monitor does not observe itself (:class:`RuleInputs`: audit-trail
verification, security score, vulnerability findings, security validation),
and ``acgs-console rules export`` (:func:`prometheus_rules_yaml`,
:func:`run_rules_export`).

Unknown input, the choice made here:
    A rule whose input is missing, stale, NaN, or only partly known in a way
    that leaves the comparison undecided, is **unknown**. An unknown rule never
    fires (``phase`` stays ``inactive``) and never passes: its
    :class:`~backends.models.AlertState` has ``unknown=True`` and
    :func:`alert_passes` is False for it, so a gate stays closed and
    ``acgs-console check`` reports it as a finding. Unknown also resets the
    rule's pending timer: ``for 2m`` means the condition was *observed* to hold
    for two minutes, and a gap in the data is not an observation (Prometheus
    drops a pending alert whose series vanishes in the same way). Not firing
    on missing data keeps a flaky scrape from triggering an automatic rollback;
    not passing keeps it from opening a gate.

    Partial knowledge is used where it decides the question: a comparison is
    evaluated over the interval of values the observation allows (see
    :class:`Measurement`). One orchestrator answering with a wrong hash fires
    "Constitutional Hash Mismatch" even while another orchestrator timed out;
    all nine answering correctly is needed for it to pass.

Scope: most rules exist once per environment (blue and green). Throughput is
judged on the estate (blue + green): during a blue-green switch the idle side
legitimately serves nothing, and a per-environment "< 100 RPS" would fire on
it at every step. Audit-trail and security rules judge the deployment as a
whole (``environment`` is None).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from backends.models import (
    AlertPhase,
    AlertSeverity,
    AlertState,
    EnvironmentSnapshot,
    Frozen,
    HashVerdict,
    MetricValue,
    ServiceState,
    Snapshot,
)
from backends.models import Environment as Env

if TYPE_CHECKING:
    from console.config import AppConfig, PrometheusConfig, Thresholds

COMPLIANCE_FRAMEWORK = "constitutional_compliance_framework"
"""The orchestrator whose reachability "Constitutional Service Unavailable" watches."""

Category = Literal["constitutional", "performance", "security"]


# --- rule objects ----------------------------------------------------------------------------


class Comparison(StrEnum):
    """How a rule compares its measured value with its threshold (true = alerting)."""

    GT = ">"
    LT = "<"
    GE = ">="
    LE = "<="


class RuleMetric(StrEnum):
    """What a rule measures; each has one measuring function in :data:`MEASURES`."""

    HASH_VIOLATIONS = "hash_violations"
    """Responses (body or header) missing or mismatching the constitutional hash."""
    COMPLIANCE_SCORE = "compliance_score"
    """The transparent compliance score of the environment (console/compliance.py), 0..100."""
    AUDIT_TRAIL_FAILURES = "audit_trail_failures"
    """1 when audit-trail verification failed, 0 when it passed (input hook)."""
    HASH_VALIDATION_FAILURE_RATE = "hash_validation_failure_rate"
    """Share of requests failing hash validation (metrics), 0..1."""
    COMPLIANCE_FRAMEWORK_UNREACHABLE = "compliance_framework_unreachable"
    """1 when the constitutional compliance framework does not answer, else 0."""
    P99_LATENCY_MS = "p99_latency_ms"
    """P99 request latency in milliseconds (metrics)."""
    REQUESTS_PER_SECOND = "requests_per_second"
    """Requests per second of the whole estate, blue + green (metrics)."""
    CACHE_HIT_RATE = "cache_hit_rate"
    """Cache hit rate, 0..1 (metrics)."""
    ORCHESTRATORS_UNAVAILABLE = "orchestrators_unavailable"
    """Orchestrators answering 5xx, or not answering at all (health probes)."""
    SECURITY_SCORE = "security_score"
    """Security score /100 (input hook)."""
    CRITICAL_HIGH_VULNERABILITIES = "critical_high_vulnerabilities"
    """Critical plus high severity vulnerability findings (input hook)."""
    AUTH_FAILURES_PER_MINUTE = "auth_failures_per_minute"
    """Failed authentication attempts per minute (metrics)."""
    SECURITY_VALIDATION_FAILURES = "security_validation_failures"
    """1 when constitutional security validation failed, else 0 (input hook)."""


class AlertRule(Frozen):
    """One alert rule instance: one runbook line, for one environment (or the whole estate)."""

    id: str
    """Unique id, e.g. ``performance.p99_latency.critical/green``."""
    key: str
    """The runbook line's id, shared by its per-environment instances."""
    alert_name: str
    """Prometheus alert name, e.g. ``ACGSP99LatencyCritical``."""
    name: str
    """The runbook's name for it, e.g. ``P99 Latency``."""
    category: Category
    metric: RuleMetric
    environment: Env | None
    """The environment judged; None for the estate / the deployment as a whole."""
    comparison: Comparison
    threshold: float
    for_seconds: float = Field(ge=0)
    """How long the condition must hold before the alert fires (0: at once)."""
    severity: AlertSeverity
    response: str
    """The runbook's response class: ``immediate``, ``5-minute``, ``2-minute``."""
    summary: str
    """E.g. ``P99 > 5 ms``."""
    runbook_text: str
    """The runbook line this rule implements, verbatim."""

    def holds(self, measured: Measurement) -> bool | None:
        """Whether the alert condition holds for a measurement; None when undecided."""
        lo, hi, t = measured.lo, measured.hi, self.threshold
        if math.isnan(lo) or math.isnan(hi):
            return None
        if self.comparison is Comparison.GT:
            return True if lo > t else False if hi <= t else None
        if self.comparison is Comparison.GE:
            return True if lo >= t else False if hi < t else None
        if self.comparison is Comparison.LT:
            return True if hi < t else False if lo >= t else None
        return True if hi <= t else False if lo > t else None

    def witness(self, measured: Measurement) -> float | None:
        """The value to show: exact when known, else the bound that decided the condition."""
        if measured.exact:
            return measured.lo
        if self.comparison in (Comparison.GT, Comparison.GE):
            return measured.lo if math.isfinite(measured.lo) else None
        return measured.hi if math.isfinite(measured.hi) else None


def _num(value: float) -> str:
    return f"{value:g}"


def _pct(ratio: float) -> str:
    return f"{100 * ratio:g}%"


def build_rules(
    thresholds: Thresholds,
    environments: Sequence[Env] = (Env.BLUE, Env.GREEN),
) -> tuple[AlertRule, ...]:
    """Every line of the runbook's "Monitoring Thresholds and Alerts", as rule instances.

    Args:
        thresholds: The configured thresholds (``AppConfig.thresholds``).
        environments: The environments that get per-environment instances.

    Returns:
        The rules, in the runbook's order, per-environment rules once per environment.
    """
    t = thresholds
    rules: list[AlertRule] = []
    crit, warn = AlertSeverity.CRITICAL, AlertSeverity.WARNING

    def add(
        *,
        key: str,
        alert_name: str,
        name: str,
        category: Category,
        metric: RuleMetric,
        comparison: Comparison,
        threshold: float,
        for_seconds: float,
        severity: AlertSeverity,
        response: str,
        summary: str,
        runbook_text: str,
        per_environment: bool = True,
    ) -> None:
        scopes: Sequence[Env | None] = environments if per_environment else (None,)
        for env in scopes:
            rules.append(
                AlertRule(
                    id=key if env is None else f"{key}/{env.value}",
                    key=key,
                    alert_name=alert_name,
                    name=name,
                    category=category,
                    metric=metric,
                    environment=env,
                    comparison=comparison,
                    threshold=threshold,
                    for_seconds=for_seconds,
                    severity=severity,
                    response=response,
                    summary=summary,
                    runbook_text=runbook_text,
                )
            )

    # Constitutional Compliance Alerts -- Critical (Immediate Response)
    add(
        key="constitutional.hash_mismatch",
        alert_name="ACGSConstitutionalHashMismatch",
        name="Constitutional Hash Mismatch",
        category="constitutional",
        metric=RuleMetric.HASH_VIOLATIONS,
        comparison=Comparison.GT,
        threshold=0,
        for_seconds=0,
        severity=crit,
        response="immediate",
        summary="a response is missing or mismatching the constitutional hash",
        runbook_text="Constitutional Hash Mismatch: Any response missing `cdd01ef066bc6cf2`",
    )
    add(
        key="constitutional.compliance_violation",
        alert_name="ACGSComplianceViolation",
        name="Compliance Violation",
        category="constitutional",
        metric=RuleMetric.COMPLIANCE_SCORE,
        comparison=Comparison.LT,
        threshold=t.compliance_critical,
        for_seconds=0,
        severity=crit,
        response="immediate",
        summary=f"compliance < {_num(t.compliance_critical)}%",
        runbook_text="Compliance Violation: Constitutional compliance score <100%",
    )
    add(
        key="constitutional.audit_trail_corruption",
        alert_name="ACGSAuditTrailCorruption",
        name="Audit Trail Corruption",
        category="constitutional",
        metric=RuleMetric.AUDIT_TRAIL_FAILURES,
        comparison=Comparison.GT,
        threshold=0,
        for_seconds=0,
        severity=crit,
        response="immediate",
        summary="audit trail verification failed",
        runbook_text="Audit Trail Corruption: Missing constitutional context in logs",
        per_environment=False,
    )
    # Constitutional Compliance Alerts -- Warning (5-minute Response)
    add(
        key="constitutional.compliance_degradation",
        alert_name="ACGSComplianceDegradation",
        name="Compliance Degradation",
        category="constitutional",
        metric=RuleMetric.COMPLIANCE_SCORE,
        comparison=Comparison.LT,
        threshold=t.compliance_warning,
        for_seconds=0,
        severity=warn,
        response="5-minute",
        summary=f"compliance < {_num(t.compliance_warning)}%",
        runbook_text="Compliance Degradation: Compliance score <99%",
    )
    add(
        key="constitutional.hash_validation_failures",
        alert_name="ACGSHashValidationFailures",
        name="Hash Validation Failures",
        category="constitutional",
        metric=RuleMetric.HASH_VALIDATION_FAILURE_RATE,
        comparison=Comparison.GT,
        threshold=t.hash_failure_rate_warning,
        for_seconds=0,
        severity=warn,
        response="5-minute",
        summary=f"hash validation failures > {_pct(t.hash_failure_rate_warning)} of requests",
        runbook_text="Hash Validation Failures: >1% of requests fail hash validation",
    )
    add(
        key="constitutional.service_unavailable",
        alert_name="ACGSConstitutionalServiceUnavailable",
        name="Constitutional Service Unavailable",
        category="constitutional",
        metric=RuleMetric.COMPLIANCE_FRAMEWORK_UNREACHABLE,
        comparison=Comparison.GT,
        threshold=0,
        for_seconds=0,
        severity=warn,
        response="5-minute",
        summary="compliance framework unreachable",
        runbook_text="Constitutional Service Unavailable: Compliance framework unreachable",
    )
    # Performance Alerts -- Critical (Immediate Response)
    add(
        key="performance.p99_latency.critical",
        alert_name="ACGSP99LatencyCritical",
        name="P99 Latency",
        category="performance",
        metric=RuleMetric.P99_LATENCY_MS,
        comparison=Comparison.GT,
        threshold=t.p99_latency_ms_critical,
        for_seconds=t.p99_latency_critical_for_s,
        severity=crit,
        response="immediate",
        summary=f"P99 > {_num(t.p99_latency_ms_critical)} ms",
        runbook_text="P99 Latency: >5ms for >2 minutes",
    )
    add(
        key="performance.throughput.critical",
        alert_name="ACGSThroughputCritical",
        name="Throughput",
        category="performance",
        metric=RuleMetric.REQUESTS_PER_SECOND,
        comparison=Comparison.LT,
        threshold=t.rps_critical,
        for_seconds=t.rps_critical_for_s,
        severity=crit,
        response="immediate",
        summary=f"RPS < {_num(t.rps_critical)} (blue + green)",
        runbook_text="Throughput: <100 RPS for >1 minute",
        per_environment=False,
    )
    add(
        key="performance.cache_hit_rate.critical",
        alert_name="ACGSCacheHitRateCritical",
        name="Cache Hit Rate",
        category="performance",
        metric=RuleMetric.CACHE_HIT_RATE,
        comparison=Comparison.LT,
        threshold=t.cache_hit_critical,
        for_seconds=t.cache_hit_critical_for_s,
        severity=crit,
        response="immediate",
        summary=f"cache hit rate < {_pct(t.cache_hit_critical)}",
        runbook_text="Cache Hit Rate: <85% for >5 minutes",
    )
    add(
        key="performance.service_unavailable",
        alert_name="ACGSServiceUnavailable",
        name="Service Unavailable",
        category="performance",
        metric=RuleMetric.ORCHESTRATORS_UNAVAILABLE,
        comparison=Comparison.GT,
        threshold=0,
        for_seconds=0,
        severity=crit,
        response="immediate",
        summary="an orchestrator returns 5xx or does not answer",
        runbook_text="Service Unavailable: Any orchestrator returning 5xx errors",
    )
    # Performance Alerts -- Warning (2-minute Response)
    add(
        key="performance.p99_latency.warning",
        alert_name="ACGSP99LatencyWarning",
        name="P99 Latency",
        category="performance",
        metric=RuleMetric.P99_LATENCY_MS,
        comparison=Comparison.GT,
        threshold=t.p99_latency_ms_warning,
        for_seconds=t.p99_latency_warning_for_s,
        severity=warn,
        response="2-minute",
        summary=f"P99 > {_num(t.p99_latency_ms_warning)} ms",
        runbook_text="P99 Latency: >4ms for >5 minutes",
    )
    add(
        key="performance.throughput.warning",
        alert_name="ACGSThroughputWarning",
        name="Throughput",
        category="performance",
        metric=RuleMetric.REQUESTS_PER_SECOND,
        comparison=Comparison.LT,
        threshold=t.rps_warning,
        for_seconds=t.rps_warning_for_s,
        severity=warn,
        response="2-minute",
        summary=f"RPS < {_num(t.rps_warning)} (blue + green)",
        runbook_text="Throughput: <120 RPS for >3 minutes",
        per_environment=False,
    )
    add(
        key="performance.cache_hit_rate.warning",
        alert_name="ACGSCacheHitRateWarning",
        name="Cache Hit Rate",
        category="performance",
        metric=RuleMetric.CACHE_HIT_RATE,
        comparison=Comparison.LT,
        threshold=t.cache_hit_warning,
        for_seconds=t.cache_hit_warning_for_s,
        severity=warn,
        response="2-minute",
        summary=f"cache hit rate < {_pct(t.cache_hit_warning)}",
        runbook_text="Cache Hit Rate: <87% for >10 minutes",
    )
    # Security Alerts -- Critical (Immediate Response)
    add(
        key="security.score",
        alert_name="ACGSSecurityScoreLow",
        name="Security Score",
        category="security",
        metric=RuleMetric.SECURITY_SCORE,
        comparison=Comparison.LT,
        threshold=t.security_score_critical,
        for_seconds=0,
        severity=crit,
        response="immediate",
        summary=f"security score < {_num(t.security_score_critical)}/100",
        runbook_text="Security Score: <90/100",
        per_environment=False,
    )
    add(
        key="security.vulnerability_detected",
        alert_name="ACGSVulnerabilityDetected",
        name="Vulnerability Detected",
        category="security",
        metric=RuleMetric.CRITICAL_HIGH_VULNERABILITIES,
        comparison=Comparison.GT,
        threshold=0,
        for_seconds=0,
        severity=crit,
        response="immediate",
        summary="a critical or high severity vulnerability was found",
        runbook_text="Vulnerability Detected: Any critical or high severity finding",
        per_environment=False,
    )
    add(
        key="security.unauthorized_access",
        alert_name="ACGSUnauthorizedAccess",
        name="Unauthorized Access",
        category="security",
        metric=RuleMetric.AUTH_FAILURES_PER_MINUTE,
        comparison=Comparison.GT,
        threshold=t.auth_failures_per_minute_critical,
        for_seconds=0,
        severity=crit,
        response="immediate",
        summary=f"auth failures > {_num(t.auth_failures_per_minute_critical)}/min",
        runbook_text="Unauthorized Access: Failed authentication attempts >10/minute",
    )
    add(
        key="security.constitutional_breach",
        alert_name="ACGSConstitutionalSecurityBreach",
        name="Constitutional Security Breach",
        category="security",
        metric=RuleMetric.SECURITY_VALIDATION_FAILURES,
        comparison=Comparison.GT,
        threshold=0,
        for_seconds=0,
        severity=crit,
        response="immediate",
        summary="constitutional security validation failed",
        runbook_text="Constitutional Security Breach: Security validation failure",
        per_environment=False,
    )
    return tuple(rules)


# --- inputs the monitor does not observe itself ----------------------------------------------


class AuditVerification(Frozen):
    """The result of verifying the audit trail (hash chain and constitutional context).

    From :func:`console.audit.verify_store`'s ``VerifyResult``: ``ok=True`` when the
    chain verified, ``ok=False`` when it is corrupted, ``ok=None`` when it could not
    be read (the rule is then unknown, not firing and not passing).
    """

    ok: bool | None
    detail: str = ""
    checked_at: datetime | None = None


class VulnerabilityReport(Frozen):
    """Vulnerability findings of the release being deployed (e.g. from a Trivy/Grype scan)."""

    critical: int = Field(ge=0)
    high: int = Field(ge=0)
    source: str = ""
    scanned_at: datetime | None = None


class SecurityValidation(Frozen):
    """The outcome of the constitutional security validation."""

    passed: bool
    detail: str = ""
    checked_at: datetime | None = None


class RuleInputs(Frozen):
    """Input hooks for rules whose data does not come from the monitor's own probes.

    Each is None until something provides it; its rules are then unknown (never
    passing). The audit module provides ``audit``; a security scan provides the
    other three (``acgs-console check --rule-inputs FILE`` reads this model as JSON).
    """

    audit: AuditVerification | None = None
    security_score: MetricValue | None = None
    vulnerabilities: VulnerabilityReport | None = None
    security_validation: SecurityValidation | None = None


# --- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """What an observation says about a rule's value: an interval ``[lo, hi]``.

    Exact knowledge is ``lo == hi``; nothing known is ``(-inf, inf)``. Partial
    knowledge (three violations seen, two services unknown) is the interval of
    every value consistent with it, so a comparison is decided when the whole
    interval falls on one side and unknown otherwise.
    """

    lo: float
    hi: float
    detail: str = ""

    @classmethod
    def known(cls, value: float, detail: str = "") -> Measurement:
        """A fully known value."""
        return cls(value, value, detail)

    @classmethod
    def unknown(cls, detail: str) -> Measurement:
        """Nothing known; ``detail`` says why."""
        return cls(-math.inf, math.inf, detail)

    @property
    def exact(self) -> bool:
        """True when the value is known exactly."""
        return self.lo == self.hi and math.isfinite(self.lo)


@dataclass(frozen=True, slots=True)
class EvaluationContext:
    """What one evaluation sees: both environments of a sweep, and the input hooks."""

    environments: Mapping[Env, EnvironmentSnapshot]
    inputs: RuleInputs


def _from_metric(value: MetricValue | None, what: str) -> Measurement:
    if value is None:
        return Measurement.unknown(f"{what}: no data")
    if value.stale:
        return Measurement.unknown(f"{what}: stale")
    if value.value is None or not math.isfinite(value.value):
        return Measurement.unknown(f"{what}: {value.error or 'no data'}")
    return Measurement.known(value.value)


def _env(ctx: EvaluationContext, env: Env | None) -> EnvironmentSnapshot | None:
    return None if env is None else ctx.environments.get(env)


def _count(known: int, unknown: int, what: str, names: Sequence[str]) -> Measurement:
    detail = f"{what}: " + ", ".join(names) if names else ""
    if unknown:
        detail = (detail + "; " if detail else "") + f"{unknown} unknown"
    return Measurement(float(known), float(known + unknown), detail)


def _measure_hash_violations(ctx: EvaluationContext, env: Env | None) -> Measurement:
    snap = _env(ctx, env)
    if snap is None or not snap.services:
        return Measurement.unknown("no health responses")
    violations: list[str] = []
    unknown = 0
    for svc in snap.services:
        found = svc.violations
        if found:
            violations.extend(found)
        elif HashVerdict.UNKNOWN in (svc.body_hash_verdict, svc.header_hash_verdict):
            unknown += 1
    return _count(len(violations), unknown, "violations", violations)


def _measure_compliance(ctx: EvaluationContext, env: Env | None) -> Measurement:
    snap = _env(ctx, env)
    checks = snap.compliance.checks if snap is not None else ()
    if not checks:
        return Measurement.unknown("no compliance checks assessed")
    passed = sum(1 for c in checks if c.passed is True)
    undecided = sum(1 for c in checks if c.passed is None)
    failed = [c.name for c in checks if c.passed is False]
    detail = "failed: " + ", ".join(failed) if failed else ""
    if undecided:
        names = ", ".join(c.name for c in checks if c.passed is None)
        detail = (detail + "; " if detail else "") + f"not evaluable: {names}"
    total = len(checks)
    return Measurement(100.0 * passed / total, 100.0 * (passed + undecided) / total, detail)


def _measure_audit(ctx: EvaluationContext, env: Env | None) -> Measurement:
    audit = ctx.inputs.audit
    if audit is None:
        return Measurement.unknown("no audit trail verification result given")
    if audit.ok is None:
        return Measurement.unknown(audit.detail or "audit trail could not be read")
    return Measurement.known(0.0 if audit.ok else 1.0, audit.detail)


def _metric_of(name: str) -> Callable[[EvaluationContext, Env | None], Measurement]:
    def measure(ctx: EvaluationContext, env: Env | None) -> Measurement:
        snap = _env(ctx, env)
        if snap is None:
            return Measurement.unknown(f"{name}: environment not observed")
        value: MetricValue = getattr(snap.metrics, name)
        return _from_metric(value, name)

    return measure


def _measure_estate_rps(ctx: EvaluationContext, env: Env | None) -> Measurement:
    lo, hi = 0.0, 0.0
    unknown: list[str] = []
    for environment in (Env.BLUE, Env.GREEN):
        snap = ctx.environments.get(environment)
        part = (
            _from_metric(snap.metrics.requests_per_second, environment.value)
            if snap is not None
            else Measurement.unknown(f"{environment.value}: not observed")
        )
        if part.exact:
            lo, hi = lo + part.lo, hi + part.hi
        else:
            # Throughput is never negative: an unknown side adds [0, inf).
            hi = math.inf
            unknown.append(part.detail)
    return Measurement(lo, hi, "; ".join(unknown))


def _measure_framework(ctx: EvaluationContext, env: Env | None) -> Measurement:
    snap = _env(ctx, env)
    if snap is None:
        return Measurement.unknown("environment not observed")
    for svc in snap.services:
        if svc.service == COMPLIANCE_FRAMEWORK:
            if svc.state is ServiceState.DOWN:
                return Measurement.known(1.0, svc.reason or "down")
            if svc.state is ServiceState.UNKNOWN:
                return Measurement.unknown(svc.reason or "state unknown")
            return Measurement.known(0.0)
    return Measurement.unknown(f"{COMPLIANCE_FRAMEWORK} not probed")


def _measure_unavailable(ctx: EvaluationContext, env: Env | None) -> Measurement:
    snap = _env(ctx, env)
    if snap is None or not snap.services:
        return Measurement.unknown("no health responses")
    bad: list[str] = []
    unknown = 0
    for svc in snap.services:
        if svc.http_status is not None and svc.http_status >= 500:
            bad.append(f"{svc.service} HTTP {svc.http_status}")
        elif svc.state is ServiceState.DOWN:
            bad.append(f"{svc.service} {svc.reason or 'down'}")
        elif svc.state is ServiceState.UNKNOWN:
            unknown += 1
    return _count(len(bad), unknown, "unavailable", bad)


def _measure_security_score(ctx: EvaluationContext, env: Env | None) -> Measurement:
    if ctx.inputs.security_score is None:
        return Measurement.unknown("no security score given")
    return _from_metric(ctx.inputs.security_score, "security score")


def _measure_vulnerabilities(ctx: EvaluationContext, env: Env | None) -> Measurement:
    report = ctx.inputs.vulnerabilities
    if report is None:
        return Measurement.unknown("no vulnerability scan result given")
    return Measurement.known(
        float(report.critical + report.high), f"{report.critical} critical, {report.high} high"
    )


def _measure_security_validation(ctx: EvaluationContext, env: Env | None) -> Measurement:
    result = ctx.inputs.security_validation
    if result is None:
        return Measurement.unknown("no security validation result given")
    return Measurement.known(0.0 if result.passed else 1.0, result.detail)


MEASURES: Mapping[RuleMetric, Callable[[EvaluationContext, Env | None], Measurement]] = {
    RuleMetric.HASH_VIOLATIONS: _measure_hash_violations,
    RuleMetric.COMPLIANCE_SCORE: _measure_compliance,
    RuleMetric.AUDIT_TRAIL_FAILURES: _measure_audit,
    RuleMetric.HASH_VALIDATION_FAILURE_RATE: _metric_of("hash_validation_failure_rate"),
    RuleMetric.COMPLIANCE_FRAMEWORK_UNREACHABLE: _measure_framework,
    RuleMetric.P99_LATENCY_MS: _metric_of("p99_latency_ms"),
    RuleMetric.REQUESTS_PER_SECOND: _measure_estate_rps,
    RuleMetric.CACHE_HIT_RATE: _metric_of("cache_hit_rate"),
    RuleMetric.ORCHESTRATORS_UNAVAILABLE: _measure_unavailable,
    RuleMetric.SECURITY_SCORE: _measure_security_score,
    RuleMetric.CRITICAL_HIGH_VULNERABILITIES: _measure_vulnerabilities,
    RuleMetric.AUTH_FAILURES_PER_MINUTE: _metric_of("auth_failures_per_minute"),
    RuleMetric.SECURITY_VALIDATION_FAILURES: _measure_security_validation,
}
"""How each rule metric is measured from one evaluation context."""


# --- evaluation over time ----------------------------------------------------------------------


class RuleEvaluator:
    """Keeps each rule's state across observations: inactive -> pending -> firing.

    A rule whose condition starts to hold becomes pending, with ``active_since``
    set to that observation's time; it fires once the condition has held for the
    rule's ``for`` duration (at once when that is 0) and stays firing while it
    holds. When the condition clears it is inactive again. When the input is
    unknown the rule is inactive with ``unknown=True`` and its timer restarts
    (see the module docstring for why). Time is passed in (``now``), never read
    from a clock, so the same sequence of observations always gives the same
    states.
    """

    def __init__(self, rules: Sequence[AlertRule]) -> None:
        """Start with every rule inactive.

        Args:
            rules: The rules to evaluate (ids must be unique).

        Raises:
            ValueError: When two rules share an id.
        """
        ids = [r.id for r in rules]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule ids: {', '.join(duplicates)}")
        self._rules = tuple(rules)
        self._active_since: dict[str, datetime] = {}

    @property
    def rules(self) -> tuple[AlertRule, ...]:
        """The rules, in evaluation order."""
        return self._rules

    def reset(self) -> None:
        """Forget every pending and firing timer."""
        self._active_since.clear()

    def evaluate(
        self,
        environments: Mapping[Env, EnvironmentSnapshot],
        now: datetime,
        inputs: RuleInputs | None = None,
    ) -> tuple[AlertState, ...]:
        """Advance every rule by one observation.

        Args:
            environments: What the sweep saw of each environment.
            now: The observation's time (timezone-aware).
            inputs: The input hooks' current values (None: none given).

        Returns:
            One alert state per rule, in rule order.
        """
        ctx = EvaluationContext(environments, inputs or RuleInputs())
        return tuple(self._step(rule, ctx, now) for rule in self._rules)

    def evaluate_snapshot(
        self, snapshot: Snapshot, now: datetime | None = None, inputs: RuleInputs | None = None
    ) -> tuple[AlertState, ...]:
        """Advance every rule with a whole snapshot (at its ``taken_at`` unless told)."""
        return self.evaluate(
            {Env.BLUE: snapshot.blue, Env.GREEN: snapshot.green},
            now or snapshot.taken_at,
            inputs,
        )

    def _step(self, rule: AlertRule, ctx: EvaluationContext, now: datetime) -> AlertState:
        try:
            measured = MEASURES[rule.metric](ctx, rule.environment)
        except Exception as exc:  # a malformed observation must not stop the other rules
            measured = Measurement.unknown(f"cannot evaluate: {type(exc).__name__}: {exc}")
        holds = rule.holds(measured)
        if holds is None:
            self._active_since.pop(rule.id, None)
            phase, since, unknown = AlertPhase.INACTIVE, None, True
        elif not holds:
            self._active_since.pop(rule.id, None)
            phase, since, unknown = AlertPhase.INACTIVE, None, False
        else:
            since = self._active_since.setdefault(rule.id, now)
            held = (now - since).total_seconds()
            phase = AlertPhase.FIRING if held >= rule.for_seconds else AlertPhase.PENDING
            unknown = False
        return AlertState(
            rule_id=rule.id,
            name=rule.name,
            environment=rule.environment,
            severity=rule.severity,
            phase=phase,
            summary=rule.summary,
            for_seconds=rule.for_seconds,
            active_since=since,
            value=rule.witness(measured),
            unknown=unknown,
            detail=measured.detail or ("input unknown" if unknown else ""),
        )


def alert_passes(alert: AlertState) -> bool:
    """True only for an inactive alert whose input was known: what a gate may accept."""
    return alert.phase is AlertPhase.INACTIVE and not alert.unknown


def all_pass(alerts: Sequence[AlertState]) -> bool:
    """True when there are alerts and every one passes (no alerts at all is not a pass)."""
    return bool(alerts) and all(alert_passes(a) for a in alerts)


# --- Prometheus export -------------------------------------------------------------------------

_EXPORT_QUERY: Mapping[RuleMetric, str] = {
    # The hash-failure counter is the metric equivalent of "any response missing the hash".
    RuleMetric.HASH_VIOLATIONS: "hash_validation_failure_rate",
    RuleMetric.COMPLIANCE_SCORE: "compliance_score",
    RuleMetric.HASH_VALIDATION_FAILURE_RATE: "hash_validation_failure_rate",
    RuleMetric.P99_LATENCY_MS: "p99_latency_ms",
    RuleMetric.REQUESTS_PER_SECOND: "requests_per_second",
    RuleMetric.CACHE_HIT_RATE: "cache_hit_rate",
    # The 5xx share: "any orchestrator returning 5xx errors" as Prometheus sees it.
    RuleMetric.ORCHESTRATORS_UNAVAILABLE: "error_rate",
    RuleMetric.AUTH_FAILURES_PER_MINUTE: "auth_failures_per_minute",
}
"""Rule metric -> the :class:`~console.config.PrometheusQueries` template it exports with."""

_NOT_EXPORTED_WHY: Mapping[RuleMetric, str] = {
    RuleMetric.AUDIT_TRAIL_FAILURES: "audit trail verification is done by the console",
    RuleMetric.COMPLIANCE_FRAMEWORK_UNREACHABLE: (
        "reachability is probed over HTTP by the console; no metric names the service"
    ),
    RuleMetric.SECURITY_SCORE: "the security score comes from a scan, not from a metric",
    RuleMetric.CRITICAL_HIGH_VULNERABILITIES: "vulnerability findings come from a scan",
    RuleMetric.SECURITY_VALIDATION_FAILURES: "security validation is a console input",
}


class RulesExportError(ValueError):
    """A query template cannot be turned into an alerting expression."""


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_duration(seconds: float) -> str:
    """A Prometheus duration for a number of seconds (``2m``, ``90s``, ``1500ms``)."""
    if seconds <= 0:
        return "0s"
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _yaml_str(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: no YAML escaping rules to get wrong.
    return json.dumps(value)


@dataclass(frozen=True, slots=True)
class ExportedRule:
    """One rule as a Prometheus alerting rule."""

    rule: AlertRule
    expr: str


def _expression(rule: AlertRule, prometheus: PrometheusConfig, labels: Mapping[Env, str]) -> str:
    query_name = _EXPORT_QUERY[rule.metric]
    template: str = getattr(prometheus.queries, query_name)
    label = prometheus.environment_label
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label):
        raise RulesExportError(f"environment_label {label!r} is not a valid Prometheus label name")
    if rule.environment is None:
        values = "|".join(re.escape(labels[e]) for e in (Env.BLUE, Env.GREEN))
        selector = f"{label}=~{_promql_string(values)}"
    else:
        selector = f"{label}={_promql_string(labels[rule.environment])}"
    if prometheus.extra_selector.strip():
        selector += "," + prometheus.extra_selector.strip().strip(",")
    try:
        query = string.Template(template).substitute(
            selector=selector, label=label, window=prometheus.window
        )
    except (KeyError, ValueError) as exc:
        raise RulesExportError(
            f"query {query_name!r} has a placeholder other than $selector, $label, $window: {exc}"
        ) from exc
    if rule.environment is None:
        query = f"sum({query})"
    return f"({query}) {rule.comparison.value} {rule.threshold:g}"


def exportable(rules: Sequence[AlertRule]) -> tuple[list[AlertRule], list[AlertRule]]:
    """Split rules into those with a Prometheus expression and those without."""
    yes = [r for r in rules if r.metric in _EXPORT_QUERY]
    no = [r for r in rules if r.metric not in _EXPORT_QUERY]
    return yes, no


def prometheus_rules_yaml(config: AppConfig, rules: Sequence[AlertRule] | None = None) -> str:
    """The rules as a Prometheus alerting-rules file (YAML).

    Expressions are the configured PromQL templates with each rule's
    environment selected by its label; ``for``, labels ``severity`` and
    ``environment``, annotation ``summary``. Rules without a Prometheus
    expression are listed in a comment at the top.

    Args:
        config: The console configuration (queries, labels, thresholds).
        rules: The rules to export (default: :func:`build_rules` of the config).

    Returns:
        The file's text.

    Raises:
        RulesExportError: When a query template cannot be filled in.
    """
    rules = tuple(rules) if rules is not None else build_rules(config.thresholds)
    labels = {e: config.prometheus_label_of(e) for e in Env}
    yes, no = exportable(rules)
    lines = [
        "# Prometheus alerting rules for the ACGS blue-green estate.",
        "# Generated by `acgs-console rules export` from the runbook's",
        '# "Monitoring Thresholds and Alerts"; thresholds and queries from the console config.',
    ]
    if no:
        lines.append("# Evaluated by the console only (no Prometheus expression):")
        seen: set[str] = set()
        for rule in no:
            if rule.key not in seen:
                seen.add(rule.key)
                lines.append(
                    f"#   - {rule.name} ({rule.severity.value}): {rule.summary}"
                    f" -- {_NOT_EXPORTED_WHY[rule.metric]}"
                )
    lines.append("groups:")
    for category in ("constitutional", "performance", "security"):
        members = [r for r in yes if r.category == category]
        if not members:
            continue
        lines += [f"  - name: {_yaml_str('acgs-' + category)}", "    rules:"]
        for rule in members:
            expr = _expression(rule, config.prometheus, labels)
            env_label = "all" if rule.environment is None else labels[rule.environment]
            lines.append(f"      - alert: {_yaml_str(rule.alert_name)}")
            lines.append(f"        expr: {_yaml_str(expr)}")
            if rule.for_seconds > 0:
                lines.append(f"        for: {_yaml_str(format_duration(rule.for_seconds))}")
            lines += [
                "        labels:",
                f"          severity: {_yaml_str(rule.severity.value)}",
                f"          environment: {_yaml_str(env_label)}",
                f"          rule_id: {_yaml_str(rule.id)}",
                "        annotations:",
                f"          summary: {_yaml_str(rule.summary)}",
                f"          description: {_yaml_str('Runbook: ' + rule.runbook_text)}",
            ]
    return "\n".join(lines) + "\n"


# --- `acgs-console rules export` -------------------------------------------------------------


def add_rules_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``acgs-console rules export`` to its (sub)parser.

    Sets ``func`` to :func:`run_rules_export`.
    """
    parser.add_argument(
        "--output", "-o", metavar="FILE", help="write the rules to FILE (default: stdout)"
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (default: the usual search order)",
    )
    parser.set_defaults(func=run_rules_export)


def run_rules_export(args: argparse.Namespace) -> int:
    """``acgs-console rules export [--output FILE]``.

    Returns:
        0 written, 2 configuration error or the file cannot be written.
    """
    from console.config import ConfigError, load_config

    try:
        cfg, _ = load_config(getattr(args, "config", None))
    except ConfigError as err:
        print(
            f"acgs-console: the configuration has {len(err.problems)} problem(s):", file=sys.stderr
        )
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    try:
        text = prometheus_rules_yaml(cfg)
    except RulesExportError as err:
        print(f"acgs-console: cannot export the rules: {err}", file=sys.stderr)
        return 2
    output = getattr(args, "output", None)
    if not output or output == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"acgs-console: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    exported, _ = exportable(build_rules(cfg.thresholds))
    print(f"acgs-console: wrote {len(exported)} alerting rules to {output}", file=sys.stderr)
    return 0
