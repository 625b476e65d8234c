"""Check predicates over fixed Snapshots: pass, fail, and unknown (which never passes)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from runbook_fixtures import QUIET, T0, Clock, alert, env_snapshot, make_config, snapshot

from backends.models import (
    AlertPhase,
    AlertSeverity,
    AlertState,
    ComplianceCheck,
    ComplianceResult,
    HashVerdict,
    MetricValue,
    ProbeState,
    RedisStatus,
    ReplicationStatus,
    ServiceState,
    Snapshot,
)
from console.config import Thresholds
from console.runbook.engine import RunbookEngine
from console.runbook.loader import load_runbook, parse_runbook
from console.runbook.predicates import (
    AlertHistory,
    AlertsCheck,
    EvaluationContext,
    FiredAlert,
    Outcome,
    Predicate,
    Verdict,
    WatchSpan,
)

PRED: TypeAdapter[Any] = TypeAdapter(Predicate)


def judge(
    table: dict[str, Any], snap: Snapshot | None, **ctx: Any
) -> list[tuple[str | None, Verdict]]:
    pred = PRED.validate_python(table)
    context = EvaluationContext(
        snapshot=snap,
        now=ctx.pop("now", T0),
        thresholds=ctx.pop("thresholds", Thresholds()),
        expected_hash="cdd01ef066bc6cf2",
        **ctx,
    )
    outcomes = pred.evaluate(context)
    for o in outcomes:
        assert o.check  # every outcome says what was checked
        if o.verdict is not Verdict.PASS:
            assert o.detail or o.measured, o
    return [(o.environment, o.verdict) for o in outcomes]


P, F, U = Verdict.PASS, Verdict.FAIL, Verdict.UNKNOWN


def test_no_snapshot_or_stale_snapshot_is_unknown() -> None:
    table = {"metric": "p99_latency_ms", "environment": "both", "op": "<", "value": 5}
    assert judge(table, None) == [("blue", U), ("green", U)]
    old = snapshot(T0 - timedelta(seconds=6))
    assert judge(table, old) == [("blue", U), ("green", U)]
    assert judge(table, snapshot(T0 - timedelta(seconds=4))) == [("blue", P), ("green", P)]


def test_metric_against_value_and_config_threshold() -> None:
    slow = snapshot(T0, green=env_snapshot("green", metric_values={"p99_latency_ms": 6.1}))
    table = {
        "metric": "p99_latency_ms",
        "environment": "green",
        "op": "<",
        "threshold": "p99_latency_ms_critical",
    }
    assert judge(table, slow) == [("green", F)]
    # The site's config decides the number.
    assert judge(table, slow, thresholds=Thresholds(p99_latency_ms_critical=7.0)) == [("green", P)]
    for bad in (
        None,
        MetricValue(name="p99_latency_ms", value=float("nan")),
        MetricValue(name="p99_latency_ms", value=3.0, stale=True),
    ):
        snap = snapshot(T0, green=env_snapshot("green", metric_values={"p99_latency_ms": bad}))
        assert judge(table, snap) == [("green", U)]


def test_metric_table_validation() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'value'"):
        PRED.validate_python(
            {"metric": "error_rate", "op": "<", "value": 1, "threshold": "rps_critical"}
        )
    with pytest.raises(ValidationError, match="unknown threshold"):
        PRED.validate_python({"metric": "error_rate", "op": "<", "threshold": "nope"})
    with pytest.raises(ValidationError, match="exactly one of: metric"):
        PRED.validate_python({"environment": "green"})


def test_services_up_down_unknown_and_count() -> None:
    table = {"all_services": "up", "environment": "both", "min_count": 9}
    assert judge(table, snapshot(T0)) == [("blue", P), ("green", P)]
    down = snapshot(T0, green=env_snapshot("green", state=ServiceState.DOWN))
    assert judge(table, down) == [("blue", P), ("green", F)]
    unknown = snapshot(T0, blue=env_snapshot("blue", state=ServiceState.UNKNOWN))
    assert judge(table, unknown) == [("blue", U), ("green", P)]
    few = snapshot(T0, green=env_snapshot("green", services=("a", "b")))
    assert judge(table, few) == [("blue", P), ("green", F)]
    none = snapshot(T0, green=env_snapshot("green", services=()))
    assert judge(table, none) == [("blue", P), ("green", U)]
    shut = {"all_services": "down", "environment": "blue"}
    assert judge(shut, snapshot(T0)) == [("blue", F)]
    assert judge(shut, snapshot(T0, blue=env_snapshot("blue", state=ServiceState.DOWN))) == [
        ("blue", P)
    ]


def test_hash_verdicts() -> None:
    table = {"hash": "ok", "environment": "green", "min_count": 9}
    assert judge(table, snapshot(T0)) == [("green", P)]
    for verdict, expected in (
        (HashVerdict.MISMATCH, F),
        (HashVerdict.MISSING, F),
        (HashVerdict.UNKNOWN, U),
    ):
        snap = snapshot(T0, green=env_snapshot("green", hash_verdict=verdict))
        assert judge(table, snap) == [("green", expected)]
    other = snapshot(T0, constitutional_hash="0123456789abcdef")
    assert judge(table, other) == [("green", F)]


def test_compliance_score() -> None:
    table = {"compliance_score": 100, "environment": "green"}
    assert judge(table, snapshot(T0)) == [("green", P)]
    half = ComplianceResult(
        checks=(ComplianceCheck(name="a", passed=True), ComplianceCheck(name="b", passed=None))
    )
    assert judge(table, snapshot(T0, green=env_snapshot("green", compliance=half))) == [
        ("green", F)
    ]
    empty = ComplianceResult()
    assert judge(table, snapshot(T0, green=env_snapshot("green", compliance=empty))) == [
        ("green", U)
    ]


def test_replication_database_and_redis() -> None:
    repl = {"replication": "synchronized", "environment": "both"}
    assert judge(repl, snapshot(T0)) == [("blue", P), ("green", P)]
    not_configured = ReplicationStatus(state=ProbeState.NOT_CONFIGURED, reason="no [postgres]")
    snap = snapshot(T0, blue=env_snapshot("blue", replication=not_configured))
    assert judge(repl, snap) == [("blue", U), ("green", P)]
    lagging = ReplicationStatus(
        state=ProbeState.OK, primary_reachable=True, synchronized=False, reason="lag 20 MB"
    )
    assert judge(repl, snapshot(T0, green=env_snapshot("green", replication=lagging)))[1] == (
        "green",
        F,
    )
    undetermined = ReplicationStatus(state=ProbeState.OK, primary_reachable=True, synchronized=None)
    assert judge(repl, snapshot(T0, green=env_snapshot("green", replication=undetermined)))[1] == (
        "green",
        U,
    )

    db = {"database": "reachable", "environment": "green"}
    assert judge(db, snapshot(T0)) == [("green", P)]
    refused = ReplicationStatus(
        state=ProbeState.REFUSED, primary_reachable=False, reason="connection refused"
    )
    assert judge(db, snapshot(T0, green=env_snapshot("green", replication=refused))) == [
        ("green", F)
    ]
    assert judge(db, snapshot(T0, green=env_snapshot("green", replication=not_configured))) == [
        ("green", U)
    ]

    redis = {"redis": "operational", "environment": "green"}
    assert judge(redis, snapshot(T0)) == [("green", P)]
    cluster_down = RedisStatus(state=ProbeState.OK, cluster_enabled=True, cluster_state="fail")
    assert judge(redis, snapshot(T0, green=env_snapshot("green", redis=cluster_down))) == [
        ("green", F)
    ]
    auth = RedisStatus(state=ProbeState.AUTH_FAILED, reason="WRONGPASS")
    assert judge(redis, snapshot(T0, green=env_snapshot("green", redis=auth))) == [("green", F)]
    missing = RedisStatus(state=ProbeState.NOT_CONFIGURED)
    assert judge(redis, snapshot(T0, green=env_snapshot("green", redis=missing))) == [("green", U)]


def test_traffic_read_back() -> None:
    table = {"traffic_green": "==", "value": 10}
    assert judge(table, snapshot(T0, green_percentage=10.15625)) == [(None, P)]
    assert judge(table, snapshot(T0, green_percentage=50.0)) == [(None, F)]
    assert judge(table, snapshot(T0, green_percentage=None)) == [(None, U)]


def test_alerts_now_and_during_the_phase() -> None:
    table = {"no_alerts_firing": True, "severity": "critical"}
    assert judge(table, snapshot(T0)) == [(None, P)]
    firing = (alert(phase=AlertPhase.FIRING),)
    assert judge(table, snapshot(T0, alerts=firing)) == [(None, F)]
    warning = (alert(severity=AlertSeverity.WARNING, phase=AlertPhase.FIRING),)
    assert judge(table, snapshot(T0, alerts=warning)) == [(None, P)]
    assert judge({"no_alerts_firing": True}, snapshot(T0, alerts=warning)) == [(None, F)]
    assert judge(table, snapshot(T0, alerts=())) == [(None, U)]
    assert judge(table, snapshot(T0, alerts=(alert(unknown=True),))) == [(None, U)]
    blue_only = {"no_alerts_firing": True, "environment": "blue"}
    assert judge(blue_only, snapshot(T0, alerts=firing)) == [(None, P)]

    earlier = FiredAlert(
        rule_id="x",
        name="Throughput",
        severity="critical",
        environment="green",
        phase_id="phase-2",
        first_seen=T0 - timedelta(seconds=60),
    )
    history = AlertHistory(
        procedure_started_at=T0 - timedelta(seconds=300),
        phase_started_at=T0 - timedelta(seconds=30),
        watched=(WatchSpan(start=T0 - timedelta(seconds=301), end=T0),),
        fired=(earlier,),
    )
    during = {"no_alerts_firing": True, "during": "phase"}
    assert judge(during, snapshot(T0), history=history, phase_id="phase-2") == [(None, F)]
    assert judge(during, snapshot(T0), history=history, phase_id="phase-3") == [(None, P)]
    whole = {"no_alerts_firing": True, "during": "procedure"}
    assert judge(whole, snapshot(T0), history=history, phase_id="phase-3") == [(None, F)]
    # No history kept: nothing can be said about the phase or the procedure.
    assert judge(during, snapshot(T0), phase_id="phase-3") == [(None, U)]
    assert judge(whole, snapshot(T0), phase_id="phase-3") == [(None, U)]


def test_monitoring_reporting() -> None:
    table = {"monitoring": "reporting", "environment": "both"}
    assert judge(table, snapshot(T0)) == [("blue", P), ("green", P)]
    gap = snapshot(T0, green=env_snapshot("green", metric_values={"cache_hit_rate": None}))
    assert judge(table, gap) == [("blue", P), ("green", F)]
    assert judge(table, snapshot(T0, alerts=())) == [("blue", F), ("green", F)]


def test_step_passed() -> None:
    table = {"step_passed": "smoke"}
    assert judge(table, None, step_states={"smoke": "passed"}) == [(None, P)]
    assert judge(table, None, step_states={"smoke": "failed"}) == [(None, F)]
    assert judge(table, None, step_states={"smoke": "attested"}) == [(None, U)]
    assert judge(table, None, step_states={"smoke": "pending"}) == [(None, U)]
    lenient = {"step_passed": "smoke", "accept_attested": True}
    assert judge(lenient, None, step_states={"smoke": "attested"}) == [(None, P)]


def test_no_increase_against_the_baseline() -> None:
    table = {
        "no_increase": "error_rate",
        "environment": "green",
        "baseline": "blue",
        "tolerance": 0.001,
    }
    base = snapshot(T0, blue=env_snapshot("blue", metric_values={"error_rate": 0.002}))
    same = snapshot(T0, green=env_snapshot("green", metric_values={"error_rate": 0.0025}))
    worse = snapshot(T0, green=env_snapshot("green", metric_values={"error_rate": 0.02}))
    assert judge(table, same, baseline=base) == [("green", P)]
    assert judge(table, worse, baseline=base) == [("green", F)]
    assert judge(table, same) == [("green", U)]
    blind = snapshot(T0, blue=env_snapshot("blue", metric_values={"error_rate": None}))
    assert judge(table, same, baseline=blind) == [("green", U)]


# --- "zero downtime": alerts of the environment that carried traffic -----------------------

ZERO_TABLE = {
    "no_alerts_firing": True,
    "severity": "critical",
    "environment": "serving",
    "during": "procedure",
}

ZERO_RUNBOOK = """
title = "Zero downtime"
version = "0.1"
constitutional_hash = "cdd01ef066bc6cf2"

[[procedures]]
id = "deployment"
title = "Deployment"
source = "## Deployment"

[[procedures.phases]]
id = "success-criteria"
title = "Success criteria"
source = "## Success Criteria Validation"

[[procedures.phases.steps]]
id = "sign"
kind = "attestation"
title = "Sign"
section = "Deployment Success Criteria"
source = "- [ ] Zero-downtime deployment completed"
"""


def shipped_zero_downtime() -> Any:
    """The alert predicate of the shipped runbook's zero-downtime step."""
    _, _, step = load_runbook().locate("success-zero-downtime")
    [pred] = [c for c in step.checks if isinstance(c, AlertsCheck)]
    assert (pred.environment, pred.severity, pred.during) == ("serving", "critical", "procedure")
    return pred


def firing(rule: str, environment: str | None, since: datetime) -> AlertState:
    name = {"blue": "Service Unavailable", "green": "Error Rate", None: "Audit Trail Corruption"}
    rule_id = f"{rule}/{environment}"
    return alert(
        rule_id, name=name[environment], environment=environment, phase=AlertPhase.FIRING, at=since
    )


def blind(rule: str, environment: str) -> AlertState:
    return alert(f"{rule}/{environment}", name="P99 Latency", environment=environment, unknown=True)


class Deployment:
    """A real runbook engine fed one snapshot a second, as the console feeds it."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.runbook = parse_runbook(ZERO_RUNBOOK, "zero.toml")
        self.config = make_config()
        self.engine = RunbookEngine.start(self.runbook, self.config, "alice", clock=self.clock)

    def run(
        self,
        seconds: int,
        green: float | None,
        *extra: AlertState,
        blue_down: bool = False,
    ) -> None:
        blue = env_snapshot("blue", state=ServiceState.DOWN) if blue_down else None
        for _ in range(seconds):
            self.clock.advance(1)
            self.engine.observe(
                snapshot(self.clock.now, green_percentage=green, alerts=(*QUIET, *extra), blue=blue)
            )

    def judge(self, pred: Any = None) -> Outcome:
        [outcome] = (pred or shipped_zero_downtime()).evaluate(self.engine.context())
        return outcome


def migrate(d: Deployment) -> None:
    """0 % -> 10 % -> 50 % -> 100 % green, ten quiet seconds each."""
    for green in (0.0, 10.15625, 50.0, 100.0):
        d.run(10, green)


def test_blue_alerts_after_it_stopped_taking_traffic_do_not_count() -> None:
    d = Deployment()
    migrate(d)
    # Step 3.1: blue's planned shutdown; its critical alerts fire, its rules go blind.
    d.run(20, 100.0, firing("down", "blue", d.clock.now), blind("p99", "blue"), blue_down=True)
    outcome = d.judge()
    assert outcome.verdict is P, outcome
    assert "not counted: Service Unavailable (blue)" in outcome.detail
    assert "while blue takes no traffic" in outcome.detail
    # The same history judged on both environments fails: the check is not vacuous.
    both = PRED.validate_python({**ZERO_TABLE, "environment": "both"})
    assert d.judge(both).verdict is F
    # An alert of no environment (the audit chain) always counts.
    d.run(2, 100.0, firing("audit", None, d.clock.now))
    d.run(2, 100.0)
    outcome = d.judge()
    assert outcome.verdict is F and "Audit Trail Corruption (all) fired at" in outcome.detail


def test_a_critical_alert_on_green_while_it_serves_fails() -> None:
    d = Deployment()
    d.run(10, 0.0)
    d.run(5, 10.15625)
    d.run(3, 10.15625, firing("errors", "green", d.clock.now))  # green at 10 %
    d.run(5, 10.15625)  # it cleared
    d.run(10, 100.0)
    outcome = d.judge()
    assert outcome.verdict is F
    assert "Error Rate (green) fired at" in outcome.detail
    # The same alert while green took no traffic yet (smoke testing) does not count.
    early = Deployment()
    early.run(5, 0.0)
    early.run(3, 0.0, firing("errors", "green", early.clock.now))
    early.run(5, 0.0)
    migrate(early)
    outcome = early.judge()
    assert outcome.verdict is P and "Error Rate (green)" in outcome.detail


def test_a_critical_alert_on_blue_while_blue_serves_fails() -> None:
    for share in (0.0, 50.0):
        d = Deployment()
        d.run(5, share)
        d.run(3, share, firing("down", "blue", d.clock.now))  # blue still takes traffic
        d.run(5, share)
        d.run(10, 100.0)
        outcome = d.judge()
        assert outcome.verdict is F, (share, outcome)
        assert "Service Unavailable (blue) fired at" in outcome.detail
    # Its condition began while blue had half the traffic; it fired after the switch.
    d = Deployment()
    d.run(5, 50.0)
    began = d.clock.now
    d.run(5, 100.0)
    d.run(3, 100.0, firing("down", "blue", began))
    outcome = d.judge()
    assert outcome.verdict is F and "Service Unavailable (blue)" in outcome.detail


def test_without_alert_history_zero_downtime_is_unknown() -> None:
    # No history kept at all.
    assert judge(ZERO_TABLE, snapshot(T0)) == [(None, U)]
    # The console did not see the alert rules for a minute (it was not running).
    d = Deployment()
    d.run(10, 0.0)
    d.clock.advance(60)
    d.run(10, 100.0)
    outcome = d.judge()
    assert outcome.verdict is U and "alert rules not seen from" in outcome.detail
    # Killed and resumed: the stretch it was down is unwatched, the check is unknown.
    d = Deployment()
    migrate(d)
    saved = d.engine.to_dict()
    d.clock.advance(60)
    d.engine = RunbookEngine.restore(saved, d.runbook, d.config, "alice", clock=d.clock)
    d.run(10, 100.0)
    assert d.judge().verdict is U
    # Blue's alert fired while the split could not be read back, and the split read back
    # before (blue 50 %) and after (blue 0 %) disagree: did blue serve? Unknown.
    d = Deployment()
    d.run(10, 50.0)
    d.run(3, None, firing("down", "blue", d.clock.now + timedelta(seconds=1)))
    d.run(5, 100.0)
    outcome = d.judge()
    assert outcome.verdict is U and "when the traffic split was unknown" in outcome.detail
    # A rule of the serving environment without data for longer than stale_after_s (5 s).
    d = Deployment()
    d.run(10, 100.0)
    d.run(8, 100.0, blind("p99", "green"))
    d.run(5, 100.0)
    outcome = d.judge()
    assert outcome.verdict is U and "P99 Latency (green) had no data for 8 s" in outcome.detail
    # A blind moment (the first sweep after the console started) is tolerated, like a gap.
    d = Deployment()
    d.run(2, 0.0, blind("p99", "blue"))
    migrate(d)
    assert d.judge().verdict is P


def test_an_unreadable_split_between_two_read_backs_that_agree_is_judged_by_them() -> None:
    # Green at 100 % before and after a moment the split could not be read: blue took no
    # traffic then either, so blue's alert is not counted ...
    d = Deployment()
    migrate(d)
    d.run(3, None, firing("down", "blue", d.clock.now + timedelta(seconds=1)))
    d.run(5, 100.0)
    outcome = d.judge()
    assert outcome.verdict is P, outcome.detail
    assert "not counted" in outcome.detail
    # ... while green's, in the same moment, counts: green served on both sides.
    d = Deployment()
    migrate(d)
    d.run(3, None, firing("down", "green", d.clock.now + timedelta(seconds=1)))
    d.run(5, 100.0)
    outcome = d.judge()
    assert outcome.verdict is F, outcome.detail
    # No read-back after the moment yet: unknown.
    d = Deployment()
    migrate(d)
    d.run(3, None, firing("down", "green", d.clock.now + timedelta(seconds=1)))
    assert d.judge().verdict is U
