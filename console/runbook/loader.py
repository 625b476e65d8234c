"""Loading a runbook file: the shipped default or the operator's own, validated like the config.

``runbook = "PATH"`` in the config points the console at an operator's runbook
file (a relative path is taken from the config file's directory). Whatever is
wrong with it raises :class:`console.config.ConfigError`, whose problems each
name the file, the field path (``procedures[0](deployment).phases[2](phase-2).
steps[0](switch-10).green_percentage``), the bad value and the fix: the same
shape the CLI already prints for the config.

The runbook is also checked against the config: ``[commands.<id>]``,
``monitor_windows.<id>`` and the four-eyes gates must name steps that exist
and are of the right kind, and the constitutional hashes must agree.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from console.config import AppConfig, ConfigError, ConfigProblem
from console.runbook.model import CommandStep, MonitorStep, Runbook
from console.runbook.predicates import PREDICATE_KEYS

DEFAULT_RUNBOOK_NAME = "default_runbook.toml"
_STEP_KINDS = "'check', 'command', 'traffic', 'monitor', 'attestation' or 'report'"
_TAGS = frozenset(
    {"check", "command", "traffic", "monitor", "attestation", "report", *PREDICATE_KEYS}
)

_FIXES = {
    "missing": "add this field",
    "extra_forbidden": "remove it or check its spelling (see the shipped default_runbook.toml)",
    "literal_error": "use one of the allowed values",
    "union_tag_invalid": f"set kind to {_STEP_KINDS}",
    "union_tag_not_found": f"add kind = {_STEP_KINDS}",
    "check_kind": "give the check table exactly one of: " + ", ".join(PREDICATE_KEYS),
    "float_parsing": "use a number",
    "float_type": "use a number",
    "int_parsing": "use a whole number",
    "int_type": "use a whole number",
    "bool_parsing": "use true or false",
    "bool_type": "use true or false",
    "string_type": "use a quoted string",
    "string_pattern_mismatch": "use lower-case letters, digits and dashes (e.g. 'switch-10')",
    "string_too_short": "give a non-empty text",
    "list_type": "use a list",
    "too_short": "give at least one entry",
    "dict_type": "use a table",
    "model_type": "use a table",
    "greater_than": "use a larger number",
    "greater_than_equal": "use a larger number",
    "less_than_equal": "use a smaller number",
    "enum": "use 'blue' or 'green'",
}


def default_runbook_text() -> str:
    """The text of the runbook shipped with the console."""
    return resources.files("console.runbook").joinpath(DEFAULT_RUNBOOK_NAME).read_text("utf-8")


def _readable_path(loc: tuple[str | int, ...], data: Any) -> str:
    """``procedures[0](deployment).phases[1](phase-1).steps[2](switch-10).field``."""
    out: list[str] = []
    cur: Any = data
    for i, part in enumerate(loc):
        if isinstance(part, str) and part in _TAGS and i > 0 and isinstance(loc[i - 1], int):
            # The union tag pydantic puts right after a list item; for a check table it is
            # also one of the table's keys, so it must not be taken for the field.
            continue
        if isinstance(part, int) and isinstance(cur, list):
            item = cur[part] if 0 <= part < len(cur) else None
            label = f"[{part}]"
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                label += f"({item['id']})"
            if out:
                out[-1] += label
            else:
                out.append(label)
            cur = item
        elif isinstance(cur, dict) and part in cur:
            out.append(str(part))
            cur = cur[part]
        elif isinstance(part, str) and part in _TAGS:
            continue  # a union tag pydantic puts in the path; the file has no such key
        else:
            out.append(str(part))
            cur = None
    return ".".join(out) or "(top level)"


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return (
            "a table with keys " + ", ".join(sorted(map(str, value))) if value else "an empty table"
        )
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _problems(err: ValidationError, source: str, data: Any) -> list[ConfigProblem]:
    problems = []
    for e in err.errors(include_url=False):
        field = _readable_path(tuple(e["loc"]), data)
        msg = str(e["msg"]).removeprefix("Value error, ")
        fix = _FIXES.get(e["type"], "see the shipped default_runbook.toml for the expected shape")
        if e["type"] == "value_error":
            msg, fix = "invalid value", msg
        elif e["type"] == "literal_error":
            fix = "use " + msg.split("Input should be ", 1)[-1]
        value = "nothing" if e["type"] == "missing" else _shown(e.get("input"))
        problems.append(ConfigProblem(file=source, field=field, value=value, message=msg, fix=fix))
    return problems


def parse_runbook(text: str, source: str = "(runbook)") -> Runbook:
    """Parse and validate runbook TOML text.

    Raises:
        ConfigError: naming file, field, value and fix for every problem.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    file=source,
                    field="(syntax)",
                    value=str(exc),
                    message="not valid TOML",
                    fix="correct the TOML syntax at the line and column shown",
                )
            ]
        ) from None
    try:
        return Runbook.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, source, data)) from None


def load_runbook(path: Path | str | None = None) -> Runbook:
    """Load a runbook file, or the shipped default when ``path`` is None.

    Raises:
        ConfigError: missing, unreadable or invalid file.
    """
    if path is None:
        return parse_runbook(default_runbook_text(), f"(shipped) {DEFAULT_RUNBOOK_NAME}")
    p = Path(path).expanduser()
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [
                ConfigProblem(
                    file=source,
                    field="(file)",
                    value="missing",
                    message="no such runbook file",
                    fix="check the config's `runbook` path, or remove it to use the shipped one",
                )
            ]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            [
                ConfigProblem(
                    file=source,
                    field="(file)",
                    value="binary data",
                    message="not UTF-8 text",
                    fix="save the runbook as UTF-8 TOML",
                )
            ]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    file=source,
                    field="(file)",
                    value=exc.strerror or str(exc),
                    message="cannot read the runbook file",
                    fix="check its path and permissions",
                )
            ]
        ) from None
    return parse_runbook(text, source)


def resolve_runbook_path(cfg: AppConfig, config_path: Path | None) -> Path | None:
    """The runbook file the config names (relative to the config file), or None for the default."""
    if cfg.runbook is None:
        return None
    p = Path(cfg.runbook).expanduser()
    if not p.is_absolute() and config_path is not None:
        p = Path(config_path).parent / p
    return p


def check_against_config(
    runbook: Runbook, cfg: AppConfig, runbook_source: str, config_source: str
) -> list[ConfigProblem]:
    """Problems between a runbook and a config (step ids the config names, hashes)."""
    problems: list[ConfigProblem] = []
    steps = {step.id: step for _, _, step in runbook.all_steps()}
    command_ids = sorted(i for i, s in steps.items() if isinstance(s, CommandStep))
    monitor_ids = sorted(i for i, s in steps.items() if isinstance(s, MonitorStep))
    for step_id in cfg.commands:
        step = steps.get(step_id)
        if step is None or not isinstance(step, CommandStep):
            what = "no runbook step has this id" if step is None else f"step is a {step.kind} step"
            problems.append(
                ConfigProblem(
                    file=config_source,
                    field=f"commands.{step_id}",
                    value=repr(step_id),
                    message=f"{what}; only command steps run site commands",
                    fix="use one of the command step ids: " + ", ".join(command_ids),
                )
            )
    for step_id, seconds in cfg.monitor_windows.items():
        if not isinstance(steps.get(step_id), MonitorStep):
            problems.append(
                ConfigProblem(
                    file=config_source,
                    field=f"monitor_windows.{step_id}",
                    value=repr(step_id),
                    message="not a monitor step of the runbook",
                    fix="use one of: " + ", ".join(monitor_ids),
                )
            )
        elif not seconds > 0:
            problems.append(
                ConfigProblem(
                    file=config_source,
                    field=f"monitor_windows.{step_id}",
                    value=repr(seconds),
                    message="a window must last some time",
                    fix="use a number of seconds greater than 0",
                )
            )
    for gate in cfg.coordination.four_eyes_gates:
        if gate not in steps:
            problems.append(
                ConfigProblem(
                    file=config_source,
                    field="coordination.four_eyes_gates",
                    value=repr(gate),
                    message="no runbook step has this id",
                    fix="use step ids of the runbook, e.g. 'switch-100', 'decommission-blue'",
                )
            )
    if runbook.constitutional_hash != cfg.constitutional_hash:
        problems.append(
            ConfigProblem(
                file=runbook_source,
                field="constitutional_hash",
                value=repr(runbook.constitutional_hash),
                message=f"differs from the config's hash {cfg.constitutional_hash!r}",
                fix="make the runbook and the config carry the same hash",
            )
        )
    return problems


def load_runbook_for(cfg: AppConfig, config_path: Path | None = None) -> Runbook:
    """The runbook the config asks for, validated on its own and against the config.

    Raises:
        ConfigError: every problem found.
    """
    path = resolve_runbook_path(cfg, config_path)
    runbook = load_runbook(path)
    source = str(path) if path is not None else f"(shipped) {DEFAULT_RUNBOOK_NAME}"
    problems = check_against_config(runbook, cfg, source, str(config_path or "(config)"))
    if problems:
        raise ConfigError(problems)
    return runbook


def validate_command(runbook_path: str | None, config_path: str | None) -> int:
    """``acgs-console runbook validate [PATH] [--config FILE]``: 0 valid, 2 problems.

    With a config (``--config``, or the one the usual search finds), the runbook it
    names, or ``PATH``, is also checked against it; without one, the runbook alone.
    """
    from console.config import find_config, load_config

    try:
        config_file = find_config(config_path)
        if config_file is not None:
            cfg, cfg_path = load_config(config_file)
            if runbook_path is not None:
                cfg = cfg.model_copy(update={"runbook": Path(runbook_path).resolve()})
            runbook = load_runbook_for(cfg, cfg_path)
        else:
            runbook = load_runbook(runbook_path)
    except ConfigError as err:
        print(f"acgs-console: {len(err.problems)} problem(s):", file=sys.stderr)
        for p in err.problems:
            print(f"  {p.file}: {p.field}", file=sys.stderr)
            print(f"      {p.message}; got {p.value}", file=sys.stderr)
            print(f"      fix: {p.fix}", file=sys.stderr)
        return 2
    steps = sum(1 for _ in runbook.all_steps())
    against = f" (checked against {config_file})" if config_file is not None else ""
    print(
        f"{runbook_path or '(shipped runbook)'}: valid{against}. {runbook.title} "
        f"{runbook.version}: {len(runbook.procedures)} procedures, {steps} steps."
    )
    return 0
