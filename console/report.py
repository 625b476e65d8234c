"""Deployment and incident reports, built from the hash-chained audit trail.

This module owns what a report says and how it is rendered; the audit trail
(:mod:`console.audit`) owns the records it is built from. A report is a pydantic
model (so its JSON form is a plain ``model_dump``) rendered to Markdown for people.

**Built from the chain, verified while read.** :func:`read_chain` walks the whole
chain once, from one consistent snapshot of the store, verifying it on the way and
keeping the records the report is about. A report therefore always carries the chain
head and the verification verdict *at report time*; every record it shows says
whether the chain vouches for it (a record after the first problem does not). A
chain that does not verify still gives a report, marked as such: the records are
evidence either way. Records still waiting in the local spool (the store was down)
are listed apart: they are not part of the chain yet.

**Every record, always.** The timeline holds every record of the deployment.
Actions this module knows (the runbook engine's ``deployment.*``, ``phase.*``,
``step.*``, ``traffic.*``, ``rollback.*`` and the rollback's ``rollback`` incident
record) are summarised in their own words and feed the gate, traffic, alert and
rollback sections; anything else -- an action added later, an evidence shape
that changed -- is rendered generically from its evidence and marked as not
recognised, never dropped. Interpreting one record can never fail the report.

Two reports:

* the **deployment report** (:func:`build_deployment_report`): timeline, who did
  what, the evidence at every gate (measured values against thresholds, exit
  codes, attestations with their notes, skipped steps with their reasons), the
  traffic steps with the load balancer's read-back, the metrics recorded with each
  step and its monitor windows (a table when they have the engine's
  ``{label: {environment: {metric: value}}}`` shape, listed as recorded otherwise)
  and the checks judged at that split, alerts, rollbacks (emergency, automatic,
  break-glass, planned, refused), phase timings against budgets, the
  constitutional hash, and the chain;
* the **incident report** (:func:`build_incident_report`) for one rollback record:
  trigger, reason, each step's timing against the 30 s budget, the load
  balancer's read-back, the verification, constitutional compliance on blue.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from backends.audit_store import (
    GENESIS_HASH,
    AuditDraft,
    AuditRowError,
    AuditStoreError,
    ChainHead,
)
from backends.models import AuditRecord, utcnow
from console.audit import (
    AuditTrail,
    ChainProblem,
    ProblemKind,
    VerifyResult,
    VerifyState,
    verify,
)

__all__ = [
    "DEFAULT_BUDGET_S",
    "AlertEntry",
    "Category",
    "ChainRead",
    "ChainStatus",
    "CommandEvidence",
    "DeploymentReport",
    "GateEvidence",
    "IncidentReport",
    "IncidentStep",
    "Measurement",
    "MonitorWindowReport",
    "OperatorActivity",
    "PendingEntry",
    "PhaseReport",
    "ReadBack",
    "ReportError",
    "RollbackEntry",
    "StoreUnreachable",
    "TimelineEntry",
    "TrafficStepReport",
    "UnknownDeployment",
    "UnknownIncident",
    "assemble_deployment_report",
    "assemble_incident_report",
    "build_deployment_report",
    "build_incident_report",
    "default_report_dir",
    "is_incident_id",
    "make_engine_reporter",
    "read_chain",
    "render_json",
    "render_markdown",
    "write_report",
]

DEPLOYMENT_REPORT_FORMAT = "acgs-console-deployment-report"
INCIDENT_REPORT_FORMAT = "acgs-console-incident-report"
REPORT_VERSION = 1
DEFAULT_BUDGET_S = 30.0
"""The runbook's emergency-rollback budget, when a record does not carry its own."""

ROLLBACK_ACTION = "rollback"
ROLLBACK_REFUSED_ACTION = "rollback.refused"
PLANNED_ROLLBACK_PROCEDURE = "planned-rollback"

_INCIDENT_ID = re.compile(r"^\d{8}_\d{6}-[0-9a-zA-Z]+$")
_DEPLOYMENT_ID = re.compile(r"^\d{8}_\d{6}$")

# Keys every engine event carries; a generic summary leaves them out (they are shown elsewhere).
_COMMON_KEYS = frozenset({"deployment_id", "at", "constitutional_hash", "procedure", "operator"})
_GATE_STATES = ("passed", "failed", "skipped", "attested", "interrupted")
_VERIFY_STEPS = ("read_back", "blue_healthy", "requests_reach_blue")
# What the gate sections interpret; anything else a gate record carries is shown as recorded.
_GATE_EVENT_KEYS = frozenset(
    {
        *_COMMON_KEYS,
        "phase",
        "step",
        "step_title",
        "kind",
        "state",
        "reason",
        "approved_by",
        "evidence",
    }
)
_GATE_EVIDENCE_KEYS = frozenset(
    {
        "outcomes",
        "snapshot_sequence",
        "snapshot_taken_at",
        "argv",
        "cwd",
        "exit_code",
        "duration_s",
        "timed_out",
        "cancelled",
        "error",
        "output_tail",
        "target_green_percentage",
        "switch",
        "set_read_back",
        "read_back",
        "note",
        "unconfigured_command",
        "prompt",
        "skipped_from",
        "report",
        "location",
        "elapsed_s",
        "snapshots",
        "max_gap_s",
        "expected_green_percentage",
        "warnings_seen",
        "last_problem",
        "alerts",
        "metrics",
    }
)
_OUTPUT_TAIL_SHOWN = 20
"""Lines of a command's output the Markdown shows (the JSON keeps all the record has)."""


class ReportError(Exception):
    """A report cannot be made at all (the CLI exits 2)."""


class StoreUnreachable(ReportError):
    """The audit store cannot be read."""


class UnknownDeployment(ReportError):
    """No record of this deployment, neither in the chain nor in the spool."""


class UnknownIncident(ReportError):
    """No rollback record matches."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- small, forgiving readers of evidence ------------------------------------------------------
# Evidence is whatever the writer put there; these never raise on an unexpected shape.


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return None


def _shown(value: Any) -> str | None:
    """Text as it is; anything else (a note someone recorded as a dict) as compact JSON."""
    if value is None:
        return None
    return value if isinstance(value, str) else _scalar(value, 400)


def _num(value: Any) -> float | None:
    """A finite number, or None (JSON-safe evidence spells NaN as the string ``"NaN"``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _scalar(value: Any, limit: int = 120) -> str:
    """One value, short, for a summary."""
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _generic_summary(evidence: Mapping[str, Any], limit: int = 240) -> str:
    """``key=value; ...`` of the evidence, common keys left out, for an unknown action."""
    parts = [f"{k}={_scalar(v, 80)}" for k, v in evidence.items() if k not in _COMMON_KEYS]
    text = "; ".join(parts) or "(no evidence)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested evidence as ``(dotted.path, leaf)`` pairs, for a generic table."""
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _flatten(sub, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        for i, sub in enumerate(value):
            yield from _flatten(sub, f"{prefix}[{i}]")
    else:
        yield prefix or "(value)", value


def _fmt_pct(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}%"


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if abs(seconds) < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(abs(seconds), 60)
    sign = "-" if seconds < 0 else ""
    return f"{sign}{int(minutes)} min {rest:.0f} s"


def _fmt_ms(ms: float | None) -> str:
    return "unknown" if ms is None else f"{ms:.1f} ms"


def _fmt_at(at: datetime | None) -> str:
    if at is None:
        return "unknown"
    return at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def is_incident_id(text: str) -> bool:
    """Whether ``text`` looks like a rollback's incident id (``YYYYMMDD_HHMMSS-xxxxxx``)."""
    return bool(_INCIDENT_ID.match(text))


# --- reading the chain ---------------------------------------------------------------------------


class ChainStatus(_Model):
    """The chain as found at report time."""

    state: VerifyState
    """``ok``, ``corrupted`` or ``unreadable``."""
    source: str
    """The store, as it describes itself."""
    verified_at: datetime
    head_seq: int | None
    """The store's chain head (None when its head row is missing)."""
    head_hash: str | None
    checked: int
    """Records that verified before the first problem (all of them when ok)."""
    verified_head_seq: int
    """The last record the chain vouches for."""
    verified_head_hash: str
    problem: str | None = None
    """The first problem, named (``record 17: hash mismatch (modified)``)."""
    problem_seq: int | None = None
    damaged_rows: tuple[str, ...] = ()
    """Rows of this report's records that could not be read at all (not shown elsewhere)."""
    summary: str = ""

    @property
    def ok(self) -> bool:
        """True only when the whole chain verified."""
        return self.state is VerifyState.OK


class ChainRead(_Model):
    """The records a report needs, read from one snapshot, with the chain's verdict."""

    records: tuple[AuditRecord, ...]
    chain: ChainStatus
    pending: tuple[AuditDraft, ...] = ()
    """Matching drafts still in the local spool (not in the chain yet)."""
    pending_error: str | None = None
    """Why the spool could not be read, if it could not."""


def _status(
    result: VerifyResult, head: ChainHead | None, source: str, damaged: list[str]
) -> ChainStatus:
    return ChainStatus(
        state=result.state,
        source=source,
        verified_at=result.verified_at,
        head_seq=head.seq if head else None,
        head_hash=head.hash if head else None,
        checked=result.checked,
        verified_head_seq=result.head_seq,
        verified_head_hash=result.head_hash,
        problem=result.problem.message if result.problem else None,
        problem_seq=result.problem.seq if result.problem else None,
        damaged_rows=tuple(damaged),
        summary=result.summary(),
    )


def read_chain(
    trail: AuditTrail,
    wanted: Callable[[AuditRecord], bool],
    *,
    deployment_id: str | None = None,
    pending: Callable[[AuditDraft], bool] | None = None,
) -> ChainRead:
    """Walk the whole chain once, verifying it, and keep the records ``wanted`` picks.

    Records past the first problem are still read (they are evidence), and so are
    records after a damaged row, which is named instead. The walk and the chain head
    come from one consistent snapshot of the store.

    Args:
        trail: The audit trail (its store is read, its spool listed).
        wanted: Picks the records the report is about.
        deployment_id: When the picked records all belong to one deployment: lets the
            read after a problem ask the store for that deployment's rows only.
        pending: Picks spooled drafts to list; None lists none.

    Returns:
        The picked records in chain order, the chain's status, matching spooled drafts.

    Raises:
        StoreUnreachable: The store cannot be read.
    """
    store = trail.store
    source = store.describe()
    kept: list[AuditRecord] = []
    damaged: list[str] = []
    try:
        with store.reader() as reader:
            last_seen = 0

            def tee() -> Iterator[AuditRecord]:
                nonlocal last_seen
                for record in reader.records():
                    last_seen = record.seq
                    if wanted(record):
                        kept.append(record)
                    yield record

            result = verify(
                tee(),
                head=reader.head,
                expected_constitutional_hash=trail.constitutional_hash,
                source=source,
            )
            if reader.head is None and result.ok:
                # verify() without a head cannot see a deleted tail; a missing head row is
                # itself a finding, as `audit verify` says.
                result = result.model_copy(
                    update={
                        "state": VerifyState.CORRUPTED,
                        "problem": _missing_head_problem(),
                    }
                )
            # Past the first problem (or a damaged row): keep reading, naming damaged rows.
            after = max(last_seen, result.problem.seq or 0) if result.problem else last_seen
            while True:
                try:
                    for record in reader.records(after_seq=after, deployment_id=deployment_id):
                        after = record.seq
                        if wanted(record):
                            kept.append(record)
                    break
                except AuditRowError as exc:
                    damaged.append(f"record {exc.seq}: unreadable ({exc.reason})")
                    after = exc.seq
            head = reader.head
    except AuditStoreError as exc:
        raise StoreUnreachable(str(exc)) from None
    status = _status(result, head, source, damaged)
    drafts: list[AuditDraft] = []
    pending_error: str | None = None
    if pending is not None:
        try:
            drafts = [d for d in trail.pending_drafts() if pending(d)]
        except OSError as exc:
            pending_error = f"the local spool {trail.spool.path} cannot be read: {exc}"
    # A record the verify pass kept and the continuation read again would appear twice.
    unique = {r.seq: r for r in kept}
    return ChainRead(
        records=tuple(unique[s] for s in sorted(unique)),
        chain=status,
        pending=tuple(drafts),
        pending_error=pending_error,
    )


def _missing_head_problem() -> ChainProblem:
    return ChainProblem(
        seq=None,
        kind=ProblemKind.DELETED,
        message="the chain head row (audit_head) is missing (deleted)",
    )


def _vouched(record: AuditRecord, chain: ChainStatus) -> bool:
    """Whether the chain, as verified, vouches for this record."""
    return chain.state is not VerifyState.UNREADABLE and record.seq <= chain.verified_head_seq


# --- report models -------------------------------------------------------------------------------


class Category(StrEnum):
    """What a timeline entry is about."""

    DEPLOYMENT = "deployment"
    PHASE = "phase"
    STEP = "step"
    GATE = "gate"
    TRAFFIC = "traffic"
    ALERT = "alert"
    ROLLBACK = "rollback"
    OTHER = "other"


class TimelineEntry(_Model):
    """One audit record, as the timeline shows it."""

    seq: int
    at: datetime
    operator: str
    """Who the record names."""
    by_console: bool = False
    """The console acted by itself (a monitor window closing), on the operator's session."""
    action: str
    category: Category
    procedure: str | None = None
    phase: str | None = None
    step: str | None = None
    step_title: str | None = None
    state: str | None = None
    summary: str
    recognised: bool = True
    """False when the action (or its evidence) is not one this report knows: shown generically."""
    verified: bool
    """The chain vouches for this record (it lies before any problem)."""
    constitutional_hash: str
    hash: str
    evidence: dict[str, Any] = {}


class Measurement(_Model):
    """One predicate judged at a gate: the measured value against its threshold."""

    check: str
    environment: str | None = None
    verdict: str
    measured: str = ""
    value: float | None = None
    threshold: str = ""
    detail: str = ""


class CommandEvidence(_Model):
    """How a command step's command ran."""

    argv: tuple[str, ...] = ()
    cwd: str | None = None
    exit_code: int | None = None
    duration_s: float | None = None
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None
    output_tail: tuple[str, ...] = ()


class GateEvidence(_Model):
    """A step's outcome at its gate: one per ``step.<state>`` record (every attempt)."""

    seq: int
    at: datetime
    procedure: str | None = None
    phase: str | None = None
    step: str
    step_title: str = ""
    kind: str = ""
    """The effective kind (a command without argv is an attestation)."""
    state: str
    """``passed``, ``failed``, ``skipped``, ``attested`` or ``interrupted``."""
    operator: str
    by_console: bool = False
    approved_by: str | None = None
    reason: str = ""
    """Why it failed, why it was skipped, or the attestation note."""
    skipped_from: str | None = None
    """For a skipped step: the state it was skipped from (``failed``, ``pending``)."""
    measurements: tuple[Measurement, ...] = ()
    command: CommandEvidence | None = None
    note: str | None = None
    """The attestation's note."""
    unconfigured_command: str | None = None
    """An attested command step: the runbook command nobody configured."""
    summary: str = ""
    verified: bool = True
    evidence: dict[str, Any] = {}
    """The step's own evidence, as recorded."""
    uninterpreted: dict[str, Any] = {}
    """Evidence this report has no section for (a key added later): shown as recorded."""

    @property
    def skipped(self) -> bool:
        """True for a skipped step."""
        return self.state == "skipped"


class ReadBack(_Model):
    """The traffic split as the load balancer read it back."""

    green_percentage: float | None = None
    blue_weight: int | None = None
    green_weight: int | None = None
    source: str = ""
    error: str | None = None
    read_at: datetime | None = None


class MonitorWindowReport(_Model):
    """A monitor window's outcome (one per finished attempt)."""

    seq: int
    at: datetime
    step: str
    step_title: str = ""
    state: str
    duration_s: float | None = None
    elapsed_s: float | None = None
    snapshots: int | None = None
    max_gap_s: float | None = None
    expected_green_percentage: float | None = None
    warnings_seen: tuple[str, ...] = ()
    alerts: tuple[str, ...] = ()
    """Alerts that failed the window (name, environment, summary)."""
    reason: str = ""
    metrics: dict[str, Any] = {}
    """The metrics the window's evidence carries, as recorded (the engine's ``worst`` and
    ``last``: per environment, metric name to value, None where unknown)."""


class TrafficStepReport(_Model):
    """A traffic step and what was measured while traffic stood at its split."""

    seq: int
    at: datetime
    step: str
    step_title: str = ""
    state: str
    operator: str
    approved_by: str | None = None
    target_green_percentage: float | None = None
    read_back: ReadBack | None = None
    switch_read_back: ReadBack | None = None
    """What the switch itself reported after setting the split."""
    reason: str = ""
    monitors: tuple[MonitorWindowReport, ...] = ()
    """Monitor windows run at this split."""
    measurements: tuple[tuple[str, Measurement], ...] = ()
    """``(step, measurement)`` of every check gate judged at this split."""
    metrics: dict[str, Any] = {}
    """The metrics the step's evidence carries, as recorded (the engine's ``before``: the
    view of both environments when traffic was moved)."""


class AlertEntry(_Model):
    """An alert seen during the deployment."""

    seq: int
    at: datetime
    name: str
    severity: str = ""
    environment: str | None = None
    summary: str = ""
    rule_id: str | None = None
    value: float | None = None
    source: str
    """Where the report found it (``monitor window monitor-10 failed``, ``alert.fired``)."""


class RollbackEntry(_Model):
    """A rollback-related record: offered, declined, executed, refused, or the end it caused."""

    seq: int
    at: datetime
    operator: str
    event: Literal["offered", "declined", "executed", "refused", "ended", "planned", "other"]
    kind: Literal["emergency", "automatic", "planned", "break_glass", "unknown"]
    trigger: str | None = None
    reason: str = ""
    outcome: str | None = None
    incident_id: str | None = None
    total_ms: float | None = None
    budget_s: float | None = None
    within_budget: bool | None = None
    summary: str = ""


class PhaseReport(_Model):
    """A phase's timing against the runbook's budget."""

    procedure: str | None = None
    phase: str
    title: str = ""
    started_at: datetime | None = None
    completed_at: datetime | None = None
    budget_s: float | None = None
    elapsed_s: float | None = None
    over_budget: bool | None = None


class OperatorActivity(_Model):
    """Who did what."""

    operator: str
    records: int
    first_at: datetime
    last_at: datetime
    actions: dict[str, int]
    """How many records of each action."""
    steps: tuple[str, ...] = ()
    """Steps this operator moved through a gate (``pre-verify-hash: passed``)."""
    approvals: tuple[str, ...] = ()
    """Four-eyes approvals given (``switch-100 for alice``)."""
    rollbacks: int = 0


class PendingEntry(_Model):
    """A record still in the local spool: written while the store was down, not chained yet."""

    at: datetime
    operator: str
    action: str
    summary: str
    evidence: dict[str, Any] = {}


class DeploymentReport(_Model):
    """Everything the audit trail says about one deployment."""

    format: Literal["acgs-console-deployment-report"] = "acgs-console-deployment-report"
    version: int = REPORT_VERSION
    deployment_id: str
    generated_at: datetime
    generated_by: str
    constitutional_hash: str
    """The hash the console runs with (and expects in every record)."""
    hashes_seen: tuple[str, ...] = ()
    """Every constitutional hash the deployment's records carry."""
    runbook: str | None = None
    runbook_version: str | None = None
    procedures: tuple[str, ...] = ()
    started_at: datetime | None = None
    started_by: str | None = None
    finished_at: datetime | None = None
    outcome: str = "unknown"
    """``completed``, ``rolled_back``, ``aborted``, ``in_progress`` (no end record yet)."""
    outcome_reason: str = ""
    chain: ChainStatus
    timeline: tuple[TimelineEntry, ...]
    operators: tuple[OperatorActivity, ...] = ()
    phases: tuple[PhaseReport, ...] = ()
    gates: tuple[GateEvidence, ...] = ()
    traffic: tuple[TrafficStepReport, ...] = ()
    monitors: tuple[MonitorWindowReport, ...] = ()
    alerts: tuple[AlertEntry, ...] = ()
    rollbacks: tuple[RollbackEntry, ...] = ()
    pending: tuple[PendingEntry, ...] = ()
    pending_error: str | None = None
    unrecognised: tuple[int, ...] = ()
    """Seqs of records shown generically (an action or evidence shape this report does not know)."""

    @property
    def skipped(self) -> list[GateEvidence]:
        """The gates passed by skipping, each with its reason."""
        return [g for g in self.gates if g.skipped]

    @property
    def hash_consistent(self) -> bool:
        """Every record carries the console's constitutional hash."""
        return all(h == self.constitutional_hash for h in self.hashes_seen)


class IncidentStep(_Model):
    """One step of the emergency rollback, timed from the trigger."""

    name: str
    title: str = ""
    ok: bool | None = None
    skipped: bool = False
    started_ms: float | None = None
    ended_ms: float | None = None
    duration_ms: float | None = None
    budget_share: float | None = None
    """``ended_ms`` as a share of the budget (0..1; above 1 is over budget)."""
    detail: str = ""


class IncidentReport(_Model):
    """One rollback record, with the chain's verdict."""

    format: Literal["acgs-console-incident-report"] = "acgs-console-incident-report"
    version: int = REPORT_VERSION
    incident_id: str | None
    action: str
    """``rollback`` (it ran) or ``rollback.refused`` (blue was not safe and nobody confirmed)."""
    generated_at: datetime
    generated_by: str
    deployment_id: str | None = None
    record_seq: int
    record_at: datetime
    record_hash: str
    record_verified: bool
    operator: str
    kind: Literal["emergency", "automatic", "planned", "break_glass", "unknown"]
    trigger: str | None = None
    automatic: bool = False
    reason: str = ""
    target: str | None = None
    outcome: str | None = None
    switched: bool | None = None
    """The load balancer read back 0 % green."""
    switch: str | None = None
    triggered_at: datetime | None = None
    """The record's time less the time elapsed before it was written."""
    steps: tuple[IncidentStep, ...] = ()
    total_ms: float | None = None
    """When the last timed step ended, in ms since the trigger."""
    recorded_after_ms: float | None = None
    """When the incident record was written, in ms since the trigger."""
    budget_s: float = DEFAULT_BUDGET_S
    within_budget: bool | None = None
    read_back: ReadBack | None = None
    attempts: tuple[dict[str, Any], ...] = ()
    verification: tuple[IncidentStep, ...] = ()
    """The read-back, blue's health and the request counters."""
    compliance: IncidentStep | None = None
    """Constitutional compliance on blue."""
    compliance_checks: tuple[Measurement, ...] = ()
    """The compliance checks, when the record carries them."""
    safety: dict[str, Any] | None = None
    confirmed: bool | None = None
    manual_fallback: str | None = None
    constitutional_hash: str
    expected_constitutional_hash: str
    other_evidence: dict[str, Any] = {}
    """Evidence keys this report does not interpret, kept as recorded."""
    related: tuple[TimelineEntry, ...] = ()
    """Other records naming the same incident."""
    chain: ChainStatus


# --- interpreting records ---------------------------------------------------------------------


def _step_evidence(ev: Mapping[str, Any]) -> dict[str, Any]:
    return _dict(ev.get("evidence"))


def _by_console(ev: Mapping[str, Any]) -> bool:
    return "operator" in ev and ev.get("operator") is None


def _measurements(step_ev: Mapping[str, Any]) -> tuple[Measurement, ...]:
    out: list[Measurement] = []
    for item in _list(step_ev.get("outcomes")):
        o = _dict(item)
        check = _text(o.get("check"))
        if check is None:
            continue
        out.append(
            Measurement(
                check=check,
                environment=_text(o.get("environment")),
                verdict=_text(o.get("verdict")) or "unknown",
                measured=_text(o.get("measured")) or "",
                value=_num(o.get("value")),
                threshold=_text(o.get("threshold")) or "",
                detail=_text(o.get("detail")) or "",
            )
        )
    return tuple(out)


def _command(step_ev: Mapping[str, Any]) -> CommandEvidence | None:
    if "argv" not in step_ev and "exit_code" not in step_ev:
        return None
    return CommandEvidence(
        argv=tuple(str(a) for a in _list(step_ev.get("argv"))),
        cwd=_text(step_ev.get("cwd")),
        exit_code=_int(step_ev.get("exit_code")),
        duration_s=_num(step_ev.get("duration_s")),
        timed_out=bool(step_ev.get("timed_out")),
        cancelled=bool(step_ev.get("cancelled")),
        error=_text(step_ev.get("error")),
        output_tail=tuple(str(a) for a in _list(step_ev.get("output_tail"))),
    )


def _read_back(value: Any) -> ReadBack | None:
    d = _dict(value)
    if not d:
        return None
    return ReadBack(
        green_percentage=_num(d.get("green_percentage")),
        blue_weight=_int(d.get("blue_weight")),
        green_weight=_int(d.get("green_weight")),
        source=_text(d.get("source")) or "",
        error=_text(d.get("error")),
        read_at=_when(d.get("read_at")),
    )


def _describe_read_back(rb: ReadBack | None) -> str:
    if rb is None:
        return "not read back"
    if rb.green_percentage is None:
        return f"unknown ({rb.error or 'no value'})"
    weights = (
        f" (weights blue {rb.blue_weight} / green {rb.green_weight})"
        if rb.blue_weight is not None or rb.green_weight is not None
        else ""
    )
    return f"{rb.green_percentage:g}% green{weights}"


def _metrics(step_ev: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics a traffic or monitor record carries, as recorded (any shape)."""
    found = step_ev.get("metrics")
    if found is None:
        return {}
    return found if isinstance(found, dict) else {"metrics": found}


def _metric_columns(prefix: str, metrics: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``{label: {environment: {metric: number}}}`` as table columns (``before green``).

    Returns an empty list when the metrics have another shape (they are then listed as
    recorded instead).
    """
    columns: list[tuple[str, dict[str, Any]]] = []
    for label, view in metrics.items():
        if not isinstance(view, dict):
            return []
        for env, values in view.items():
            if env == "snapshot_taken_at":
                continue
            if not isinstance(values, dict) or not all(
                v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                for v in values.values()
            ):
                return []
            columns.append((f"{prefix}{label} {env}".strip(), values))
    return columns


def _metrics_markdown(sources: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """One table of metrics from several records, or their flattened values."""
    columns: list[tuple[str, dict[str, Any]]] = []
    loose: list[str] = []
    for prefix, metrics in sources:
        if not metrics:
            continue
        found = _metric_columns(prefix, metrics)
        if found:
            columns += found
        else:
            loose += [f"- {prefix}{path}: {_scalar(v, 80)}" for path, v in _flatten(metrics)]
    lines: list[str] = []
    if columns:
        names: list[str] = []
        for _, values in columns:
            names += [n for n in values if n not in names]
        lines += _table(
            ["metric", *(head for head, _ in columns)],
            [[name, *(_fmt_metric(values.get(name)) for _, values in columns)] for name in names],
        )
        lines.append("")
    if loose:
        lines += [*loose, ""]
    return lines


def _fmt_metric(value: Any) -> str:
    number = _num(value)
    if number is None:
        return "unknown" if value is None or isinstance(value, str) else _scalar(value)
    return f"{number:.4g}"


def _gate_summary(
    kind: str,
    state: str,
    reason: str,
    step_ev: Mapping[str, Any],
    measurements: Sequence[Measurement],
    command: CommandEvidence | None,
) -> str:
    if state == "skipped":
        origin = _text(step_ev.get("skipped_from"))
        return f"SKIPPED{f' (was {origin})' if origin else ''}: {reason or 'no reason recorded'}"
    if state == "attested":
        what = _text(step_ev.get("unconfigured_command"))
        note = _shown(step_ev.get("note")) or reason
        prefix = f"attested instead of running `{what}`: " if what else "attested: "
        return prefix + (note or "(no note)")
    parts: list[str] = []
    if measurements:
        passing = sum(1 for m in measurements if m.verdict == "pass")
        parts.append(f"{passing}/{len(measurements)} checks pass")
        shown = sorted(measurements, key=lambda m: m.verdict == "pass")[:3]
        for m in shown:
            env = f" [{m.environment}]" if m.environment else ""
            parts.append(f"{m.check}{env}: {m.verdict} ({m.measured or 'no value'})")
    if command is not None:
        if command.error:
            parts.append(command.error)
        elif command.timed_out:
            parts.append(f"timed out after {_fmt_s(command.duration_s)}")
        elif command.cancelled:
            parts.append("cancelled")
        else:
            code = "unknown" if command.exit_code is None else command.exit_code
            parts.append(f"exit {code} in {_fmt_s(command.duration_s)}")
    if kind == "traffic" or "target_green_percentage" in step_ev:
        target = _num(step_ev.get("target_green_percentage"))
        rb = _read_back(step_ev.get("read_back"))
        parts.append(f"set {_fmt_pct(target)} green; read back {_describe_read_back(rb)}")
    if kind == "monitor" or "snapshots" in step_ev:
        snaps = _int(step_ev.get("snapshots"))
        parts.append(
            f"{_fmt_s(_num(step_ev.get('elapsed_s')))} of "
            f"{_fmt_s(_num(step_ev.get('duration_s')))} window, {snaps} snapshot(s), "
            f"max gap {_fmt_s(_num(step_ev.get('max_gap_s')))}"
        )
    if "location" in step_ev:
        parts.append(f"report written: {_scalar(step_ev.get('location'))}")
    if state in ("failed", "interrupted") and reason and not (measurements and kind == "check"):
        # A failed check's reason is its failing outcomes, already listed.
        parts.insert(0, f"{state.upper()}: {reason}")
    if not parts:
        parts.append(reason or state)
    return "; ".join(parts)


def _rollback_kind(
    ev: Mapping[str, Any],
) -> Literal["emergency", "automatic", "planned", "break_glass", "unknown"]:
    trigger = (_text(ev.get("trigger")) or "").lower()
    if ev.get("break_glass") or "break" in trigger:
        return "break_glass"
    if ev.get("automatic") is True or trigger == "automatic":
        return "automatic"
    if ev.get("procedure") == PLANNED_ROLLBACK_PROCEDURE or trigger == "planned":
        return "planned"
    return "emergency"


def _incident_steps(ev: Mapping[str, Any], budget_s: float) -> tuple[IncidentStep, ...]:
    out: list[IncidentStep] = []
    for item in _list(ev.get("steps")):
        s = _dict(item)
        name = _text(s.get("name"))
        if name is None:
            continue
        started, ended = _num(s.get("started_ms")), _num(s.get("ended_ms"))
        out.append(
            IncidentStep(
                name=name,
                title=_text(s.get("title")) or _STEP_TITLES.get(name, name),
                ok=_bool(s.get("ok")),
                skipped=bool(s.get("skipped")),
                started_ms=started,
                ended_ms=ended,
                duration_ms=None if started is None or ended is None else ended - started,
                budget_share=None if ended is None else ended / (budget_s * 1000.0),
                detail=_text(s.get("detail")) or "",
            )
        )
    return tuple(out)


# The rollback's step titles (console.rollback.STEP_TITLES), for records that carry names only.
_STEP_TITLES = {
    "switch": "Switch 100% of traffic to blue",
    "read_back": "Load balancer reads back 0% green",
    "blue_healthy": "Blue healthy",
    "requests_reach_blue": "Requests reach blue, none reach green",
    "compliance": "Constitutional compliance on blue",
    "audit": "Incident record in the audit trail",
    "report": "Incident report",
}


def _rollback_total_ms(ev: Mapping[str, Any]) -> float | None:
    ends = [
        e for e in (_num(_dict(s).get("ended_ms")) for s in _list(ev.get("steps"))) if e is not None
    ]
    if ends:
        return max(ends)
    return _num(ev.get("total_ms")) or _num(ev.get("total_ms_before_record"))


def _summarise(record: AuditRecord) -> tuple[Category, str, bool]:
    """The timeline's one line for a record: its category, summary, and whether it is known."""
    action, ev = record.action, record.evidence
    step_ev = _step_evidence(ev)
    title = _text(ev.get("step_title")) or _text(ev.get("step")) or ""
    reason = _text(ev.get("reason")) or ""
    if action == "deployment.started":
        what = _text(ev.get("procedure_title")) or _text(ev.get("procedure")) or "procedure"
        book = _text(ev.get("runbook"))
        version = _text(ev.get("runbook_version"))
        where = f" ({book}{f' v{version}' if version else ''})" if book else ""
        return Category.DEPLOYMENT, f"started {what}{where}", True
    if action == "deployment.resumed":
        return Category.DEPLOYMENT, f"resumed at step {_text(ev.get('current')) or '(none)'}", True
    if action == "deployment.completed":
        skipped = ", ".join(str(s) for s in _list(ev.get("skipped"))) or "none"
        attested = ", ".join(str(s) for s in _list(ev.get("attested"))) or "none"
        return Category.DEPLOYMENT, f"completed; skipped: {skipped}; attested: {attested}", True
    if action in ("deployment.rolled_back", "deployment.aborted"):
        how = "rolled back" if action.endswith("rolled_back") else "aborted"
        at = _text(ev.get("current"))
        return (
            Category.DEPLOYMENT,
            f"ended, {how}: {reason or '(no reason)'}{f' (at step {at})' if at else ''}",
            True,
        )
    if action == "phase.started":
        budget = _num(ev.get("budget_s"))
        name = _text(ev.get("phase_title")) or _text(ev.get("phase")) or "phase"
        return (
            Category.PHASE,
            f"phase {name} started" + (f" (budget {_fmt_s(budget)})" if budget else ""),
            True,
        )
    if action == "phase.completed":
        name = _text(ev.get("phase_title")) or _text(ev.get("phase")) or "phase"
        elapsed, budget = _num(ev.get("elapsed_s")), _num(ev.get("budget_s"))
        text = f"phase {name} completed in {_fmt_s(elapsed)}"
        if budget:
            text += f" of {_fmt_s(budget)}" + (" (OVER BUDGET)" if ev.get("over_budget") else "")
        return Category.PHASE, text, True
    if action == "step.started":
        extra = []
        if "green_percentage" in ev:
            extra.append(f"target {_fmt_pct(_num(ev.get('green_percentage')))} green")
        if "duration_s" in ev:
            extra.append(f"window {_fmt_s(_num(ev.get('duration_s')))}")
        if "argv" in ev:
            extra.append("`" + " ".join(str(a) for a in _list(ev.get("argv"))) + "`")
        if ev.get("approved_by"):
            extra.append(f"approved by {ev.get('approved_by')}")
        return Category.STEP, f"{title} started" + (f": {'; '.join(extra)}" if extra else ""), True
    if action.startswith("step.") and action[5:] in _GATE_STATES:
        kind = _text(ev.get("kind")) or ""
        command = _command(step_ev)
        measurements = _measurements(step_ev)
        text = _gate_summary(kind, action[5:], reason, step_ev, measurements, command)
        shaped = "step" in ev and isinstance(ev.get("evidence", {}), dict)
        if not shaped:
            return Category.GATE, _generic_summary(ev), False
        return Category.GATE, f"{title}: {text}", True
    if action == "traffic.read_back":
        rb = _read_back(ev.get("split"))
        return (
            Category.TRAFFIC,
            f"read back from the load balancer: {_describe_read_back(rb)}",
            True,
        )
    if action == "rollback.offered":
        auto = " (automatic)" if ev.get("automatic") else ""
        return Category.ROLLBACK, f"rollback offered{auto}: {reason}", True
    if action == "rollback.declined":
        return Category.ROLLBACK, f"rollback declined: {reason}", True
    if action == ROLLBACK_ACTION:
        kind = _rollback_kind(ev).replace("_", "-")
        total = _rollback_total_ms(ev)
        return (
            Category.ROLLBACK,
            f"{kind} rollback {_text(ev.get('incident_id')) or ''} to "
            f"{_text(ev.get('target')) or 'blue'}: {_text(ev.get('outcome')) or 'unknown outcome'}"
            f" in {_fmt_ms(total)} ({_text(ev.get('trigger')) or 'unknown trigger'}); "
            f"reason: {reason or '(none)'}",
            "steps" in ev or "outcome" in ev,
        )
    if action == ROLLBACK_REFUSED_ACTION:
        reasons = "; ".join(str(r) for r in _list(_dict(ev.get("safety")).get("reasons")))
        return (
            Category.ROLLBACK,
            f"rollback refused (blue not safe, not confirmed): {reasons or '(no reasons)'}; "
            f"asked for: {reason or '(no reason)'}",
            True,
        )
    if action.startswith("alert."):
        name = _text(ev.get("name")) or _text(ev.get("rule_id")) or "alert"
        return (
            Category.ALERT,
            f"{action[6:]}: {name} {_text(ev.get('severity')) or ''} "
            f"{_text(ev.get('summary')) or ''}".strip(),
            "name" in ev or "rule_id" in ev,
        )
    category = Category.ROLLBACK if action.startswith("rollback") else Category.OTHER
    return category, _generic_summary(ev), False


def _timeline_entry(record: AuditRecord, chain: ChainStatus) -> TimelineEntry:
    ev = record.evidence
    try:
        category, summary, recognised = _summarise(record)
    except Exception as exc:  # an evidence shape nobody foresaw must not cost the record
        category, recognised = Category.OTHER, False
        summary = f"{_generic_summary(ev)} (not interpreted: {type(exc).__name__})"
    return TimelineEntry(
        seq=record.seq,
        at=record.at,
        operator=record.operator,
        by_console=_by_console(ev),
        action=record.action,
        category=category,
        procedure=_text(ev.get("procedure")),
        phase=_text(ev.get("phase")),
        step=_text(ev.get("step")),
        step_title=_text(ev.get("step_title")),
        state=_text(ev.get("state")),
        summary=summary,
        recognised=recognised,
        verified=_vouched(record, chain),
        constitutional_hash=record.constitutional_hash,
        hash=record.hash,
        evidence=dict(ev),
    )


def _gate(record: AuditRecord, entry: TimelineEntry) -> GateEvidence:
    ev = record.evidence
    step_ev = _step_evidence(ev)
    state = record.action[5:]
    measurements = _measurements(step_ev)
    command = _command(step_ev)
    reason = _text(ev.get("reason")) or ""
    return GateEvidence(
        seq=record.seq,
        at=record.at,
        procedure=_text(ev.get("procedure")),
        phase=_text(ev.get("phase")),
        step=_text(ev.get("step")) or "(unknown step)",
        step_title=_text(ev.get("step_title")) or "",
        kind=_text(ev.get("kind")) or "",
        state=state,
        operator=record.operator,
        by_console=_by_console(ev),
        approved_by=_text(ev.get("approved_by")),
        reason=reason,
        skipped_from=_text(step_ev.get("skipped_from")) if state == "skipped" else None,
        measurements=measurements,
        command=command,
        note=_shown(step_ev.get("note")) if state == "attested" else None,
        unconfigured_command=_text(step_ev.get("unconfigured_command")),
        summary=_gate_summary(
            _text(ev.get("kind")) or "", state, reason, step_ev, measurements, command
        ),
        verified=entry.verified,
        evidence=step_ev,
        uninterpreted={
            **{k: v for k, v in ev.items() if k not in _GATE_EVENT_KEYS},
            **{k: v for k, v in step_ev.items() if k not in _GATE_EVIDENCE_KEYS},
        },
    )


def _monitor(record: AuditRecord) -> MonitorWindowReport:
    ev = record.evidence
    step_ev = _step_evidence(ev)
    alerts = []
    for item in _list(step_ev.get("alerts")):
        a = _dict(item)
        env = _text(a.get("environment")) or "all"
        alerts.append(f"{_text(a.get('name')) or 'alert'} ({env}): {_text(a.get('summary')) or ''}")
    return MonitorWindowReport(
        seq=record.seq,
        at=record.at,
        step=_text(ev.get("step")) or "(unknown step)",
        step_title=_text(ev.get("step_title")) or "",
        state=record.action[5:],
        duration_s=_num(step_ev.get("duration_s")),
        elapsed_s=_num(step_ev.get("elapsed_s")),
        snapshots=_int(step_ev.get("snapshots")),
        max_gap_s=_num(step_ev.get("max_gap_s")),
        expected_green_percentage=_num(step_ev.get("expected_green_percentage")),
        warnings_seen=tuple(str(w) for w in _list(step_ev.get("warnings_seen"))),
        alerts=tuple(alerts),
        reason=_text(ev.get("reason")) or "",
        metrics=_metrics(step_ev),
    )


def _alerts_of(record: AuditRecord) -> list[AlertEntry]:
    ev = record.evidence
    out: list[AlertEntry] = []
    if record.action.startswith("step.") and _text(ev.get("kind")) == "monitor":
        step = _text(ev.get("step")) or "?"
        step_ev = _step_evidence(ev)
        for item in _list(step_ev.get("alerts")):
            a = _dict(item)
            out.append(
                AlertEntry(
                    seq=record.seq,
                    at=_when(a.get("active_since")) or record.at,
                    name=_text(a.get("name")) or _text(a.get("rule_id")) or "alert",
                    severity=_text(a.get("severity")) or "",
                    environment=_text(a.get("environment")),
                    summary=_text(a.get("summary")) or "",
                    rule_id=_text(a.get("rule_id")),
                    value=_num(a.get("value")),
                    source=f"failed monitor window {step}",
                )
            )
        for warning in _list(step_ev.get("warnings_seen")):
            name, _, summary = str(warning).partition(": ")
            out.append(
                AlertEntry(
                    seq=record.seq,
                    at=record.at,
                    name=name,
                    severity="warning",
                    summary=summary,
                    source=f"seen during monitor window {step}",
                )
            )
    elif record.action.startswith("alert."):
        out.append(
            AlertEntry(
                seq=record.seq,
                at=_when(ev.get("first_seen")) or _when(ev.get("active_since")) or record.at,
                name=_text(ev.get("name")) or _text(ev.get("rule_id")) or record.action,
                severity=_text(ev.get("severity")) or "",
                environment=_text(ev.get("environment")),
                summary=_text(ev.get("summary")) or "",
                rule_id=_text(ev.get("rule_id")),
                value=_num(ev.get("value")),
                source=record.action,
            )
        )
    return out


def _rollback_entry(record: AuditRecord) -> RollbackEntry | None:
    ev = record.evidence
    action = record.action
    reason = _text(ev.get("reason")) or ""
    summary = _summarise(record)[1]
    base: dict[str, Any] = {
        "seq": record.seq,
        "at": record.at,
        "operator": record.operator,
        "reason": reason,
        "summary": summary,
    }
    if action == ROLLBACK_ACTION:
        total = _rollback_total_ms(ev)
        budget = _num(ev.get("budget_s")) or DEFAULT_BUDGET_S
        return RollbackEntry(
            **base,
            event="executed",
            kind=_rollback_kind(ev),
            trigger=_text(ev.get("trigger")),
            outcome=_text(ev.get("outcome")),
            incident_id=_text(ev.get("incident_id")),
            total_ms=total,
            budget_s=budget,
            within_budget=None if total is None else total <= budget * 1000.0,
        )
    if action == ROLLBACK_REFUSED_ACTION:
        return RollbackEntry(
            **base,
            event="refused",
            kind=_rollback_kind(ev),
            trigger=_text(ev.get("trigger")),
            outcome="refused",
            incident_id=_text(ev.get("incident_id")),
        )
    if action in ("rollback.offered", "rollback.declined"):
        return RollbackEntry(
            **base,
            event="offered" if action.endswith("offered") else "declined",
            kind="automatic" if ev.get("automatic") else "emergency",
        )
    if action == "deployment.rolled_back":
        return RollbackEntry(**base, event="ended", kind="unknown", outcome="rolled_back")
    if ev.get("procedure") == PLANNED_ROLLBACK_PROCEDURE and action in (
        "deployment.started",
        "deployment.completed",
        "deployment.aborted",
    ):
        return RollbackEntry(
            **base, event="planned", kind="planned", outcome=action.partition(".")[2]
        )
    if action.startswith("rollback"):
        return RollbackEntry(
            **base,
            event="other",
            kind=_rollback_kind(ev),
            trigger=_text(ev.get("trigger")),
            incident_id=_text(ev.get("incident_id")),
        )
    return None


# --- the deployment report ----------------------------------------------------------------------


def build_deployment_report(
    trail: AuditTrail,
    deployment_id: str,
    *,
    generated_by: str | None = None,
) -> DeploymentReport:
    """Read the chain and assemble the report of one deployment.

    Args:
        trail: The audit trail (its store is read and verified; its spool listed).
        deployment_id: ``YYYYMMDD_HHMMSS``.
        generated_by: Who asks (default: the trail's operator).

    Returns:
        The report; ``chain`` says whether the chain verified.

    Raises:
        StoreUnreachable: The store cannot be read.
        UnknownDeployment: Neither the chain nor the spool has a record of it.
    """
    read = read_chain(
        trail,
        lambda r: r.deployment_id == deployment_id,
        deployment_id=deployment_id,
        pending=lambda d: d.deployment_id == deployment_id,
    )
    if not read.records and not read.pending:
        hint = (
            ""
            if _DEPLOYMENT_ID.match(deployment_id)
            else " (deployment ids look like YYYYMMDD_HHMMSS)"
        )
        raise UnknownDeployment(
            f"no audit record of deployment {deployment_id!r} in {read.chain.source}{hint}"
        )
    return assemble_deployment_report(
        deployment_id,
        read,
        constitutional_hash=trail.constitutional_hash,
        generated_by=generated_by or trail.operator,
    )


def assemble_deployment_report(
    deployment_id: str,
    read: ChainRead,
    *,
    constitutional_hash: str,
    generated_by: str,
    generated_at: datetime | None = None,
) -> DeploymentReport:
    """Turn the records of one deployment into its report (no I/O)."""
    chain = read.chain
    timeline: list[TimelineEntry] = []
    gates: list[GateEvidence] = []
    monitors: list[MonitorWindowReport] = []
    alerts: list[AlertEntry] = []
    rollbacks: list[RollbackEntry] = []
    phases: dict[tuple[str | None, str], dict[str, Any]] = {}
    operators: dict[str, dict[str, Any]] = {}
    traffic: list[dict[str, Any]] = []
    procedures: list[str] = []
    header: dict[str, Any] = {"outcome": "in_progress", "outcome_reason": ""}

    for record in read.records:
        entry = _timeline_entry(record, chain)
        timeline.append(entry)
        ev = record.evidence
        action = record.action
        proc = entry.procedure
        if proc and proc not in procedures:
            procedures.append(proc)
        who = operators.setdefault(
            record.operator,
            {
                "records": 0,
                "first": record.at,
                "last": record.at,
                "actions": {},
                "steps": [],
                "approvals": [],
                "rollbacks": 0,
            },
        )
        who["records"] += 1
        who["first"] = min(who["first"], record.at)
        who["last"] = max(who["last"], record.at)
        who["actions"][action] = who["actions"].get(action, 0) + 1
        try:
            if action == "deployment.started" and (
                proc != PLANNED_ROLLBACK_PROCEDURE or "started_at" not in header
            ):
                header.setdefault("started_at", record.at)
                header.setdefault("started_by", record.operator)
                header.setdefault("runbook", _text(ev.get("runbook")))
                header.setdefault("runbook_version", _text(ev.get("runbook_version")))
            elif action in ("deployment.completed", "deployment.rolled_back", "deployment.aborted"):
                if proc != PLANNED_ROLLBACK_PROCEDURE or action != "deployment.completed":
                    header["outcome"] = action.partition(".")[2]
                    header["outcome_reason"] = _text(ev.get("reason")) or ""
                    header["finished_at"] = record.at
                elif header["outcome"] == "in_progress":
                    # A completed planned rollback ends the deployment rolled back.
                    header["outcome"] = "rolled_back"
                    header["outcome_reason"] = "planned rollback completed"
                    header["finished_at"] = record.at
            elif action == "phase.started" or action == "phase.completed":
                key = (proc, _text(ev.get("phase")) or "(unknown phase)")
                ph = phases.setdefault(key, {})
                ph["title"] = _text(ev.get("phase_title")) or ph.get("title", "")
                if _num(ev.get("budget_s")) is not None:
                    ph["budget_s"] = _num(ev.get("budget_s"))
                if action == "phase.started":
                    ph.setdefault("started_at", record.at)
                else:
                    ph["completed_at"] = record.at
                    ph["elapsed_s"] = _num(ev.get("elapsed_s"))
                    ph["over_budget"] = _bool(ev.get("over_budget"))
            elif action.startswith("step.") and action[5:] in _GATE_STATES and entry.recognised:
                gate = _gate(record, entry)
                gates.append(gate)
                who["steps"].append(f"{gate.step}: {gate.state}")
                if gate.approved_by:
                    approver = operators.setdefault(
                        gate.approved_by,
                        {
                            "records": 0,
                            "first": record.at,
                            "last": record.at,
                            "actions": {},
                            "steps": [],
                            "approvals": [],
                            "rollbacks": 0,
                        },
                    )
                    approver["approvals"].append(f"{gate.step} for {record.operator}")
                if gate.kind == "traffic" or "target_green_percentage" in gate.evidence:
                    traffic.append({"gate": gate, "monitors": [], "measurements": []})
                elif gate.kind == "monitor" or "snapshots" in gate.evidence:
                    window = _monitor(record)
                    monitors.append(window)
                    if traffic:
                        traffic[-1]["monitors"].append(window)
                elif traffic and gate.measurements:
                    traffic[-1]["measurements"].extend((gate.step, m) for m in gate.measurements)
            alerts.extend(_alerts_of(record))
            rb = _rollback_entry(record)
            if rb is not None:
                rollbacks.append(rb)
                if rb.event in ("executed", "refused"):
                    who["rollbacks"] += 1
        except Exception as exc:  # the record stays in the timeline whatever its shape
            timeline[-1] = entry.model_copy(
                update={
                    "recognised": False,
                    "summary": f"{entry.summary} (not fully interpreted: {type(exc).__name__})",
                }
            )

    return DeploymentReport(
        deployment_id=deployment_id,
        generated_at=generated_at or utcnow(),
        generated_by=generated_by,
        constitutional_hash=constitutional_hash,
        hashes_seen=tuple(sorted({r.constitutional_hash for r in read.records})),
        runbook=header.get("runbook"),
        runbook_version=header.get("runbook_version"),
        procedures=tuple(procedures),
        started_at=header.get("started_at"),
        started_by=header.get("started_by"),
        finished_at=header.get("finished_at"),
        outcome=header["outcome"] if read.records else "unknown",
        outcome_reason=header["outcome_reason"],
        chain=chain,
        timeline=tuple(timeline),
        operators=tuple(
            OperatorActivity(
                operator=name,
                records=o["records"],
                first_at=o["first"],
                last_at=o["last"],
                actions=dict(o["actions"]),
                steps=tuple(o["steps"]),
                approvals=tuple(o["approvals"]),
                rollbacks=o["rollbacks"],
            )
            for name, o in operators.items()
        ),
        phases=tuple(
            PhaseReport(procedure=proc, phase=phase, **values)
            for (proc, phase), values in phases.items()
        ),
        gates=tuple(gates),
        traffic=tuple(_traffic_report(t) for t in traffic),
        monitors=tuple(monitors),
        alerts=tuple(alerts),
        rollbacks=tuple(rollbacks),
        pending=tuple(_pending_entry(d) for d in read.pending),
        pending_error=read.pending_error,
        unrecognised=tuple(e.seq for e in timeline if not e.recognised),
    )


def _traffic_report(t: Mapping[str, Any]) -> TrafficStepReport:
    gate: GateEvidence = t["gate"]
    ev = gate.evidence
    return TrafficStepReport(
        seq=gate.seq,
        at=gate.at,
        step=gate.step,
        step_title=gate.step_title,
        state=gate.state,
        operator=gate.operator,
        approved_by=gate.approved_by,
        target_green_percentage=_num(ev.get("target_green_percentage")),
        read_back=_read_back(ev.get("read_back")),
        switch_read_back=_read_back(ev.get("set_read_back")),
        reason=gate.reason,
        monitors=tuple(t["monitors"]),
        measurements=tuple(t["measurements"]),
        metrics=_metrics(ev),
    )


def _pending_entry(draft: AuditDraft) -> PendingEntry:
    record = AuditRecord(
        seq=0,
        at=draft.at,
        operator=draft.operator,
        action=draft.action,
        deployment_id=draft.deployment_id,
        constitutional_hash=draft.constitutional_hash,
        fence=draft.fence,
        evidence=draft.evidence,
        prev_hash=GENESIS_HASH,
        hash="",
    )
    try:
        summary = _summarise(record)[1]
    except Exception:
        summary = _generic_summary(draft.evidence)
    return PendingEntry(
        at=draft.at,
        operator=draft.operator,
        action=draft.action,
        summary=summary,
        evidence=dict(draft.evidence),
    )


# --- the incident report ------------------------------------------------------------------------


def build_incident_report(
    trail: AuditTrail,
    incident: str,
    *,
    generated_by: str | None = None,
) -> IncidentReport:
    """The incident report of one rollback record.

    Args:
        trail: The audit trail.
        incident: An incident id (``YYYYMMDD_HHMMSS-xxxxxx``), or a deployment id: then its
            latest rollback record.
        generated_by: Who asks (default: the trail's operator).

    Raises:
        StoreUnreachable: The store cannot be read.
        UnknownIncident: No rollback record matches.
    """

    def wanted(r: AuditRecord) -> bool:
        return r.evidence.get("incident_id") == incident or (
            r.deployment_id == incident and _is_rollback_record(r)
        )

    read = read_chain(trail, wanted)
    named = [r for r in read.records if r.evidence.get("incident_id") == incident]
    by_incident = any(_is_rollback_record(r) for r in named)
    pool = named if by_incident else [r for r in read.records if r.deployment_id == incident]
    rollbacks = [r for r in pool if _is_rollback_record(r)]
    if not rollbacks:
        raise UnknownIncident(
            f"no rollback record of incident or deployment {incident!r} in {read.chain.source}"
        )
    record = rollbacks[-1]
    chosen = record.evidence.get("incident_id")
    # What else names the chosen incident (a refusal before a confirmed run, a follow-up).
    related = [
        r
        for r in read.records
        if r.seq != record.seq and chosen is not None and r.evidence.get("incident_id") == chosen
    ]
    return assemble_incident_report(
        record,
        read.chain,
        related=related,
        expected_constitutional_hash=trail.constitutional_hash,
        generated_by=generated_by or trail.operator,
    )


def _is_rollback_record(record: AuditRecord) -> bool:
    return record.action in (ROLLBACK_ACTION, ROLLBACK_REFUSED_ACTION)


_INCIDENT_KEYS = frozenset(
    {
        "incident_id",
        "reason",
        "operator",
        "trigger",
        "automatic",
        "target",
        "outcome",
        "switched",
        "read_back",
        "steps",
        "attempts",
        "switch",
        "total_ms_before_record",
        "total_ms",
        "budget_s",
        "safety",
        "confirmed",
        "manual_fallback",
        "compliance",
        "deployment_id",
        "constitutional_hash",
        "at",
        "break_glass",
    }
)


_INCIDENT_SHAPES: dict[str, tuple[type, ...]] = {
    "steps": (list,),
    "attempts": (list,),
    "read_back": (dict,),
    "safety": (dict,),
    "compliance": (dict, list),
    "automatic": (bool,),
    "switched": (bool,),
    "confirmed": (bool,),
    "break_glass": (bool,),
    "budget_s": (int, float),
    "total_ms": (int, float),
    "total_ms_before_record": (int, float),
}


def _fits(key: str, value: Any) -> bool:
    """Whether a known incident key has a shape the report reads (else it is shown raw)."""
    if value is None:
        return True
    shapes = _INCIDENT_SHAPES.get(key, (str,))
    if isinstance(value, bool) and bool not in shapes:
        return False
    return isinstance(value, shapes)


def _compliance_checks(value: Any) -> tuple[Measurement, ...]:
    checks = _list(_dict(value).get("checks")) if isinstance(value, dict) else _list(value)
    out = []
    for item in checks:
        c = _dict(item)
        name = _text(c.get("name")) or _text(c.get("check"))
        if name is None:
            continue
        passed = _bool(c.get("passed"))
        if passed is None:
            verdict = _text(c.get("verdict")) or "unknown"
        else:
            verdict = "pass" if passed else "fail"
        out.append(
            Measurement(
                check=name,
                verdict=verdict,
                measured=_text(c.get("measured")) or "",
                detail=_text(c.get("detail")) or "",
            )
        )
    return tuple(out)


def assemble_incident_report(
    record: AuditRecord,
    chain: ChainStatus,
    *,
    related: Sequence[AuditRecord] = (),
    expected_constitutional_hash: str,
    generated_by: str,
    generated_at: datetime | None = None,
) -> IncidentReport:
    """Turn one rollback record into its incident report (no I/O)."""
    ev = record.evidence
    budget = _num(ev.get("budget_s")) or DEFAULT_BUDGET_S
    steps = _incident_steps(ev, budget)
    total = _rollback_total_ms(ev)
    recorded_after = _num(ev.get("total_ms_before_record"))
    triggered_at = (
        record.at - timedelta(milliseconds=recorded_after) if recorded_after is not None else None
    )
    by_name = {s.name: s for s in steps}
    return IncidentReport(
        incident_id=_text(ev.get("incident_id")),
        action=record.action,
        generated_at=generated_at or utcnow(),
        generated_by=generated_by,
        deployment_id=record.deployment_id,
        record_seq=record.seq,
        record_at=record.at,
        record_hash=record.hash,
        record_verified=_vouched(record, chain),
        operator=record.operator,
        kind=_rollback_kind(ev),
        trigger=_text(ev.get("trigger")),
        automatic=ev.get("automatic") is True,
        reason=_text(ev.get("reason")) or "",
        target=_text(ev.get("target")),
        outcome=_text(ev.get("outcome"))
        or ("refused" if record.action == ROLLBACK_REFUSED_ACTION else None),
        switched=_bool(ev.get("switched")),
        switch=_text(ev.get("switch")),
        triggered_at=triggered_at,
        steps=steps,
        total_ms=total,
        recorded_after_ms=recorded_after,
        budget_s=budget,
        within_budget=None if total is None else total <= budget * 1000.0,
        read_back=_read_back(ev.get("read_back")),
        attempts=tuple(_dict(a) for a in _list(ev.get("attempts"))),
        verification=tuple(by_name[n] for n in _VERIFY_STEPS if n in by_name),
        compliance=by_name.get("compliance"),
        compliance_checks=_compliance_checks(ev.get("compliance")),
        safety=_dict(ev.get("safety")) or None,
        confirmed=_bool(ev.get("confirmed")),
        manual_fallback=_text(ev.get("manual_fallback")),
        constitutional_hash=record.constitutional_hash,
        expected_constitutional_hash=expected_constitutional_hash,
        other_evidence={k: v for k, v in ev.items() if k not in _INCIDENT_KEYS or not _fits(k, v)},
        related=tuple(_timeline_entry(r, chain) for r in related),
        chain=chain,
    )


# --- rendering ---------------------------------------------------------------------------------


def render_json(report: DeploymentReport | IncidentReport) -> str:
    """The report as JSON: the model's dump (``Model.model_validate_json`` reads it back)."""
    return report.model_dump_json(indent=2) + "\n"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else _scalar(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or " "


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _chain_lines(chain: ChainStatus) -> list[str]:
    verdict = {
        VerifyState.OK: "verifies",
        VerifyState.CORRUPTED: "**DOES NOT VERIFY**",
        VerifyState.UNREADABLE: "**COULD NOT BE READ**",
    }[chain.state]
    lines = [
        f"- Store: {chain.source}",
        f"- Verified at: {_fmt_at(chain.verified_at)}: the chain {verdict} "
        f"({chain.checked} record(s) checked)",
        f"- Chain head: seq {chain.head_seq if chain.head_seq is not None else 'missing'}, "
        f"hash `{chain.head_hash or 'missing'}`",
    ]
    if not chain.ok:
        lines.append(f"- First problem: {chain.problem or 'unknown'}")
        lines.append(
            f"- Last record the chain vouches for: seq {chain.verified_head_seq}, "
            f"hash `{chain.verified_head_hash}`"
        )
    lines += [f"- Damaged row: {d}" for d in chain.damaged_rows]
    return lines


def _banner(chain: ChainStatus) -> list[str]:
    if chain.ok:
        return []
    return [
        "> **WARNING: THE AUDIT CHAIN DOES NOT VERIFY.** "
        f"{chain.problem or chain.summary}. Records after seq {chain.verified_head_seq} "
        "are marked ✗: the chain does not vouch for them.",
        "",
    ]


def render_markdown(report: DeploymentReport | IncidentReport) -> str:
    """The report as Markdown, with tables."""
    if isinstance(report, IncidentReport):
        return _incident_markdown(report)
    return _deployment_markdown(report)


def _mark(verified: bool) -> str:
    return "" if verified else " ✗"


def _deployment_markdown(r: DeploymentReport) -> str:
    lines = [f"# Deployment report: {r.deployment_id}", ""]
    lines += _banner(r.chain)
    hashes = ", ".join(f"`{h}`" for h in r.hashes_seen) or "none"
    hash_line = f"- Constitutional hash: `{r.constitutional_hash}`" + (
        " (carried by every record)"
        if r.hash_consistent
        else f" -- **records carry other hashes: {hashes}**"
    )
    lines += [
        "## Summary",
        "",
        f"- Outcome: **{r.outcome.replace('_', ' ')}**"
        + (f" ({r.outcome_reason})" if r.outcome_reason else ""),
        f"- Runbook: {r.runbook or 'unknown'}"
        + (f" v{r.runbook_version}" if r.runbook_version else ""),
        f"- Procedures: {', '.join(r.procedures) or 'unknown'}",
        f"- Started: {_fmt_at(r.started_at)} by {r.started_by or 'unknown'}",
        f"- Finished: {_fmt_at(r.finished_at) if r.finished_at else 'not finished'}",
        hash_line,
        f"- Records: {len(r.timeline)} in the chain"
        + (f", {len(r.pending)} waiting in the local spool" if r.pending else ""),
        f"- Gates: {len(r.gates)} ({sum(1 for g in r.gates if g.state == 'passed')} passed, "
        f"{sum(1 for g in r.gates if g.state == 'failed')} failed, "
        f"{len(r.skipped)} skipped, "
        f"{sum(1 for g in r.gates if g.state == 'attested')} attested)",
        f"- Generated: {_fmt_at(r.generated_at)} by {r.generated_by}",
        "",
        "## Audit chain",
        "",
        *_chain_lines(r.chain),
        "",
    ]
    if r.phases:
        lines += ["## Phases", ""]
        lines += _table(
            ["procedure", "phase", "started", "completed", "elapsed", "budget", "within budget"],
            [
                [
                    p.procedure or "",
                    p.title or p.phase,
                    _fmt_at(p.started_at),
                    _fmt_at(p.completed_at) if p.completed_at else "not completed",
                    _fmt_s(p.elapsed_s) if p.elapsed_s is not None else "",
                    _fmt_s(p.budget_s) if p.budget_s else "none",
                    {True: "**NO: over budget**", False: "yes", None: ""}[p.over_budget],
                ]
                for p in r.phases
            ],
        )
        lines.append("")
    lines += ["## Who did what", ""]
    lines += _table(
        ["operator", "records", "first", "last", "gates moved", "approvals", "rollbacks"],
        [
            [
                o.operator,
                o.records,
                _fmt_at(o.first_at),
                _fmt_at(o.last_at),
                ", ".join(o.steps) or "none",
                ", ".join(o.approvals) or "none",
                o.rollbacks,
            ]
            for o in r.operators
        ],
    )
    lines.append("")
    lines += _gates_markdown(r)
    lines += _traffic_markdown(r)
    lines += _alerts_markdown(r)
    lines += _rollbacks_markdown(r)
    if r.pending or r.pending_error:
        lines += ["## Waiting in the local spool (not yet in the chain)", ""]
        if r.pending_error:
            lines += [f"**{r.pending_error}**", ""]
        if r.pending:
            lines += _table(
                ["time", "operator", "action", "summary"],
                [[_fmt_at(p.at), p.operator, p.action, p.summary] for p in r.pending],
            )
            lines.append("")
    lines += ["## Timeline", ""]
    if r.unrecognised:
        lines += [
            f"Records shown generically (action or evidence not recognised by this report): "
            f"{', '.join(str(s) for s in r.unrecognised)}.",
            "",
        ]
    if not r.chain.ok:
        lines += ["✗: not vouched for by the chain (at or after its first problem).", ""]
    lines += _table(
        ["seq", "time", "operator", "action", "phase", "step", "what"],
        [
            [
                f"{e.seq}{_mark(e.verified)}",
                _fmt_at(e.at),
                e.operator + (" (console)" if e.by_console else ""),
                e.action + ("" if e.recognised else " (unrecognised)"),
                e.phase or "",
                e.step or "",
                e.summary,
            ]
            for e in r.timeline
        ],
    )
    lines += ["", f"Chain head at report time: `{r.chain.head_hash or 'missing'}`", ""]
    return "\n".join(lines)


def _gates_markdown(r: DeploymentReport) -> list[str]:
    lines = ["## Gates", ""]
    if not r.gates:
        return [*lines, "No step reached its gate.", ""]
    lines += _table(
        ["seq", "time", "phase", "step", "kind", "result", "operator", "evidence"],
        [
            [
                f"{g.seq}{_mark(g.verified)}",
                _fmt_at(g.at),
                g.phase or "",
                g.step,
                g.kind,
                (
                    "**SKIPPED**"
                    if g.skipped
                    else g.state.upper()
                    if g.state != "passed"
                    else "passed"
                )
                + (f" (approved by {g.approved_by})" if g.approved_by else ""),
                g.operator + (" (console)" if g.by_console else ""),
                g.summary,
            ]
            for g in r.gates
        ],
    )
    lines.append("")
    if r.skipped:
        lines += ["### Skipped steps", ""]
        for g in r.skipped:
            origin = f", skipped from {g.skipped_from}" if g.skipped_from else ""
            lines.append(
                f"- **SKIPPED** `{g.step}` ({g.step_title or g.kind}{origin}) by {g.operator} at "
                f"{_fmt_at(g.at)}: reason: {g.reason or '(none recorded)'}"
            )
        lines.append("")
    # A skipped step carries its failed attempt's evidence; that attempt has its own rows.
    measured = [(g, m) for g in r.gates if not g.skipped for m in g.measurements]
    if measured:
        lines += ["### Measured values at the gates", ""]
        lines += _table(
            ["seq", "step", "check", "environment", "measured", "threshold", "verdict", "detail"],
            [
                [
                    g.seq,
                    g.step,
                    m.check,
                    m.environment or "",
                    m.measured,
                    m.threshold,
                    m.verdict.upper() if m.verdict != "pass" else "pass",
                    m.detail,
                ]
                for g, m in measured
            ],
        )
        lines.append("")
    attested = [g for g in r.gates if g.state == "attested"]
    if attested:
        lines += ["### Attestations", ""]
        for g in attested:
            instead = (
                f" (instead of running `{g.unconfigured_command}`)"
                if g.unconfigured_command
                else ""
            )
            approval = f", approved by {g.approved_by}" if g.approved_by else ""
            lines.append(
                f"- `{g.step}`{instead}: attested by {g.operator}{approval} at {_fmt_at(g.at)}: "
                f"\u201c{g.note or g.reason or '(no note)'}\u201d"
            )
        lines.append("")
    commands = [g for g in r.gates if g.command is not None]
    if commands:
        lines += ["### Commands", ""]
        lines += _table(
            ["seq", "step", "command", "exit code", "duration", "result"],
            [
                [
                    g.seq,
                    g.step,
                    "`" + " ".join(g.command.argv) + "`" if g.command else "",
                    "none"
                    if g.command is None or g.command.exit_code is None
                    else g.command.exit_code,
                    _fmt_s(g.command.duration_s) if g.command else "",
                    g.state if not g.reason else f"{g.state}: {g.reason}",
                ]
                for g in commands
            ],
        )
        lines.append("")
        for g in commands:
            assert g.command is not None
            if g.command.output_tail:
                tail = g.command.output_tail[-_OUTPUT_TAIL_SHOWN:]
                lines += [
                    f"Output of `{g.step}` (record {g.seq}, last {len(tail)} line(s)):",
                    "",
                    "```text",
                    *(line.replace("```", "`\u200b``") for line in tail),
                    "```",
                    "",
                ]
    other = [g for g in r.gates if g.uninterpreted]
    if other:
        lines += ["### Other gate evidence", ""]
        lines += _table(
            ["seq", "step", "evidence", "value"],
            [
                [g.seq, g.step, path, _scalar(v)]
                for g in other
                for path, v in _flatten(g.uninterpreted)
            ],
        )
        lines.append("")
    return lines


def _traffic_markdown(r: DeploymentReport) -> list[str]:
    lines = ["## Traffic steps", ""]
    if not r.traffic:
        return [*lines, "No traffic step reached its gate.", ""]
    lines += _table(
        ["seq", "time", "step", "target green", "load balancer read-back", "result", "operator"],
        [
            [
                t.seq,
                _fmt_at(t.at),
                t.step,
                _fmt_pct(t.target_green_percentage),
                _describe_read_back(t.read_back),
                t.state if not t.reason else f"{t.state.upper()}: {t.reason}",
                t.operator + (f" (approved by {t.approved_by})" if t.approved_by else ""),
            ]
            for t in r.traffic
        ],
    )
    lines.append("")
    for t in r.traffic:
        if not (t.monitors or t.measurements or t.metrics):
            continue
        lines += [f"### At {_fmt_pct(t.target_green_percentage)} green ({t.step})", ""]
        for w in t.monitors:
            lines.append(
                f"- Monitor window `{w.step}` (record {w.seq}): **{w.state}**; "
                f"{_fmt_s(w.elapsed_s)} of {_fmt_s(w.duration_s)}, {w.snapshots} snapshot(s), "
                f"max gap {_fmt_s(w.max_gap_s)}" + (f"; {w.reason}" if w.reason else "")
            )
            lines += [f"  - alert that failed it: {a}" for a in w.alerts]
            lines += [f"  - warning seen: {a}" for a in w.warnings_seen]
        metrics = _metrics_markdown(
            [("", t.metrics), *((f"{w.step} ", w.metrics) for w in t.monitors)]
        )
        if metrics:
            lines += ["", "Metrics recorded with the traffic step and its monitor windows:", ""]
            lines += metrics
        if t.measurements:
            if lines[-1]:
                lines.append("")
            lines += _table(
                ["step", "check", "environment", "measured", "threshold", "verdict"],
                [
                    [step, m.check, m.environment or "", m.measured, m.threshold, m.verdict]
                    for step, m in t.measurements
                ],
            )
        lines.append("")
    return lines


def _alerts_markdown(r: DeploymentReport) -> list[str]:
    lines = ["## Alerts", ""]
    if not r.alerts:
        return [*lines, "No alert is recorded as firing during this deployment.", ""]
    lines += _table(
        ["seq", "since", "alert", "severity", "environment", "summary", "where"],
        [
            [
                a.seq,
                _fmt_at(a.at),
                a.name,
                a.severity.upper() if a.severity == "critical" else a.severity,
                a.environment or "all",
                a.summary,
                a.source,
            ]
            for a in r.alerts
        ],
    )
    lines.append("")
    return lines


def _rollbacks_markdown(r: DeploymentReport) -> list[str]:
    lines = ["## Rollbacks", ""]
    if not r.rollbacks:
        return [*lines, "No rollback.", ""]
    lines += _table(
        ["seq", "time", "event", "kind", "operator", "outcome", "time vs budget", "reason"],
        [
            [
                b.seq,
                _fmt_at(b.at),
                b.event,
                b.kind.replace("_", "-"),
                b.operator,
                b.outcome or "",
                ""
                if b.total_ms is None
                else f"{b.total_ms:.0f} ms of {b.budget_s or DEFAULT_BUDGET_S:g} s"
                + ("" if b.within_budget else " (**OVER BUDGET**)"),
                b.reason,
            ]
            for b in r.rollbacks
        ],
    )
    incidents = [b.incident_id for b in r.rollbacks if b.incident_id and b.event == "executed"]
    if incidents:
        lines += [
            "",
            "Incident reports: "
            + ", ".join(f"`acgs-console report {i} --incident`" for i in incidents),
        ]
    lines.append("")
    return lines


def _incident_markdown(r: IncidentReport) -> str:
    outcome = (r.outcome or "unknown").replace("_", " ").upper()
    lines = [f"# Incident report: {r.kind.replace('_', '-')} rollback {r.incident_id or ''}", ""]
    lines += _banner(r.chain)
    if not r.record_verified:
        lines += [f"> The chain does not vouch for this record (seq {r.record_seq}).", ""]
    hash_ok = r.constitutional_hash == r.expected_constitutional_hash
    lines += [
        f"**Outcome:** {outcome}",
        "",
        f"- Incident: {r.incident_id or 'unknown'} (audit record {r.record_seq}, `{r.action}`)",
        f"- Deployment: {r.deployment_id or '(none)'}",
        f"- Operator: {r.operator}",
        f"- Trigger: {r.trigger or 'unknown'}" + (" (automatic)" if r.automatic else ""),
        f"- Reason: {r.reason or '(none recorded)'}",
        f"- Target: {r.target or 'blue'}",
        f"- Triggered at: {_fmt_at(r.triggered_at) if r.triggered_at else 'unknown'}; "
        f"recorded at {_fmt_at(r.record_at)}",
        f"- Traffic switch: {r.switch or 'unknown'}",
        f"- Load balancer read-back: {_describe_read_back(r.read_back)}",
        f"- Total: {_fmt_ms(r.total_ms)} of the runbook's {r.budget_s:g} s budget ("
        + {True: "within budget", False: "**NOT within budget**", None: "unknown"}[r.within_budget]
        + ")",
        f"- Constitutional hash: `{r.constitutional_hash}`"
        + ("" if hash_ok else f" (**expected `{r.expected_constitutional_hash}`**)"),
        f"- Generated: {_fmt_at(r.generated_at)} by {r.generated_by}",
        "",
    ]
    if r.steps:
        lines += ["## Steps (ms since the trigger)", ""]
        lines += _table(
            ["step", "result", "start", "end", "duration", "share of budget", "detail"],
            [
                [
                    s.title or s.name,
                    _step_state(s),
                    _fmt_ms(s.started_ms),
                    _fmt_ms(s.ended_ms),
                    _fmt_ms(s.duration_ms),
                    "" if s.budget_share is None else f"{s.budget_share * 100:.2f}%",
                    s.detail,
                ]
                for s in r.steps
            ],
        )
        if r.recorded_after_ms is not None:
            lines += ["", f"The incident record was written {_fmt_ms(r.recorded_after_ms)} in."]
        lines.append("")
    lines += ["## Verification", ""]
    if r.verification:
        lines += [f"- {s.title or s.name}: {_step_state(s)} ({s.detail})" for s in r.verification]
    else:
        lines.append("- no verification step is recorded")
    lines += ["", "## Constitutional compliance on blue", ""]
    if r.compliance is not None:
        lines.append(f"- {_step_state(r.compliance)}: {r.compliance.detail}")
    else:
        lines.append("- not recorded")
    lines += [f"- {c.check}: {c.verdict} ({c.detail})" for c in r.compliance_checks]
    lines.append("")
    if r.attempts:
        lines += ["## Switch attempts", ""]
        for a in r.attempts:
            state = "ok" if a.get("ok") else f"failed: {a.get('error')}"
            lines.append(
                f"- attempt {a.get('attempt')} ({_fmt_ms(_num(a.get('started_ms')))} - "
                f"{_fmt_ms(_num(a.get('ended_ms')))}): {state}"
            )
        lines.append("")
    if r.safety is not None:
        reasons = "; ".join(str(x) for x in _list(r.safety.get("reasons")))
        verdict = _text(r.safety.get("verdict")) or "unknown"
        lines += [
            "## Pre-flight",
            "",
            f"- {verdict}"
            + (f": {reasons}" if reasons else "")
            + (f" (from {r.safety.get('source')})" if r.safety.get("source") else ""),
        ]
        if r.confirmed:
            lines.append("- Confirmed by the operator despite the pre-flight reasons")
        lines.append("")
    if r.manual_fallback:
        lines += ["## Manual fallback shown", "", r.manual_fallback, ""]
    if r.other_evidence:
        lines += ["## Other evidence", ""]
        lines += _table(
            ["evidence", "value"],
            [[path, _scalar(v)] for path, v in _flatten(r.other_evidence)],
        )
        lines.append("")
    if r.related:
        lines += ["## Related records", ""]
        lines += _table(
            ["seq", "time", "operator", "action", "what"],
            [
                [f"{e.seq}{_mark(e.verified)}", _fmt_at(e.at), e.operator, e.action, e.summary]
                for e in r.related
            ],
        )
        lines.append("")
    lines += ["## Audit chain", "", *_chain_lines(r.chain), ""]
    lines += [f"Incident record hash: `{r.record_hash}`", ""]
    return "\n".join(lines)


def _step_state(s: IncidentStep) -> str:
    if s.skipped:
        return "skipped"
    return {True: "ok", False: "FAILED", None: "unknown"}[s.ok]


# --- writing -----------------------------------------------------------------------------------


def write_report(text: str, path: Path) -> None:
    """Write a rendered report atomically (a half-written report is never left behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def default_report_dir() -> Path:
    """``<user state dir>/acgs-console/reports``."""
    import platformdirs

    return Path(platformdirs.user_state_dir("acgs-console")) / "reports"


def make_engine_reporter(
    trail: AuditTrail, out_dir: Path | None = None
) -> Callable[[str, dict[str, Any]], Awaitable[str]]:
    """The runbook engine's report writer (its ``reporter``), writing Markdown and JSON.

    ``await reporter(kind, engine_state)`` builds the deployment report (``kind ==
    "deployment"``) or the incident report of the deployment's latest rollback
    (``"incident"``) from the audit trail, writes ``<kind>-<id>.md`` and ``.json`` in
    ``out_dir`` and returns where they went. The chain's verdict is in the reports; a chain
    that does not verify is named in the returned text too.
    """
    import asyncio

    directory = out_dir or default_report_dir()

    async def reporter(kind: str, state: dict[str, Any]) -> str:
        deployment_id = str(state.get("deployment_id") or "")
        if not deployment_id:
            raise ReportError("the engine state has no deployment id")

        def work() -> str:
            report: DeploymentReport | IncidentReport
            if kind == "incident":
                report = build_incident_report(trail, deployment_id)
                stem = f"incident-{report.incident_id or deployment_id}"
            else:
                report = build_deployment_report(trail, deployment_id)
                stem = f"deployment-{deployment_id}"
            md, js = directory / f"{stem}.md", directory / f"{stem}.json"
            write_report(render_markdown(report), md)
            write_report(render_json(report), js)
            verdict = "" if report.chain.ok else f" (audit chain: {report.chain.summary})"
            return f"{md} and {js}{verdict}"

        return await asyncio.to_thread(work)

    return reporter
