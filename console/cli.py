"""The ``acgs-console`` entry point: the TUI, the sandbox, one-shot commands.

Each sub-command's module is imported only when that sub-command runs, so
``acgs-console config validate`` never pays for Textual, and the TUI's first
frame never waits for the sandbox or the audit code.

Exit codes shared by the one-shot commands: 0 all good, 1 findings,
2 cannot run (bad configuration, nothing observable).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_UNUSABLE = 2

FIRST_SWEEP_WAIT_S = 0.4
"""The TUI's start waits this long at most for the first sweep, so its first frame has data."""


def _print_config_error(err: Exception) -> None:
    from console.config import ConfigError

    assert isinstance(err, ConfigError)
    print(f"acgs-console: the configuration has {len(err.problems)} problem(s):", file=sys.stderr)
    for problem in err.problems:
        print(f"  {problem.file}: {problem.field}", file=sys.stderr)
        print(f"      {problem.message}; got {problem.value}", file=sys.stderr)
        print(f"      fix: {problem.fix}", file=sys.stderr)


def _config_validate(args: argparse.Namespace) -> int:
    from console.config import ConfigError, load_config

    try:
        cfg, path = load_config(args.path or args.config)
    except ConfigError as err:
        _print_config_error(err)
        return EXIT_UNUSABLE
    envs = ", ".join(f"{e.value} ({len(c.services)} services)" for e, c in cfg.environments.items())
    print(
        f"{path or '(environment)'}: valid. Environments: {envs}; traffic switch: {cfg.traffic.kind}; "
        f"metrics: {'prometheus ' + cfg.prometheus.url if cfg.prometheus.url else 'direct scrape'}."
    )
    return EXIT_OK


def _config_example(args: argparse.Namespace) -> int:
    from console.config_example import example_config

    sys.stdout.write(example_config())
    return EXIT_OK


def _runbook_validate(args: argparse.Namespace) -> int:
    from console.runbook.loader import validate_command

    return validate_command(args.path, args.config)


def _tui(args: argparse.Namespace) -> int:
    from console.config import ConfigError, load_config

    handle = None
    config_path: Path | str | None = args.config
    if args.sandbox:
        from console.sandbox.cli import SandboxStartError, start_background_sandbox

        print("acgs-console: starting the sandbox estate ...", file=sys.stderr)
        try:
            config_path, handle = start_background_sandbox(engines=args.engines)
        except SandboxStartError as err:
            print(f"acgs-console: the sandbox did not start: {err}", file=sys.stderr)
            return EXIT_UNUSABLE
    try:
        try:
            cfg, path = load_config(config_path)
        except ConfigError as err:
            _print_config_error(err)
            return EXIT_UNUSABLE
        # The monitor is built on its own thread while the UI is imported; then its first
        # sweep runs on a quiet interpreter (a probe timed while this thread works would
        # read hundreds of ms), so the first frame shows data. A slow sweep is not awaited.
        from console.sweeps import start_first_sweep

        first_sweep = start_first_sweep(cfg, hold=True)
        from console.ui.app import run_tui

        first_sweep.go()
        first_sweep.wait(FIRST_SWEEP_WAIT_S)
        return run_tui(cfg, path, read_only=args.read_only, first_sweep=first_sweep)
    finally:
        if handle is not None:
            handle.stop()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(
        prog="acgs-console",
        description="Terminal operations console for ACGS blue-green production deployments.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $ACGS_CONSOLE_CONFIG, "
        "./acgs-console.toml, then the user config dir)",
    )
    parser.add_argument(
        "--sandbox",
        action="store_true",
        help="start a local sandbox estate in the background and open the console on it",
    )
    parser.add_argument(
        "--engines",
        choices=("auto", "none"),
        default="auto",
        help="with --sandbox: use real HAProxy/Prometheus/PostgreSQL/Redis when present (auto)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="an observer console that can never drive"
    )
    parser.set_defaults(func=_tui)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    config = sub.add_parser("config", help="validate or print an example configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    validate = config_sub.add_parser(
        "validate", help="check a config file; exit 0 valid, 2 invalid"
    )
    validate.add_argument("path", nargs="?", help="the file (default: the usual search order)")
    validate.set_defaults(func=_config_validate)
    example = config_sub.add_parser(
        "example", help="print a commented example covering every field"
    )
    example.set_defaults(func=_config_example)

    from console import audit_cli
    from console.sandbox.cli import add_arguments as add_sandbox

    add_sandbox(sub)
    audit_cli.add_arguments(sub)
    runbook = sub.add_parser("runbook", help="validate a runbook data file")
    runbook_sub = runbook.add_subparsers(dest="runbook_command", metavar="ACTION", required=True)
    runbook_validate = runbook_sub.add_parser(
        "validate", help="check a runbook file (default: the shipped one); exit 0 valid, 2 invalid"
    )
    runbook_validate.add_argument("path", nargs="?", help="the runbook file")
    runbook_validate.set_defaults(func=_runbook_validate)

    from console.check import add_arguments as add_check
    from console.rules import add_rules_export_arguments

    add_check(
        sub.add_parser("check", help="one sweep; exit 0 all good, 1 findings, 2 cannot observe")
    )
    rules = sub.add_parser("rules", help="the runbook's alert rules")
    rules_sub = rules.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    add_rules_export_arguments(
        rules_sub.add_parser("export", help="write them as Prometheus alerting rules YAML")
    )

    from console import report_cli, rollback_cli

    report_cli.add_arguments(sub)
    rollback_cli.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
