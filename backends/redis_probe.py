"""Redis probe: one environment's Redis as seen by PING, INFO and CLUSTER INFO.

Owns turning a Redis endpoint into a :class:`~backends.models.RedisStatus`:
PING round-trip, role, connected clients, memory, cluster mode and
``cluster_state``, keyspace hit ratio. Every failure is a named state
(``auth_failed``, ``refused``, ``timeout``, ``error``) with a reason; nothing
raises into the caller.

A sweep runs every second, so each endpoint keeps one small client (one
connection) per event loop, reused across sweeps. After any failure that
client's connections are dropped, so the next sweep reconnects from scratch
and a half-read reply never leaks into the next probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import time
import weakref
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from backends.models import ProbeState, RedisStatus

__all__ = ["RedisProber", "close_redis_probers", "probe_redis"]

# Redis answers these when the password is wrong or missing; redis-py maps
# most but not all of them to AuthenticationError.
_AUTH_MARKERS = ("NOAUTH", "WRONGPASS", "invalid password", "invalid username-password")


class RedisProber:
    """Probes one Redis endpoint, keeping one reusable connection.

    Args:
        url: ``redis://host:port/db``, ``rediss://...`` or ``unix:///path``.
        password: the AUTH password, if any.
        username: the ACL user name, if any.
        timeout_s: bound on one whole probe (connect, AUTH, INFO, PING).
    """

    def __init__(
        self,
        url: str,
        password: SecretStr | None = None,
        username: str | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._password = password
        self._username = username
        self._client: Redis | None = None
        self._connected_before = False

    def _connect(self) -> Redis:
        if self._client is None:
            self._client = Redis.from_url(
                self.url,
                password=self._password.get_secret_value() if self._password else None,
                username=self._username,
                socket_connect_timeout=self.timeout_s,
                socket_timeout=self.timeout_s,
                # The probe reports a failure; the next sweep is the retry.
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                max_connections=2,
                decode_responses=True,
                # RESP2: no HELLO handshake, so a missing password shows as the
                # plain NOAUTH and servers older than Redis 6 answer too.
                protocol=2,
                health_check_interval=0,
                client_name="acgs-console-probe",
            )
        return self._client

    async def probe(self) -> RedisStatus:
        """Probe once. Never raises.

        Returns:
            The Redis status, with a named state and reason on failure.
        """
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    status = await self._probe()
                except RedisConnectionError as exc:
                    if isinstance(exc, AuthenticationError) or not self._connected_before:
                        raise
                    # The kept connection died (server restarted or went away since the
                    # last sweep): say what a fresh connection finds, not "connection lost".
                    await self._reset()
                    status = await self._probe()
                self._connected_before = True
                return status
        except Exception as exc:  # every failure becomes a named state
            await self._reset()
            state, reason = classify_redis_error(exc, self.timeout_s)
            if state is ProbeState.AUTH_FAILED and self._password is None:
                reason += " (no password configured)"
            return RedisStatus(state=state, reason=self._scrub(reason))

    async def _probe(self) -> RedisStatus:
        client = self._connect()
        # INFO first: it opens the connection (and AUTHs), so the timed PING
        # below measures a round trip, not a handshake.
        info: dict[str, Any] = await client.info()
        started = time.perf_counter()
        pong = await client.ping()
        ping_ms = (time.perf_counter() - started) * 1000.0
        if pong is not True:
            return RedisStatus(state=ProbeState.ERROR, reason=f"unexpected PING reply {pong!r}")

        cluster_enabled = _as_int(info.get("cluster_enabled")) == 1
        cluster_state: str | None = None
        state = ProbeState.OK
        reasons: list[str] = []
        if cluster_enabled:
            raw = await client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            cluster_state = parse_cluster_info(raw).get("cluster_state")
            if cluster_state != "ok":
                state = ProbeState.DEGRADED
                reasons.append(f"cluster_state is {cluster_state or 'missing'!r}")
        role = info.get("role")
        if role == "slave" and info.get("master_link_status") != "up":
            state = ProbeState.DEGRADED
            reasons.append(
                f"replica link to master is {info.get('master_link_status') or 'unknown'}"
            )
        return RedisStatus(
            state=state,
            reason="; ".join(reasons),
            ping_ms=ping_ms,
            role=str(role) if role is not None else None,
            connected_clients=_as_int(info.get("connected_clients")),
            used_memory_bytes=_as_int(info.get("used_memory")),
            cluster_enabled=cluster_enabled,
            cluster_state=cluster_state,
            keyspace_hit_ratio=keyspace_hit_ratio(info),
        )

    def _scrub(self, text: str) -> str:
        # Belt and braces: no server or library message should ever carry the
        # password, but a reason is shown on screen and written to the audit.
        if self._password is not None:
            secret = self._password.get_secret_value()
            if secret:
                text = text.replace(secret, "***")
        return text

    async def _reset(self) -> None:
        client, self._client = self._client, None
        self._connected_before = False
        if client is not None:
            # Closing a broken client may fail; it is gone either way.
            with contextlib.suppress(Exception):
                await client.aclose()

    async def aclose(self) -> None:
        """Close the connection (the prober reconnects if used again)."""
        await self._reset()


def classify_redis_error(exc: BaseException, timeout_s: float) -> tuple[ProbeState, str]:
    """Name the state a failed probe ends in.

    Args:
        exc: what the probe raised.
        timeout_s: the probe's timeout, for the reason text.

    Returns:
        The state and a one-line reason.
    """
    text = str(exc) or type(exc).__name__
    if isinstance(exc, AuthenticationError | AuthorizationError) or any(
        m.lower() in text.lower() for m in _AUTH_MARKERS
    ):
        return ProbeState.AUTH_FAILED, f"authentication failed: {text}"
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return ProbeState.TIMEOUT, f"no answer within {timeout_s:g} s"
    # redis-py sometimes re-raises without the OSError attached, keeping only its errno.
    if (
        _caused_by(exc, ConnectionRefusedError)
        or "Connection refused" in text
        or f"Error {errno.ECONNREFUSED} connecting" in text
    ):
        return ProbeState.REFUSED, f"connection refused: {text}"
    if isinstance(exc, BusyLoadingError):
        return ProbeState.ERROR, f"Redis is loading its dataset: {text}"
    if isinstance(exc, RedisConnectionError):
        return ProbeState.ERROR, f"connection failed: {text}"
    if isinstance(exc, ResponseError | RedisError):
        return ProbeState.ERROR, f"Redis error: {text}"
    return ProbeState.ERROR, f"{type(exc).__name__}: {text}"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    # redis-py wraps OSErrors in its own errors, sometimes twice, via __cause__ or
    # __context__: look through both.
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, kind):
            return True
        todo.extend(e for e in (cur.__cause__, cur.__context__) if e is not None)
    return False


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float | str):
        try:
            return int(float(value))
        except ValueError:
            return None
    return None


def keyspace_hit_ratio(info: Mapping[str, Any]) -> float | None:
    """``keyspace_hits / (hits + misses)``; None when there were no lookups yet.

    Args:
        info: the parsed ``INFO`` reply.
    """
    hits = _as_int(info.get("keyspace_hits"))
    misses = _as_int(info.get("keyspace_misses"))
    if hits is None or misses is None or hits + misses == 0:
        return None
    return hits / (hits + misses)


def parse_cluster_info(raw: Any) -> dict[str, str]:
    """Parse a ``CLUSTER INFO`` reply (``key:value`` lines) into a dict.

    Args:
        raw: the reply, as text, bytes or already a mapping.
    """
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    out: dict[str, str] = {}
    for line in str(raw).splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            out[key] = value
    return out


# One prober per (event loop, endpoint): redis.asyncio connections belong to
# the loop that opened them.
_PROBERS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, str | None, str, float], RedisProber]
] = weakref.WeakKeyDictionary()


def _key(
    url: str, password: SecretStr | None, username: str | None, timeout_s: float
) -> tuple[str, str | None, str, float]:
    # The password is part of the identity (a changed password needs a new
    # connection) but is kept only as a digest.
    digest = hashlib.sha256(password.get_secret_value().encode()).hexdigest() if password else ""
    return (url, username, digest, timeout_s)


def _forget_closed_loops() -> None:
    # A cached connection keeps its loop alive, so the weak keys alone never expire.
    for loop in [loop for loop in _PROBERS if loop.is_closed()]:
        del _PROBERS[loop]


async def probe_redis(
    url: str | None,
    password: SecretStr | None = None,
    username: str | None = None,
    timeout_s: float = 1.0,
) -> RedisStatus:
    """Probe one environment's Redis. Never raises.

    Reuses one connection per endpoint across calls on the same event loop;
    :func:`close_redis_probers` closes them.

    Args:
        url: the Redis URL; None means not configured.
        password: the AUTH password, if any.
        username: the ACL user name, if any.
        timeout_s: bound on the whole probe.

    Returns:
        The status; ``not_configured`` when url is None.
    """
    if not url:
        return RedisStatus(state=ProbeState.NOT_CONFIGURED, reason="no Redis configured")
    loop = asyncio.get_running_loop()
    _forget_closed_loops()
    probers = _PROBERS.setdefault(loop, {})
    key = _key(url, password, username, timeout_s)
    prober = probers.get(key)
    if prober is None:
        try:
            prober = RedisProber(url, password, username, timeout_s)
            # from_url validates the URL; a bad one is a named error, not a crash.
            prober._connect()
        except Exception as exc:
            return RedisStatus(state=ProbeState.ERROR, reason=f"bad Redis URL {url!r}: {exc}")
        probers[key] = prober
    return await prober.probe()


async def close_redis_probers() -> None:
    """Close every cached connection opened on the running event loop."""
    probers = _PROBERS.pop(asyncio.get_running_loop(), {})
    for prober in probers.values():
        await prober.aclose()
