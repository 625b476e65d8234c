"""PostgreSQL probe: connectivity and streaming replication of one environment.

Owns turning a primary DSN and replica DSNs into a
:class:`~backends.models.ReplicationStatus`. On the primary it reads
``pg_stat_replication`` (state, sync_state, byte lag as
``pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)``, replay lag); on every
replica it asks ``pg_is_in_recovery()``.

"Synchronized" is True only when all of this is positively confirmed: the
primary answers and is not itself in recovery, at least ``expected_replicas``
rows are ``streaming``, every streaming row's byte lag and replay lag are
within the limits, and every replica DSN answers ``pg_is_in_recovery() = true``.
Anything known to be wrong or not known (a replica that cannot be reached, a
lag PostgreSQL does not report) makes it False with the reason named
(state ``degraded``). It is None only when the primary itself could not be
probed (``refused``, ``timeout``, ``auth_failed``, ``error``,
``not_configured``). ``replay_lag`` is NULL while a standby is idle, so a NULL
replay lag with a byte lag of 0 counts as 0 s.

Connections are reused across sweeps (one per DSN and event loop) and
replaced after any failure. The password travels only as a connect keyword
argument, never inside a DSN string, and is scrubbed from any reason text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from backends.models import ProbeState, ReplicaLag, ReplicationStatus

__all__ = [
    "PostgresProbeError",
    "ReplicationProber",
    "classify_pg_error",
    "close_replication_probers",
    "probe_replication",
]

_T = TypeVar("_T")

# SQLSTATE class 28: invalid authorization (bad password, unknown role, no hba entry).
_AUTH_SQLSTATES = ("28000", "28P01")
_AUTH_MARKERS = (
    "password authentication failed",
    "no password supplied",
    "fe_sendauth",
    "pg_hba.conf",
    "authentication failed",
)
_REPLICATION_QUERY = """
SELECT application_name,
       host(client_addr),
       state,
       sync_state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,
       EXTRACT(EPOCH FROM replay_lag)::float8
FROM pg_stat_replication
ORDER BY application_name, client_addr
"""


class PostgresProbeError(Exception):
    """A probe step failed with a named state (used inside this module)."""

    def __init__(self, state: ProbeState, reason: str, reachable: bool | None) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason
        self.reachable = reachable


def describe_dsn(dsn: str) -> str:
    """A short, secret-free name for a DSN: ``host:port/dbname``.

    Args:
        dsn: a libpq connection string or URL.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    db = params.get("dbname")
    return f"{host}:{port}" + (f"/{db}" if db else "")


def classify_pg_error(exc: BaseException, timeout_s: float) -> tuple[ProbeState, str, bool | None]:
    """Name the state a failed connection or query ends in.

    Args:
        exc: what psycopg (or the timeout) raised.
        timeout_s: the probe's timeout, for the reason text.

    Returns:
        The state, a one-line reason, and whether the server answered at all
        (True: it did, e.g. it rejected the password; False: it did not;
        None: cannot tell).
    """
    if isinstance(exc, PostgresProbeError):
        return exc.state, exc.reason, exc.reachable
    # psycopg prefixes every connect failure with this; the state already says so.
    text = " ".join(str(exc).split()).removeprefix("connection failed: ") or type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    lowered = text.lower()
    if isinstance(exc, TimeoutError | psycopg.errors.ConnectionTimeout) or (
        "timeout expired" in lowered
    ):
        return ProbeState.TIMEOUT, f"no answer within {timeout_s:g} s", False
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return ProbeState.TIMEOUT, f"query cancelled by statement timeout: {text}", True
    if sqlstate in _AUTH_SQLSTATES or any(m in lowered for m in _AUTH_MARKERS):
        return ProbeState.AUTH_FAILED, f"authentication failed: {text}", True
    if "role" in lowered and "does not exist" in lowered:
        return ProbeState.AUTH_FAILED, f"authentication failed: {text}", True
    if "connection refused" in lowered:
        return ProbeState.REFUSED, f"connection refused: {text}", False
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return ProbeState.ERROR, f"insufficient privilege: {text}", True
    if isinstance(exc, psycopg.ProgrammingError) and sqlstate is None:
        return ProbeState.ERROR, f"bad connection string: {text}", None
    if isinstance(exc, psycopg.OperationalError) and sqlstate is None:
        return ProbeState.ERROR, f"connection failed: {text}", False
    if isinstance(exc, psycopg.Error):
        return ProbeState.ERROR, f"PostgreSQL error: {text}", True
    return ProbeState.ERROR, f"{type(exc).__name__}: {text}", None


class _Session:
    """One reusable connection to one DSN."""

    def __init__(self, dsn: str, password: SecretStr | None, timeout_s: float) -> None:
        self.dsn = dsn
        self.timeout_s = timeout_s
        self._password = password
        self._conn: AsyncConnection[tuple[Any, ...]] | None = None

    def _connect_kwargs(self) -> dict[str, Any]:
        params = conninfo_to_dict(self.dsn)
        statement_ms = max(1, int(self.timeout_s * 1000))
        options = " ".join(
            filter(None, [str(params.get("options") or ""), f"-c statement_timeout={statement_ms}"])
        )
        kwargs: dict[str, Any] = {
            # libpq takes whole seconds (at least 2); asyncio.timeout is the real bound.
            "connect_timeout": max(2, math.ceil(self.timeout_s)),
            "options": options,
            "application_name": params.get("application_name") or "acgs-console-probe",
        }
        if self._password is not None:
            kwargs["password"] = self._password.get_secret_value()
        return kwargs

    async def _connection(self) -> tuple[AsyncConnection[tuple[Any, ...]], bool]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn, True
        await self.close()
        conn = await AsyncConnection.connect(
            self.dsn, autocommit=True, prepare_threshold=None, **self._connect_kwargs()
        )
        self._conn = conn
        return conn, False

    async def fetch(self, query: str) -> list[tuple[Any, ...]]:
        """Run a query; a reused connection that turns out dead is replaced once.

        Raises:
            psycopg.Error: the server could not be reached or the query failed.
        """
        conn, reused = await self._connection()
        try:
            cur = await conn.execute(query)
            return await cur.fetchall()
        except psycopg.errors.QueryCanceled:
            await self.close()
            raise
        except psycopg.OperationalError:
            await self.close()
            if not reused:
                raise
        # The server restarted since the last sweep: one fresh attempt.
        conn, _ = await self._connection()
        try:
            cur = await conn.execute(query)
            return await cur.fetchall()
        except psycopg.Error:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection, if any."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


class ReplicationProber:
    """Probes one environment's primary and replicas, reusing connections.

    Args:
        primary_dsn: libpq DSN of the primary (no password in it).
        replica_dsns: DSNs of the replicas.
        password: password for every DSN, if any.
        expected_replicas: how many rows ``pg_stat_replication`` must show streaming.
        max_lag_bytes: allowed byte lag per replica.
        max_lag_seconds: allowed replay lag per replica.
        timeout_s: bound on each server's connect and queries.
    """

    def __init__(
        self,
        primary_dsn: str,
        replica_dsns: Sequence[str],
        password: SecretStr | None,
        expected_replicas: int,
        max_lag_bytes: int,
        max_lag_seconds: float,
        timeout_s: float = 2.0,
    ) -> None:
        self.expected_replicas = expected_replicas
        self.max_lag_bytes = max_lag_bytes
        self.max_lag_seconds = max_lag_seconds
        self.timeout_s = timeout_s
        self._password = password
        self._primary = _Session(primary_dsn, password, timeout_s)
        self._replicas = [_Session(dsn, password, timeout_s) for dsn in replica_dsns]

    async def probe(self) -> ReplicationStatus:
        """Probe once. Never raises.

        Returns:
            The replication status (see the module docstring for the rules).
        """
        try:
            primary, replicas = await asyncio.gather(
                self._bounded(self._primary, self._read_primary),
                asyncio.gather(*(self._bounded(s, self._read_replica) for s in self._replicas)),
            )
            return self._judge(primary, replicas)
        except Exception as exc:  # a bug here must still not escape into the loop
            return ReplicationStatus(
                state=ProbeState.ERROR,
                reason=self._scrub(f"probe failed: {type(exc).__name__}: {exc}"),
                expected_replicas=self.expected_replicas,
            )

    async def _bounded(
        self, session: _Session, read: Callable[[_Session], Awaitable[_T]]
    ) -> _T | PostgresProbeError:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await read(session)
        except PostgresProbeError as exc:
            return exc
        except Exception as exc:
            await session.close()
            state, reason, reachable = classify_pg_error(exc, self.timeout_s)
            return PostgresProbeError(state, self._scrub(reason), reachable)

    @staticmethod
    async def _read_primary(session: _Session) -> list[ReplicaLag]:
        (in_recovery,) = (await session.fetch("SELECT pg_is_in_recovery()"))[0]
        if in_recovery:
            raise PostgresProbeError(
                ProbeState.DEGRADED,
                f"the primary DSN {describe_dsn(session.dsn)} points at a server in recovery "
                "(a standby, not the primary)",
                True,
            )
        rows = await session.fetch(_REPLICATION_QUERY)
        out: list[ReplicaLag] = []
        for app, addr, state, sync_state, byte_lag, replay_s in rows:
            if state is None:
                # Without pg_monitor / pg_read_all_stats every detail column is NULL.
                raise PostgresProbeError(
                    ProbeState.ERROR,
                    "cannot read pg_stat_replication details: grant the probe's role pg_monitor",
                    True,
                )
            out.append(
                ReplicaLag(
                    application_name=app or "",
                    client_addr=addr,
                    state=state,
                    sync_state=sync_state or "unknown",
                    byte_lag=int(byte_lag) if byte_lag is not None else None,
                    replay_lag_seconds=_replay_seconds(byte_lag, replay_s),
                )
            )
        return out

    @staticmethod
    async def _read_replica(session: _Session) -> bool:
        (in_recovery,) = (await session.fetch("SELECT pg_is_in_recovery()"))[0]
        return bool(in_recovery)

    def _judge(
        self,
        primary: list[ReplicaLag] | PostgresProbeError,
        replicas: list[bool | PostgresProbeError],
    ) -> ReplicationStatus:
        problems: list[str] = []
        recovery_flags: list[bool | None] = []
        for session, result in zip(self._replicas, replicas, strict=True):
            name = describe_dsn(session.dsn)
            if isinstance(result, PostgresProbeError):
                recovery_flags.append(None)
                problems.append(
                    f"replica {name} not checked: {result.state.value}: {result.reason}"
                )
            else:
                recovery_flags.append(result)
                if not result:
                    problems.append(f"replica {name} is not in recovery (promoted?)")
        if any(flag is False for flag in recovery_flags):
            replica_in_recovery: bool | None = False
        elif recovery_flags and all(flag is True for flag in recovery_flags):
            replica_in_recovery = True
        else:
            replica_in_recovery = None

        if isinstance(primary, PostgresProbeError):
            degraded_primary = primary.state is ProbeState.DEGRADED
            reason = "; ".join([f"primary: {primary.reason}", *problems])
            return ReplicationStatus(
                state=primary.state,
                reason=reason,
                primary_reachable=primary.reachable,
                expected_replicas=self.expected_replicas,
                replica_in_recovery=replica_in_recovery,
                # A standby behind the primary DSN is a known fault; other failures are unknowns.
                synchronized=False if degraded_primary else None,
            )

        streaming = [r for r in primary if r.state == "streaming"]
        if len(streaming) < self.expected_replicas:
            others = [f"{r.application_name or r.client_addr}: {r.state}" for r in primary]
            problems.append(
                f"{len(streaming)} of {self.expected_replicas} expected replicas streaming"
                + (f" ({', '.join(others)})" if others else "")
            )
        for row in streaming:
            who = row.application_name or row.client_addr or "replica"
            if row.byte_lag is None:
                problems.append(f"{who}: byte lag unknown")
            elif row.byte_lag > self.max_lag_bytes:
                problems.append(f"{who}: {row.byte_lag} bytes behind (max {self.max_lag_bytes})")
            if row.replay_lag_seconds is None:
                problems.append(f"{who}: replay lag unknown")
            elif row.replay_lag_seconds > self.max_lag_seconds:
                problems.append(
                    f"{who}: replay lag {row.replay_lag_seconds:.3f} s "
                    f"(max {self.max_lag_seconds:g} s)"
                )
        synchronized = not problems
        return ReplicationStatus(
            state=ProbeState.OK if synchronized else ProbeState.DEGRADED,
            reason="; ".join(problems),
            primary_reachable=True,
            replicas=tuple(primary),
            expected_replicas=self.expected_replicas,
            replica_in_recovery=replica_in_recovery,
            synchronized=synchronized,
        )

    def _scrub(self, text: str) -> str:
        if self._password is not None:
            secret = self._password.get_secret_value()
            if secret:
                text = text.replace(secret, "***")
        return text

    async def aclose(self) -> None:
        """Close every connection (the prober reconnects if used again)."""
        for session in (self._primary, *self._replicas):
            await session.close()


def _replay_seconds(byte_lag: Any, replay_s: Any) -> float | None:
    if replay_s is not None:
        return float(replay_s)
    # pg_stat_replication reports NULL replay_lag once a standby has been idle.
    if byte_lag is not None and int(byte_lag) == 0:
        return 0.0
    return None


_ProberKey = tuple[str, tuple[str, ...], str, int, int, float, float]
_PROBERS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[_ProberKey, ReplicationProber]
] = weakref.WeakKeyDictionary()


def _forget_closed_loops() -> None:
    # A cached connection keeps its loop alive, so the weak keys alone never expire.
    for loop in [loop for loop in _PROBERS if loop.is_closed()]:
        del _PROBERS[loop]


async def probe_replication(
    primary_dsn: str | None,
    replica_dsns: Sequence[str],
    password: SecretStr | None,
    expected_replicas: int,
    max_lag_bytes: int,
    max_lag_seconds: float,
    timeout_s: float = 2.0,
) -> ReplicationStatus:
    """Probe one environment's PostgreSQL replication. Never raises.

    Reuses one connection per DSN across calls on the same event loop;
    :func:`close_replication_probers` closes them.

    Args:
        primary_dsn: DSN of the primary; None means not configured.
        replica_dsns: DSNs of the replicas (checked with ``pg_is_in_recovery()``).
        password: password for the DSNs, if any.
        expected_replicas: rows ``pg_stat_replication`` must show streaming.
        max_lag_bytes: allowed byte lag.
        max_lag_seconds: allowed replay lag.
        timeout_s: bound on each server's connect and queries.

    Returns:
        The replication status.
    """
    if not primary_dsn:
        return ReplicationStatus(
            state=ProbeState.NOT_CONFIGURED,
            reason="no PostgreSQL configured",
            expected_replicas=expected_replicas,
        )
    digest = hashlib.sha256(password.get_secret_value().encode()).hexdigest() if password else ""
    key: _ProberKey = (
        primary_dsn,
        tuple(replica_dsns),
        digest,
        expected_replicas,
        max_lag_bytes,
        max_lag_seconds,
        timeout_s,
    )
    _forget_closed_loops()
    probers = _PROBERS.setdefault(asyncio.get_running_loop(), {})
    prober = probers.get(key)
    if prober is None:
        prober = ReplicationProber(
            primary_dsn,
            replica_dsns,
            password,
            expected_replicas,
            max_lag_bytes,
            max_lag_seconds,
            timeout_s,
        )
        probers[key] = prober
    return await prober.probe()


async def close_replication_probers() -> None:
    """Close every cached connection opened on the running event loop."""
    probers = _PROBERS.pop(asyncio.get_running_loop(), {})
    for prober in probers.values():
        await prober.aclose()
