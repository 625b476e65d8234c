"""``acgs-console audit ...``: verify, back up, restore and flush the audit trail.

The runbook's disaster-recovery steps ("backup validation", "chain reconstruction",
"verify chain integrity") map onto these commands:

* ``audit verify``                 verify the store's chain; names the first bad record
* ``audit verify --backup FILE``   verify a backup file instead
* ``audit backup [--output FILE]`` write the chain to a JSONL backup (header: head, hash)
* ``audit restore FILE``           restore a verifying backup into an empty store
* ``audit flush``                  move spooled records into the store now

Exit codes: 0 ok; 1 findings (corrupted chain, refused restore, records left in the spool);
2 cannot run (bad configuration, store or file unreadable).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from console.audit import VerifyResult
    from console.config import AppConfig

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_UNUSABLE = 2


def add_arguments(subparsers: Any) -> None:
    """Add the ``audit`` command to the CLI's sub-parsers (``parser.add_subparsers()``).

    Every action sets ``func=run``.
    """
    audit = subparsers.add_parser(
        "audit",
        help="verify, back up, restore or flush the hash-chained audit trail",
        description="The hash-chained audit trail: verify it, back it up, restore it.",
    )
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = actions.add_parser(
        "verify",
        help="verify the chain (exit 0 ok, 1 corrupted, 2 cannot read)",
        description="Verify the audit chain and name the first modified, deleted or reordered "
        "record. Exit 0 ok, 1 corrupted, 2 cannot read.",
    )
    verify.add_argument("--backup", metavar="FILE", type=Path, help="verify this backup file")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=run)

    backup = actions.add_parser(
        "backup",
        help="write the chain to a JSONL backup file",
        description="Write the whole chain to a JSONL file whose first line carries the "
        "chain head hash and the constitutional hash. Exit 1 when the chain does not verify "
        "(the backup is still written).",
    )
    backup.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        type=Path,
        help="backup file (default: ./acgs-audit-backup-YYYYMMDD_HHMMSS.jsonl)",
    )
    backup.set_defaults(func=run)

    restore = actions.add_parser(
        "restore",
        help="restore a backup into an empty store",
        description="Restore a backup into an empty audit store. A backup that does not "
        "verify is refused (exit 1).",
    )
    restore.add_argument("file", metavar="FILE", type=Path, help="the backup file")
    restore.set_defaults(func=run)

    flush = actions.add_parser(
        "flush",
        help="move records spooled while the store was down into it",
        description="Move spooled records into the store, in order. Exit 1 when some remain.",
    )
    flush.set_defaults(func=run)


def _err(message: str) -> None:
    print(f"acgs-console audit: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run one ``audit`` action; returns the exit code."""
    from console.config import ConfigError, load_config

    try:
        cfg, _ = load_config(getattr(args, "config", None))
    except ConfigError as err:
        _err(f"the configuration has {len(err.problems)} problem(s):")
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_UNUSABLE

    from console import audit

    action = args.audit_command
    if action == "verify":
        if args.backup is not None:
            result = audit.verify_backup(
                args.backup, expected_constitutional_hash=cfg.constitutional_hash
            )
        else:
            store = audit.open_store(cfg.audit)
            try:
                result = audit.verify_store(
                    store, expected_constitutional_hash=cfg.constitutional_hash
                )
            finally:
                store.close()
        return _report_verify(result, as_json=args.json)
    if action == "backup":
        return _backup(cfg, args.output)
    if action == "restore":
        return _restore(cfg, args.file)
    if action == "flush":
        return _flush(cfg)
    _err(f"unknown action {action!r}")
    return EXIT_UNUSABLE


def _report_verify(result: VerifyResult, *, as_json: bool) -> int:
    from console.audit import VerifyState

    if as_json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        print(result.summary(), file=sys.stdout if result.ok else sys.stderr)
    if result.state is VerifyState.OK:
        return EXIT_OK
    if result.state is VerifyState.CORRUPTED:
        return EXIT_FINDINGS
    return EXIT_UNUSABLE


def _backup(cfg: AppConfig, output: Path | None) -> int:
    from backends.audit_store import AuditStoreError
    from console import audit

    if output is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        output = Path.cwd() / f"acgs-audit-backup-{stamp}.jsonl"
    store = audit.open_store(cfg.audit)
    try:
        header, result = audit.write_backup(
            store, output, constitutional_hash=cfg.constitutional_hash
        )
    except AuditStoreError as exc:
        _err(f"cannot read the audit store: {exc}")
        return EXIT_UNUSABLE
    except OSError as exc:
        _err(f"cannot write {output}: {exc.strerror or exc}")
        return EXIT_UNUSABLE
    finally:
        store.close()
    print(
        f"wrote {output}: {header.records} record(s), head seq {header.head_seq} "
        f"hash {header.head_hash}, constitutional hash {header.constitutional_hash}"
    )
    pending = audit.Spool((cfg.audit.spool_path or audit.default_spool_path()).expanduser()).count()
    if pending:
        _err(
            f"{pending} record(s) still wait in the spool and are not in this backup; "
            "run `acgs-console audit flush` when the store is reachable"
        )
    if not result.ok:
        _err(f"the chain does not verify; the backup keeps it as found: {result.summary()}")
        return EXIT_FINDINGS
    return EXIT_OK


def _restore(cfg: AppConfig, path: Path) -> int:
    from backends.audit_store import AuditStoreError
    from console import audit

    store = audit.open_store(cfg.audit)
    try:
        outcome = audit.restore_backup(
            store, path, expected_constitutional_hash=cfg.constitutional_hash
        )
    except AuditStoreError as exc:
        _err(f"cannot write the audit store: {exc}")
        return EXIT_UNUSABLE
    finally:
        store.close()
    if outcome.refused is not None:
        _err(f"restore refused: {outcome.refused}")
        unreadable = outcome.backup.state is audit.VerifyState.UNREADABLE
        return EXIT_UNUSABLE if unreadable else EXIT_FINDINGS
    if not outcome.ok or outcome.store is None:
        after = outcome.store.summary() if outcome.store else "not verified"
        _err(f"restored {outcome.restored} record(s), but the store does not verify: {after}")
        return EXIT_FINDINGS
    print(
        f"restored {outcome.restored} record(s) from {path} into {store.describe()}; "
        f"the chain verifies, head {outcome.store.head_hash}"
    )
    return EXIT_OK


def _flush(cfg: AppConfig) -> int:
    from console import audit

    trail = audit.open_trail(cfg)
    try:
        result = trail.flush()
    finally:
        trail.close()
    waiting = "an unknown number" if result.pending is None else str(result.pending)
    print(f"flushed {result.flushed} record(s); {waiting} still in the spool")
    if result.rejected:
        _err(f"{result.rejected} unreadable spool line(s) set aside in {trail.spool.rejected_path}")
    if result.error:
        _err(result.error)
        if result.pending is None:
            return EXIT_UNUSABLE
    return EXIT_OK if result.pending == 0 and not result.rejected else EXIT_FINDINGS
