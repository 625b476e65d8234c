"""Several operators at once, in the TUI: who drives, what everyone sees, the brake, four eyes.

This module owns what the App does with :mod:`console.coordination` (the policy) when
several consoles are open on one deployment:

* :class:`OperatorsDriver` -- the App's handle. After the first frame it opens the
  coordinator (Redis from ``coordination.redis_url``, else the lock file), raises the
  fencing floor to the highest fencing number in the audit trail, starts the lease renewer,
  takes the lease when nobody holds it and subscribes to the deployment's events. It wires
  the deployment session (:meth:`OperatorsDriver.wire`): every driving action is checked
  against the lease first (:class:`LeaseGuard`; a step that changes the estate renews the
  lease with the store), the session's audit records carry the fencing number, its events
  go to the other consoles, and four-eyes gates ask a second operator.
  A console that does not drive is read-only by itself: the App hides the driving keys
  (``check_action``), the runbook screen shows the driver's deployment as recorded in the
  audit trail (reloaded on every event and after every reconnect) and every gate closed,
  with the reason on the lease line (:mod:`widgets.lease_status`).
* :class:`LeaseChanged` -- the coordinator's change of role or holder, as a message to the
  App (re-check the keys, redraw the lease line, say why the console turned read-only).
* :class:`OperatorsScreen` -- the lease in full and the four-eyes requests waiting for a
  second operator, with Approve (refused, and said so, for the operator's own request).
* :class:`BreakGlassScreen` -- F9 on a console without the lead: the emergency rollback
  after a one-line reason, recorded with the operator's identity (break-glass). An
  observer console (``--read-only``) never rolls back.

Everything here runs on the App's event loop; reading the audit trail goes to a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, Static

from backends.models import utcnow
from console.coordination import (
    ApprovalRefused,
    ApprovalUnavailable,
    EventKind,
    NotDriving,
    Role,
    SelfApprovalRefused,
    operator_principal,
)
from console.ui.screens.rollback import RollbackPhase
from widgets.lease_status import LeaseLine, LeaseStatusLine, lease_line, line_keys
from widgets.status_header import StatusHeader
from widgets.styling import badge_part
from widgets.verdicts import Badge, Level

if TYPE_CHECKING:
    from console.audit import AuditTrail
    from console.coordination import (
        Approval,
        CoordinationEvent,
        Coordinator,
        LeaseStatus,
        Subscription,
    )
    from console.deployment import DeploymentSession, SavedDeployment
    from console.rollback import RollbackEvent
    from console.ui.app import ConsoleApp

__all__ = [
    "BREAK_GLASS_REASON",
    "OPERATOR_ACTIONS",
    "BreakGlassScreen",
    "LeaseChanged",
    "LeaseGuard",
    "OperatorsDriver",
    "OperatorsScreen",
    "highest_fence",
    "shared_event",
]

log = logging.getLogger(__name__)

BREAK_GLASS_REASON = "break-glass"
"""The reason the break-glass question starts with (the operator may say more)."""

OPERATOR_ACTIONS = frozenset({"take_lead", "hand_over", "operators"})
"""The App's actions this module decides on (``check_action``)."""

APPROVALS_EVERY_S = 5.0
"""How often waiting four-eyes requests are re-read besides the events that announce them."""

RECEIVED_KEPT = 200
"""Events from other consoles kept for the operators screen and tests."""


class LeaseChanged(Message):
    """The coordinator's role, holder or reason changed (posted from its ``on_change``)."""


# --- helpers ----------------------------------------------------------------------------------


def highest_fence(trail: AuditTrail) -> int | None:
    """The highest fencing number in the audit trail (the chain and the spool), if any.

    The coordinator takes it as a floor, so a Redis that lost its data never hands out a
    fencing number that an earlier lease already stored with its records.
    """
    best: int | None = None
    try:
        for record in trail.records():
            if record.fence is not None and (best is None or record.fence > best):
                best = record.fence
    except Exception as exc:  # an unreachable store: the spool and the coordinator's own floor
        log.warning("fencing numbers could not be read from the audit store: %s", exc)
    try:
        for draft in trail.pending_drafts():
            if draft.fence is not None and (best is None or draft.fence > best):
                best = draft.fence
    except OSError as exc:
        log.warning("fencing numbers could not be read from the audit spool: %s", exc)
    return best


def shared_event(action: str, evidence: dict[str, Any]) -> tuple[EventKind, dict[str, Any]]:
    """The channel's event kind and a small summary for one of the engine's audit records."""
    if action.startswith("rollback."):
        kind = EventKind.ROLLBACK
    elif action.startswith("traffic.") or evidence.get("kind") == "traffic":
        kind = EventKind.TRAFFIC
    else:
        kind = EventKind.STEP
    data: dict[str, Any] = {
        key: evidence[key]
        for key in ("step", "step_title", "phase", "state", "kind")
        if evidence.get(key) is not None
    }
    reason = evidence.get("reason")
    if isinstance(reason, str) and reason:
        data["reason"] = reason[:300]
    split = evidence.get("split")
    if isinstance(split, dict) and split.get("green_percentage") is not None:
        data["green_percentage"] = split["green_percentage"]
    return kind, data


def describe_event(event: CoordinationEvent) -> tuple[str, str] | None:
    """What another console's event says to this operator: ``(message, severity)``, or None."""
    who = event.operator
    data = event.data
    step = data.get("step")
    action = event.action
    if event.kind is EventKind.BREAK_GLASS:
        return (
            f"BREAK-GLASS: {who} pulled the emergency brake: {data.get('reason', '?')}",
            "error",
        )
    if event.kind is EventKind.ROLLBACK:
        if action == "rollback.started":
            return f"{who} started the emergency rollback to blue", "error"
        if action == "rollback.finished":
            return f"{who}'s rollback ended: {data.get('outcome', '?')}", "warning"
        if action == "rollback.offered":
            return f"rollback offered on {who}'s console: {data.get('reason', '')}", "warning"
        return None
    if event.kind is EventKind.TRAFFIC:
        if action == "traffic.read_back" and "green_percentage" in data:
            return f"{who} read the split back: {data['green_percentage']:g} % green", "information"
        if action == "step.started":
            return f"{who} is moving traffic ({step})", "warning"
        if action.startswith("step."):
            return f"{who}: traffic step {step} {data.get('state', action[5:])}", "information"
        return None
    if event.kind is EventKind.LEASE:
        if action == "lease.acquired":
            return f"{who} took the lead (fence {data.get('fence', '?')})", "information"
        if action == "lease.released":
            return f"{who} handed over: the lease is free", "warning"
        return None
    if event.kind is EventKind.APPROVAL:
        gate = data.get("gate", "?")
        if action == "approval.requested":
            return (
                f"{who} asks a second operator to approve gate {gate} (operators screen)",
                "warning",
            )
        if action == "approval.approved":
            return f"{who} approved gate {gate} for {data.get('requester', '?')}", "information"
        return None
    if action.startswith("deployment.") or action == "phase.started":
        what = action.split(".", 1)[1].replace("_", " ")
        subject = f"phase {data.get('phase')}" if action == "phase.started" else "deployment"
        return f"{who}: {subject} {what} ({event.deployment_id or '?'})", "information"
    return None


class LeaseGuard:
    """The deployment session's :class:`~console.deployment.DriveGuard` on the coordinator.

    ``check`` answers from local knowledge (the holder's deadline passes before anyone else
    can take the lease); ``confirm`` renews the lease with the store before a step that
    changes the estate. Both return the fencing number the audit records carry.
    """

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def check(self, action: str) -> int | None:
        """The fencing number, or :class:`~console.deployment.DeploymentError` saying why not."""
        from console.deployment import DeploymentError

        fence = self.coordinator.fence
        if fence is None:
            raise DeploymentError(f"cannot {action}: {self.coordinator.status().reason}")
        return fence

    async def confirm(self, action: str) -> int | None:
        """Renew the lease with the store, then the fencing number (or why not)."""
        from console.deployment import DeploymentError

        try:
            return await self.coordinator.ensure_can_drive(action)
        except NotDriving as exc:
            again = (
                "; the lease was taken anew: look at the deployment again, then go ahead"
                if exc.status.can_drive
                else ""
            )
            raise DeploymentError(f"{exc}{again}") from None


# --- the App's handle -------------------------------------------------------------------------


class OperatorsDriver:
    """The App's side of several operators: lease, shared state, break-glass, approvals.

    Args:
        app: The console App.
        enabled: Coordinate with other consoles (``run_tui`` does; a console built without
            it drives alone, as before).
    """

    def __init__(self, app: ConsoleApp, *, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled
        self.coordinator: Coordinator | None = None
        self.subscription: Subscription | None = None
        self.status: LeaseStatus | None = None
        """The status last applied (role changes are measured against it)."""
        self.error: str | None = None
        """Why coordination could not start (the console then stays read-only)."""
        self.started = False
        self.approvals: list[Approval] = []
        """Four-eyes requests waiting for a second operator, as last read."""
        self.approvals_error: str | None = None
        self.received: deque[CoordinationEvent] = deque(maxlen=RECEIVED_KEPT)
        """Events from other consoles, oldest first."""
        self.reloads = 0
        """Times the driver's deployment was reloaded from the audit trail into the view."""
        self.glass_results: list[Any] = []
        """Audit append results of this console's break-glass records."""
        self._outbox: asyncio.Queue[tuple[EventKind, str, dict[str, Any], str | None]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_wanted = asyncio.Event()
        self._reload_id: str | None = None
        self._view_version: tuple[str, int | None, str] | None = None
        self._glass: BreakGlassScreen | None = None
        self._screen: OperatorsScreen | None = None
        self._approvals_at = 0.0
        self._approvals_busy = False
        self._view_error: str | None = None

    @staticmethod
    def binding_sources() -> list[list[Any]]:
        """The bindings of this module's screens (for the App's keymap check)."""
        return [list(OperatorsScreen.BINDINGS), list(BreakGlassScreen.BINDINGS)]

    # -- start and stop ----------------------------------------------------------------------

    def launch(self) -> None:
        """Start in a worker after the first frame (Redis may be slow, or down)."""
        self.app.run_worker(self.start(), group="operators-start", exit_on_error=False)

    async def start(self) -> None:
        """Open the coordinator, take the lease if free, subscribe; then start the runbook."""
        try:
            await self._open()
        except Exception as exc:
            log.exception("coordination could not start")
            self.error = f"coordination could not start: {type(exc).__name__}: {exc}"
            self.app.notify(
                f"{self.error}. This console is read-only; F9 still rolls back.",
                title="operators",
                severity="error",
                timeout=30,
            )
        coordinator = self.coordinator
        self.status = coordinator.status() if coordinator is not None else None
        self.started = True
        self.ensure_lines()
        self.render()
        self.app.refresh_bindings()
        await self.app.runbook_driver.startup()

    async def _open(self) -> None:
        from console.coordination import open_coordinator

        session = self.app.runbook_driver.ensure_session()
        floor = await asyncio.to_thread(highest_fence, session.trail) if session else None
        coordinator = open_coordinator(
            self.app.config,
            operator=self.app.operator,
            read_only=self.app.read_only,
            on_change=self._on_change,
        )
        self.coordinator = coordinator
        coordinator.note_fence(floor)
        await coordinator.start()
        if not self.app.read_only:
            await coordinator.acquire()
        if self.app.runbook_driver.session is not None:
            self.wire(self.app.runbook_driver.session)
        self._outbox = asyncio.Queue()
        self._tasks.append(asyncio.create_task(self._publish_loop(), name="operators-publish"))
        self._tasks.append(asyncio.create_task(self._follow_loop(), name="operators-follow"))
        self.subscription = coordinator.subscribe(self._on_event, self._resync)

    async def aclose(self) -> None:
        """Stop the tasks, release the lease (a quitting console hands over), close the store."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        coordinator = self.coordinator
        if coordinator is not None:
            try:
                await asyncio.wait_for(coordinator.aclose(), 5.0)
            except Exception:
                log.exception("closing the coordinator failed")

    # -- what the App asks -------------------------------------------------------------------

    @property
    def fence(self) -> int | None:
        """The fencing number this console drives with (None without the lease)."""
        return self.coordinator.fence if self.coordinator is not None else None

    def can_drive(self) -> bool:
        """Whether this console may drive now (always, when it does not coordinate)."""
        if not self.enabled:
            return True
        coordinator = self.coordinator
        return coordinator is not None and coordinator.can_drive()

    def reason(self) -> str:
        """Why this console drives or is read-only, in words for the operator."""
        if not self.enabled:
            return ""
        coordinator = self.coordinator
        if coordinator is None:
            return self.error or "coordination is starting: read-only until the lease is known"
        return coordinator.status().reason

    def check_action(self, action: str) -> bool | None:
        """The App's ``check_action`` for :data:`OPERATOR_ACTIONS`.

        Without coordination the keys are listed but disabled; with it, take the lead only
        while this console does not drive, hand over only while it holds the lease.
        """
        if not self.enabled:
            return None
        coordinator = self.coordinator
        if action == "operators":
            return True
        if coordinator is None or self.app.read_only:
            return False
        if action == "take_lead":
            return not coordinator.can_drive()
        if action == "hand_over":
            return coordinator.role in (Role.DRIVING, Role.SUSPENDED)
        return True

    def wants_break_glass(self) -> bool:
        """F9 here is break-glass: coordination says this console does not drive."""
        return (
            self.enabled and not self.can_drive() and self.app.rollback.phase is RollbackPhase.IDLE
        )

    def wire(self, session: DeploymentSession) -> None:
        """Put the session under the lease: guard, fencing number, events, four eyes."""
        coordinator = self.coordinator
        if coordinator is None:
            return
        from console.deployment import coordinator_approver

        session.drive_guard = LeaseGuard(coordinator)
        session.approver = coordinator_approver(coordinator)
        session.on_record = self._recorded
        session.fence = coordinator.fence

    # -- lease changes -----------------------------------------------------------------------

    def _on_change(self, status: LeaseStatus) -> None:
        # Called inside the coordinator (maybe holding its lock): act on it as a message.
        self.app.post_message(LeaseChanged())

    def apply(self) -> None:
        """A lease change: re-check the keys, redraw, and say why the console turned read-only."""
        coordinator = self.coordinator
        if not self.app.screen_stack:
            return  # the App is closing (its lease is being released)
        if coordinator is None:
            self.render()
            return
        status = coordinator.status()
        before = self.status
        self.status = status
        session = self.app.runbook_driver.session
        if session is not None and not session.busy:
            session.fence = status.fence
        self.render()
        self.app.refresh_bindings()
        if not self.started or before is None:
            return
        if before.can_drive and not status.can_drive:
            self.app.notify(
                f"This console no longer drives: {status.reason}",
                title="lease",
                severity="error",
                timeout=20,
            )
        elif status.can_drive and (not before.can_drive or before.fence != status.fence):
            self.app.notify(status.reason, title="lease: this console drives", timeout=10)
            self.app.run_worker(
                self.app.runbook_driver.became_driver(),
                group="operators-lead",
                exclusive=True,
                exit_on_error=False,
            )
        elif status.role is Role.UNAVAILABLE and before.role is not Role.UNAVAILABLE:
            self.app.notify(status.reason, title="lease", severity="error", timeout=20)

    # -- the lease line --------------------------------------------------------------------------

    def _keys(self) -> dict[str, str]:
        shown: dict[str, str] = {}
        try:
            bindings = self.app.screen.active_bindings
        except Exception:  # no screen yet, or the App is closing
            return shown
        for active in bindings.values():
            binding = active.binding
            if binding.action in ("take_lead", "hand_over", "operators", "rollback"):
                shown.setdefault(binding.action, self.app.get_key_display(binding))
        return shown

    def line(self) -> LeaseLine:
        """The lease line as of now."""
        coordinator = self.coordinator
        keys = line_keys(self._keys())
        if coordinator is None:
            text = self.error or "coordination is starting: read-only until the lease is known"
            return LeaseLine(
                Level.CRITICAL,
                [Content.assemble(badge_part(Badge(Level.CRITICAL, "read-only")), " ", text)],
            )
        # Only the requests this operator can act on: their own waits on someone else.
        waiting = sum(1 for approval in self.approvals if not self.is_own(approval))
        return lease_line(coordinator.status(), utcnow(), keys, waiting_approvals=waiting)

    def ensure_lines(self) -> None:
        """Put a lease line under the header of every full screen that lacks one."""
        if not self.enabled or not self.app.screen_stack:
            return
        for screen in self.app.screen_stack:
            if isinstance(screen, ModalScreen) or screen.query(LeaseStatusLine):
                continue
            headers = screen.query(StatusHeader)
            if not headers:
                continue
            line = LeaseStatusLine(id="lease-line")
            line.show(self.line())
            screen.mount(line, after=headers.first())

    def render(self) -> None:
        """Redraw every lease line (countdowns move once a second)."""
        if not self.enabled or not self.app.screen_stack:
            return
        line = self.line()
        for screen in self.app.screen_stack:
            for widget in screen.query(LeaseStatusLine):
                widget.show(line)
        if self._screen is not None and self._screen.is_attached:
            self._screen.show()

    def tick(self) -> None:
        """Once a second: lines where they are missing, countdowns, approvals now and then."""
        if not self.enabled:
            return
        self.ensure_lines()
        self.render()
        now = time.monotonic()
        if (
            self.coordinator is not None
            and not self._approvals_busy
            and now - self._approvals_at >= APPROVALS_EVERY_S
        ):
            self._approvals_at = now
            self.app.run_worker(
                self.refresh_approvals(), group="operators-approvals", exit_on_error=False
            )

    # -- taking and handing over the lead ---------------------------------------------------------

    async def take_lead(self) -> bool:
        """Take the lease when nobody holds it (or it expired); say what happened."""
        coordinator = self.coordinator
        if coordinator is None:
            self.app.notify(self.reason(), title="take the lead", severity="error")
            return False
        status = await coordinator.acquire()
        if status.can_drive:
            return True
        self.app.notify(
            f"Could not take the lead: {status.reason}",
            title="take the lead",
            severity="warning",
            timeout=10,
        )
        return False

    async def hand_over(self) -> bool:
        """Free the lease so another operator can take it (not while a step runs)."""
        coordinator = self.coordinator
        if coordinator is None:
            return False
        session = self.app.runbook_driver.session
        if session is not None and session.busy:
            self.app.notify(
                f"Not handed over: this console is {session.busy}; hand over when it ends.",
                title="hand over",
                severity="warning",
                timeout=10,
            )
            return False
        status = await coordinator.release()
        self.app.notify(
            f"Handed over: {status.reason}", title="hand over", severity="warning", timeout=10
        )
        return True

    # -- shared live state -------------------------------------------------------------------------

    def _recorded(self, action: str, evidence: dict[str, Any]) -> None:
        # The session recorded an engine event: publish it, in order, from one task.
        if self._outbox is None:
            return
        kind, data = shared_event(action, evidence)
        self._outbox.put_nowait((kind, action, data, evidence.get("deployment_id")))

    def rollback_progress(self, event: RollbackEvent) -> None:
        """A rollback started or ended on this console: tell the others."""
        if self._outbox is None:
            return
        kind = str(event.kind)
        if kind not in ("started", "finished"):
            return
        data: dict[str, Any] = {"incident_id": event.incident_id}
        if event.result is not None:
            data["outcome"] = str(event.result.outcome)
        deployment_id = self.app.runbook_driver.session
        self._outbox.put_nowait(
            (
                EventKind.ROLLBACK,
                f"rollback.{kind}",
                data,
                deployment_id.deployment_id if deployment_id is not None else None,
            )
        )

    async def _publish_loop(self) -> None:
        assert self._outbox is not None
        while True:
            kind, action, data, deployment_id = await self._outbox.get()
            coordinator = self.coordinator
            if coordinator is None:
                continue
            try:
                result = await coordinator.publish(kind, action, data, deployment_id=deployment_id)
            except NotDriving as exc:
                # The lease ended between the record and its event: the others resync from
                # the audit trail when the lease changes hands.
                log.warning("event %s not published: %s", action, exc)
                continue
            except Exception:
                log.exception("publishing %s failed", action)
                continue
            if result.error is not None:
                log.warning("event %s not published: %s", action, result.error)

    async def _on_event(self, event: CoordinationEvent) -> None:
        coordinator = self.coordinator
        if coordinator is None or event.origin == coordinator.origin:
            return
        self.received.append(event)
        said = describe_event(event)
        if said is not None:
            message, severity = said
            self.app.notify(
                message,
                title="operators",
                severity=severity,  # type: ignore[arg-type]
                timeout=20 if severity == "error" else 6,
            )
        if event.kind is EventKind.APPROVAL:
            self.app.run_worker(
                self.refresh_approvals(), group="operators-approvals", exit_on_error=False
            )
        else:
            self.request_reload(event.deployment_id)

    async def _resync(self) -> None:
        # (Re)connected, or the sequence showed a gap: the audit trail is the truth.
        await self.reload_view(None)
        await self.refresh_approvals()

    def request_reload(self, deployment_id: str | None = None) -> None:
        """Reload the driver's deployment from the audit trail soon (coalesced)."""
        if deployment_id:
            self._reload_id = deployment_id
        self._reload_wanted.set()

    async def _follow_loop(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            deployment_id, self._reload_id = self._reload_id, None
            try:
                await self.reload_view(deployment_id)
            except Exception:
                log.exception("reloading the deployment from the audit trail failed")

    async def reload_view(self, deployment_id: str | None) -> bool:
        """Show the driver's deployment as the audit trail has it (a console that does not drive).

        This console's own engine stays while the trail holds nothing newer for it (a console
        suspended for a moment keeps its deployment); otherwise the newest state is shown
        read-only.

        Returns:
            True when the view changed.
        """
        if self.can_drive():
            return False
        driver = self.app.runbook_driver
        session = driver.ensure_session()
        if session is None or session.busy:
            return False
        from console.deployment import DeploymentError, scan_deployments

        scan = await asyncio.to_thread(scan_deployments, session.trail)
        driver.scan = scan
        if self.can_drive() or session.busy:
            return False  # took the lead meanwhile: the lead's flow decides
        saved = self._pick(session, scan.deployments, deployment_id)
        if saved is None:
            driver._changed()
            return False
        version = (saved.deployment_id, saved.saved_seq, saved.saved_at.isoformat())
        if session.view_only and version == self._view_version:
            return False
        try:
            session.view(saved)
        except DeploymentError as exc:
            if str(exc) != self._view_error:
                self._view_error = str(exc)
                self.app.notify(str(exc), title="operators", severity="warning", timeout=10)
            return False
        self._view_error = None
        self._view_version = version
        self.reloads += 1
        driver._changed()
        return True

    @staticmethod
    def _pick(
        session: DeploymentSession, found: list[SavedDeployment], wanted: str | None
    ) -> SavedDeployment | None:
        by_id = {d.deployment_id: d for d in found}
        if session.active and not session.view_only:
            current = session.deployment_id
            if not session.finished:
                saved = by_id.get(current or "")
                newer = saved is not None and int(saved.state.get("events") or 0) > int(
                    session.engine.state.events
                )
                return saved if newer else None
        unfinished = [d for d in found if not d.finished]
        if wanted and wanted in by_id:
            return by_id[wanted]
        if unfinished:
            return unfinished[0]
        if session.view_only and session.deployment_id in by_id:
            return by_id[session.deployment_id or ""]
        return None

    # -- four eyes ---------------------------------------------------------------------------------

    async def refresh_approvals(self) -> None:
        """Re-read the four-eyes requests waiting for a second operator."""
        coordinator = self.coordinator
        if coordinator is None or self._approvals_busy:
            return
        self._approvals_busy = True
        try:
            self.approvals = await coordinator.pending_approvals()
            self.approvals_error = None
        except ApprovalUnavailable as exc:
            self.approvals = []
            self.approvals_error = str(exc)
        finally:
            self._approvals_busy = False
            self._approvals_at = time.monotonic()
        self.render()

    def is_own(self, approval: Approval) -> bool:
        """Whether this operator asked for it (and so cannot approve it)."""
        return approval.requester_principal == operator_principal(self.app.operator)

    async def approve(self, approval: Approval) -> bool:
        """Approve another operator's request from this console; say what happened."""
        coordinator = self.coordinator
        if coordinator is None:
            return False
        gate = approval.gate
        try:
            done = await coordinator.approve(gate, approval.request_id)
        except SelfApprovalRefused:
            self.app.notify(
                f"Refused: you asked for this approval yourself ({approval.requester}). "
                f"Four eyes needs a second, different operator to approve gate {gate}.",
                title="four eyes",
                severity="error",
                timeout=15,
            )
            return False
        except ApprovalRefused as exc:
            self.app.notify(str(exc), title="four eyes", severity="warning", timeout=10)
            return False
        except ApprovalUnavailable as exc:
            self.app.notify(str(exc), title="four eyes", severity="error", timeout=15)
            return False
        finally:
            await self.refresh_approvals()
        self.app.notify(
            f"Approved gate {gate} for {done.requester}: their gate opens now.",
            title="four eyes",
            timeout=10,
        )
        return True

    # -- break-glass -------------------------------------------------------------------------------

    def break_glass(self) -> None:
        """F9 without the lead: ask for a reason, then roll back (recorded as break-glass)."""
        if self._glass is not None:
            self.app.notify(
                "The break-glass question is open: enter rolls back, escape cancels.",
                title="break-glass",
                severity="warning",
            )
            return
        screen = BreakGlassScreen(self.app.operator, self.reason())
        self._glass = screen

        def answered(answer: tuple[str, float] | None) -> None:
            self._glass = None
            if answer is None:
                self.app.notify(
                    "Break-glass cancelled: traffic is unchanged.", title="break-glass", timeout=5
                )
                return
            reason, at = answer
            self.pull_brake(reason, at)

        self.app.push_screen(screen, answered)

    def pull_brake(self, reason: str, started: float) -> bool:
        """Start the emergency rollback now, then record and announce who pulled it and why.

        Returns:
            Whether this press started the rollback (False: one runs already).
        """
        coordinator = self.coordinator
        session = self.app.runbook_driver.session
        deployment_id = session.deployment_id if session is not None else None
        glass = None
        if coordinator is not None:
            glass = coordinator.break_glass(reason, deployment_id=deployment_id)
        # The rollback first: recording it must not hold up the switch.
        started_now = self.app.rollback.press(
            started, reason=f"break-glass: {reason}", trigger="break-glass"
        )
        self.app.run_worker(
            self._record_glass(glass, reason, deployment_id),
            group="operators-glass",
            exit_on_error=False,
        )
        return started_now

    async def _record_glass(self, glass: Any, reason: str, deployment_id: str | None) -> None:
        session = self.app.runbook_driver.session
        kwargs: dict[str, Any]
        if glass is not None:
            kwargs = glass.audit_kwargs()
        else:
            kwargs = {
                "action": "break_glass",
                "operator": self.app.operator,
                "deployment_id": deployment_id,
                "evidence": {"reason": reason, "coordination": self.reason()},
            }
        action = kwargs.pop("action")
        own_trail: AuditTrail | None = None
        if session is not None:
            trail = session.trail
        else:
            from console.audit import open_trail

            trail = own_trail = open_trail(self.app.config, operator=self.app.operator)
        try:
            result = await asyncio.to_thread(lambda: trail.append(action, **kwargs))
            self.glass_results.append(result)
            if getattr(result, "lost", False):
                self.app.notify(
                    f"The break-glass record was lost: {result.error}",
                    title="break-glass",
                    severity="error",
                    timeout=30,
                )
        finally:
            if own_trail is not None:
                await asyncio.to_thread(own_trail.close)
        if glass is not None and self.coordinator is not None:
            published = await self.coordinator.announce(glass)
            if published.error is not None:
                log.warning("break-glass not announced: %s", published.error)


# --- the break-glass question -----------------------------------------------------------------


class BreakGlassScreen(ModalScreen[tuple[str, float] | None]):
    """F9 on a console without the lead: why pull the emergency brake? (one line).

    Dismissed with ``(reason, time.monotonic())`` at the confirming key press (the
    rollback's clock starts there), or None when cancelled.
    """

    BINDINGS = [
        Binding(
            "escape",
            "cancel",
            "Cancel",
            id="break-glass-cancel",
            tooltip="Do not roll back: traffic stays as it is",
            priority=True,
        ),
    ]

    DEFAULT_CSS = """
    BreakGlassScreen {
        align: center middle;
    }
    BreakGlassScreen > Vertical {
        width: 80;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: heavy $error;
        border-title-color: $error;
        border-title-style: bold;
        background: $surface;
        padding: 0 1;
    }
    BreakGlassScreen .glass--why {
        color: $warning;
    }
    BreakGlassScreen .glass--keys {
        color: $text-muted;
    }
    BreakGlassScreen Input {
        margin: 1 0 0 0;
    }
    """

    def __init__(self, operator: str, why: str) -> None:
        """Create the question.

        Args:
            operator: Who is at the keyboard (recorded with the reason).
            why: Why this console does not drive.
        """
        super().__init__()
        self.operator = operator
        self.why = why

    def compose(self) -> ComposeResult:
        """Why the lead is elsewhere, what happens, the reason, the keys."""
        with Vertical() as box:
            box.border_title = "break-glass: emergency rollback without the lead"
            yield Static(Content(f"This console does not drive: {self.why}"), classes="glass--why")
            yield Static(
                Content(
                    "The emergency rollback moves all traffic back to blue now, lease or not. "
                    f"It is recorded as break-glass with your identity ({self.operator}) and "
                    "the reason below."
                )
            )
            yield Input(
                value=BREAK_GLASS_REASON,
                placeholder="why you pull the emergency brake",
                id="glass-reason",
            )
            yield Static(
                Content("enter: roll back to blue · esc: cancel, traffic stays as it is"),
                classes="glass--keys",
            )

    def on_mount(self) -> None:
        """The reason is focused: type more, or press enter."""
        self.query_one(Input).focus()

    @on(Input.Submitted, "#glass-reason")
    def _submitted(self, event: Input.Submitted) -> None:
        at = time.monotonic()
        reason = event.value.strip()
        if not reason:
            self.notify(
                "Say why you pull the emergency brake (one line).",
                title="break-glass",
                severity="warning",
            )
            return
        self.dismiss((reason, at))

    def action_cancel(self) -> None:
        """Do not roll back."""
        self.dismiss(None)


# --- the operators screen ---------------------------------------------------------------------


class OperatorsScreen(Screen[None]):
    """The lease in full, and the four-eyes requests waiting for a second operator."""

    BINDINGS = [
        Binding(
            "a",
            "approve",
            "Approve",
            id="operators-approve",
            tooltip="Approve the selected four-eyes request (only another operator's)",
        ),
        Binding(
            "escape",
            "close",
            "Back",
            id="operators-back",
            tooltip="Back to the previous screen",
        ),
    ]

    DEFAULT_CSS = """
    OperatorsScreen {
        layout: vertical;
        background: $background;
    }
    OperatorsScreen > #operators-title {
        height: 1;
        padding: 0 1;
        background: $panel;
        text-style: bold;
    }
    OperatorsScreen > #operators-detail {
        height: auto;
        padding: 0 1;
    }
    OperatorsScreen > #operators-approvals-title {
        height: 1;
        padding: 0 1;
        margin-top: 1;
        text-style: bold;
    }
    OperatorsScreen > DataTable {
        height: 1fr;
    }
    OperatorsScreen > #operators-approvals-note {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    """

    COLUMNS = ("gate", "asked by", "since", "deployment", "request")

    def __init__(self, driver: OperatorsDriver) -> None:
        """Create the screen for the App's operators driver."""
        super().__init__()
        self.driver = driver
        self._rows: list[str] = []

    def compose(self) -> ComposeResult:
        """Title, lease line and details, waiting requests, footer."""
        yield Static(Content("OPERATORS: who drives, and four eyes"), id="operators-title")
        yield LeaseStatusLine(id="operators-lease")
        yield Static("", id="operators-detail", markup=False)
        yield Static(
            Content("Four-eyes requests waiting for a second operator"),
            id="operators-approvals-title",
        )
        yield DataTable(id="operators-approvals", cursor_type="row")
        yield Static("", id="operators-approvals-note", markup=False)
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        """Columns, then draw and re-read the requests."""
        table = self.query_one(DataTable)
        for column in self.COLUMNS:
            table.add_column(column, key=column)
        self.driver._screen = self
        self.show()
        self.app.run_worker(
            self.driver.refresh_approvals(), group="operators-approvals", exit_on_error=False
        )

    def on_unmount(self) -> None:
        """Stop receiving redraws."""
        if self.driver._screen is self:
            self.driver._screen = None

    @property
    def approvals(self) -> list[Approval]:
        """The requests as listed, in table order."""
        return list(self.driver.approvals)

    def selected(self) -> Approval | None:
        """The request under the cursor, if any."""
        approvals = self.approvals
        try:
            row = self.query_one(DataTable).cursor_row
        except NoMatches:
            return None
        if 0 <= row < len(approvals):
            return approvals[row]
        return None

    def show(self) -> None:
        """Draw the lease and the requests as the driver last saw them."""
        try:
            self.query_one(LeaseStatusLine).show(self.driver.line())
            self.query_one("#operators-detail", Static).update(self._detail())
            table = self.query_one(DataTable)
            note = self.query_one("#operators-approvals-note", Static)
        except NoMatches:
            return
        approvals = self.approvals
        rows = [a.request_id for a in approvals]
        now = utcnow()
        if rows != self._rows:
            self._rows = rows
            table.clear()
            for approval in approvals:
                who = approval.requester + (" (yours)" if self.driver.is_own(approval) else "")
                age = max(0.0, (now - approval.requested_at).total_seconds())
                table.add_row(
                    approval.gate,
                    who,
                    f"{approval.requested_at.astimezone().strftime('%H:%M:%S')} ({age:.0f} s)",
                    approval.deployment_id or "-",
                    approval.request_id[:8],
                    key=approval.request_id,
                )
            self.refresh_bindings()
        if self.driver.approvals_error:
            note.update(f"✖ {self.driver.approvals_error}")
        elif not approvals:
            note.update("No request is waiting.")
        else:
            note.update(
                "a: approve the selected request (a request of your own is refused: "
                "four eyes needs a second, different operator)"
            )

    def _detail(self) -> str:
        coordinator = self.driver.coordinator
        if coordinator is None:
            return self.driver.reason()
        status = coordinator.status()
        gates = ", ".join(sorted(coordinator.four_eyes_gates)) or "none"
        where = "Redis" if status.mode == "redis" else "lock file"
        lines = [
            f"deployment lease {status.deployment} · {where} {status.where}",
            f"this console: {status.operator} (operator {operator_principal(status.operator)})"
            + (" · observer (--read-only)" if status.role is Role.OBSERVER else ""),
            status.reason,
            f"four-eyes gates: {gates}",
        ]
        return "\n".join(lines)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Approve only with a request under the cursor."""
        if action == "approve":
            return True if self.selected() is not None else None
        return True

    def action_approve(self) -> None:
        """Approve the selected request (refused for one's own, with the reason)."""
        approval = self.selected()
        if approval is None:
            self.notify("No request is selected.", title="four eyes", severity="warning")
            return
        self.app.run_worker(
            self.driver.approve(approval), group="operators-approve", exit_on_error=False
        )

    def action_close(self) -> None:
        """Back to the previous screen."""
        if self.app.screen is self:
            self.app.pop_screen()
