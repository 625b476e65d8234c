"""How much CPU the sandbox estate takes at its traffic rate (budget: 25 % of one core at 150/s).

Starts ``python -m console.sandbox up`` (``--engines none`` by default: the fleet and its
in-process router; ``--engines auto`` puts HAProxy, Prometheus, Redis and PostgreSQL beside it),
lets it warm up, then reads the CPU time (user + system, from ``/proc/<pid>/stat``) of every
process in its tree over the measuring window. The sandbox's own Python processes are held to
the budget; the real engines are reported beside them. The achieved request rate comes from the
generator's own counts on the control endpoint.

Usage::

    .venv/bin/python bench/bench_sandbox_cpu.py [--seconds 20] [--rate 150] [--engines none|auto]

Exit status 0 when the sandbox stays within the budget, 1 when it does not, 2 when it failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, str, float] | None:
    """``(ppid, comm, cpu seconds)`` of a live process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces: split after the last ')'.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return ppid, comm, cpu


def _tree(root: int) -> dict[int, tuple[str, float]]:
    """Every live process under ``root`` (itself included): pid -> (label, cpu seconds)."""
    stats: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _, _) in stats.items():
        children[ppid].append(pid)
    found: dict[int, tuple[str, float]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            _, comm, cpu = stats[pid]
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                cmdline = comm
            if "console.sandbox.fleet" in cmdline:
                label = "sandbox: fleet"
            elif "console.sandbox" in cmdline:
                label = "sandbox: sandbox up"
            else:
                label = comm
            found[pid] = (label, cpu)
            todo.extend(children.get(pid, []))
    return found


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window")
    parser.add_argument("--rate", type=float, default=150.0, help="traffic requests/s")
    parser.add_argument("--engines", choices=("none", "auto"), default="none")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--budget", type=float, default=25.0, help="percent of one core")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="acgs-bench-sandbox-"))
    config = work / "acgs-console.toml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [
        sys.executable,
        "-m",
        "console.sandbox",
        "up",
        "--engines",
        args.engines,
        "--rate",
        f"{args.rate:g}",
        "--workdir",
        str(work / "estate"),
        "--write-config",
        str(config),
    ]
    log = (work / "sandbox.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not config.is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                print((work / "sandbox.log").read_text(), file=sys.stderr)
                print("the sandbox did not start", file=sys.stderr)
                return 2
            time.sleep(0.1)
        control = tomllib.loads(config.read_text())["sandbox"]["control_url"]
        real = tomllib.loads(config.read_text())["sandbox"]["real_engines"]
        time.sleep(args.warmup)

        def completed() -> int:
            state = httpx.get(control + "/control/state", timeout=5).json()
            return int(state["traffic"]["stats"]["completed"])

        before_tree, before_done, t0 = _tree(proc.pid), completed(), time.monotonic()
        time.sleep(args.seconds)
        after_tree, after_done, t1 = _tree(proc.pid), completed(), time.monotonic()
        stats = httpx.get(control + "/control/state", timeout=5).json()["traffic"]["stats"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)

    elapsed = t1 - t0
    per_label: dict[str, float] = defaultdict(float)
    for pid, (label, cpu) in after_tree.items():
        start = before_tree.get(pid, (label, 0.0))[1]
        per_label[label] += cpu - start
    sandbox_cpu = sum(v for k, v in per_label.items() if k.startswith("sandbox:"))
    sandbox_pct = 100.0 * sandbox_cpu / elapsed
    achieved = (after_done - before_done) / elapsed

    print(f"sandbox CPU benchmark: --engines {args.engines} (real: {', '.join(real) or 'none'})")
    print(f"  window {elapsed:.1f} s; traffic target {args.rate:g}/s, achieved {achieved:.1f}/s")
    print(f"  errors {stats['errors'] or 'none'}; dropped {stats['dropped']}")
    for label, cpu in sorted(per_label.items(), key=lambda item: -item[1]):
        print(f"  {label:<24} {cpu:7.2f} s CPU  = {100.0 * cpu / elapsed:5.1f} % of one core")
    verdict = "within" if sandbox_pct < args.budget else "OVER"
    print(
        f"sandbox processes: {sandbox_pct:.1f} % of one core at {achieved:.0f} requests/s "
        f"({verdict} the {args.budget:g} % budget)"
    )
    return 0 if sandbox_pct < args.budget else 1


if __name__ == "__main__":
    raise SystemExit(main())
