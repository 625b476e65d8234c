"""Builders for the deployment walk tests: a console config on the real engines, fleet traffic.

The config points the console at the session's sandbox fleet (blue and green, nine
orchestrators each), a HAProxy in front of the fleet's ingresses (the traffic switch),
the session's Redis and PostgreSQL cluster (both environments' probes), SQLite or
PostgreSQL for the audit trail, and the security tools' sample outputs from
``tests/data``. Monitor windows are shortened through ``monitor_windows``; throughput
thresholds are lowered to what the sandbox's probe stream sends to green.

The fleet is shared by the whole test session: :func:`fleet_traffic` and :func:`fleet_fault`
always put back what they changed.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from backends.traffic import parse_servers_state
from console.config import AppConfig

DATA = Path(__file__).resolve().parent / "data"
WINDOWS = {"monitor-10": 2.0, "monitor-50": 2.0, "post-switch-monitoring": 2.0}
"""The runbook's 120 s / 120 s / 300 s windows, shortened for the tests."""


def security_files(directory: Path) -> dict[str, str]:
    """Copy the sample security tool outputs where a site's tools would leave them."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, name in (
        ("vulnerability_report", "trivy-clean.json"),
        ("sbom", "cyclonedx.json"),
        ("security_score_file", "security-score.json"),
    ):
        shutil.copy(DATA / name, directory / name)
        out[key] = str(directory / name)
    return out


def python_argv(code: str) -> list[str]:
    """A command step's argv running a tiny Python program (no shell)."""
    return [sys.executable, "-c", code]


def walk_config(
    tmp_path: Path,
    fleet: Any,
    haproxy: Any,
    *,
    redis_url: str | None = None,
    pg: Any = None,
    audit_dsn: str | None = None,
    commands: dict[str, Any] | None = None,
    windows: dict[str, float] | None = None,
    thresholds: dict[str, Any] | None = None,
    runbook: Path | None = None,
    **extra: Any,
) -> AppConfig:
    """A console config for the real engines of the walk."""
    environments: dict[str, Any] = {}
    for env in ("blue", "green"):
        spec: dict[str, Any] = {
            "services": {
                s.service: {"base_url": s.base_url} for s in fleet.services if s.environment == env
            }
        }
        if redis_url:
            spec["redis"] = {"url": redis_url, "timeout_s": 1.0}
        if pg is not None:
            spec["postgres"] = {
                "primary_dsn": pg.primary_dsn,
                "replica_dsns": [pg.replica_dsn],
                "expected_replicas": 1,
                "timeout_s": 2.0,
            }
        environments[env] = spec
    audit: dict[str, Any] = {"spool_path": str(tmp_path / "audit-spool.jsonl")}
    if audit_dsn:
        audit["postgres_dsn"] = audit_dsn
    else:
        audit["sqlite_path"] = str(tmp_path / "audit.sqlite3")
    limits = {
        # Green takes the probe stream (30 requests/s) plus its share of 150/s.
        "rps_critical": 10.0,
        "rps_warning": 15.0,
        "stale_after_s": 5.0,
    }
    limits.update(thresholds or {})
    data: dict[str, Any] = {
        "operator": "alice@ops-bastion",
        "environments": environments,
        "traffic": {"kind": "haproxy", "admin": str(haproxy.admin_socket), "backend": "acgs"},
        "prometheus": {"url": None, "window": "10s"},
        "probe_timeout_s": 1.0,
        "refresh_interval_s": 1.0,
        "thresholds": limits,
        "audit": audit,
        "security": security_files(tmp_path / "security"),
        "monitor_windows": dict(WINDOWS if windows is None else windows),
        "commands": commands or {},
        "coordination": {"four_eyes_gates": [], "lock_file": str(tmp_path / "console.lock")},
        "rollback": {"report_dir": str(tmp_path / "incidents")},
    }
    if runbook is not None:
        data["runbook"] = str(runbook)
    data.update(extra)
    return AppConfig(**data)


def weights(haproxy: Any) -> tuple[int, int]:
    """Blue's and green's weights as HAProxy itself reports them (``show servers state``)."""
    rows = parse_servers_state(
        haproxy.admin_command(f"show servers state {haproxy.backend}"), haproxy.backend
    )
    return int(rows["blue"]["srv_uweight"]), int(rows["green"]["srv_uweight"])


def control(fleet: Any, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the fleet's control endpoint; fail loudly on a refusal."""
    response = httpx.request(method, f"{fleet.control_url}{path}", json=body, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


@contextlib.contextmanager
def fleet_traffic(fleet: Any, haproxy: Any, *, green_probe: float = 30.0) -> Iterator[None]:
    """Send the fleet's traffic through ``haproxy``, with a steady probe stream to green."""
    before = control(fleet, "GET", "/control/traffic")
    control(
        fleet,
        "PUT",
        "/control/traffic",
        {"target": haproxy.frontend_url, "rate": 150, "probe": {"green": green_probe}},
    )
    try:
        yield
    finally:
        control(
            fleet,
            "PUT",
            "/control/traffic",
            {"target": before["target"], "rate": before["rate"], "probe": before["probe"]},
        )


@contextlib.contextmanager
def fleet_fault(
    fleet: Any, environment: str, kind: str, value: float | None = None
) -> Iterator[None]:
    """A fault on a whole environment, cleared on the way out."""
    body: dict[str, Any] = {"environment": environment, "kind": kind}
    if value is not None:
        body["value"] = value
    control(fleet, "POST", "/control/fault", body)
    try:
        yield
    finally:
        control(fleet, "POST", "/control/clear", {"environment": environment})


def clear_faults(fleet: Any) -> None:
    """Clear every fault of the fleet."""
    control(fleet, "POST", "/control/clear", {})
