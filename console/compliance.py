"""The transparent compliance score of one environment.

This module owns the formula (documented for operators in
``docs/compliance.md``): the score is the share of compliance checks that
pass, ``100 * passed / counted``, and every check is listed with its detail so
an operator can see exactly why it is not 100 %. The checks:

1. ``services up``: every expected orchestrator answered ``up``.
2. ``body hash``: every service's health body carries the constitutional hash.
3. ``header hash``: every service's ``X-Constitutional-Hash`` header carries it.
4. ``compliance gauge``: ``acgs_constitutional_compliance_score`` is at the target
   (100) in the metrics.
5. ``hash validation failures``: no request failed hash validation in the window
   (a measured request rate of zero passes: nothing served, nothing failed).

A check that cannot be evaluated (no response, unknown or stale metric) counts
as failed, with ``passed=None`` and the reason. The one exception: when the
metrics source positively established that the services do not export the
compliance gauge at all (``MetricValue.absent``), check 4 is left out of the
score and a note says so; "no data" for any other reason is a failure.

Pure: no I/O, no clock; it judges what the monitor observed.
"""

from __future__ import annotations

from collections.abc import Sequence

from backends.models import (
    ComplianceCheck,
    ComplianceResult,
    EnvironmentMetrics,
    HashVerdict,
    MetricValue,
    ServiceHealth,
    ServiceState,
)

CHECK_SERVICES_UP = "services up"
CHECK_BODY_HASH = "body hash"
CHECK_HEADER_HASH = "header hash"
CHECK_GAUGE = "compliance gauge"
CHECK_HASH_FAILURES = "hash validation failures"


def _unknown_metric(metric: MetricValue) -> str:
    if metric.stale:
        when = metric.sampled_at.isoformat(timespec="seconds") if metric.sampled_at else "?"
        return f"stale (sampled {when}, from {metric.source or 'metrics'})"
    return f"unknown: {metric.error or 'no data'}"


def _services_up(by_name: dict[str, ServiceHealth], expected: Sequence[str]) -> ComplianceCheck:
    if not expected:
        return ComplianceCheck(
            name=CHECK_SERVICES_UP, passed=None, detail="unknown: no services expected"
        )
    problems: list[str] = []
    for name in expected:
        health = by_name.get(name)
        if health is None:
            problems.append(f"{name}: not probed")
        elif health.state is not ServiceState.UP:
            reason = f" ({health.reason})" if health.reason else ""
            problems.append(f"{name}: {health.state.value}{reason}")
    if problems:
        up = len(expected) - len(problems)
        return ComplianceCheck(
            name=CHECK_SERVICES_UP,
            passed=False,
            detail=f"{up}/{len(expected)} up; " + "; ".join(problems),
        )
    return ComplianceCheck(
        name=CHECK_SERVICES_UP, passed=True, detail=f"{len(expected)}/{len(expected)} up"
    )


def _hash_check(
    where: str,
    by_name: dict[str, ServiceHealth],
    names: Sequence[str],
    expected_hash: str | None,
) -> ComplianceCheck:
    check = CHECK_BODY_HASH if where == "body" else CHECK_HEADER_HASH
    if not names:
        return ComplianceCheck(name=check, passed=None, detail="unknown: no services to check")
    wrong: list[str] = []
    missing: list[str] = []
    unchecked: list[str] = []
    for name in names:
        health = by_name.get(name)
        if health is None:
            unchecked.append(f"{name} (not probed)")
            continue
        verdict = health.body_hash_verdict if where == "body" else health.header_hash_verdict
        seen = health.body_hash if where == "body" else health.header_hash
        if verdict is HashVerdict.MISMATCH:
            wrong.append(f"{name} ({seen!r})")
        elif verdict is HashVerdict.MISSING:
            missing.append(name)
        elif verdict is not HashVerdict.OK:
            why = health.reason or health.state.value
            unchecked.append(f"{name} (no usable response: {why})")
    parts: list[str] = []
    if wrong:
        want = f", expected {expected_hash!r}" if expected_hash else ""
        parts.append(f"mismatch{want}: " + ", ".join(wrong))
    if missing:
        parts.append("missing: " + ", ".join(missing))
    if unchecked:
        parts.append("not checked: " + ", ".join(unchecked))
    if wrong or missing:
        return ComplianceCheck(name=check, passed=False, detail="; ".join(parts))
    if unchecked:
        return ComplianceCheck(name=check, passed=None, detail="unknown; " + "; ".join(parts))
    return ComplianceCheck(name=check, passed=True, detail=f"correct on all {len(names)} responses")


def assess_compliance(
    services: Sequence[ServiceHealth],
    metrics: EnvironmentMetrics,
    expected_services: Sequence[str],
    *,
    gauge_target: float = 100.0,
    max_hash_failure_rate: float = 0.0,
    expected_hash: str | None = None,
) -> ComplianceResult:
    """Score one environment's constitutional compliance.

    Args:
        services: The environment's health probes of this sweep.
        metrics: The environment's metrics of this sweep.
        expected_services: The orchestrators the environment must run.
        gauge_target: The compliance gauge must be at least this (the runbook: 100).
        max_hash_failure_rate: Largest allowed share of requests failing hash
            validation in the window (the runbook: none, 0).
        expected_hash: The configured hash, only to show it beside a mismatch.

    Returns:
        The checks, each passed / failed / unknown with its detail; ``score`` is
        ``100 * passed / len(checks)``.
    """
    by_name = {health.service: health for health in services}
    expected = list(dict.fromkeys(expected_services))
    # Every response is judged, including one from a service nobody expected.
    judged = expected + [name for name in by_name if name not in expected]

    checks = [
        _services_up(by_name, expected),
        _hash_check("body", by_name, judged, expected_hash),
        _hash_check("header", by_name, judged, expected_hash),
    ]
    notes: list[str] = []

    gauge = metrics.compliance_score
    if gauge.known:
        assert gauge.value is not None
        checks.append(
            ComplianceCheck(
                name=CHECK_GAUGE,
                passed=gauge.value >= gauge_target,
                detail=f"{gauge.value:g} (target {gauge_target:g}, from {gauge.source})",
            )
        )
    elif gauge.absent and gauge.value is None and not gauge.stale:
        notes.append(
            f"{CHECK_GAUGE}: not counted; {gauge.source or 'the metrics source'} has no "
            "acgs_constitutional_compliance_score series for this environment "
            f"({gauge.error or 'not exported'})"
        )
    else:
        checks.append(ComplianceCheck(name=CHECK_GAUGE, passed=None, detail=_unknown_metric(gauge)))

    failures = metrics.hash_validation_failure_rate
    rps = metrics.requests_per_second
    if not failures.known and rps.known and rps.value == 0.0:
        # A measured zero request rate: nothing was served, so nothing failed validation.
        checks.append(
            ComplianceCheck(
                name=CHECK_HASH_FAILURES,
                passed=True,
                detail=f"no requests in the window, so no failures (from {rps.source})",
            )
        )
    elif failures.known:
        assert failures.value is not None
        checks.append(
            ComplianceCheck(
                name=CHECK_HASH_FAILURES,
                passed=failures.value <= max_hash_failure_rate,
                detail=f"{100.0 * failures.value:.3g} % of requests failed hash validation "
                f"(allowed {100.0 * max_hash_failure_rate:.3g} %, from {failures.source})",
            )
        )
    else:
        checks.append(
            ComplianceCheck(name=CHECK_HASH_FAILURES, passed=None, detail=_unknown_metric(failures))
        )
    return ComplianceResult(checks=tuple(checks), notes=tuple(notes))
