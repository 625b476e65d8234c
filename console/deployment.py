"""The deployment session: one runbook run, its audit trail, its persisted progress, resume.

This module owns a deployment as the console drives it: the
:class:`~console.runbook.engine.RunbookEngine` that walks the procedure, the audit trail
every transition goes to, the traffic switch, the report writer, the rollback hook and,
for four-eyes gates, the second operator's approval. The screens drive a deployment only
through :class:`DeploymentSession`; nothing here imports textual.

**Progress lives in the audit chain.** Every engine event is an audit record (the engine's
sink). After each transition the session also appends a ``deployment.state`` record that
carries the engine's whole state (:meth:`RunbookEngine.to_dict`): the deployment id, its
phase, every step's state and evidence. The chain is the source of truth, so a console that
was killed (SIGKILL, power loss) is replaced by a new one that reads the chain back
(:func:`scan_deployments`), finds the unfinished deployment and resumes it exactly there
(:meth:`DeploymentSession.resume`): the step that was running comes back failed as
"interrupted" (the engine's rule), and the traffic split is read back from the load
balancer, never taken from memory (:meth:`DeploymentSession.read_back_traffic`).

A state record names its deployment in its evidence (``evidence.deployment_id``), not in
the record's deployment column: the reports list a deployment's records by that column, and
a copy of the whole state after every step is bookkeeping for the console, not a thing an
operator did. The chain still holds, orders and verifies every one of them.

State records are written once per burst of events, not once per event: right after a
``step.started`` (a command, a traffic move or a report may take long after it, and a
console killed meanwhile must find the step running) and when the session call that caused
the events returns. A console killed between an event and its state record (a few
microseconds of synchronous code) resumes from the previous state; the records after it
are listed in :attr:`SavedDeployment.later_actions` so the operator sees them.

When the audit store is unreachable, records (state records too) go to the trail's local
spool and are flushed in order when it returns; :func:`scan_deployments` reads the spool
after the chain, so a resume on the same host still finds the newest state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from backends.audit_store import AuditStoreError
from backends.models import Snapshot, TrafficSplit, utcnow
from backends.traffic import TrafficSwitch
from console.config import AppConfig
from console.runbook.engine import (
    AuditSinkError,
    EngineError,
    EngineState,
    Gate,
    MonitorProgress,
    OutputCallback,
    PhaseClock,
    Reporter,
    RollbackHook,
    RunbookEngine,
    StepRecord,
    StepState,
    audit_sink,
    deployment_id_for,
)
from console.runbook.model import Phase, Runbook, Step, StepKind, TrafficStep

if TYPE_CHECKING:
    from console.audit import AuditTrail, FlushResult
    from console.coordination import Coordinator

__all__ = [
    "STATE_ACTION",
    "TERMINAL_ACTIONS",
    "Approver",
    "DeploymentError",
    "DeploymentScan",
    "DeploymentSession",
    "DriveGuard",
    "GateView",
    "SavedDeployment",
    "coordinator_approver",
    "open_session",
    "scan_deployments",
]

log = logging.getLogger(__name__)

STATE_ACTION = "deployment.state"
"""The audit action of a saved engine state (its evidence carries ``state``)."""

TERMINAL_ACTIONS = frozenset(
    {"deployment.completed", "deployment.rolled_back", "deployment.aborted"}
)
"""Engine events after which a deployment is over."""

_ENGINE_ACTIONS = (
    "deployment.",
    "phase.",
    "step.",
    "traffic.",
    "rollback.offered",
    "rollback.declined",
)
"""Prefixes of the actions the runbook engine emits (other modules write other records)."""

Approver = Callable[[str, str], Awaitable[str]]
"""``await approver(step_id, deployment_id)`` returns the second operator who approved the gate.

It raises (any exception, with a message naming why) when nobody approved; the gate stays
closed. :func:`coordinator_approver` builds one on the multi-operator coordinator.
"""

ChangeHook = Callable[[], None]
"""Called after anything changed the deployment (to redraw)."""

RecordHook = Callable[[str, dict[str, Any]], None]
"""Called with each engine event once it is in the audit trail (operators, issue 7)."""


class DriveGuard(Protocol):
    """Whether this console may drive, asked before every driving action (operators, issue 7).

    Both methods return the lease's fencing number, which the session stores with every
    audit record it appends, or raise :class:`DeploymentError` saying why the console may
    not drive. ``check`` uses local knowledge only (the holder's local deadline, which
    passes before anyone else can take the lease), for the synchronous actions; ``confirm``
    also renews the lease with the coordination store, before a step that changes the estate.
    """

    def check(self, action: str) -> int | None:
        """The fencing number, from local knowledge (no I/O)."""
        ...

    async def confirm(self, action: str) -> int | None:
        """The fencing number, confirmed with the coordination store."""
        ...


class _FencedTrail:
    """The session's trail, with the session's fencing number on every engine record."""

    def __init__(self, session: DeploymentSession) -> None:
        self._session = session

    def append(self, action: str, **kwargs: Any) -> Any:
        kwargs.setdefault("fence", self._session.fence)
        return self._session.trail.append(action, **kwargs)


class DeploymentError(Exception):
    """A deployment action the session refuses, with what to do instead."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SavedDeployment(_Model):
    """The newest saved state of one deployment, as found in the audit chain (or its spool)."""

    deployment_id: str
    procedure_id: str
    runbook_title: str
    started_at: datetime
    started_by: str
    outcome: str
    """``in_progress`` for an unfinished deployment."""
    saved_at: datetime
    """When the state was saved (the record's time)."""
    saved_seq: int | None
    """The state record's place in the chain; None while it waits in the spool."""
    current_step: str | None
    """The step the deployment stands at (None when none is left)."""
    current_phase: str | None
    state: dict[str, Any]
    """The engine's state (:meth:`RunbookEngine.to_dict`)."""
    later_actions: list[str] = []
    """Engine events recorded after this state (a console killed mid-transition)."""

    @property
    def finished(self) -> bool:
        """True once completed, rolled back or aborted."""
        return self.outcome != "in_progress"


class DeploymentScan(_Model):
    """What the audit trail says about deployments, newest first."""

    deployments: list[SavedDeployment] = []
    error: str | None = None
    """Why the chain could not be read (only the spool was): the scan may be incomplete."""

    @property
    def unfinished(self) -> list[SavedDeployment]:
        """Deployments still in progress, newest first."""
        return [d for d in self.deployments if not d.finished]


def scan_deployments(trail: AuditTrail) -> DeploymentScan:
    """Read the chain (then the spool) and return every deployment's newest saved state.

    A deployment counts as finished when its saved state says so or an engine event ending
    it (``deployment.completed``/``rolled_back``/``aborted``) follows the state. Records
    that cannot be read make the scan say so (``error``), never raise.
    """
    latest: dict[str, dict[str, Any]] = {}
    later: dict[str, list[str]] = {}
    ended: dict[str, bool] = {}
    order: list[str] = []
    error: str | None = None

    def take(
        action: str,
        deployment_id: str | None,
        evidence: dict[str, Any],
        at: datetime,
        seq: int | None,
    ) -> None:
        if action == STATE_ACTION:
            named = evidence.get("deployment_id")
            deployment_id = named if isinstance(named, str) else None
        if not deployment_id:
            return
        if deployment_id not in order:
            order.append(deployment_id)
        if action == STATE_ACTION:
            state = evidence.get("state")
            if isinstance(state, dict):
                latest[deployment_id] = {
                    "state": state,
                    "at": at,
                    "seq": seq,
                    "current": evidence.get("current_step"),
                    "phase": evidence.get("phase"),
                }
                later[deployment_id] = []
                ended[deployment_id] = False
            return
        if deployment_id in latest and action.startswith(_ENGINE_ACTIONS):
            later[deployment_id].append(action)
        if action in TERMINAL_ACTIONS:
            ended[deployment_id] = True

    try:
        for record in trail.records():
            take(record.action, record.deployment_id, record.evidence, record.at, record.seq)
    except AuditStoreError as exc:
        error = f"the audit store cannot be read ({exc}); only the local spool was searched"
    except Exception as exc:  # a damaged row must not stop the console from starting
        error = f"the audit chain cannot be read: {type(exc).__name__}: {exc}"
    try:
        for draft in trail.pending_drafts():
            take(draft.action, draft.deployment_id, draft.evidence, draft.at, None)
    except OSError as exc:
        error = (error + "; " if error else "") + f"the audit spool cannot be read: {exc}"

    found: list[SavedDeployment] = []
    for deployment_id in order:
        saved = latest.get(deployment_id)
        if saved is None:
            continue
        state = saved["state"]
        outcome = str(state.get("outcome") or "in_progress")
        if ended.get(deployment_id) and outcome == "in_progress":
            outcome = "ended"
        try:
            found.append(
                SavedDeployment(
                    deployment_id=deployment_id,
                    procedure_id=str(state.get("procedure_id") or ""),
                    runbook_title=str(state.get("runbook_title") or ""),
                    started_at=state["started_at"],
                    started_by=str(state.get("started_by") or ""),
                    outcome=outcome,
                    saved_at=saved["at"],
                    saved_seq=saved["seq"],
                    current_step=saved["current"],
                    current_phase=saved["phase"],
                    state=state,
                    later_actions=later.get(deployment_id, []),
                )
            )
        except (KeyError, ValueError) as exc:
            error = (error + "; " if error else "") + (
                f"the saved state of deployment {deployment_id} is malformed: {exc}"
            )
    found.sort(key=lambda d: (d.started_at, d.deployment_id), reverse=True)
    return DeploymentScan(deployments=found, error=error)


class GateView(_Model):
    """Whether "Continue" may be pressed now, and every reason why not."""

    step_id: str | None
    kind: StepKind | None
    """The effective kind (a command without argv is an attestation)."""
    state: StepState | None
    open: bool
    reasons: list[str] = []
    gate: Gate | None = None
    """The engine's own gate (its live outcomes), when a step is left."""
    confirm_typed: str | None = None
    """Destructive step: the environment name to type."""
    typed_ok: bool = True
    four_eyes: bool = False
    needs_note: bool = False
    """An attestation: Continue asks for a note."""
    can_skip: bool = False
    skip_reason: str = ""
    """Why Skip is not possible (empty when it is)."""
    can_cancel: bool = False
    """A command runs and can be cancelled."""
    failed_by_alert: bool = False
    """A monitor window a critical alert failed: the way on is closed (rollback is offered;
    Continue only runs the window again)."""


class _ApprovalCoordinator(Protocol):
    async def request_approval(self, gate: str, *, deployment_id: str | None = None) -> Any:
        """Ask a second operator."""
        ...

    async def wait_for_approval(self, approval: Any, timeout_s: float) -> Any:
        """Wait for the approval."""
        ...


def coordinator_approver(
    coordinator: Coordinator | _ApprovalCoordinator, timeout_s: float = 300.0
) -> Approver:
    """An :data:`Approver` asking a second operator through the multi-operator coordinator.

    The request appears on the other consoles; the gate opens when a different principal
    approves it, within ``timeout_s``.
    """

    async def approve(step_id: str, deployment_id: str) -> str:
        request = await coordinator.request_approval(step_id, deployment_id=deployment_id)
        approved = await coordinator.wait_for_approval(request, timeout_s)
        approver = getattr(approved, "approver", None)
        if not approver:
            raise DeploymentError(f"the approval of gate {step_id!r} names no approver")
        return str(approver)

    return approve


class DeploymentSession:
    """One console's handle on a deployment: start or resume, drive, persist.

    Create it with the collaborators (or with :func:`open_session` from the config), then
    :meth:`start` a new deployment or :meth:`resume` a saved one. Every method that changes
    the deployment goes to the engine, whose events go to the audit trail; the state is
    saved in the trail after each transition.

    Args:
        config: The console configuration.
        runbook: The runbook (already validated against the config).
        trail: The audit trail (store plus spool).
        operator: Who is at the keyboard (``user@host``).
        traffic: The traffic switch (None: traffic steps refuse to run).
        reporter: The report writer (None: report steps become attestations).
        clock: "Now" for the engine and the records.
        approver: Asks for a second operator on four-eyes gates (None: those gates stay
            closed, saying why).
        on_rollback: The engine's rollback hook (called when a monitor window fails on a
            critical alert).
        on_change: Called after anything changed (to redraw).
    """

    def __init__(
        self,
        config: AppConfig,
        runbook: Runbook,
        trail: AuditTrail,
        *,
        operator: str,
        traffic: TrafficSwitch | None = None,
        reporter: Reporter | None = None,
        clock: Callable[[], datetime] = utcnow,
        approver: Approver | None = None,
        on_rollback: RollbackHook | None = None,
        on_change: ChangeHook | None = None,
    ) -> None:
        self.config = config
        self.runbook = runbook
        self.trail = trail
        self.operator = operator
        self.traffic = traffic
        self.reporter = reporter
        self.clock = clock
        self.approver = approver
        self.on_rollback = on_rollback
        self.on_change = on_change
        self._engine: RunbookEngine | None = None
        # operators (issue 7): the lease's fencing number goes with every record.
        self.fence: int | None = None
        """The lease's fencing number stored with this session's audit records (None: no lease)."""
        self.drive_guard: DriveGuard | None = None
        """Asked before every driving action (None: a single console, it always may)."""
        self.on_record: RecordHook | None = None
        """Receives each engine event once recorded (the console publishes it to the others)."""
        self._view_only = False
        self._sink = audit_sink(_FencedTrail(self))
        self._last_action: str | None = None
        self._pending_state: dict[str, Any] | None = None
        self._fired_seen = 0
        self._busy: str | None = None
        self.split: TrafficSplit | None = None
        """The last split read back from the load balancer by this session."""
        self.persist_error: str | None = None
        """Why the last state record could not be stored or spooled (None when it was)."""
        self.state_records = 0
        """State records appended by this session."""
        self.resumed_from: SavedDeployment | None = None
        """The saved deployment this session resumed, if it did."""

    # --- the engine and what it shows ------------------------------------------------------

    @property
    def engine(self) -> RunbookEngine:
        """The running engine.

        Raises:
            DeploymentError: no deployment was started or resumed.
        """
        if self._engine is None:
            raise DeploymentError("no deployment is running: start one or resume the saved one")
        return self._engine

    @property
    def active(self) -> bool:
        """A deployment is loaded (finished or not)."""
        return self._engine is not None

    @property
    def view_only(self) -> bool:
        """The loaded deployment is only shown: another console drives it (see :meth:`view`)."""
        return self._view_only

    @property
    def deployment_id(self) -> str | None:
        """``YYYYMMDD_HHMMSS`` of the deployment, if one is loaded."""
        return self._engine.deployment_id if self._engine is not None else None

    @property
    def finished(self) -> bool:
        """The loaded deployment is over (False when none is loaded)."""
        return self._engine is not None and self._engine.finished

    @property
    def busy(self) -> str | None:
        """What the session is doing right now (a command, a traffic move), if anything."""
        return self._busy

    def current(self) -> tuple[Phase, Step] | None:
        """The current phase and step (None when none is left or nothing is loaded)."""
        return self._engine.current() if self._engine is not None else None

    def current_phase(self) -> Phase | None:
        """The phase the deployment stands in (the last one once finished)."""
        if self._engine is None:
            return None
        cur = self._engine.current()
        if cur is not None:
            return cur[0]
        started = [
            p for p in self._engine.procedure.phases if p.id in self._engine.state.phase_started
        ]
        return started[-1] if started else None

    def phases(self) -> list[Phase]:
        """The procedure's phases, in order."""
        return list(self.engine.procedure.phases)

    def record(self, step_id: str) -> StepRecord:
        """A step's state and evidence."""
        return self.engine.record(step_id)

    def phase_clock(self, phase_id: str) -> PhaseClock:
        """A phase's elapsed time against its budget."""
        return self.engine.phase_clock(phase_id)

    def monitor_progress(self) -> MonitorProgress | None:
        """The running monitor window, if any."""
        return self._engine.monitor_progress() if self._engine is not None else None

    @property
    def rollback_offered(self) -> bool:
        """A monitor window failed on a critical alert: rollback is offered."""
        return self._engine is not None and self._engine.rollback_offered

    @property
    def rollback_reason(self) -> str:
        """Why rollback is offered."""
        return self._engine.state.rollback_reason if self._engine is not None else ""

    def gate_view(self, typed: str | None = None) -> GateView:
        """Whether Continue may be pressed now (with ``typed`` as the typed confirmation)."""
        if self._engine is None:
            return GateView(
                step_id=None, kind=None, state=None, open=False, reasons=["no deployment"]
            )
        engine = self._engine
        gate = engine.gate()
        if gate is None:
            reason = (
                f"deployment {engine.deployment_id} is over ({engine.state.outcome})"
                if engine.finished
                else "no step is left"
            )
            return GateView(step_id=None, kind=None, state=None, open=False, reasons=[reason])
        reasons = list(gate.reasons)
        if self._busy and not any("running" in r for r in reasons):
            reasons.insert(0, f"busy: {self._busy}")
        typed_ok = True
        if gate.confirm_typed is not None and gate.kind is not StepKind.CHECK:
            typed_ok = (typed or "").strip() == gate.confirm_typed
            if not typed_ok:
                reasons.append(f"destructive step: type {gate.confirm_typed!r} to confirm")
        if gate.four_eyes and self.approver is None:
            reasons.append(
                "four eyes: this gate needs a second operator's approval, and this console "
                "has no coordination to ask for one"
            )
        if gate.kind is StepKind.TRAFFIC and self.traffic is None:
            reasons.append("no traffic switch is connected")
        # operators (issue 7): a console that does not drive sees every gate closed, and why.
        if self._view_only:
            reasons.insert(0, "read-only: another console drives this deployment")
        elif self.drive_guard is not None:
            try:
                self.drive_guard.check("go ahead")
            except DeploymentError as exc:
                reasons.insert(0, str(exc))
        record = engine.record(gate.step_id)
        can_skip, skip_reason = self._skippable(gate, record)
        return GateView(
            step_id=gate.step_id,
            kind=gate.kind,
            state=gate.state,
            open=not reasons,
            reasons=reasons,
            gate=gate,
            confirm_typed=gate.confirm_typed,
            typed_ok=typed_ok,
            four_eyes=gate.four_eyes,
            needs_note=gate.kind is StepKind.ATTESTATION,
            can_skip=can_skip,
            skip_reason=skip_reason,
            can_cancel=gate.kind is StepKind.COMMAND and gate.state is StepState.RUNNING,
            failed_by_alert=record.failed_by_alert,
        )

    def _skippable(self, gate: Gate, record: StepRecord) -> tuple[bool, str]:
        step = next(s for _, s in self.engine.procedure.steps() if s.id == gate.step_id)
        if self._busy:
            return False, f"busy: {self._busy}"
        if isinstance(step, TrafficStep):
            return False, "a traffic step cannot be skipped: set the split again, or roll back"
        if record.failed_by_alert:
            return False, "the window failed on a firing alert: run it again or roll back"
        if record.state is StepState.RUNNING:
            return False, "the step is running"
        if gate.kind is StepKind.ATTESTATION or record.state is StepState.FAILED:
            return True, ""
        if gate.kind is StepKind.CHECK and not gate.open:
            # Skipping records the failing check first (its evidence), then the skip.
            return True, ""
        if gate.kind is StepKind.CHECK:
            return False, "the checks pass: continue instead"
        return False, f"only a failed step can be skipped: run {gate.step_id!r} first"

    # --- starting and resuming -------------------------------------------------------------

    def _wire(self) -> dict[str, Any]:
        return {
            "sink": self._on_event,
            "clock": self.clock,
            "traffic": self.traffic,
            "reporter": self.reporter,
            "on_rollback": self._on_rollback,
            "on_state": self._on_state,
        }

    def start(self, procedure: str = "deployment") -> RunbookEngine:
        """Begin a new deployment (id ``YYYYMMDD_HHMMSS`` of now) and save its first state.

        Raises:
            DeploymentError: one is already loaded, the id is taken, or the engine refuses.
        """
        if self._engine is not None and not self._engine.finished and not self._view_only:
            raise DeploymentError(
                f"deployment {self._engine.deployment_id} is still in progress: finish or end it first"
            )
        self._guard("start a deployment", replacing_view=True)  # operators (issue 7)
        deployment_id = deployment_id_for(self.clock())
        if self._id_taken(deployment_id):
            raise DeploymentError(
                f"the audit trail already holds a deployment {deployment_id}: "
                "start again in a second (ids are the start time to the second)"
            )
        with self._operation():
            try:
                self._engine = RunbookEngine.start(
                    self.runbook,
                    self.config,
                    self.operator,
                    procedure=procedure,
                    deployment_id=deployment_id,
                    **self._wire(),
                )
            except AuditSinkError:
                raise
            except EngineError as exc:
                raise DeploymentError(str(exc)) from None
            self._fired_seen = 0
            self._view_only = False
        return self._engine

    def _id_taken(self, deployment_id: str) -> bool:
        try:
            for _ in self.trail.records(deployment_id=deployment_id):
                return True
        except AuditStoreError:
            pass
        try:
            return any(d.deployment_id == deployment_id for d in self.trail.pending_drafts())
        except OSError:
            return False

    def resume(self, saved: SavedDeployment) -> RunbookEngine:
        """Take up a saved deployment where it stood (the running step comes back interrupted).

        Call :meth:`read_back_traffic` right after: the split is the load balancer's.

        Raises:
            DeploymentError: it is finished, or its state does not fit this runbook/config.
        """
        if saved.finished:
            raise DeploymentError(
                f"deployment {saved.deployment_id} is over ({saved.outcome}): nothing to resume"
            )
        if self._engine is not None and not self._engine.finished and not self._view_only:
            raise DeploymentError(
                f"deployment {self._engine.deployment_id} is loaded already: end it first"
            )
        self._guard(f"resume {saved.deployment_id}", replacing_view=True)  # operators (issue 7)
        with self._operation():
            try:
                self._engine = RunbookEngine.restore(
                    saved.state, self.runbook, self.config, self.operator, **self._wire()
                )
            except AuditSinkError:
                raise
            except EngineError as exc:
                raise DeploymentError(str(exc)) from None
            self._fired_seen = len(self._engine.state.fired)
            self._view_only = False
        self.resumed_from = saved
        return self._engine

    def abandon(self, saved: SavedDeployment, reason: str) -> None:
        """Close a saved, unfinished deployment as aborted (resumed just to record the end).

        Raises:
            DeploymentError: no reason, or it cannot be restored.
        """
        if not reason.strip():
            raise DeploymentError("abandoning a deployment needs a reason")
        self.resume(saved)
        self.end("aborted", reason)

    # --- several operators (issue 7) ---------------------------------------------------------

    def view(self, saved: SavedDeployment | None) -> None:
        """Show a saved deployment read-only, as another console drives it (None: show none).

        Nothing is recorded and nothing runs: the state is the newest one in the audit
        trail, a step the driver is running shows as running, and every driving action is
        refused until this console takes the lead and resumes it (:meth:`resume`).

        Raises:
            DeploymentError: this session is busy driving, or the state does not fit the runbook.
        """
        if self._busy:
            raise DeploymentError(f"busy: {self._busy}")
        if saved is None:
            engine = None
        else:
            try:
                state = EngineState.model_validate(saved.state)
                engine = RunbookEngine(self.runbook, self.config, state, clock=self.clock)
            except (ValueError, KeyError) as exc:
                raise DeploymentError(
                    f"deployment {saved.deployment_id} cannot be shown: {exc}"
                ) from None
        self._engine = engine
        self._view_only = engine is not None
        self._pending_state = None
        self._fired_seen = len(engine.state.fired) if engine is not None else 0
        self.resumed_from = None
        self._changed()

    def _guard(self, action: str, *, replacing_view: bool = False) -> None:
        """Refuse a driving action this console may not take; keep the fence for its records."""
        if self._view_only and self._engine is not None and not replacing_view:
            raise DeploymentError(
                f"cannot {action}: deployment {self._engine.deployment_id} is only shown here "
                "(another console drives it); take the lead and resume it to drive"
            )
        if self.drive_guard is not None:
            self.fence = self.drive_guard.check(action)

    async def _confirm(self, action: str) -> None:
        """:meth:`_guard`, with the lease confirmed by the coordination store."""
        self._guard(action)
        if self.drive_guard is not None:
            self.fence = await self.drive_guard.confirm(action)

    async def read_back_traffic(self) -> TrafficSplit:
        """Read the split from the load balancer now and record it (after a resume).

        Raises:
            DeploymentError: no deployment or no traffic switch.
        """
        engine = self.engine
        if self.traffic is None:
            raise DeploymentError("no traffic switch is connected: the split cannot be read back")
        with self._operation():
            try:
                self.split = await engine.read_back_traffic(self.operator)
            except EngineError as exc:
                raise DeploymentError(str(exc)) from None
        return self.split

    # --- driving -----------------------------------------------------------------------------

    def observe(self, snapshot: Snapshot) -> None:
        """Feed the newest snapshot (gates, alerts seen, monitor windows use it)."""
        if self._engine is None or self._view_only:
            return
        with self._operation():
            self._engine.observe(snapshot)
            fired = len(self._engine.state.fired)
            if fired != self._fired_seen and self._pending_state is None:
                # Alerts seen firing matter to later "none fired during the phase" gates.
                self._pending_state = self._engine.to_dict()
            self._fired_seen = fired

    def tick(self) -> None:
        """Close the monitor window when its time is up (call it about once a second)."""
        if self._engine is None or self._view_only:
            return
        with self._operation():
            self._engine.tick()

    async def proceed(
        self,
        *,
        note: str | None = None,
        typed: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> StepRecord:
        """The current step's "Continue": check, attest, run, move traffic, watch, report.

        Args:
            note: The attestation note (attestation steps).
            typed: The typed environment name (destructive steps).
            on_output: Receives a command's output lines as they arrive.

        Raises:
            DeploymentError: the step cannot go ahead now (with the reason).
        """
        engine = self.engine
        if self._busy:
            raise DeploymentError(f"busy: {self._busy}")
        cur = engine.current()
        if cur is None:
            raise DeploymentError("no step is left")
        _, step = cur
        await self._confirm(f"go ahead with step {step.id!r}")  # operators (issue 7)
        kind = engine.effective_kind(step)
        approved_by: str | None = None
        if engine.four_eyes(step.id):
            if self.approver is None:
                raise DeploymentError(
                    f"step {step.id!r} needs a second operator's approval (four eyes) and this "
                    "console has no coordination to ask for one"
                )
            self._busy = f"waiting for a second operator to approve {step.id}"
            self._changed()
            try:
                approved_by = await self.approver(step.id, engine.deployment_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise DeploymentError(f"gate {step.id!r} stays closed: {exc}") from None
            finally:
                self._busy = None
            self._guard(f"go ahead with step {step.id!r}")  # operators: still the lead?
        if kind in (StepKind.COMMAND, StepKind.TRAFFIC, StepKind.REPORT):
            self._busy = {
                StepKind.COMMAND: f"running {step.id}",
                StepKind.TRAFFIC: f"moving traffic ({step.id})",
                StepKind.REPORT: f"writing the report ({step.id})",
            }[kind]
        try:
            with self._operation():
                return await engine.proceed(
                    self.operator,
                    note=note,
                    typed=typed,
                    approved_by=approved_by,
                    on_output=on_output,
                )
        except AuditSinkError:
            raise
        except EngineError as exc:
            raise DeploymentError(str(exc)) from None
        finally:
            self._busy = None
            self._changed()

    def skip(self, reason: str) -> StepRecord:
        """Skip the current step with a reason (a failing check is recorded as failed first).

        Raises:
            DeploymentError: no reason, or a step that cannot be skipped (with why).
        """
        engine = self.engine
        if not reason or not reason.strip():
            raise DeploymentError("skipping a step needs a reason")
        view = self.gate_view()
        if view.step_id is None:
            raise DeploymentError(view.reasons[0] if view.reasons else "no step is left")
        if not view.can_skip:
            raise DeploymentError(f"step {view.step_id!r} cannot be skipped: {view.skip_reason}")
        self._guard(f"skip step {view.step_id!r}")  # operators (issue 7)
        try:
            with self._operation():
                record = engine.record(view.step_id)
                if view.kind is StepKind.CHECK and record.state is not StepState.FAILED:
                    checked = engine.check(self.operator, view.step_id)
                    if checked.state is not StepState.FAILED:
                        return checked
                return engine.skip(self.operator, reason, view.step_id)
        except AuditSinkError:
            raise
        except EngineError as exc:
            raise DeploymentError(str(exc)) from None

    def cancel_command(self) -> bool:
        """Stop the running command (its whole process group); False when none runs."""
        if self._engine is None:
            return False
        return self._engine.cancel_command(self.operator)

    def end(self, outcome: Literal["rolled_back", "aborted"], reason: str) -> None:
        """End the deployment early (after a rollback, or abandoned), with a reason.

        Raises:
            DeploymentError: nothing to end, no reason, or a command still runs.
        """
        engine = self.engine
        self._guard(f"end deployment {engine.deployment_id}")  # operators (issue 7)
        try:
            with self._operation():
                engine.end(self.operator, outcome, reason)
        except AuditSinkError:
            raise
        except EngineError as exc:
            raise DeploymentError(str(exc)) from None

    def flush(self) -> FlushResult:
        """Move spooled records into the store (call it now and then; blocking I/O)."""
        return self.trail.flush()

    async def aclose(self) -> None:
        """Save what is pending and release the traffic switch (the trail is the caller's)."""
        self._save_state()
        closer = getattr(self.traffic, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()

    # --- persistence -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _operation(self) -> Iterator[None]:
        """Around every engine call: the state its events left is saved when it returns."""
        try:
            yield
        finally:
            self._save_state()
            self._changed()

    def _on_event(self, action: str, evidence: dict[str, Any]) -> None:
        self._last_action = action
        self._sink(action, evidence)
        if self.on_record is not None:  # operators (issue 7): tell the other consoles
            try:
                self.on_record(action, evidence)
            except Exception:
                log.exception("the record hook failed for %s", action)

    def _on_state(self, state: dict[str, Any]) -> None:
        self._pending_state = state
        if self._last_action == "step.started":
            # A long await may follow (a command, a traffic move, a report): save now, so a
            # console killed meanwhile finds the step running and resumes it as interrupted.
            self._save_state()

    def _save_state(self) -> None:
        state = self._pending_state
        if state is None:
            return
        self._pending_state = None
        engine = self._engine
        current: tuple[Phase, Step] | None = None
        if engine is not None and engine.deployment_id == state.get("deployment_id"):
            current = engine.current()
        evidence = {
            "deployment_id": state.get("deployment_id"),
            "procedure": state.get("procedure_id"),
            "phase": current[0].id if current else None,
            "current_step": current[1].id if current else None,
            "outcome": state.get("outcome"),
            "events": state.get("events"),
            "state": state,
        }
        try:
            result = self.trail.append(
                STATE_ACTION,
                evidence=evidence,
                # Named in the evidence only: reports list a deployment's records by the
                # column, and this is the console's bookkeeping, not an operator's action.
                deployment_id=None,
                operator=self.operator,
                at=self.clock(),
                fence=self.fence,  # operators (issue 7)
            )
        except Exception as exc:  # the trail never raises by contract; be safe all the same
            self.persist_error = f"{type(exc).__name__}: {exc}"
            log.error("saving the deployment state failed: %s", self.persist_error)
            return
        self.state_records += 1
        if result.lost:
            self.persist_error = result.error or "the state record was lost"
            log.critical("deployment state not saved: %s", self.persist_error)
        else:
            self.persist_error = None

    def _on_rollback(self, reason: str, automatic: bool) -> None:
        hook = self.on_rollback
        if hook is not None:
            try:
                hook(reason, automatic)
            except Exception:
                log.exception("the rollback hook failed (rollback is still offered)")
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("the deployment change hook failed")


def open_session(
    config: AppConfig,
    *,
    config_path: Any = None,
    operator: str | None = None,
    trail: AuditTrail | None = None,
    traffic: TrafficSwitch | None = None,
    report_dir: Any = None,
    clock: Callable[[], datetime] = utcnow,
    approver: Approver | None = None,
    on_rollback: RollbackHook | None = None,
    on_change: ChangeHook | None = None,
) -> DeploymentSession:
    """A session built from the configuration: its runbook, audit trail, switch and reporter.

    Nothing is connected yet (the trail connects on its first record, the switch on its
    first command).

    Raises:
        console.config.ConfigError: the runbook file is invalid or does not fit the config.
    """
    from pathlib import Path

    from console.audit import default_operator, open_trail
    from console.monitor import build_traffic_switch
    from console.report import make_engine_reporter
    from console.runbook.loader import load_runbook_for

    who = operator or default_operator(config)
    runbook = load_runbook_for(config, Path(config_path) if config_path is not None else None)
    trail = trail or open_trail(config, operator=who)
    switch = traffic if traffic is not None else build_traffic_switch(config)
    return DeploymentSession(
        config,
        runbook,
        trail,
        operator=who,
        traffic=switch,
        reporter=make_engine_reporter(trail, Path(report_dir) if report_dir is not None else None),
        clock=clock,
        approver=approver,
        on_rollback=on_rollback,
        on_change=on_change,
    )
