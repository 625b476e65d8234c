"""Several operators at once: who drives, what everyone sees, the emergency brake, four eyes.

This module owns the coordination *policy*; the storage primitives (Redis scripts, lock
file) are :mod:`backends.lease`. No textual here: the App asks :meth:`Coordinator.can_drive`
from ``check_action`` and renders :class:`LeaseStatus`.

**Lease.** One console per deployment holds the lease and drives; every other console is
read-only by itself and shows the holder (``user@host``, since when, expiry). The holder
renews every third of the lease in a background task. It can drive only while its *local*
deadline has not passed: ``deadline = (monotonic time the last successful renewal was
sent) + lease - safety margin``. So a holder cut off from Redis stops driving at that
deadline even though it cannot ask Redis, and before Redis would hand the lease to someone
else. A renewal that *fails* (Redis unreachable, timeout) makes it read-only at once
(:attr:`Role.SUSPENDED`) until a renewal succeeds again -- a compare-and-expire that
succeeds proves nobody took the lease in between, so driving may resume. A renewal that
finds the token gone (expired, taken over, Redis restarted without persistence) ends the
lease (:attr:`Role.LOST`): the reason says which. When nobody else holds it then, the
console takes it again (``reacquire``) with a new fencing number; when somebody else does,
it observes. Every driving action must go through :meth:`Coordinator.ensure_can_drive`,
which renews once more and returns the fencing number to store with the audit record.

**Fencing numbers** only grow: each acquisition ``INCR``\\ s a counter kept apart from the
lock, and the acquirer passes a floor (the highest fence this console has seen, plus what the
caller reports from the audit trail with :meth:`Coordinator.note_fence`), so a Redis that
restarted without its data still hands out larger numbers.

**Shared live state.** :meth:`Coordinator.publish` sends step transitions, traffic changes,
rollbacks, lease and approval changes as JSON events with a sequence number on the
deployment's channel; :meth:`Coordinator.subscribe` delivers them to a callback and calls
``resync`` (the caller reloads from the audit store) whenever it (re)connects or sees a gap
or a reset in the sequence.

**Break-glass.** :meth:`Coordinator.break_glass` records who pulls the emergency brake and
why without any lock or I/O (it returns the event to publish and the audit record's fields);
the rollback itself is :mod:`console.rollback`.

**Four-eyes gates.** The driver asks (:meth:`Coordinator.request_approval`), another console
approves (:meth:`Coordinator.approve`), the driver waits (:meth:`Coordinator.wait_for_approval`)
and the approval is consumed when the gate opens. The same *principal* cannot approve its
own request: the principal is the user name of ``user@host`` (case-folded, SSH suffix
dropped), so ``alice`` on another host or another SSH session is still alice. A shared
login therefore cannot satisfy four-eyes, which is the point.

**Degraded modes.** Without ``coordination.redis_url`` the lease is an ``flock`` on
``coordination.lock_file`` (one host): the same API, events in a JSON-lines file that other
consoles on the host tail, and four-eyes approvals in a JSON file next to the lock (a second
operator on the same host approves from their console; point ``lock_file`` at a directory
both can write). With Redis configured but unreachable nobody can take the lease, so every
console is read-only and four-eyes gates stay closed; :meth:`Coordinator.break_glass` needs
nothing, so the emergency rollback stays available.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError

from backends.audit_store import json_safe
from backends.lease import (
    AcquireOutcome,
    Approval,
    ApprovalRefused,
    ApprovalStatus,
    CoordinationStore,
    CoordinationUnavailable,
    EventFeed,
    FileCoordinationStore,
    Grant,
    LeaseHolder,
    RedisCoordinationStore,
    RefusalCode,
    decode_event,
    validate_deployment,
)
from backends.models import Frozen, utcnow
from console.identity import operator_identity, operator_principal

if TYPE_CHECKING:
    from console.config import AppConfig

__all__ = [
    "DRIVER_EVENT_KINDS",
    "Approval",
    "ApprovalRefused",
    "ApprovalStatus",
    "ApprovalTimeout",
    "ApprovalUnavailable",
    "BreakGlass",
    "CoordinationEvent",
    "Coordinator",
    "EventKind",
    "LeaseHolder",
    "LeaseStatus",
    "NotDriving",
    "PublishResult",
    "Role",
    "SelfApprovalRefused",
    "Subscription",
    "default_lock_file",
    "deployment_key",
    "open_coordinator",
    "operator_identity",
    "operator_principal",
]

log = logging.getLogger(__name__)

APP_NAME = "acgs-console"
BREAK_GLASS_ACTION = "break_glass"


# --- models ----------------------------------------------------------------------------------


class Role(StrEnum):
    """Where this console stands with the lease."""

    DRIVING = "driving"
    """It holds the lease and its local deadline has not passed."""
    OBSERVING = "observing"
    """Someone else holds the lease."""
    FREE = "free"
    """Nobody holds the lease; this console may take it."""
    SUSPENDED = "suspended"
    """It holds a lease but the last renewal failed: read-only until one succeeds."""
    LOST = "lost"
    """Its lease expired or was taken; the reason says which."""
    UNAVAILABLE = "unavailable"
    """The coordination store cannot be reached: read-only, gates closed."""
    OBSERVER = "observer"
    """Opened with ``--read-only``: it never drives."""


class LeaseStatus(Frozen):
    """What the App shows about the lease, and whether this console may drive."""

    deployment: str
    mode: Literal["redis", "lock_file"]
    where: str
    """The Redis URL or the lock file."""
    operator: str
    """This console's operator."""
    role: Role
    can_drive: bool
    reason: str
    """Why the console drives or is read-only, in words for the operator."""
    holder: LeaseHolder | None = None
    """The holder as last seen (this console's own lease when driving)."""
    fence: int | None = None
    """This console's fencing number while it holds the lease."""
    deadline_in_s: float | None = None
    """Seconds left before the local deadline, while holding."""
    at: datetime = Field(default_factory=utcnow)


class EventKind(StrEnum):
    """What an event on the shared channel is about."""

    STEP = "step"
    TRAFFIC = "traffic"
    ROLLBACK = "rollback"
    BREAK_GLASS = "break_glass"
    LEASE = "lease"
    APPROVAL = "approval"


DRIVER_EVENT_KINDS: frozenset[EventKind] = frozenset({EventKind.STEP, EventKind.TRAFFIC})
"""Events only the lease holder may publish."""


class CoordinationEvent(Frozen):
    """One event on a deployment's shared channel."""

    seq: int | None = None
    """The channel's sequence number (None until published)."""
    deployment: str
    kind: EventKind
    action: str
    """E.g. ``step.started``, ``traffic.set``, ``rollback.finished``, ``lease.acquired``."""
    operator: str
    origin: str
    """The publishing console instance, so a console can tell its own events."""
    fence: int | None = None
    """The publisher's fencing number when it held the lease."""
    deployment_id: str | None = None
    """The deployment run (``YYYYMMDD_HHMMSS``), as in the audit trail."""
    at: datetime = Field(default_factory=utcnow)
    data: dict[str, Any] = Field(default_factory=dict)


class PublishResult(Frozen):
    """An event and whether it reached the channel."""

    event: CoordinationEvent
    error: str | None = None

    @property
    def published(self) -> bool:
        """True when the channel took it (it then has a sequence number)."""
        return self.error is None and self.event.seq is not None


class BreakGlass(Frozen):
    """An emergency rollback pulled by any operator, lease or not."""

    operator: str
    reason: str
    at: datetime
    holder: str | None
    """Who held the lease as far as this console knew (None: nobody or unknown)."""
    holder_fence: int | None
    console_was_driving: bool
    event: CoordinationEvent
    """Publish it with :meth:`Coordinator.announce`."""

    def audit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`console.audit.AuditTrail.append`."""
        return {
            "action": BREAK_GLASS_ACTION,
            "operator": self.operator,
            "deployment_id": self.event.deployment_id,
            "fence": None,
            "at": self.at,
            "evidence": {
                "reason": self.reason,
                "lease_holder": self.holder,
                "lease_holder_fence": self.holder_fence,
                "console_was_driving": self.console_was_driving,
                "deployment": self.event.deployment,
            },
        }


class NotDriving(Exception):
    """A driving action was attempted without the lease; the message says why.

    Attributes:
        status: The lease status at the time.
    """

    def __init__(self, action: str, status: LeaseStatus) -> None:
        super().__init__(f"cannot {action}: {status.reason}")
        self.status = status


class SelfApprovalRefused(ApprovalRefused):
    """The requester (or the same principal) tried to approve their own four-eyes gate."""


class ApprovalUnavailable(Exception):
    """Four-eyes approval cannot be asked for or given now; the gate stays closed."""


class ApprovalTimeout(Exception):
    """No second operator approved in time; the gate stays closed."""


# --- configuration helpers -------------------------------------------------------------------


def default_lock_file() -> Path:
    """``<user state dir>/acgs-console/console.lock``."""
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME)) / "console.lock"


def deployment_key(cfg: AppConfig) -> str:
    """The key the lease covers: ``coordination.deployment``, else one per traffic switch.

    Consoles that move the same load balancer must share one lease, so without an explicit
    name the key is derived from the switch's target (HAProxy admin socket and backend, the
    site command, or the sandbox's control URL).
    """
    if cfg.coordination.deployment:
        return validate_deployment(cfg.coordination.deployment)
    switch = cfg.traffic
    if switch.kind == "haproxy":
        target = f"haproxy {switch.admin} {switch.backend}"
    elif switch.kind == "command":
        target = "command " + "\0".join(switch.set_argv)
    else:
        target = f"sandbox {switch.control_url}"
    return "lb-" + hashlib.sha256(target.encode()).hexdigest()[:12]


def _store_timeout(lease_ms: int) -> float:
    """Per-command timeout: short enough that a renewal fails well inside the lease."""
    return min(1.0, max(0.25, lease_ms / 6000))


def open_coordinator(
    cfg: AppConfig,
    *,
    operator: str | None = None,
    deployment: str | None = None,
    read_only: bool = False,
    on_change: Callable[[LeaseStatus], None] | None = None,
) -> Coordinator:
    """The coordinator the configuration asks for (Redis, else the lock file); not started.

    Args:
        cfg: The console configuration.
        operator: Who is at the keyboard (default: :func:`operator_identity` with
            ``cfg.operator``).
        deployment: The lease key (default: :func:`deployment_key`).
        read_only: An observer console (``--read-only``): it never drives.
        on_change: Called whenever the role, the holder or the reason changes.
    """
    coord = cfg.coordination
    key = deployment or deployment_key(cfg)
    store: CoordinationStore
    if coord.redis_url:
        store = RedisCoordinationStore(
            coord.redis_url, key, password=coord.password, timeout_s=_store_timeout(coord.lease_ms)
        )
    else:
        store = FileCoordinationStore(coord.lock_file or default_lock_file(), key)
    return Coordinator(
        store,
        operator=operator_identity(operator or cfg.operator),
        lease_ms=coord.lease_ms,
        four_eyes_gates=coord.four_eyes_gates,
        read_only=read_only,
        on_change=on_change,
    )


# --- the coordinator -------------------------------------------------------------------------


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "an unknown time"
    return (
        f"{at.astimezone().strftime('%H:%M:%S')} ({max(0.0, (now - at).total_seconds()):.0f} s ago)"
    )


def describe_holder(holder: LeaseHolder, now: datetime | None = None) -> str:
    """``alice@bastion drives since 14:02:07 (93 s ago), lease expires in 12 s (fence 4)``."""
    now = now or utcnow()
    text = f"{holder.operator} drives since {_ago(holder.acquired_at, now)}"
    remaining = holder.remaining_s(now)
    if remaining is not None:
        text += f", lease expires in {remaining:.0f} s"
    elif holder.mode == "lock_file":
        text += ", held until released" + (f" (pid {holder.pid})" if holder.pid else "")
    if holder.fence is not None:
        text += f" (fence {holder.fence})"
    return text


class Coordinator:
    """One console's view of a deployment's lease, events and four-eyes gates.

    Use it as ``async with coordinator:`` (or :meth:`start` / :meth:`aclose`) to run the
    background renewer, which also refreshes the holder shown to an observer.

    Args:
        store: Where the lease lives (:mod:`backends.lease`).
        operator: This console's ``user@host``.
        lease_ms: Lease length.
        four_eyes_gates: Gate (runbook step) ids that need a second operator.
        read_only: An observer console: it never drives, but may approve and break glass.
        safety_margin_ms: Subtracted from the lease for the local deadline (default: a tenth
            of the lease, at least 100 ms).
        reacquire: Take the lease again after losing it when nobody else holds it.
        fence_floor: The highest fencing number known from elsewhere (the audit trail).
        on_change: Called (synchronously) whenever the role, the holder or the reason
            changes; the App posts a message from it to re-check its actions.
        clock: Monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        store: CoordinationStore,
        *,
        operator: str,
        lease_ms: int = 15000,
        four_eyes_gates: Sequence[str] = ("switch-100", "decommission-blue"),
        read_only: bool = False,
        safety_margin_ms: int | None = None,
        reacquire: bool = True,
        fence_floor: int = 0,
        on_change: Callable[[LeaseStatus], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease_ms < 300:
            raise ValueError(f"lease_ms={lease_ms} is too short; use at least 1000")
        self.store = store
        self.deployment = store.deployment
        self.operator = operator
        self.lease_ms = lease_ms
        self.four_eyes_gates = frozenset(four_eyes_gates)
        self.read_only = read_only
        margin = max(100, lease_ms // 10) if safety_margin_ms is None else safety_margin_ms
        self.safety_margin_ms = min(max(0, margin), lease_ms // 2)
        self.reacquire = reacquire
        self.on_change = on_change
        self.origin = uuid.uuid4().hex[:12]
        self._clock = clock
        self._fence_floor = max(0, fence_floor)
        self._grant: Grant | None = None
        self._deadline: float | None = None
        self._renewed_wall: datetime | None = None
        self._wants = False
        self._role = Role.OBSERVER if read_only else Role.FREE
        self._reason = "observer console (--read-only): it never drives" if read_only else ""
        self._holder: LeaseHolder | None = None
        self._last_error: str | None = None
        self._last_key: tuple[Any, ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscriptions: list[Subscription] = []
        self._op_lock = asyncio.Lock()

    # -- reading -------------------------------------------------------------------------

    @property
    def mode(self) -> Literal["redis", "lock_file"]:
        """``redis`` or ``lock_file``."""
        return self.store.mode

    @property
    def fence(self) -> int | None:
        """The fencing number of the lease this console holds and may drive with, else None."""
        return self._grant.fence if self._grant is not None and self.can_drive() else None

    @property
    def role(self) -> Role:
        """The current role (checks the local deadline first)."""
        self.can_drive()
        return self._role

    def can_drive(self) -> bool:
        """Whether this console may drive now, from local knowledge only (no I/O).

        Past the local deadline without a successful renewal it answers False and turns
        the role to :attr:`Role.LOST`, even when Redis cannot be asked.
        """
        if self.read_only or self._grant is None or self._deadline is None:
            return False
        now = self._clock()
        if now >= self._deadline:
            if self._role in (Role.DRIVING, Role.SUSPENDED):
                since = (now - self._deadline) + (self.lease_ms - self.safety_margin_ms) / 1000
                self._set(
                    Role.LOST,
                    f"lease expired: no successful renewal for {since:.1f} s (the lease is "
                    f"{self.lease_ms / 1000:g} s); read-only before anyone else can take it"
                    + (f"; last error: {self._last_error}" if self._last_error else ""),
                    keep_holder=True,
                )
            return False
        return self._role is Role.DRIVING

    def status(self) -> LeaseStatus:
        """The lease status for display."""
        driving = self.can_drive()
        deadline_in = None
        if self._grant is not None and self._deadline is not None:
            deadline_in = max(0.0, self._deadline - self._clock())
        return LeaseStatus(
            deployment=self.deployment,
            mode=self.store.mode,
            where=self.store.where,
            operator=self.operator,
            role=self._role,
            can_drive=driving,
            reason=self._reason_now(),
            holder=self._own_holder() if self._grant is not None else self._holder,
            fence=self._grant.fence if self._grant is not None and driving else None,
            deadline_in_s=deadline_in,
        )

    def _reason_now(self) -> str:
        reason = self._reason or self._default_reason()
        holder = self._holder
        if (
            self._role is Role.UNAVAILABLE
            and holder is not None
            and holder.operator != self.operator
            and holder.operator not in reason
        ):
            # Read-only while the store is down: still say who drove when it was last seen.
            reason += f"; last known lead: {holder.operator}"
        return reason

    def _default_reason(self) -> str:
        if self._role is Role.FREE:
            return "nobody holds the lease; take it to drive"
        return self._role.value

    def _own_holder(self) -> LeaseHolder:
        assert self._grant is not None
        holder = self._grant.holder
        if self._renewed_wall is None:
            return holder
        expires = None
        if holder.mode == "redis":
            expires = self._renewed_wall + timedelta(milliseconds=self.lease_ms)
        return holder.model_copy(update={"renewed_at": self._renewed_wall, "expires_at": expires})

    def needs_four_eyes(self, gate: str) -> bool:
        """Whether the gate needs a second operator's approval."""
        return gate in self.four_eyes_gates

    def note_fence(self, fence: int | None) -> None:
        """Tell the coordinator about a fencing number seen elsewhere (the audit trail)."""
        if fence is not None and fence > self._fence_floor:
            self._fence_floor = fence

    # -- state changes -------------------------------------------------------------------

    def _set(
        self,
        role: Role,
        reason: str,
        holder: LeaseHolder | None = None,
        *,
        keep_holder: bool = False,
    ) -> None:
        self._role = role
        self._reason = reason
        if not keep_holder:
            self._holder = holder
        if holder is not None:
            self.note_fence(holder.fence)
        self._notify()

    def _notify(self) -> None:
        if self.on_change is None:
            return
        holder = self._holder
        key = (
            self._role,
            self._reason,
            holder.operator if holder else None,
            holder.fence if holder else None,
        )
        if key == self._last_key:
            return
        self._last_key = key
        try:
            self.on_change(self.status())
        except Exception:
            log.exception("coordination on_change callback failed")

    def _unavailable(self, error: str) -> None:
        self._last_error = error
        self._set(
            Role.UNAVAILABLE,
            f"coordination store {self.store.where} unreachable ({error}): read-only, "
            "four-eyes gates closed; the emergency rollback stays available",
            keep_holder=True,
        )

    def _observe(self, holder: LeaseHolder | None, prefix: str = "") -> None:
        if self.read_only:
            what = describe_holder(holder) if holder else "nobody holds the lease"
            self._set(
                Role.OBSERVER, f"observer console (--read-only): it never drives; {what}", holder
            )
        elif holder is None:
            self._set(Role.FREE, prefix + "nobody holds the lease; take it to drive", None)
        else:
            self._set(
                Role.OBSERVING,
                prefix + describe_holder(holder) + "; this console is read-only",
                holder,
            )

    def _grant_won(self, grant: Grant, sent_at: float, why: str) -> None:
        self._grant = grant
        self._deadline = sent_at + (self.lease_ms - self.safety_margin_ms) / 1000
        self._renewed_wall = grant.holder.acquired_at
        self._last_error = None
        self._wants = True
        self.note_fence(grant.fence)
        self._set(Role.DRIVING, why, grant.holder)

    # -- lease operations ----------------------------------------------------------------

    async def acquire(self) -> LeaseStatus:
        """Take the lease if nobody holds it; otherwise observe who does.

        Returns:
            The status: driving, or read-only with the holder and why.
        """
        if self.read_only:
            return self.status()
        before = self._grant.fence if self._grant is not None else None
        async with self._op_lock:
            if self._grant is not None and not self.can_drive():
                # A lease we could not renew: find out whether it is still ours first.
                await self._renew_locked()
            if self._grant is None:
                await self._acquire_locked("took the lease")
        await self._announce_if_new(before)
        return self.status()

    async def _acquire_locked(self, why: str) -> bool:
        sent_at = self._clock()
        try:
            outcome: AcquireOutcome = await self.store.acquire(
                self.operator, self.lease_ms, self._fence_floor
            )
        except CoordinationUnavailable as exc:
            self._unavailable(str(exc))
            return False
        if outcome.grant is not None:
            self._grant_won(
                outcome.grant,
                sent_at,
                f"{why} (fence {outcome.grant.fence}); this console drives",
            )
            return True
        self._wants = False
        self._observe(outcome.holder, "could not take the lease: ")
        return False

    async def renew(self) -> LeaseStatus:
        """Renew now (the background task does this every third of the lease)."""
        before = self._grant.fence if self._grant is not None else None
        async with self._op_lock:
            await self._renew_locked()
        await self._announce_if_new(before)
        return self.status()

    async def _announce_if_new(self, fence_before: int | None) -> None:
        """Tell the other consoles when a renewal ended in a new lease (taken again)."""
        if self._grant is not None and self._grant.fence != fence_before and self.can_drive():
            await self._announce_lease("lease.acquired")

    async def _renew_locked(self) -> None:
        grant = self._grant
        if grant is None:
            return
        sent_at = self._clock()
        try:
            still_ours = await self.store.renew(grant.token, self.lease_ms)
        except CoordinationUnavailable as exc:
            self._last_error = str(exc)
            if self.can_drive() or self._role is Role.SUSPENDED:
                assert self._deadline is not None
                left = max(0.0, self._deadline - self._clock())
                self._set(
                    Role.SUSPENDED,
                    f"lease renewal failed ({exc}); read-only until a renewal succeeds "
                    f"(the lease runs out here in {left:.1f} s)",
                    keep_holder=True,
                )
            else:
                # Already past the deadline: can_drive() set LOST; keep its reason fresh.
                self.can_drive()
            return
        if still_ours:
            was = self._role
            self._deadline = sent_at + (self.lease_ms - self.safety_margin_ms) / 1000
            self._renewed_wall = utcnow()
            self._last_error = None
            why = self._reason
            if was is not Role.DRIVING:
                why = (
                    f"lease renewed again after being {was.value}: nobody took it meanwhile "
                    f"(fence {grant.fence}); this console drives"
                )
            self._set(Role.DRIVING, why, grant.holder)
            return
        await self._lost_locked(grant)

    async def _lost_locked(self, grant: Grant) -> None:
        self._grant = None
        self._deadline = None
        try:
            holder = await self.store.holder()
        except CoordinationUnavailable as exc:
            # _wants stays: the next tick tries to take the lease again.
            self._unavailable(f"lease lost (fence {grant.fence}) and the holder unknown: {exc}")
            return
        if holder is not None:
            self._wants = False
            self._observe(
                holder,
                f"lease lost (fence {grant.fence}): taken over after it expired; ",
            )
            return
        if self.store.mode == "redis":
            cause = "it expired, or Redis restarted without its data"
        else:
            cause = f"the lock file {self.store.where} was removed or replaced"
        gone = f"lease lost (fence {grant.fence}): the lock is gone ({cause})"
        if self.reacquire and self._wants:
            if await self._acquire_locked(gone + "; took it again"):
                return
            if self._role is Role.UNAVAILABLE:
                return
        else:
            self._wants = False
            self._set(Role.LOST, gone + "; read-only until the lease is taken again", None)

    async def release(self) -> LeaseStatus:
        """Hand the lease over: free it so another operator can take it."""
        async with self._op_lock:
            grant = self._grant
            self._wants = False
            if grant is None:
                return self.status()
            self._grant = None
            self._deadline = None
            error = None
            try:
                await self.store.release(grant.token)
            except CoordinationUnavailable as exc:
                error = str(exc)
            self._set(
                Role.FREE,
                "released the lease"
                + (f" (Redis did not confirm: {error}; it expires by itself)" if error else "")
                + "; this console is read-only until it takes it again",
                None,
            )
        await self._announce_lease("lease.released", fence=grant.fence)
        return self.status()

    async def holder(self) -> LeaseHolder | None:
        """Ask the store who holds the lease now (also refreshes the status)."""
        await self.refresh()
        return self._own_holder() if self._grant is not None else self._holder

    async def refresh(self) -> LeaseStatus:
        """Re-read the holder (for a console that does not hold the lease)."""
        async with self._op_lock:
            if self._grant is None:
                try:
                    holder = await self.store.holder()
                except CoordinationUnavailable as exc:
                    self._unavailable(str(exc))
                else:
                    if self._role is Role.LOST and holder is None and not self.read_only:
                        pass  # keep saying why it was lost until someone takes the lease
                    else:
                        self._observe(holder)
        return self.status()

    async def ensure_can_drive(self, action: str) -> int:
        """Confirm the lease with the store right before a driving action.

        Args:
            action: What is about to happen, for the error ("set traffic to 50 % green").

        Returns:
            The fencing number to store with the action's audit record.

        Raises:
            NotDriving: With the reason this console may not drive -- also when the lease
                had been lost and was just taken again: another console may have driven in
                between, so the operator looks again before acting.
        """
        if not self.can_drive():
            raise NotDriving(action, self.status())
        before = self._grant.fence if self._grant is not None else None
        async with self._op_lock:
            await self._renew_locked()
        fence = self.fence
        if fence is None or fence != before:
            # A lease taken again under us is a new lease: the caller's view may be stale.
            await self._announce_if_new(before)
            raise NotDriving(action, self.status())
        return fence

    async def _announce_lease(self, action: str, fence: int | None = None) -> None:
        await self.publish(
            EventKind.LEASE,
            action,
            {"fence": fence if fence is not None else self.fence},
        )

    # -- background renewer --------------------------------------------------------------

    async def start(self) -> None:
        """Start the background renewer (idempotent) and read the holder once."""
        if self._task is None or self._task.done():
            await self.refresh()
            self._task = asyncio.create_task(self._run(), name=f"lease-renewer-{self.origin}")

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease renewer tick failed")
            await asyncio.sleep(self._next_delay())

    async def tick(self) -> None:
        """One round of the background task: renew, take again, or refresh the holder."""
        if self._grant is not None:
            before = self._grant.fence
            async with self._op_lock:
                await self._renew_locked()
            await self._announce_if_new(before)
        elif self._wants and self.reacquire and not self.read_only:
            async with self._op_lock:
                got = await self._acquire_locked("took the lease again after losing it")
            if got:
                await self._announce_lease("lease.acquired")
        else:
            await self.refresh()

    def _next_delay(self) -> float:
        lease_s = self.lease_ms / 1000
        if self._grant is not None and self._role is Role.DRIVING:
            delay = lease_s / 3
        elif self._grant is not None:
            delay = min(0.5, lease_s / 10)
        else:
            delay = min(1.0, lease_s / 3)
        if self._deadline is not None:
            # Wake at the deadline too, so on_change fires when driving ends.
            delay = min(delay, max(0.01, self._deadline - self._clock() + 0.001))
        return delay

    async def aclose(self, release: bool = True) -> None:
        """Stop the renewer and the subscriptions, release the lease, close the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for sub in list(self._subscriptions):
            await sub.aclose()
        if release and self._grant is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.release(), 2.0)
        await self.store.aclose()

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- shared live state ---------------------------------------------------------------

    def event(
        self,
        kind: EventKind,
        action: str,
        data: Mapping[str, Any] | None = None,
        *,
        deployment_id: str | None = None,
        operator: str | None = None,
    ) -> CoordinationEvent:
        """Build an event from this console (not sent)."""
        return CoordinationEvent(
            deployment=self.deployment,
            kind=kind,
            action=action,
            operator=operator or self.operator,
            origin=self.origin,
            fence=self._grant.fence if self._grant is not None else None,
            deployment_id=deployment_id,
            data=json_safe(dict(data or {})),
        )

    async def publish(
        self,
        kind: EventKind,
        action: str,
        data: Mapping[str, Any] | None = None,
        *,
        deployment_id: str | None = None,
    ) -> PublishResult:
        """Send an event to every console of the deployment. Never raises for the store's sake.

        Raises:
            NotDriving: A step or traffic event from a console that does not drive.
        """
        if kind in DRIVER_EVENT_KINDS and not self.can_drive():
            raise NotDriving(f"publish {action!r}", self.status())
        return await self.send(self.event(kind, action, data, deployment_id=deployment_id))

    async def send(self, event: CoordinationEvent) -> PublishResult:
        """Send a prepared event; the result says whether it reached the channel."""
        body = event.model_dump_json(exclude={"seq"})
        try:
            seq = await self.store.publish(body)
        except CoordinationUnavailable as exc:
            return PublishResult(event=event, error=str(exc))
        return PublishResult(event=event.model_copy(update={"seq": seq}))

    def subscribe(
        self,
        on_event: Callable[[CoordinationEvent], Awaitable[None] | None],
        resync: Callable[[], Awaitable[None]],
        *,
        resync_on_start: bool = True,
    ) -> Subscription:
        """Receive the deployment's events; ``resync`` runs after every (re)connection.

        Args:
            on_event: Called for each event, in order (sync or async).
            resync: Reload the shared state from the audit store; called when the
                subscription (re)connects and when the sequence shows a gap or a reset.
            resync_on_start: Also resync right after the first connection.

        Returns:
            The running subscription (stopped by :meth:`aclose` or its own ``aclose``).
        """
        sub = Subscription(self, on_event, resync, resync_on_start=resync_on_start)
        self._subscriptions.append(sub)
        sub.start()
        return sub

    # -- break-glass ---------------------------------------------------------------------

    def break_glass(
        self, reason: str, *, operator: str | None = None, deployment_id: str | None = None
    ) -> BreakGlass:
        """Record an emergency rollback by anyone, lease or not, with no I/O at all.

        The caller starts the rollback (:mod:`console.rollback`) at once, appends
        ``audit_kwargs()`` to the audit trail and sends :attr:`BreakGlass.event` with
        :meth:`announce` (which may fail harmlessly while Redis is down).

        Raises:
            ValueError: Without a reason.
        """
        why = reason.strip()
        if not why:
            raise ValueError("break-glass needs a reason: say why you pull the emergency brake")
        who = operator or self.operator
        holder = self._own_holder() if self._grant is not None else self._holder
        driving = self.can_drive()
        event = self.event(
            EventKind.BREAK_GLASS,
            BREAK_GLASS_ACTION,
            {
                "reason": why,
                "lease_holder": holder.operator if holder else None,
                "lease_holder_fence": holder.fence if holder else None,
                "console_was_driving": driving,
            },
            deployment_id=deployment_id,
            operator=who,
        )
        return BreakGlass(
            operator=who,
            reason=why,
            at=event.at,
            holder=holder.operator if holder else None,
            holder_fence=holder.fence if holder else None,
            console_was_driving=driving,
            event=event,
        )

    async def announce(self, glass: BreakGlass) -> PublishResult:
        """Send a break-glass event to every console (best effort)."""
        return await self.send(glass.event)

    # -- four-eyes gates -----------------------------------------------------------------

    async def request_approval(self, gate: str, *, deployment_id: str | None = None) -> Approval:
        """Ask a second operator to approve ``gate`` (only the driver reaches a gate).

        Raises:
            NotDriving: This console does not hold the lease.
            ApprovalUnavailable: The store cannot take the request (the gate stays closed).
        """
        fence = await self.ensure_can_drive(f"ask for approval of gate {gate!r}")
        approval = Approval(
            request_id=uuid.uuid4().hex,
            deployment=self.deployment,
            gate=gate,
            requester=self.operator,
            requester_principal=operator_principal(self.operator),
            requested_at=utcnow(),
            fence=fence,
            deployment_id=deployment_id,
        )
        try:
            await self.store.put_approval(approval)
        except CoordinationUnavailable as exc:
            raise ApprovalUnavailable(
                f"cannot ask for approval of gate {gate!r}: {exc}; the gate stays closed"
            ) from None
        await self.publish(
            EventKind.APPROVAL,
            "approval.requested",
            {"gate": gate, "request_id": approval.request_id},
            deployment_id=deployment_id,
        )
        return approval

    async def approve(self, gate: str, request_id: str | None = None) -> Approval:
        """Approve another operator's request for ``gate`` from this console.

        Args:
            gate: The gate id.
            request_id: The request being approved (refused when a newer one replaced it);
                None approves whatever request is pending.

        Raises:
            SelfApprovalRefused: The requester is this operator (by principal).
            ApprovalRefused: No request, a replaced one, or already approved.
            ApprovalUnavailable: The store cannot be reached.
        """
        try:
            approved = await self.store.approve(
                gate, request_id, self.operator, operator_principal(self.operator), utcnow()
            )
        except ApprovalRefused as exc:
            if exc.code is RefusalCode.SELF_APPROVAL:
                raise SelfApprovalRefused(exc.code, str(exc), exc.approval) from None
            raise
        except CoordinationUnavailable as exc:
            raise ApprovalUnavailable(f"cannot approve gate {gate!r}: {exc}") from None
        await self.publish(
            EventKind.APPROVAL,
            "approval.approved",
            {"gate": gate, "request_id": approved.request_id, "requester": approved.requester},
            deployment_id=approved.deployment_id,
        )
        return approved

    async def approval(self, gate: str) -> Approval | None:
        """The request for ``gate``, if any (raises :class:`ApprovalUnavailable`)."""
        try:
            return await self.store.get_approval(gate)
        except CoordinationUnavailable as exc:
            raise ApprovalUnavailable(f"cannot read approval of gate {gate!r}: {exc}") from None

    async def pending_approvals(self) -> list[Approval]:
        """Requests waiting for a second operator (what another console offers to approve)."""
        try:
            found = await self.store.approvals()
        except CoordinationUnavailable as exc:
            raise ApprovalUnavailable(f"cannot read approvals: {exc}") from None
        return [a for a in found if a.status is ApprovalStatus.PENDING]

    async def withdraw_approval(self, approval: Approval) -> bool:
        """Withdraw this console's request (e.g. the operator cancelled the step)."""
        try:
            return await self.store.remove_approval(
                approval.gate, approval.request_id, approved_only=False
            )
        except CoordinationUnavailable as exc:
            raise ApprovalUnavailable(f"cannot withdraw approval: {exc}") from None

    async def wait_for_approval(
        self, approval: Approval, timeout_s: float, *, poll_s: float = 0.2
    ) -> Approval:
        """Wait until another operator approves, then consume the approval (one use).

        Raises:
            ApprovalTimeout: Nobody approved within ``timeout_s`` (or the store was unreachable).
            ApprovalRefused: The request was withdrawn or replaced meanwhile.
            NotDriving: This console lost the lease while waiting.
        """
        gate = approval.gate
        deadline = self._clock() + timeout_s
        last_error: str | None = None
        while True:
            if not self.can_drive():
                raise NotDriving(f"pass gate {gate!r}", self.status())
            try:
                current = await self.store.get_approval(gate)
                if current is None or current.request_id != approval.request_id:
                    raise ApprovalRefused(
                        RefusalCode.STALE_REQUEST,
                        f"the approval request for gate {gate!r} was withdrawn or replaced",
                        current,
                    )
                if current.status is ApprovalStatus.APPROVED and await self.store.remove_approval(
                    gate, approval.request_id, approved_only=True
                ):
                    return current
            except CoordinationUnavailable as exc:
                last_error = str(exc)
            if self._clock() >= deadline:
                raise ApprovalTimeout(
                    f"no second operator approved gate {gate!r} within {timeout_s:g} s; "
                    "the gate stays closed"
                    + (f" (coordination store: {last_error})" if last_error else "")
                )
            await asyncio.sleep(min(poll_s, max(0.0, deadline - self._clock())))


class Subscription:
    """A running subscription to a deployment's events (see :meth:`Coordinator.subscribe`).

    Attributes:
        connected: Whether it currently listens.
        last_seq: The last sequence number delivered.
        received: Events delivered.
        resyncs: How many times ``resync`` ran.
        dropped: Messages that were not events (logged and skipped).
        last_error: The last connection error.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        on_event: Callable[[CoordinationEvent], Awaitable[None] | None],
        resync: Callable[[], Awaitable[None]],
        *,
        resync_on_start: bool = True,
    ) -> None:
        self._coordinator = coordinator
        self._on_event = on_event
        self._resync = resync
        self._resync_on_start = resync_on_start
        self.connected = False
        self.last_seq: int | None = None
        self.received = 0
        self.resyncs = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected_event = asyncio.Event()

    def start(self) -> None:
        """Start listening in a task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="coordination-events")

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until the subscription listens (True) or ``timeout`` passes (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        return self.connected

    async def _do_resync(self, why: str) -> None:
        self.resyncs += 1
        try:
            await self._resync()
        except Exception:
            log.exception("resync after %s failed", why)

    async def _run(self) -> None:
        backoff = 0.1
        first = True
        while True:
            try:
                feed: EventFeed = await self._coordinator.store.open_feed()
            except CoordinationUnavailable as exc:
                self.last_error = str(exc)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            backoff = 0.1
            self.connected = True
            self._connected_event.set()
            self.last_seq = None
            try:
                if not first or self._resync_on_start:
                    await self._do_resync("connecting" if first else "reconnecting")
                first = False
                while True:
                    raw = await feed.next(timeout=1.0)
                    if raw is not None:
                        await self._handle(raw)
            except CoordinationUnavailable as exc:
                self.last_error = str(exc)
            finally:
                self.connected = False
                self._connected_event.clear()
                await feed.aclose()

    async def _handle(self, raw: str) -> None:
        try:
            envelope = decode_event(raw)
            event = CoordinationEvent.model_validate({**envelope["event"], "seq": envelope["seq"]})
        except (ValueError, ValidationError) as exc:
            self.dropped += 1
            log.warning("dropped a malformed coordination event: %s", str(exc)[:200])
            return
        seq = event.seq
        assert seq is not None
        if self.last_seq is not None and seq != self.last_seq + 1:
            why = "a gap" if seq > self.last_seq else "a sequence reset"
            await self._do_resync(f"{why} ({self.last_seq} -> {seq})")
        self.last_seq = seq
        if event.kind is EventKind.LEASE and event.origin != self._coordinator.origin:
            await self._coordinator.refresh()
        self.received += 1
        try:
            result = self._on_event(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("coordination event callback failed for %s", event.action)

    async def aclose(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(ValueError):
            self._coordinator._subscriptions.remove(self)
