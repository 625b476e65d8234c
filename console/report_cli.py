"""``acgs-console report``: the deployment or incident report, from the audit trail.

``acgs-console report DEPLOYMENT_ID [--format md|json] [--output FILE] [--config PATH]``
writes the deployment report; ``--incident`` writes the incident report of that
deployment's latest rollback instead, and an incident id (``YYYYMMDD_HHMMSS-xxxxxx``,
as the rollback prints it) given in place of the deployment id selects one rollback.

The report goes to stdout, or to FILE (written atomically); without ``--format`` a FILE
ending in ``.json`` gets JSON, anything else Markdown. The chain is verified while the
report is built, and the verdict is part of the report.

Exit codes:

* ``0`` the report was written and the audit chain verifies;
* ``1`` the report was written, but the audit chain does not verify (the report says where
  it breaks and marks the records the chain no longer vouches for);
* ``2`` no report: unknown deployment or incident, the audit store cannot be read, the
  configuration is unusable, or FILE cannot be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_CHAIN_BROKEN = 1
EXIT_UNUSABLE = 2

EXIT_CODES_HELP = (
    "exit codes: 0 report written, audit chain verifies; 1 report written, but the audit "
    "chain does NOT verify (marked in the report); 2 no report: unknown deployment or "
    "incident, audit store unreachable, bad configuration, or the output cannot be written"
)


def add_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` command to the CLI's sub-parsers; it sets ``func=run``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="deployment or incident report from the audit trail (Markdown or JSON)",
        description="Build the report of a deployment from its audit records: timeline, who "
        "did what, the evidence at every gate, the traffic steps and what was measured at "
        "each, alerts, rollbacks, the constitutional hash and the verified chain head. With "
        "--incident (or an incident id), the incident report of a rollback.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument(
        "deployment_id",
        metavar="DEPLOYMENT_ID",
        help="the deployment (YYYYMMDD_HHMMSS), or a rollback's incident id",
    )
    parser.add_argument(
        "--format",
        choices=("md", "json"),
        default=None,
        help="md (default) or json; with --output FILE.json, json",
    )
    parser.add_argument(
        "--output", "-o", metavar="FILE", type=Path, help="write here instead of stdout"
    )
    parser.add_argument(
        "--incident",
        action="store_true",
        help="the incident report of the deployment's latest rollback",
    )
    # SUPPRESS keeps the top-level --config when this one is not given.
    parser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
    parser.set_defaults(func=run)
    return parser


def _err(message: str) -> None:
    print(f"acgs-console report: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Build, render and write one report; returns the exit code."""
    from console.config import ConfigError, load_config

    try:
        cfg, _ = load_config(getattr(args, "config", None))
    except ConfigError as err:
        _err(f"the configuration has {len(err.problems)} problem(s):")
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_UNUSABLE

    from console import report as rep
    from console.audit import open_trail

    target = str(args.deployment_id).strip()
    output: Path | None = args.output
    fmt = args.format or ("json" if output is not None and output.suffix == ".json" else "md")
    trail = open_trail(cfg)
    try:
        built: rep.DeploymentReport | rep.IncidentReport
        if args.incident or rep.is_incident_id(target):
            built = rep.build_incident_report(trail, target)
        else:
            built = rep.build_deployment_report(trail, target)
    except rep.ReportError as exc:
        _err(str(exc))
        return EXIT_UNUSABLE
    finally:
        trail.close()

    text = rep.render_json(built) if fmt == "json" else rep.render_markdown(built)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            rep.write_report(text, output)
        except OSError as exc:
            _err(f"cannot write {output}: {exc.strerror or exc}")
            return EXIT_UNUSABLE
        print(f"wrote {output}", file=sys.stderr)
    if not built.chain.ok:
        _err(f"the audit chain does not verify: {built.chain.summary}")
        return EXIT_CHAIN_BROKEN
    return EXIT_OK
