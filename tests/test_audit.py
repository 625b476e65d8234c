"""The hash-chained audit trail, on a real SQLite file and on real PostgreSQL.

Every store test runs twice: on a SQLite file in the test's temp dir and on a fresh database
of the harness's PostgreSQL primary (``pg_cluster``). Tampering goes behind the API's back
with plain SQL, the way someone with database access would do it. The spool test stops a
PostgreSQL primary of its own (``fresh_pg_cluster``), never the shared one.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import hashlib
import itertools
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from backends.audit_store import (
    GENESIS_HASH,
    AuditDraft,
    AuditStore,
    AuditStoreError,
    PostgresAuditStore,
    SQLiteAuditStore,
    canonical_json,
    json_safe,
    record_hash,
    seal,
)
from backends.models import AlertPhase, AlertSeverity, AuditRecord
from console import audit_cli
from console.audit import (
    AuditTrail,
    ProblemKind,
    Spool,
    VerifyState,
    audit_alert,
    read_backup,
    restore_backup,
    verify,
    verify_backup,
    verify_store,
    write_backup,
)
from console.engines import PostgresCluster, free_port

CHASH = "cdd01ef066bc6cf2"
DEPLOYMENT = "20250101_120000"


# --- one store on each engine --------------------------------------------------------------------


@dataclass
class Backend:
    """A store on one engine, plus raw SQL access to it for tampering."""

    kind: str
    make_store: Callable[[], AuditStore]
    sql: Callable[[str, tuple[Any, ...]], None]
    """Run one statement behind the API's back (``?`` placeholders)."""
    env: dict[str, str]
    """Environment overrides that point the console's config at this store."""
    fresh: Callable[[], Backend]
    """Another, empty store on the same engine (restore target)."""

    def drop_guards(self) -> None:
        """Remove the append-only triggers, as a privileged tamperer would."""
        if self.kind == "sqlite":
            self.sql("DROP TRIGGER audit_records_no_update", ())
            self.sql("DROP TRIGGER audit_records_no_delete", ())
        else:
            self.sql("DROP TRIGGER audit_records_no_update_delete ON audit_records", ())


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / f"audit-{uuid.uuid4().hex[:8]}.sqlite3"

    def sql(statement: str, params: tuple[Any, ...]) -> None:
        with sqlite3.connect(path) as db:
            db.execute(statement, params)

    return Backend(
        kind="sqlite",
        make_store=lambda: SQLiteAuditStore(path),
        sql=sql,
        env={"ACGS_CONSOLE__AUDIT__SQLITE_PATH": str(path)},
        fresh=lambda: _sqlite_backend(tmp_path),
    )


def _pg_database(admin_dsn: str, made: list[str]) -> str:
    """CREATE DATABASE audit_<random>; returns its DSN."""
    name = f"audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    made.append(name)
    return make_conninfo(admin_dsn, dbname=name)


def _pg_backend(admin_dsn: str, made: list[str]) -> Backend:
    dsn = _pg_database(admin_dsn, made)

    def sql(statement: str, params: tuple[Any, ...]) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement.replace("?", "%s"), params)

    return Backend(
        kind="postgresql",
        make_store=lambda: PostgresAuditStore(dsn),
        sql=sql,
        env={"ACGS_CONSOLE__AUDIT__POSTGRES_DSN": dsn},
        fresh=lambda: _pg_backend(admin_dsn, made),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An empty audit store: a SQLite file, or a fresh database on the shared primary."""
    if request.param == "sqlite":
        yield _sqlite_backend(tmp_path)
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    made: list[str] = []
    yield _pg_backend(cluster.primary_dsn, made)
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def store(backend: Backend) -> Iterator[AuditStore]:
    s = backend.make_store()
    yield s
    s.close()


def _trail(store: AuditStore, tmp_path: Path, **kwargs: Any) -> AuditTrail:
    return AuditTrail(
        store,
        tmp_path / f"spool-{uuid.uuid4().hex[:8]}.jsonl",
        constitutional_hash=CHASH,
        operator="alice@console-1",
        **kwargs,
    )


class Colour(enum.Enum):
    GREEN = "green"


def _fill(trail: AuditTrail, n: int, prefix: str = "step") -> list[AuditRecord]:
    """Append ``n`` records with varied evidence; returns them as stored."""
    out = []
    for i in range(n):
        result = trail.append(
            f"{prefix}.{i}",
            evidence={
                "i": i,
                "p99_ms": 3.25 + i / 7,
                "nested": {"b": [1, 2, {"c": None}], "a": "ünïcødé ✓"},
                "unmeasured": float("nan"),
                "when": datetime(2025, 1, 1, 12, 0, i % 60, 123456, tzinfo=UTC),
                "colour": Colour.GREEN,
            },
            deployment_id=DEPLOYMENT if i % 2 == 0 else None,
            fence=i if i % 3 == 0 else None,
        )
        assert result.record is not None, result.error
        out.append(result.record)
    return out


# The least a config file must say; the audit section comes from the environment below.
MINIMAL_CONFIG = f"""
constitutional_hash = "{CHASH}"
[environments.blue.services.performance_suite]
base_url = "http://127.0.0.1:9"
[environments.green.services.performance_suite]
base_url = "http://127.0.0.1:9"
[traffic]
kind = "sandbox"
control_url = "http://127.0.0.1:9"
"""


# --- the CLI, wired the way console/cli.py wires it ----------------------------------------------


def _audit_cli(
    argv: list[str], backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    config = tmp_path / "acgs-console.toml"
    config.write_text(MINIMAL_CONFIG, encoding="utf-8")
    for key in (
        "ACGS_CONSOLE__AUDIT__SQLITE_PATH",
        "ACGS_CONSOLE__AUDIT__POSTGRES_DSN",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in backend.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ACGS_CONSOLE__AUDIT__SPOOL_PATH", str(tmp_path / "cli-spool.jsonl"))
    parser = argparse.ArgumentParser(prog="acgs-console")
    parser.add_argument("--config")
    audit_cli.add_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["--config", str(config), *argv])
    return int(args.func(args))


# --- hashing -------------------------------------------------------------------------------------


def test_record_hash_is_sha256_over_prev_hash_and_canonical_json() -> None:
    draft = AuditDraft(
        at=datetime(2025, 3, 4, 5, 6, 7, 8, tzinfo=timezone(timedelta(hours=2))),
        operator="bob@host",
        action="traffic.set",
        deployment_id=DEPLOYMENT,
        constitutional_hash=CHASH,
        fence=7,
        evidence={"green_percentage": 10, "note": "naïve"},
    )
    record = seal(draft, 1, GENESIS_HASH)
    # Written out by hand from the specification, independent of the module's helpers.
    body = (
        '{"action":"traffic.set","at":"2025-03-04T03:06:07.000008+00:00",'
        f'"constitutional_hash":"{CHASH}","deployment_id":"{DEPLOYMENT}",'
        '"evidence":{"green_percentage":10,"note":"naïve"},"fence":7,'
        f'"operator":"bob@host","prev_hash":"{GENESIS_HASH}","seq":1}}'
    )
    assert record.hash == hashlib.sha256((GENESIS_HASH + body).encode()).hexdigest()
    assert record.at.utcoffset() == timedelta(0)
    assert record_hash(record) == record.hash


def test_json_safe_keeps_what_json_cannot_say() -> None:
    safe = json_safe(
        {
            1: float("inf"),
            "nan": float("nan"),
            "neg": float("-inf"),
            "naive": datetime(2025, 1, 1, 0, 0),
            "set": {3, 1, 2},
            "tuple": (1, "a"),
            "enum": Colour.GREEN,
            "path": Path("/tmp/x"),
        }
    )
    assert safe == {
        "1": "Infinity",
        "nan": "NaN",
        "neg": "-Infinity",
        "naive": "2025-01-01T00:00:00.000000+00:00",
        "set": [1, 2, 3],
        "tuple": [1, "a"],
        "enum": "green",
        "path": "/tmp/x",
    }
    assert json.loads(canonical_json(safe)) == safe


def test_verify_flags_records_without_constitutional_context() -> None:
    first = seal(AuditDraft(operator="o", action="a", constitutional_hash=CHASH), 1, GENESIS_HASH)
    blank = seal(AuditDraft(operator="o", action="b", constitutional_hash=" "), 2, first.hash)
    other = seal(AuditDraft(operator="o", action="b", constitutional_hash="0" * 16), 2, first.hash)

    result = verify([first, blank])
    assert result.state is VerifyState.CORRUPTED
    assert result.problem is not None and result.problem.kind is ProblemKind.MISSING_CONTEXT
    assert result.problem.message == (
        "record 2: no constitutional hash (missing constitutional context)"
    )
    assert verify([first, other]).ok
    wrong = verify([first, other], expected_constitutional_hash=CHASH)
    assert wrong.problem is not None and wrong.problem.seq == 2
    assert "expected 'cdd01ef066bc6cf2'" in wrong.problem.message


# --- the chain on both engines -------------------------------------------------------------------


def test_chain_verifies_and_reads_back_exactly(store: AuditStore, tmp_path: Path) -> None:
    trail = _trail(store, tmp_path)
    written = _fill(trail, 12)

    assert [r.seq for r in written] == list(range(1, 13))
    assert written[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(written))
    assert list(store.records()) == written
    assert [r.seq for r in store.records(deployment_id=DEPLOYMENT)] == [1, 3, 5, 7, 9, 11]
    assert written[0].evidence["unmeasured"] == "NaN"
    assert all(r.constitutional_hash == CHASH for r in written)

    result = trail.verify()
    assert result.ok, result.summary()
    assert (result.checked, result.head_seq, result.head_hash) == (12, 12, written[-1].hash)
    alert = audit_alert(result)
    assert alert.phase is AlertPhase.INACTIVE and not alert.unknown


def test_the_database_refuses_update_and_delete(backend: Backend, store: AuditStore) -> None:
    store.append(AuditDraft(operator="o", action="a", constitutional_hash=CHASH))
    error = sqlite3.Error if backend.kind == "sqlite" else psycopg.Error
    with pytest.raises(error, match="append-only"):
        backend.sql("UPDATE audit_records SET action = 'x' WHERE seq = 1", ())
    with pytest.raises(error, match="append-only"):
        backend.sql("DELETE FROM audit_records WHERE seq = 1", ())
    assert verify_store(store).ok


def test_audit_verify_names_a_modified_record(
    backend: Backend,
    store: AuditStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fill(_trail(store, tmp_path), 20)
    assert _audit_cli(["audit", "verify"], backend, tmp_path, monkeypatch) == 0
    backend.drop_guards()
    backend.sql("UPDATE audit_records SET evidence = ? WHERE seq = 17", ('{"i":999}',))

    result = verify_store(store)
    assert result.problem is not None
    assert (result.problem.seq, result.problem.kind) == (17, ProblemKind.MODIFIED)
    assert result.checked == 16
    capsys.readouterr()
    assert _audit_cli(["audit", "verify"], backend, tmp_path, monkeypatch) == 1
    assert "record 17: hash mismatch (modified)" in capsys.readouterr().err
    alert = audit_alert(result)
    assert (alert.name, alert.severity, alert.phase) == (
        "Audit Trail Corruption",
        AlertSeverity.CRITICAL,
        AlertPhase.FIRING,
    )
    # A backup keeps the damaged chain as found (it is evidence), and says it does not verify.
    backup = tmp_path / "as-found.jsonl"
    assert _audit_cli(["audit", "backup", "-o", str(backup)], backend, tmp_path, monkeypatch) == 1
    header, records = read_backup(backup)
    assert not header.chain_ok and header.problem == "record 17: hash mismatch (modified)"
    assert [r.seq for r in records] == list(range(1, 21))


def test_audit_verify_names_a_deleted_record(
    backend: Backend,
    store: AuditStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fill(_trail(store, tmp_path), 20)
    backend.drop_guards()
    backend.sql("DELETE FROM audit_records WHERE seq = 17", ())

    assert _audit_cli(["audit", "verify"], backend, tmp_path, monkeypatch) == 1
    assert "record 17 missing (deleted): seq jumps 16 -> 18" in capsys.readouterr().err

    # The tail too: the chain head row still says 20. (Opening the store put the guards back.)
    backend.drop_guards()
    backend.sql("DELETE FROM audit_records WHERE seq >= 17", ())
    result = verify_store(store)
    assert result.problem is not None
    assert result.problem.kind is ProblemKind.DELETED
    assert result.problem.message == (
        "records 17..20 missing (deleted): the chain head is at seq 20, the last record is 16"
    )


def test_audit_verify_names_reordered_records(
    backend: Backend,
    store: AuditStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fill(_trail(store, tmp_path), 20)
    backend.drop_guards()
    # Swap records 17 and 18 by renumbering them.
    backend.sql("UPDATE audit_records SET seq = -1 WHERE seq = 17", ())
    backend.sql("UPDATE audit_records SET seq = 17 WHERE seq = 18", ())
    backend.sql("UPDATE audit_records SET seq = 18 WHERE seq = -1", ())

    assert _audit_cli(["audit", "verify"], backend, tmp_path, monkeypatch) == 1
    err = capsys.readouterr().err
    assert "record 17: prev_hash does not match record 16 (reordered or inserted)" in err
    result = verify_store(store)
    assert result.problem is not None and result.problem.kind is ProblemKind.REORDERED


def test_verify_catches_a_rehashed_edit_and_an_insert_behind_the_api(
    backend: Backend, store: AuditStore, tmp_path: Path
) -> None:
    records = _fill(_trail(store, tmp_path), 10)
    backend.drop_guards()
    # A careful forger re-hashes the record it changed: the next link breaks.
    forged = records[4].model_copy(update={"action": "forged"})
    forged = forged.model_copy(update={"hash": record_hash(forged)})
    backend.sql(
        "UPDATE audit_records SET action = ?, hash = ? WHERE seq = 5", (forged.action, forged.hash)
    )
    result = verify_store(store)
    assert result.problem is not None
    assert result.problem.message == (
        "record 6: prev_hash does not match record 5 (reordered or inserted)"
    )

    other = backend.fresh()
    clean = other.make_store()
    try:
        records = _fill(_trail(clean, tmp_path), 3)
        extra = seal(
            AuditDraft(operator="mallory", action="extra", constitutional_hash=CHASH),
            4,
            records[-1].hash,
        )
        other.sql(
            "INSERT INTO audit_records (seq, at, operator, action, deployment_id, "
            "constitutional_hash, fence, evidence, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                4,
                extra.at.isoformat(),
                extra.operator,
                extra.action,
                None,
                CHASH,
                None,
                "{}",
                extra.prev_hash,
                extra.hash,
            ),
        )
        result = verify_store(clean)
        assert result.problem is not None
        assert result.problem.kind is ProblemKind.INSERTED
        assert result.problem.message == "record 4: beyond the chain head (seq 3) (inserted)"
    finally:
        clean.close()


def test_a_damaged_row_is_named_not_crashed_on(
    backend: Backend, store: AuditStore, tmp_path: Path
) -> None:
    _fill(_trail(store, tmp_path), 5)
    backend.drop_guards()
    backend.sql("UPDATE audit_records SET evidence = ? WHERE seq = 3", ("not json",))
    result = verify_store(store)
    assert result.state is VerifyState.CORRUPTED
    assert result.problem is not None
    assert result.problem.message == "record 3: unreadable (evidence is not valid JSON)"


def test_two_writers_cannot_fork_the_chain(backend: Backend, tmp_path: Path) -> None:
    stores = [backend.make_store(), backend.make_store()]
    errors: list[BaseException] = []

    def write(store: AuditStore, who: str) -> None:
        try:
            for i in range(40):
                store.append(
                    AuditDraft(operator=who, action=f"{who}.{i}", constitutional_hash=CHASH)
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, f"op{n}")) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        result = verify_store(stores[0])
        assert result.ok, result.summary()
        assert result.checked == 80
        actions = [r.action for r in stores[0].records()]
        for who in ("op0", "op1"):
            assert [a for a in actions if a.startswith(who)] == [f"{who}.{i}" for i in range(40)]
    finally:
        for s in stores:
            s.close()


# --- backup, verify-backup, restore --------------------------------------------------------------


def test_backup_verify_and_restore_round_trip(
    backend: Backend,
    store: AuditStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    written = _fill(_trail(store, tmp_path), 15)
    backup = tmp_path / "backup.jsonl"

    assert (
        _audit_cli(["audit", "backup", "--output", str(backup)], backend, tmp_path, monkeypatch)
        == 0
    )
    header, records = read_backup(backup)
    assert (header.head_seq, header.head_hash) == (15, written[-1].hash)
    assert header.constitutional_hash == CHASH and header.chain_ok
    assert list(records) == written
    assert (
        _audit_cli(["audit", "verify", "--backup", str(backup)], backend, tmp_path, monkeypatch)
        == 0
    )

    target = backend.fresh()
    capsys.readouterr()
    assert _audit_cli(["audit", "restore", str(backup)], target, tmp_path, monkeypatch) == 0
    assert "restored 15 record(s)" in capsys.readouterr().out
    assert _audit_cli(["audit", "verify"], target, tmp_path, monkeypatch) == 0
    restored = target.make_store()
    try:
        assert list(restored.records()) == written
        # The restored chain goes on where the backup ended.
        more = _fill(_trail(restored, tmp_path), 1, prefix="after")
        assert (more[0].seq, more[0].prev_hash) == (16, written[-1].hash)
        assert verify_store(restored).ok
    finally:
        restored.close()

    # A second restore finds a store that is no longer empty.
    assert _audit_cli(["audit", "restore", str(backup)], target, tmp_path, monkeypatch) == 1
    assert "restore needs an empty store" in capsys.readouterr().err


def _rewrite_line(path: Path, index: int, change: Callable[[dict[str, Any]], None]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    data = json.loads(lines[index])
    change(data)
    lines[index] = json.dumps(data)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_tampered_backup_is_refused(
    backend: Backend,
    store: AuditStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fill(_trail(store, tmp_path), 10)
    good = tmp_path / "good.jsonl"
    write_backup(store, good, constitutional_hash=CHASH)

    edited = tmp_path / "edited.jsonl"
    edited.write_bytes(good.read_bytes())
    _rewrite_line(edited, 4, lambda d: d["evidence"].update(i=42))  # line 0 is the header
    capsys.readouterr()
    assert (
        _audit_cli(["audit", "verify", "--backup", str(edited)], backend, tmp_path, monkeypatch)
        == 1
    )
    assert "record 4: hash mismatch (modified)" in capsys.readouterr().err

    target = backend.fresh()
    assert _audit_cli(["audit", "restore", str(edited)], target, tmp_path, monkeypatch) == 1
    assert "restore refused: the backup does not verify" in capsys.readouterr().err
    empty = target.make_store()
    try:
        assert list(empty.records()) == []
    finally:
        empty.close()

    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text(
        "".join(good.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8"
    )
    result = verify_backup(truncated, expected_constitutional_hash=CHASH)
    assert result.problem is not None
    assert result.problem.message == (
        "record 10 missing (deleted): the backup header is at seq 10, the last record is 9"
    )

    other_hash = tmp_path / "other-hash.jsonl"
    other_hash.write_bytes(good.read_bytes())
    _rewrite_line(other_hash, 0, lambda d: d.update(constitutional_hash="0" * 16))
    assert not verify_backup(other_hash, expected_constitutional_hash=CHASH).ok

    not_backup = tmp_path / "not-a-backup.jsonl"
    not_backup.write_text("hello\n", encoding="utf-8")
    assert (
        _audit_cli(["audit", "verify", "--backup", str(not_backup)], backend, tmp_path, monkeypatch)
        == 2
    )
    missing = tmp_path / "missing.jsonl"
    assert _audit_cli(["audit", "restore", str(missing)], target, tmp_path, monkeypatch) == 2
    assert restore_backup(target.make_store(), missing).refused is not None


# --- spool: the store goes away and comes back ---------------------------------------------------


def test_postgres_stopped_mid_way_records_spool_and_flush_in_order(
    fresh_pg_cluster: Callable[[], PostgresCluster], tmp_path: Path
) -> None:
    cluster = fresh_pg_cluster()
    dsn = _pg_database(cluster.primary_dsn, [])
    store = PostgresAuditStore(dsn)
    # retry_after_s=0: every append while down tries the store again (and fails fast).
    trail = _trail(store, tmp_path, retry_after_s=0.0)
    try:
        before = _fill(trail, 4, prefix="before")

        cluster.stop_primary()
        during = []
        for i in range(5):
            result = trail.append(f"during.{i}", evidence={"i": i}, deployment_id=DEPLOYMENT)
            assert result.spooled and result.record is None and not result.lost
            assert result.pending == i + 1
            during.append(result)
        status = trail.status()
        assert (status.reachable, status.pending) == (False, 5)
        assert status.last_error and "cannot connect to PostgreSQL" in status.last_error
        down = trail.verify()
        assert down.state is VerifyState.UNREADABLE
        assert audit_alert(down).unknown
        assert [d.action for d in trail.pending_drafts()] == [f"during.{i}" for i in range(5)]
        assert trail.flush().pending == 5

        cluster.start_primary()
        flushed = trail.flush()
        assert (flushed.flushed, flushed.pending, flushed.error) == (5, 0, None)
        after = _fill(trail, 3, prefix="after")
        assert after[0].seq == 10

        chain = list(store.records())
        assert [r.action for r in chain] == (
            [f"before.{i}" for i in range(4)]
            + [f"during.{i}" for i in range(5)]
            + [f"after.{i}" for i in range(3)]
        )
        assert [r.seq for r in chain] == list(range(1, 13))
        # The time of a spooled record is when it happened, not when it was flushed.
        assert all(a.at <= b.at for a, b in itertools.pairwise(chain))
        result = trail.verify()
        assert result.ok, result.summary()
        assert result.checked == 12 and trail.status().reachable is True
        assert before == chain[:4]
    finally:
        trail.close()


class _CountingStore(SQLiteAuditStore):
    """A real SQLite store that counts how often the trail tried it."""

    calls = 0

    def append(self, draft: AuditDraft) -> AuditRecord:
        self.calls += 1
        return super().append(draft)


@contextlib.contextmanager
def _locked_sqlite(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock (a stuck writer)."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_sqlite_locked_records_spool_then_flush_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    # retry_after_s=0: every append tries the store again, flushing the spool first.
    trail = _trail(SQLiteAuditStore(path, busy_timeout_s=0.1), tmp_path, retry_after_s=0.0)
    _fill(trail, 2, prefix="before")
    with _locked_sqlite(path):
        first = trail.append("during.0")
        assert first.spooled and first.error and "locked" in first.error
        second = trail.append("during.1")
        assert second.spooled and second.pending == 2
    last = trail.append("after.0")
    assert last.record is not None and last.record.seq == 5
    assert [r.action for r in trail.records()] == [
        "before.0",
        "before.1",
        "during.0",
        "during.1",
        "after.0",
    ]
    assert trail.verify().ok
    trail.close()


def test_after_a_failure_appends_skip_the_store_until_retry_time(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    store = _CountingStore(path, busy_timeout_s=0.1)
    trail = _trail(store, tmp_path, retry_after_s=3600.0)
    with _locked_sqlite(path):
        assert trail.append("a").spooled
        assert store.calls == 1
        assert trail.append("b").spooled
    # The lock is gone, but the store is still marked down: no attempt, straight to the spool.
    assert trail.append("c").spooled
    assert store.calls == 1
    # An explicit flush (the console's periodic one) tries regardless, and brings all back.
    assert trail.flush().flushed == 3
    assert [r.action for r in trail.records()] == ["a", "b", "c"]
    assert trail.append("d").record is not None
    trail.close()


def test_a_flush_repeated_after_a_crash_never_duplicates(store: AuditStore, tmp_path: Path) -> None:
    trail = _trail(store, tmp_path)
    drafts = [
        AuditDraft(
            entry_id=uuid.uuid4().hex, operator="o", action=f"d{i}", constitutional_hash=CHASH
        )
        for i in range(3)
    ]
    with trail.spool.locked():
        for d in drafts:
            trail.spool.add(d)
    # The console died after the store took two drafts but before it rewrote the spool.
    store.append(drafts[0])
    store.append(drafts[1])

    result = trail.flush()
    assert (result.flushed, result.pending) == (3, 0)
    assert [r.action for r in store.records()] == ["d0", "d1", "d2"]
    assert verify_store(store).ok


def test_unreadable_spool_lines_are_set_aside_not_lost(tmp_path: Path) -> None:
    trail = _trail(SQLiteAuditStore(tmp_path / "a.sqlite3"), tmp_path)
    with trail.spool.locked():
        trail.spool.add(AuditDraft(operator="o", action="ok", constitutional_hash=CHASH))
    with trail.spool.path.open("a", encoding="utf-8") as f:
        f.write('{"operator": "o", "act')  # torn write
    result = trail.flush()
    assert (result.flushed, result.rejected) == (1, 1)
    assert '{"operator": "o", "act' in trail.spool.rejected_path.read_text(encoding="utf-8")
    assert trail.status().rejected == 1
    trail.close()


def test_append_never_raises_when_store_and_spool_both_fail(tmp_path: Path) -> None:
    dead = PostgresAuditStore(f"host=127.0.0.1 port={free_port()} user=postgres dbname=x")
    blocked = tmp_path / "a-file"
    blocked.write_text("", encoding="utf-8")
    trail = AuditTrail(dead, blocked / "spool.jsonl", constitutional_hash=CHASH, operator="o")
    result = trail.append("lost.one")
    assert result.lost and result.error and "lost" in result.error
    # With a working store, an unusable spool costs nothing.
    fine = AuditTrail(
        SQLiteAuditStore(tmp_path / "a.sqlite3"),
        blocked / "spool.jsonl",
        constitutional_hash=CHASH,
        operator="o",
    )
    kept = fine.append("kept")
    assert kept.record is not None and kept.error and "spool" in kept.error
    with pytest.raises(AuditStoreError):
        dead.append(AuditDraft(operator="o", action="x", constitutional_hash=CHASH))


def test_verify_of_an_unreachable_store_is_unreadable_not_a_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=postgres dbname=x"
    result = verify_store(PostgresAuditStore(dsn))
    assert result.state is VerifyState.UNREADABLE and not result.ok
    backend = Backend(
        kind="postgresql",
        make_store=lambda: PostgresAuditStore(dsn),
        sql=lambda s, p: None,
        env={"ACGS_CONSOLE__AUDIT__POSTGRES_DSN": dsn},
        fresh=lambda: backend,
    )
    assert _audit_cli(["audit", "verify"], backend, tmp_path, monkeypatch) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert (
        _audit_cli(
            ["audit", "backup", "-o", str(tmp_path / "b.jsonl")], backend, tmp_path, monkeypatch
        )
        == 2
    )


def test_spool_survives_a_restart_of_the_console(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    dead = PostgresAuditStore(f"host=127.0.0.1 port={free_port()} user=postgres dbname=x")
    first = AuditTrail(dead, spool, constitutional_hash=CHASH, operator="o")
    assert first.append("while.down", evidence={"n": 1}).spooled
    # A new console on the same host, whose store works, picks the spool up.
    second = AuditTrail(
        SQLiteAuditStore(tmp_path / "a.sqlite3"), spool, constitutional_hash=CHASH, operator="o"
    )
    stored = second.append("next")
    assert stored.record is not None and stored.record.seq == 2
    assert [r.action for r in second.records()] == ["while.down", "next"]
    assert Spool(spool).count() == 0
    second.close()


def test_audit_flush_cli_moves_the_spool_into_the_store(
    backend: Backend,
    store: AuditStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The CLI's spool (see _audit_cli) holds two drafts written while the store was down.
    spool = Spool(tmp_path / "cli-spool.jsonl")
    with spool.locked():
        for action in ("one", "two"):
            spool.add(
                AuditDraft(entry_id=action, operator="o", action=action, constitutional_hash=CHASH)
            )
    assert _audit_cli(["audit", "flush"], backend, tmp_path, monkeypatch) == 0
    assert "flushed 2 record(s); 0 still in the spool" in capsys.readouterr().out
    assert [r.action for r in store.records()] == ["one", "two"]
    assert spool.count() == 0
