"""Deployment and incident reports, from a real audit trail on SQLite and on PostgreSQL.

The records are the real thing: the runbook engine walks a small runbook (real check
predicates over fixed Snapshots, a real command, a real command-driven traffic switch,
monitor windows on a settable clock) with its sink writing into the audit trail, and the
real rollback controller writes the incident record. Each store test runs on a SQLite file
and on a fresh database of the harness's PostgreSQL primary (``pg_cluster``). Tampering
goes behind the API's back with plain SQL.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from runbook_fixtures import Clock, alert, env_snapshot, make_config, script, snapshot

from backends.audit_store import AuditDraft, AuditStore, PostgresAuditStore, SQLiteAuditStore
from backends.models import AlertPhase, AlertSeverity, utcnow
from backends.traffic import CommandTrafficSwitch
from console import report_cli
from console.audit import AuditTrail, Spool
from console.engines import PostgresCluster, free_port
from console.report import (
    DeploymentReport,
    IncidentReport,
    StoreUnreachable,
    UnknownDeployment,
    build_deployment_report,
    build_incident_report,
    make_engine_reporter,
    render_json,
    render_markdown,
)
from console.rollback import RollbackController
from console.runbook.engine import RunbookEngine, StepState
from console.runbook.loader import parse_runbook

CHASH = "cdd01ef066bc6cf2"
OPERATOR = "alice@console-1"
APPROVER = "bob@console-2"
SKIP_REASON = "blue p99 is a known cold-cache artefact; ticket OPS-4711"
NOTE = "checked the environment files by hand: the hash is in all nine"
OTHER_DEPLOYMENT = "20200101_000000"

P99 = '{ metric = "p99_latency_ms", environment = "%s", op = "<", threshold = "%s" }'
P99_GREEN = P99 % ("green", "p99_latency_ms_critical")
P99_BLUE = P99 % ("blue", "p99_latency_ms_critical")

RUNBOOK = f"""
title = "Report test runbook"
version = "0.3"
constitutional_hash = "{CHASH}"

[[procedures]]
id = "deployment"
title = "Test deployment"
source = "## Test"

[[procedures.phases]]
id = "pre"
title = "Pre-deployment"
source = "### Pre"
budget_s = 1800

[[procedures.phases.steps]]
id = "green-healthy"
kind = "check"
title = "Green healthy and fast"
section = "Pre"
source = "- green healthy"
checks = [
  {{ all_services = "up", environment = "green", min_count = 9 }},
  {P99_GREEN},
]

[[procedures.phases.steps]]
id = "blue-latency"
kind = "check"
title = "Blue latency"
section = "Pre"
source = "- blue latency"
checks = [
  {P99_BLUE},
]

[[procedures.phases.steps]]
id = "smoke"
kind = "command"
title = "Smoke tests"
section = "Pre"
source = "- smoke"

[[procedures.phases.steps]]
id = "env-hash"
kind = "attestation"
title = "Environment carries the hash"
section = "Pre"
source = "- env hash"
prompt = "Confirm every environment file carries the hash"

[[procedures.phases]]
id = "migrate"
title = "Traffic migration"
source = "### Migrate"
budget_s = 900

[[procedures.phases.steps]]
id = "switch-10"
kind = "traffic"
title = "10% to green"
section = "Migrate"
source = "- 10"
green_percentage = 10

[[procedures.phases.steps]]
id = "monitor-10"
kind = "monitor"
title = "Monitor at 10%"
section = "Migrate"
source = "- monitor 10"
duration_s = 120

[[procedures.phases.steps]]
id = "perf-10"
kind = "check"
title = "Performance at 10%"
section = "Migrate"
source = "- perf 10"
checks = [
  {P99_GREEN},
  {{ metric = "error_rate", environment = "green", op = "<", value = 0.01 }},
]

[[procedures.phases.steps]]
id = "switch-50"
kind = "traffic"
title = "50% to green"
section = "Migrate"
source = "- 50"
green_percentage = 50

[[procedures.phases.steps]]
id = "monitor-50"
kind = "monitor"
title = "Monitor at 50%"
section = "Migrate"
source = "- monitor 50"
duration_s = 120

[[procedures.phases.steps]]
id = "done"
kind = "attestation"
title = "Done"
section = "Migrate"
source = "- done"
"""

MINIMAL_CONFIG = f"""
constitutional_hash = "{CHASH}"
operator = "carol@reporter"
[environments.blue.services.performance_suite]
base_url = "http://127.0.0.1:9"
[environments.green.services.performance_suite]
base_url = "http://127.0.0.1:9"
[traffic]
kind = "sandbox"
control_url = "http://127.0.0.1:9"
"""


# --- one store on each engine ------------------------------------------------------------------


@dataclass
class Backend:
    """An empty audit store on one engine, plus raw SQL behind the API's back."""

    kind: str
    make_store: Callable[[], AuditStore]
    sql: Callable[[str, tuple[Any, ...]], None]
    env: dict[str, str]


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / f"audit-{uuid.uuid4().hex[:8]}.sqlite3"

    def sql(statement: str, params: tuple[Any, ...]) -> None:
        with sqlite3.connect(path) as db:
            db.execute(statement, params)

    return Backend(
        kind="sqlite",
        make_store=lambda: SQLiteAuditStore(path),
        sql=sql,
        env={"ACGS_CONSOLE__AUDIT__SQLITE_PATH": str(path)},
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A SQLite file, or a fresh database on the harness's PostgreSQL primary."""
    if request.param == "sqlite":
        yield _sqlite_backend(tmp_path)
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    name = f"report_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(cluster.primary_dsn, dbname=name)

    def sql(statement: str, params: tuple[Any, ...]) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement.replace("?", "%s"), params)

    yield Backend(
        kind="postgresql",
        make_store=lambda: PostgresAuditStore(dsn),
        sql=sql,
        env={"ACGS_CONSOLE__AUDIT__POSTGRES_DSN": dsn},
    )
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _drop_guards(backend: Backend) -> None:
    """Remove the append-only triggers, as a privileged tamperer would."""
    if backend.kind == "sqlite":
        backend.sql("DROP TRIGGER audit_records_no_update", ())
        backend.sql("DROP TRIGGER audit_records_no_delete", ())
    else:
        backend.sql("DROP TRIGGER audit_records_no_update_delete ON audit_records", ())


@pytest.fixture
def trail(backend: Backend, tmp_path: Path) -> Iterator[AuditTrail]:
    t = AuditTrail(
        backend.make_store(),
        tmp_path / f"spool-{uuid.uuid4().hex[:8]}.jsonl",
        constitutional_hash=CHASH,
        operator=OPERATOR,
    )
    yield t
    t.close()


def audit_sink(trail: AuditTrail) -> Callable[[str, dict[str, Any]], None]:
    """The engine's events into the audit trail (how the console wires the engine's sink)."""

    def sink(action: str, evidence: dict[str, Any]) -> None:
        at = evidence.get("at")
        result = trail.append(
            action,
            evidence=evidence,
            deployment_id=evidence.get("deployment_id"),
            operator=evidence.get("operator") or trail.operator,
            at=datetime.fromisoformat(at) if isinstance(at, str) else None,
        )
        assert result.record is not None, result.error

    return sink


# --- a whole deployment, for real ------------------------------------------------------------


@dataclass
class Scenario:
    deployment_id: str
    incident_id: str
    rollback_outcome: str


def _switch(tmp_path: Path) -> CommandTrafficSwitch:
    (tmp_path / "split").write_text("0\n")
    setter = script(tmp_path / "lb-set.sh", 'echo "$1" > split\n')
    reader = script(tmp_path / "lb-read.sh", "cat split\n")
    return CommandTrafficSwitch(
        [str(setter), "{green_percentage}"], [str(reader)], cwd=tmp_path, timeout_s=5
    )


def _feed(engine: RunbookEngine, clock: Clock, seconds: int, **kw: Any) -> None:
    for _ in range(seconds):
        clock.advance(1)
        engine.observe(snapshot(clock.now, **kw))


async def run_deployment(trail: AuditTrail, tmp_path: Path) -> Scenario:
    """Walk the test runbook with the real engine into ``trail``, then roll back for real."""
    smoke = script(tmp_path / "smoke.sh", 'echo "smoke 1 ok"\necho "smoke 2 ok"\n')
    cfg = make_config(
        constitutional_hash=CHASH,
        commands={"smoke": {"argv": [str(smoke)], "cwd": str(tmp_path), "timeout_s": 20}},
        monitor_windows={"monitor-10": 3, "monitor-50": 3},
        coordination={"four_eyes_gates": ["switch-50"]},
        rollback={"verify_timeout_s": 0.3, "verify_window_s": 0.1, "retries": 0},
    )
    switch = _switch(tmp_path)
    clock = Clock(utcnow().replace(microsecond=0))
    sink = audit_sink(trail)
    engine = RunbookEngine.start(
        parse_runbook(RUNBOOK, "report-test.toml"),
        cfg,
        OPERATOR,
        sink=sink,
        clock=clock,
        traffic=switch,
    )
    dep = engine.deployment_id
    # Records of someone else, interleaved: never in this deployment's report.
    trail.append("step.passed", evidence={"step": "x"}, deployment_id=OTHER_DEPLOYMENT)
    trail.append("config.reloaded", evidence={"path": "/etc/acgs.toml"})

    slow_blue = env_snapshot("blue", metric_values={"p99_latency_ms": 9.1})
    engine.observe(snapshot(clock.now, blue=slow_blue))
    assert engine.check(OPERATOR).state is StepState.PASSED
    assert engine.check(OPERATOR).state is StepState.FAILED
    engine.skip(OPERATOR, SKIP_REASON)
    assert (await engine.run_command(OPERATOR)).state is StepState.PASSED
    engine.attest(OPERATOR, NOTE)
    # Something the report has never heard of, with a nested evidence shape.
    trail.append(
        "lease.acquired",
        evidence={"holder": {"who": OPERATOR, "token": "t-1"}, "fence": 7},
        deployment_id=dep,
        fence=7,
    )

    clock.advance(1)
    engine.observe(snapshot(clock.now))
    assert (await engine.shift_traffic(OPERATOR)).state is StepState.PASSED
    engine.start_monitor(OPERATOR)
    warning = (
        alert(
            "cache-hit-warning",
            name="Cache Hit Rate",
            severity=AlertSeverity.WARNING,
            phase=AlertPhase.FIRING,
            at=clock.now,
        ),
    )
    slower_green = env_snapshot("green", metric_values={"p99_latency_ms": 4.1})
    _feed(engine, clock, 1, green_percentage=10, alerts=warning, green=slower_green)
    _feed(engine, clock, 2, green_percentage=10)
    assert engine.record("monitor-10").state is StepState.PASSED
    assert engine.check(OPERATOR).state is StepState.PASSED

    record = await engine.shift_traffic(OPERATOR, approved_by=APPROVER)
    assert record.state is StepState.PASSED
    engine.start_monitor(OPERATOR)
    _feed(engine, clock, 1, green_percentage=50)
    firing = (alert(phase=AlertPhase.FIRING, at=clock.now),)
    _feed(engine, clock, 1, green_percentage=50, alerts=firing)
    assert engine.rollback_offered

    controller = RollbackController(
        cfg, switch=switch, audit=trail, report_dir=tmp_path / "incidents", operator=OPERATOR
    )
    try:
        result = await controller.run(
            started=time.monotonic(),
            reason="P99 latency critical on green at 50%",
            trigger="hotkey",
            confirmed=True,
            deployment_id=dep,
        )
    finally:
        await controller.aclose()
    assert result.audit is not None and result.audit.stored, result.audit
    engine.end(OPERATOR, "rolled_back", "emergency rollback after the P99 alert")
    return Scenario(
        deployment_id=dep, incident_id=result.incident_id, rollback_outcome=result.outcome.value
    )


# --- the deployment report -----------------------------------------------------------------------


async def test_deployment_report_from_a_real_run(
    backend: Backend, trail: AuditTrail, tmp_path: Path
) -> None:
    sc = await run_deployment(trail, tmp_path)
    report = build_deployment_report(trail, sc.deployment_id, generated_by="carol@reporter")
    stored = list(trail.records(deployment_id=sc.deployment_id))
    head = trail.store.head()
    assert head is not None

    # Every record of the deployment, in chain order; nobody else's.
    assert [e.seq for e in report.timeline] == [r.seq for r in stored]
    assert [e.action for e in report.timeline] == [r.action for r in stored]
    assert all(e.verified for e in report.timeline)
    assert OTHER_DEPLOYMENT not in render_json(report)
    # The chain: head and verdict at report time.
    assert report.chain.ok
    assert report.chain.head_hash == head.hash and report.chain.head_seq == head.seq
    assert report.constitutional_hash == CHASH and report.hashes_seen == (CHASH,)
    assert report.outcome == "rolled_back"
    assert report.started_by == OPERATOR and report.runbook == "Report test runbook"

    # Gates: measured values against thresholds, the skip and its reason, the note, exit code.
    by_step = {(g.step, g.state): g for g in report.gates}
    failed = by_step[("blue-latency", "failed")]
    assert [(m.environment, m.verdict, m.value) for m in failed.measurements] == [
        ("blue", "fail", 9.1)
    ]
    skipped = by_step[("blue-latency", "skipped")]
    assert skipped.reason == SKIP_REASON and skipped.skipped_from == "failed"
    assert report.skipped == [skipped]
    assert by_step[("env-hash", "attested")].note == NOTE
    command = by_step[("smoke", "passed")].command
    assert command is not None and command.exit_code == 0
    assert command.output_tail == ("smoke 1 ok", "smoke 2 ok")
    assert by_step[("switch-50", "passed")].approved_by == APPROVER

    # Traffic steps: the load balancer's read-back, the windows and what was measured there.
    assert [(t.step, t.target_green_percentage) for t in report.traffic] == [
        ("switch-10", 10.0),
        ("switch-50", 50.0),
    ]
    at10, at50 = report.traffic
    assert at10.read_back is not None and at10.read_back.green_percentage == 10
    assert [w.state for w in at10.monitors] == ["passed"]
    assert at10.monitors[0].warnings_seen
    assert {m.check for _, m in at10.measurements} >= {"green error_rate < 0.01"}
    assert [w.state for w in at50.monitors] == ["failed"]
    # The metrics recorded with the traffic steps and windows are in the report as recorded.
    assert at10.metrics and at10.monitors[0].metrics
    assert "4.1" in json.dumps(at10.monitors[0].metrics)

    # Alerts, rollbacks, who did what.
    critical = [a for a in report.alerts if a.severity == "critical"]
    assert [a.name for a in critical] == ["P99 Latency"]
    assert any(a.name == "Cache Hit Rate" and a.severity == "warning" for a in report.alerts)
    events = [(b.event, b.kind) for b in report.rollbacks]
    assert ("offered", "emergency") in events and ("executed", "emergency") in events
    assert ("ended", "unknown") in events
    executed = next(b for b in report.rollbacks if b.event == "executed")
    assert executed.incident_id == sc.incident_id and executed.outcome == sc.rollback_outcome
    # Judged from the recorded timings (no wall-clock assertion here: speed lives in bench/).
    assert executed.total_ms is not None
    assert executed.within_budget is (executed.total_ms <= 30_000)
    people = {o.operator: o for o in report.operators}
    assert people[APPROVER].approvals == (f"switch-50 for {OPERATOR}",)
    assert people[OPERATOR].rollbacks == 1
    assert [p.phase for p in report.phases] == ["pre", "migrate"]
    assert report.phases[0].over_budget is False

    # The unknown action is there, generically, not dropped.
    lease = next(e for e in report.timeline if e.action == "lease.acquired")
    assert not lease.recognised and lease.seq in report.unrecognised
    assert "t-1" in lease.summary

    # Markdown: readable, and says all of it.
    md = render_markdown(report)
    for record in stored:
        assert re.search(rf"^\| {record.seq} \| ", md, re.M), f"record {record.seq} not in table"
    assert "SKIPPED** `blue-latency`" in md and SKIP_REASON in md
    assert NOTE in md
    measured_row = rf"^\| {failed.seq} \| blue-latency \| .* \| blue \| 9\.1 \| < 5 \| FAIL \|"
    assert re.search(measured_row, md, re.M)
    assert head.hash in md and CHASH in md
    assert "lease.acquired (unrecognised)" in md
    assert "P99 Latency" in md and sc.incident_id in md
    assert "DOES NOT VERIFY" not in md
    at10_md = md[md.index("### At 10% green") : md.index("### At 50% green")]
    p99_row = next(line for line in at10_md.splitlines() if line.startswith("| p99_latency_ms |"))
    assert "3.2" in p99_row and "4.1" in p99_row

    # JSON: the model's dump, and it reads back to the same report.
    text = render_json(report)
    assert DeploymentReport.model_validate_json(text) == report
    data = json.loads(text)
    assert data["chain"]["head_hash"] == head.hash and data["chain"]["state"] == "ok"
    assert len(data["timeline"]) == len(stored)


async def test_incident_report_of_the_rollback_record(
    backend: Backend, trail: AuditTrail, tmp_path: Path
) -> None:
    sc = await run_deployment(trail, tmp_path)
    report = build_incident_report(trail, sc.incident_id)
    # The same record, reached through the deployment id.
    assert build_incident_report(trail, sc.deployment_id).record_seq == report.record_seq
    stored = next(r for r in trail.records() if r.action == "rollback")
    assert report.record_seq == stored.seq and report.record_hash == stored.hash
    assert report.record_verified and report.chain.ok
    assert report.incident_id == sc.incident_id and report.deployment_id == sc.deployment_id
    assert report.kind == "emergency" and report.trigger == "hotkey"
    assert report.reason == "P99 latency critical on green at 50%"
    assert report.outcome == sc.rollback_outcome
    # Per-step timings against the budget; read-back; verification; compliance on blue.
    names = [s.name for s in report.steps]
    assert names[:2] == ["switch", "read_back"] and "compliance" in names
    assert all(s.ended_ms is not None and s.budget_share is not None for s in report.steps)
    assert report.total_ms == max(s.ended_ms or 0 for s in report.steps)
    assert report.budget_s == 30 and report.within_budget is (report.total_ms <= 30_000)
    assert report.read_back is not None and report.read_back.green_percentage == 0
    assert [s.name for s in report.verification] == [
        "read_back",
        "blue_healthy",
        "requests_reach_blue",
    ]
    assert report.compliance is not None and report.compliance.name == "compliance"

    md = render_markdown(report)
    assert sc.incident_id in md and "of the runbook's 30 s budget" in md
    assert "Constitutional compliance on blue" in md and report.compliance.detail in md
    assert "0% green" in md and stored.hash in md
    assert IncidentReport.model_validate_json(render_json(report)) == report


async def test_engine_reporter_writes_both_formats(
    backend: Backend, trail: AuditTrail, tmp_path: Path
) -> None:
    sc = await run_deployment(trail, tmp_path)
    reporter = make_engine_reporter(trail, tmp_path / "reports")
    where = await reporter("deployment", {"deployment_id": sc.deployment_id})
    md = tmp_path / "reports" / f"deployment-{sc.deployment_id}.md"
    js = tmp_path / "reports" / f"deployment-{sc.deployment_id}.json"
    assert where == f"{md} and {js}"
    assert DeploymentReport.model_validate_json(js.read_text()).deployment_id == sc.deployment_id
    assert md.read_text().startswith(f"# Deployment report: {sc.deployment_id}")
    where = await reporter("incident", {"deployment_id": sc.deployment_id})
    assert (tmp_path / "reports" / f"incident-{sc.incident_id}.json").exists(), where


# --- the command line ----------------------------------------------------------------------------


def _cli(argv: list[str], backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """``acgs-console [--config FILE] report ...``, wired the way console/cli.py wires it."""
    config = tmp_path / "acgs-console.toml"
    config.write_text(MINIMAL_CONFIG, encoding="utf-8")
    for key in ("ACGS_CONSOLE__AUDIT__SQLITE_PATH", "ACGS_CONSOLE__AUDIT__POSTGRES_DSN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in backend.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ACGS_CONSOLE__AUDIT__SPOOL_PATH", str(tmp_path / "cli-spool.jsonl"))
    parser = argparse.ArgumentParser(prog="acgs-console")
    parser.add_argument("--config")
    report_cli.add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["--config", str(config), *argv])
    return int(args.func(args))


async def test_cli_exit_codes(
    backend: Backend,
    trail: AuditTrail,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sc = await run_deployment(trail, tmp_path)
    head = trail.store.head()
    assert head is not None

    # 0: Markdown on stdout.
    assert _cli(["report", sc.deployment_id], backend, tmp_path, monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# Deployment report: {sc.deployment_id}") and head.hash in out
    assert "generated" in out.lower() and "carol@reporter" in out

    # 0: JSON into a file (format from the suffix), and the incident report.
    js = tmp_path / "out" / "report.json"
    assert _cli(["report", sc.deployment_id, "-o", str(js)], backend, tmp_path, monkeypatch) == 0
    assert DeploymentReport.model_validate_json(js.read_text()).chain.head_hash == head.hash
    argv = ["report", sc.deployment_id, "--incident", "--format", "json"]
    assert _cli(argv, backend, tmp_path, monkeypatch) == 0
    incident = IncidentReport.model_validate_json(capsys.readouterr().out)
    assert incident.incident_id == sc.incident_id

    # 2: a deployment nobody ran; an incident nobody had.
    assert _cli(["report", "19990101_000000"], backend, tmp_path, monkeypatch) == 2
    assert "no audit record of deployment '19990101_000000'" in capsys.readouterr().err
    assert _cli(["report", "19990101_000000-abcdef"], backend, tmp_path, monkeypatch) == 2

    # 1: somebody edits a gate's evidence in the database; the report is still written, marked.
    gate = next(
        r for r in trail.records(deployment_id=sc.deployment_id) if r.action == "step.skipped"
    )
    _drop_guards(backend)
    backend.sql(
        "UPDATE audit_records SET evidence = ? WHERE seq = ?",
        (json.dumps({**gate.evidence, "reason": "nothing to see"}), gate.seq),
    )
    md = tmp_path / "tampered.md"
    assert _cli(["report", sc.deployment_id, "-o", str(md)], backend, tmp_path, monkeypatch) == 1
    err = capsys.readouterr().err
    assert f"record {gate.seq}: hash mismatch (modified)" in err
    text = md.read_text()
    assert "THE AUDIT CHAIN DOES NOT VERIFY" in text
    assert f"record {gate.seq}: hash mismatch (modified)" in text
    assert re.search(rf"^\| {gate.seq} ✗ \| ", text, re.M)  # marked, not dropped
    assert "nothing to see" in text  # the record as it now reads, flagged
    js = tmp_path / "tampered.json"
    assert _cli(["report", sc.deployment_id, "-o", str(js)], backend, tmp_path, monkeypatch) == 1
    tampered = DeploymentReport.model_validate_json(js.read_text())
    assert tampered.chain.state == "corrupted" and tampered.chain.problem_seq == gate.seq
    assert tampered.chain.verified_head_seq == gate.seq - 1
    assert len(tampered.timeline) == len(list(trail.records(deployment_id=sc.deployment_id)))


def test_cli_store_unreachable_is_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = Backend(
        kind="postgresql",
        make_store=lambda: PostgresAuditStore(""),
        sql=lambda s, p: None,
        env={
            "ACGS_CONSOLE__AUDIT__POSTGRES_DSN": f"host=127.0.0.1 port={free_port()} "
            "dbname=audit user=nobody connect_timeout=2"
        },
    )
    assert _cli(["report", "20250101_120000"], dead, tmp_path, monkeypatch) == 2
    assert "cannot connect" in capsys.readouterr().err


# --- robustness ------------------------------------------------------------------------------


@pytest.fixture
def sqlite_trail(tmp_path: Path) -> Iterator[tuple[AuditTrail, Backend]]:
    backend = _sqlite_backend(tmp_path)
    t = AuditTrail(
        backend.make_store(),
        tmp_path / "spool.jsonl",
        constitutional_hash=CHASH,
        operator=OPERATOR,
    )
    yield t, backend
    t.close()


DEP = "20250101_120000"

# Shapes nobody promised: wrong types where the engine puts dicts and lists, unknown actions.
ODD_RECORDS: list[tuple[str, dict[str, Any]]] = [
    ("deployment.started", {"procedure": ["not", "a", "string"], "runbook": 7}),
    ("step.passed", {"step": "s1", "kind": "check", "evidence": "not a dict"}),
    ("step.failed", {"step": "s2", "evidence": {"outcomes": "garbage", "argv": 5}}),
    ("step.failed", {"step": "s3", "evidence": {"outcomes": [1, None, {"check": 3}]}}),
    ("step.skipped", {"evidence": {"skipped_from": None}}),
    ("step.attested", {"step": "s4", "evidence": {"note": {"nested": True}}}),
    ("rollback", {"steps": "fast", "incident_id": 12, "budget_s": "thirty"}),
    ("rollback.offered", {"reason": None, "automatic": "yes"}),
    ("alert.fired", {"name": None, "severity": 3, "first_seen": "yesterday"}),
    ("phase.completed", {"phase": None, "elapsed_s": "NaN", "over_budget": "no"}),
    ("traffic.read_back", {"split": [10, 90]}),
    ("step.monitor_tick", {"nan": "NaN", "deep": {"a": [{"b": [1, 2]}]}}),
    ("operator.note", {}),
]


def test_unknown_actions_and_odd_evidence_never_lose_a_record(
    sqlite_trail: tuple[AuditTrail, Backend],
) -> None:
    trail, _ = sqlite_trail
    for action, evidence in ODD_RECORDS:
        assert trail.append(action, evidence=evidence, deployment_id=DEP).record is not None
    report = build_deployment_report(trail, DEP)
    assert [e.action for e in report.timeline] == [a for a, _ in ODD_RECORDS]
    assert {a for a in ("step.monitor_tick", "operator.note")} <= {
        e.action for e in report.timeline if not e.recognised
    }
    md = render_markdown(report)
    for entry in report.timeline:
        assert re.search(rf"^\| {entry.seq} \| ", md, re.M)
    # What could not be interpreted is shown as recorded.
    assert 'deep={"a": [{"b": [1, 2]}]}' in md
    assert "evidence=not a dict" in md and 'attested: {"nested": true}' in md
    assert DeploymentReport.model_validate_json(render_json(report)) == report
    # An odd rollback record still makes an incident report, keeping what it cannot read.
    incident = build_incident_report(trail, DEP)
    assert incident.steps == () and incident.budget_s == 30
    assert IncidentReport.model_validate_json(render_json(incident)) == incident
    assert "Incident report" in render_markdown(incident)


def test_unknown_deployment_and_spooled_records(
    sqlite_trail: tuple[AuditTrail, Backend], tmp_path: Path
) -> None:
    trail, _ = sqlite_trail
    trail.append("deployment.started", evidence={"procedure": "deployment"}, deployment_id=DEP)
    with pytest.raises(UnknownDeployment, match="20250101_120001"):
        build_deployment_report(trail, "20250101_120001")
    # Written while the store was down: in the spool, listed apart, not in the chain.
    spool = Spool(trail.spool.path)
    draft = AuditDraft(
        entry_id=uuid.uuid4().hex,
        operator=OPERATOR,
        action="step.attested",
        deployment_id=DEP,
        constitutional_hash=CHASH,
        evidence={"step": "sign", "evidence": {"note": "signed offline"}},
    )
    with spool.locked():
        spool.add(draft)
    report = build_deployment_report(trail, DEP)
    assert len(report.timeline) == 1
    assert [p.action for p in report.pending] == ["step.attested"]
    md = render_markdown(report)
    assert "Waiting in the local spool" in md and "signed offline" in md


def test_deleted_record_is_named_and_the_rest_still_shown(
    sqlite_trail: tuple[AuditTrail, Backend],
) -> None:
    trail, backend = sqlite_trail
    for i in range(5):
        trail.append(f"custom.{i}", evidence={"i": i}, deployment_id=DEP)
    _drop_guards(backend)
    backend.sql("DELETE FROM audit_records WHERE seq = 3", ())
    report = build_deployment_report(trail, DEP)
    assert report.chain.state == "corrupted" and report.chain.problem_seq == 3
    assert "deleted" in (report.chain.problem or "")
    assert [(e.seq, e.verified) for e in report.timeline] == [
        (1, True),
        (2, True),
        (4, False),
        (5, False),
    ]


def test_store_unreachable_raises(tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=audit user=nobody"
    trail = AuditTrail(
        PostgresAuditStore(dsn),
        tmp_path / "spool.jsonl",
        constitutional_hash=CHASH,
        operator=OPERATOR,
    )
    with pytest.raises(StoreUnreachable, match="cannot connect"):
        build_deployment_report(trail, DEP)


def _event(trail: AuditTrail, action: str, operator: str = OPERATOR, **evidence: Any) -> None:
    """One record in the runbook engine's event shape (as its sink delivers it)."""
    body = {"deployment_id": DEP, "procedure": "deployment", "operator": operator, **evidence}
    assert trail.append(action, evidence=body, deployment_id=DEP, operator=operator).record


def test_metrics_with_traffic_steps_and_every_kind_of_rollback(
    sqlite_trail: tuple[AuditTrail, Backend],
) -> None:
    trail, _ = sqlite_trail
    split = {"green_percentage": 10.0, "blue_weight": 230, "green_weight": 26, "source": "haproxy"}
    _event(
        trail,
        "step.passed",
        step="switch-10",
        kind="traffic",
        state="passed",
        evidence={
            "target_green_percentage": 10,
            "read_back": split,
            "metrics": {
                "before": {
                    "snapshot_taken_at": "2025-01-01T12:00:00+00:00",
                    "green": {"p99_latency_ms": 3.4, "error_rate": None},
                }
            },
            "lb_reload_ms": 1.5,  # a key no section of the report knows
        },
    )
    _event(
        trail,
        "step.passed",
        None,
        step="monitor-10",
        kind="monitor",
        state="passed",
        evidence={
            "duration_s": 120,
            "elapsed_s": 120,
            "snapshots": 60,
            "max_gap_s": 2.0,
            "metrics": {"green": {"requests_per_second": 41.5}},
        },
    )
    _event(
        trail,
        "alert.fired",
        rule_id="error-rate",
        name="Error Rate",
        severity="critical",
        environment="green",
        summary="errors > 1%",
        first_seen="2025-01-01T12:00:00+00:00",
    )
    _event(
        trail,
        "rollback",
        trigger="automatic",
        automatic=True,
        incident_id="i-auto",
        outcome="verified",
        reason="automatic: Error Rate on green",
        steps=[{"name": "switch", "ok": True, "started_ms": 0.1, "ended_ms": 31000.0}],
    )
    _event(
        trail,
        "rollback",
        "dave@laptop",
        trigger="break-glass",
        break_glass=True,
        incident_id="i-glass",
        outcome="verified",
        reason="paged at 3am",
    )
    _event(
        trail,
        "rollback.refused",
        trigger="hotkey",
        incident_id="i-no",
        reason="p99",
        safety={"verdict": "needs_confirmation", "reasons": ["blue down"]},
    )
    _event(
        trail,
        "deployment.started",
        procedure="planned-rollback",
        procedure_title="Planned rollback",
    )
    _event(trail, "deployment.completed", procedure="planned-rollback")
    report = build_deployment_report(trail, DEP)

    (traffic,) = report.traffic
    assert traffic.read_back is not None and traffic.read_back.green_weight == 26
    assert traffic.metrics["before"]["green"]["p99_latency_ms"] == 3.4
    assert traffic.monitors[0].metrics == {"green": {"requests_per_second": 41.5}}
    assert [(a.name, a.source) for a in report.alerts] == [("Error Rate", "alert.fired")]
    kinds = [(b.event, b.kind, b.outcome) for b in report.rollbacks]
    assert kinds == [
        ("executed", "automatic", "verified"),
        ("executed", "break_glass", "verified"),
        ("refused", "emergency", "refused"),
        ("planned", "planned", "started"),
        ("planned", "planned", "completed"),
    ]
    auto = report.rollbacks[0]
    assert auto.total_ms == 31000.0 and auto.within_budget is False
    assert report.outcome == "rolled_back"
    md = render_markdown(report)
    # A shape it knows becomes a table; any other is listed as recorded.
    assert "| metric | before green |" in md
    assert "| p99_latency_ms | 3.4 |" in md and "| error_rate | unknown |" in md
    assert "- monitor-10 green.requests_per_second: 41.5" in md
    assert "10% green (weights blue 230 / green 26)" in md
    assert re.search(r"^\| \d+ \| switch-10 \| lb_reload_ms \| 1\.5 \|$", md, re.M)
    assert "31000 ms of 30 s (**OVER BUDGET**)" in md and "break-glass" in md
    glass = build_incident_report(trail, "i-glass")
    assert glass.kind == "break_glass" and glass.operator == "dave@laptop"
    late = build_incident_report(trail, "i-auto")
    assert late.kind == "automatic" and late.within_budget is False
    assert "**NOT within budget**" in render_markdown(late)
