"""Dashboard benchmark: the console on the sandbox, in a 120x40 pseudo-terminal, at 1 s refresh.

Starts ``python -m console.sandbox up`` (``--engines none`` by default: the fleet with its
in-process router and direct scrape; ``--engines auto`` adds HAProxy, Prometheus, Redis and
PostgreSQL), then runs ``python -m console --config CFG`` in a pseudo-terminal of 120x40 with
``TERM=xterm-256color`` (and no ``COLORTERM``, as over a plain SSH session), feeding what it
writes to a ``pyte`` screen, and measures:

1. **Cold start**: from spawning the process to the arrival of the bytes that make the screen
   show data (both environments' verdict lines read ``n/m up``). A reader thread stamps each
   chunk as it arrives, and the emulator (pyte, pure Python: ~0.1 s for a full frame) parses
   behind it, so its own slowness is not counted as the console's. Target under 1.5 s. Beside
   it, interleaved with it in the same run, the time to merely import textual, httpx, redis,
   psycopg, pydantic and prometheus-api-client (``python -c "import ..."``), and the ratio of
   the two, because the machine is noisy.
2. **Bytes to the terminal per minute**, with changing data (150 requests/s of traffic, and a
   fault toggled every ``--fault-every`` seconds: blue slow, a green orchestrator down, blue
   errors, each cleared again): target at most 100 KB per minute; then idle (traffic rate 0,
   no fault), for comparison. Each window starts ``--warmup`` seconds after the previous
   phase, so the first full paint is not counted.
3. **CPU seconds per minute** of the console process (user + system of all its threads, from
   ``/proc/<pid>/stat``), polling included, in both windows; target under 3 with changing
   data. Split by thread (``/proc/<pid>/task``): ``ui`` is Textual's, ``acgs-sweeps`` the
   monitor's sweep loop (:class:`console.ui.polling.SweepLoop` names it for the OS).
4. **Resident memory after 10,000 refresh cycles**: 10,000 cycles at 1 s would take three
   hours, so a second console process runs the real :class:`~console.ui.app.ConsoleApp` in the
   same kind of pseudo-terminal (real driver, real terminal output) with the poll interval at
   zero, fed by a replay source: snapshots recorded from the sandbox by the real monitor (with
   faults toggled while recording), re-stamped with the current time and a new sequence number
   each cycle, so every cycle carries changed data. ``--memory-source live`` drives the real
   monitor against the sandbox at full speed instead (slower: a sweep is tens of ms; it also
   covers the monitor's own memory). VmRSS is read when cycles 1, 1,000 and ``--cycles`` are
   done. Target under 150 MB, growth under 10 % from cycle 1,000 to 10,000.

Usage::

    .venv/bin/python bench/bench_dashboard.py [--seconds 60] [--engines none|auto] [--json]
    .venv/bin/python bench/bench_dashboard.py --seconds 15 --starts 3 --cycles 2000   # quick

Prints a table (metric, measured, target, verdict); ``--json`` prints the figures as JSON
instead (progress goes to stderr). Exit status 0 when every target is met, 1 when one is
missed, 2 when it could not run. Every process it starts (the sandbox, the consoles) is
stopped and waited for.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COLS, ROWS = 120, 40
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IMPORTS = "import textual, httpx, redis, psycopg, pydantic, prometheus_api_client"

COLD_START_TARGET_S = 1.5
BYTES_PER_MIN_TARGET_KB = 100.0
CPU_PER_MIN_TARGET_S = 3.0
RSS_TARGET_MB = 150.0
RSS_GROWTH_TARGET_PCT = 10.0

# The faults toggled during the changing-data window: (environment, service, kind, value).
# Blue takes the traffic in the sandbox, so its faults move metrics, verdicts and alerts.
FAULTS: tuple[tuple[str, str | None, str, float | None], ...] = (
    ("blue", None, "slow", 3.0),
    ("green", "cache_optimizer", "down", None),
    ("blue", None, "error_rate", 0.05),
)

# Both environments' verdict lines (side by side at 120 columns) count the orchestrators up.
_VERDICT = re.compile(r"\b(BLUE|GREEN)\s+\S+ \S+ · \d+/\d+ up\b")


# --- the console in a pseudo-terminal ------------------------------------------------------


def console_env(state_home: Path) -> dict[str, str]:
    """The environment of a console run: an SSH-like 256-colour terminal, private state dir."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("COLORTERM", "NO_COLOR", "FORCE_COLOR") and not k.startswith("TEXTUAL")
    }
    env.update(
        TERM="xterm-256color",
        LANG="C.UTF-8",
        LC_ALL="C.UTF-8",
        COLUMNS=str(COLS),
        LINES=str(ROWS),
        # The theme choice persists in the user state dir: keep the operator's own out of it.
        XDG_STATE_HOME=str(state_home),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


class PtyProcess:
    """A process on the slave side of a 120x40 pseudo-terminal; its output feeds a pyte screen."""

    def __init__(self, argv: list[str], env: dict[str, str], *, screen: bool = True) -> None:
        """Spawn ``argv`` with stdin, stdout and stderr on a new pseudo-terminal.

        Args:
            argv: The command.
            env: Its environment.
            screen: Keep a pyte screen of the output (off: only count the bytes).
        """
        import pyte

        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            close_fds=True,
        )
        os.close(slave)
        self.master = master
        self.bytes = 0
        self.screen = pyte.Screen(COLS, ROWS) if screen else None
        self._stream = pyte.ByteStream(self.screen) if self.screen is not None else None
        # A reader thread stamps each chunk when it arrives; the emulator (pyte, pure Python,
        # ~0.1 s for a full frame) parses behind it, so its own slowness is not the console's.
        self._chunks: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()
        self._eof = False
        self.last_arrival: float | None = None
        """``time.monotonic()`` when the chunk last fed to the screen arrived."""
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the slave side is closed (the process exited)
                break
            if not data:
                break
            self._chunks.put((time.monotonic(), data))
        self._chunks.put(None)

    def next_chunk(self, timeout: float) -> float | None:
        """Feed the next chunk written (waiting up to ``timeout``); returns when it arrived."""
        if self._eof:
            return None
        try:
            item = self._chunks.get(timeout=timeout) if timeout > 0 else self._chunks.get_nowait()
        except queue.Empty:
            return None
        if item is None:
            self._eof = True
            return None
        arrived, data = item
        self.bytes += len(data)
        self.last_arrival = arrived
        if self._stream is not None:
            self._stream.feed(data)
        return arrived

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def pump(self, timeout: float) -> bool:
        """Read what the process wrote within ``timeout`` seconds (all of it, without waiting
        once something arrived and the pipe is drained).

        Returns:
            Whether anything was read.
        """
        got = False
        deadline = time.monotonic() + timeout
        while True:
            wait = 0.0 if got else max(0.0, deadline - time.monotonic())
            if self.next_chunk(wait) is None:
                return got
            got = True

    def pump_for(self, seconds: float) -> None:
        """Keep reading for ``seconds`` (a process that cannot write stalls)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(min(left, 0.2))

    def text(self) -> list[str]:
        """The screen's lines."""
        return list(self.screen.display) if self.screen is not None else []

    def shows_data(self) -> bool:
        """Both environments' verdict lines show ``n/m up``."""
        found = {m.group(1) for line in self.text() for m in _VERDICT.finditer(line)}
        return found == {"BLUE", "GREEN"}

    def cpu_seconds(self) -> float:
        """User + system CPU of the process, all threads (``/proc/<pid>/stat``)."""
        return _cpu(Path(f"/proc/{self.pid}/stat"))

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds per thread, keyed by OS thread name (the UI thread is ``ui``)."""
        result: dict[str, float] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                cpu = _cpu(task / "stat")
            except OSError:
                continue
            name = "ui" if task.name == str(self.pid) else name
            result[name] = result.get(name, 0.0) + cpu
        return result

    def rss_mb(self) -> float:
        """VmRSS in MB (MiB)."""
        return vm_rss_mb(self.pid)

    def send(self, data: bytes) -> None:
        """Type at the terminal."""
        with contextlib.suppress(OSError):
            os.write(self.master, data)

    def close(self, timeout: float = 10.0) -> None:
        """Quit the console (Ctrl+Q), then SIGTERM, then SIGKILL; always reaped."""
        if self.proc.poll() is None:
            self.send(b"\x11")
            end = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < end:
                self.pump(0.1)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()
        self._reader.join(5)
        with contextlib.suppress(OSError):
            os.close(self.master)


def _cpu(stat: Path) -> float:
    """User + system CPU seconds from a ``/proc/.../stat`` file."""
    raw = stat.read_text()
    # comm is in parentheses and may contain spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def vm_rss_mb(pid: int | str = "self") -> float:
    """VmRSS of a process in MB (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# --- the sandbox ---------------------------------------------------------------------------


@dataclass
class Sandbox:
    """``sandbox up`` running in the foreground as our child."""

    proc: subprocess.Popen[bytes]
    config: Path
    control_url: str
    real_engines: list[str]

    def control(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Call the sandbox's control endpoint."""
        import httpx

        response = httpx.request(method, self.control_url + path, json=body, timeout=5.0)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def fault(self, env: str, service: str | None, kind: str, value: float | None) -> None:
        """Inject a fault."""
        body: dict[str, Any] = {"environment": env, "kind": kind}
        if service is not None:
            body["service"] = service
        if value is not None:
            body["value"] = value
        self.control("POST", "/control/fault", body)

    def clear(self) -> None:
        """Clear every fault."""
        self.control("POST", "/control/clear", {})

    def set_rate(self, rate: float) -> None:
        """Set the traffic rate of the main stream."""
        self.control("PUT", "/control/traffic", {"rate": rate})


@contextlib.contextmanager
def sandbox(work: Path, engines: str) -> Iterator[Sandbox]:
    """Run ``sandbox up`` until the block ends, then SIGTERM it and wait for its teardown."""
    config = work / "acgs-console.toml"
    config.unlink(missing_ok=True)  # the wait below is for the one this run writes
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [
        sys.executable,
        "-m",
        "console.sandbox",
        "up",
        "--engines",
        engines,
        "--workdir",
        str(work / "estate"),
        "--write-config",
        str(config),
    ]
    log_path = work / "sandbox.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )
    try:
        deadline = time.monotonic() + 120
        while not config.is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "the sandbox did not start; its output:\n" + log_path.read_text()[-3000:]
                )
            time.sleep(0.1)
        doc = tomllib.loads(config.read_text())
        yield Sandbox(
            proc, config, doc["sandbox"]["control_url"], list(doc["sandbox"]["real_engines"])
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- 1. cold start -------------------------------------------------------------------------


def time_imports() -> float:
    """Wall seconds of ``python -c "import textual, httpx, ..."``."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True, cwd=ROOT)
    return time.monotonic() - started


def time_cold_start(config: Path, env: dict[str, str], timeout: float = 30.0) -> float:
    """Seconds from spawning the console to the first frame showing data."""
    console = PtyProcess([sys.executable, "-m", "console", "--config", str(config)], env)
    try:
        end = console.started + timeout
        while time.monotonic() < end:
            # Chunk by chunk: the frame counts from when the bytes that showed data arrived.
            arrived = console.next_chunk(0.5)
            if arrived is not None and console.shows_data():
                return arrived - console.started
            if arrived is None and console.proc.poll() is not None:
                break
        raise RuntimeError(
            "the console showed no data within "
            f"{timeout:g} s; its screen:\n" + "\n".join(console.text())
        )
    finally:
        console.close()


@dataclass
class ColdStart:
    """Cold-start figures (seconds)."""

    console_s: list[float] = field(default_factory=list)
    imports_s: list[float] = field(default_factory=list)

    @property
    def console_median(self) -> float:
        return statistics.median(self.console_s)

    @property
    def imports_median(self) -> float:
        return statistics.median(self.imports_s)


def measure_cold_start(config: Path, env: dict[str, str], starts: int) -> ColdStart:
    """Interleave import-only runs and console starts (the machine's noise hits both)."""
    result = ColdStart()
    time_imports()  # warm the page cache for both (the first run reads every .pyc from disk)
    time_cold_start(config, env)
    for _ in range(starts):
        result.imports_s.append(time_imports())
        result.console_s.append(time_cold_start(config, env))
    return result


# --- 2, 3. bytes and CPU per minute --------------------------------------------------------


@dataclass
class Window:
    """One measuring window of the running console."""

    label: str
    seconds: float
    bytes: int
    cpu_s: float
    faults: int
    rss_mb: float
    threads_cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds per thread: ``ui`` (Textual), ``acgs-sweeps`` (the monitor), others."""

    @property
    def kb_per_min(self) -> float:
        return self.bytes / 1000 * 60 / self.seconds

    @property
    def cpu_per_min(self) -> float:
        return self.cpu_s * 60 / self.seconds


def measure_window(
    console: PtyProcess,
    label: str,
    seconds: float,
    every: Callable[[int], None] | None = None,
    period: float = 10.0,
) -> Window:
    """Count bytes and CPU over ``seconds``; call ``every(n)`` each ``period`` seconds."""
    bytes0, cpu0, t0 = console.bytes, console.cpu_seconds(), time.monotonic()
    threads0 = console.thread_cpu()
    calls = 0
    next_call = t0 + period
    while (now := time.monotonic()) < t0 + seconds:
        if every is not None and now >= next_call:
            every(calls)
            calls += 1
            next_call += period
        console.pump(min(0.2, max(0.0, min(next_call, t0 + seconds) - now)))
    elapsed = time.monotonic() - t0
    threads = {name: cpu - threads0.get(name, 0.0) for name, cpu in console.thread_cpu().items()}
    return Window(
        label,
        elapsed,
        console.bytes - bytes0,
        console.cpu_seconds() - cpu0,
        calls,
        console.rss_mb(),
        {name: cpu for name, cpu in threads.items() if cpu > 0},
    )


def measure_running(
    box: Sandbox, env: dict[str, str], seconds: float, fault_every: float, warmup: float
) -> tuple[Window, Window]:
    """The changing-data window, then the idle window, on one console process."""
    console = PtyProcess([sys.executable, "-m", "console", "--config", str(box.config)], env)
    try:
        end = time.monotonic() + 30
        while not console.shows_data():
            if time.monotonic() > end or console.proc.poll() is not None:
                raise RuntimeError("the console showed no data:\n" + "\n".join(console.text()))
            console.pump(0.5)
        # The first full paint and the first sparkline columns are start-up, not steady state.
        console.pump_for(warmup)

        def toggle(n: int) -> None:
            if n % 2 == 0:
                box.fault(*FAULTS[(n // 2) % len(FAULTS)])
            else:
                box.clear()

        changing = measure_window(console, "changing", seconds, toggle, fault_every)
        box.clear()
        box.set_rate(0.0)
        # Let the rates and latencies fall to their idle values before measuring.
        console.pump_for(warmup)
        idle = measure_window(console, "idle", seconds)
    finally:
        console.close()
        with contextlib.suppress(Exception):
            box.set_rate(150.0)
    return changing, idle


# --- 4. memory over many refresh cycles ----------------------------------------------------


def record_snapshots(box: Sandbox, count: int, path: Path) -> int:
    """Sweep the sandbox ``count`` times with the real monitor (faults toggled); save as JSONL."""
    import asyncio

    from console.config import load_config
    from console.monitor import Monitor
    from console.rule_inputs import ConfiguredRuleInputs

    config, _ = load_config(box.config)

    async def record() -> list[str]:
        lines: list[str] = []
        async with Monitor(config, inputs=ConfiguredRuleInputs(config)) as monitor:
            for i in range(count):
                # A fault on, then off, in turn, so the replay carries changing states too.
                if i % 20 == 0:
                    box.fault(*FAULTS[(i // 20) % len(FAULTS)])
                elif i % 20 == 10:
                    box.clear()
                snapshot = await monitor.sweep()
                lines.append(snapshot.model_dump_json())
                await asyncio.sleep(0.2)
        return lines

    try:
        lines = asyncio.run(record())
    finally:
        box.clear()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


@dataclass
class Memory:
    """RSS over the refresh cycles (MB), and how the cycles were driven."""

    driven_by: str
    cycles: int
    seconds: float
    rss_mb: dict[int, float]
    frames_bytes: int

    @property
    def final_mb(self) -> float:
        return self.rss_mb[self.cycles]

    @property
    def growth_pct(self) -> float | None:
        if 1000 not in self.rss_mb or self.cycles <= 1000:
            return None
        return 100.0 * (self.rss_mb[self.cycles] / self.rss_mb[1000] - 1.0)


def memory_child(args: argparse.Namespace) -> int:
    """Run the App for ``--cycles`` cycles at full speed; write the RSS readings as JSON.

    Runs in the console-like child process, in the pseudo-terminal.
    """
    from backends.models import Snapshot, utcnow
    from console.config import load_config
    from console.sweeps import default_source_factory as _default_source_factory
    from console.ui.app import ConsoleApp

    config, path = load_config(args.config)
    out = Path(args.memory_child)
    marks = {1, 1000, args.cycles}
    readings: dict[int, float] = {}
    started = time.monotonic()
    app: ConsoleApp

    def at_cycle(done: int) -> None:
        """Called as cycle ``done + 1`` starts: ``done`` cycles were swept and rendered."""
        if done in marks:
            readings[done] = vm_rss_mb()
        if done >= args.cycles:
            out.write_text(
                json.dumps(
                    {"rss_mb": readings, "seconds": time.monotonic() - started, "cycles": done}
                )
            )
            app.call_from_thread(app.exit)

    class Replay:
        """Recorded snapshots, re-stamped with now and a new sequence number every sweep."""

        def __init__(self, snapshots: list[Snapshot]) -> None:
            self.snapshots = snapshots
            self.calls = 0

        async def sweep(self) -> Snapshot:
            at_cycle(self.calls)
            self.calls += 1
            base = self.snapshots[self.calls % len(self.snapshots)]
            now = utcnow()
            shift = now - base.taken_at
            alerts = tuple(
                a.model_copy(update={"active_since": a.active_since + shift})
                if a.active_since is not None
                else a
                for a in base.alerts
            )
            return base.model_copy(
                update={"taken_at": now, "sequence": self.calls, "alerts": alerts}
            )

        async def close(self) -> None:
            return None

    class Live:
        """The real monitor, counted."""

        def __init__(self) -> None:
            self.monitor = _default_source_factory(config)
            self.calls = 0

        async def sweep(self) -> Snapshot:
            at_cycle(self.calls)
            self.calls += 1
            return await self.monitor.sweep()

        async def close(self) -> None:
            await self.monitor.close()

    source: Replay | Live
    if args.memory_source == "replay":
        lines = Path(args.snapshots).read_text(encoding="utf-8").splitlines()
        source = Replay([Snapshot.model_validate_json(line) for line in lines if line])
    else:
        source = Live()
    app = ConsoleApp(config, source, config_path=path, poll_interval_s=0.0)
    app.run()
    return 0


def measure_memory(
    box: Sandbox, env: dict[str, str], work: Path, cycles: int, source: str
) -> Memory:
    """Run the memory child in a pseudo-terminal until it has done ``cycles`` cycles."""
    out = work / "memory.json"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        str(out),
        "--config",
        str(box.config),
        "--cycles",
        str(cycles),
        "--memory-source",
        source,
    ]
    if source == "replay":
        snapshots = work / "snapshots.jsonl"
        recorded = record_snapshots(box, 60, snapshots)
        argv += ["--snapshots", str(snapshots)]
        driven_by = (
            f"the real ConsoleApp in a {COLS}x{ROWS} pty (real driver), poll interval 0, "
            f"replaying {recorded} snapshots recorded from the sandbox by the real monitor "
            "(faults toggled), re-stamped each cycle"
        )
    else:
        driven_by = (
            f"the real ConsoleApp in a {COLS}x{ROWS} pty (real driver), poll interval 0, "
            "the real monitor sweeping the sandbox at full speed"
        )
    child = PtyProcess(argv, env, screen=False)
    try:
        while child.proc.poll() is None:
            child.pump(0.5)
    finally:
        child.close()
    if not out.is_file():
        raise RuntimeError(f"the memory run ended without a result (exit {child.proc.returncode})")
    data = json.loads(out.read_text())
    return Memory(
        driven_by,
        int(data["cycles"]),
        float(data["seconds"]),
        {int(k): float(v) for k, v in data["rss_mb"].items()},
        child.bytes,
    )


# --- report --------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="each measuring window (default 60)"
    )
    parser.add_argument(
        "--engines",
        choices=("none", "auto"),
        default="none",
        help="sandbox engines: none (fleet only, default) or auto (real ones where installed)",
    )
    parser.add_argument("--starts", type=int, default=5, help="cold starts (median is reported)")
    parser.add_argument("--cycles", type=int, default=10_000, help="refresh cycles for memory")
    parser.add_argument(
        "--memory-source",
        choices=("replay", "live"),
        default="replay",
        help="what feeds the memory run: recorded snapshots (default) or the live monitor",
    )
    parser.add_argument(
        "--fault-every", type=float, default=10.0, help="seconds between fault toggles"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before each window")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("cold", "bytes", "memory"),
        help="leave a measurement out (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--snapshots", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        return memory_child(args)

    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    work = Path(tempfile.mkdtemp(prefix="acgs-bench-dashboard-"))
    env = console_env(work / "state")
    cold: ColdStart | None = None
    windows: tuple[Window, Window] | None = None
    memory: Memory | None = None
    try:
        log(f"starting the sandbox (--engines {args.engines}) ...")
        with sandbox(work, args.engines) as box:
            log(f"sandbox up; real engines: {', '.join(box.real_engines) or 'none'}")
            if "cold" not in args.skip:
                log(f"cold start: {args.starts} console starts, interleaved with import-only runs")
                cold = measure_cold_start(box.config, env, args.starts)
            if "bytes" not in args.skip:
                log(f"bytes and CPU: {args.seconds:g} s changing, then {args.seconds:g} s idle")
                windows = measure_running(box, env, args.seconds, args.fault_every, args.warmup)
            if "memory" not in args.skip:
                log(f"memory: {args.cycles} refresh cycles ({args.memory_source}) ...")
                memory = measure_memory(box, env, work, args.cycles, args.memory_source)
    except RuntimeError as exc:
        print(f"bench_dashboard: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows: list[tuple[str, str, str, bool | None]] = []
    figures: dict[str, Any] = {
        "terminal": {"cols": COLS, "rows": ROWS, "term": "xterm-256color", "refresh_s": 1.0},
        "engines": args.engines,
        "real_engines": box.real_engines,
    }
    if cold is not None:
        c = cold.console_median
        ratio = c / cold.imports_median
        rows.append(
            (
                "cold start to first data frame",
                f"{c:.2f} s (median of {len(cold.console_s)})",
                f"< {COLD_START_TARGET_S:g} s",
                c < COLD_START_TARGET_S,
            )
        )
        rows.append(("  import-only baseline", f"{cold.imports_median:.2f} s (median)", "", None))
        rows.append(("  ratio console / imports", f"{ratio:.2f}", "", None))
        figures["cold_start"] = {**asdict(cold), "console_median_s": c, "ratio": ratio}
        figures["cold_start"]["imports_median_s"] = cold.imports_median
    if windows is not None:
        changing, idle = windows
        rows.append(
            (
                "terminal output, changing data",
                f"{changing.kb_per_min:.1f} KB/min",
                f"<= {BYTES_PER_MIN_TARGET_KB:g} KB/min",
                changing.kb_per_min <= BYTES_PER_MIN_TARGET_KB,
            )
        )
        rows.append(("terminal output, idle", f"{idle.kb_per_min:.1f} KB/min", "", None))
        rows.append(
            (
                "CPU per minute, changing data",
                f"{changing.cpu_per_min:.2f} s/min",
                f"< {CPU_PER_MIN_TARGET_S:g} s/min",
                changing.cpu_per_min < CPU_PER_MIN_TARGET_S,
            )
        )
        sweeps = changing.threads_cpu_s.get("acgs-sweeps")
        if sweeps is not None:
            rows.append(
                (
                    "  of which the monitor's sweeps",
                    f"{sweeps * 60 / changing.seconds:.2f} s/min",
                    "",
                    None,
                )
            )
        rows.append(("CPU per minute, idle", f"{idle.cpu_per_min:.2f} s/min", "", None))
        rows.append(("  console RSS after both windows", f"{idle.rss_mb:.1f} MB", "", None))
        figures["windows"] = [
            {**asdict(w), "kb_per_min": w.kb_per_min, "cpu_s_per_min": w.cpu_per_min}
            for w in windows
        ]
    if memory is not None:
        rows.append(
            (
                f"RSS after {memory.cycles:,} cycles",
                f"{memory.final_mb:.1f} MB",
                f"< {RSS_TARGET_MB:g} MB",
                memory.final_mb < RSS_TARGET_MB,
            )
        )
        growth = memory.growth_pct
        rows.append(
            (
                f"RSS growth, cycle 1,000 -> {memory.cycles:,}",
                "n/a" if growth is None else f"{growth:+.1f} %",
                f"< {RSS_GROWTH_TARGET_PCT:g} %",
                None if growth is None else growth < RSS_GROWTH_TARGET_PCT,
            )
        )
        figures["memory"] = {
            **asdict(memory),
            "final_mb": memory.final_mb,
            "growth_pct": growth,
            "cycles_per_s": memory.cycles / memory.seconds,
        }
    ok = all(r[3] is not False for r in rows)
    figures["rows"] = [
        {
            "metric": m.strip(),
            "measured": v,
            "target": t,
            "verdict": None if p is None else verdict(p),
        }
        for m, v, t, p in rows
    ]
    figures["all_targets_met"] = ok
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0 if ok else 1

    print(
        f"\ndashboard benchmark: {COLS}x{ROWS} pty, TERM=xterm-256color (no COLORTERM), "
        f"1 s refresh; sandbox --engines {args.engines} "
        f"(real: {', '.join(box.real_engines) or 'none'})"
    )
    if cold is not None:
        print(
            "  cold starts: "
            + ", ".join(f"{s:.2f}" for s in cold.console_s)
            + " s; import-only: "
            + ", ".join(f"{s:.2f}" for s in cold.imports_s)
            + " s"
        )
    if windows is not None:
        for w in windows:
            per_min = ", ".join(
                f"{name} {cpu * 60 / w.seconds:.2f}"
                for name, cpu in sorted(w.threads_cpu_s.items(), key=lambda item: -item[1])
            )
            print(
                f"  {w.label:<8} window {w.seconds:.0f} s: {w.bytes:,} bytes, "
                f"{w.cpu_s:.2f} s CPU ({per_min} s/min by thread), {w.faults} fault toggles"
            )
    if memory is not None:
        marks = ", ".join(f"cycle {k:,}: {v:.1f} MB" for k, v in sorted(memory.rss_mb.items()))
        print(
            f"  memory: {memory.cycles:,} cycles in {memory.seconds:.0f} s "
            f"({memory.cycles / memory.seconds:.0f}/s), driven by {memory.driven_by}"
        )
        print(f"          {marks}")
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"\n  {'metric':<{width}}  {'measured':<26}  {'target':<14}  verdict")
    for metric, measured, target, passed in rows:
        print(
            f"  {metric:<{width}}  {measured:<26}  {target:<14}  "
            f"{'' if passed is None else verdict(passed)}"
        )
    print("\nall targets met" if ok else "\nsome targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
