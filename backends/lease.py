"""Lease lock, event channel and four-eyes approvals: the storage side of operator coordination.

This module owns the primitives several consoles share, in two flavours with one interface
(:class:`CoordinationStore`):

* :class:`RedisCoordinationStore` -- the multi-host engine. The lease is ``SET key token NX
  PX lease_ms`` with a random token; renewal is compare-and-``PEXPIRE`` and release is
  compare-and-``DEL`` (Lua scripts, so nobody renews or drops a lease someone else took in
  between). Each acquisition ``INCR``\\ s a separate fence counter, in the same script, so
  the fencing number and the lease can never disagree. Holder details (operator, since,
  renewed) sit in a hash next to the lock with the same expiry. Events go out on one
  pub/sub channel per deployment, each with a sequence number from ``INCR`` (also one
  script), so a listener can tell a gap. Four-eyes approvals are JSON in one hash per
  deployment; approving is a script that refuses the requester's own principal atomically.
* :class:`FileCoordinationStore` -- the single-host fallback without Redis. The lease is an
  ``fcntl.flock`` on the lock file (the kernel drops it when the process dies, so it needs no
  expiry); the holder's details are written into the locked file; the fence counter,
  the events (JSON lines, tailed) and the approvals live in small files next to it, each
  changed under its own ``flock``.

Nothing here decides policy (who may drive, when a lease counts as lost, whose identity is
"the same person"): that is :mod:`console.coordination`. Everything that cannot reach its
store raises :class:`CoordinationUnavailable` with the reason; nothing here retries.

Key layout in Redis for deployment ``D`` (the braces keep every key of one deployment in one
cluster slot, which the scripts need): ``acgs-console:{D}:lease`` (the token),
``...:holder`` (hash), ``...:fence``, ``...:seq``, ``...:approvals`` (hash, gate -> JSON);
channel ``acgs-console:{D}:events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from backends.models import Frozen, utcnow

__all__ = [
    "KEY_PREFIX",
    "AcquireOutcome",
    "Approval",
    "ApprovalRefused",
    "ApprovalStatus",
    "CoordinationStore",
    "CoordinationUnavailable",
    "EventFeed",
    "FileCoordinationStore",
    "Grant",
    "LeaseHolder",
    "RedisCoordinationStore",
    "RefusalCode",
    "decode_event",
    "validate_deployment",
]

KEY_PREFIX = "acgs-console"
_DEPLOYMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_APPROVAL_TTL_MS = 12 * 3600 * 1000


def validate_deployment(deployment: str) -> str:
    """Check a deployment key (it becomes part of Redis keys and file names).

    Raises:
        ValueError: Naming the value and what is allowed.
    """
    if not _DEPLOYMENT.match(deployment):
        raise ValueError(
            f"deployment key {deployment!r} is not usable: "
            "use 1-64 letters, digits, '_', '.' or '-'"
        )
    return deployment


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


# --- models ----------------------------------------------------------------------------------


class LeaseHolder(Frozen):
    """Who holds a deployment's lease, as any console can read it."""

    deployment: str
    operator: str
    """``user@host`` of the holder."""
    fence: int | None
    """The fencing number of this acquisition (None when the holder could not be read)."""
    acquired_at: datetime | None
    """When the holder took the lease (the holder's clock)."""
    renewed_at: datetime | None = None
    """The holder's last successful renewal (the holder's clock)."""
    expires_at: datetime | None = None
    """When the lease runs out unless renewed (reader's clock, from the key's TTL);
    None for a lock file, which is held until released or until its process ends."""
    mode: Literal["redis", "lock_file"]
    pid: int | None = None
    """The holding process, for a lock file."""

    def remaining_s(self, now: datetime | None = None) -> float | None:
        """Seconds until expiry; None when the lease does not expire by itself."""
        if self.expires_at is None:
            return None
        return max(0.0, (self.expires_at - (now or utcnow())).total_seconds())


class Grant(Frozen):
    """A lease this console holds."""

    token: str
    """The random token that proves ownership; never shown."""
    fence: int
    holder: LeaseHolder


class AcquireOutcome(Frozen):
    """The answer to an acquisition: the grant, or who holds the lease instead."""

    grant: Grant | None = None
    holder: LeaseHolder | None = None
    """The current holder when refused (None when it vanished in between)."""


class ApprovalStatus(StrEnum):
    """Where a four-eyes request stands."""

    PENDING = "pending"
    APPROVED = "approved"


class Approval(Frozen):
    """A four-eyes request for one gate, and its approval once given."""

    request_id: str
    deployment: str
    gate: str
    requester: str
    requester_principal: str
    """The requester's principal (who counts as "the same person"), compared on approval."""
    requested_at: datetime
    fence: int | None = None
    """The requester's fencing number when it asked."""
    deployment_id: str | None = None
    """The run (``YYYYMMDD_HHMMSS``) the gate belongs to."""
    status: ApprovalStatus = ApprovalStatus.PENDING
    approver: str | None = None
    approved_at: datetime | None = None


class RefusalCode(StrEnum):
    """Why an approval was refused by the store."""

    NO_REQUEST = "no_request"
    SELF_APPROVAL = "self_approval"
    STALE_REQUEST = "stale_request"
    ALREADY_APPROVED = "already_approved"


class ApprovalRefused(Exception):
    """The store refused an approval.

    Attributes:
        code: Why.
        approval: The request as stored, when there is one.
    """

    def __init__(self, code: RefusalCode, message: str, approval: Approval | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.approval = approval


class CoordinationUnavailable(Exception):
    """The coordination store cannot be reached or answered nonsense; the message says which."""


class EventFeed(Protocol):
    """Raw event messages of one deployment, from the moment the feed was opened."""

    async def next(self, timeout: float) -> str | None:
        """The next raw message, or None when none came within ``timeout`` seconds.

        Raises:
            CoordinationUnavailable: The feed broke (connection lost, file replaced).
        """
        ...

    async def aclose(self) -> None:
        """Stop listening."""
        ...


class CoordinationStore(Protocol):
    """What :mod:`console.coordination` needs from a store (Redis or lock file)."""

    mode: Literal["redis", "lock_file"]
    deployment: str

    @property
    def where(self) -> str:
        """Where the store is, for messages (a URL without credentials, or a path)."""
        ...

    async def acquire(self, operator: str, lease_ms: int, fence_floor: int = 0) -> AcquireOutcome:
        """Take the lease if free; the fence is above ``fence_floor``."""
        ...

    async def renew(self, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds it; False when it does not."""
        ...

    async def release(self, token: str) -> bool:
        """Drop the lease if ``token`` still holds it; False when it did not."""
        ...

    async def holder(self) -> LeaseHolder | None:
        """The current holder, None when the lease is free."""
        ...

    async def publish(self, body: str) -> int:
        """Send one event (a JSON object); returns its sequence number."""
        ...

    async def open_feed(self) -> EventFeed:
        """Start listening; returns once listening (so a resync after it misses nothing)."""
        ...

    async def put_approval(self, approval: Approval) -> None:
        """Store a request, replacing any earlier one for the same gate."""
        ...

    async def approve(
        self, gate: str, request_id: str | None, approver: str, principal: str, at: datetime
    ) -> Approval:
        """Approve a pending request atomically; refuses the requester's own principal."""
        ...

    async def get_approval(self, gate: str) -> Approval | None:
        """The request for ``gate``, if any."""
        ...

    async def approvals(self) -> list[Approval]:
        """Every request of this deployment."""
        ...

    async def remove_approval(self, gate: str, request_id: str, approved_only: bool) -> bool:
        """Remove the request if it is still ``request_id`` (and approved, when asked)."""
        ...

    async def aclose(self) -> None:
        """Close connections and files."""
        ...


def decode_event(raw: str) -> dict[str, Any]:
    """Parse a ``{"seq": N, "event": {...}}`` envelope; raises ValueError when malformed."""
    envelope = json.loads(raw)
    if (
        not isinstance(envelope, dict)
        or not isinstance(envelope.get("seq"), int)
        or not isinstance(envelope.get("event"), dict)
    ):
        raise ValueError("not an event envelope {seq, event}")
    return envelope


def _envelope(seq: int, body: str) -> str:
    return '{"seq":' + str(seq) + ',"event":' + body + "}"


def _check_body(body: str) -> None:
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"event body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("event body must be a JSON object")


def _parse_approval(raw: str | bytes | None) -> Approval | None:
    if raw is None:
        return None
    try:
        return Approval.model_validate_json(raw)
    except ValidationError as exc:
        raise CoordinationUnavailable(f"unreadable approval record: {exc}") from None


def _refusal(code: str, gate: str, stored: Approval | None, approver: str) -> ApprovalRefused:
    if code == RefusalCode.NO_REQUEST:
        return ApprovalRefused(
            RefusalCode.NO_REQUEST, f"no approval request for gate {gate!r} to approve", stored
        )
    if code == RefusalCode.STALE_REQUEST:
        return ApprovalRefused(
            RefusalCode.STALE_REQUEST,
            f"the request for gate {gate!r} was replaced by a newer one; approve that one",
            stored,
        )
    if code == RefusalCode.ALREADY_APPROVED:
        who = stored.approver if stored else "someone"
        return ApprovalRefused(
            RefusalCode.ALREADY_APPROVED, f"gate {gate!r} is already approved by {who}", stored
        )
    requester = stored.requester if stored else "the requester"
    return ApprovalRefused(
        RefusalCode.SELF_APPROVAL,
        f"{approver} cannot approve gate {gate!r}: it was requested by {requester}, the same "
        "operator; four-eyes needs a second, different operator",
        stored,
    )


# --- Redis -----------------------------------------------------------------------------------

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[3])
  local floor = tonumber(ARGV[4])
  if fence <= floor then
    fence = floor + 1
    redis.call('SET', KEYS[3], fence)
  end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'operator', ARGV[3], 'acquired_at', ARGV[5],
             'renewed_at', ARGV[5], 'fence', fence)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {1, fence}
end
return {0, 0}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], 'renewed_at', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""

_HOLDER = """
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  return {-2}
end
return {pttl, redis.call('HGETALL', KEYS[2])}
"""

_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], '{"seq":' .. seq .. ',"event":' .. ARGV[2] .. '}')
return seq
"""

_APPROVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return {'no_request', ''}
end
local a = cjson.decode(raw)
if ARGV[2] ~= '' and a['request_id'] ~= ARGV[2] then
  return {'stale_request', raw}
end
if a['status'] == 'approved' then
  return {'already_approved', raw}
end
if a['requester_principal'] == ARGV[4] then
  return {'self_approval', raw}
end
a['status'] = 'approved'
a['approver'] = ARGV[3]
a['approved_at'] = ARGV[5]
local out = cjson.encode(a)
redis.call('HSET', KEYS[1], ARGV[1], out)
return {'ok', out}
"""

_REMOVE_APPROVAL = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local a = cjson.decode(raw)
if a['request_id'] ~= ARGV[2] then
  return 0
end
if ARGV[3] == '1' and a['status'] ~= 'approved' then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class _RedisFeed:
    """A pub/sub subscription on the deployment's channel."""

    def __init__(self, pubsub: PubSub, channel: str, ping_every_s: float) -> None:
        self._pubsub = pubsub
        self._channel = channel
        self._ping_every_s = ping_every_s
        self._last_heard = time.monotonic()
        self._ping_sent: float | None = None

    async def next(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            # A half-open connection delivers nothing and raises nothing: ping it, and give up
            # when even the pong does not come back.
            if self._ping_sent is not None and now - self._ping_sent > 2 * self._ping_every_s:
                raise CoordinationUnavailable(
                    f"event channel silent: no answer to a ping for {now - self._ping_sent:.1f} s"
                )
            if self._ping_sent is None and now - self._last_heard > self._ping_every_s:
                try:
                    await self._pubsub.ping()
                except (RedisError, OSError) as exc:
                    raise CoordinationUnavailable(f"event channel lost: {exc}") from None
                self._ping_sent = now
            left = deadline - now
            if left <= 0:
                return None
            try:
                message = await self._pubsub.get_message(timeout=min(left, self._ping_every_s))
            except (RedisError, OSError) as exc:
                raise CoordinationUnavailable(f"event channel lost: {exc}") from None
            if message is None:
                continue
            self._last_heard = time.monotonic()
            self._ping_sent = None
            if message.get("type") == "message" and _text(message.get("channel")) == self._channel:
                return _text(message.get("data"))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]


class RedisCoordinationStore:
    """The coordination primitives on a Redis server.

    Args:
        url: ``redis://host:port/db`` (no credentials in it).
        deployment: The deployment the lease covers (see :func:`validate_deployment`).
        password: Redis AUTH password.
        timeout_s: Connect and per-command timeout; a store that does not answer in time is
            unavailable (the caller fails closed).
    """

    mode: Literal["redis", "lock_file"] = "redis"

    def __init__(
        self,
        url: str,
        deployment: str,
        password: SecretStr | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        self.url = url
        self.deployment = validate_deployment(deployment)
        self.timeout_s = timeout_s
        base = f"{KEY_PREFIX}:{{{deployment}}}"
        self.lease_key = f"{base}:lease"
        self.holder_key = f"{base}:holder"
        self.fence_key = f"{base}:fence"
        self.seq_key = f"{base}:seq"
        self.approvals_key = f"{base}:approvals"
        self.channel = f"{base}:events"
        # One retry, on a broken connection only: a pooled connection that died while idle
        # (Redis restarted, the network came back) should not cost a renewal. Timeouts are
        # not retried; they reach the policy at once, which fails closed.
        self._client: Redis = Redis.from_url(
            url,
            password=password.get_secret_value() if password else None,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_timeout=False,
            decode_responses=True,
            health_check_interval=0,
            client_name="acgs-console-coordination",
        )
        # The event feed gets its own connection without retries or read timeout: a silent
        # reconnect would skip the resync, and the feed's own pings find a dead connection.
        self._feed_client: Redis = Redis.from_url(
            url,
            password=password.get_secret_value() if password else None,
            socket_connect_timeout=timeout_s,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
            health_check_interval=0,
            client_name="acgs-console-coordination-events",
        )
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._holder = self._client.register_script(_HOLDER)
        self._publish = self._client.register_script(_PUBLISH)
        self._approve = self._client.register_script(_APPROVE)
        self._remove_approval = self._client.register_script(_REMOVE_APPROVAL)

    def __repr__(self) -> str:
        return f"RedisCoordinationStore({self.where!r}, deployment={self.deployment!r})"

    @property
    def where(self) -> str:
        """The Redis URL (it never carries credentials)."""
        return self.url

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, self.timeout_s)
        except TimeoutError:
            # The connection may hold half a reply now; never reuse it.
            await self._client.connection_pool.disconnect()
            raise CoordinationUnavailable(
                f"Redis at {self.url} did not answer {what} within {self.timeout_s:g} s"
            ) from None
        except (RedisError, OSError) as exc:
            await self._client.connection_pool.disconnect()
            raise CoordinationUnavailable(f"Redis at {self.url} failed {what}: {exc}") from None

    async def acquire(self, operator: str, lease_ms: int, fence_floor: int = 0) -> AcquireOutcome:
        """``SET NX PX`` with a fresh token; on success ``INCR`` the fence above the floor."""
        token = secrets.token_hex(16)
        now = utcnow()
        reply = await self._call(
            "the lease acquisition",
            self._acquire(
                keys=[self.lease_key, self.holder_key, self.fence_key],
                args=[token, lease_ms, operator, max(0, fence_floor), _iso(now)],
            ),
        )
        if int(reply[0]) == 1:
            fence = int(reply[1])
            holder = LeaseHolder(
                deployment=self.deployment,
                operator=operator,
                fence=fence,
                acquired_at=now,
                renewed_at=now,
                expires_at=now + timedelta(milliseconds=lease_ms),
                mode="redis",
            )
            return AcquireOutcome(grant=Grant(token=token, fence=fence, holder=holder))
        return AcquireOutcome(holder=await self.holder())

    async def renew(self, token: str, lease_ms: int) -> bool:
        """Compare-and-``PEXPIRE``: True only when ``token`` still holds the lease."""
        reply = await self._call(
            "the lease renewal",
            self._renew(
                keys=[self.lease_key, self.holder_key], args=[token, lease_ms, _iso(utcnow())]
            ),
        )
        return int(reply) == 1

    async def release(self, token: str) -> bool:
        """Compare-and-``DEL``: True when ``token`` held the lease and it is now free."""
        reply = await self._call(
            "the lease release",
            self._release(keys=[self.lease_key, self.holder_key], args=[token]),
        )
        return int(reply) == 1

    async def holder(self) -> LeaseHolder | None:
        """The holder with the expiry from the lock key's TTL, None when free."""
        reply = await self._call(
            "the holder lookup", self._holder(keys=[self.lease_key, self.holder_key])
        )
        pttl = int(reply[0])
        if pttl == -2:
            return None
        flat = [_text(v) for v in reply[1]] if len(reply) > 1 else []
        info = dict(zip(flat[::2], flat[1::2], strict=False))
        fence_text = info.get("fence", "")
        return LeaseHolder(
            deployment=self.deployment,
            # A lock without details (written by something else) still means "held".
            operator=info.get("operator") or "(unknown holder)",
            fence=int(fence_text) if fence_text.isdigit() else None,
            acquired_at=_parse_time(info.get("acquired_at")),
            renewed_at=_parse_time(info.get("renewed_at")),
            expires_at=utcnow() + timedelta(milliseconds=pttl) if pttl >= 0 else None,
            mode="redis",
        )

    async def publish(self, body: str) -> int:
        """``INCR`` the sequence and ``PUBLISH`` ``{"seq": N, "event": body}`` in one step."""
        _check_body(body)
        reply = await self._call(
            "the event publication",
            self._publish(keys=[self.seq_key], args=[self.channel, body]),
        )
        return int(reply)

    async def open_feed(self) -> EventFeed:
        """Subscribe to the deployment's channel; returns once Redis confirmed it."""
        pubsub = self._feed_client.pubsub()
        try:
            await asyncio.wait_for(pubsub.subscribe(self.channel), self.timeout_s)
            # Wait for the confirmation, so whatever is published after we return reaches us.
            deadline = time.monotonic() + self.timeout_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                message = await pubsub.get_message(timeout=left)
                if message is not None and message.get("type") == "subscribe":
                    break
        except (TimeoutError, RedisError, OSError) as exc:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            why = "no confirmation in time" if isinstance(exc, TimeoutError) else str(exc)
            raise CoordinationUnavailable(
                f"cannot subscribe to events on Redis at {self.url}: {why}"
            ) from None
        return _RedisFeed(pubsub, self.channel, ping_every_s=max(1.0, 2 * self.timeout_s))

    async def put_approval(self, approval: Approval) -> None:
        """``HSET`` the request under its gate (replacing an older one)."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self.approvals_key, approval.gate, approval.model_dump_json())
        pipe.pexpire(self.approvals_key, _APPROVAL_TTL_MS)
        await self._call("storing the approval request", pipe.execute())

    async def approve(
        self, gate: str, request_id: str | None, approver: str, principal: str, at: datetime
    ) -> Approval:
        """Approve atomically in a script; raises :class:`ApprovalRefused` with the reason."""
        code, raw = await self._call(
            "the approval",
            self._approve(
                keys=[self.approvals_key],
                args=[gate, request_id or "", approver, principal, _iso(at)],
            ),
        )
        stored = _parse_approval(_text(raw)) if _text(raw) else None
        if _text(code) != "ok" or stored is None:
            raise _refusal(_text(code), gate, stored, approver)
        return stored

    async def get_approval(self, gate: str) -> Approval | None:
        """The request stored for ``gate``."""
        raw = await self._call("reading the approval", self._client.hget(self.approvals_key, gate))
        return _parse_approval(raw)

    async def approvals(self) -> list[Approval]:
        """Every request of the deployment, oldest first."""
        raw = await self._call("reading the approvals", self._client.hgetall(self.approvals_key))
        found = [_parse_approval(v) for v in raw.values()]
        return sorted((a for a in found if a is not None), key=lambda a: a.requested_at)

    async def remove_approval(self, gate: str, request_id: str, approved_only: bool) -> bool:
        """Remove the request if still ``request_id`` (and approved when ``approved_only``)."""
        reply = await self._call(
            "removing the approval",
            self._remove_approval(
                keys=[self.approvals_key], args=[gate, request_id, "1" if approved_only else "0"]
            ),
        )
        return int(reply) == 1

    async def aclose(self) -> None:
        """Close the clients and their connections."""
        for client in (self._client, self._feed_client):
            with contextlib.suppress(Exception):
                await client.aclose()


# --- lock file -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked_file(path: Path) -> Iterator[IO[str]]:
    """Open ``path`` (created if missing) under an exclusive ``flock``, for read and write."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o660)
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield handle
    finally:
        handle.close()


def _rewrite(handle: IO[str], text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
    os.fsync(handle.fileno())


class _FileFeed:
    """Tails the events file from where it ended when the feed was opened."""

    def __init__(self, path: Path, offset: int, inode: int) -> None:
        self._path = path
        self._offset = offset
        self._inode = inode
        self._partial = ""
        self._ready: list[str] = []

    def _poll(self) -> None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            raise CoordinationUnavailable(f"events file {self._path} was removed") from None
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            raise CoordinationUnavailable(f"events file {self._path} was replaced or truncated")
        if stat.st_size == self._offset:
            return
        with self._path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        text = self._partial + data.decode("utf-8", "replace")
        *lines, self._partial = text.split("\n")
        self._ready.extend(line for line in lines if line.strip())

    async def next(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            if not self._ready:
                self._poll()
            if self._ready:
                return self._ready.pop(0)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(0.05, left))

    async def aclose(self) -> None:
        self._ready.clear()


class FileCoordinationStore:
    """The coordination primitives on local files, for a single host without Redis.

    The lease is an exclusive ``flock`` on ``lock_file`` kept for as long as it is held; the
    kernel drops it when the process ends, so it never expires by itself (``expires_at`` is
    None). Another console on the same host reads the holder's details from the locked file.
    Next to it: ``<lock>.fence`` (the fence counter), ``<lock>.events.jsonl`` and
    ``<lock>.events.seq`` (the event log other consoles tail), ``<lock>.approvals.json``
    (four-eyes requests). For two operators' consoles on one host, point ``lock_file`` at a
    directory both can write.

    Args:
        lock_file: The lock file (its directory is created when missing).
        deployment: The deployment the lease covers (recorded; one lock file is one lease).
    """

    mode: Literal["redis", "lock_file"] = "lock_file"

    def __init__(self, lock_file: Path, deployment: str) -> None:
        self.lock_file = Path(lock_file).expanduser()
        self.deployment = validate_deployment(deployment)
        stem = self.lock_file.name
        self.fence_file = self.lock_file.with_name(stem + ".fence")
        self.events_file = self.lock_file.with_name(stem + ".events.jsonl")
        self.seq_file = self.lock_file.with_name(stem + ".events.seq")
        self.approvals_file = self.lock_file.with_name(stem + ".approvals.json")
        self._held: IO[str] | None = None
        self._held_inode: int | None = None
        self._grant: Grant | None = None

    def __repr__(self) -> str:
        return f"FileCoordinationStore({self.where!r}, deployment={self.deployment!r})"

    @property
    def where(self) -> str:
        """The lock file's path."""
        return str(self.lock_file)

    def _prepare_dir(self) -> None:
        try:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CoordinationUnavailable(
                f"cannot create the lock file's directory {self.lock_file.parent}: {exc}"
            ) from None

    async def acquire(self, operator: str, lease_ms: int, fence_floor: int = 0) -> AcquireOutcome:
        """``flock(LOCK_EX | LOCK_NB)`` the lock file; on success bump the fence and say who."""
        if self._grant is not None:
            return AcquireOutcome(holder=self._grant.holder)
        self._prepare_dir()
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o660)
        except OSError as exc:
            raise CoordinationUnavailable(
                f"cannot open lock file {self.lock_file}: {exc}"
            ) from None
        handle = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read()
            handle.close()
            return AcquireOutcome(holder=self._holder_from(text))
        except OSError as exc:
            handle.close()
            raise CoordinationUnavailable(f"cannot lock {self.lock_file}: {exc}") from None
        try:
            with _locked_file(self.fence_file) as counter:
                text = counter.read().strip()
                fence = max(int(text) if text.isdigit() else 0, max(0, fence_floor)) + 1
                _rewrite(counter, f"{fence}\n")
            now = utcnow()
            holder = LeaseHolder(
                deployment=self.deployment,
                operator=operator,
                fence=fence,
                acquired_at=now,
                renewed_at=now,
                mode="lock_file",
                pid=os.getpid(),
            )
            _rewrite(handle, holder.model_dump_json())
        except OSError as exc:
            handle.close()
            raise CoordinationUnavailable(
                f"cannot write the lease next to {self.lock_file}: {exc}"
            ) from None
        self._held = handle
        self._held_inode = os.fstat(handle.fileno()).st_ino
        self._grant = Grant(token=secrets.token_hex(16), fence=fence, holder=holder)
        return AcquireOutcome(grant=self._grant)

    async def renew(self, token: str, lease_ms: int) -> bool:
        """True while this store holds the lock and the file at the path is still the locked one.

        A lock file that was deleted or replaced no longer excludes anybody (a new file gets a
        new lock), so it counts as lost.
        """
        if self._grant is None or self._grant.token != token or self._held is None:
            return False
        try:
            current = self.lock_file.stat().st_ino
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise CoordinationUnavailable(
                f"cannot check lock file {self.lock_file}: {exc}"
            ) from None
        if current != self._held_inode:
            self._drop()
            return False
        return True

    async def release(self, token: str) -> bool:
        """Clear the holder's details and drop the ``flock``."""
        if self._grant is None or self._grant.token != token or self._held is None:
            return False
        with contextlib.suppress(OSError):
            _rewrite(self._held, "")
        self._drop()
        return True

    def _drop(self) -> None:
        if self._held is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._held.fileno(), fcntl.LOCK_UN)
            self._held.close()
        self._held = None
        self._held_inode = None
        self._grant = None

    def _holder_from(self, text: str) -> LeaseHolder:
        try:
            return LeaseHolder.model_validate_json(text)
        except ValidationError:
            # Locked but not (yet) described: someone holds it all the same.
            return LeaseHolder(
                deployment=self.deployment,
                operator="(unknown holder)",
                fence=None,
                acquired_at=None,
                mode="lock_file",
            )

    async def holder(self) -> LeaseHolder | None:
        """Who holds the lock file (a shared non-blocking ``flock`` works only if nobody does)."""
        if self._grant is not None:
            return self._grant.holder
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CoordinationUnavailable(
                f"cannot open lock file {self.lock_file}: {exc}"
            ) from None
        with os.fdopen(fd, "r", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._holder_from(handle.read())
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return None

    async def publish(self, body: str) -> int:
        """Append ``{"seq": N, "event": body}`` to the events file under its ``flock``."""
        _check_body(body)
        self._prepare_dir()
        try:
            with _locked_file(self.events_file) as events:
                # The counter lives in its own file so a publish never reads the whole log.
                with self.seq_file.open("a+", encoding="utf-8") as counter:
                    counter.seek(0)
                    text = counter.read().strip()
                    seq = (int(text) if text.isdigit() else 0) + 1
                    _rewrite(counter, f"{seq}\n")
                events.seek(0, os.SEEK_END)
                events.write(_envelope(seq, body) + "\n")
                events.flush()
        except OSError as exc:
            raise CoordinationUnavailable(
                f"cannot append to events file {self.events_file}: {exc}"
            ) from None
        return seq

    async def open_feed(self) -> EventFeed:
        """Tail the events file from its current end."""
        self._prepare_dir()
        try:
            with _locked_file(self.events_file) as events:
                stat = os.fstat(events.fileno())
        except OSError as exc:
            raise CoordinationUnavailable(
                f"cannot open events file {self.events_file}: {exc}"
            ) from None
        return _FileFeed(self.events_file, stat.st_size, stat.st_ino)

    @contextlib.contextmanager
    def _approvals(self) -> Iterator[tuple[dict[str, Any], IO[str]]]:
        self._prepare_dir()
        try:
            with _locked_file(self.approvals_file) as handle:
                text = handle.read()
                try:
                    data = json.loads(text) if text.strip() else {}
                except ValueError:
                    raise CoordinationUnavailable(
                        f"approvals file {self.approvals_file} is not JSON; remove it"
                    ) from None
                if not isinstance(data, dict):
                    raise CoordinationUnavailable(
                        f"approvals file {self.approvals_file} is not a JSON object; remove it"
                    )
                yield data, handle
        except OSError as exc:
            raise CoordinationUnavailable(
                f"cannot use approvals file {self.approvals_file}: {exc}"
            ) from None

    def _key(self, gate: str) -> str:
        return f"{self.deployment}/{gate}"

    async def put_approval(self, approval: Approval) -> None:
        """Store the request under its deployment and gate."""
        with self._approvals() as (data, handle):
            data[self._key(approval.gate)] = approval.model_dump(mode="json")
            _rewrite(handle, json.dumps(data, indent=1))

    async def approve(
        self, gate: str, request_id: str | None, approver: str, principal: str, at: datetime
    ) -> Approval:
        """Approve under the file's ``flock``; the same checks as the Redis script."""
        with self._approvals() as (data, handle):
            raw = data.get(self._key(gate))
            stored = _parse_approval(json.dumps(raw)) if raw is not None else None
            if stored is None:
                raise _refusal(RefusalCode.NO_REQUEST, gate, None, approver)
            if request_id and stored.request_id != request_id:
                raise _refusal(RefusalCode.STALE_REQUEST, gate, stored, approver)
            if stored.status is ApprovalStatus.APPROVED:
                raise _refusal(RefusalCode.ALREADY_APPROVED, gate, stored, approver)
            if stored.requester_principal == principal:
                raise _refusal(RefusalCode.SELF_APPROVAL, gate, stored, approver)
            approved = stored.model_copy(
                update={"status": ApprovalStatus.APPROVED, "approver": approver, "approved_at": at}
            )
            data[self._key(gate)] = approved.model_dump(mode="json")
            _rewrite(handle, json.dumps(data, indent=1))
            return approved

    async def get_approval(self, gate: str) -> Approval | None:
        """The request stored for ``gate``."""
        with self._approvals() as (data, _):
            raw = data.get(self._key(gate))
        return _parse_approval(json.dumps(raw)) if raw is not None else None

    async def approvals(self) -> list[Approval]:
        """Every request of this deployment, oldest first."""
        prefix = self.deployment + "/"
        with self._approvals() as (data, _):
            found = [
                _parse_approval(json.dumps(v)) for k, v in data.items() if k.startswith(prefix)
            ]
        return sorted((a for a in found if a is not None), key=lambda a: a.requested_at)

    async def remove_approval(self, gate: str, request_id: str, approved_only: bool) -> bool:
        """Remove the request if still ``request_id`` (and approved when ``approved_only``)."""
        with self._approvals() as (data, handle):
            raw = data.get(self._key(gate))
            stored = _parse_approval(json.dumps(raw)) if raw is not None else None
            if stored is None or stored.request_id != request_id:
                return False
            if approved_only and stored.status is not ApprovalStatus.APPROVED:
                return False
            del data[self._key(gate)]
            _rewrite(handle, json.dumps(data, indent=1))
            return True

    async def aclose(self) -> None:
        """Drop a lock still held (the kernel would at exit anyway)."""
        self._drop()
