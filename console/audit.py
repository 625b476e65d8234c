"""The audit trail: append with a spool fallback, flush in order, verify, back up, restore.

The chain itself (record hash, schema, serialized append) lives in
:mod:`backends.audit_store`; this module decides what happens around it.

**Spool, and why chaining is deferred.** When the store cannot be reached, :meth:`AuditTrail.append`
writes a *draft* (everything but seq, prev_hash and hash, plus an entry id) as one line of a
local JSONL spool and returns at once. The chain fields are computed only when the draft
reaches the store, by the store's own serialized append. Computing them against the last
known head instead would fork the chain as soon as another console appended meanwhile.
Order is kept because (a) an append never goes straight to the store while the spool holds
anything (it flushes first, or spools behind the queue), (b) a flush sends drafts oldest
first and stops at the first failure, and (c) a lock file serializes the spool between
consoles on one host. The entry id makes a flush that crashed half-way safe to repeat: the
store returns the copy it already has. A record's ``at`` is when the action happened, not
when it was flushed.

**Never blocking for long.** A failed append marks the store down for ``retry_after_s``;
until then appends go straight to the spool without trying to connect. PostgreSQL connects
with a short timeout; SQLite waits ``busy_timeout_s`` for a writer lock.

**Verification** (:func:`verify`) walks the chain once and names the first problem: a record
whose content no longer matches its hash (modified), a gap in the seqs (deleted), a record
whose ``prev_hash`` is not its predecessor's hash (reordered or inserted), a tail shorter or
longer than the chain head says, or a record without the constitutional hash. The dashboard
turns a failed verification into the runbook's critical "Audit Trail Corruption" alert
(:func:`audit_alert`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backends.audit_store import (
    GENESIS_HASH,
    AuditDraft,
    AuditRowError,
    AuditStore,
    AuditStoreError,
    AuditStoreNotEmpty,
    ChainHead,
    PostgresAuditStore,
    SQLiteAuditStore,
    as_utc,
    canonical_json,
    hashed_body,
    iso_utc,
    json_safe,
    record_hash,
)
from backends.models import (
    AlertPhase,
    AlertSeverity,
    AlertState,
    AuditRecord,
    utcnow,
)
from console.config import AppConfig, AuditConfig

__all__ = [
    "GENESIS_HASH",
    "AppendResult",
    "AuditStatus",
    "AuditTrail",
    "BackupError",
    "BackupHeader",
    "ChainProblem",
    "FlushResult",
    "ProblemKind",
    "RestoreResult",
    "Spool",
    "VerifyResult",
    "VerifyState",
    "audit_alert",
    "default_operator",
    "default_spool_path",
    "default_sqlite_path",
    "open_store",
    "open_trail",
    "read_backup",
    "restore_backup",
    "verify",
    "verify_backup",
    "verify_store",
    "write_backup",
]

log = logging.getLogger(__name__)

APP_NAME = "acgs-console"
BACKUP_FORMAT = "acgs-console-audit-backup"
BACKUP_VERSION = 1
ALERT_RULE_ID = "audit-trail-corruption"
ALERT_NAME = "Audit Trail Corruption"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- where things live ------------------------------------------------------------------------


def _state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME))


def default_sqlite_path() -> Path:
    """``<user state dir>/acgs-console/audit.sqlite3``."""
    return _state_dir() / "audit.sqlite3"


def default_spool_path() -> Path:
    """``<user state dir>/acgs-console/audit-spool.jsonl``."""
    return _state_dir() / "audit-spool.jsonl"


def open_store(cfg: AuditConfig) -> AuditStore:
    """The store the configuration names: PostgreSQL when a DSN is set, else SQLite.

    Nothing is connected yet; the first use connects (so a store that is down at start-up
    costs nothing until a record is written).
    """
    if cfg.postgres_dsn:
        return PostgresAuditStore(cfg.postgres_dsn, password=cfg.postgres_password)
    return SQLiteAuditStore((cfg.sqlite_path or default_sqlite_path()).expanduser())


def default_operator(cfg: AppConfig | None = None) -> str:
    """Who is acting: the configured operator, else ``user@host`` (as the console names it)."""
    from console.identity import operator_identity

    return operator_identity(cfg.operator if cfg is not None else None)


# --- verification -----------------------------------------------------------------------------


class VerifyState(StrEnum):
    """What a verification concluded."""

    OK = "ok"
    CORRUPTED = "corrupted"
    UNREADABLE = "unreadable"
    """The chain could not be read at all (store down, backup file missing): not a pass."""


class ProblemKind(StrEnum):
    """The kinds of damage verification tells apart."""

    MODIFIED = "modified"
    DELETED = "deleted"
    REORDERED = "reordered"
    INSERTED = "inserted"
    MISSING_CONTEXT = "missing_constitutional_context"
    DAMAGED = "damaged"
    """A stored row or backup line that is not a record at all."""
    UNREACHABLE = "unreachable"


class ChainProblem(_Model):
    """The first thing wrong with a chain."""

    seq: int | None
    """The record it concerns (None when no record could be read)."""
    kind: ProblemKind
    message: str
    """E.g. ``record 17: hash mismatch (modified)``."""

    def __str__(self) -> str:
        return self.message


class VerifyResult(_Model):
    """The outcome of verifying a chain."""

    state: VerifyState
    checked: int
    """Records that verified before the first problem (all of them when ok)."""
    head_seq: int
    """Seq of the last record that verified (0 when none)."""
    head_hash: str
    """Hash of the last record that verified (genesis when none)."""
    problem: ChainProblem | None = None
    source: str = ""
    """What was verified: the store's description or the backup file."""
    verified_at: datetime = Field(default_factory=utcnow)

    @property
    def ok(self) -> bool:
        """True only when the whole chain verified."""
        return self.state is VerifyState.OK

    def summary(self) -> str:
        """One line for people."""
        where = f"{self.source}: " if self.source else ""
        if self.ok:
            return f"{where}audit chain ok: {self.checked} record(s), head {self.head_hash}"
        what = self.problem.message if self.problem else "unknown problem"
        if self.state is VerifyState.UNREADABLE:
            return f"{where}audit chain cannot be read: {what}"
        return f"{where}audit chain CORRUPTED: {what} ({self.checked} record(s) verified before it)"


def _seqs(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}..{last}"


def verify(
    records: Iterable[AuditRecord],
    *,
    head: ChainHead | None = None,
    expected_constitutional_hash: str | None = None,
    source: str = "",
    head_label: str = "the chain head",
) -> VerifyResult:
    """Walk a chain in order and name its first problem.

    Args:
        records: The records in the order they are stored (by seq). May raise
            :class:`AuditRowError` part-way, which is reported as a damaged record.
        head: Where the chain should end (the store's head row, or a backup's header). Catches
            records deleted from the tail and records added behind the API.
        expected_constitutional_hash: When given, a record carrying another hash is a problem.
            A record without any constitutional hash is always one.
        source: What is being verified, for messages.
        head_label: How ``head`` is called in messages.

    Returns:
        The verdict; ``problem`` names the first modified, deleted, reordered or inserted
        record.
    """
    prev: AuditRecord | None = None
    checked = 0

    def result(problem: ChainProblem | None) -> VerifyResult:
        return VerifyResult(
            state=VerifyState.OK if problem is None else VerifyState.CORRUPTED,
            checked=checked,
            head_seq=prev.seq if prev else 0,
            head_hash=prev.hash if prev else GENESIS_HASH,
            problem=problem,
            source=source,
        )

    try:
        for record in records:
            expected_seq = 1 if prev is None else prev.seq + 1
            if record.seq > expected_seq:
                gap = _seqs(expected_seq, record.seq - 1)
                jump = (
                    f"the chain starts at seq {record.seq}"
                    if prev is None
                    else f"seq jumps {prev.seq} -> {record.seq}"
                )
                return result(
                    ChainProblem(
                        seq=expected_seq,
                        kind=ProblemKind.DELETED,
                        message=f"{gap} missing (deleted): {jump}",
                    )
                )
            if record.seq < expected_seq:
                after = "the start" if prev is None else f"record {prev.seq}"
                return result(
                    ChainProblem(
                        seq=record.seq,
                        kind=ProblemKind.REORDERED,
                        message=f"record {record.seq}: comes after {after} "
                        "(reordered or duplicated)",
                    )
                )
            if prev is None and record.prev_hash != GENESIS_HASH:
                return result(
                    ChainProblem(
                        seq=record.seq,
                        kind=ProblemKind.REORDERED,
                        message=f"record {record.seq}: prev_hash is not the genesis hash "
                        "(reordered or inserted)",
                    )
                )
            if prev is not None and record.prev_hash != prev.hash:
                return result(
                    ChainProblem(
                        seq=record.seq,
                        kind=ProblemKind.REORDERED,
                        message=f"record {record.seq}: prev_hash does not match record {prev.seq} "
                        "(reordered or inserted)",
                    )
                )
            if record_hash(record) != record.hash:
                return result(
                    ChainProblem(
                        seq=record.seq,
                        kind=ProblemKind.MODIFIED,
                        message=f"record {record.seq}: hash mismatch (modified)",
                    )
                )
            if not record.constitutional_hash.strip():
                return result(
                    ChainProblem(
                        seq=record.seq,
                        kind=ProblemKind.MISSING_CONTEXT,
                        message=f"record {record.seq}: no constitutional hash "
                        "(missing constitutional context)",
                    )
                )
            if (
                expected_constitutional_hash is not None
                and record.constitutional_hash != expected_constitutional_hash
            ):
                return result(
                    ChainProblem(
                        seq=record.seq,
                        kind=ProblemKind.MISSING_CONTEXT,
                        message=f"record {record.seq}: constitutional hash "
                        f"{record.constitutional_hash!r}, expected "
                        f"{expected_constitutional_hash!r}",
                    )
                )
            checked += 1
            prev = record
    except AuditRowError as exc:
        return result(
            ChainProblem(
                seq=exc.seq,
                kind=ProblemKind.DAMAGED,
                message=f"record {exc.seq}: unreadable ({exc.reason})",
            )
        )

    last_seq = prev.seq if prev else 0
    last_hash = prev.hash if prev else GENESIS_HASH
    if head is None:
        return result(None)
    if head.seq > last_seq:
        return result(
            ChainProblem(
                seq=last_seq + 1,
                kind=ProblemKind.DELETED,
                message=f"{_seqs(last_seq + 1, head.seq)} missing (deleted): {head_label} "
                f"is at seq {head.seq}, the last record is {last_seq}",
            )
        )
    if head.seq < last_seq:
        return result(
            ChainProblem(
                seq=head.seq + 1,
                kind=ProblemKind.INSERTED,
                message=f"record {head.seq + 1}: beyond {head_label} (seq {head.seq}) (inserted)",
            )
        )
    if head.hash != last_hash:
        return result(
            ChainProblem(
                seq=last_seq,
                kind=ProblemKind.MODIFIED,
                message=f"record {last_seq}: hash does not match {head_label} (modified)",
            )
        )
    return result(None)


def _unreadable(source: str, message: str) -> VerifyResult:
    return VerifyResult(
        state=VerifyState.UNREADABLE,
        checked=0,
        head_seq=0,
        head_hash=GENESIS_HASH,
        problem=ChainProblem(seq=None, kind=ProblemKind.UNREACHABLE, message=message),
        source=source,
    )


def verify_store(
    store: AuditStore, *, expected_constitutional_hash: str | None = None
) -> VerifyResult:
    """Verify the whole chain in ``store`` from one consistent snapshot.

    Never raises for the store's sake: an unreachable store gives an UNREADABLE result.
    """
    source = store.describe()
    try:
        with store.reader() as reader:
            if reader.head is None:
                return VerifyResult(
                    state=VerifyState.CORRUPTED,
                    checked=0,
                    head_seq=0,
                    head_hash=GENESIS_HASH,
                    problem=ChainProblem(
                        seq=None,
                        kind=ProblemKind.DELETED,
                        message="the chain head row (audit_head) is missing (deleted)",
                    ),
                    source=source,
                )
            return verify(
                reader.records(),
                head=reader.head,
                expected_constitutional_hash=expected_constitutional_hash,
                source=source,
            )
    except AuditStoreError as exc:
        return _unreadable(source, str(exc))


def audit_alert(result: VerifyResult) -> AlertState:
    """The runbook's critical "Audit Trail Corruption" alert, as a verification implies it.

    Firing when the chain is corrupted; inactive but ``unknown`` when it could not be read
    (gates treat unknown as not passing); inactive when it verified.
    """
    if result.ok:
        phase, summary, unknown = AlertPhase.INACTIVE, "audit chain verifies", False
    elif result.state is VerifyState.UNREADABLE:
        phase, summary, unknown = AlertPhase.INACTIVE, result.summary(), True
    else:
        phase, summary, unknown = AlertPhase.FIRING, result.summary(), False
    return AlertState(
        rule_id=ALERT_RULE_ID,
        name=ALERT_NAME,
        environment=None,
        severity=AlertSeverity.CRITICAL,
        phase=phase,
        summary=summary,
        for_seconds=0.0,
        active_since=result.verified_at if phase is AlertPhase.FIRING else None,
        unknown=unknown,
    )


# --- the spool --------------------------------------------------------------------------------


class Spool:
    """Drafts waiting for the store: a JSONL file, oldest first, guarded by a lock file.

    Lines that cannot be read back (a torn write after a crash) are moved to
    ``<spool>.rejected`` rather than dropped, and counted.

    Args:
        path: The spool file; its directory is created on first write.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.rejected_path = path.with_name(path.name + ".rejected")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the spool's lock (between processes on this host)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def has_entries(self) -> bool:
        """Whether anything waits (cheap: a stat)."""
        try:
            return self.path.stat().st_size > 0
        except (FileNotFoundError, NotADirectoryError):
            return False

    def add(self, draft: AuditDraft) -> None:
        """Append one draft durably. Call with the lock held.

        Raises:
            OSError: The spool cannot be written.
        """
        line = canonical_json(_draft_json(draft)) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> tuple[list[AuditDraft], int]:
        """Every waiting draft, oldest first, and how many lines were rejected. Lock held."""
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return [], 0
        drafts: list[AuditDraft] = []
        bad: list[str] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                drafts.append(AuditDraft.model_validate(json.loads(line)))
            except (ValueError, ValidationError):
                bad.append(line)
        if bad:
            log.error(
                "audit spool %s: %d unreadable line(s) moved to %s",
                self.path,
                len(bad),
                self.rejected_path,
            )
            with self.rejected_path.open("a", encoding="utf-8") as out:
                out.writelines(b + "\n" for b in bad)
                out.flush()
                os.fsync(out.fileno())
            self.keep(drafts)
        return drafts, len(bad)

    def keep(self, drafts: list[AuditDraft]) -> None:
        """Replace the spool's content with ``drafts`` (atomically). Lock held."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            out.writelines(canonical_json(_draft_json(d)) + "\n" for d in drafts)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def count(self) -> int:
        """How many drafts wait (reads the file)."""
        try:
            with self.path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        except (FileNotFoundError, NotADirectoryError):
            return 0


def _draft_json(draft: AuditDraft) -> dict[str, Any]:
    data = draft.model_dump(mode="python")
    data["at"] = iso_utc(draft.at)
    data["evidence"] = json_safe(draft.evidence)
    return data


# --- the trail --------------------------------------------------------------------------------


class AppendResult(_Model):
    """What became of one appended record."""

    record: AuditRecord | None
    """The record as stored; None when it was spooled (or lost)."""
    spooled: bool = False
    pending: int = 0
    """Drafts waiting in the spool after this append."""
    error: str | None = None
    """Why the store was not used; or, with neither record nor spooled, why it was lost."""

    @property
    def lost(self) -> bool:
        """Neither stored nor spooled: the store and the spool both failed."""
        return self.record is None and not self.spooled


class FlushResult(_Model):
    """What one flush moved from the spool into the store."""

    flushed: int
    pending: int | None
    """Drafts still waiting; None when the spool could not be read."""
    rejected: int = 0
    """Spool lines that could not be read and were set aside."""
    error: str | None = None


class AuditStatus(_Model):
    """The trail's health, for the dashboard."""

    store: str
    reachable: bool | None
    """None until the store was first used."""
    pending: int
    last_error: str | None = None
    last_error_at: datetime | None = None
    rejected: int = 0


class AuditTrail:
    """Append-only audit trail: the store, with a spool for when it is down.

    Thread-safe; ``append`` and ``flush`` do blocking I/O (run them off the UI thread).

    Args:
        store: Where records are chained and kept.
        spool_path: The local spool for drafts the store could not take.
        constitutional_hash: Carried in every record.
        operator: Default operator of appended records.
        retry_after_s: After a failure, how long appends skip the store and spool directly.
        clock: Source of record times (UTC).
    """

    def __init__(
        self,
        store: AuditStore,
        spool_path: Path,
        *,
        constitutional_hash: str,
        operator: str,
        retry_after_s: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.spool = Spool(spool_path)
        self.constitutional_hash = constitutional_hash
        self.operator = operator
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._reachable: bool | None = None
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._rejected = 0

    # -- writing --

    def append(
        self,
        action: str,
        *,
        evidence: dict[str, Any] | None = None,
        deployment_id: str | None = None,
        fence: int | None = None,
        operator: str | None = None,
        at: datetime | None = None,
    ) -> AppendResult:
        """Record an action. Never raises for the store's sake and never waits long.

        Args:
            action: What happened, e.g. ``step.passed`` or ``traffic.set``.
            evidence: Measured values, exit codes, notes; made JSON-safe.
            deployment_id: The deployment it belongs to (``YYYYMMDD_HHMMSS``).
            fence: The lease's fencing number, when the actor holds the lease.
            operator: Who acted (default: the trail's operator).
            at: When it happened (default: now).

        Returns:
            The stored record, or that it was spooled (the spool's length included).
        """
        draft = AuditDraft(
            entry_id=uuid.uuid4().hex,
            at=as_utc(at or self._clock()),
            operator=operator or self.operator,
            action=action,
            deployment_id=deployment_id,
            constitutional_hash=self.constitutional_hash,
            fence=fence,
            evidence=json_safe(evidence or {}),
        )
        with self._lock:
            try:
                with self.spool.locked():
                    return self._append_locked(draft)
            except OSError as exc:
                spool_error = f"spool {self.spool.path} failed: {exc}"
            # The spool is unusable; with nothing queued in it, the store may still take this.
            if not self.spool.has_entries():
                try:
                    record = self.store.append(draft)
                except AuditStoreError as exc:
                    spool_error += f"; {exc}"
                else:
                    self._mark_up()
                    self._note_error(spool_error)
                    return AppendResult(record=record, error=spool_error)
            # Neither store nor spool: the record is lost. Say so loudly.
            message = f"audit record {action!r} lost: {spool_error}"
            log.critical(message)
            self._note_error(message)
            return AppendResult(record=None, spooled=False, error=message)

    def _append_locked(self, draft: AuditDraft) -> AppendResult:
        error: str | None = None
        if self.spool.has_entries() and not self._is_down():
            flushed = self._flush_locked()
            error = flushed.error
        if not self.spool.has_entries() and not self._is_down():
            try:
                record = self.store.append(draft)
            except AuditStoreError as exc:
                error = str(exc)
                self._mark_down(error)
            else:
                self._mark_up()
                return AppendResult(record=record, pending=0)
        self.spool.add(draft)
        return AppendResult(
            record=None,
            spooled=True,
            pending=self.spool.count(),
            error=error or self._last_error,
        )

    def flush(self) -> FlushResult:
        """Move spooled drafts into the store, oldest first; stop at the first failure.

        Tries the store even while it is marked down (this is how it comes back). The
        console calls it periodically; every append calls it too while drafts wait.
        """
        with self._lock:
            try:
                with self.spool.locked():
                    return self._flush_locked()
            except OSError as exc:
                message = f"audit spool {self.spool.path} cannot be read: {exc}"
                self._note_error(message)
                return FlushResult(flushed=0, pending=None, error=message)

    def _flush_locked(self) -> FlushResult:
        drafts, rejected = self.spool.read()
        self._rejected += rejected
        if not drafts:
            return FlushResult(flushed=0, pending=0, rejected=rejected)
        done = 0
        error: str | None = None
        for draft in drafts:
            try:
                self.store.append(draft)
            except AuditStoreError as exc:
                error = str(exc)
                self._mark_down(error)
                break
            done += 1
        if error is None:
            self._mark_up()
        if done:
            self.spool.keep(drafts[done:])
        return FlushResult(flushed=done, pending=len(drafts) - done, rejected=rejected, error=error)

    # -- reading --

    def pending_drafts(self) -> list[AuditDraft]:
        """Drafts still in the spool, oldest first (not yet part of the chain).

        Raises:
            OSError: The spool cannot be read.
        """
        with self._lock, self.spool.locked():
            drafts, rejected = self.spool.read()
            self._rejected += rejected
            return drafts

    def records(
        self, deployment_id: str | None = None, after_seq: int = 0
    ) -> Iterator[AuditRecord]:
        """Stored records in chain order (spooled drafts are not among them).

        Raises:
            AuditStoreError: The store is unreachable.
            AuditRowError: A stored row is damaged.
        """
        return self.store.records(after_seq=after_seq, deployment_id=deployment_id)

    def verify(self) -> VerifyResult:
        """Verify the stored chain (see :func:`verify_store`)."""
        return verify_store(self.store, expected_constitutional_hash=self.constitutional_hash)

    def status(self) -> AuditStatus:
        """Store reachability, spool length and the last error."""
        return AuditStatus(
            store=self.store.describe(),
            reachable=self._reachable,
            pending=self.spool.count(),
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            rejected=self._rejected,
        )

    def close(self) -> None:
        """Release the store's connections."""
        self.store.close()

    # -- bookkeeping --

    def _is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _mark_down(self, error: str) -> None:
        self._down_until = time.monotonic() + self.retry_after_s
        self._reachable = False
        self._note_error(error)
        log.warning("audit store unreachable, spooling: %s", error)

    def _mark_up(self) -> None:
        self._down_until = 0.0
        self._reachable = True

    def _note_error(self, error: str) -> None:
        self._last_error = error
        self._last_error_at = utcnow()


def open_trail(cfg: AppConfig, operator: str | None = None) -> AuditTrail:
    """The audit trail the configuration describes (nothing is connected yet)."""
    return AuditTrail(
        open_store(cfg.audit),
        (cfg.audit.spool_path or default_spool_path()).expanduser(),
        constitutional_hash=cfg.constitutional_hash,
        operator=operator or default_operator(cfg),
    )


# --- backup and restore -----------------------------------------------------------------------


class BackupError(Exception):
    """A backup file that cannot be read at all (missing, not a backup, bad header)."""


class BackupHeader(_Model):
    """The first line of a backup file."""

    format: str = BACKUP_FORMAT
    version: int = BACKUP_VERSION
    created_at: datetime
    source: str
    constitutional_hash: str
    """The constitutional hash the console ran with when it wrote the backup."""
    head_seq: int
    head_hash: str
    """The chain head the backup ends at."""
    records: int
    chain_ok: bool
    """Whether the chain verified when it was backed up."""
    problem: str | None = None


def _record_line(record: AuditRecord) -> str:
    data = hashed_body(record)
    data["hash"] = record.hash
    return canonical_json(data)


def write_backup(
    store: AuditStore, path: Path, *, constitutional_hash: str
) -> tuple[BackupHeader, VerifyResult]:
    """Copy the whole chain, from one snapshot, into a JSONL backup file.

    The chain is verified while it is copied; a corrupted chain is still written (it is
    evidence), with ``chain_ok`` false and the problem in the header.

    Raises:
        AuditStoreError: The store cannot be read.
        OSError: The file cannot be written.
    """
    source = store.describe()
    tmp = path.with_name(path.name + ".partial")
    with store.reader() as reader:
        copied: list[AuditRecord] = []

        def tee() -> Iterator[AuditRecord]:
            for record in reader.records():
                copied.append(record)
                yield record

        # The verification pulls the records; everything it read is kept, even past a problem.
        result = verify(
            tee(),
            head=reader.head,
            expected_constitutional_hash=constitutional_hash,
            source=source,
        )
        if not result.ok:
            with contextlib.suppress(AuditRowError):
                for record in reader.records(after_seq=copied[-1].seq if copied else 0):
                    copied.append(record)
        head = copied[-1] if copied else None
        header = BackupHeader(
            created_at=utcnow(),
            source=source,
            constitutional_hash=constitutional_hash,
            head_seq=head.seq if head else 0,
            head_hash=head.hash if head else GENESIS_HASH,
            records=len(copied),
            chain_ok=result.ok,
            problem=result.problem.message if result.problem else None,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as out:
            out.write(canonical_json(json_safe(header.model_dump(mode="python"))) + "\n")
            for record in copied:
                out.write(_record_line(record) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    return header, result


def _read_header(path: Path) -> BackupHeader:
    try:
        with path.open("r", encoding="utf-8") as f:
            first = f.readline()
    except OSError as exc:
        raise BackupError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BackupError(f"{path}: not a text file") from None
    try:
        data = json.loads(first)
        if not isinstance(data, dict) or data.get("format") != BACKUP_FORMAT:
            raise BackupError(f"{path}: not an acgs-console audit backup (no header line)")
        header = BackupHeader.model_validate(data)
    except ValueError:
        raise BackupError(f"{path}: the header line is not a valid backup header") from None
    if header.version != BACKUP_VERSION:
        raise BackupError(f"{path}: backup format version {header.version} is not supported")
    return header


def read_backup(path: Path) -> tuple[BackupHeader, Iterator[AuditRecord]]:
    """A backup's header and its records (read lazily, in file order).

    The iterator raises :class:`AuditRowError` at a line that is not a record.

    Raises:
        BackupError: The file cannot be read or has no valid header.
    """
    header = _read_header(path)

    def records() -> Iterator[AuditRecord]:
        expected = 1
        with path.open("r", encoding="utf-8", errors="replace") as f:
            f.readline()
            for lineno, line in enumerate(f, start=2):
                if not line.strip():
                    continue
                try:
                    record = AuditRecord.model_validate(json.loads(line))
                except (ValueError, ValidationError):
                    raise AuditRowError(
                        expected, f"backup line {lineno} is not an audit record"
                    ) from None
                expected = record.seq + 1
                yield record

    return header, records()


def verify_backup(path: Path, *, expected_constitutional_hash: str | None = None) -> VerifyResult:
    """Verify a backup file: its chain, its header's head, its constitutional hash.

    Never raises: an unreadable file gives an UNREADABLE result.
    """
    try:
        header, records = read_backup(path)
    except BackupError as exc:
        return _unreadable(str(path), str(exc))
    return _verify_backup(path, header, records, expected_constitutional_hash)


def _verify_backup(
    path: Path,
    header: BackupHeader,
    records: Iterable[AuditRecord],
    expected_constitutional_hash: str | None,
) -> VerifyResult:
    source = str(path)
    if (
        expected_constitutional_hash is not None
        and header.constitutional_hash != expected_constitutional_hash
    ):
        return VerifyResult(
            state=VerifyState.CORRUPTED,
            checked=0,
            head_seq=0,
            head_hash=GENESIS_HASH,
            problem=ChainProblem(
                seq=None,
                kind=ProblemKind.MISSING_CONTEXT,
                message=f"the backup carries constitutional hash {header.constitutional_hash!r}, "
                f"expected {expected_constitutional_hash!r}",
            ),
            source=source,
        )
    try:
        return verify(
            records,
            head=ChainHead(seq=header.head_seq, hash=header.head_hash),
            expected_constitutional_hash=expected_constitutional_hash,
            source=source,
            head_label="the backup header",
        )
    except OSError as exc:
        return _unreadable(source, f"{path}: cannot read: {exc.strerror or exc}")


class RestoreResult(_Model):
    """The outcome of restoring a backup."""

    restored: int
    backup: VerifyResult
    """The backup's verification (a restore only proceeds when it is ok)."""
    store: VerifyResult | None = None
    """The store's verification after the restore."""
    refused: str | None = None
    """Why nothing was restored."""

    @property
    def ok(self) -> bool:
        """Restored, and the store now verifies at the backup's head."""
        return (
            self.refused is None
            and self.store is not None
            and self.store.ok
            and self.store.head_hash == self.backup.head_hash
        )


def restore_backup(
    store: AuditStore, path: Path, *, expected_constitutional_hash: str | None = None
) -> RestoreResult:
    """Restore a backup into an empty store; refuse a backup that does not verify.

    The file is read once: the records restored are exactly the records verified.

    Raises:
        AuditStoreError: The store cannot be reached.
    """
    try:
        header, lazy = read_backup(path)
    except BackupError as exc:
        checked = _unreadable(str(path), str(exc))
        return RestoreResult(restored=0, backup=checked, refused=str(exc))
    records: list[AuditRecord] = []

    def kept() -> Iterator[AuditRecord]:
        for record in lazy:
            records.append(record)
            yield record

    checked = _verify_backup(path, header, kept(), expected_constitutional_hash)
    if not checked.ok:
        return RestoreResult(
            restored=0, backup=checked, refused=f"the backup does not verify: {checked.summary()}"
        )
    try:
        restored = store.restore(records)
    except AuditStoreNotEmpty as exc:
        return RestoreResult(restored=0, backup=checked, refused=str(exc))
    after = verify_store(store, expected_constitutional_hash=expected_constitutional_hash)
    return RestoreResult(restored=restored, backup=checked, store=after)
