"""How runbook steps read on screen: state badges, evidence lines, budgets, gates.

Free of Textual (like :mod:`widgets.verdicts`), so the words and symbols are tested on their
own. Every state carries a symbol and a word, never colour alone:

=========  ======  ==========================================================
state      badge   meaning
=========  ======  ==========================================================
pending    ○       not reached yet
running    ▶       a command, a traffic move or a monitor window in progress
passed     ✔       passed on evidence
failed     ✖       failed, with the evidence and the reason
skipped    ↷       skipped, with the operator's reason
attested   ✎       the operator confirmed it with a note
=========  ======  ==========================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from backends.models import TrafficSplit
from console.runbook.engine import MonitorProgress, PhaseClock, StepRecord, StepState
from console.runbook.model import (
    AttestationStep,
    CheckStep,
    CommandStep,
    MonitorStep,
    Step,
    StepKind,
    TrafficStep,
)
from console.runbook.predicates import Outcome, Verdict
from widgets.verdicts import Badge, Level, clock_time, format_duration

STEP_BADGES: dict[StepState, Badge] = {
    StepState.PENDING: Badge(Level.UNKNOWN, "pending", "○"),
    StepState.RUNNING: Badge(Level.WARNING, "running", "▶"),
    StepState.PASSED: Badge(Level.OK, "passed", "✔"),
    StepState.FAILED: Badge(Level.CRITICAL, "failed", "✖"),
    StepState.SKIPPED: Badge(Level.WARNING, "skipped", "↷"),
    StepState.ATTESTED: Badge(Level.OK, "attested", "✎"),
}
"""One badge per step state."""

BADGE_WIDTH = max(len(b.text) for b in STEP_BADGES.values())
"""Cells the widest step badge takes (``✎ attested``)."""

VERDICT_BADGES: dict[Verdict, Badge] = {
    Verdict.PASS: Badge(Level.OK, "pass"),
    Verdict.FAIL: Badge(Level.CRITICAL, "fail"),
    Verdict.UNKNOWN: Badge(Level.UNKNOWN, "unknown"),
}
"""One badge per predicate verdict (unknown never reads as a pass)."""

KIND_WORDS: dict[StepKind, str] = {
    StepKind.CHECK: "check",
    StepKind.COMMAND: "command",
    StepKind.TRAFFIC: "traffic",
    StepKind.MONITOR: "monitor window",
    StepKind.ATTESTATION: "attestation",
    StepKind.REPORT: "report",
}


def step_badge(state: StepState) -> Badge:
    """The badge of a step state."""
    return STEP_BADGES[state]


def verdict_badge(verdict: Verdict) -> Badge:
    """The badge of one predicate's verdict."""
    return VERDICT_BADGES[verdict]


def who_when(record: StepRecord) -> str:
    """``alice@bastion 10:02:03`` (UTC), with the second operator on four-eyes steps."""
    at = record.finished_at or record.started_at
    parts = []
    if record.operator:
        parts.append(record.operator)
    if record.approved_by:
        parts.append(f"approved by {record.approved_by}")
    if at is not None:
        parts.append(clock_time(at))
    return " ".join(parts)


def outcome_line(o: Outcome) -> str:
    """``green: p99_latency_ms < 5: 3.2 ms (< 5)`` plus why, when it did not pass."""
    where = f"[{o.environment}] " if o.environment else ""
    measured = o.measured or "?"
    threshold = f" (want {o.threshold})" if o.threshold else ""
    detail = f": {o.detail}" if o.detail and o.verdict is not Verdict.PASS else ""
    return f"{where}{o.check}: {measured}{threshold}{detail}"


def _outcomes(evidence: dict[str, Any]) -> list[Outcome]:
    raw = evidence.get("outcomes")
    if not isinstance(raw, list):
        return []
    out = []
    for item in raw:
        try:
            out.append(Outcome.model_validate(item))
        except ValueError:
            continue
    return out


def evidence_summary(step: Step, record: StepRecord) -> str:
    """The checklist's evidence column: the one line that says why a step stands where it does."""
    ev = record.evidence
    state = record.state
    if state is StepState.PENDING:
        return ""
    if state is StepState.SKIPPED:
        return f"skipped: {record.reason}"
    if state is StepState.ATTESTED:
        return f"note: {record.reason}"
    if state is StepState.RUNNING:
        return "running since " + clock_time(record.started_at)
    if isinstance(step, CheckStep) or "outcomes" in ev:
        outcomes = _outcomes(ev)
        bad = [o for o in outcomes if o.verdict is not Verdict.PASS]
        if bad:
            return "; ".join(outcome_line(o) for o in bad)
        shown = [f"{o.measured}" for o in outcomes if o.measured]
        return ", ".join(dict.fromkeys(shown)) or record.reason
    if "exit_code" in ev or "argv" in ev:
        code = ev.get("exit_code")
        text = f"exit {code}" if code is not None else "no exit code"
        if ev.get("timed_out"):
            text += ", timed out"
        if ev.get("cancelled"):
            text += ", cancelled"
        return text if state is StepState.PASSED else f"{text}: {record.reason}"
    if isinstance(step, TrafficStep) or "read_back" in ev:
        rb = ev.get("read_back") if isinstance(ev.get("read_back"), dict) else {}
        green = rb.get("green_percentage") if rb else None
        weights = ""
        if rb and rb.get("blue_weight") is not None:
            weights = f" (weights {rb.get('blue_weight')}/{rb.get('green_weight')})"
        got = f"read back {green:g}% green{weights}" if isinstance(green, int | float) else ""
        if state is StepState.PASSED:
            return got
        return "; ".join(x for x in (record.reason, got) if x)
    if isinstance(step, MonitorStep) or "snapshots" in ev:
        snaps = ev.get("snapshots")
        dur = ev.get("duration_s")
        base = (
            f"{snaps} snapshots over {format_duration(float(dur))}"
            if isinstance(snaps, int) and isinstance(dur, int | float)
            else ""
        )
        if state is StepState.PASSED:
            return base
        return "; ".join(x for x in (record.reason, base) if x)
    if "location" in ev:
        return f"written to {ev['location']}"
    return record.reason


def command_line(text: str) -> str:
    """A runbook command on one line (shell line continuations joined)."""
    return " ".join(text.replace("\\\n", " ").split())


def step_detail_lines(step: Step, kind: StepKind) -> list[tuple[str, str]]:
    """The current step's description as ``(label, text)`` lines."""
    lines: list[tuple[str, str]] = [
        ("section", step.section),
        ("runbook", step.source),
        ("kind", KIND_WORDS[kind] + ("" if kind.value == step.kind else f" ({step.kind} unset)")),
    ]
    if step.description:
        lines.append(("about", step.description))
    if isinstance(step, AttestationStep) and step.prompt:
        lines.append(("confirm", step.prompt))
    if isinstance(step, CommandStep) and kind is StepKind.ATTESTATION:
        lines.append(
            (
                "note",
                f"no command is configured for this step ([commands.{step.id}]): "
                "attest what you ran and saw",
            )
        )
    if isinstance(step, TrafficStep):
        lines.append(("target", f"{step.green_percentage:g}% of traffic to green"))
    if step.runbook_command:
        lines.append(("runbook cmd", command_line(step.runbook_command)))
    if step.confirm_typed is not None:
        lines.append(("destructive", f"type {step.confirm_typed.value!r} to confirm"))
    return lines


def phase_countdown(clock: PhaseClock) -> tuple[Level, str]:
    """A phase's budget as a countdown: ``4m12s left of 5m``, ``1m03s OVER 5m``."""
    if clock.budget_s is None:
        if clock.started_at is None:
            return Level.UNKNOWN, "not started"
        verb = "took" if clock.finished_at else "running"
        return Level.OK, f"{verb} {format_duration(clock.elapsed_s)} (no budget)"
    budget = format_duration(clock.budget_s)
    if clock.started_at is None:
        return Level.UNKNOWN, f"budget {budget}"
    assert clock.remaining_s is not None
    if clock.finished_at is not None:
        level = Level.WARNING if clock.overrun else Level.OK
        over = " (over budget)" if clock.overrun else ""
        return level, f"done in {format_duration(clock.elapsed_s)} of {budget}{over}"
    if clock.overrun:
        return Level.CRITICAL, f"{format_duration(-clock.remaining_s)} OVER the {budget} budget"
    level = Level.WARNING if clock.remaining_s < 0.2 * clock.budget_s else Level.OK
    return level, f"{format_duration(clock.remaining_s)} left of {budget}"


def monitor_line(progress: MonitorProgress) -> str:
    """``window 1m12s of 2m: 48s left, 70 snapshots`` plus why the last one did not count."""
    text = (
        f"window {format_duration(progress.elapsed_s)} of {format_duration(progress.duration_s)}: "
        f"{format_duration(progress.remaining_s)} left, {progress.snapshots} usable snapshot"
        f"{'s' if progress.snapshots != 1 else ''}"
    )
    if progress.last_problem:
        text += f" (last one did not count: {progress.last_problem})"
    return text


def phase_state(records: Sequence[StepRecord], *, started: bool) -> StepState:
    """A phase's summary state: passed (every step done), failed, running (started) or pending."""
    states = [r.state for r in records]
    if states and all(
        s in (StepState.PASSED, StepState.SKIPPED, StepState.ATTESTED) for s in states
    ):
        return StepState.PASSED
    if any(s is StepState.FAILED for s in states):
        return StepState.FAILED
    if started or any(s is StepState.RUNNING for s in states):
        return StepState.RUNNING
    return StepState.PENDING


def phase_label(title: str) -> str:
    """A phase's short name for the phase strip: ``Phase 2``, ``Pre-Deployment``, ``Success Criteria``."""
    if ":" in title:
        return title.split(":", 1)[0].strip()
    for suffix in (" Checklist", " Validation"):
        title = title.removesuffix(suffix)
    return title


def split_text(split: TrafficSplit) -> tuple[Level, str]:
    """``90% blue / 10% green`` as read back, or ``? unknown: why`` (never the value last set)."""
    green = split.green_percentage
    if green is None:
        return Level.UNKNOWN, f"? unknown: {split.error or 'not read back'}"
    return Level.OK, f"{100 - green:g}% blue / {green:g}% green"


def at_text(at: datetime | None) -> str:
    """``HH:MM:SS`` UTC or ``--:--:--``."""
    return clock_time(at)
