"""Multi-operator coordination against a real Redis (and the lock-file fallback on real files).

Two (or three) coordinators talk to the same store in one test, as two consoles would: the
lease held by one while the other is read-only and sees who holds it; hand-over by release;
expiry while the holder is cut off from Redis (a TCP relay in front of Redis that stops
forwarding, as a partition would); shared events within 1 s; break-glass with identity and
reason; four-eyes with self-approval refused; Redis down (read-only, gates closed, break-glass
still there) and a Redis restart mid-deployment. The App-level part (two App instances under
Pilot) belongs to the UI's tests; these cover the core the App calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from backends.lease import (
    CoordinationUnavailable,
    FileCoordinationStore,
    RedisCoordinationStore,
    RefusalCode,
)
from backends.models import ORCHESTRATORS
from console.audit import AuditTrail, open_store
from console.config import AppConfig, AuditConfig
from console.coordination import (
    ApprovalRefused,
    ApprovalTimeout,
    ApprovalUnavailable,
    CoordinationEvent,
    Coordinator,
    EventKind,
    LeaseStatus,
    NotDriving,
    Role,
    SelfApprovalRefused,
    deployment_key,
    open_coordinator,
    operator_identity,
    operator_principal,
)
from console.engines import RedisServer, free_port

ALICE = "alice@host-a"
BOB = "bob@host-b"
LEASE_MS = 3000


def _deployment() -> str:
    return "t-" + uuid.uuid4().hex[:10]


class Consoles:
    """Coordinators made by one test, all closed at its end."""

    def __init__(self) -> None:
        self.made: list[Coordinator] = []

    def redis(
        self,
        url: str,
        deployment: str,
        operator: str,
        *,
        lease_ms: int = LEASE_MS,
        password: str | None = None,
        timeout_s: float = 1.0,
        **kwargs: Any,
    ) -> Coordinator:
        from pydantic import SecretStr

        store = RedisCoordinationStore(
            url,
            deployment,
            password=SecretStr(password) if password else None,
            timeout_s=timeout_s,
        )
        coord = Coordinator(store, operator=operator, lease_ms=lease_ms, **kwargs)
        self.made.append(coord)
        return coord

    def file(self, lock: Path, operator: str, **kwargs: Any) -> Coordinator:
        store = FileCoordinationStore(lock, "site")
        coord = Coordinator(store, operator=operator, lease_ms=LEASE_MS, **kwargs)
        self.made.append(coord)
        return coord

    async def close(self) -> None:
        for coord in reversed(self.made):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(coord.aclose(), 5)


@pytest.fixture
async def consoles() -> AsyncIterator[Consoles]:
    made = Consoles()
    try:
        yield made
    finally:
        await made.close()


T = TypeVar("T")


class Relay:
    """A TCP relay to Redis that can be cut like a network partition.

    ``partition()`` keeps every connection open but forwards nothing (requests vanish, no
    reset comes back), as a cut cable would; ``heal()`` closes those dead connections and
    forwards again. The client under test talks to Redis only through the relay.

    The relay runs its own event loop in a thread: the consoles under test share the test's
    loop, and a relay on that loop would slow down with them on a loaded machine, turning a
    healthy link into a partition the test did not make.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut = False
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def start(self) -> Relay:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.cut:
            return  # accepted, never answered: a black hole
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if not self.cut:
                        dst.write(data)
                        await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def partition(self) -> None:
        self.cut = True

    async def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def heal(self) -> None:
        self.cut = False
        self._call(self._abort_all())

    async def _shut(self) -> None:
        await self._abort_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def close(self) -> None:
        if not self._thread.is_alive():
            return
        self.cut = False
        self._call(self._shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
async def relay_factory() -> AsyncIterator[Callable[[int], Awaitable[Relay]]]:
    relays: list[Relay] = []

    async def make(port: int) -> Relay:
        relay = await Relay(port).start()
        relays.append(relay)
        return relay

    try:
        yield make
    finally:
        for relay in relays:
            await relay.close()


async def eventually(
    check: Callable[[], bool], timeout: float, what: str, step: float = 0.02
) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(step)


class Inbox:
    """Collects a subscriber's events and resyncs."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[CoordinationEvent] = asyncio.Queue()
        self.resyncs = 0

    async def on_event(self, event: CoordinationEvent) -> None:
        await self.events.put(event)

    async def resync(self) -> None:
        self.resyncs += 1

    async def next(
        self, timeout: float = 1.0, skip: tuple[EventKind, ...] = ()
    ) -> CoordinationEvent:
        """The next event (not of a skipped kind) within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = await asyncio.wait_for(self.events.get(), max(0.0, left))
            except TimeoutError:
                pytest.fail(f"no event within {timeout} s")
            if event.kind not in skip:
                return event


pytestmark = pytest.mark.engines


# --- the lease -------------------------------------------------------------------------------


async def test_holder_drives_and_the_other_console_is_read_only_and_sees_who(
    redis_server: RedisServer, consoles: Consoles
) -> None:
    dep = _deployment()
    a = consoles.redis(redis_server.url, dep, ALICE)
    b = consoles.redis(redis_server.url, dep, BOB)

    sa = await a.acquire()
    assert sa.role is Role.DRIVING and sa.can_drive and a.can_drive()
    assert a.fence is not None and a.fence >= 1

    sb = await b.acquire()
    assert sb.role is Role.OBSERVING
    assert not sb.can_drive and not b.can_drive() and b.fence is None
    assert sb.holder is not None
    assert sb.holder.operator == ALICE
    assert sb.holder.fence == a.fence
    assert sb.holder.acquired_at is not None and sb.holder.expires_at is not None
    remaining = sb.holder.remaining_s()
    assert remaining is not None and 0 < remaining <= LEASE_MS / 1000
    assert ALICE in sb.reason and "read-only" in sb.reason and "expires in" in sb.reason

    with pytest.raises(NotDriving, match="alice@host-a"):
        await b.ensure_can_drive("set traffic to 50 % green")
    with pytest.raises(NotDriving):
        await b.publish(EventKind.TRAFFIC, "traffic.set", {"green_percentage": 50})
    assert await a.ensure_can_drive("set traffic to 50 % green") == a.fence

    # The holder's details are readable by anyone, straight from Redis.
    holder = await b.holder()
    assert holder is not None and holder.operator == ALICE and holder.mode == "redis"


async def test_hand_over_by_release_and_fences_grow(
    redis_server: RedisServer, consoles: Consoles
) -> None:
    dep = _deployment()
    a = consoles.redis(redis_server.url, dep, ALICE)
    b = consoles.redis(redis_server.url, dep, BOB)
    await a.acquire()
    first = a.fence
    assert first is not None

    released = await a.release()
    assert released.role is Role.FREE and not a.can_drive()
    assert "released" in released.reason

    sb = await b.acquire()
    assert sb.role is Role.DRIVING and b.fence is not None and b.fence > first
    with pytest.raises(NotDriving):
        await a.ensure_can_drive("run the next step")
    sa = await a.refresh()
    assert sa.role is Role.OBSERVING and sa.holder is not None and sa.holder.operator == BOB

    # A floor from the audit trail lifts the next fence above anything recorded there.
    await b.release()
    a.note_fence(1000)
    await a.acquire()
    assert a.fence == 1001


async def test_a_lease_outlives_its_length_while_the_renewer_runs(
    redis_server: RedisServer, consoles: Consoles
) -> None:
    dep = _deployment()
    a = consoles.redis(redis_server.url, dep, ALICE, lease_ms=1200)
    b = consoles.redis(redis_server.url, dep, BOB, lease_ms=1200)
    await a.start()
    await a.acquire()
    fence = a.fence
    await asyncio.sleep(3.0)  # 2.5 leases
    # Still A's very lease in Redis (same fence), so B cannot take it ...
    seen = await b.acquire()
    assert seen.role is Role.OBSERVING
    assert seen.holder is not None and seen.holder.fence == fence
    # ... and A still holds the token.
    assert (await a.renew()).can_drive and a.fence == fence


async def test_only_the_token_holder_can_renew_or_release(
    redis_server: RedisServer, consoles: Consoles
) -> None:
    dep = _deployment()
    store = RedisCoordinationStore(redis_server.url, dep)
    other = RedisCoordinationStore(redis_server.url, dep)
    try:
        won = await store.acquire(ALICE, 5000)
        assert won.grant is not None
        lost = await other.acquire(BOB, 5000)
        assert lost.grant is None and lost.holder is not None and lost.holder.operator == ALICE
        assert not await other.renew("not-the-token", 5000)
        assert not await other.release("not-the-token")
        assert (await other.holder()) is not None
        assert await store.renew(won.grant.token, 5000)
        assert await store.release(won.grant.token)
        assert await other.holder() is None
        # A released token cannot renew a lease that someone else took since.
        again = await other.acquire(BOB, 5000)
        assert again.grant is not None and again.grant.fence > won.grant.fence
        assert not await store.renew(won.grant.token, 5000)
    finally:
        await store.aclose()
        await other.aclose()


async def test_partitioned_holder_turns_read_only_by_its_deadline_and_b_takes_over(
    redis_server: RedisServer,
    consoles: Consoles,
    relay_factory: Callable[[int], Awaitable[Relay]],
) -> None:
    """No renewer: A's only knowledge is its local deadline, and it still stops in time."""
    relay = await relay_factory(redis_server.port)
    dep = _deployment()
    lease_ms = 2000
    a = consoles.redis(relay.url, dep, ALICE, lease_ms=lease_ms, timeout_s=0.5)
    b = consoles.redis(redis_server.url, dep, BOB, lease_ms=lease_ms)
    await a.acquire()
    fence_a = a.fence
    assert fence_a is not None and a.can_drive()

    relay.partition()
    # Until B holds the lease, poll B's takeover; A must already be read-only when it lands.
    while True:
        status = await b.acquire()
        if status.role is Role.DRIVING:
            break
        await asyncio.sleep(0.05)
    assert not a.can_drive(), "A still believes it drives while B holds the lease"
    sa = a.status()
    assert sa.role is Role.LOST and "expired" in sa.reason
    assert b.fence is not None and b.fence > fence_a

    # Back on the network, A's renewal finds B's lease and says so.
    relay.heal()
    after = await a.renew()
    assert after.role is Role.OBSERVING and not after.can_drive
    assert after.holder is not None and after.holder.operator == BOB
    assert "taken over" in after.reason
    with pytest.raises(NotDriving):
        await a.ensure_can_drive("set traffic")


async def test_partitioned_holder_with_renewer_goes_read_only_at_the_failed_renewal(
    redis_server: RedisServer,
    consoles: Consoles,
    relay_factory: Callable[[int], Awaitable[Relay]],
) -> None:
    relay = await relay_factory(redis_server.port)
    dep = _deployment()
    lease_ms = 2000
    changes: list[LeaseStatus] = []
    a = consoles.redis(relay.url, dep, ALICE, lease_ms=lease_ms, timeout_s=0.5)
    a.on_change = changes.append
    b = consoles.redis(redis_server.url, dep, BOB, lease_ms=lease_ms)
    await a.start()
    await a.acquire()
    assert a.can_drive()

    relay.partition()
    await eventually(lambda: not a.can_drive(), lease_ms / 1000, "A read-only after the cut")
    # It went read-only on the failed renewal, before its deadline.
    assert Role.SUSPENDED in [c.role for c in changes]
    suspended = next(c for c in changes if c.role is Role.SUSPENDED)
    assert "renewal failed" in suspended.reason and "did not answer" in suspended.reason
    await eventually(lambda: a.role is Role.LOST, lease_ms / 1000, "A's lease expired")
    assert "expired" in a.status().reason

    async def b_drives() -> bool:
        return (await b.acquire()).role is Role.DRIVING

    deadline = time.monotonic() + 3
    while not await b_drives():
        assert time.monotonic() < deadline, "B could not take over after A's lease expired"
        await asyncio.sleep(0.05)
    relay.heal()
    await eventually(lambda: a.role is Role.OBSERVING, 3, "A observes B after healing")
    assert a.status().holder is not None and a.status().holder.operator == BOB  # type: ignore[union-attr]
    assert not a.can_drive()


async def test_a_suspended_holder_drives_again_when_a_renewal_gets_through(
    redis_server: RedisServer,
    consoles: Consoles,
    relay_factory: Callable[[int], Awaitable[Relay]],
) -> None:
    relay = await relay_factory(redis_server.port)
    a = consoles.redis(relay.url, _deployment(), ALICE, lease_ms=4000, timeout_s=0.5)
    await a.acquire()
    fence = a.fence
    relay.partition()
    status = await a.renew()
    assert status.role is Role.SUSPENDED and not status.can_drive
    assert "read-only until a renewal succeeds" in status.reason
    relay.heal()
    status = await a.renew()
    assert status.role is Role.DRIVING and a.can_drive() and a.fence == fence
    assert "nobody took it meanwhile" in status.reason


async def test_a_cut_off_holder_is_refused_at_its_next_action_before_its_deadline(
    redis_server: RedisServer,
    consoles: Consoles,
    relay_factory: Callable[[int], Awaitable[Relay]],
) -> None:
    """The issue's "before it can act": the action's own renewal fails, so the action is
    refused with the reason while the local deadline is still seconds away (no renewer runs
    here, so nothing but the action itself finds out about the cut)."""
    relay = await relay_factory(redis_server.port)
    dep = _deployment()
    lease_ms = 6000
    a = consoles.redis(relay.url, dep, ALICE, lease_ms=lease_ms, timeout_s=0.5)
    b = consoles.redis(redis_server.url, dep, BOB, lease_ms=lease_ms)
    await a.acquire()
    fence = a.fence
    assert fence is not None and a.can_drive()

    relay.partition()
    assert a.can_drive(), "local knowledge alone cannot know about the cut yet"
    with pytest.raises(NotDriving, match="renewal failed") as refused:
        await a.ensure_can_drive("set traffic to 100 % green")
    status = refused.value.status
    assert status.role is Role.SUSPENDED and not status.can_drive and status.fence is None
    assert status.deadline_in_s is not None and status.deadline_in_s > 1.0
    assert "set traffic to 100 % green" in str(refused.value)
    # Every other driving path is closed as well, with no further round trip.
    assert not a.can_drive() and a.fence is None
    with pytest.raises(NotDriving):
        await a.publish(EventKind.TRAFFIC, "traffic.set", {"green_percentage": 100.0})
    with pytest.raises(NotDriving, match="renewal failed"):
        await a.request_approval("switch-100")
    # Nobody else holds the lease yet: A stopped itself, Redis did not stop it.
    seen = await b.acquire()
    assert seen.role is Role.OBSERVING and seen.holder is not None
    assert seen.holder.operator == ALICE and seen.holder.fence == fence


# --- shared live state ------------------------------------------------------------------------


async def test_events_reach_the_other_console_within_one_second(
    redis_server: RedisServer, consoles: Consoles
) -> None:
    dep = _deployment()
    a = consoles.redis(redis_server.url, dep, ALICE)
    b = consoles.redis(redis_server.url, dep, BOB)
    inbox = Inbox()
    sub = b.subscribe(inbox.on_event, inbox.resync)
    assert await sub.wait_connected(2)
    await eventually(lambda: inbox.resyncs == 1, 1, "the initial resync")

    await a.acquire()
    acquired = await inbox.next()
    assert acquired.kind is EventKind.LEASE and acquired.action == "lease.acquired"
    assert b.status().holder is not None and b.status().holder.operator == ALICE  # type: ignore[union-attr]

    sent = [
        (EventKind.STEP, "step.started", {"step": "switch-10"}),
        (EventKind.TRAFFIC, "traffic.set", {"green_percentage": 10.0}),
        (EventKind.STEP, "step.passed", {"step": "switch-10"}),
        (EventKind.ROLLBACK, "rollback.finished", {"outcome": "verified"}),
    ]
    seqs = [acquired.seq]
    for kind, action, data in sent:
        result = await a.publish(kind, action, data, deployment_id="20250101_120000")
        assert result.published and result.event.seq is not None
        got = await inbox.next(timeout=1.0)
        assert (got.kind, got.action, got.data) == (kind, action, data)
        assert got.operator == ALICE and got.fence == a.fence and got.origin == a.origin
        assert got.deployment_id == "20250101_120000" and got.seq == result.event.seq
        seqs.append(got.seq)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # type: ignore[operator]
    assert inbox.resyncs == 1 and sub.dropped == 0


async def test_malformed_messages_are_dropped_and_a_gap_triggers_a_resync(
    redis_server: RedisServer, consoles: Consoles
) -> None:
    dep = _deployment()
    a = consoles.redis(redis_server.url, dep, ALICE)
    b = consoles.redis(redis_server.url, dep, BOB)
    inbox = Inbox()
    sub = b.subscribe(inbox.on_event, inbox.resync, resync_on_start=False)
    assert await sub.wait_connected(2)
    await a.acquire()
    await inbox.next()
    assert inbox.resyncs == 0

    raw = aioredis.Redis.from_url(redis_server.url)
    store = a.store
    assert isinstance(store, RedisCoordinationStore)
    try:
        await raw.publish(store.channel, "not json at all")
        await raw.publish(store.channel, json.dumps({"seq": 1, "event": {"kind": "nonsense"}}))
        # An event published without the subscriber seeing it: the sequence jumps.
        await raw.incr(store.seq_key)
    finally:
        await raw.aclose()
    await a.publish(EventKind.STEP, "step.started", {"step": "switch-50"})
    got = await inbox.next()
    assert got.action == "step.started"
    assert sub.dropped == 2
    assert inbox.resyncs == 1  # the gap


# --- break-glass ------------------------------------------------------------------------------


async def test_break_glass_by_a_non_holder_is_recorded_with_identity_and_reason(
    redis_server: RedisServer, consoles: Consoles, tmp_path: Path
) -> None:
    dep = _deployment()
    a = consoles.redis(redis_server.url, dep, ALICE)
    b = consoles.redis(redis_server.url, dep, BOB)
    inbox = Inbox()
    sub = a.subscribe(inbox.on_event, inbox.resync)
    assert await sub.wait_connected(2)
    await a.acquire()
    await b.acquire()
    assert not b.can_drive()

    with pytest.raises(ValueError, match="needs a reason"):
        b.break_glass("   ")
    glass = b.break_glass("P99 at 9 ms on green for 3 minutes", deployment_id="20250101_120000")
    assert glass.operator == BOB and glass.reason == "P99 at 9 ms on green for 3 minutes"
    assert glass.holder == ALICE and glass.holder_fence == a.fence
    assert not glass.console_was_driving

    published = await b.announce(glass)
    assert published.published
    got = await inbox.next(skip=(EventKind.LEASE,))
    assert got.kind is EventKind.BREAK_GLASS and got.operator == BOB
    assert got.data["reason"] == "P99 at 9 ms on green for 3 minutes"
    assert got.data["lease_holder"] == ALICE

    # Into the real audit trail, as the App appends it.
    trail = AuditTrail(
        open_store(AuditConfig(sqlite_path=tmp_path / "audit.sqlite3")),
        tmp_path / "spool.jsonl",
        operator=BOB,
        constitutional_hash="cdd01ef066bc6cf2",
    )
    try:
        result = trail.append(**glass.audit_kwargs())
        assert result.record is not None
        record = result.record
        assert record.action == "break_glass" and record.operator == BOB
        assert record.deployment_id == "20250101_120000" and record.fence is None
        assert record.evidence["reason"] == "P99 at 9 ms on green for 3 minutes"
        assert record.evidence["lease_holder"] == ALICE
    finally:
        trail.close()


# --- four eyes --------------------------------------------------------------------------------


async def test_four_eyes_needs_a_second_operator_and_refuses_self_approval(
    redis_server: RedisServer, consoles: Consoles
) -> None:
    dep = _deployment()
    a = consoles.redis(redis_server.url, dep, ALICE)
    b = consoles.redis(redis_server.url, dep, BOB, read_only=True)
    alice_elsewhere = consoles.redis(redis_server.url, dep, "Alice@laptop (ssh 10.0.0.9)")
    assert a.needs_four_eyes("switch-100") and a.needs_four_eyes("decommission-blue")
    assert not a.needs_four_eyes("switch-10")

    with pytest.raises(NotDriving):
        await a.request_approval("switch-100")  # only the driver reaches a gate
    await a.acquire()
    request = await a.request_approval("switch-100", deployment_id="20250101_120000")
    assert request.requester == ALICE and request.fence == a.fence

    pending = await b.pending_approvals()
    assert [(p.gate, p.requester) for p in pending] == [("switch-100", ALICE)]

    with pytest.raises(SelfApprovalRefused, match="same operator"):
        await a.approve("switch-100")
    with pytest.raises(SelfApprovalRefused):
        await alice_elsewhere.approve("switch-100", request.request_id)
    with pytest.raises(ApprovalTimeout, match="stays closed"):
        await a.wait_for_approval(request, timeout_s=0.5)

    approved = await b.approve("switch-100", request.request_id)
    assert approved.approver == BOB and approved.requester == ALICE
    with pytest.raises(ApprovalRefused) as again:
        await b.approve("switch-100", request.request_id)
    assert again.value.code is RefusalCode.ALREADY_APPROVED

    passed = await a.wait_for_approval(request, timeout_s=2)
    assert passed.approver == BOB
    # Consumed: the same approval cannot open the gate twice.
    assert await a.approval("switch-100") is None
    with pytest.raises(ApprovalRefused):
        await a.wait_for_approval(request, timeout_s=0.5)
    with pytest.raises(ApprovalRefused) as none:
        await b.approve("switch-100")
    assert none.value.code is RefusalCode.NO_REQUEST


async def test_a_replaced_request_cannot_be_approved_by_its_old_id(
    redis_server: RedisServer, consoles: Consoles
) -> None:
    dep = _deployment()
    a = consoles.redis(redis_server.url, dep, ALICE)
    b = consoles.redis(redis_server.url, dep, BOB)
    await a.acquire()
    old = await a.request_approval("decommission-blue")
    new = await a.request_approval("decommission-blue")
    with pytest.raises(ApprovalRefused) as stale:
        await b.approve("decommission-blue", old.request_id)
    assert stale.value.code is RefusalCode.STALE_REQUEST
    with pytest.raises(ApprovalRefused):
        await a.wait_for_approval(old, timeout_s=0.5)
    await b.approve("decommission-blue", new.request_id)
    assert (await a.wait_for_approval(new, timeout_s=2)).approver == BOB


# --- degraded: Redis down, Redis restarting -------------------------------------------------


async def test_redis_down_means_read_only_and_gates_closed_but_break_glass_works(
    consoles: Consoles,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    a = consoles.redis(url, _deployment(), ALICE)
    status = await a.acquire()
    assert status.role is Role.UNAVAILABLE and not status.can_drive and not a.can_drive()
    assert "unreachable" in status.reason and "rollback stays available" in status.reason
    with pytest.raises(NotDriving, match="unreachable"):
        await a.request_approval("switch-100")
    with pytest.raises(ApprovalUnavailable):
        await a.approve("switch-100")
    with pytest.raises(ApprovalUnavailable):
        await a.pending_approvals()

    glass = a.break_glass("green returning 500s")
    assert glass.operator == ALICE and glass.reason == "green returning 500s"
    result = await a.announce(glass)
    assert not result.published and result.error is not None
    assert glass.audit_kwargs()["action"] == "break_glass"


async def test_redis_restart_mid_deployment(
    fresh_redis: Callable[..., RedisServer], consoles: Consoles
) -> None:
    server = fresh_redis(password="s3cret-coord")
    dep = _deployment()
    changes: list[LeaseStatus] = []
    a = consoles.redis(server.url, dep, ALICE, password="s3cret-coord", on_change=changes.append)
    b = consoles.redis(server.url, dep, BOB, password="s3cret-coord")
    inbox = Inbox()
    sub = b.subscribe(inbox.on_event, inbox.resync)
    assert await sub.wait_connected(2)
    await a.start()
    await a.acquire()
    before = a.fence
    assert before is not None
    await a.publish(EventKind.STEP, "step.started", {"step": "switch-50"})
    await eventually(lambda: inbox.events.qsize() >= 2, 1, "events before the restart")
    resyncs_before = inbox.resyncs

    await asyncio.to_thread(server.restart)  # no persistence: every key is gone

    # The holder notices the lock is gone and takes it again with a larger fence.
    await eventually(
        lambda: a.can_drive() and a.fence is not None and a.fence > before,
        5,
        "A re-acquires after the restart",
    )
    reasons = " | ".join(c.reason for c in changes)
    assert "Redis restarted" in reasons or "renewal failed" in reasons
    assert "took it again" in reasons
    # The observer's subscription came back and resynced from the audit store.
    await eventually(lambda: inbox.resyncs > resyncs_before and sub.connected, 5, "B resyncs")
    while not inbox.events.empty():
        inbox.events.get_nowait()
    result = await a.publish(EventKind.TRAFFIC, "traffic.set", {"green_percentage": 50.0})
    assert result.published
    got = await inbox.next(skip=(EventKind.LEASE,))
    assert got.action == "traffic.set" and got.fence == a.fence
    status = await b.refresh()
    assert status.role is Role.OBSERVING and status.holder is not None
    assert status.holder.operator == ALICE


async def test_redis_that_stays_down_leaves_the_holder_read_only_with_the_reason(
    fresh_redis: Callable[..., RedisServer], consoles: Consoles
) -> None:
    server = fresh_redis()
    a = consoles.redis(server.url, _deployment(), ALICE, lease_ms=1500, timeout_s=0.5)
    await a.start()
    await a.acquire()
    await asyncio.to_thread(server.stop)
    await eventually(lambda: a.role is Role.LOST, 3, "A's lease runs out with Redis down")
    status = a.status()
    assert not status.can_drive and "expired" in status.reason
    assert "Connection refused" in status.reason or "Error" in status.reason
    glass = a.break_glass("Redis is down and green misbehaves")
    assert glass.console_was_driving is False


# --- observer console, identity, configuration -------------------------------------------------


async def test_a_read_only_console_never_drives_but_can_approve(
    redis_server: RedisServer, consoles: Consoles
) -> None:
    dep = _deployment()
    watcher = consoles.redis(redis_server.url, dep, BOB, read_only=True)
    status = await watcher.acquire()
    assert status.role is Role.OBSERVER and not status.can_drive
    assert "--read-only" in status.reason
    await watcher.refresh()
    assert watcher.role is Role.OBSERVER
    with pytest.raises(NotDriving):
        await watcher.ensure_can_drive("switch traffic")


def test_operator_identity_and_principal() -> None:
    env = {"USER": "alice", "SSH_CONNECTION": "10.0.0.5 51234 10.0.0.1 22"}
    assert operator_identity(environ=env, hostname="bastion") == "alice@bastion (ssh 10.0.0.5)"
    assert operator_identity(environ={"USER": "bob"}, hostname="h") == "bob@h"
    assert operator_identity(
        environ={"LOGNAME": "carol", "SSH_CLIENT": "10.1.1.1 1 22"}, hostname="h"
    ) == ("carol@h (ssh 10.1.1.1)")
    assert operator_identity("oncall@site", environ=env) == "oncall@site"
    assert "@" in operator_identity()
    assert operator_principal("Alice@bastion (ssh 10.0.0.5)") == "alice"
    assert operator_principal("alice@laptop") == operator_principal("ALICE")
    assert operator_principal("bob@bastion") != operator_principal("alice@bastion")


def _config(**coordination: Any) -> AppConfig:
    services = {
        name: {"base_url": f"http://127.0.0.1:{19000 + i}"} for i, name in enumerate(ORCHESTRATORS)
    }
    return AppConfig(
        environments={"blue": {"services": services}, "green": {"services": services}},
        traffic={"kind": "haproxy", "admin": "127.0.0.1:9999"},
        coordination=coordination,
        operator="oncall@site",
    )


async def test_open_coordinator_follows_the_config(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with_redis = open_coordinator(_config(redis_url=redis_server.url, lease_ms=2000))
    without = open_coordinator(_config(lock_file=str(tmp_path / "c.lock")))
    named = _config(deployment="prod-eu", lock_file=str(tmp_path / "c.lock"))
    chosen = open_coordinator(
        _config(lock_file=str(tmp_path / "d.lock"), four_eyes_gates=["switch-50"])
    )
    none = open_coordinator(_config(lock_file=str(tmp_path / "e.lock"), four_eyes_gates=[]))
    try:
        assert with_redis.mode == "redis" and with_redis.operator == "oncall@site"
        assert with_redis.lease_ms == 2000
        assert without.mode == "lock_file" and without.store.where == str(tmp_path / "c.lock")
        # The same load balancer gives the same key; another one a different key.
        assert deployment_key(_config()) == deployment_key(_config(lease_ms=5000))
        assert deployment_key(_config()).startswith("lb-")
        other = _config()
        other = other.model_copy(
            update={"traffic": other.traffic.model_copy(update={"backend": "x"})}
        )
        assert deployment_key(other) != deployment_key(_config())
        assert deployment_key(named) == "prod-eu"
        assert (await with_redis.acquire()).can_drive
        # Four-eyes gates: the 100 % switch and blue's decommission unless configured.
        assert with_redis.four_eyes_gates == {"switch-100", "decommission-blue"}
        assert without.needs_four_eyes("decommission-blue")
        assert not without.needs_four_eyes("switch-50")
        assert chosen.four_eyes_gates == {"switch-50"}
        assert chosen.needs_four_eyes("switch-50") and not chosen.needs_four_eyes("switch-100")
        assert none.four_eyes_gates == frozenset()
    finally:
        await with_redis.aclose()
        await without.aclose()
        await chosen.aclose()
        await none.aclose()


def test_a_bad_deployment_name_is_refused_clearly() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="deployment"):
        _config(deployment="prod eu/1")
    with pytest.raises(ValueError, match="not usable"):
        RedisCoordinationStore("redis://127.0.0.1:1/0", "a b")


# --- lock-file mode ------------------------------------------------------------------------------


async def test_lock_file_lease_hand_over_and_holder(tmp_path: Path, consoles: Consoles) -> None:
    lock = tmp_path / "state" / "console.lock"
    a = consoles.file(lock, ALICE)
    b = consoles.file(lock, BOB)
    sa = await a.acquire()
    assert sa.role is Role.DRIVING and sa.mode == "lock_file" and a.fence == 1
    sb = await b.acquire()
    assert sb.role is Role.OBSERVING and not b.can_drive()
    assert sb.holder is not None and sb.holder.operator == ALICE and sb.holder.pid is not None
    assert sb.holder.expires_at is None and "held until released" in sb.reason
    assert await a.ensure_can_drive("switch traffic") == 1
    await a.release()
    assert (await b.acquire()).role is Role.DRIVING and b.fence == 2
    assert (await a.refresh()).holder.operator == BOB  # type: ignore[union-attr]


async def test_lock_file_replaced_under_the_holder_means_lost(
    tmp_path: Path, consoles: Consoles
) -> None:
    # A deleted lock file no longer excludes anyone: the holder must not keep driving on it.
    lock = tmp_path / "console.lock"
    a = consoles.file(lock, ALICE, reacquire=False)
    await a.acquire()
    lock.unlink()
    status = await a.renew()
    assert status.role is Role.LOST and not status.can_drive
    assert "the lock is gone" in status.reason
    # With reacquire (the default) it takes the new file's lock, with a new fence.
    b = consoles.file(tmp_path / "other.lock", ALICE)
    await b.acquire()
    (tmp_path / "other.lock").unlink()
    status = await b.renew()
    assert status.role is Role.DRIVING and b.fence == 2 and "took it again" in status.reason


async def test_lock_file_events_and_four_eyes_between_consoles_on_one_host(
    tmp_path: Path, consoles: Consoles
) -> None:
    lock = tmp_path / "console.lock"
    a = consoles.file(lock, ALICE)
    b = consoles.file(lock, BOB)
    inbox = Inbox()
    sub = b.subscribe(inbox.on_event, inbox.resync)
    assert await sub.wait_connected(2)
    await a.acquire()
    assert (await inbox.next()).action == "lease.acquired"
    await a.publish(EventKind.TRAFFIC, "traffic.set", {"green_percentage": 25.0})
    got = await inbox.next()
    assert got.action == "traffic.set" and got.data == {"green_percentage": 25.0}

    request = await a.request_approval("switch-100")
    with pytest.raises(SelfApprovalRefused):
        await a.approve("switch-100")
    assert [p.gate for p in await b.pending_approvals()] == ["switch-100"]
    await b.approve("switch-100", request.request_id)
    assert (await a.wait_for_approval(request, timeout_s=2)).approver == BOB

    glass = b.break_glass("blue only, now")
    assert (await b.announce(glass)).published
    got = await inbox.next(skip=(EventKind.APPROVAL,))
    assert got.kind is EventKind.BREAK_GLASS and got.operator == BOB


async def test_lock_file_in_an_unwritable_place_is_unavailable(consoles: Consoles) -> None:
    a = consoles.file(Path("/proc/acgs-console-test/console.lock"), ALICE)
    status = await a.acquire()
    assert status.role is Role.UNAVAILABLE and not status.can_drive
    assert "/proc/acgs-console-test" in status.reason


async def test_store_errors_name_the_store(consoles: Consoles) -> None:
    store = RedisCoordinationStore(f"redis://127.0.0.1:{free_port()}/0", "x", timeout_s=0.5)
    try:
        with pytest.raises(CoordinationUnavailable, match=r"redis://127\.0\.0\.1:\d+/0"):
            await store.holder()
    finally:
        await store.aclose()


async def test_an_idle_subscription_stays_connected_without_resyncing(
    redis_server: RedisServer, consoles: Consoles
) -> None:
    dep = _deployment()
    a = consoles.redis(redis_server.url, dep, ALICE, timeout_s=0.5)
    b = consoles.redis(redis_server.url, dep, BOB, timeout_s=0.5)
    inbox = Inbox()
    sub = b.subscribe(inbox.on_event, inbox.resync)
    assert await sub.wait_connected(2)
    await asyncio.sleep(2.5)  # several ping intervals with nothing published
    assert sub.connected and inbox.resyncs == 1 and sub.last_error is None
    await a.acquire()
    assert (await inbox.next()).action == "lease.acquired"


async def test_a_subscriber_cut_off_silently_reconnects_and_resyncs(
    redis_server: RedisServer,
    consoles: Consoles,
    relay_factory: Callable[[int], Awaitable[Relay]],
) -> None:
    relay = await relay_factory(redis_server.port)
    dep = _deployment()
    a = consoles.redis(redis_server.url, dep, ALICE)
    b = consoles.redis(relay.url, dep, BOB, timeout_s=0.5)
    inbox = Inbox()
    sub = b.subscribe(inbox.on_event, inbox.resync)
    assert await sub.wait_connected(2)
    await a.start()
    await a.acquire()
    await inbox.next()

    relay.partition()  # no reset, no error: only the feed's own ping can tell
    await eventually(lambda: not sub.connected, 6, "the subscriber notices the silent cut")
    assert sub.last_error is not None
    missed = await a.publish(EventKind.STEP, "step.started", {"step": "switch-100"})
    assert missed.published
    relay.heal()
    await eventually(lambda: sub.connected and inbox.resyncs == 2, 6, "reconnect and resync")
    await a.publish(EventKind.STEP, "step.passed", {"step": "switch-100"})
    got = await inbox.next(skip=(EventKind.LEASE,))
    assert got.action == "step.passed"
