"""The runbook engine: a state machine that walks one procedure through its gates.

Owns the deployment's progress: which step is current, each step's state
(pending, running, passed, failed, skipped with a reason, attested), the
evidence behind it (measured values against thresholds, exit codes, who and
when), the phase clocks against the runbook's budgets, the monitor window in
progress, and whether a rollback is offered.

Rules it keeps:

* A step passes only on evidence. A check passes only when every predicate
  passes on the *current*, fresh snapshot; unknown data keeps the gate closed.
* A command step runs the argv the config sets for it (``commands.<step-id>``);
  with none set, the step is an attestation the operator signs with a note,
  never a silent skip. A report step without a report writer is one too.
* A traffic step sets the green percentage and passes only when the load
  balancer's read-back matches.
* A monitor step watches the snapshots fed in with :meth:`RunbookEngine.observe`
  for N seconds (the clock is injected): a firing critical alert fails the window
  at once and offers rollback (marked automatic when ``rollback.automatic``);
  a window without fresh data throughout does not pass.
* Skipping needs a reason; destructive steps need the environment's name typed;
  four-eyes steps need a second, different operator.
* Every transition goes to the injected sink, ``sink(action, evidence)``, where
  the audit trail plugs in; the whole state round-trips through
  :meth:`RunbookEngine.to_dict` / :meth:`RunbookEngine.restore` so a console
  killed mid-phase resumes exactly there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from backends.models import (
    AlertPhase,
    AlertSeverity,
    MetricValue,
    Snapshot,
    TrafficSplit,
    utcnow,
)
from backends.traffic import TrafficSwitch, TrafficSwitchError
from console.config import AppConfig, CommandSpec
from console.runbook.model import (
    AttestationStep,
    CheckStep,
    CommandStep,
    MonitorStep,
    Phase,
    Procedure,
    ReportStep,
    Runbook,
    Step,
    StepKind,
    TrafficStep,
)
from console.runbook.predicates import (
    AlertHistory,
    BlindStretch,
    EvaluationContext,
    FiredAlert,
    Outcome,
    SecurityInputs,
    TrafficMark,
    Verdict,
    WatchSpan,
    alert_serving,
    sweep_mark,
)

OUTPUT_TAIL_LINES = 200
"""Lines of a command's output kept as evidence."""
_KILL_GRACE_S = 2.0
_PIPE_DRAIN_S = 2.0
_MAX_LINE_BYTES = 64 * 1024

Sink = Callable[[str, dict[str, Any]], None]
"""``sink(action, evidence)``: where every transition goes (the audit trail)."""
Reporter = Callable[[str, dict[str, Any]], Awaitable[str]]
"""``await reporter(kind, engine_state)`` writes a report and returns where it went."""
RollbackHook = Callable[[str, bool], None]
"""``hook(reason, automatic)``: called when a monitor window offers rollback."""
OutputCallback = Callable[[str], None]
"""Receives a running command's output, one line at a time."""
StateHook = Callable[[dict[str, Any]], None]
"""Gets the whole state (:meth:`RunbookEngine.to_dict`) after every event, to persist it."""


class EngineError(Exception):
    """An action the engine refuses, with what to do instead."""


class AuditSinkError(EngineError):
    """The sink refused an event; the transition itself has happened."""


class StepState(StrEnum):
    """Where a step stands."""

    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    ATTESTED = "attested"


DONE_STATES = frozenset({StepState.PASSED, StepState.SKIPPED, StepState.ATTESTED})
"""States that let the procedure move past a step."""


class StepRecord(BaseModel):
    """A step's state and the evidence behind it."""

    model_config = ConfigDict(extra="forbid")

    step_id: str
    state: StepState = StepState.PENDING
    reason: str = ""
    """Why it failed, why it was skipped, or the attestation note."""
    operator: str | None = None
    """Who acted last on it."""
    approved_by: str | None = None
    """The second operator, on four-eyes steps."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    failed_by_alert: bool = False
    """A monitor window a firing alert failed (it cannot be skipped)."""
    evidence: dict[str, Any] = {}
    """The latest evidence (JSON-safe): outcomes, exit code, read-back, window summary."""


class MonitorWindow(BaseModel):
    """The monitor window in progress."""

    model_config = ConfigDict(extra="forbid")

    step_id: str
    started_at: datetime
    duration_s: float
    environment: str
    fail_on: Literal["critical", "warning"]
    expected_green: float | None = None
    tolerance: float = 1.0
    last_seen_at: datetime | None = None
    snapshots: int = 0
    max_gap_s: float = 0.0
    last_problem: str = ""
    """Why the latest snapshot did not count (unknown rules, unread split)."""
    warnings_seen: list[str] = []
    worst: dict[str, dict[str, float]] = {}
    """Per environment, the worst value of each metric seen during the window."""


class PhaseClock(BaseModel):
    """A phase's time against the runbook's budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase_id: str
    budget_s: float | None
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_s: float
    remaining_s: float | None
    """None without a budget; negative when over budget."""

    @property
    def overrun(self) -> bool:
        """True when the phase took (or is taking) longer than its budget."""
        return self.remaining_s is not None and self.remaining_s < 0


class MonitorProgress(BaseModel):
    """The running window, for a progress bar."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_id: str
    elapsed_s: float
    duration_s: float
    remaining_s: float
    snapshots: int
    max_gap_s: float
    last_problem: str


class Gate(BaseModel):
    """Whether the current step can go ahead now, and why not."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_id: str
    kind: StepKind
    """The effective kind (a command without argv is an attestation)."""
    state: StepState
    open: bool
    reasons: list[str] = []
    outcomes: list[Outcome] = []
    """Live evaluation: the step's checks (check steps) or preconditions (others)."""
    confirm_typed: str | None = None
    four_eyes: bool = False


class EngineState(BaseModel):
    """Everything the engine knows, serializable (for resume after a crash)."""

    model_config = ConfigDict(extra="forbid")

    format: int = 1
    deployment_id: str
    procedure_id: str
    runbook_title: str
    runbook_version: str
    constitutional_hash: str
    started_at: datetime
    started_by: str
    finished_at: datetime | None = None
    outcome: Literal["in_progress", "completed", "rolled_back", "aborted"] = "in_progress"
    steps: dict[str, StepRecord]
    phase_started: dict[str, datetime] = {}
    phase_finished: dict[str, datetime] = {}
    baseline: Snapshot | None = None
    fired: list[FiredAlert] = []
    blind: list[BlindStretch] = []
    """When alert rules had no data (they could not say whether they fired)."""
    watched: list[WatchSpan] = []
    """When snapshots showed the alert rules (a stretch between two spans went unwatched)."""
    traffic_seen: list[TrafficMark] = []
    """The split read back from the load balancer, each value from its time on."""
    monitor: MonitorWindow | None = None
    rollback_offered: bool = False
    rollback_reason: str = ""
    automatic_rollback: bool = False
    events: int = 0
    """Events emitted so far (a cheap progress counter for resume checks)."""


class _Appender(Protocol):
    """What :func:`audit_sink` needs of ``console.audit.AuditTrail``."""

    def append(
        self,
        action: str,
        *,
        evidence: dict[str, Any] | None = None,
        deployment_id: str | None = None,
        fence: int | None = None,
        operator: str | None = None,
        at: datetime | None = None,
    ) -> Any:
        """Record an action."""
        ...


def audit_sink(trail: _Appender) -> Sink:
    """A sink writing every engine event to the audit trail (store, or its spool).

    Raises (from the sink):
        AuditSinkError: the trail could neither store nor spool the record.
    """

    def sink(action: str, evidence: dict[str, Any]) -> None:
        result = trail.append(
            action,
            evidence=evidence,
            deployment_id=evidence.get("deployment_id"),
            operator=evidence.get("operator") or None,
            at=datetime.fromisoformat(evidence["at"]),
        )
        if getattr(result, "lost", False):
            raise AuditSinkError(str(getattr(result, "error", "") or "audit record lost"))

    return sink


def deployment_id_for(at: datetime) -> str:
    """The runbook's deployment id, ``YYYYMMDD_HHMMSS`` (UTC)."""
    return at.astimezone(UTC).strftime("%Y%m%d_%H%M%S")


_LOWER_IS_WORSE = frozenset({"requests_per_second", "cache_hit_rate", "compliance_score"})


def _metrics_view(snapshot: Snapshot | None) -> dict[str, Any]:
    """Both environments' metrics in one snapshot (None where unknown), for evidence."""
    if snapshot is None:
        return {}
    view: dict[str, Any] = {"snapshot_taken_at": snapshot.taken_at.isoformat()}
    for env in (snapshot.blue, snapshot.green):
        view[env.environment.value] = {
            name: (m.value if m.known else None)
            for name, m in ((n, getattr(env.metrics, n)) for n in type(env.metrics).model_fields)
        }
    return view


def _track_worst(worst: dict[str, dict[str, float]], snapshot: Snapshot) -> None:
    for env in (snapshot.blue, snapshot.green):
        seen = worst.setdefault(env.environment.value, {})
        for name in type(env.metrics).model_fields:
            m: MetricValue = getattr(env.metrics, name)
            if not m.known or m.value is None:
                continue
            old = seen.get(name)
            if old is None:
                seen[name] = m.value
            elif name in _LOWER_IS_WORSE:
                seen[name] = min(old, m.value)
            else:
                seen[name] = max(old, m.value)


def _describe_outcome(o: Outcome) -> str:
    where = f" [{o.environment}]" if o.environment else ""
    detail = f"; {o.detail}" if o.detail else ""
    return f"{o.check}{where}: {o.verdict.value} ({o.measured}{detail})"


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


# --- commands -----------------------------------------------------------------


class CommandResult(BaseModel):
    """How a command run ended."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    argv: list[str]
    cwd: str | None
    exit_code: int | None
    duration_s: float
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None
    """Why it could not start."""
    output_tail: list[str] = []


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the command's process group, SIGKILL after a grace period; reap it."""
    if proc.returncode is None:
        _kill_group(proc, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), _KILL_GRACE_S)
    # Whatever of the group outlived the grace period (or ignores SIGTERM) goes now.
    _kill_group(proc, signal.SIGKILL)
    await proc.wait()


async def run_argv(
    argv: list[str],
    *,
    cwd: Path | None,
    timeout_s: float,
    on_line: OutputCallback | None = None,
    cancel: asyncio.Event | None = None,
) -> CommandResult:
    """Run ``argv`` (no shell), streaming merged stdout/stderr line by line.

    The command runs in its own session so a timeout or a cancel ends it and
    everything it started. Cancelling the awaiting task does the same, then
    re-raises.

    Args:
        argv: The command.
        cwd: Working directory.
        timeout_s: Seconds before the command is ended.
        on_line: Gets each output line (without the newline) as it arrives.
        cancel: Set it to end the command early.

    Returns:
        Exit code (None when it could not start), timing, flags, output tail.
    """
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        why = exc.strerror or str(exc)
        return CommandResult(
            argv=argv,
            cwd=str(cwd) if cwd else None,
            exit_code=None,
            duration_s=time.monotonic() - started,
            error=f"cannot start {argv[0]!r}: {why}",
        )

    def deliver(raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        tail.append(line)
        if on_line is not None:
            # A failing display must not leave the command unsupervised.
            with contextlib.suppress(Exception):
                on_line(line)

    async def pump() -> None:
        assert proc.stdout is not None
        buf = b""
        while True:
            chunk = await proc.stdout.read(65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                deliver(raw)
            if len(buf) > _MAX_LINE_BYTES:
                # A command that never ends its line still shows, in pieces.
                deliver(buf)
                buf = b""
        if buf:
            deliver(buf)

    pump_task = asyncio.create_task(pump())
    wait_task = asyncio.create_task(proc.wait())
    cancel_task = asyncio.create_task(cancel.wait()) if cancel is not None else None
    timed_out = cancelled = False
    try:
        waiting = {wait_task} | ({cancel_task} if cancel_task else set())
        done, _ = await asyncio.wait(
            waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if wait_task not in done:
            cancelled = cancel_task is not None and cancel_task in done
            timed_out = not cancelled
            await _terminate(proc)
        try:
            await asyncio.wait_for(asyncio.shield(pump_task), _PIPE_DRAIN_S)
        except TimeoutError:
            pump_task.cancel()
    except asyncio.CancelledError:
        await asyncio.shield(_terminate(proc))
        pump_task.cancel()
        raise
    finally:
        if cancel_task is not None:
            cancel_task.cancel()
    return CommandResult(
        argv=argv,
        cwd=str(cwd) if cwd else None,
        exit_code=proc.returncode,
        duration_s=round(time.monotonic() - started, 3),
        timed_out=timed_out,
        cancelled=cancelled,
        output_tail=list(tail),
    )


# --- the engine ---------------------------------------------------------------


class RunbookEngine:
    """Walks one procedure of a runbook, step by step, gate by gate."""

    def __init__(
        self,
        runbook: Runbook,
        config: AppConfig,
        state: EngineState,
        *,
        sink: Sink | None = None,
        clock: Callable[[], datetime] = utcnow,
        traffic: TrafficSwitch | None = None,
        reporter: Reporter | None = None,
        on_rollback: RollbackHook | None = None,
        on_state: StateHook | None = None,
    ) -> None:
        """Wrap an existing state; use :meth:`start` or :meth:`restore` to get one."""
        self.runbook = runbook
        self.config = config
        self.state = state
        self.procedure: Procedure = runbook.procedure(state.procedure_id)
        self._sink = sink
        self._clock = clock
        self._traffic = traffic
        self._reporter = reporter
        self._on_rollback = on_rollback
        self._on_state = on_state
        self._latest: Snapshot | None = None
        self._cancel: asyncio.Event | None = None
        self._cancelled_by: str | None = None
        self.security_score_metric: MetricValue | None = None
        """Optionally a ``MetricValue`` giving the security score when no file is configured."""

    # --- construction -------------------------------------------------------

    @classmethod
    def start(
        cls,
        runbook: Runbook,
        config: AppConfig,
        operator: str,
        *,
        procedure: str = "deployment",
        sink: Sink | None = None,
        clock: Callable[[], datetime] = utcnow,
        traffic: TrafficSwitch | None = None,
        reporter: Reporter | None = None,
        on_rollback: RollbackHook | None = None,
        on_state: StateHook | None = None,
        deployment_id: str | None = None,
    ) -> RunbookEngine:
        """Begin a new run of ``procedure`` (a new deployment id) and emit its first events.

        Raises:
            EngineError: unknown procedure, or one the console runs elsewhere.
        """
        try:
            proc = runbook.procedure(procedure)
        except KeyError as exc:
            raise EngineError(str(exc.args[0])) from None
        if proc.kind == "reference":
            raise EngineError(
                f"{proc.title} is run by {proc.handled_by or 'another part of the console'}, "
                "not walked step by step"
            )
        now = clock()
        state = EngineState(
            deployment_id=deployment_id or deployment_id_for(now),
            procedure_id=proc.id,
            runbook_title=runbook.title,
            runbook_version=runbook.version,
            constitutional_hash=config.constitutional_hash,
            started_at=now,
            started_by=operator,
            steps={step.id: StepRecord(step_id=step.id) for _, step in proc.steps()},
        )
        engine = cls(
            runbook,
            config,
            state,
            sink=sink,
            clock=clock,
            traffic=traffic,
            reporter=reporter,
            on_rollback=on_rollback,
            on_state=on_state,
        )
        engine._emit(
            "deployment.started",
            operator,
            runbook=runbook.title,
            runbook_version=runbook.version,
            procedure_title=proc.title,
        )
        engine._enter_phase(proc.phases[0], operator)
        return engine

    @classmethod
    def restore(
        cls,
        data: dict[str, Any],
        runbook: Runbook,
        config: AppConfig,
        operator: str,
        *,
        sink: Sink | None = None,
        clock: Callable[[], datetime] = utcnow,
        traffic: TrafficSwitch | None = None,
        reporter: Reporter | None = None,
        on_rollback: RollbackHook | None = None,
        on_state: StateHook | None = None,
    ) -> RunbookEngine:
        """Resume from :meth:`to_dict` output; whatever was running is marked interrupted.

        Raises:
            EngineError: the state is malformed or does not fit this runbook.
        """
        try:
            state = EngineState.model_validate(data)
        except ValueError as exc:
            raise EngineError(f"the saved deployment state is malformed: {exc}") from None
        try:
            proc = runbook.procedure(state.procedure_id)
        except KeyError as exc:
            raise EngineError(f"cannot resume {state.deployment_id}: {exc.args[0]}") from None
        if state.constitutional_hash != config.constitutional_hash:
            raise EngineError(
                f"cannot resume {state.deployment_id}: it ran under constitutional hash "
                f"{state.constitutional_hash}, the config now says {config.constitutional_hash}"
            )
        ids = [step.id for _, step in proc.steps()]
        missing = [i for i in ids if i not in state.steps]
        unknown = [i for i in state.steps if i not in ids]
        if missing or unknown:
            raise EngineError(
                f"cannot resume {state.deployment_id}: the runbook changed since it started "
                f"(new steps: {', '.join(missing) or 'none'}; gone: {', '.join(unknown) or 'none'})"
            )
        engine = cls(
            runbook,
            config,
            state,
            sink=sink,
            clock=clock,
            traffic=traffic,
            reporter=reporter,
            on_rollback=on_rollback,
            on_state=on_state,
        )
        now = clock()
        for record in state.steps.values():
            if record.state is StepState.RUNNING:
                _, step = engine._find(record.step_id)
                record.state = StepState.FAILED
                record.finished_at = now
                record.reason = {
                    StepKind.COMMAND: "interrupted: the console stopped while the command ran; "
                    "check whether it finished before running it again",
                    StepKind.TRAFFIC: "interrupted while moving traffic; the load balancer's "
                    "read-back is the truth: read it, then set the split again",
                    StepKind.MONITOR: "interrupted: the monitor window must be run again",
                }.get(StepKind(step.kind), "interrupted: the console stopped during this step")
                engine._emit("step.interrupted", operator, step=step, record=record)
        state.monitor = None
        engine._emit("deployment.resumed", operator, current=engine.current_step_id)
        return engine

    def to_dict(self) -> dict[str, Any]:
        """The whole state as JSON-safe data (:meth:`restore` takes it back)."""
        return self.state.model_dump(mode="json")

    # --- queries ------------------------------------------------------------

    @property
    def deployment_id(self) -> str:
        """``YYYYMMDD_HHMMSS``."""
        return self.state.deployment_id

    @property
    def finished(self) -> bool:
        """True once the procedure completed, was rolled back or aborted."""
        return self.state.outcome != "in_progress"

    @property
    def rollback_offered(self) -> bool:
        """A monitor window failed on a firing alert: rollback is offered."""
        return self.state.rollback_offered

    @property
    def automatic_rollback(self) -> bool:
        """The offered rollback is to run without asking (``rollback.automatic``)."""
        return self.state.automatic_rollback

    @property
    def latest_snapshot(self) -> Snapshot | None:
        """The newest snapshot observed."""
        return self._latest

    def record(self, step_id: str) -> StepRecord:
        """The state and evidence of a step."""
        return self.state.steps[step_id]

    def _find(self, step_id: str) -> tuple[Phase, Step]:
        for phase, step in self.procedure.steps():
            if step.id == step_id:
                return phase, step
        raise EngineError(f"no step {step_id!r} in {self.procedure.title}")

    def current(self) -> tuple[Phase, Step] | None:
        """The current phase and step (None when the procedure is over)."""
        if self.finished:
            return None
        for phase, step in self.procedure.steps():
            if self.state.steps[step.id].state not in DONE_STATES:
                return phase, step
        return None

    @property
    def current_step_id(self) -> str | None:
        """The current step's id."""
        cur = self.current()
        return cur[1].id if cur else None

    def command_for(self, step_id: str) -> CommandSpec | None:
        """The configured command of a command step, if any."""
        return self.config.commands.get(step_id)

    def effective_kind(self, step: Step) -> StepKind:
        """A command without argv, or a report without a writer, is an attestation."""
        if isinstance(step, CommandStep) and self.command_for(step.id) is None:
            return StepKind.ATTESTATION
        if isinstance(step, ReportStep) and self._reporter is None:
            return StepKind.ATTESTATION
        return StepKind(step.kind)

    def monitor_duration(self, step: MonitorStep) -> float:
        """The window length: the config's ``monitor_windows.<id>`` or the runbook's."""
        return float(self.config.monitor_windows.get(step.id, step.duration_s))

    def four_eyes(self, step_id: str) -> bool:
        """Whether the step needs a second, different operator."""
        return step_id in self.config.coordination.four_eyes_gates

    def context(self) -> EvaluationContext:
        """What predicates are judged against right now."""
        cur = self.current()
        sec = self.config.security
        return EvaluationContext(
            snapshot=self._latest,
            now=self._clock(),
            thresholds=self.config.thresholds,
            expected_hash=self.config.constitutional_hash,
            security=SecurityInputs(
                vulnerability_report=sec.vulnerability_report,
                sbom=sec.sbom,
                security_score_file=sec.security_score_file,
                security_score_metric=self.security_score_metric,
            ),
            step_states={k: v.state.value for k, v in self.state.steps.items()},
            baseline=self.state.baseline,
            history=AlertHistory(
                procedure_started_at=self.state.started_at,
                phase_started_at=self.state.phase_started.get(cur[0].id) if cur else None,
                watched=tuple(self.state.watched),
                traffic=tuple(self.state.traffic_seen),
                fired=tuple(self.state.fired),
                blind=tuple(self.state.blind),
            ),
            phase_id=cur[0].id if cur else None,
        )

    def evaluate(self, step: Step) -> list[Outcome]:
        """Live outcomes: a step's preconditions, and a check step's checks."""
        ctx = self.context()
        preds = [*step.preconditions, *(step.checks if isinstance(step, CheckStep) else [])]
        return [o for p in preds for o in p.evaluate(ctx)]

    def _evaluate_preconditions(self, step: Step) -> list[Outcome]:
        ctx = self.context()
        return [o for p in step.preconditions for o in p.evaluate(ctx)]

    def gate(self) -> Gate | None:
        """The current step's gate on the current snapshot (None when the procedure is over)."""
        cur = self.current()
        if cur is None:
            return None
        _, step = cur
        record = self.state.steps[step.id]
        kind = self.effective_kind(step)
        outcomes = self.evaluate(step)
        reasons = [_describe_outcome(o) for o in outcomes if o.verdict is not Verdict.PASS]
        if record.state is StepState.RUNNING:
            reasons.insert(0, "the step is running")
        return Gate(
            step_id=step.id,
            kind=kind,
            state=record.state,
            open=not reasons,
            reasons=reasons,
            outcomes=outcomes,
            confirm_typed=step.confirm_typed.value if step.confirm_typed else None,
            four_eyes=self.four_eyes(step.id),
        )

    def phase_clock(self, phase_id: str) -> PhaseClock:
        """A phase's elapsed time against its budget."""
        phase = next((p for p in self.procedure.phases if p.id == phase_id), None)
        if phase is None:
            raise EngineError(f"no phase {phase_id!r} in {self.procedure.title}")
        started = self.state.phase_started.get(phase_id)
        finished = self.state.phase_finished.get(phase_id)
        elapsed = (
            0.0 if started is None else ((finished or self._clock()) - started).total_seconds()
        )
        remaining = None if phase.budget_s is None else phase.budget_s - elapsed
        return PhaseClock(
            phase_id=phase_id,
            budget_s=phase.budget_s,
            started_at=started,
            finished_at=finished,
            elapsed_s=elapsed,
            remaining_s=remaining,
        )

    def monitor_progress(self) -> MonitorProgress | None:
        """The running monitor window, if any."""
        w = self.state.monitor
        if w is None:
            return None
        elapsed = max(0.0, (self._clock() - w.started_at).total_seconds())
        return MonitorProgress(
            step_id=w.step_id,
            elapsed_s=elapsed,
            duration_s=w.duration_s,
            remaining_s=max(0.0, w.duration_s - elapsed),
            snapshots=w.snapshots,
            max_gap_s=w.max_gap_s,
            last_problem=w.last_problem,
        )

    # --- events -------------------------------------------------------------

    def _emit(
        self,
        action: str,
        operator: str | None,
        *,
        step: Step | None = None,
        record: StepRecord | None = None,
        phase: Phase | None = None,
        **extra: Any,
    ) -> None:
        cur = self.current()
        phase_id = None
        if phase is not None:
            phase_id = phase.id
        elif step is not None:
            phase_id = self._find(step.id)[0].id
        elif cur is not None:
            phase_id = cur[0].id
        evidence: dict[str, Any] = {
            "deployment_id": self.state.deployment_id,
            "procedure": self.state.procedure_id,
            "phase": phase_id,
            "operator": operator,
            "at": self._clock().isoformat(),
            "constitutional_hash": self.state.constitutional_hash,
        }
        if step is not None:
            evidence["step"] = step.id
            evidence["step_title"] = step.title
            evidence["kind"] = self.effective_kind(step).value
        if record is not None:
            evidence["state"] = record.state.value
            if record.reason:
                evidence["reason"] = record.reason
            if record.approved_by:
                evidence["approved_by"] = record.approved_by
            if record.evidence:
                evidence["evidence"] = record.evidence
        evidence.update(extra)
        self.state.events += 1
        if self._sink is not None:
            try:
                self._sink(action, evidence)
            except Exception as exc:
                raise AuditSinkError(f"the audit trail refused {action!r}: {exc}") from exc
        if self._on_state is not None:
            self._on_state(self.to_dict())

    def _enter_phase(self, phase: Phase, operator: str | None) -> None:
        if phase.id in self.state.phase_started:
            return
        self.state.phase_started[phase.id] = self._clock()
        self._emit(
            "phase.started", operator, phase=phase, phase_title=phase.title, budget_s=phase.budget_s
        )

    def _settle(self, phase: Phase, operator: str | None) -> None:
        """After a step finished: close its phase if done, open the next, or finish."""
        phase_done = all(self.state.steps[s.id].state in DONE_STATES for s in phase.steps)
        if phase_done and phase.id not in self.state.phase_finished:
            self.state.phase_finished[phase.id] = self._clock()
            clock = self.phase_clock(phase.id)
            self._emit(
                "phase.completed",
                operator,
                phase=phase,
                phase_title=phase.title,
                elapsed_s=round(clock.elapsed_s, 3),
                budget_s=phase.budget_s,
                over_budget=clock.overrun,
            )
        nxt = self.current()
        if nxt is None:
            self.state.outcome = "completed"
            self.state.finished_at = self._clock()
            skipped = [k for k, v in self.state.steps.items() if v.state is StepState.SKIPPED]
            attested = [k for k, v in self.state.steps.items() if v.state is StepState.ATTESTED]
            self._emit("deployment.completed", operator, skipped=skipped, attested=attested)
        else:
            self._enter_phase(nxt[0], operator)

    def _finish(
        self,
        phase: Phase,
        step: Step,
        record: StepRecord,
        state: StepState,
        operator: str | None,
        reason: str = "",
        evidence: dict[str, Any] | None = None,
    ) -> None:
        record.state = state
        record.reason = reason
        record.finished_at = self._clock()
        if record.started_at is None:
            record.started_at = record.finished_at
        if operator is not None:
            record.operator = operator
        if evidence is not None:
            record.evidence = evidence
        self._emit(f"step.{state.value}", operator, step=step, record=record)
        if state in DONE_STATES:
            self._settle(phase, operator)

    # --- guards -------------------------------------------------------------

    def _current_of(
        self, kinds: set[StepKind], step_id: str | None
    ) -> tuple[Phase, Step, StepRecord]:
        if self.finished:
            raise EngineError(f"deployment {self.deployment_id} is over ({self.state.outcome})")
        cur = self.current()
        if cur is None:
            raise EngineError("no step is left")
        phase, step = cur
        if step_id is not None and step_id != step.id:
            raise EngineError(
                f"step {step_id!r} is not the current step (the current step is {step.id!r})"
            )
        kind = self.effective_kind(step)
        if kind not in kinds:
            raise EngineError(
                f"step {step.id!r} is a {kind.value} step; "
                + (
                    "attest it with a note"
                    if kind is StepKind.ATTESTATION
                    else f"use its {kind.value} action"
                )
            )
        record = self.state.steps[step.id]
        if record.state is StepState.RUNNING:
            raise EngineError(f"step {step.id!r} is already running")
        return phase, step, record

    def _authorize(
        self,
        step: Step,
        operator: str,
        typed: str | None,
        approved_by: str | None,
        *,
        typed_needed: bool = True,
    ) -> None:
        if not operator.strip():
            raise EngineError("an operator name is required")
        if (
            typed_needed
            and step.confirm_typed is not None
            and (typed or "").strip() != step.confirm_typed.value
        ):
            raise EngineError(
                f"step {step.id!r} is destructive: type {step.confirm_typed.value!r} to confirm"
            )
        if self.four_eyes(step.id):
            if not approved_by or not approved_by.strip():
                raise EngineError(
                    f"step {step.id!r} needs a second operator's approval (four eyes)"
                )
            if approved_by.strip() == operator.strip():
                raise EngineError(
                    f"step {step.id!r} needs a second operator: {operator} cannot approve it"
                )

    def _preconditions(self, step: Step) -> None:
        if not step.preconditions:
            return
        bad = [o for o in self._evaluate_preconditions(step) if o.verdict is not Verdict.PASS]
        if bad:
            raise EngineError(
                f"step {step.id!r} cannot start: " + "; ".join(_describe_outcome(o) for o in bad)
            )

    def _begin(
        self,
        phase: Phase,
        step: Step,
        record: StepRecord,
        operator: str,
        approved_by: str | None,
        **extra: Any,
    ) -> None:
        record.state = StepState.RUNNING
        record.operator = operator
        record.approved_by = approved_by
        record.started_at = self._clock()
        record.finished_at = None
        record.reason = ""
        record.failed_by_alert = False
        record.attempts += 1
        self._emit("step.started", operator, step=step, record=record, **extra)

    # --- actions ------------------------------------------------------------

    def check(
        self, operator: str, step_id: str | None = None, *, approved_by: str | None = None
    ) -> StepRecord:
        """Judge the current check step on the current snapshot: passed, or failed with evidence."""
        phase, step, record = self._current_of({StepKind.CHECK}, step_id)
        # A check changes nothing: no typed confirmation, but four eyes where configured.
        self._authorize(step, operator, None, approved_by, typed_needed=False)
        outcomes = self.evaluate(step)
        snap = self._latest
        evidence = {
            "outcomes": [o.model_dump(mode="json") for o in outcomes],
            "snapshot_sequence": snap.sequence if snap else None,
            "snapshot_taken_at": _iso(snap.taken_at) if snap else None,
        }
        record.attempts += 1
        record.approved_by = approved_by
        if all(o.verdict is Verdict.PASS for o in outcomes):
            self._finish(phase, step, record, StepState.PASSED, operator, evidence=evidence)
        else:
            bad = [o for o in outcomes if o.verdict is not Verdict.PASS]
            reason = "; ".join(_describe_outcome(o) for o in bad)
            self._finish(
                phase, step, record, StepState.FAILED, operator, reason=reason, evidence=evidence
            )
        return record

    def attest(
        self,
        operator: str,
        note: str,
        step_id: str | None = None,
        *,
        typed: str | None = None,
        approved_by: str | None = None,
    ) -> StepRecord:
        """The operator confirms the current attestation (or unconfigured command) with a note."""
        phase, step, record = self._current_of({StepKind.ATTESTATION}, step_id)
        if not note or not note.strip():
            raise EngineError(f"attesting {step.id!r} needs a note saying what you checked")
        self._authorize(step, operator, typed, approved_by)
        self._preconditions(step)
        record.attempts += 1
        record.approved_by = approved_by
        evidence: dict[str, Any] = {"note": note.strip()}
        if isinstance(step, CommandStep):
            evidence["unconfigured_command"] = step.runbook_command or step.title
        if isinstance(step, AttestationStep) and step.prompt:
            evidence["prompt"] = step.prompt
        self._finish(
            phase,
            step,
            record,
            StepState.ATTESTED,
            operator,
            reason=note.strip(),
            evidence=evidence,
        )
        return record

    def skip(self, operator: str, reason: str, step_id: str | None = None) -> StepRecord:
        """Skip the current step, with a reason: a failed one, or an attestation not given.

        Traffic steps cannot be skipped, nor a monitor window a firing alert failed.
        """
        phase, step, record = self._current_of(set(StepKind), step_id)
        if not reason or not reason.strip():
            raise EngineError(f"skipping {step.id!r} needs a reason")
        if not operator.strip():
            raise EngineError("an operator name is required")
        if isinstance(step, TrafficStep):
            raise EngineError(
                f"traffic step {step.id!r} cannot be skipped: set the split again, or roll back"
            )
        if record.failed_by_alert:
            raise EngineError(
                f"monitor window {step.id!r} failed on a firing alert: "
                "run the window again or roll back"
            )
        kind = self.effective_kind(step)
        if record.state is not StepState.FAILED and kind is not StepKind.ATTESTATION:
            raise EngineError(f"only a failed step can be skipped; run {step.id!r} first")
        previous = record.state.value
        self._finish(
            phase,
            step,
            record,
            StepState.SKIPPED,
            operator,
            reason=reason.strip(),
            evidence={**record.evidence, "skipped_from": previous},
        )
        return record

    async def run_command(
        self,
        operator: str,
        step_id: str | None = None,
        *,
        on_output: OutputCallback | None = None,
        typed: str | None = None,
        approved_by: str | None = None,
    ) -> StepRecord:
        """Run the current command step's configured argv; passed on exit 0.

        ``{deployment_id}`` and ``{constitutional_hash}`` in the argv are replaced.
        Cancel with :meth:`cancel_command` (or by cancelling the awaiting task).
        """
        phase, step, record = self._current_of({StepKind.COMMAND}, step_id)
        spec = self.command_for(step.id)
        assert spec is not None
        self._authorize(step, operator, typed, approved_by)
        self._preconditions(step)
        argv = [
            a.replace("{deployment_id}", self.deployment_id).replace(
                "{constitutional_hash}", self.config.constitutional_hash
            )
            for a in spec.argv
        ]
        self._cancel = asyncio.Event()
        self._cancelled_by = None
        self._begin(
            phase,
            step,
            record,
            operator,
            approved_by,
            argv=argv,
            cwd=str(spec.cwd) if spec.cwd else None,
            timeout_s=spec.timeout_s,
        )
        try:
            result = await run_argv(
                argv, cwd=spec.cwd, timeout_s=spec.timeout_s, on_line=on_output, cancel=self._cancel
            )
        except asyncio.CancelledError:
            self._finish(
                phase,
                step,
                record,
                StepState.FAILED,
                operator,
                reason="cancelled: the console stopped waiting for the command",
                evidence={"argv": argv, "cancelled": True},
            )
            raise
        finally:
            self._cancel = None
        evidence = result.model_dump(mode="json")
        if result.exit_code == 0 and not result.timed_out and not result.cancelled:
            self._finish(phase, step, record, StepState.PASSED, operator, evidence=evidence)
        else:
            if result.error:
                reason = result.error
            elif result.timed_out:
                reason = f"timed out after {spec.timeout_s:g} s and was stopped"
            elif result.cancelled:
                reason = f"cancelled by {self._cancelled_by or operator}"
            else:
                reason = f"exited with code {result.exit_code}"
            self._finish(
                phase, step, record, StepState.FAILED, operator, reason=reason, evidence=evidence
            )
        return record

    def cancel_command(self, operator: str) -> bool:
        """Stop the running command (its whole process group); False when none runs."""
        if self._cancel is None or self._cancel.is_set():
            return False
        self._cancelled_by = operator
        self._cancel.set()
        return True

    async def shift_traffic(
        self,
        operator: str,
        step_id: str | None = None,
        *,
        typed: str | None = None,
        approved_by: str | None = None,
    ) -> StepRecord:
        """Set the current traffic step's green percentage; passed when the read-back matches."""
        phase, step, record = self._current_of({StepKind.TRAFFIC}, step_id)
        assert isinstance(step, TrafficStep)
        if self._traffic is None:
            raise EngineError("no traffic switch is connected to the runbook engine")
        self._authorize(step, operator, typed, approved_by)
        self._preconditions(step)
        if self.state.baseline is None:
            ctx = self.context()
            if ctx.freshness_problem() is None:
                # The last view of the estate before traffic moves: the "no increase" baseline.
                self.state.baseline = self._latest
        target = step.green_percentage
        self._begin(
            phase,
            step,
            record,
            operator,
            approved_by,
            green_percentage=target,
            switch=self._traffic.name,
        )
        evidence: dict[str, Any] = {
            "target_green_percentage": target,
            "switch": self._traffic.name,
            "metrics": {"before": _metrics_view(self._latest)},
        }
        try:
            split = await self._traffic.set_green_percentage(target)
        except asyncio.CancelledError:
            self._finish(
                phase,
                step,
                record,
                StepState.FAILED,
                operator,
                reason="cancelled while moving traffic; read the split back",
                evidence=evidence,
            )
            raise
        except TrafficSwitchError as exc:
            evidence["error"] = f"{type(exc).__name__}: {exc}"
            self._finish(
                phase,
                step,
                record,
                StepState.FAILED,
                operator,
                reason=f"the traffic switch failed: {exc}",
                evidence=evidence,
            )
            return record
        except Exception as exc:
            # A switch that breaks its contract must still leave the step failed, not running.
            evidence["error"] = f"{type(exc).__name__}: {exc}"
            self._finish(
                phase,
                step,
                record,
                StepState.FAILED,
                operator,
                reason=f"the traffic switch failed unexpectedly: {type(exc).__name__}: {exc}",
                evidence=evidence,
            )
            return record
        readback = await self._traffic.read_split()
        self._note_split(split)
        self._note_split(readback)
        evidence["set_read_back"] = split.model_dump(mode="json")
        evidence["read_back"] = readback.model_dump(mode="json")
        problems = []
        for label, s in (("the switch's read-back", split), ("an independent read-back", readback)):
            if s.green_percentage is None:
                problems.append(f"{label} is unknown ({s.error or 'no value'})")
            elif abs(s.green_percentage - target) > step.tolerance:
                problems.append(f"{label} says {s.green_percentage:g}% green, wanted {target:g}%")
        if problems:
            self._finish(
                phase,
                step,
                record,
                StepState.FAILED,
                operator,
                reason="; ".join(problems),
                evidence=evidence,
            )
        else:
            self._finish(phase, step, record, StepState.PASSED, operator, evidence=evidence)
        return record

    async def read_back_traffic(self, operator: str) -> TrafficSplit:
        """Read the split from the load balancer now (after a resume), and record it."""
        if self._traffic is None:
            raise EngineError("no traffic switch is connected to the runbook engine")
        split = await self._traffic.read_split()
        self._note_split(split)
        self._emit("traffic.read_back", operator, split=split.model_dump(mode="json"))
        return split

    def _expected_green(self, upto: Step) -> float | None:
        expected = None
        for _, step in self.procedure.steps():
            if step.id == upto.id:
                break
            if (
                isinstance(step, TrafficStep)
                and self.state.steps[step.id].state is StepState.PASSED
            ):
                expected = step.green_percentage
        return expected

    def start_monitor(
        self,
        operator: str,
        step_id: str | None = None,
        *,
        typed: str | None = None,
        approved_by: str | None = None,
    ) -> StepRecord:
        """Open the current monitor step's window; :meth:`observe` and :meth:`tick` drive it."""
        phase, step, record = self._current_of({StepKind.MONITOR}, step_id)
        assert isinstance(step, MonitorStep)
        self._authorize(step, operator, typed, approved_by)
        self._preconditions(step)
        if self.state.rollback_offered:
            self.state.rollback_offered = False
            self.state.automatic_rollback = False
            self._emit(
                "rollback.declined",
                operator,
                step=step,
                reason=f"monitor window {step.id} run again instead",
            )
        duration = self.monitor_duration(step)
        prev = None
        for _, s in self.procedure.steps():
            if s.id == step.id:
                break
            if isinstance(s, TrafficStep):
                prev = s
        self.state.monitor = MonitorWindow(
            step_id=step.id,
            started_at=self._clock(),
            duration_s=duration,
            environment=step.environment,
            fail_on=step.fail_on,
            expected_green=self._expected_green(step),
            tolerance=prev.tolerance if prev else 1.0,
        )
        self._begin(
            phase,
            step,
            record,
            operator,
            approved_by,
            duration_s=duration,
            expected_green=self.state.monitor.expected_green,
        )
        return record

    def observe(self, snapshot: Snapshot) -> None:
        """Feed the newest snapshot: gates, alerts seen, and the monitor window use it."""
        if self._latest is not None and snapshot.taken_at < self._latest.taken_at:
            return
        self._latest = snapshot
        if self.finished:
            return
        self._note_alerts(snapshot)
        if self.state.monitor is not None:
            self._feed_window(snapshot)
        self.tick()

    def _note_split(self, split: TrafficSplit) -> None:
        """Keep a fresh read-back of the split (an unknown or stale one says nothing)."""
        if split.green_percentage is not None and not split.stale:
            self._note_traffic(split.read_at, split.green_percentage)

    def _note_traffic(self, at: datetime, green_percentage: float | None) -> None:
        """Keep the split read back at ``at`` (only where it changes what was in force)."""
        marks = self.state.traffic_seen
        i = len(marks)
        while i > 0 and marks[i - 1].at > at:
            i -= 1
        if i > 0 and marks[i - 1].green_percentage == green_percentage:
            return
        marks.insert(i, TrafficMark(at=at, green_percentage=green_percentage))

    def _note_alerts(self, snapshot: Snapshot) -> None:
        """The alert history: what was watched when, the split, alerts firing, rules blind."""
        mark = sweep_mark(snapshot)  # in force for this snapshot's alert states
        self._note_traffic(mark.at, mark.green_percentage)
        if not snapshot.alerts:
            return  # no rule states: this snapshot watched nothing
        allowed = self.config.thresholds.stale_after_s
        spans = self.state.watched
        if spans and (snapshot.taken_at - spans[-1].end).total_seconds() <= allowed:
            spans[-1].end = max(spans[-1].end, snapshot.taken_at)
        else:
            spans.append(WatchSpan(start=snapshot.taken_at, end=snapshot.taken_at))
        cur = self.current()
        phase_id = cur[0].id if cur else ""
        at = snapshot.taken_at
        blind_now: set[tuple[str, str | None, bool | None]] = set()
        for a in snapshot.alerts:
            firing = a.phase is AlertPhase.FIRING
            if not firing and not a.unknown:
                continue
            env = a.environment.value if a.environment else None
            serving = alert_serving(a, self.state.traffic_seen, snapshot, mark)
            if not firing:
                blind_now.add((a.rule_id, env, serving))
                self._note_blind(a.rule_id, a.name, a.severity.value, env, serving, phase_id, at)
                continue
            if any(
                f.rule_id == a.rule_id
                and f.environment == env
                and f.phase_id == phase_id
                and f.serving == serving
                for f in self.state.fired
            ):
                continue
            self.state.fired.append(
                FiredAlert(
                    rule_id=a.rule_id,
                    name=a.name,
                    severity=a.severity.value,
                    environment=env,
                    phase_id=phase_id,
                    first_seen=snapshot.taken_at,
                    active_since=a.active_since,
                    serving=serving,
                )
            )

        for b in self.state.blind:
            if b.end is None and (b.rule_id, b.environment, b.serving) not in blind_now:
                b.end = at  # it has data again (or is now judged under another split)

    def _note_blind(
        self,
        rule_id: str,
        name: str,
        severity: str,
        environment: str | None,
        serving: bool | None,
        phase_id: str,
        at: datetime,
    ) -> None:
        """A rule without data in this snapshot: go on with its stretch, or begin one."""
        allowed = self.config.thresholds.stale_after_s
        for b in reversed(self.state.blind):
            if (b.rule_id, b.environment, b.serving) != (rule_id, environment, serving):
                continue
            if b.end is None or (at - b.end).total_seconds() <= allowed:
                b.end = None
                b.last_seen = max(b.last_seen, at)
                return
            break
        self.state.blind.append(
            BlindStretch(
                rule_id=rule_id,
                name=name,
                severity=severity,
                environment=environment,
                serving=serving,
                phase_id=phase_id,
                start=at,
                last_seen=at,
            )
        )

    def _feed_window(self, snapshot: Snapshot) -> None:
        w = self.state.monitor
        assert w is not None
        if snapshot.taken_at < w.started_at:
            return
        severities = {AlertSeverity.CRITICAL} | (
            {AlertSeverity.WARNING} if w.fail_on == "warning" else set()
        )

        def relevant(env: str | None) -> bool:
            return env is None or w.environment in ("both", env)

        failing = [
            a
            for a in snapshot.firing
            if a.severity in severities and relevant(a.environment.value if a.environment else None)
        ]
        if failing:
            self._fail_window_on_alert(snapshot, failing)
            return
        for a in snapshot.firing:
            text = f"{a.name}: {a.summary}"
            if a.severity is AlertSeverity.WARNING and text not in w.warnings_seen:
                w.warnings_seen.append(text)
        problems = []
        if not snapshot.alerts:
            problems.append("no alert rules were evaluated")
        unknown = [
            a.name
            for a in snapshot.alerts
            if a.unknown
            and a.severity in severities
            and relevant(a.environment.value if a.environment else None)
        ]
        if unknown:
            problems.append("rules without data: " + ", ".join(unknown))
        green = snapshot.traffic.green_percentage
        if w.expected_green is not None:
            if green is None:
                problems.append(
                    f"traffic split unknown ({snapshot.traffic.error or 'no read-back'})"
                )
            elif abs(green - w.expected_green) > w.tolerance:
                self._fail_window(
                    f"the traffic split changed to {green:g}% green during the window "
                    f"(expected {w.expected_green:g}%)",
                    snapshot,
                )
                return
        if problems:
            # This snapshot cannot vouch for the estate: it does not count toward coverage.
            w.last_problem = "; ".join(problems)
            return
        gap = (snapshot.taken_at - (w.last_seen_at or w.started_at)).total_seconds()
        w.max_gap_s = max(w.max_gap_s, gap)
        w.last_seen_at = snapshot.taken_at
        w.snapshots += 1
        _track_worst(w.worst, snapshot)
        w.last_problem = ""

    def _window_step(self) -> tuple[Phase, Step, StepRecord]:
        w = self.state.monitor
        assert w is not None
        phase, step = self._find(w.step_id)
        return phase, step, self.state.steps[step.id]

    def _window_summary(self, now: datetime) -> dict[str, Any]:
        w = self.state.monitor
        assert w is not None
        return {
            "duration_s": w.duration_s,
            "elapsed_s": round((now - w.started_at).total_seconds(), 3),
            "snapshots": w.snapshots,
            "max_gap_s": round(w.max_gap_s, 3),
            "expected_green_percentage": w.expected_green,
            "warnings_seen": list(w.warnings_seen),
            "last_problem": w.last_problem,
            "metrics": {"worst": w.worst, "last": _metrics_view(self._latest)},
        }

    def _fail_window(self, reason: str, snapshot: Snapshot | None) -> None:
        phase, step, record = self._window_step()
        evidence = self._window_summary(self._clock())
        if snapshot is not None:
            evidence["snapshot_sequence"] = snapshot.sequence
            evidence["snapshot_taken_at"] = _iso(snapshot.taken_at)
        self.state.monitor = None
        self._finish(phase, step, record, StepState.FAILED, None, reason=reason, evidence=evidence)

    def _fail_window_on_alert(self, snapshot: Snapshot, failing: list[Any]) -> None:
        phase, step, record = self._window_step()
        evidence = self._window_summary(self._clock())
        evidence["alerts"] = [
            {
                "rule_id": a.rule_id,
                "name": a.name,
                "severity": a.severity.value,
                "environment": a.environment.value if a.environment else None,
                "summary": a.summary,
                "value": a.value,
                "active_since": _iso(a.active_since),
            }
            for a in failing
        ]
        evidence["snapshot_sequence"] = snapshot.sequence
        evidence["snapshot_taken_at"] = _iso(snapshot.taken_at)
        self.state.monitor = None
        record.failed_by_alert = True
        names = ", ".join(
            f"{a.name} ({a.environment.value if a.environment else 'all'})" for a in failing
        )
        reason = f"critical alert firing during the window: {names}"
        self._finish(phase, step, record, StepState.FAILED, None, reason=reason, evidence=evidence)
        self.state.rollback_offered = True
        self.state.rollback_reason = reason
        self.state.automatic_rollback = self.config.rollback.automatic
        self._emit(
            "rollback.offered",
            None,
            step=step,
            reason=reason,
            automatic=self.state.automatic_rollback,
        )
        if self._on_rollback is not None:
            self._on_rollback(reason, self.state.automatic_rollback)

    def tick(self) -> None:
        """Close the monitor window when its time is up (call it on a timer, too)."""
        w = self.state.monitor
        if w is None:
            return
        now = self._clock()
        if (now - w.started_at).total_seconds() < w.duration_s:
            return
        allowed = self.config.thresholds.stale_after_s
        if w.snapshots == 0:
            why = f": {w.last_problem}" if w.last_problem else ""
            self._fail_window(f"no usable snapshot during the window{why}", None)
            return
        assert w.last_seen_at is not None
        end = w.started_at.timestamp() + w.duration_s
        tail_gap = end - w.last_seen_at.timestamp()
        gap = max(w.max_gap_s, tail_gap)
        if gap > allowed:
            why = f" ({w.last_problem})" if w.last_problem else ""
            self._fail_window(
                f"no usable data for {gap:.1f} s during the window (allowed {allowed:g} s){why}",
                None,
            )
            return
        phase, step, record = self._window_step()
        evidence = self._window_summary(now)
        self.state.monitor = None
        self._finish(phase, step, record, StepState.PASSED, None, evidence=evidence)

    async def make_report(self, operator: str, step_id: str | None = None) -> StepRecord:
        """Produce the current report step's report through the injected writer."""
        phase, step, record = self._current_of({StepKind.REPORT}, step_id)
        assert isinstance(step, ReportStep) and self._reporter is not None
        self._authorize(step, operator, None, None)
        self._begin(phase, step, record, operator, None, report=step.report)
        try:
            where = await self._reporter(step.report, self.to_dict())
        except asyncio.CancelledError:
            self._finish(phase, step, record, StepState.FAILED, operator, reason="cancelled")
            raise
        except Exception as exc:
            self._finish(
                phase,
                step,
                record,
                StepState.FAILED,
                operator,
                reason=f"the report could not be written: {exc}",
            )
            return record
        self._finish(
            phase,
            step,
            record,
            StepState.PASSED,
            operator,
            evidence={"report": step.report, "location": where},
        )
        return record

    async def proceed(
        self,
        operator: str,
        *,
        note: str | None = None,
        typed: str | None = None,
        approved_by: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> StepRecord:
        """The "Continue" of the current step: whatever its (effective) kind asks for."""
        cur = self.current()
        if cur is None:
            raise EngineError("no step is left")
        kind = self.effective_kind(cur[1])
        if kind is StepKind.CHECK:
            return self.check(operator, approved_by=approved_by)
        if kind is StepKind.ATTESTATION:
            return self.attest(operator, note or "", typed=typed, approved_by=approved_by)
        if kind is StepKind.COMMAND:
            return await self.run_command(
                operator, on_output=on_output, typed=typed, approved_by=approved_by
            )
        if kind is StepKind.TRAFFIC:
            return await self.shift_traffic(operator, typed=typed, approved_by=approved_by)
        if kind is StepKind.MONITOR:
            return self.start_monitor(operator, typed=typed, approved_by=approved_by)
        return await self.make_report(operator)

    def end(self, operator: str, outcome: Literal["rolled_back", "aborted"], reason: str) -> None:
        """End the procedure early (after a rollback, or abandoned), with a reason."""
        if self.finished:
            raise EngineError(
                f"deployment {self.deployment_id} is already over ({self.state.outcome})"
            )
        if not reason.strip():
            raise EngineError("ending a deployment early needs a reason")
        if self._cancel is not None:
            raise EngineError("a command is still running: cancel it first")
        current = self.current_step_id
        self.state.monitor = None
        self.state.outcome = outcome
        self.state.finished_at = self._clock()
        self._emit(f"deployment.{outcome}", operator, reason=reason.strip(), current=current)
