"""Command-line side of the sandbox: ``sandbox up``, ``sandbox fault`` and ``--sandbox``.

For ``console/cli.py``:

- :func:`add_arguments` adds the ``sandbox`` sub-command (with ``up`` and
  ``fault``) to an ``argparse`` sub-parsers object; each sets ``func`` to
  :func:`run_up` or :func:`run_fault`, which take the parsed namespace and
  return the exit code.
- :func:`start_background_sandbox` starts ``sandbox up`` as a background child,
  waits until its config is written and returns ``(config_path, handle)``;
  ``handle.stop()`` tears it down.

``python -m console.sandbox up|fault ...`` runs the same commands without the
console's own CLI. This module imports nothing heavy at import time.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2

_FAULT_FLAGS = (
    "down",
    "slow",
    "error_rate",
    "wrong_hash",
    "missing_hash",
    "garbage",
    "hang",
    "cache_miss",
    "clear",
)


def _non_negative_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 5000:
        raise argparse.ArgumentTypeError(f"must be between 0 and 5000 requests/s, got {text}")
    return value


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``sandbox up``'s options to a parser.

    Args:
        parser: The ``up`` parser.
    """
    parser.add_argument(
        "--write-config",
        metavar="PATH",
        type=Path,
        help="write the console config here (default: acgs-console.toml in the work directory)",
    )
    parser.add_argument(
        "--engines",
        choices=("auto", "none"),
        default="auto",
        help="auto: real HAProxy/Prometheus/Redis/PostgreSQL where installed; "
        "none: embedded defaults only",
    )
    parser.add_argument(
        "--rate", type=_non_negative_rate, default=150.0, help="traffic requests/s (default 150)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="directory for the engines' files (default: a temporary one)"
    )
    parser.add_argument(
        "--hash",
        dest="constitutional_hash",
        default="cdd01ef066bc6cf2",
        help="constitutional hash the services carry",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite a --write-config file the sandbox did not write",
    )
    # Set by start_background_sandbox: a console that dies must not leave a sandbox behind.
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    # Set by start_background_sandbox when it made the work directory for us.
    parser.add_argument("--remove-workdir", action="store_true", help=argparse.SUPPRESS)


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``sandbox fault``'s options to a parser.

    Args:
        parser: The ``fault`` parser.
    """
    parser.add_argument(
        "--config",
        metavar="PATH",
        # SUPPRESS: do not clobber a top-level --config with None.
        default=argparse.SUPPRESS,
        help="the config `sandbox up` wrote (default: the console's usual search order)",
    )
    parser.add_argument(
        "environment",
        nargs="?",
        choices=("blue", "green"),
        help="environment to break or mend (omit with --clear to clear everything)",
    )
    parser.add_argument("--service", metavar="NAME", help="only this orchestrator")
    kinds = parser.add_mutually_exclusive_group(required=True)
    kinds.add_argument("--down", action="store_true", help="close the listener(s)")
    kinds.add_argument("--slow", type=float, metavar="N", help="multiply latency by N")
    kinds.add_argument(
        "--error-rate", type=float, metavar="R", help="answer share R (0..1) of traffic with 500"
    )
    kinds.add_argument(
        "--wrong-hash",
        nargs="?",
        const="0000deadbeef0000",
        metavar="HASH",
        help="carry another constitutional hash",
    )
    kinds.add_argument("--missing-hash", action="store_true", help="carry no hash at all")
    kinds.add_argument("--garbage", action="store_true", help="answer /health with non-JSON bytes")
    kinds.add_argument("--hang", action="store_true", help="accept requests, never answer")
    kinds.add_argument(
        "--cache-miss", type=float, metavar="R", help="force the cache hit ratio to R (0..1)"
    )
    kinds.add_argument("--clear", action="store_true", help="clear faults (service, env or all)")


def add_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sandbox up`` and ``sandbox fault`` to the console's sub-commands.

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``sandbox`` parser.
    """
    sandbox: argparse.ArgumentParser = subparsers.add_parser(
        "sandbox", help="run a local ACGS estate (blue and green) and inject faults into it"
    )
    actions = sandbox.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    up = actions.add_parser(
        "up", help="start the sandbox in the foreground and write a console config for it"
    )
    add_up_arguments(up)
    up.set_defaults(func=run_up)
    fault = actions.add_parser("fault", help="inject or clear a fault in a running sandbox")
    add_fault_arguments(fault)
    fault.set_defaults(func=run_fault)
    return sandbox


# -- sandbox up ----------------------------------------------------------------------------


class _Stop(Exception):
    """SIGTERM (or the parent's exit) asks ``sandbox up`` to tear down."""


def run_up(args: argparse.Namespace) -> int:
    """``acgs-console sandbox up``: run the estate in the foreground until interrupted.

    Args:
        args: ``write_config``, ``engines``, ``rate``, ``workdir``, ``constitutional_hash``,
            ``force``, ``exit_with_parent`` (see :func:`add_up_arguments`).

    Returns:
        0 after a clean interrupt, 1 when the fleet died, 2 when it could not start.
    """
    from console.sandbox.estate import SandboxError, SandboxEstate, check_config_target

    # getattr: the console's own parser may define only the documented options.
    write_config: Path | None = getattr(args, "write_config", None)
    given_workdir: Path | None = getattr(args, "workdir", None)
    force = bool(getattr(args, "force", False))
    exit_with_parent = bool(getattr(args, "exit_with_parent", False))
    rate = float(getattr(args, "rate", 150.0))
    if write_config:
        try:
            check_config_target(Path(write_config), force)
        except SandboxError as exc:
            print(f"sandbox up: {exc}", file=sys.stderr)
            return EXIT_UNUSABLE
    remove_workdir = given_workdir is None or bool(getattr(args, "remove_workdir", False))
    workdir = (
        Path(tempfile.mkdtemp(prefix="acgs-sandbox-"))
        if given_workdir is None
        else Path(given_workdir)
    ).resolve()
    config_path = (Path(write_config) if write_config else workdir / "acgs-console.toml").resolve()
    estate = SandboxEstate(
        workdir,
        engines=getattr(args, "engines", "auto"),
        rate=rate,
        constitutional_hash=getattr(args, "constitutional_hash", "cdd01ef066bc6cf2"),
    )
    parent = os.getppid()

    def on_term(signum: int, frame: object) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    status = EXIT_OK
    try:
        estate.start()
        estate.write_config(config_path, force=force)
        real = estate.endpoints.real
        print(
            f"sandbox up: real engines: {', '.join(real) if real else 'none'}; "
            f"traffic {rate:g} requests/s\n"
            f"config: {config_path}\n"
            f"open the console:  acgs-console --config {config_path}\n"
            f"inject a fault:    acgs-console sandbox fault --config {config_path} "
            "green --slow 10\n"
            "press Ctrl+C to stop",
            flush=True,
        )
        while estate.alive():
            if exit_with_parent and os.getppid() != parent:
                break
            time.sleep(0.5)
        else:
            print("sandbox up: the fleet process exited unexpectedly", file=sys.stderr)
            status = EXIT_FAILED
    except SandboxError as exc:
        print(f"sandbox up: {exc}", file=sys.stderr)
        status = EXIT_UNUSABLE
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        # A second Ctrl+C during teardown must not leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        estate.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if remove_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        print("sandbox up: stopped", file=sys.stderr, flush=True)
    return status


# -- sandbox fault -------------------------------------------------------------------------


def _control_url(config: str | None) -> str:
    """The sandbox control URL from a console config.

    Raises:
        LookupError: With a message to print (bad config, or not a sandbox config).
    """
    from console.config import ConfigError, load_config

    try:
        cfg, path = load_config(config)
    except ConfigError as err:
        raise LookupError("the configuration has problems:\n" + str(err)) from None
    if cfg.sandbox is not None and cfg.sandbox.control_url:
        return cfg.sandbox.control_url.rstrip("/")
    if cfg.traffic.kind == "sandbox":
        return cfg.traffic.control_url.rstrip("/")
    raise LookupError(
        f"{path or '(environment)'} has no sandbox.control_url: it was not written by "
        "`acgs-console sandbox up`; pass --config with the file that command wrote"
    )


def fault_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The control path and JSON body a ``sandbox fault`` invocation stands for.

    Args:
        args: Parsed ``fault`` arguments.

    Returns:
        ``("/control/fault" or "/control/clear", body)``.

    Raises:
        ValueError: When the arguments make no sense together.
    """
    env: str | None = args.environment
    service: str | None = args.service
    if args.clear:
        if env is None and service is not None:
            raise ValueError("--service needs the environment too, e.g. `green --service NAME`")
        body: dict[str, Any] = {}
        if env is not None:
            body["environment"] = env
        if service is not None:
            body["service"] = service
        return "/control/clear", body
    if env is None:
        raise ValueError("name the environment to break: blue or green")
    values: dict[str, Any] = {
        "down": None,
        "slow": args.slow,
        "error_rate": args.error_rate,
        "wrong_hash": args.wrong_hash,
        "missing_hash": None,
        "garbage": None,
        "hang": None,
        "cache_miss": args.cache_miss,
    }
    for kind, value in values.items():
        given = getattr(args, kind)
        if given is not None and given is not False:
            body = {"environment": env, "kind": kind}
            if service is not None:
                body["service"] = service
            if value is not None:
                body["value"] = value
            return "/control/fault", body
    raise ValueError("name a fault: " + ", ".join(f"--{f.replace('_', '-')}" for f in _FAULT_FLAGS))


def run_fault(args: argparse.Namespace) -> int:
    """``acgs-console sandbox fault``: inject or clear a fault through the control endpoint.

    Args:
        args: ``config`` (may be absent), ``environment``, ``service`` and one fault flag.

    Returns:
        0 when the sandbox accepted it, 2 when it refused or could not be reached.
    """
    import httpx

    try:
        path, body = fault_request(args)
        url = _control_url(getattr(args, "config", None))
    except (ValueError, LookupError) as exc:
        print(f"sandbox fault: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        response = httpx.post(url + path, json=body, timeout=5.0)
    except httpx.HTTPError as exc:
        print(
            f"sandbox fault: the sandbox at {url} did not answer ({exc}); is `sandbox up` running?",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": response.text}
    if response.status_code != 200 or not isinstance(payload, dict):
        print(f"sandbox fault: refused: {payload.get('error', payload)}", file=sys.stderr)
        return EXIT_UNUSABLE
    faults = payload.get("faults", [])
    if not faults:
        print("no faults injected")
    for fault in faults:
        where = fault["environment"] + (f"/{fault['service']}" if fault.get("service") else "")
        value = "" if fault.get("value") is None else f" {fault['value']}"
        print(f"{where}: {fault['kind']}{value}")
    return EXIT_OK


# -- the console's --sandbox ------------------------------------------------------------------


class BackgroundSandbox:
    """A ``sandbox up`` running as a child of the console; :meth:`stop` tears it down."""

    def __init__(self, proc: subprocess.Popen[bytes], workdir: Path, config_path: Path) -> None:
        """Wrap a started child.

        Args:
            proc: The ``sandbox up`` process.
            workdir: Its work directory (removed on stop).
            config_path: The config it wrote.
        """
        self.proc = proc
        self.workdir = workdir
        self.config_path = config_path
        self.log_path = workdir / "sandbox.log"

    @property
    def running(self) -> bool:
        """Whether the sandbox process is alive."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the sandbox (it stops its engines and fleet), SIGKILL after ``timeout``.

        Idempotent; also removes the work directory.

        Args:
            timeout: Seconds to wait for a clean teardown.
        """
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


class SandboxStartError(RuntimeError):
    """The background sandbox did not come up; the message carries its output."""


def start_background_sandbox(
    engines: str = "auto",
    rate: float = 150.0,
    workdir: Path | None = None,
    timeout: float = 120.0,
    constitutional_hash: str = "cdd01ef066bc6cf2",
) -> tuple[Path, BackgroundSandbox]:
    """Start ``sandbox up`` in the background and wait until its config is written.

    Its output goes to ``<workdir>/sandbox.log`` (never onto the console's screen), it runs in
    its own session (a Ctrl+C meant for the console does not reach it), and it exits by itself
    if the console dies without stopping it.

    Args:
        engines: ``auto`` or ``none``.
        rate: Traffic requests/s.
        workdir: Work directory (default: a new temporary one).
        timeout: Seconds to wait for the config (PostgreSQL's first start takes a while).
        constitutional_hash: Hash the services carry.

    Returns:
        The config path and the handle to stop the sandbox with.

    Raises:
        SandboxStartError: It exited or wrote no config in time (with its output).
    """
    made = workdir is None
    work = Path(tempfile.mkdtemp(prefix="acgs-sandbox-")) if workdir is None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "acgs-console.toml"
    config_path.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "console.sandbox",
        "up",
        "--engines",
        engines,
        "--rate",
        f"{rate:g}",
        "--workdir",
        str(work),
        "--write-config",
        str(config_path),
        "--hash",
        constitutional_hash,
        "--exit-with-parent",
        *(["--remove-workdir"] if made else []),
    ]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    log_path = work / "sandbox.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    handle = BackgroundSandbox(proc, work, config_path)
    atexit.register(handle.stop)
    deadline = time.monotonic() + timeout
    while not config_path.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            why = (
                f"exited with status {proc.returncode}"
                if proc.poll() is not None
                else f"wrote no config within {timeout:g} s"
            )
            try:
                output = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            except OSError:
                output = "(no output)"
            handle.stop()
            raise SandboxStartError(f"the sandbox {why}; its output:\n{output}")
        time.sleep(0.1)
    return config_path, handle


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m console.sandbox up|fault ...``.

    Args:
        argv: Arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m console.sandbox", description="The acgs-console sandbox estate."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = sub.add_parser("up", help="start the sandbox in the foreground")
    add_up_arguments(up)
    up.set_defaults(func=run_up)
    fault = sub.add_parser("fault", help="inject or clear a fault")
    add_fault_arguments(fault)
    fault.set_defaults(func=run_fault)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
