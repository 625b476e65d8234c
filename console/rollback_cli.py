"""``acgs-console rollback --to blue``: the emergency rollback without the TUI.

The same procedure as the console's rollback key (:mod:`console.rollback`), for paging
automation and for an operator without the TUI. The clock starts when the command starts;
progress (each step, each failed switch attempt with the load balancer's text) goes to
stderr as it happens, the summary (or, with ``--json``, the whole result) to stdout.

Before it moves traffic it checks that blue is safe to roll back to (healthy, carrying the
constitutional hash). When it is not, it names why and asks for confirmation on a terminal;
without a terminal it refuses, unless ``--yes`` was given (which also skips that check).

Exit codes:

* ``0`` rolled back and verified: the load balancer reads back 0 % green, blue is healthy,
  requests reach blue and none reach green, the hash is on every blue response, and the
  incident record was written (or spooled);
* ``1`` traffic is on blue by the load balancer's read-back, but a verification step found
  a problem (named on stderr and in the report);
* ``2`` cannot run: the configuration or the traffic switch settings are unusable;
* ``3`` the switch failed: traffic is NOT confirmed on blue; the manual fallback is printed;
* ``4`` refused: blue is not safe and nobody confirmed (no ``--yes``, no terminal to ask).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from console.config import AppConfig
    from console.rollback import RollbackEvent, RollbackResult, RollbackSafety

EXIT_VERIFIED = 0
EXIT_UNVERIFIED = 1
EXIT_CANNOT_RUN = 2
EXIT_SWITCH_FAILED = 3
EXIT_REFUSED = 4

EXIT_CODES_HELP = (
    "exit codes: 0 rolled back and verified; 1 traffic on blue (read back) but verification "
    "found problems; 2 cannot run (configuration); 3 switch failed, traffic NOT confirmed on "
    "blue (manual fallback printed); 4 refused: blue not safe and not confirmed"
)

DEFAULT_REASON = "emergency rollback from the command line"


def add_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``rollback`` command to the CLI's sub-parsers; it sets ``func=run``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "rollback",
        help="emergency rollback: all traffic to blue, verified and recorded",
        description="Run the runbook's emergency rollback: switch 100% of traffic to blue, "
        "verify the load balancer's read-back, blue's health, that requests reach blue, and "
        "the constitutional hash; write the incident record and report.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument(
        "--to",
        required=True,
        choices=("blue",),
        help="the environment to roll back to (only blue)",
    )
    parser.add_argument("--reason", default=DEFAULT_REASON, help="why (goes into the record)")
    parser.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="do not ask: skip the safety check and roll back even to an unhealthy blue",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    # SUPPRESS keeps the top-level --config when this one is not given.
    parser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
    parser.add_argument(
        "--report-dir",
        metavar="DIR",
        type=Path,
        help="where the incident report goes (default: rollback.report_dir or the state dir)",
    )
    parser.add_argument("--operator", help="who is acting (default: the config's, or user@host)")
    parser.add_argument("--deployment-id", help="the deployment this rollback belongs to")
    parser.set_defaults(func=run)
    return parser


def _err(message: str) -> None:
    print(f"acgs-console rollback: {message}", file=sys.stderr, flush=True)


def _print_event(event: RollbackEvent) -> None:
    from console.rollback import RollbackEventKind

    stamp = f"[{event.at_ms:9.1f} ms]"
    if event.kind is RollbackEventKind.STARTED:
        line = f"{stamp} {event.message}"
    elif event.kind is RollbackEventKind.STEP_FINISHED and event.finished_step is not None:
        step = event.finished_step
        state = "skip" if step.skipped else ("ok  " if step.ok else "FAIL")
        line = f"{stamp} {state} {step.title}: {step.detail}"
    elif event.kind is RollbackEventKind.ATTEMPT_FAILED:
        retry = (
            f"; retrying in {event.retry_in_s:g} s"
            if event.retry_in_s is not None
            else "; no retries left"
        )
        line = f"{stamp} SWITCH ATTEMPT {event.attempt} FAILED: {event.message}{retry}"
    elif event.kind is RollbackEventKind.MANUAL_FALLBACK:
        line = f"{stamp} MANUAL FALLBACK: {event.message}"
    else:
        return
    print(line, file=sys.stderr, flush=True)


def _summary(result: RollbackResult) -> str:
    from console.rollback import RollbackOutcome

    head = {
        RollbackOutcome.VERIFIED: "rolled back to blue and verified",
        RollbackOutcome.UNVERIFIED: "traffic is on blue, but verification found problems",
        RollbackOutcome.SWITCH_FAILED: "SWITCH FAILED: traffic is NOT confirmed on blue",
        RollbackOutcome.REFUSED: "refused: blue is not safe and the rollback was not confirmed",
    }[result.outcome]
    lines = [
        f"{head} ({result.incident_id})",
        f"total {result.total_ms:.0f} ms of the {result.budget_s:g} s budget"
        + ("" if result.within_budget or not result.steps else " (OVER BUDGET)"),
    ]
    for step in result.steps:
        state = "skip" if step.skipped else ("ok  " if step.ok else "FAIL")
        lines.append(f"  {state} {step.ended_ms:9.1f} ms  {step.title}: {step.detail}")
    if result.problems:
        lines.append("problems:")
        lines += [f"  - {p}" for p in result.problems]
    if result.manual_fallback:
        lines.append(f"MANUAL FALLBACK: {result.manual_fallback}")
    if result.report_paths:
        lines.append("incident report: " + ", ".join(result.report_paths))
    return "\n".join(lines)


def _interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _ask(safety: RollbackSafety) -> bool:
    print("Blue is not safe to roll back to:", file=sys.stderr)
    for reason in safety.reasons:
        print(f"  - {reason}", file=sys.stderr)
    try:
        answer = input("Roll back to blue anyway? Type 'blue' to confirm: ")
    except EOFError:
        return False
    return answer.strip().lower() == "blue"


async def _rollback(args: argparse.Namespace, cfg: AppConfig, started: float) -> int:
    from console.rollback import RollbackController, RollbackOutcome

    controller = RollbackController(cfg, report_dir=args.report_dir, operator=args.operator)
    try:
        try:
            controller.switch()
        except ValueError as exc:
            _err(f"the traffic switch cannot be built from the configuration: {exc}")
            return EXIT_CANNOT_RUN
        safety: RollbackSafety | None = None
        confirmed = False
        if not args.yes:
            safety = await controller.preflight(None)
            if not safety.safe:
                confirmed = _interactive() and await asyncio.to_thread(_ask, safety)
                if not confirmed:
                    for reason in safety.reasons:
                        _err(f"blue is not safe: {reason}")
                    _err("refused (exit 4): pass --yes to roll back anyway")
                    result = await controller.refuse(
                        started=started,
                        reason=args.reason,
                        safety=safety,
                        operator=args.operator,
                        deployment_id=args.deployment_id,
                    )
                    _output(args, result)
                    return EXIT_REFUSED
        result = await controller.run(
            started=started,
            reason=args.reason,
            operator=args.operator,
            trigger="cli",
            safety=safety,
            confirmed=confirmed,
            progress=_print_event,
            deployment_id=args.deployment_id,
        )
    finally:
        await controller.aclose()
    _output(args, result)
    return {
        RollbackOutcome.VERIFIED: EXIT_VERIFIED,
        RollbackOutcome.UNVERIFIED: EXIT_UNVERIFIED,
        RollbackOutcome.SWITCH_FAILED: EXIT_SWITCH_FAILED,
        RollbackOutcome.REFUSED: EXIT_REFUSED,
    }[result.outcome]


def _output(args: argparse.Namespace, result: RollbackResult) -> None:
    if args.json:
        print(result.model_dump_json(indent=2), flush=True)
    else:
        print(_summary(result), flush=True)


def run(args: argparse.Namespace) -> int:
    """Run ``acgs-console rollback``; returns the exit code (see the module docstring)."""
    started = time.monotonic()
    from console.config import ConfigError, load_config

    if args.to != "blue":
        _err(f"can only roll back to blue, not {args.to!r}")
        return EXIT_CANNOT_RUN
    try:
        cfg, _ = load_config(getattr(args, "config", None))
    except ConfigError as err:
        _err(f"the configuration has {len(err.problems)} problem(s):")
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    return asyncio.run(_rollback(args, cfg, started))


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m console.rollback_cli ...``), for tests and paging."""
    parser = argparse.ArgumentParser(prog="acgs-console")
    parser.add_argument("--config", metavar="PATH", help="config file")
    add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
