"""Runbook files: the shipped default, an operator's own, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backends.models import ORCHESTRATORS
from console.config import AppConfig, ConfigError
from console.runbook.loader import (
    default_runbook_text,
    load_runbook,
    load_runbook_for,
    parse_runbook,
    validate_command,
)


def make_config(**extra: Any) -> AppConfig:
    services = {
        name: {"base_url": f"http://127.0.0.1:{19000 + i}"} for i, name in enumerate(ORCHESTRATORS)
    }
    return AppConfig(
        environments={"blue": {"services": services}, "green": {"services": services}},
        traffic={"kind": "sandbox", "control_url": "http://127.0.0.1:1"},
        **extra,
    )


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_runbook(text, "site-runbook.toml")
    for p in err.value.problems:
        assert p.file == "site-runbook.toml"
        assert p.fix
    return [f"{p.field} | {p.message} | {p.value} | {p.fix}" for p in err.value.problems]


DEFAULT = default_runbook_text()


def test_default_runbook_loads_with_every_procedure() -> None:
    rb = load_runbook()
    assert [p.id for p in rb.procedures] == [
        "deployment",
        "planned-rollback",
        "emergency-rollback",
        "disaster-recovery",
    ]
    assert rb.constitutional_hash == "cdd01ef066bc6cf2"
    assert rb.procedure("emergency-rollback").kind == "reference"
    assert [t.team for t in rb.contacts] == [
        "Constitutional Compliance Team",
        "Operations Team",
        "Security Team",
    ]
    assert rb.contacts[2].contacts[2].name == "Chief Information Security Officer"
    ids = [s.id for _, _, s in rb.all_steps()]
    assert len(ids) == len(set(ids))


def test_operator_runbook_relative_to_the_config_file(tmp_path: Path) -> None:
    site = tmp_path / "etc"
    site.mkdir()
    (site / "runbook.toml").write_text(
        DEFAULT.replace('title = "ACGS Production Deployment Runbook"', 'title = "Site runbook"')
    )
    cfg = make_config(runbook=Path("runbook.toml"))
    rb = load_runbook_for(cfg, site / "acgs-console.toml")
    assert rb.title == "Site runbook"


def test_missing_runbook_file(tmp_path: Path) -> None:
    cfg = make_config(runbook=tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as err:
        load_runbook_for(cfg, None)
    (p,) = err.value.problems
    assert (p.file, p.field, p.message) == (
        str(tmp_path / "nope.toml"),
        "(file)",
        "no such runbook file",
    )


def test_toml_syntax_error() -> None:
    (problem,) = problems_of(DEFAULT.replace('kind = "check"', 'kind = "check', 1))
    assert problem.startswith("(syntax) | not valid TOML")
    assert "line" in problem


def test_bad_value_names_the_step_by_id() -> None:
    text = DEFAULT.replace("green_percentage = 10\n", "green_percentage = 150\n", 1)
    (problem,) = problems_of(text)
    assert problem.startswith(
        "procedures[0](deployment).phases[2](phase-2).steps[0](switch-10).green_percentage | "
    )
    assert "150" in problem and "smaller number" in problem


def test_unknown_step_kind() -> None:
    text = DEFAULT.replace(
        'id = "switch-10"\nkind = "traffic"', 'id = "switch-10"\nkind = "teleport"'
    )
    (problem,) = problems_of(text)
    assert problem.startswith("procedures[0](deployment).phases[2](phase-2).steps[0](switch-10)")
    assert "'teleport'" in problem and "set kind to 'check', 'command'" in problem


def test_check_table_needs_exactly_one_naming_key() -> None:
    text = DEFAULT.replace(
        '{ hash = "ok", environment = "both", min_count = 9 },',
        '{ hsah = "ok", environment = "both", min_count = 9 },',
        1,
    )
    (problem,) = problems_of(text)
    assert problem.startswith(
        "procedures[0](deployment).phases[0](pre-deployment).steps[0](pre-verify-hash).checks[0] | "
    )
    assert "exactly one of: metric, all_services, hash" in problem
    two = DEFAULT.replace(
        '{ redis = "operational", environment = "both" },',
        '{ redis = "operational", hash = "ok", environment = "both" },',
        1,
    )
    assert "exactly one of" in problems_of(two)[0]


def test_misspelt_field_and_unknown_threshold() -> None:
    text = DEFAULT.replace(
        'threshold = "p99_latency_ms_critical" },',
        'threshold = "p99_latency_critical" },',
        1,
    )
    (problem,) = problems_of(text)
    assert "unknown threshold 'p99_latency_critical'" in problem
    assert "p99_latency_ms_critical" in problem  # the fix lists the real names
    typo = DEFAULT.replace("duration_s = 120\n", "duraton_s = 120\n", 1)
    problems = problems_of(typo)
    assert any(
        ".steps[1](monitor-10).duraton_s | Extra inputs are not permitted" in p for p in problems
    )
    assert any(".steps[1](monitor-10).duration_s | Field required" in p for p in problems)


def test_no_eval_strings_in_checks() -> None:
    text = DEFAULT.replace(
        '{ traffic_green = "==", value = 0 },',
        "{ traffic_green = \"__import__('os').system('true')\", value = 0 },",
        1,
    )
    (problem,) = problems_of(text)
    assert "checks[0].traffic_green | Input should be '<', '<=', '>', '>=', '==' or '!='" in problem


def test_duplicate_ids_and_forward_step_references() -> None:
    dup = DEFAULT.replace('id = "switch-50"', 'id = "switch-10"', 1)
    assert "step id 'switch-10' is used twice" in problems_of(dup)[0]
    forward = DEFAULT.replace(
        '{ step_passed = "smoke-tests-green", accept_attested = true },',
        '{ step_passed = "post-switch-validation", accept_attested = true },',
        1,
    )
    assert "not an earlier step of procedure 'deployment'" in problems_of(forward)[0]


def test_runbook_checked_against_the_config() -> None:
    cfg = make_config(
        commands={
            "deploy-infrastructure-green": {"argv": ["./deploy.sh"]},
            "deploy-infra-green": {"argv": ["./typo.sh"]},
            "switch-10": {"argv": ["./lb.sh", "10"]},
        },
        monitor_windows={"monitor-10": 5, "switch-50": 5, "monitor-50": 0},
        coordination={"four_eyes_gates": ["switch-100", "decomission-blue"]},
        constitutional_hash="0123456789abcdef",
    )
    with pytest.raises(ConfigError) as err:
        load_runbook_for(cfg, Path("/etc/acgs-console.toml"))
    got = {(p.file, p.field): p for p in err.value.problems}
    assert set(got) == {
        ("/etc/acgs-console.toml", "commands.deploy-infra-green"),
        ("/etc/acgs-console.toml", "commands.switch-10"),
        ("/etc/acgs-console.toml", "monitor_windows.switch-50"),
        ("/etc/acgs-console.toml", "monitor_windows.monitor-50"),
        ("/etc/acgs-console.toml", "coordination.four_eyes_gates"),
        ("(shipped) default_runbook.toml", "constitutional_hash"),
    }
    assert (
        "deploy-infrastructure-green"
        in got[("/etc/acgs-console.toml", "commands.deploy-infra-green")].fix
    )
    assert "traffic step" in got[("/etc/acgs-console.toml", "commands.switch-10")].message


def test_validate_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No config anywhere: the runbook is validated on its own.
    monkeypatch.delenv("ACGS_CONSOLE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert validate_command(None, None) == 0
    assert "(shipped runbook): valid." in capsys.readouterr().out
    good = tmp_path / "good.toml"
    good.write_text(DEFAULT)
    assert validate_command(str(good), None) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT.replace("green_percentage = 50\n", "green_percentage = -5\n", 1))
    assert validate_command(str(bad), None) == 2
    err = capsys.readouterr().err
    assert "steps[2](switch-50).green_percentage" in err
    assert "fix:" in err
    assert "Traceback" not in err


def test_validate_command_against_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACGS_CONSOLE_CONFIG", raising=False)
    lines = ['[traffic]\nkind = "sandbox"\ncontrol_url = "http://127.0.0.1:1"']
    for env in ("blue", "green"):
        for i, name in enumerate(ORCHESTRATORS):
            lines.append(
                f'[environments.{env}.services.{name}]\nbase_url = "http://127.0.0.1:{9000 + i}"'
            )
    lines.append('[commands.deploy-infra-green]\nargv = ["./deploy.sh"]')
    config = tmp_path / "acgs-console.toml"
    config.write_text("\n".join(lines) + "\n")
    assert validate_command(None, str(config)) == 2
    err = capsys.readouterr().err
    assert "commands.deploy-infra-green" in err
    assert "deploy-infrastructure-green" in err  # the fix names the real id
    config.write_text(
        config.read_text().replace("deploy-infra-green", "deploy-infrastructure-green")
    )
    assert validate_command(None, str(config)) == 0
    assert f"checked against {config}" in capsys.readouterr().out


def test_alert_scope_serving_is_validated_like_the_rest() -> None:
    shipped = '{ no_alerts_firing = true, severity = "critical", environment = "serving", '
    assert shipped in DEFAULT  # the shipped zero-downtime check uses it
    (problem,) = problems_of(DEFAULT.replace(shipped, shipped.replace("serving", "servng"), 1))
    assert problem == (
        "procedures[0](deployment).phases[4](success-criteria).steps[0](success-zero-downtime)"
        ".checks[1].environment | Input should be 'blue', 'green', 'both' or 'serving' | "
        "'servng' | use 'blue', 'green', 'both' or 'serving'"
    )
    # Only the alert check knows "serving": a metric belongs to one environment or both.
    metric = '{ metric = "p99_latency_ms", environment = "green", op = "<", threshold'
    assert metric in DEFAULT
    (problem,) = problems_of(DEFAULT.replace(metric, metric.replace('"green"', '"serving"'), 1))
    assert ".environment | Input should be 'blue', 'green' or 'both' | 'serving'" in problem
