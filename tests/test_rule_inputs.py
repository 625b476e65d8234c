"""The rules' external inputs: security files and the audit chain, as configured."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from console.config import AppConfig
from console.config_example import example_config
from console.rule_inputs import ConfiguredRuleInputs

DATA = Path(__file__).parent / "data"


def make_config(tmp_path: Path, **security: Path) -> AppConfig:
    import tomllib

    data = tomllib.loads(example_config())
    data["audit"] = {
        "sqlite_path": str(tmp_path / "audit.sqlite3"),
        "spool_path": str(tmp_path / "spool.jsonl"),
    }
    data["security"] = {k: str(v) for k, v in security.items()}
    return AppConfig(**data)


async def test_nothing_configured_is_unknown_not_passing(tmp_path: Path) -> None:
    provider = ConfiguredRuleInputs(make_config(tmp_path))
    await provider.prime()
    inputs = await provider()
    assert inputs.security_score is None
    assert inputs.vulnerabilities is None
    assert inputs.security_validation is None
    # An empty, fresh audit store verifies (nothing to contradict it).
    assert inputs.audit is not None and inputs.audit.ok is True


async def test_clean_security_files_pass(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        vulnerability_report=DATA / "trivy-clean.json",
        sbom=DATA / "cyclonedx.json",
        security_score_file=DATA / "security-score.json",
    )
    inputs = await ConfiguredRuleInputs(cfg)()
    assert inputs.vulnerabilities is not None
    assert (inputs.vulnerabilities.critical, inputs.vulnerabilities.high) == (0, 0)
    assert inputs.security_score is not None and inputs.security_score.value is not None
    assert inputs.security_validation is not None and inputs.security_validation.passed


async def test_critical_findings_fail_the_security_validation(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        vulnerability_report=DATA / "trivy-critical.json",
        sbom=DATA / "cyclonedx.json",
        security_score_file=DATA / "security-score.json",
    )
    inputs = await ConfiguredRuleInputs(cfg)()
    assert inputs.vulnerabilities is not None and inputs.vulnerabilities.critical > 0
    assert inputs.security_validation is not None
    assert inputs.security_validation.passed is False
    assert "critical" in inputs.security_validation.detail


async def test_tampered_audit_chain_is_reported(tmp_path: Path) -> None:
    from console.audit import open_trail

    cfg = make_config(tmp_path)
    trail = open_trail(cfg, operator="alice@bastion")
    for i in range(3):
        trail.append("step.passed", evidence={"step": f"s{i}"})
    trail.close()
    db = sqlite3.connect(tmp_path / "audit.sqlite3")
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    table = next(t for t in tables if "record" in t or t == "audit_log" or t == "audit")
    # Bypass the store's own guard the way an attacker with file access would.
    triggers = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
    for trig in triggers:
        db.execute(f'DROP TRIGGER "{trig}"')
    columns = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
    column = next(c for c in columns if "evidence" in c)
    db.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE seq = 2', ('{"step":"forged"}',))
    db.commit()
    db.close()

    provider = ConfiguredRuleInputs(cfg)
    await provider.prime()
    inputs = await provider()
    assert inputs.audit is not None and inputs.audit.ok is False
    assert "2" in inputs.audit.detail


async def test_unreadable_audit_store_is_unknown(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    bad = tmp_path / "not-a-db"
    bad.mkdir()
    cfg.audit.sqlite_path = bad  # a directory where the database should be
    provider = ConfiguredRuleInputs(cfg)
    await provider.prime()
    inputs = await provider()
    assert inputs.audit is not None and inputs.audit.ok is None
