"""Benchmark: the emergency rollback against a real HAProxy with real traffic flowing.

Starts its own engines: the sandbox fleet (``python -m console.sandbox.fleet``) and a
throw-away HAProxy in front of the fleet's blue and green ingresses, points the fleet's
traffic generator at HAProxy's frontend (150 requests/s by default), then repeats: set 50 %
green, wait until green is serving, trigger the rollback (the same
:class:`~console.rollback.RollbackController` the console's key uses, one for the whole run
as in the console) and measure, from the trigger (``time.monotonic()`` just before the
call):

* **read-back**: HAProxy reads back 0 % green (end of the procedure's read-back step);
  target median < 50 ms (for the console's key; ``--via cli`` times the command from its
  spawn, Python's start-up and imports included);
* **last green**: the last request served by green, from the fleet generator's own count of
  responses per environment, polled every few milliseconds (an upper bound, within one poll
  interval); target < 1 s;
* **verified**: the end of verification (read-back, blue health, requests reach blue,
  compliance); target < 5 s;
* **total**: the whole procedure, incident record and report included.

It prints median and p95 of each, and their ratio to the runbook's 30 s. Run::

    .venv/bin/python bench/bench_rollback.py [--runs 20] [--rate 150] [--via api|cli] [--json]

Exit status 0 when every rollback verified and every median target was met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import tomlkit  # noqa: E402

from console.config import load_config  # noqa: E402
from console.engines import HAProxy, die_with_parent  # noqa: E402
from console.rollback import (  # noqa: E402
    STEP_READ_BACK,
    RollbackController,
    RollbackOutcome,
    RollbackResult,
)

HASH = "cdd01ef066bc6cf2"
BUDGET_S = 30.0
POLL_S = 0.005
TARGETS_MS = {"read_back": 50.0, "last_green": 1000.0, "verified": 5000.0}


Trigger = Callable[["RollbackController", Path], Awaitable[tuple[float, "RollbackResult"]]]


@dataclass
class Sample:
    """One rollback's figures (ms since the trigger)."""

    read_back: float
    last_green: float
    verified: float
    total: float
    outcome: str
    green_after_trigger: int
    startup: float = 0.0
    """--via cli: from the spawn to the command's own clock start (interpreter, imports)."""


@dataclass
class Fleet:
    proc: subprocess.Popen[bytes]
    state: dict[str, Any]

    @property
    def control(self) -> str:
        return str(self.state["control_url"])

    def ingress(self, env: str) -> tuple[str, int]:
        host, port = str(self.state["ingress"][env]).removeprefix("http://").split(":")
        return host, int(port)


@contextlib.contextmanager
def start_fleet(workdir: Path, rate: float) -> Iterator[Fleet]:
    state_file = workdir / "fleet-state.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [
        sys.executable,
        "-m",
        "console.sandbox.fleet",
        "--hash",
        HASH,
        "--state-file",
        str(state_file),
        "--rate",
        f"{rate:g}",
    ]
    with (workdir / "fleet.log").open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            preexec_fn=die_with_parent(),
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                state = json.loads(state_file.read_text())
                if {"control_url", "ingress", "services"} <= state.keys():
                    break
            except (OSError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the sandbox fleet did not start; see {workdir / 'fleet.log'}")
            time.sleep(0.05)
        yield Fleet(proc, state)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def write_config(workdir: Path, fleet: Fleet, proxy: HAProxy) -> Path:
    environments = {
        env: {
            "services": {
                s["service"]: {"base_url": s["base_url"]}
                for s in fleet.state["services"]
                if s["environment"] == env
            }
        }
        for env in ("blue", "green")
    }
    data = {
        "operator": "bench",
        "environments": environments,
        "traffic": {"kind": "haproxy", "admin": str(proxy.admin_socket)},
        "audit": {
            "sqlite_path": str(workdir / "audit.sqlite3"),
            "spool_path": str(workdir / "audit-spool.jsonl"),
        },
        "rollback": {"report_dir": str(workdir / "incidents")},
    }
    path = workdir / "acgs-console.toml"
    path.write_text(tomlkit.dumps(data), encoding="utf-8")
    return path


async def green_served(client: httpx.AsyncClient, fleet: Fleet) -> int:
    state = (await client.get(fleet.control + "/control/traffic")).json()
    return int(state["stats"]["served_by_environment"].get("green", 0))


async def trigger_api(controller: RollbackController, config: Path) -> tuple[float, RollbackResult]:
    """The console's key: the controller in this process; the clock starts at the call."""
    started = time.monotonic()
    return started, await controller.run(started=started, reason="benchmark", trigger="api")


async def trigger_cli(controller: RollbackController, config: Path) -> tuple[float, RollbackResult]:
    """``acgs-console rollback --to blue``: the clock starts when the process is spawned."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "console.rollback_cli",
        "--config",
        str(config),
        "rollback",
        "--to",
        "blue",
        "--reason",
        "benchmark",
        "--json",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )
    out, _ = await proc.communicate()
    result = RollbackResult.model_validate_json(out)
    if result.trigger_monotonic is None:
        raise SystemExit("the CLI's result carries no trigger time")
    # Shift the CLI's step times (from its own start) to the spawn: CLOCK_MONOTONIC is
    # system-wide, so both processes read the same clock.
    shift = (result.trigger_monotonic - started) * 1000.0
    steps = tuple(
        s.model_copy(update={"started_ms": s.started_ms + shift, "ended_ms": s.ended_ms + shift})
        for s in result.steps
    )
    return started, result.model_copy(
        update={
            "steps": steps,
            "total_ms": result.total_ms + shift,
            # Where the command's own clock started, seen from the spawn.
            "trigger_monotonic": started + shift / 1000.0,
        }
    )


async def one_rollback(
    controller: RollbackController,
    proxy: HAProxy,
    fleet: Fleet,
    client: httpx.AsyncClient,
    trigger: Trigger,
    config: Path,
) -> Sample:
    for command in ("set weight acgs/blue 128", "set weight acgs/green 128"):
        reply = proxy.admin_command(command)
        if reply.strip():
            raise SystemExit(f"HAProxy refused {command!r}: {reply}")
    # Green must be serving before the trigger, or "last green" would measure nothing.
    before = await green_served(client, fleet)
    deadline = time.monotonic() + 5
    while await green_served(client, fleet) < before + 20:
        if time.monotonic() > deadline:
            raise SystemExit("green served nothing at 50 %: is traffic reaching HAProxy?")
        await asyncio.sleep(0.02)

    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), await green_served(client, fleet)))
            await asyncio.sleep(POLL_S)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    started, result = await trigger(controller, config)
    # Keep watching a while after the end: a late green response must still be seen.
    await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - started)))
    stop.set()
    await watcher

    at_trigger = max((n for t, n in samples if t <= started), default=samples[0][1])
    final = samples[-1][1]
    first_final = next(t for t, n in samples if n == final)
    last_green = max(0.0, (first_final - started) * 1000.0) if final > at_trigger else 0.0
    read_back = result.step_end_ms(STEP_READ_BACK)
    verified = result.verification_end_ms
    return Sample(
        read_back=read_back if read_back is not None else float("nan"),
        last_green=last_green,
        verified=verified if verified is not None else float("nan"),
        total=result.total_ms,
        outcome=result.outcome.value,
        green_after_trigger=final - at_trigger,
        startup=((result.trigger_monotonic or started) - started) * 1000.0,
    )


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


async def bench(runs: int, rate: float, via: str) -> tuple[list[Sample], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="acgs-bench-rollback-") as tmp:
        workdir = Path(tmp)
        with start_fleet(workdir, rate) as fleet:
            proxy = HAProxy(workdir / "haproxy", fleet.ingress("blue"), fleet.ingress("green"))
            with proxy:
                async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
                    reply = await client.put(
                        fleet.control + "/control/traffic",
                        json={"target": proxy.frontend_url, "rate": rate},
                    )
                    reply.raise_for_status()
                    config_path = write_config(workdir, fleet, proxy)
                    cfg, _ = load_config(config_path)
                    trigger = trigger_cli if via == "cli" else trigger_api
                    controller = RollbackController(cfg)
                    samples: list[Sample] = []
                    try:
                        for i in range(runs):
                            sample = await one_rollback(
                                controller, proxy, fleet, client, trigger, config_path
                            )
                            samples.append(sample)
                            print(
                                f"run {i + 1:2d}: read-back {sample.read_back:7.2f} ms  "
                                f"last green {sample.last_green:7.1f} ms  "
                                f"verified {sample.verified:7.1f} ms  "
                                f"total {sample.total:7.1f} ms  {sample.outcome}",
                                file=sys.stderr,
                                flush=True,
                            )
                    finally:
                        await controller.aclose()
                    traffic = (await client.get(fleet.control + "/control/traffic")).json()
    return samples, traffic


@dataclass
class Figure:
    name: str
    label: str
    median: float
    p95: float
    target_ms: float | None
    values: list[float] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        return None if self.target_ms is None else self.median < self.target_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="rollbacks to time (default 20)")
    parser.add_argument("--rate", type=float, default=150.0, help="traffic requests/s (150)")
    parser.add_argument(
        "--via",
        choices=("api", "cli"),
        default="api",
        help="api: the console's key (the controller in this process, the default); "
        "cli: `acgs-console rollback` as a subprocess, timed from its spawn",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    samples, traffic = asyncio.run(bench(args.runs, args.rate, args.via))
    figures = []
    for name, label in (
        ("read_back", "trigger -> HAProxy reads back 0% green"),
        ("last_green", "trigger -> last request served by green"),
        ("verified", "trigger -> end of verification"),
        ("total", "trigger -> record and report written"),
    ):
        values = [getattr(s, name) for s in samples]
        figures.append(
            Figure(
                name, label, statistics.median(values), p95(values), TARGETS_MS.get(name), values
            )
        )
    verified = sum(1 for s in samples if s.outcome == RollbackOutcome.VERIFIED.value)
    ok = verified == len(samples) and all(f.met is not False for f in figures)

    if args.json:
        print(
            json.dumps(
                {
                    "runs": len(samples),
                    "via": args.via,
                    "verified": verified,
                    "budget_s": BUDGET_S,
                    "figures": [
                        {
                            "name": f.name,
                            "label": f.label,
                            "median_ms": f.median,
                            "p95_ms": f.p95,
                            "target_median_ms": f.target_ms,
                            "median_share_of_budget": f.median / (BUDGET_S * 1000.0),
                            "values_ms": f.values,
                        }
                        for f in figures
                    ],
                    "traffic": traffic.get("stats"),
                },
                indent=2,
            )
        )
    else:
        how = "the console's key" if args.via == "api" else "`acgs-console rollback` (from spawn)"
        print(
            f"\nemergency rollback via {how}: {len(samples)} runs at {args.rate:g} requests/s "
            f"through a real HAProxy; {verified}/{len(samples)} verified\n"
        )
        print(f"{'':42} {'median':>10} {'p95':>10}  {'target':>9}  share of the runbook's 30 s")
        for f in figures:
            target = f"< {f.target_ms:g} ms" if f.target_ms is not None else ""
            mark = {True: "met", False: "MISSED", None: ""}[f.met]
            share = f.median / (BUDGET_S * 1000.0)
            ratio = f" (1/{1 / share:,.0f})" if share > 0 else ""
            print(
                f"{f.label:42} {f.median:8.2f}ms {f.p95:8.2f}ms  {target:>9} {mark:6}"
                f" {100 * share:.4f} %{ratio}"
            )
        if args.via == "cli":
            startup = [s.startup for s in samples]
            own = [s.read_back - s.startup for s in samples]
            print(
                f"\nof which spawn -> the command's own start (Python start-up): median "
                f"{statistics.median(startup):.1f} ms, p95 {p95(startup):.1f} ms;\n"
                f"command start -> read-back 0% green (config, pre-flight probe of blue, "
                f"switch): median {statistics.median(own):.1f} ms, p95 {p95(own):.1f} ms"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
