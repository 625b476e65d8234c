"""``acgs-console config example``: a commented example covering every field.

The example is generated from the config models themselves, so a field added
to :mod:`console.config` appears here with its docstring as the comment.
Optional sections and the alternative traffic switches are shown commented
out, so the printed file is valid as it stands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from backends.models import ORCHESTRATORS, Environment
from console.config import (
    AppConfig,
    AuditConfig,
    CommandSpec,
    CommandSwitch,
    CoordinationConfig,
    EnvironmentConfig,
    HAProxySwitch,
    PostgresEndpoint,
    PrometheusConfig,
    RedisEndpoint,
    RollbackConfig,
    SandboxInfo,
    SandboxSwitch,
    SecurityConfig,
    ServiceEndpoint,
    Thresholds,
    UIConfig,
)

# Values shown for fields without a default (or where the default is empty).
_SAMPLES: dict[str, Any] = {
    "base_url": "http://10.0.1.10:8000",
    "url": "redis://10.0.1.20:6379/0",
    "password": "change-me",
    "username": "acgs",
    "primary_dsn": "host=10.0.1.30 port=5432 user=acgs dbname=acgs",
    "replica_dsns": ["host=10.0.1.31 port=5432 user=acgs dbname=acgs"],
    "admin": "/run/haproxy/admin.sock",
    "set_argv": ["./scripts/load-balancer-switch.sh", "--green-percentage", "{green_percentage}"],
    "read_argv": ["./scripts/load-balancer-read.sh"],
    "cwd": "/opt/acgs/deployments/production",
    "control_url": "http://127.0.0.1:7000",
    "sqlite_path": "~/.local/state/acgs-console/audit.sqlite3",
    "postgres_dsn": "host=10.0.1.30 port=5432 user=acgs_audit dbname=acgs_audit",
    "postgres_password": "change-me",
    "spool_path": "~/.local/state/acgs-console/audit-spool.jsonl",
    "redis_url": "redis://10.0.1.20:6379/1",
    "lock_file": "~/.local/state/acgs-console/lease.lock",
    "runbook": "/etc/acgs-console/runbook.toml",
    "operator": "jane@bastion-1",
    "keymap": {"rollback": "f9", "help": "question_mark"},
    "report_dir": "~/.local/state/acgs-console/incidents",
    "deployment": "acgs-production",
    "extra_selector": 'job="acgs"',
    "real_engines": ["haproxy", "prometheus", "redis", "postgresql"],
    "vulnerability_report": "/var/lib/acgs/security/trivy.json",
    "sbom": "/var/lib/acgs/security/sbom.cdx.json",
    "security_score_file": "/var/lib/acgs/security/score.json",
}


def _toml_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = "change-me"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _placeholder(info: FieldInfo) -> Any:
    """A neutral sample for an optional field nobody gave a sample for."""
    text = str(info.annotation)
    if "dict" in text:
        return {}
    if "list" in text:
        return []
    if "float" in text or "int" in text:
        return 0
    if "bool" in text:
        return False
    return "..."


def _comment(info: FieldInfo) -> list[str]:
    text = (info.description or "").strip()
    return [f"# {line}".rstrip() for line in text.splitlines()] if text else []


def _section(
    lines: list[str],
    header: str,
    model: type[BaseModel],
    *,
    commented: bool = False,
    skip: tuple[str, ...] = (),
    overrides: dict[str, Any] | None = None,
) -> None:
    prefix = "# " if commented else ""
    lines.append("")
    lines.append(f"{prefix}[{header}]")
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            continue  # emitted as its own table by the caller
        value: Any
        if overrides and name in overrides:
            value = overrides[name]
        elif not info.is_required() and info.default not in (None, "", [], {}):
            value = info.default
        else:
            value = _SAMPLES.get(name, _placeholder(info))
        optional_blank = not info.is_required() and info.default in (None, "", [], {})
        for c in _comment(info):
            lines.append(f"{prefix}{c}")
        line = f"{name} = {_toml_value(value)}"
        # Optional fields without a default are shown commented out: valid as printed.
        lines.append(
            ("# " + line)
            if (optional_blank and not commented and not (overrides and name in overrides))
            else prefix + line
        )


def example_config() -> str:
    """Return the commented example configuration as TOML text."""
    lines = [
        "# acgs-console configuration: every field, with what it means.",
        "# Save as ./acgs-console.toml (or pass --config PATH, or set $ACGS_CONSOLE_CONFIG).",
        "# Any field can be overridden by ACGS_CONSOLE__SECTION__FIELD environment variables,",
        "# e.g. ACGS_CONSOLE__PROMETHEUS__URL=http://127.0.0.1:9090",
        "# Passwords are never shown on screen or in logs.",
    ]
    top = {n: i for n, i in AppConfig.model_fields.items()}
    for name in (
        "constitutional_hash",
        "refresh_interval_s",
        "probe_timeout_s",
        "operator",
        "runbook",
    ):
        info = top[name]
        lines.extend(_comment(info))
        value = info.default if info.default is not None else _SAMPLES[name]
        line = f"{name} = {_toml_value(value)}"
        lines.append(line if info.default is not None else "# " + line)
    lines.extend(_comment(top["monitor_windows"]))
    lines.append("# monitor_windows = { monitor-10 = 30.0, monitor-50 = 30.0 }")

    for env_index, env in enumerate(Environment):
        lines.append("")
        lines.append(f"# --- the {env.value} environment " + "-" * 40)
        _section(
            lines,
            f"environments.{env.value}",
            EnvironmentConfig,
            skip=("services", "redis", "postgres"),
            overrides={"prometheus_label": env.value},
        )
        for i, service in enumerate(ORCHESTRATORS):
            host = f"http://10.0.{env_index + 1}.{10 + i}:8000"
            if i == 0:
                _section(
                    lines,
                    f"environments.{env.value}.services.{service}",
                    ServiceEndpoint,
                    overrides={"base_url": host},
                )
            else:
                lines.append("")
                lines.append(f"[environments.{env.value}.services.{service}]")
                lines.append(f'base_url = "{host}"')
        _section(
            lines,
            f"environments.{env.value}.redis",
            RedisEndpoint,
            overrides={"url": f"redis://10.0.{env_index + 1}.20:6379/0"},
        )
        _section(lines, f"environments.{env.value}.postgres", PostgresEndpoint)

    _section(lines, "prometheus", PrometheusConfig, overrides={"url": "http://10.0.0.5:9090"})
    lines.append(
        "# PromQL templates: $selector selects both environments, $label is the environment"
    )
    lines.append("# label, $window the rate window; each query groups by ($label).")
    from console.config import PrometheusQueries

    _section(lines, "prometheus.queries", PrometheusQueries)

    lines.append("")
    lines.append("# --- the traffic switch: exactly one of the three kinds " + "-" * 20)
    _section(lines, "traffic", HAProxySwitch)
    lines.append("# Or the site's own command (Istio, an ALB, a script):")
    _section(lines, "traffic", CommandSwitch, commented=True)
    lines.append("# Or the sandbox's in-process router (written by `acgs-console sandbox up`):")
    _section(lines, "traffic", SandboxSwitch, commented=True)

    _section(lines, "thresholds", Thresholds)
    _section(lines, "audit", AuditConfig)
    _section(lines, "rollback", RollbackConfig)
    _section(lines, "coordination", CoordinationConfig)
    lines.append("")
    lines.append("# Site commands for runbook steps, by step id (argv lists, never shell strings).")
    lines.append("# A command step whose id is not set here becomes an operator attestation.")
    _section(
        lines,
        "commands.deploy-infrastructure-green",
        CommandSpec,
        overrides={"argv": ["./deploy-infrastructure-green.sh"]},
    )
    _section(lines, "security", SecurityConfig)
    _section(lines, "ui", UIConfig)
    lines.append("# Written by `acgs-console sandbox up`; leave it out for a real estate.")
    _section(lines, "sandbox", SandboxInfo, commented=True)
    return "\n".join(line for line in _squeeze(lines)) + "\n"


def _squeeze(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    return out
