"""The gate of the current step: Continue (open only on passing evidence), Skip, Cancel, typed name.

::

    [Set 10% green] [Skip…]  ✔ gate open: 3 checks pass
    [Run check]     [Skip…]  ✖ gate closed: [green] green: all services up: 8/9 up (…)
    type green to confirm ▕green▏  [Set 100% green]  ✔ gate open

Continue is a disabled button while the gate is closed, and the reasons are on screen next
to it. A destructive step (the 100 % switch, blue's shutdown) shows an input where the
operator types the environment's name; Continue opens only when it matches.
The bar renders a :class:`console.deployment.GateView`; the screen does the acting.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Button, Input, Static

from console.deployment import GateView
from console.runbook.engine import StepState
from console.runbook.model import StepKind
from widgets.styling import badge_part
from widgets.verdicts import Badge, Level

CONTINUE_LABELS: dict[StepKind, str] = {
    StepKind.CHECK: "Run check",
    StepKind.COMMAND: "Run command",
    StepKind.TRAFFIC: "Move traffic",
    StepKind.MONITOR: "Start window",
    StepKind.ATTESTATION: "Attest…",
    StepKind.REPORT: "Write report",
}

OPEN = Badge(Level.OK, "gate open")
CLOSED = Badge(Level.CRITICAL, "gate closed")
IDLE = Badge(Level.UNKNOWN, "no gate")
WINDOW_FAILED = Badge(Level.CRITICAL, "window failed")


def continue_label(view: GateView, target: float | None = None) -> str:
    """The Continue button's words for the step's kind."""
    if view.kind is None:
        return "Continue"
    if view.kind is StepKind.TRAFFIC and target is not None:
        return f"Set {target:g}% green"
    if view.state is StepState.RUNNING:
        return "Running…"
    if view.kind is StepKind.MONITOR and view.state is StepState.FAILED:
        return "Run window again"
    if view.state is StepState.FAILED and view.kind is not StepKind.ATTESTATION:
        return "Retry: " + CONTINUE_LABELS[view.kind].lower()
    return CONTINUE_LABELS[view.kind]


def gate_line(view: GateView) -> Content:
    """``✔ gate open: …`` or ``✖ gate closed: reason; reason``."""
    if view.step_id is None:
        return Content.assemble(badge_part(IDLE), ": " + "; ".join(view.reasons))
    if view.failed_by_alert:
        return Content.assemble(
            badge_part(WINDOW_FAILED),
            ": a critical alert fired; the way on stays closed. F9 rolls back to blue; "
            "Continue only runs the window again",
        )
    if view.open:
        gate = view.gate
        passing = len(gate.outcomes) if gate is not None else 0
        what = f"{passing} check{'s' if passing != 1 else ''} pass" if passing else "ready"
        return Content.assemble(badge_part(OPEN), f": {what}")
    return Content.assemble(badge_part(CLOSED), ": " + "; ".join(view.reasons))


class GateBar(Vertical):
    """Continue, Skip, Cancel, and the typed confirmation of the current step."""

    DEFAULT_CSS = """
    GateBar {
        height: auto;
        max-height: 6;
        background: $panel;
        padding: 0 1;
    }
    GateBar > Horizontal {
        height: 1;
    }
    GateBar Button {
        margin: 0 1 0 0;
        width: auto;
    }
    GateBar #gate-typed-row {
        display: none;
    }
    GateBar.-typed #gate-typed-row {
        display: block;
    }
    GateBar #gate-typed-label {
        width: auto;
        padding: 0 1 0 0;
        color: $warning;
        text-style: bold;
    }
    GateBar #gate-typed {
        width: 20;
    }
    GateBar #gate-cancel {
        display: none;
    }
    GateBar.-cancel #gate-cancel {
        display: block;
    }
    GateBar #gate-reason {
        height: auto;
        max-height: 3;
        width: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create the bar (closed until a gate is shown)."""
        super().__init__(id=id)
        self.view: GateView | None = None
        self.plain_text = ""
        """The gate line as last rendered (plain), for tests."""

    def compose(self) -> ComposeResult:
        """Typed confirmation row, then buttons and the gate line."""
        with Horizontal(id="gate-typed-row"):
            yield Static("", id="gate-typed-label")
            typed = Input(placeholder="environment name", compact=True, id="gate-typed")
            typed.cursor_blink = False
            yield typed
        with Horizontal(id="gate-buttons"):
            yield Button("Continue", id="gate-continue", variant="primary", compact=True)
            yield Button("Skip…", id="gate-skip", compact=True)
            yield Button("Cancel command", id="gate-cancel", variant="error", compact=True)
        yield Static("", id="gate-reason")

    @property
    def typed(self) -> str:
        """What the operator typed as confirmation."""
        return self.query_one("#gate-typed", Input).value

    def clear_typed(self) -> None:
        """Forget the typed confirmation (after the step ran)."""
        self.query_one("#gate-typed", Input).value = ""

    def show(self, view: GateView, *, target: float | None = None) -> None:
        """Render a gate view.

        Args:
            view: The session's gate view for the current step.
            target: The traffic step's green percentage (for the button's words).
        """
        self.view = view
        self.set_class(view.confirm_typed is not None, "-typed")
        self.set_class(view.can_cancel, "-cancel")
        if view.confirm_typed is not None:
            self.query_one("#gate-typed-label", Static).update(
                f"destructive: type {view.confirm_typed!r} to confirm"
            )
        go = self.query_one("#gate-continue", Button)
        label = continue_label(view, target)
        if str(go.label) != label:
            go.label = label
            # The button's width follows its words (a label change alone keeps the old width).
            go.refresh(layout=True)
        go.disabled = not view.open
        skip = self.query_one("#gate-skip", Button)
        skip.disabled = not view.can_skip
        skip.tooltip = view.skip_reason or "Skip this step (asks for a reason)"
        line = gate_line(view)
        self.plain_text = line.plain
        self.query_one("#gate-reason", Static).update(line)
