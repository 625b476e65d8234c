"""``acgs-console check``: exit codes 0 / 1 / 2, the table and ``--json``, on the real fleet."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.models import ORCHESTRATORS, Snapshot
from console.check import add_arguments, load_rule_inputs, run
from console.engines import free_port

GOOD_INPUTS = {
    "audit": {"ok": True, "detail": "chain verified"},
    "security_score": {"name": "security_score", "value": 98.0},
    "vulnerabilities": {"critical": 0, "high": 0, "source": "trivy"},
    "security_validation": {"passed": True},
}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def write_config(
    path: Path,
    services: dict[str, dict[str, str]],
    control_url: str,
    *,
    prometheus_url: str | None = None,
    redis_url: str | None = None,
    pg: Any = None,
    timeout_s: float = 1.0,
    window: str = "1m",
) -> Path:
    lines = [f"probe_timeout_s = {timeout_s!r}"]
    lines += ["[traffic]", 'kind = "sandbox"', f"control_url = {toml_value(control_url)}"]
    if prometheus_url:
        lines += [
            "[prometheus]",
            f"url = {toml_value(prometheus_url)}",
            f"window = {toml_value(window)}",
        ]
    for env, by_name in services.items():
        if redis_url:
            lines += [f"[environments.{env}.redis]", f"url = {toml_value(redis_url)}"]
        if pg is not None:
            lines += [
                f"[environments.{env}.postgres]",
                f"primary_dsn = {toml_value(pg.primary_dsn)}",
                f"replica_dsns = {toml_value([pg.replica_dsn])}",
                "expected_replicas = 1",
            ]
        for name, base_url in by_name.items():
            lines += [f"[environments.{env}.services.{name}]", f"base_url = {toml_value(base_url)}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fleet_services(fleet: Any) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"blue": {}, "green": {}}
    for svc in fleet.services:
        out[svc.environment][svc.service] = svc.base_url
    return out


def args_for(config: Path | None, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ([] if config is None else ["--config", str(config)]) + list(extra)
    return parser.parse_args(argv)


def test_config_error_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("refresh_interval_s = 'often'\n", encoding="utf-8")
    assert run(args_for(bad)) == 2
    err = capsys.readouterr().err
    assert "problem" in err and "refresh_interval_s" in err
    assert run(args_for(tmp_path / "missing.toml")) == 2


def test_bad_rule_inputs_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "c.toml", {"blue": {"a": dead}, "green": {"a": dead}}, dead)
    inputs = tmp_path / "inputs.json"
    inputs.write_text('{"security_score": {"name": "s", "value": "high"}}', encoding="utf-8")
    assert run(args_for(config, "--rule-inputs", str(inputs))) == 2
    assert "security_score" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot read"):
        load_rule_inputs(tmp_path / "none.json")


def test_nothing_reachable_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    services = {env: {name: dead for name in ORCHESTRATORS[:3]} for env in ("blue", "green")}
    config = write_config(tmp_path / "c.toml", services, dead, timeout_s=0.5)
    assert run(args_for(config, "--settle", "0")) == 2
    captured = capsys.readouterr()
    assert "nothing could be observed" in captured.err
    assert "connection refused" in captured.out  # the table still shows why


@pytest.mark.engines
def test_findings_are_exit_1_table(
    tmp_path: Path, fleet: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # No Redis, no PostgreSQL, no rule inputs: observable, but not all good.
    config = write_config(tmp_path / "c.toml", fleet_services(fleet), fleet.control_url)
    assert run(args_for(config, "--settle", "0.5")) == 1
    out = capsys.readouterr().out
    for text in (
        "Services",
        "Metrics",
        "Blue",
        "Green",
        "unified_orchestrator",
        "hash ok",
        "Traffic split: blue",
        "not_configured",
        "Alerts",
        "Security Score",
        "finding(s); exit 1",
    ):
        assert text in out, text


@pytest.mark.engines
def test_json_is_the_snapshot(
    tmp_path: Path, fleet: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "c.toml", fleet_services(fleet), fleet.control_url)
    code = run(args_for(config, "--json", "--settle", "0"))
    snapshot = Snapshot.model_validate_json(capsys.readouterr().out)
    assert code == 1
    assert len(snapshot.blue.services) == 9 and len(snapshot.green.services) == 9
    assert snapshot.traffic.green_percentage is not None
    assert len(snapshot.alerts) == 28


@pytest.fixture
def green_traffic(fleet: Any) -> Iterator[None]:
    """Load green with a probe stream (as a performance validation would), then stop it."""
    url = f"{fleet.control_url}/control/traffic"
    assert httpx.put(url, json={"probe": {"green": 60}}, timeout=5).status_code == 200
    try:
        yield
    finally:
        httpx.put(url, json={"probe": {}}, timeout=5)


@pytest.mark.engines
def test_all_good_is_exit_0(
    tmp_path: Path,
    fleet: Any,
    prometheus: Any,
    redis_server: Any,
    pg_cluster: Any,
    green_traffic: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A short window: a just-started Prometheus has only seconds of history, and rate()
    # over a longer window would (correctly) read as far less traffic than there is.
    prometheus.wait_for_sample("sum(rate(acgs_requests_total[10s])) > 150")
    prometheus.wait_for_sample('sum(rate(acgs_requests_total{environment="green"}[10s])) > 30')
    config = write_config(
        tmp_path / "c.toml",
        fleet_services(fleet),
        fleet.control_url,
        prometheus_url=prometheus.url,
        redis_url=redis_server.url,
        pg=pg_cluster,
        window="10s",
    )
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps(GOOD_INPUTS), encoding="utf-8")
    code = run(args_for(config, "--rule-inputs", str(inputs)))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "All good; exit 0" in out
    assert "all 28 rules pass" in out

    # The same estate with one failing input is a finding: the exit code follows the data.
    bad = dict(GOOD_INPUTS, vulnerabilities={"critical": 1, "high": 0})
    inputs.write_text(json.dumps(bad), encoding="utf-8")
    assert run(args_for(config, "--rule-inputs", str(inputs))) == 1
    assert "Vulnerability Detected" in capsys.readouterr().out


def console_check(*argv: str) -> Any:
    """``acgs-console check ARGV`` as an operator runs it (the entry point's own code)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACGS_CONSOLE")}
    return subprocess.run(
        [sys.executable, "-m", "console", "check", *argv],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=120,
    )


@pytest.mark.engines
def test_the_check_command_exits_1_on_findings_and_2_when_it_cannot_run(
    tmp_path: Path, fleet: Any
) -> None:
    config = write_config(tmp_path / "c.toml", fleet_services(fleet), fleet.control_url)
    done = console_check("--config", str(config), "--json", "--settle", "0")
    assert done.returncode == 1, done.stderr
    snapshot = Snapshot.model_validate_json(done.stdout)
    assert len(snapshot.blue.services) == 9 and len(snapshot.green.services) == 9
    assert "Traceback" not in done.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text("probe_timeout_s = 'fast'\n", encoding="utf-8")
    done = console_check("--config", str(bad))
    assert done.returncode == 2
    assert "probe_timeout_s" in done.stderr and "Traceback" not in done.stderr


def test_heavy_clients_are_imported_lazily() -> None:
    """Importing the monitor, rules and check pulls in no heavy client and no UI."""
    import subprocess
    import sys

    code = (
        "import sys, console.monitor, console.rules, console.check; "
        "print(sorted(m for m in ('psycopg', 'prometheus_api_client', 'redis', 'textual', "
        "'pandas', 'httpx') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
