"""The details of one runbook step: what the runbook says, its checks, its evidence, live output.

::

    ▶ running  Monitor at 10% for 2 minutes (monitor-10)
    section     Step 2.1: Gradual Traffic Migration
    runbook     # Monitor for 2 minutes
    kind        monitor window
    window      ██████████░░░░░░░░░░ 1m12s of 2m: 48s left, 70 usable snapshots
    alerts      ✖ FIRING   critical green  P99 > 5 ms: for 3s
    checks      (live, on the snapshot of 10:01:02)
      ✔ pass    [green] green: all services up (at least 9): 9/9 up (want up, >= 9)
    evidence
      by        alice@ops-bastion 10:01:02
      exit      0 in 0.31 s

Below, for command steps, the command's output as it streams (a :class:`textual.widgets.Log`).
The widget renders what the screen hands it (:class:`StepDetailView`); it does no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Log, Static

from backends.models import AlertState
from console.runbook.engine import MonitorProgress, StepRecord, StepState
from console.runbook.model import CheckStep, Step, StepKind
from console.runbook.predicates import Outcome
from widgets.alerts import alert_lines
from widgets.step_view import (
    monitor_line,
    outcome_line,
    step_badge,
    step_detail_lines,
    verdict_badge,
    who_when,
)
from widgets.styling import badge_part
from widgets.verdicts import clock_time

LABEL_WIDTH = 12
BAR_WIDTH = 20
FILLED = "█"
EMPTY = "░"


@dataclass(frozen=True)
class StepDetailView:
    """Everything the details pane shows about one step."""

    step: Step
    kind: StepKind
    """The effective kind (a command without argv is an attestation)."""
    record: StepRecord
    current: bool
    """It is the deployment's current step (its checks are judged live)."""
    outcomes: Sequence[Outcome] = ()
    """Live outcomes (current step) or the ones recorded with the step."""
    judged_at: datetime | None = None
    """When the outcomes were judged (the snapshot's time)."""
    argv: Sequence[str] | None = None
    """The configured command (command steps)."""
    progress: MonitorProgress | None = None
    alerts: tuple[AlertState, ...] = ()
    """Live alerts (shown for a running monitor window)."""
    now: datetime | None = None
    output: Sequence[str] = field(default_factory=tuple)
    """The command output to show (live lines, or the recorded tail)."""


def _label(text: str) -> str:
    return f"{text:<{LABEL_WIDTH}}"


def window_bar(progress: MonitorProgress) -> str:
    """``██████░░░░`` for the part of the window that has run."""
    share = 0.0 if progress.duration_s <= 0 else min(1.0, progress.elapsed_s / progress.duration_s)
    filled = round(share * BAR_WIDTH)
    return FILLED * filled + EMPTY * (BAR_WIDTH - filled)


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_scalar(v)}" for k, v in value.items() if v is not None)
    return str(value)


def evidence_lines(record: StepRecord) -> list[tuple[str, str]]:
    """The recorded evidence as ``(label, text)`` lines (outcomes are shown apart)."""
    ev = record.evidence
    lines: list[tuple[str, str]] = []
    if record.operator or record.finished_at or record.started_at:
        lines.append(("by", who_when(record)))
    if record.attempts > 1:
        lines.append(("attempts", str(record.attempts)))
    if record.reason:
        label = {
            StepState.SKIPPED: "skip reason",
            StepState.ATTESTED: "note",
        }.get(record.state, "reason")
        lines.append((label, record.reason))
    if "argv" in ev:
        lines.append(("argv", " ".join(str(a) for a in ev.get("argv") or [])))
    if "exit_code" in ev:
        exit_text = "none (did not start)" if ev["exit_code"] is None else str(ev["exit_code"])
        if isinstance(ev.get("duration_s"), int | float):
            exit_text += f" after {ev['duration_s']:g} s"
        if ev.get("timed_out"):
            exit_text += ", timed out"
        if ev.get("cancelled"):
            exit_text += ", cancelled"
        lines.append(("exit code", exit_text))
    if ev.get("error"):
        lines.append(("error", str(ev["error"])))
    read_back = ev.get("read_back")
    if isinstance(read_back, dict):
        green = read_back.get("green_percentage")
        text = f"{green:g}% green" if isinstance(green, int | float) else "unknown"
        if read_back.get("blue_weight") is not None:
            text += f", weights blue {read_back['blue_weight']} / green {read_back['green_weight']}"
        if read_back.get("source"):
            text += f" ({read_back['source']})"
        if read_back.get("error"):
            text += f": {read_back['error']}"
        lines.append(("read back", text))
    if "snapshots" in ev:
        lines.append(
            (
                "window",
                f"{_scalar(ev.get('snapshots'))} usable snapshots in "
                f"{_scalar(ev.get('elapsed_s'))} of {_scalar(ev.get('duration_s'))} s, "
                f"longest gap {_scalar(ev.get('max_gap_s'))} s",
            )
        )
    for alert in ev.get("alerts") or []:
        if isinstance(alert, dict):
            lines.append(
                (
                    "alert",
                    f"{alert.get('name')} ({alert.get('environment') or 'all'}, "
                    f"{alert.get('severity')}): {alert.get('summary')}",
                )
            )
    for warning in ev.get("warnings_seen") or []:
        lines.append(("warning", str(warning)))
    if ev.get("location"):
        lines.append(("report", str(ev["location"])))
    if ev.get("skipped_from"):
        lines.append(("skipped", f"from {ev['skipped_from']}"))
    return lines


def detail_content(view: StepDetailView) -> Content:
    """The details pane's text."""
    step, record = view.step, view.record
    parts: list[Content] = [
        Content.assemble(
            badge_part(step_badge(record.state), width=11),
            (f"{step.title}", "bold"),
            f" ({step.id})",
        )
    ]
    for label, text in step_detail_lines(step, view.kind):
        parts.append(Content.assemble((_label(label), "$text-muted"), text))
    if view.kind is StepKind.COMMAND and view.argv:
        parts.append(Content.assemble((_label("command"), "$text-muted"), " ".join(view.argv)))
    if view.progress is not None:
        parts.append(
            Content.assemble(
                (_label("window"), "$text-muted"),
                (window_bar(view.progress), "$primary"),
                " ",
                monitor_line(view.progress),
            )
        )
        if view.now is not None:
            for line in alert_lines(view.alerts, view.now, stale=False):
                parts.append(Content.assemble((_label("alerts"), "$text-muted"), line))
    if not view.outcomes and isinstance(step, CheckStep):
        parts.append(Content.assemble(("checks (not judged yet)", "bold")))
        for predicate in step.checks:
            parts.append(Content.assemble("  · ", predicate.describe()))
    if view.outcomes:
        when = f" on the snapshot of {clock_time(view.judged_at)}" if view.judged_at else ""
        heading = f"checks (live{when})" if view.current else f"checks (recorded{when})"
        parts.append(Content.assemble((heading, "bold")))
        for o in view.outcomes:
            parts.append(
                Content.assemble(
                    "  ", badge_part(verdict_badge(o.verdict), width=10), outcome_line(o)
                )
            )
    evidence = evidence_lines(record)
    if evidence:
        parts.append(Content.assemble(("evidence", "bold")))
        for label, text in evidence:
            parts.append(Content.assemble("  ", (_label(label), "$text-muted"), text))
    return Content("\n").join(parts)


class StepDetails(Vertical):
    """The selected step in full, and a command step's output."""

    DEFAULT_CSS = """
    StepDetails {
        height: 1fr;
        background: $surface;
        padding: 0 1;
    }
    StepDetails > VerticalScroll {
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    StepDetails > Log {
        height: 8;
        border-top: solid $primary;
        border-title-color: $primary;
        background: $background;
        display: none;
    }
    StepDetails.-with-log > Log {
        display: block;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create an empty pane."""
        super().__init__(id=id)
        self._text = Content("")
        self._log_step: str | None = None
        self._log_count = 0
        self.plain_text = ""
        """The pane's text as last rendered (plain), for tests."""

    def compose(self) -> ComposeResult:
        """The text (scrolling) and the output log."""
        with VerticalScroll():
            yield Static(id="step-text")
        yield Log(id="step-log", max_lines=2000, auto_scroll=True)

    @property
    def log_widget(self) -> Log:
        """The command output pane."""
        return self.query_one("#step-log", Log)

    def show(self, view: StepDetailView | None, empty: str = "") -> None:
        """Show one step (or ``empty`` when there is none)."""
        content = detail_content(view) if view is not None else Content(empty)
        if content != self._text:
            self._text = content
            self.plain_text = content.plain
            self.query_one("#step-text", Static).update(content)
        with_log = view is not None and view.kind is StepKind.COMMAND
        self.set_class(with_log, "-with-log")
        if not with_log or view is None:
            return
        log = self.log_widget
        log.border_title = f"output of {view.step.id}"
        if self._log_step != view.step.id:
            log.clear()
            self._log_step = view.step.id
            self._log_count = 0
        lines = list(view.output)
        if len(lines) < self._log_count:
            log.clear()
            self._log_count = 0
        if len(lines) > self._log_count:
            log.write_lines(lines[self._log_count :])
            self._log_count = len(lines)
