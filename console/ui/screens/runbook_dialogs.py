"""The runbook's modal questions: a note or a reason, ending a deployment, resuming one.

* :class:`ReasonDialog` asks for a non-empty text: the attestation note ("what did you
  check?"), the reason to skip a failed step, the reason to abandon a deployment. Its
  confirm button stays disabled until something is typed.
* :class:`EndDialog` ends a deployment early: rolled back or aborted, with a reason.
* :class:`ResumeDialog` is shown at start-up when the audit trail holds an unfinished
  deployment: resume it exactly where it stood, abandon it (with a reason), or decide later.

Each dismisses with the answer, or ``None`` when the operator backs out (escape).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, RadioButton, RadioSet, Static

from console.deployment import SavedDeployment
from widgets.verdicts import clock_time

_DIALOG_CSS = """
{name} {{
    align: center middle;
}}
{name} > Vertical {{
    width: 90%;
    max-width: 100;
    height: auto;
    max-height: 90%;
    border: round $primary;
    border-title-color: $primary;
    background: $surface;
    padding: 0 1;
}}
{name} .dialog-lines {{
    height: auto;
    max-height: 12;
    overflow-y: auto;
    margin: 0 0 1 0;
}}
{name} Input {{
    margin: 0 0 1 0;
}}
{name} Horizontal {{
    height: auto;
    align: right middle;
}}
{name} Button {{
    margin: 0 0 0 1;
}}
"""


class ReasonDialog(ModalScreen[str | None]):
    """Ask for a non-empty text (note or reason); dismiss with it, or None."""

    DEFAULT_CSS = _DIALOG_CSS.format(name="ReasonDialog")

    BINDINGS = [
        Binding(
            "escape",
            "cancel",
            "Back",
            id="dialog-cancel",
            tooltip="Close without doing anything",
        ),
    ]

    def __init__(
        self,
        title: str,
        lines: Sequence[str],
        *,
        placeholder: str,
        confirm: str,
        variant: Literal["default", "primary", "success", "warning", "error"] = "primary",
    ) -> None:
        """Create the dialog.

        Args:
            title: The border title (what is being asked).
            lines: What the operator should know before answering.
            placeholder: The input's hint.
            confirm: The confirm button's words.
            variant: The confirm button's look.
        """
        super().__init__()
        self._title = title
        self._lines = list(lines)
        self._placeholder = placeholder
        self._confirm = confirm
        self._variant = variant

    def compose(self) -> ComposeResult:
        """Lines, the input, the buttons."""
        with Vertical() as box:
            box.border_title = self._title
            yield Static("\n".join(self._lines), classes="dialog-lines", markup=False)
            text = Input(placeholder=self._placeholder, id="dialog-text")
            text.cursor_blink = False
            yield text
            with Horizontal():
                yield Button("Back", id="dialog-back", compact=True)
                yield Button(
                    self._confirm,
                    id="dialog-confirm",
                    variant=self._variant,
                    disabled=True,
                    compact=True,
                )

    def on_mount(self) -> None:
        """Put the cursor in the input."""
        self.query_one("#dialog-text", Input).focus()

    @on(Input.Changed, "#dialog-text")
    def _typed(self, event: Input.Changed) -> None:
        self.query_one("#dialog-confirm", Button).disabled = not event.value.strip()

    @on(Input.Submitted, "#dialog-text")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())

    @on(Button.Pressed, "#dialog-confirm")
    def _confirmed(self) -> None:
        text = self.query_one("#dialog-text", Input).value.strip()
        if text:
            self.dismiss(text)

    @on(Button.Pressed, "#dialog-back")
    def action_cancel(self) -> None:
        """Close without an answer."""
        self.dismiss(None)


EndOutcome = Literal["rolled_back", "aborted"]


class EndDialog(ModalScreen[tuple[EndOutcome, str] | None]):
    """End a deployment early: rolled back or aborted, with a reason."""

    DEFAULT_CSS = _DIALOG_CSS.format(name="EndDialog")

    BINDINGS = [
        Binding(
            "escape",
            "cancel",
            "Back",
            id="dialog-cancel",
            tooltip="Close without doing anything",
        ),
    ]

    def __init__(self, deployment_id: str, *, rolled_back: bool = False) -> None:
        """Create the dialog.

        Args:
            deployment_id: The deployment to end.
            rolled_back: Preselect "rolled back" (a rollback was offered or ran).
        """
        super().__init__()
        self._deployment_id = deployment_id
        self._rolled_back = rolled_back

    def compose(self) -> ComposeResult:
        """Outcome choice, reason, buttons."""
        with Vertical() as box:
            box.border_title = f"End deployment {self._deployment_id}"
            yield Static(
                "The deployment ends here; every step left stays as it is, and the "
                "audit trail and the report say why.",
                classes="dialog-lines",
            )
            with RadioSet(id="end-outcome"):
                yield RadioButton(
                    "rolled back (traffic went back to blue)",
                    value=self._rolled_back,
                    id="end-rolled-back",
                )
                yield RadioButton(
                    "aborted (abandoned)", value=not self._rolled_back, id="end-aborted"
                )
            text = Input(placeholder="why it ends (required)", id="dialog-text")
            text.cursor_blink = False
            yield text
            with Horizontal():
                yield Button("Back", id="dialog-back", compact=True)
                yield Button(
                    "End deployment",
                    id="dialog-confirm",
                    variant="error",
                    disabled=True,
                    compact=True,
                )

    def on_mount(self) -> None:
        """Put the cursor in the reason."""
        self.query_one("#dialog-text", Input).focus()

    def _answer(self) -> tuple[EndOutcome, str] | None:
        reason = self.query_one("#dialog-text", Input).value.strip()
        if not reason:
            return None
        rolled = self.query_one("#end-rolled-back", RadioButton).value
        return ("rolled_back" if rolled else "aborted", reason)

    @on(Input.Changed, "#dialog-text")
    def _typed(self, event: Input.Changed) -> None:
        self.query_one("#dialog-confirm", Button).disabled = not event.value.strip()

    @on(Input.Submitted, "#dialog-text")
    @on(Button.Pressed, "#dialog-confirm")
    def _confirmed(self) -> None:
        answer = self._answer()
        if answer is not None:
            self.dismiss(answer)

    @on(Button.Pressed, "#dialog-back")
    def action_cancel(self) -> None:
        """Close without ending anything."""
        self.dismiss(None)


ResumeChoice = Literal["resume", "abandon"]


def describe_saved(saved: SavedDeployment) -> list[str]:
    """What the resume prompt says about a saved deployment."""
    lines = [
        f"Deployment {saved.deployment_id} ({saved.runbook_title}, procedure {saved.procedure_id})",
        f"started by {saved.started_by} at {saved.started_at:%Y-%m-%d} "
        f"{clock_time(saved.started_at)} UTC",
        f"stands at phase {saved.current_phase or '?'}, step {saved.current_step or '(none left)'}",
        f"last saved {saved.saved_at:%Y-%m-%d} {clock_time(saved.saved_at)} UTC"
        + (
            f" (audit record {saved.saved_seq})"
            if saved.saved_seq
            else " (still in the local spool)"
        ),
    ]
    if saved.later_actions:
        lines.append(
            "recorded after that save (the console stopped mid-transition): "
            + ", ".join(saved.later_actions)
        )
    lines.append(
        "Resuming marks a step that was running as failed (interrupted) and reads the "
        "traffic split back from the load balancer."
    )
    return lines


class ResumeDialog(ModalScreen[ResumeChoice | None]):
    """An unfinished deployment is in the audit trail: resume it, abandon it, or later."""

    DEFAULT_CSS = _DIALOG_CSS.format(name="ResumeDialog")

    BINDINGS = [
        Binding(
            "escape",
            "later",
            "Later",
            id="resume-later",
            tooltip="Decide later (the runbook screen offers it again)",
        ),
    ]

    def __init__(self, saved: SavedDeployment, *, others: int = 0) -> None:
        """Create the prompt.

        Args:
            saved: The newest unfinished deployment.
            others: How many more unfinished deployments there are.
        """
        super().__init__()
        self.saved = saved
        self._others = others

    def compose(self) -> ComposeResult:
        """What was found, and the three choices."""
        lines = describe_saved(self.saved)
        if self._others:
            lines.append(f"({self._others} older unfinished deployment(s) are in the trail too.)")
        with Vertical() as box:
            box.border_title = "Unfinished deployment found"
            yield Static("\n".join(lines), classes="dialog-lines", markup=False, id="resume-text")
            with Horizontal():
                yield Button("Later", id="resume-later-button", compact=True)
                yield Button("Abandon…", id="resume-abandon", variant="error", compact=True)
                yield Button("Resume", id="resume-go", variant="primary", compact=True)

    def on_mount(self) -> None:
        """Resume is the default answer."""
        self.query_one("#resume-go", Button).focus()

    @on(Button.Pressed, "#resume-go")
    def _resume(self) -> None:
        self.dismiss("resume")

    @on(Button.Pressed, "#resume-abandon")
    def _abandon(self) -> None:
        self.dismiss("abandon")

    @on(Button.Pressed, "#resume-later-button")
    def action_later(self) -> None:
        """Decide later."""
        self.dismiss(None)
