"""The emergency rollback as the operator sees it: every step, its time, and the verdict.

This module owns two things:

* :class:`RollbackView` -- one rollback's state, folded from the procedure's
  :class:`~console.rollback.RollbackEvent` stream (plain Python, no Textual): each step of
  :data:`~console.rollback.STEP_TITLES` waiting, running, ok, failed or skipped, with the
  milliseconds since the key press and the step's detail; each failed switch attempt with
  its backoff; the manual fallback; and, at the end, the procedure's
  :class:`~console.rollback.RollbackResult`, which then decides everything shown.
* the widgets that draw it: :class:`RollbackHeadline` (the verdict and the budget),
  :class:`RollbackSteps` (one :class:`StepRow` per step) and :class:`ManualFallback`.

Success is drawn only from a result whose outcome is ``verified``, which the procedure
sets only when the load balancer read back 0 % green and every check passed. Until then
the headline says what is known: rolling back, a switch attempt failed (retrying), the
switch failed. Every state carries a symbol and a word, never colour alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Static

from console.rollback import (
    STEP_SWITCH,
    STEP_TITLES,
    RollbackEvent,
    RollbackEventKind,
    RollbackOutcome,
    RollbackResult,
    RollbackSafety,
    RollbackStep,
)
from widgets.verdicts import NOT_CONFIGURED_SYMBOL, PENDING_SYMBOL, SYMBOLS, Level

__all__ = [
    "STEP_BADGES",
    "AttemptLine",
    "ManualFallback",
    "PreflightReasons",
    "RollbackHeadline",
    "RollbackSteps",
    "RollbackView",
    "StepLine",
    "StepRow",
    "StepState",
    "format_ms",
]


class StepState(StrEnum):
    """Where one step of the rollback is; the CSS class of its row is ``-<state>``."""

    WAITING = "waiting"
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Not run: e.g. verification after a switch that was not read back."""


STEP_BADGES: dict[StepState, str] = {
    StepState.WAITING: "· waiting",
    StepState.RUNNING: f"{PENDING_SYMBOL} running",
    StepState.OK: f"{SYMBOLS[Level.OK]} ok",
    StepState.FAILED: f"{SYMBOLS[Level.CRITICAL]} failed",
    StepState.SKIPPED: f"{NOT_CONFIGURED_SYMBOL} skipped",
}
"""Symbol and word of each step state."""

_STATE_STYLE: dict[StepState, str] = {
    StepState.WAITING: "$foreground-muted",
    StepState.RUNNING: "$accent bold",
    StepState.OK: "$success",
    StepState.FAILED: "$error bold",
    StepState.SKIPPED: "$warning",
}


def format_ms(ms: float) -> str:
    """``3.2 ms``, ``412.7 ms``, ``12,345 ms``: tenths while they matter."""
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms:,.0f} ms"


@dataclass
class StepLine:
    """One step as shown."""

    name: str
    title: str
    state: StepState = StepState.WAITING
    started_ms: float | None = None
    ended_ms: float | None = None
    detail: str = ""

    @classmethod
    def from_step(cls, step: RollbackStep) -> StepLine:
        """The line of a finished step."""
        state = (
            StepState.SKIPPED if step.skipped else (StepState.OK if step.ok else StepState.FAILED)
        )
        return cls(step.name, step.title, state, step.started_ms, step.ended_ms, step.detail)


@dataclass(frozen=True)
class AttemptLine:
    """One failed try of the traffic switch."""

    attempt: int
    at_ms: float
    error: str
    retry_in_s: float | None
    """The wait before the next try; None when it was the last."""

    @property
    def text(self) -> str:
        """``✖ attempt 1 failed at 4.1 ms: <error> · retrying in 0.2 s``."""
        then = (
            "no retries left" if self.retry_in_s is None else f"retrying in {self.retry_in_s:g} s"
        )
        return (
            f"{SYMBOLS[Level.CRITICAL]} attempt {self.attempt} failed at "
            f"{format_ms(self.at_ms)}: {self.error} · {then}"
        )


@dataclass
class RollbackView:
    """One rollback's state, folded from its progress events (main thread only).

    Attributes:
        incident_id: The rollback this view follows; events of other rollbacks are ignored.
        budget_s: The runbook's budget (``thresholds.rollback_budget_s``).
        started: ``time.monotonic()`` at the key press, for the live elapsed time.
        reason: Why (as given at the trigger).
        trigger: ``hotkey``, ``automatic``, ...
        safety: The pre-flight decision, if known.
        confirmed: The operator confirmed despite the pre-flight reasons.
    """

    incident_id: str
    budget_s: float = 30.0
    manual_fallback: str = ""
    """The configured manual fallback (``rollback.manual_fallback``)."""
    started: float | None = None
    reason: str = ""
    trigger: str = "hotkey"
    safety: RollbackSafety | None = None
    confirmed: bool = False
    message: str = ""
    """The procedure's opening line (``emergency rollback to blue: <reason>``)."""
    steps: dict[str, StepLine] = field(default_factory=dict)
    attempts: list[AttemptLine] = field(default_factory=list)
    fallback: str | None = None
    """The manual fallback, once the switch has failed for good."""
    result: RollbackResult | None = None
    crashed: str | None = None
    """The procedure itself failed (a bug): what it said."""
    last_ms: float = 0.0
    """The newest event's time, in ms since the key press."""

    def __post_init__(self) -> None:
        if not self.steps:
            self.steps = {name: StepLine(name, title) for name, title in STEP_TITLES.items()}

    # -- folding -------------------------------------------------------------------------

    def apply(self, event: RollbackEvent) -> bool:
        """Fold one event in; returns whether anything changed.

        Events of another rollback, and step events after the result (which is the
        whole truth), are ignored.
        """
        if event.incident_id != self.incident_id:
            return False
        self.last_ms = max(self.last_ms, event.at_ms)
        kind = event.kind
        if kind is RollbackEventKind.FINISHED:
            if event.result is not None:
                self.finish(event.result)
            return True
        if self.result is not None:
            return False
        if kind is RollbackEventKind.STARTED:
            self.message = event.message
        elif kind is RollbackEventKind.STEP_STARTED and event.step in self.steps:
            line = self.steps[event.step]
            if line.state is StepState.WAITING:
                line.state = StepState.RUNNING
                line.started_ms = event.at_ms
        elif kind is RollbackEventKind.STEP_FINISHED and event.finished_step is not None:
            step = event.finished_step
            if step.name in self.steps:
                self.steps[step.name] = StepLine.from_step(step)
        elif kind is RollbackEventKind.ATTEMPT_FAILED:
            self.attempts.append(
                AttemptLine(
                    event.attempt or len(self.attempts) + 1,
                    event.at_ms,
                    event.message,
                    event.retry_in_s,
                )
            )
        elif kind is RollbackEventKind.MANUAL_FALLBACK:
            # The switch's own words are under the switch step already.
            self.fallback = self.manual_fallback or event.message
        else:
            return False
        return True

    def finish(self, result: RollbackResult) -> None:
        """Take the procedure's result: from now on it decides what is shown."""
        self.result = result
        self.last_ms = max(self.last_ms, result.total_ms)
        self.safety = result.safety or self.safety
        self.confirmed = result.confirmed
        self.reason = result.reason
        self.trigger = result.trigger
        for step in result.steps:
            if step.name in self.steps:
                self.steps[step.name] = StepLine.from_step(step)
        if result.attempts and not self.attempts:
            self.attempts = [
                AttemptLine(a.attempt, a.ended_ms, a.error or "", None)
                for a in result.attempts
                if not a.ok
            ]
        if result.manual_fallback and self.fallback is None:
            self.fallback = result.manual_fallback

    def crash(self, error: str, fallback: str) -> None:
        """The procedure failed unexpectedly: traffic is not confirmed; show the fallback."""
        self.crashed = error
        if self.fallback is None:
            self.fallback = fallback
        for line in self.steps.values():
            if line.state is StepState.RUNNING:
                line.state = StepState.FAILED
                line.detail = f"interrupted: {error}"

    # -- reading -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """The procedure has not ended (no result, no crash)."""
        return self.result is None and self.crashed is None

    @property
    def switch_failing(self) -> bool:
        """No result yet, and the switch has failed an attempt (and not succeeded since) or
        given up for the manual fallback."""
        if self.result is not None:
            return False
        if self.fallback is not None:
            return True
        return bool(self.attempts) and self.steps[STEP_SWITCH].state is not StepState.OK

    @property
    def succeeded(self) -> bool:
        """Read back 0 % green and every check passed (the procedure's own verdict)."""
        return self.result is not None and self.result.success

    def headline(self) -> tuple[str, str, str]:
        """``(symbol, words, theme style)`` of the rollback's state right now."""
        result = self.result
        bad = SYMBOLS[Level.CRITICAL]
        if self.crashed is not None:
            return (bad, "ROLLBACK FAILED: TRAFFIC IS NOT CONFIRMED ON BLUE", "$error bold")
        if result is not None:
            return {
                RollbackOutcome.VERIFIED: (
                    SYMBOLS[Level.OK],
                    "ROLLED BACK TO BLUE AND VERIFIED",
                    "$success bold",
                ),
                RollbackOutcome.UNVERIFIED: (
                    SYMBOLS[Level.WARNING],
                    "TRAFFIC ON BLUE (READ BACK), VERIFICATION FOUND PROBLEMS",
                    "$warning bold",
                ),
                RollbackOutcome.SWITCH_FAILED: (
                    bad,
                    "SWITCH FAILED: TRAFFIC IS NOT CONFIRMED ON BLUE",
                    "$error bold",
                ),
                RollbackOutcome.REFUSED: (
                    SYMBOLS[Level.UNKNOWN],
                    "NOT STARTED: BLUE NOT SAFE, NOT CONFIRMED",
                    "$warning bold",
                ),
            }[result.outcome]
        if self.fallback is not None:
            return (bad, "SWITCH FAILED: TRAFFIC IS NOT CONFIRMED ON BLUE", "$error bold")
        if self.switch_failing:
            last = self.attempts[-1]
            then = (
                "no retries left"
                if last.retry_in_s is None
                else f"retrying in {last.retry_in_s:g} s"
            )
            return (bad, f"SWITCH ATTEMPT {last.attempt} FAILED: {then}", "$error bold")
        return (PENDING_SYMBOL, "ROLLING BACK TO BLUE", "$accent bold")

    def elapsed_ms(self, now: float | None) -> float:
        """Milliseconds since the key press: the total once ended, else live from ``now``."""
        if self.result is not None:
            return self.result.total_ms
        if now is not None and self.started is not None and self.running:
            return max(self.last_ms, (now - self.started) * 1000.0)
        return self.last_ms

    def budget_text(self, now: float | None) -> str:
        """``total 412.3 ms of the 30 s budget (1.4 %), within budget``."""
        ms = self.elapsed_ms(now)
        share = ms / (self.budget_s * 1000.0) * 100.0 if self.budget_s > 0 else float("inf")
        head = "total" if not self.running else "elapsed"
        text = f"{head} {format_ms(ms)} of the {self.budget_s:g} s budget ({share:.1f} %)"
        over = ms > self.budget_s * 1000.0
        if over:
            return f"{text}, {SYMBOLS[Level.CRITICAL]} OVER BUDGET"
        if self.running:
            return text
        if self.succeeded:
            return f"{text}, {SYMBOLS[Level.OK]} within budget"
        return f"{text}, not verified"

    def context_text(self) -> str:
        """The reason, how it was triggered, the pre-flight verdict and the incident id."""
        parts = [f"reason: {self.reason or '(none)'}"]
        trigger = self.trigger
        if self.result is not None and self.result.automatic:
            trigger = "automatic"
        parts.append(f"trigger: {trigger}")
        safety = self.safety
        if safety is not None:
            if safety.safe:
                parts.append(f"pre-flight: blue safe ({safety.source})")
            else:
                how = "confirmed by the operator" if self.confirmed else "not confirmed"
                parts.append(f"pre-flight: blue NOT safe, {how} (reasons below)")
        parts.append(f"incident {self.incident_id}")
        return " · ".join(parts)

    def preflight_text(self) -> str:
        """Why blue was not safe, one reason a line (empty when it was safe or unknown)."""
        safety = self.safety
        if safety is None or safety.safe:
            return ""
        lines = [f"Pre-flight ({safety.source or 'unknown source'}): blue was not safe"]
        lines += [f"{SYMBOLS[Level.CRITICAL]} {reason}" for reason in safety.reasons]
        return "\n".join(lines)


# --- widgets ------------------------------------------------------------------------------


class RollbackHeadline(Vertical):
    """The verdict in one line, the budget line, and the context line."""

    DEFAULT_CSS = """
    RollbackHeadline {
        height: auto;
        background: $surface;
        padding: 0 1;
    }
    RollbackHeadline > .rollback--verdict {
        text-style: bold;
    }
    RollbackHeadline > .rollback--context {
        color: $text-muted;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create the (empty) headline."""
        super().__init__(id=id)
        self.verdict_text = ""
        """The verdict line as last drawn (plain), for tests."""
        self.budget_text = ""
        """The budget line as last drawn."""
        self.context_text = ""
        """The context line as last drawn."""

    def compose(self) -> ComposeResult:
        """Verdict, budget, context."""
        yield Static(id="rollback-verdict", classes="rollback--verdict", markup=False)
        yield Static(id="rollback-budget", classes="rollback--budget", markup=False)
        yield Static(id="rollback-context", classes="rollback--context", markup=False)

    def show(self, view: RollbackView, now: float | None) -> None:
        """Draw the view (``now`` is ``time.monotonic()`` for the live elapsed time)."""
        symbol, words, style = view.headline()
        self.verdict_text = f"{symbol} {words}"
        self.budget_text = view.budget_text(now)
        self.context_text = view.context_text()
        self.query_one("#rollback-verdict", Static).update(
            Content.assemble((self.verdict_text, style))
        )
        self.query_one("#rollback-budget", Static).update(Content(self.budget_text))
        self.query_one("#rollback-context", Static).update(Content(self.context_text))


class StepRow(Horizontal):
    """One step: state (symbol and word), ms since the key press, title and detail."""

    DEFAULT_CSS = """
    StepRow {
        height: auto;
    }
    StepRow > .step--state {
        width: 11;
    }
    StepRow > .step--ms {
        width: 12;
        text-align: right;
        padding-right: 2;
    }
    StepRow > .step--text {
        width: 1fr;
    }
    """

    def __init__(self, name: str, *, id: str | None = None) -> None:
        """Create the row of step ``name`` (a key of ``STEP_TITLES``)."""
        super().__init__(id=id)
        self.step_name = name
        self.line = StepLine(name, STEP_TITLES.get(name, name))
        self._picture: object = None

    def compose(self) -> ComposeResult:
        """State, time, text."""
        yield Static(classes="step--state", markup=False)
        yield Static(classes="step--ms", markup=False)
        yield Static(classes="step--text", markup=False)

    @property
    def plain_text(self) -> str:
        """The row in plain text, for tests."""
        line = self.line
        return f"{STEP_BADGES[line.state]} {self._ms_text()} {line.title} {line.detail}".strip()

    def _ms_text(self) -> str:
        line = self.line
        if line.ended_ms is not None:
            return format_ms(line.ended_ms)
        if line.started_ms is not None:
            return format_ms(line.started_ms) + "…"
        return ""

    def show(self, line: StepLine, extra: list[str] | None = None) -> None:
        """Draw a step; ``extra`` lines (the failed switch attempts) go under its detail."""
        extra = extra or []
        picture = (line.state, line.started_ms, line.ended_ms, line.detail, tuple(extra))
        self.line = line
        if picture == self._picture:
            return
        self._picture = picture
        for state in StepState:
            self.set_class(state is line.state, f"-{state.value}")
        style = _STATE_STYLE[line.state]
        self.query_one(".step--state", Static).update(
            Content.assemble((STEP_BADGES[line.state], style))
        )
        self.query_one(".step--ms", Static).update(Content(self._ms_text()))
        parts: list[tuple[str, str] | str] = [(line.title, "bold")]
        if line.detail:
            parts += ["\n", (line.detail, "$foreground-muted")]
        for text in extra:
            parts += ["\n", (text, "$error")]
        self.query_one(".step--text", Static).update(Content.assemble(*parts))


class RollbackSteps(Vertical):
    """Every step of the emergency rollback, in the runbook's order."""

    DEFAULT_CSS = """
    RollbackSteps {
        height: auto;
        padding: 0 1;
    }
    """

    def compose(self) -> ComposeResult:
        """One row per step."""
        for name in STEP_TITLES:
            yield StepRow(name, id=f"step-{name}")

    def row(self, name: str) -> StepRow:
        """The row of step ``name``."""
        return self.query_one(f"#step-{name}", StepRow)

    def show(self, view: RollbackView) -> None:
        """Draw every step; the failed switch attempts go under the switch step."""
        for name, line in view.steps.items():
            extra = [a.text for a in view.attempts] if name == STEP_SWITCH else None
            self.row(name).show(line, extra)


class PreflightReasons(Static):
    """Why blue was not safe when the rollback was confirmed anyway (hidden otherwise)."""

    DEFAULT_CSS = """
    PreflightReasons {
        display: none;
        height: auto;
        padding: 0 1;
        margin-top: 1;
        color: $warning;
    }
    PreflightReasons.-shown {
        display: block;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create the (hidden) reasons."""
        super().__init__(id=id, markup=False)
        self.plain_text = ""
        """The reasons as last drawn, for tests."""

    def show(self, view: RollbackView) -> None:
        """Show the pre-flight's reasons, if blue was not safe."""
        text = view.preflight_text()
        self.set_class(bool(text), "-shown")
        if text != self.plain_text:
            self.plain_text = text
            self.update(Content(text))


class ManualFallback(Static):
    """What to do by hand when the switch failed (from ``rollback.manual_fallback``)."""

    DEFAULT_CSS = """
    ManualFallback {
        display: none;
        height: auto;
        border: heavy $error;
        border-title-color: $error;
        border-title-style: bold;
        padding: 0 1;
        margin: 0 1;
    }
    ManualFallback.-shown {
        display: block;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create the (hidden) fallback box."""
        super().__init__(id=id, markup=False)
        self.border_title = "MANUAL FALLBACK: do this now"
        self.plain_text = ""
        """The fallback as last drawn, for tests."""

    def show(self, view: RollbackView) -> None:
        """Show the fallback once the switch has failed for good (or the procedure crashed)."""
        text = view.fallback or ""
        if view.crashed is not None:
            text = f"The rollback procedure failed: {view.crashed}\n{text}"
        self.set_class(bool(text), "-shown")
        if text != self.plain_text:
            self.plain_text = text
            self.update(Content(text))
