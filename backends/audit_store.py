"""The audit trail's storage: append-only, hash-chained records in SQLite or PostgreSQL.

This module owns three things:

* the record hash (format v1): ``sha256(prev_hash + canonical_json(body))`` in hex, where
  ``body`` is the record's fields except ``hash`` (:data:`HASHED_FIELDS`), and canonical JSON
  is ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` with
  datetimes as ISO-8601 UTC with microseconds. The first record's ``prev_hash`` is
  :data:`GENESIS_HASH` (64 zeros); sequence numbers start at 1 and have no gaps;
* the schema, the same tables and columns on both engines (``at`` is TEXT ISO-8601 on
  SQLite, TIMESTAMPTZ on PostgreSQL): ``audit_records`` (one row per record, the evidence
  kept as the exact canonical JSON text that was hashed), ``audit_head`` (one row: the seq
  and hash of the last record, so a deleted tail is noticed), and triggers that refuse
  UPDATE, DELETE (and on PostgreSQL TRUNCATE) of ``audit_records``; opening a store puts
  missing triggers back. The triggers stop accidents; the chain catches the rest;
* the serialized append: one transaction locks the chain head (``BEGIN IMMEDIATE`` on
  SQLite, ``SELECT ... FOR UPDATE`` of the head row on PostgreSQL), gives the draft the next
  seq and the head's hash, inserts it and moves the head. Two writers therefore queue and
  can never fork the chain.

The stores offer append and read only (plus a one-shot restore into an empty store); there
is no update or delete. Every failure to reach or use the store is raised as
:class:`AuditStoreError` so the caller can spool instead.

A draft may carry an ``entry_id``; appending the same entry id twice returns the record
already stored, so re-sending a spooled draft after a crash never duplicates it. The entry id
is bookkeeping of the store, not part of the hashed record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import math
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any, ClassVar, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from backends.models import AuditRecord, utcnow

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first record of every chain."""

HASHED_FIELDS: tuple[str, ...] = (
    "seq",
    "at",
    "operator",
    "action",
    "deployment_id",
    "constitutional_hash",
    "fence",
    "evidence",
    "prev_hash",
)
"""The record fields that the hash covers (every field but ``hash``).

Fixed by name rather than taken from the model, so that a field added to
:class:`AuditRecord` later cannot change the hashes of records already written.
"""

_T = TypeVar("_T")
_PgConn = psycopg.Connection[tuple[Any, ...]]
_READ_BATCH = 500
_COLUMNS = (
    "seq, at, operator, action, deployment_id, constitutional_hash, fence, evidence, "
    "prev_hash, hash"
)


class AuditStoreError(Exception):
    """The audit store cannot be reached or refused an operation (the caller may spool)."""


class AuditStoreNotEmpty(Exception):
    """A restore was asked of a store that already holds records."""


class AuditRowError(Exception):
    """A stored row cannot be read as an audit record (tampered or damaged).

    Attributes:
        seq: The row's sequence number.
        reason: What is wrong with it.
    """

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"record {seq}: {reason}")
        self.seq = seq
        self.reason = reason


class AuditDraft(BaseModel):
    """A record before the chain gives it a seq and hashes.

    ``evidence`` must already be JSON-safe (see :func:`json_safe`), so that what is stored
    and what is hashed are the same thing.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry_id: str | None = None
    """Idempotency key: appending the same entry id twice stores the record once."""
    at: datetime = Field(default_factory=utcnow)
    operator: str
    action: str
    deployment_id: str | None = None
    constitutional_hash: str
    fence: int | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)


class ChainHead(BaseModel):
    """Where a chain ends: the last record's seq and hash (seq 0 and genesis when empty)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int
    hash: str


# --- hashing ------------------------------------------------------------------------------


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds, e.g. ``2025-01-02T03:04:05.000006+00:00``."""
    return as_utc(moment).isoformat(timespec="microseconds")


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data that survives a round trip through JSON unchanged.

    Datetimes become ISO-8601 UTC strings, enums their values, paths and decimals strings,
    tuples and sets lists, models and dataclasses dicts, mapping keys strings; NaN and the
    infinities become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (JSON has no
    such numbers, and dropping them would turn "not measured" into nothing). Anything else
    becomes its ``str()``.

    Args:
        value: Evidence as the caller has it.

    Returns:
        Nested dicts, lists, strings, numbers, booleans and None only.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float(value)
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal | PurePath):
        return str(value)
    if isinstance(value, SecretStr):
        return str(value)  # the masked form; a secret never enters the audit trail
    if isinstance(value, BaseModel):
        return json_safe(value.model_dump(mode="python"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        items = [json_safe(v) for v in value]
        return sorted(items, key=canonical_json)
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


def canonical_json(value: Any) -> str:
    """The canonical JSON text of JSON-safe data (sorted keys, no spaces, UTF-8 kept)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def hashed_body(record: AuditRecord) -> dict[str, Any]:
    """The part of a record the hash covers, as JSON-safe data."""
    body = {name: getattr(record, name) for name in HASHED_FIELDS}
    body["at"] = iso_utc(record.at)
    body["evidence"] = json_safe(record.evidence)
    return body


def chain_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """``sha256(prev_hash + canonical_json(body))`` as hex."""
    data = (prev_hash + canonical_json(body)).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def record_hash(record: AuditRecord) -> str:
    """The hash a record should carry, recomputed from its content."""
    return chain_hash(record.prev_hash, hashed_body(record))


def seal(draft: AuditDraft, seq: int, prev_hash: str) -> AuditRecord:
    """Turn a draft into the chain's record number ``seq``, linked to ``prev_hash``."""
    unsealed = AuditRecord(
        seq=seq,
        at=as_utc(draft.at),
        operator=draft.operator,
        action=draft.action,
        deployment_id=draft.deployment_id,
        constitutional_hash=draft.constitutional_hash,
        fence=draft.fence,
        evidence=json_safe(draft.evidence),
        prev_hash=prev_hash,
        hash="",
    )
    return unsealed.model_copy(update={"hash": record_hash(unsealed)})


# --- stores ---------------------------------------------------------------------------------


def _row_to_record(row: tuple[Any, ...]) -> AuditRecord:
    """Parse one ``audit_records`` row (columns as :data:`_COLUMNS`).

    Raises:
        AuditRowError: The row is not a well-formed record.
    """
    seq = row[0]
    at_raw = row[1]
    try:
        at = at_raw if isinstance(at_raw, datetime) else datetime.fromisoformat(str(at_raw))
    except ValueError:
        raise AuditRowError(int(seq), f"time {at_raw!r} is not ISO-8601") from None
    try:
        evidence = json.loads(row[7])
    except (TypeError, ValueError):
        raise AuditRowError(int(seq), "evidence is not valid JSON") from None
    if not isinstance(evidence, dict):
        raise AuditRowError(int(seq), "evidence is not a JSON object")
    try:
        return AuditRecord(
            seq=seq,
            at=as_utc(at),
            operator=row[2],
            action=row[3],
            deployment_id=row[4],
            constitutional_hash=row[5],
            fence=row[6],
            evidence=evidence,
            prev_hash=row[8],
            hash=row[9],
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AuditRowError(int(seq), f"{where}: {first['msg']}") from None


def _stored_twin(row: tuple[Any, ...]) -> AuditRecord:
    """The record already stored under a draft's entry id."""
    try:
        return _row_to_record(row)
    except AuditRowError as exc:
        raise AuditStoreError(f"the stored copy of this entry is damaged: {exc}") from None


class ChainReader(ABC):
    """One consistent read of a chain: the head and the records as of the same moment."""

    head: ChainHead | None
    """The store's head row; None when that row is missing (itself a sign of tampering)."""

    @abstractmethod
    def records(
        self, after_seq: int = 0, deployment_id: str | None = None
    ) -> Iterator[AuditRecord]:
        """The records in seq order (optionally one deployment's), fetched in batches.

        Raises:
            AuditRowError: At the first row that is not a well-formed record.
            AuditStoreError: The store failed mid-way.
        """


class AuditStore(ABC):
    """An append-only store of hash-chained audit records."""

    kind: ClassVar[str]
    """``sqlite`` or ``postgresql``."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for people (never carries a password)."""

    @abstractmethod
    def append(self, draft: AuditDraft) -> AuditRecord:
        """Add a record at the end of the chain; serialized against every other writer.

        Returns:
            The record as stored (or as stored earlier, when its entry id was seen before).

        Raises:
            AuditStoreError: The store is unreachable or refused the write.
        """

    @abstractmethod
    def head(self) -> ChainHead | None:
        """The chain's head row (None when that row is missing).

        Raises:
            AuditStoreError: The store is unreachable.
        """

    @abstractmethod
    def reader(self) -> contextlib.AbstractContextManager[ChainReader]:
        """A consistent snapshot of the whole chain for verification or backup.

        Raises:
            AuditStoreError: The store is unreachable.
        """

    def records(
        self, after_seq: int = 0, deployment_id: str | None = None
    ) -> Iterator[AuditRecord]:
        """Records in seq order, optionally only one deployment's, from one snapshot.

        Raises:
            AuditRowError: At the first row that is not a well-formed record.
            AuditStoreError: The store is unreachable.
        """
        with self.reader() as reader:
            yield from reader.records(after_seq, deployment_id)

    @abstractmethod
    def restore(self, records: Iterable[AuditRecord]) -> int:
        """Write already-sealed records, verbatim, into an empty store (one transaction).

        The caller verifies the chain first; the store only keeps it as it is.

        Returns:
            How many records were written.

        Raises:
            AuditStoreNotEmpty: The store already holds records.
            AuditStoreError: The store is unreachable or refused the write.
        """

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


def _insert_params(record: AuditRecord, entry_id: str | None, at: Any) -> tuple[Any, ...]:
    return (
        record.seq,
        at,
        record.operator,
        record.action,
        record.deployment_id,
        record.constitutional_hash,
        record.fence,
        canonical_json(json_safe(record.evidence)),
        record.prev_hash,
        record.hash,
        entry_id,
    )


# --- SQLite -------------------------------------------------------------------------------------

_SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    operator TEXT NOT NULL,
    action TEXT NOT NULL,
    deployment_id TEXT,
    constitutional_hash TEXT NOT NULL,
    fence INTEGER,
    evidence TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    entry_id TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS audit_records_deployment ON audit_records (deployment_id, seq);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}');
CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit_records is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit_records is append-only'); END;
"""


class _SQLiteReader(ChainReader):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        row = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        self.head = None if row is None else ChainHead(seq=row[0], hash=row[1])

    def records(
        self, after_seq: int = 0, deployment_id: str | None = None
    ) -> Iterator[AuditRecord]:
        return _sqlite_records(self._db, after_seq, deployment_id)


def _sqlite_records(
    db: sqlite3.Connection, after_seq: int, deployment_id: str | None
) -> Iterator[AuditRecord]:
    last = after_seq
    while True:
        try:
            if deployment_id is None:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM audit_records WHERE seq > ? ORDER BY seq LIMIT ?",
                    (last, _READ_BATCH),
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM audit_records WHERE seq > ? AND deployment_id = ? "
                    "ORDER BY seq LIMIT ?",
                    (last, deployment_id, _READ_BATCH),
                ).fetchall()
        except sqlite3.Error as exc:
            raise AuditStoreError(f"reading the audit trail failed: {exc}") from exc
        for row in rows:
            yield _row_to_record(row)
            last = row[0]
        if len(rows) < _READ_BATCH:
            return


class SQLiteAuditStore(AuditStore):
    """The audit trail in a SQLite file (WAL mode, full sync).

    Args:
        path: The database file; its directory is created when missing.
        busy_timeout_s: How long a writer waits for another writer's lock before giving up.
    """

    kind = "sqlite"

    def __init__(self, path: PurePath | str, *, busy_timeout_s: float = 2.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def describe(self) -> str:
        return f"SQLite {self.path}"

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every transaction below is opened explicitly.
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise AuditStoreError(f"cannot open {self.describe()}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(f"BEGIN IMMEDIATE;{_SQLITE_SCHEMA}COMMIT;")
        except sqlite3.Error as exc:
            db.close()
            raise AuditStoreError(f"cannot prepare {self.describe()}: {exc}") from exc
        return db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open()
        return self._db

    def append(self, draft: AuditDraft) -> AuditRecord:
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    record = self._append_locked(db, draft)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditStoreError(f"appending to {self.describe()} failed: {exc}") from exc
            return record

    @staticmethod
    def _append_locked(db: sqlite3.Connection, draft: AuditDraft) -> AuditRecord:
        if draft.entry_id is not None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM audit_records WHERE entry_id = ?", (draft.entry_id,)
            ).fetchone()
            if row is not None:
                return _stored_twin(row)
        head = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        if head is None:
            raise AuditStoreError("the audit_head row is missing; run `acgs-console audit verify`")
        record = seal(draft, head[0] + 1, head[1])
        db.execute(
            f"INSERT INTO audit_records ({_COLUMNS}, entry_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            _insert_params(record, draft.entry_id, iso_utc(record.at)),
        )
        db.execute(
            "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (record.seq, record.hash)
        )
        return record

    def head(self) -> ChainHead | None:
        with self._lock:
            try:
                row = (
                    self._conn().execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
                )
            except sqlite3.Error as exc:
                raise AuditStoreError(f"reading {self.describe()} failed: {exc}") from exc
        return None if row is None else ChainHead(seq=row[0], hash=row[1])

    @contextlib.contextmanager
    def reader(self) -> Iterator[ChainReader]:
        with self._lock:
            self._conn()  # creates the schema on first use
        # A connection of its own: a long verification never holds up appends.
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot open {self.describe()}: {exc}") from exc
        try:
            try:
                # In WAL mode a read transaction sees one snapshot from its first SELECT.
                db.execute("BEGIN")
                reader = _SQLiteReader(db)
            except sqlite3.Error as exc:
                raise AuditStoreError(f"reading {self.describe()} failed: {exc}") from exc
            yield reader
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("COMMIT")
            db.close()

    def restore(self, records: Iterable[AuditRecord]) -> int:
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    count = db.execute("SELECT count(*) FROM audit_records").fetchone()[0]
                    head = db.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()
                    if count or (head is not None and head[0] != 0):
                        raise AuditStoreNotEmpty(
                            f"{self.describe()} already holds {count} record(s); restore needs "
                            "an empty store"
                        )
                    written, last = 0, ChainHead(seq=0, hash=GENESIS_HASH)
                    for record in records:
                        db.execute(
                            f"INSERT INTO audit_records ({_COLUMNS}, entry_id) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            _insert_params(record, None, iso_utc(record.at)),
                        )
                        written, last = written + 1, ChainHead(seq=record.seq, hash=record.hash)
                    db.execute(
                        "INSERT OR REPLACE INTO audit_head (id, seq, hash) VALUES (1, ?, ?)",
                        (last.seq, last.hash),
                    )
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditStoreError(f"restoring into {self.describe()} failed: {exc}") from exc
            return written

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# --- PostgreSQL -----------------------------------------------------------------------------

_PG_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS audit_records (
        seq BIGINT PRIMARY KEY,
        at TIMESTAMPTZ NOT NULL,
        operator TEXT NOT NULL,
        action TEXT NOT NULL,
        deployment_id TEXT,
        constitutional_hash TEXT NOT NULL,
        fence BIGINT,
        evidence TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        entry_id TEXT UNIQUE
    )
    """,
    "CREATE INDEX IF NOT EXISTS audit_records_deployment ON audit_records (deployment_id, seq)",
    """
    CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL
    )
    """,
    f"INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}') "
    "ON CONFLICT (id) DO NOTHING",
    """
    CREATE OR REPLACE FUNCTION audit_records_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_records is append-only';
    END
    $$
    """,
)
_PG_TRIGGERS = {
    "audit_records_no_update_delete": (
        "CREATE TRIGGER audit_records_no_update_delete BEFORE UPDATE OR DELETE ON audit_records "
        "FOR EACH ROW EXECUTE FUNCTION audit_records_append_only()"
    ),
    "audit_records_no_truncate": (
        "CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only()"
    ),
}
# Any constant serves: it only keeps two consoles from creating the schema at once.
_PG_SCHEMA_LOCK = 0x41434753


class _PostgresReader(ChainReader):
    def __init__(self, conn: _PgConn) -> None:
        self._conn = conn
        row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        self.head = None if row is None else ChainHead(seq=row[0], hash=row[1])

    def records(
        self, after_seq: int = 0, deployment_id: str | None = None
    ) -> Iterator[AuditRecord]:
        return _pg_records(self._conn, after_seq, deployment_id)


def _pg_records(conn: _PgConn, after_seq: int, deployment_id: str | None) -> Iterator[AuditRecord]:
    last = after_seq
    while True:
        try:
            if deployment_id is None:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM audit_records WHERE seq > %s ORDER BY seq LIMIT %s",
                    (last, _READ_BATCH),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM audit_records WHERE seq > %s AND deployment_id = %s "
                    "ORDER BY seq LIMIT %s",
                    (last, deployment_id, _READ_BATCH),
                ).fetchall()
        except psycopg.Error as exc:
            raise AuditStoreError(f"reading the audit trail failed: {exc}") from exc
        for row in rows:
            yield _row_to_record(row)
            last = row[0]
        if len(rows) < _READ_BATCH:
            return


class PostgresAuditStore(AuditStore):
    """The audit trail in PostgreSQL, through psycopg 3.

    One connection is kept for appends and re-made after a failure; reads for verification
    and backup use a connection of their own in a REPEATABLE READ, READ ONLY transaction.

    Args:
        dsn: libpq connection string (without the password).
        password: The password, passed as a connect keyword, never put into the DSN.
        connect_timeout_s: Connect timeout; libpq's minimum is 2 s.
        statement_timeout_ms: Server-side bound on each statement, lock waits included.
    """

    kind = "postgresql"

    def __init__(
        self,
        dsn: str,
        *,
        password: SecretStr | None = None,
        connect_timeout_s: float = 2.0,
        statement_timeout_ms: int = 5000,
    ) -> None:
        self.dsn = dsn
        self._password = password
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: _PgConn | None = None
        self._schema_ready = False
        self._lock = threading.RLock()

    def describe(self) -> str:
        try:
            parts = conninfo_to_dict(self.dsn)
        except psycopg.Error:
            return "PostgreSQL (unparsable DSN)"
        shown = " ".join(
            f"{k}={v}"
            for k, v in parts.items()
            if k in ("host", "hostaddr", "port", "dbname", "user")
        )
        return f"PostgreSQL {shown}"

    def _connect(self) -> _PgConn:
        kwargs: dict[str, Any] = {}
        try:
            given = conninfo_to_dict(self.dsn)
        except psycopg.Error as exc:
            raise AuditStoreError(f"the audit DSN cannot be parsed: {exc}") from None
        # Bounded waits when the server or the network is gone; the DSN's own values win.
        defaults: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(self.connect_timeout_s)),
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
            "tcp_user_timeout": 10_000,
            "application_name": "acgs-console-audit",
        }
        kwargs.update({k: v for k, v in defaults.items() if k not in given})
        if self._password is not None:
            kwargs["password"] = self._password.get_secret_value()
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, **kwargs)
        except psycopg.Error as exc:
            raise AuditStoreError(
                f"cannot connect to {self.describe()}: {_one_line(exc)}"
            ) from None
        try:
            conn.execute(f"SET statement_timeout = {int(self.statement_timeout_ms)}")
            if not self._schema_ready:
                self._create_schema(conn)
                self._schema_ready = True
        except psycopg.Error as exc:
            conn.close()
            raise AuditStoreError(f"cannot prepare {self.describe()}: {_one_line(exc)}") from None
        return conn

    @staticmethod
    def _create_schema(conn: _PgConn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
            for statement in _PG_SCHEMA:
                conn.execute(statement)
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_records'::regclass"
                )
            }
            for name, statement in _PG_TRIGGERS.items():
                if name not in present:
                    conn.execute(statement)

    def _connection(self) -> _PgConn:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._drop()
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _with_retry(self, what: str, work: Callable[[_PgConn], _T]) -> _T:
        """Run ``work(conn)``; once more on a fresh connection when a kept one had died.

        A kept connection dies silently when the server restarts; its first use after that
        fails although the server is back. Retrying an append is safe: the entry id makes it
        idempotent.
        """
        for attempt in (1, 2):
            fresh = self._conn is None
            conn = self._connection()
            try:
                return work(conn)
            except (AuditStoreNotEmpty, AuditStoreError):
                raise
            except psycopg.Error as exc:
                broken = conn.broken or conn.closed or isinstance(exc, psycopg.OperationalError)
                if broken:
                    self._drop()
                if broken and not fresh and attempt == 1:
                    continue
                raise AuditStoreError(
                    f"{what} {self.describe()} failed: {_one_line(exc)}"
                ) from None
        raise AssertionError("unreachable")

    def append(self, draft: AuditDraft) -> AuditRecord:
        def work(conn: _PgConn) -> AuditRecord:
            with conn.transaction():
                if draft.entry_id is not None:
                    row = conn.execute(
                        f"SELECT {_COLUMNS} FROM audit_records WHERE entry_id = %s",
                        (draft.entry_id,),
                    ).fetchone()
                    if row is not None:
                        return _stored_twin(row)
                # The head row's lock is what serializes writers.
                head = conn.execute(
                    "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE"
                ).fetchone()
                if head is None:
                    raise AuditStoreError(
                        "the audit_head row is missing; run `acgs-console audit verify`"
                    )
                record = seal(draft, int(head[0]) + 1, str(head[1]))
                conn.execute(
                    f"INSERT INTO audit_records ({_COLUMNS}, entry_id) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    _insert_params(record, draft.entry_id, record.at),
                )
                conn.execute(
                    "UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1",
                    (record.seq, record.hash),
                )
                return record

        with self._lock:
            return self._with_retry("appending to", work)

    def head(self) -> ChainHead | None:
        def work(conn: _PgConn) -> ChainHead | None:
            row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            return None if row is None else ChainHead(seq=row[0], hash=row[1])

        with self._lock:
            return self._with_retry("reading", work)

    @contextlib.contextmanager
    def reader(self) -> Iterator[ChainReader]:
        conn = self._connect()
        try:
            try:
                conn.autocommit = False
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                reader = _PostgresReader(conn)
            except psycopg.Error as exc:
                raise AuditStoreError(
                    f"reading {self.describe()} failed: {_one_line(exc)}"
                ) from None
            yield reader
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()

    def restore(self, records: Iterable[AuditRecord]) -> int:
        # Materialized: a retry on a fresh connection must see every record again.
        records = list(records)

        def work(conn: _PgConn) -> int:
            with conn.transaction():
                conn.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
                count_row = conn.execute("SELECT count(*) FROM audit_records").fetchone()
                head = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()
                count = int(count_row[0]) if count_row else 0
                if count or (head is not None and head[0] != 0):
                    raise AuditStoreNotEmpty(
                        f"{self.describe()} already holds {count} record(s); restore needs an "
                        "empty store"
                    )
                written, last = 0, ChainHead(seq=0, hash=GENESIS_HASH)
                with conn.cursor() as cur:
                    for record in records:
                        cur.execute(
                            f"INSERT INTO audit_records ({_COLUMNS}, entry_id) "
                            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                            _insert_params(record, None, record.at),
                        )
                        written, last = written + 1, ChainHead(seq=record.seq, hash=record.hash)
                conn.execute(
                    "INSERT INTO audit_head (id, seq, hash) VALUES (1, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
                    (last.seq, last.hash),
                )
                return written

        with self._lock:
            return self._with_retry("restoring into", work)

    def close(self) -> None:
        with self._lock:
            self._drop()


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (libpq's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
