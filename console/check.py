"""``acgs-console check``: one sweep of the estate, as a table or as JSON, and an exit code.

This module owns the one-shot check: load the configuration, take one
:class:`~backends.models.Snapshot` with :class:`~console.monitor.Monitor`,
list every finding, print the snapshot (a rich table with blue and green side
by side, or ``--json``: the snapshot's own JSON), and exit

* 0 when everything passes,
* 1 when anything does not: a service not up, a hash not correct, compliance
  below 100 %, Redis or PostgreSQL not operational or not configured, the
  traffic split unreadable, or any alert rule pending, firing or unknown
  (unknown is a finding: missing data is never a pass),
* 2 when nothing can be observed: a configuration error, or not one probe got
  an answer.

With a direct scrape (no Prometheus), rates need two scrapes, so the check
sweeps once, waits ``--settle`` seconds, and reports the second sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from backends.models import (
    AlertPhase,
    AlertSeverity,
    AlertState,
    EnvironmentSnapshot,
    HashVerdict,
    MetricValue,
    ProbeState,
    ServiceHealth,
    ServiceState,
    Snapshot,
)
from console.rules import RuleInputs, alert_passes

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from console.config import AppConfig, Thresholds

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_UNUSABLE = 2

DIRECT_SCRAPE_SETTLE_S = 1.0
"""Default wait between the priming sweep and the reported one when scraping directly."""


# --- judging -----------------------------------------------------------------------------------


def observed_anything(snapshot: Snapshot) -> bool:
    """True when at least one probe got an answer (else: cannot observe, exit 2)."""
    for side in (snapshot.blue, snapshot.green):
        if any(s.http_status is not None for s in side.services):
            return True
        if any(m.value is not None for m in side.metrics.all()):
            return True
        if side.redis.state in (ProbeState.OK, ProbeState.DEGRADED, ProbeState.AUTH_FAILED):
            return True
        if side.replication.primary_reachable:
            return True
    return snapshot.traffic.green_percentage is not None


def _service_finding(svc: ServiceHealth) -> str | None:
    if svc.state is not ServiceState.UP:
        return f"{svc.state.value}" + (f": {svc.reason}" if svc.reason else "")
    if not svc.hash_ok:
        return "; ".join(svc.violations) or "constitutional hash not verified"
    return None


def findings(snapshot: Snapshot) -> list[str]:
    """Everything in the snapshot that does not pass, one line each."""
    out: list[str] = []
    for side in (snapshot.blue, snapshot.green):
        env = side.environment.value
        for svc in side.services:
            problem = _service_finding(svc)
            if problem:
                out.append(f"{env}/{svc.service}: {problem}")
        score = side.compliance.score
        if score is None or score < 100.0:
            shown = "unknown" if score is None else f"{score:.1f}%"
            failed = ", ".join(c.name for c in side.compliance.failed) or "no checks"
            out.append(f"{env}: compliance {shown} ({failed})")
        if not side.redis.operational:
            out.append(f"{env}: Redis {side.redis.state.value}: {side.redis.reason}".rstrip(": "))
        if side.replication.synchronized is not True:
            rep = side.replication
            out.append(
                f"{env}: PostgreSQL replication {rep.state.value}: {rep.reason}".rstrip(": ")
            )
    if snapshot.traffic.green_percentage is None:
        out.append(f"traffic split unreadable: {snapshot.traffic.error or 'no reading'}")
    for alert in snapshot.alerts:
        if not alert_passes(alert):
            where = f" [{alert.environment.value}]" if alert.environment else ""
            what = "unknown" if alert.unknown else alert.phase.value
            detail = f": {alert.detail}" if alert.detail else ""
            out.append(f"alert {alert.name}{where} ({alert.summary}) {what}{detail}")
    return out


# --- rendering ---------------------------------------------------------------------------------

_LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "bold red", "unknown": "magenta"}


def metric_level(name: str, value: MetricValue, t: Thresholds) -> str:
    """``ok``, ``warning``, ``critical`` or ``unknown`` for one metric, by the runbook."""
    if not value.known or value.value is None:
        return "unknown"
    v = value.value
    if name == "p99_latency_ms":
        return (
            "critical"
            if v > t.p99_latency_ms_critical
            else "warning"
            if v > t.p99_latency_ms_warning
            else "ok"
        )
    if name == "cache_hit_rate":
        return (
            "critical"
            if v < t.cache_hit_critical
            else "warning"
            if v < t.cache_hit_warning
            else "ok"
        )
    if name == "compliance_score":
        return (
            "ok"
            if v >= t.compliance_critical
            else "warning"
            if v >= t.compliance_warning
            else "critical"
        )
    if name == "hash_validation_failure_rate":
        return "warning" if v > t.hash_failure_rate_warning else "ok"
    if name == "auth_failures_per_minute":
        return "critical" if v > t.auth_failures_per_minute_critical else "ok"
    if name == "error_rate":
        return "ok" if v == 0 else "warning"
    return "ok"


def _fmt_metric(name: str, value: MetricValue) -> str:
    if value.value is None or not math.isfinite(value.value):
        return f"unknown ({value.error or 'no data'})"
    v = value.value
    if name in ("error_rate", "cache_hit_rate", "hash_validation_failure_rate"):
        text = f"{100 * v:.2f}%"
    elif name == "p99_latency_ms":
        text = f"{v:.2f} ms"
    elif name == "requests_per_second":
        text = f"{v:.1f} req/s"
    elif name == "compliance_score":
        text = f"{v:g}%"
    elif name == "auth_failures_per_minute":
        text = f"{v:.1f}/min"
    else:
        text = f"{v:g}"
    return text + (" (stale)" if value.stale else "")


def _hash_mark(svc: ServiceHealth) -> str:
    if svc.hash_ok:
        return "hash ok"
    parts = []
    for where, verdict in (("body", svc.body_hash_verdict), ("header", svc.header_hash_verdict)):
        if verdict is not HashVerdict.OK:
            parts.append(f"{where} {verdict.value}")
    return "hash " + ", ".join(parts)


def _service_cell(svc: ServiceHealth | None) -> RenderableType:
    from rich.text import Text

    if svc is None:
        return Text("not configured", style="magenta")
    style = {
        ServiceState.UP: "green",
        ServiceState.DEGRADED: "yellow",
        ServiceState.DOWN: "bold red",
        ServiceState.BAD_RESPONSE: "red",
        ServiceState.UNKNOWN: "magenta",
    }[svc.state]
    text = Text(svc.state.value, style=style)
    if svc.latency_ms is not None:
        text.append(f" {svc.latency_ms:.1f} ms", style="dim")
    text.append("  ")
    text.append(_hash_mark(svc), style="green" if svc.hash_ok else "bold red")
    if svc.version:
        text.append(f"  v{svc.version}", style="dim")
    if svc.reason and svc.state is not ServiceState.UP:
        text.append(f"\n{svc.reason}", style=style)
    if svc.stale:
        text.append(" (stale)", style="magenta")
    return text


def _engine_cell(side: EnvironmentSnapshot, which: str) -> RenderableType:
    from rich.text import Text

    if which == "redis":
        r = side.redis
        ok = r.operational
        text = Text(r.state.value, style="green" if ok else "bold red")
        bits = []
        if r.ping_ms is not None:
            bits.append(f"ping {r.ping_ms:.1f} ms")
        if r.role:
            bits.append(r.role)
        if r.cluster_enabled:
            bits.append(f"cluster {r.cluster_state}")
        if r.keyspace_hit_ratio is not None:
            bits.append(f"hits {100 * r.keyspace_hit_ratio:.0f}%")
        if bits:
            text.append("  " + ", ".join(bits), style="dim")
        if r.reason:
            text.append(f"\n{r.reason}", style="dim" if ok else "red")
        return text
    p = side.replication
    synced = p.synchronized is True
    label = "synchronized" if synced else f"{p.state.value}, not synchronized"
    text = Text(label, style="green" if synced else "bold red")
    for lag in p.replicas:
        seconds = "?" if lag.replay_lag_seconds is None else f"{lag.replay_lag_seconds:.1f} s"
        text.append(
            f"\n{lag.application_name}: {lag.state}/{lag.sync_state}, "
            f"{lag.byte_lag if lag.byte_lag is not None else '?'} B, {seconds}",
            style="dim",
        )
    if p.reason:
        text.append(f"\n{p.reason}", style="dim" if synced else "red")
    return text


def _compliance_cell(side: EnvironmentSnapshot) -> RenderableType:
    from rich.text import Text

    score = side.compliance.score
    good = score is not None and score >= 100.0
    text = Text(
        "unknown" if score is None else f"{score:.1f}%", style="green" if good else "bold red"
    )
    for check in side.compliance.failed:
        mark = "?" if check.passed is None else "x"
        text.append(f"\n{mark} {check.name}: {check.detail}", style="red")
    return text


def _alert_row(alert: AlertState) -> tuple[str, ...]:
    phase = "unknown" if alert.unknown else alert.phase.value
    value = "" if alert.value is None else f"{alert.value:g}"
    return (
        alert.severity.value,
        phase,
        alert.name,
        alert.environment.value if alert.environment else "estate",
        alert.summary,
        value,
        alert.detail,
    )


def render(snapshot: Snapshot, config: AppConfig, found: list[str], console: Console) -> None:
    """Print the snapshot: services, metrics, engines, traffic, alerts, verdict."""
    from rich.table import Table
    from rich.text import Text

    blue, green = snapshot.blue, snapshot.green
    console.print(
        Text.assemble(
            ("ACGS estate ", "bold"),
            f"snapshot #{snapshot.sequence} at {snapshot.taken_at:%Y-%m-%d %H:%M:%S} UTC, "
            f"swept in {snapshot.duration_ms:.0f} ms; constitutional hash "
            f"{snapshot.constitutional_hash}",
        )
    )
    split = snapshot.traffic
    if split.green_percentage is None:
        console.print(Text(f"Traffic split: unreadable ({split.error})", style="bold red"))
    else:
        console.print(
            f"Traffic split: blue {split.blue_percentage:g}% / green "
            f"{split.green_percentage:g}%  [dim]({split.source})[/dim]"
        )

    services = Table(title="Services", expand=True)
    services.add_column("Service", no_wrap=True, ratio=1)
    services.add_column("Blue", ratio=2)
    services.add_column("Green", ratio=2)
    names = list(
        dict.fromkeys([s.service for s in blue.services] + [s.service for s in green.services])
    )
    by_env = {env: {s.service: s for s in side.services} for env, side in ((0, blue), (1, green))}
    for name in names:
        services.add_row(
            name, _service_cell(by_env[0].get(name)), _service_cell(by_env[1].get(name))
        )
    services.add_row(
        Text("up", style="bold"),
        f"{blue.services_up}/{len(blue.services)}",
        f"{green.services_up}/{len(green.services)}",
    )
    console.print(services)

    metrics = Table(title="Metrics", expand=True)
    metrics.add_column("Metric", no_wrap=True, ratio=1)
    metrics.add_column("Blue", ratio=2)
    metrics.add_column("Green", ratio=2)
    for name in type(blue.metrics).model_fields:
        cells: list[RenderableType] = [name]
        for side in (blue, green):
            value: MetricValue = getattr(side.metrics, name)
            level = metric_level(name, value, config.thresholds)
            cells.append(Text(_fmt_metric(name, value), style=_LEVEL_STYLE[level]))
        metrics.add_row(*cells)
    console.print(metrics)

    engines = Table(title="Compliance and engines", expand=True)
    engines.add_column("", no_wrap=True, ratio=1)
    engines.add_column("Blue", ratio=2)
    engines.add_column("Green", ratio=2)
    engines.add_row("compliance", _compliance_cell(blue), _compliance_cell(green))
    engines.add_row("Redis", _engine_cell(blue, "redis"), _engine_cell(green, "redis"))
    engines.add_row(
        "PostgreSQL", _engine_cell(blue, "replication"), _engine_cell(green, "replication")
    )
    console.print(engines)

    failing = [a for a in snapshot.alerts if not alert_passes(a)]
    if failing:
        alerts = Table(
            title=f"Alerts ({len(failing)} of {len(snapshot.alerts)} not passing)", expand=True
        )
        for column in ("Severity", "State", "Alert", "Env", "Rule", "Value", "Detail"):
            alerts.add_column(column)
        order = {AlertPhase.FIRING: 0, AlertPhase.PENDING: 1, AlertPhase.INACTIVE: 2}
        failing.sort(key=lambda a: (order[a.phase], a.severity is not AlertSeverity.CRITICAL))
        for alert in failing:
            style = (
                "magenta"
                if alert.unknown
                else "bold red"
                if alert.phase is AlertPhase.FIRING
                else "yellow"
            )
            alerts.add_row(*_alert_row(alert), style=style)
        console.print(alerts)
    else:
        console.print(Text(f"Alerts: all {len(snapshot.alerts)} rules pass", style="green"))

    if found:
        console.print(Text(f"{len(found)} finding(s); exit 1", style="bold red"))
    else:
        console.print(Text("All good; exit 0", style="bold green"))


# --- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``acgs-console check`` to its (sub)parser.

    Sets ``func`` to :func:`run`.
    """
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (default: $ACGS_CONSOLE_CONFIG, ./acgs-console.toml, user config dir)",
    )
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    parser.add_argument(
        "--rule-inputs",
        metavar="FILE",
        help="JSON with the alert rules' external inputs (audit verification, security score, "
        "vulnerability findings, security validation); without it those rules are unknown",
    )
    parser.add_argument(
        "--settle",
        metavar="SECONDS",
        type=float,
        default=None,
        help="with a direct scrape: wait this long after a priming sweep so rates exist "
        f"(default {DIRECT_SCRAPE_SETTLE_S:g}; 0 with Prometheus)",
    )
    parser.set_defaults(func=run)


def _error(message: str) -> None:
    print(f"acgs-console check: {message}", file=sys.stderr)


def load_rule_inputs(path: str | Path) -> RuleInputs:
    """Read :class:`~console.rules.RuleInputs` from a JSON file.

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return RuleInputs.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ValueError(f"{path} is not valid rule inputs: {problems}") from None


async def take_snapshot(
    config: AppConfig, inputs: RuleInputs | None = None, settle_s: float | None = None
) -> Snapshot:
    """One snapshot of the estate (after a priming sweep when the metrics need history).

    Args:
        config: The console configuration.
        inputs: The rules' external inputs.
        settle_s: Seconds between a priming sweep and the reported one; None picks
            :data:`DIRECT_SCRAPE_SETTLE_S` for a direct scrape and 0 (no priming) for Prometheus.
    """
    from console.monitor import Monitor
    from console.rule_inputs import ConfiguredRuleInputs

    if settle_s is None:
        settle_s = 0.0 if config.prometheus.url else DIRECT_SCRAPE_SETTLE_S
    provider: RuleInputs | ConfiguredRuleInputs
    if inputs is None:
        provider = ConfiguredRuleInputs(config)
        await provider.prime()
    else:
        provider = inputs
    async with Monitor(config, inputs=provider) as monitor:
        if settle_s > 0:
            await monitor.sweep()
            await asyncio.sleep(settle_s)
        return await monitor.sweep()


def run(args: argparse.Namespace) -> int:
    """``acgs-console check [--config PATH] [--json] [--rule-inputs FILE] [--settle S]``.

    Returns:
        0 all good, 1 findings, 2 cannot observe.
    """
    from console.config import ConfigError, load_config

    try:
        config, _ = load_config(getattr(args, "config", None))
    except ConfigError as err:
        _error(f"the configuration has {len(err.problems)} problem(s):")
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_UNUSABLE
    inputs = None
    if getattr(args, "rule_inputs", None):
        try:
            inputs = load_rule_inputs(args.rule_inputs)
        except ValueError as exc:
            _error(str(exc))
            return EXIT_UNUSABLE
    settle = getattr(args, "settle", None)
    if settle is not None and (not math.isfinite(settle) or settle < 0):
        _error(f"--settle must be a number of seconds >= 0, got {settle:g}")
        return EXIT_UNUSABLE
    try:
        snapshot = asyncio.run(take_snapshot(config, inputs, settle))
    except Exception as exc:  # building a back-end from a bad value: say what, do not trace
        _error(f"cannot observe the estate: {type(exc).__name__}: {exc}")
        return EXIT_UNUSABLE
    found = findings(snapshot)
    observed = observed_anything(snapshot)
    if getattr(args, "json", False):
        sys.stdout.write(snapshot.model_dump_json(indent=2) + "\n")
    else:
        from rich.console import Console

        # Piped into a file or a CI log, 80 columns would wrap every row: use a wide page.
        width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
        render(snapshot, config, found, Console(width=width))
    if not observed:
        _error("no probe got an answer: nothing could be observed (exit 2)")
        return EXIT_UNUSABLE
    return EXIT_FINDINGS if found else EXIT_OK
