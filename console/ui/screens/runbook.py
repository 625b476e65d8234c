"""The guided runbook: each phase as a checklist, the current step in detail, its gate.

Layout, top to bottom (readable at 80x24; below 140 columns the checklist and the details
stack)::

    header    deploy 20250107_100000 · Phase 2: Traffic Switching: 4m12s left of 5m · ...
    phases    ✔ Pre-Deployment  ✔ Phase 1  ▶[Phase 2]  ○ Phase 3  ○ Success Criteria
    banner    ✖ ROLLBACK OFFERED: critical alert firing during the window ... press F9
    body      [checklist of the shown phase] [details of the selected step, command output]
    gate      [Move traffic] [Skip…]  ✔ gate open: 3 checks pass
    footer

One screen shows one phase at a time (``[`` and ``]`` page through the phases, ``.`` goes
back to the current one). Continue opens only on passing evidence: it is a disabled button
(and a disabled key) while the gate is closed, with the reasons next to it. Destructive
steps need the environment's name typed; skipping needs a reason; an attestation needs a
note. F9 (the App's rollback) works here as everywhere.

The screen renders what the :class:`~console.ui.screens.runbook_driver.RunbookDriver` holds
(the deployment session, the newest snapshot) and sends the operator's actions to the
session; the session writes every transition to the audit trail.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.content import Content
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static

from backends.models import Snapshot
from console.deployment import DeploymentError, DeploymentSession, GateView
from console.runbook.engine import StepState
from console.runbook.model import Phase, Step, TrafficStep
from console.runbook.predicates import Outcome
from console.ui.screens.runbook_dialogs import EndDialog, ReasonDialog
from widgets.checklist import Checklist, ChecklistRow
from widgets.status_header import StatusHeader
from widgets.step_details import StepDetails, StepDetailView
from widgets.step_gate import GateBar
from widgets.step_view import (
    command_line,
    evidence_summary,
    phase_countdown,
    phase_label,
    phase_state,
    split_text,
    step_badge,
)
from widgets.styling import badge_part, level_style
from widgets.verdicts import Badge, Level

if TYPE_CHECKING:
    from console.ui.screens.runbook_driver import RunbookDriver


def _recorded_outcomes(evidence: dict[str, object]) -> list[Outcome]:
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


def _when(value: object) -> datetime | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


_DRIVING = (
    "continue",
    "skip",
    "cancel_command",
    "start",
    "start_planned_rollback",
    "resume",
    "end",
)
"""The actions that change the deployment (none of them in a read-only console)."""


class RunbookScreen(Screen[None]):
    """The deployment's phases as checklists, with the current step's gate."""

    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (140, "-wide")]

    DEFAULT_CSS = """
    RunbookScreen {
        layout: vertical;
        background: $background;
    }
    RunbookScreen #rb-phases {
        height: auto;
        background: $surface;
        padding: 0 1;
    }
    RunbookScreen #rb-banner {
        display: none;
        height: auto;
        padding: 0 1;
        background: $error 15%;
        color: $error;
        text-style: bold;
    }
    RunbookScreen #rb-banner.-shown {
        display: block;
    }
    RunbookScreen #rb-banner.-warning {
        background: $warning 15%;
        color: $warning;
    }
    RunbookScreen #rb-body {
        height: 1fr;
        layout: horizontal;
    }
    RunbookScreen.-narrow #rb-body {
        layout: vertical;
    }
    RunbookScreen.-wide Checklist {
        width: 55%;
        height: 1fr;
    }
    RunbookScreen.-narrow Checklist {
        width: 100%;
        height: 50%;
    }
    RunbookScreen.-wide StepDetails {
        width: 45%;
    }
    RunbookScreen.-narrow StepDetails {
        width: 100%;
        border-top: solid $primary;
    }
    """

    BINDINGS = [
        Binding(
            "c",
            "continue",
            "Continue",
            id="runbook-continue",
            tooltip="Go ahead with the current step; only while its gate is open",
        ),
        Binding(
            "s",
            "skip",
            "Skip…",
            id="runbook-skip",
            tooltip="Skip the current (failed) step; asks for the reason, which is audited",
        ),
        Binding(
            "k",
            "cancel_command",
            "Cancel cmd",
            id="runbook-cancel",
            tooltip="Stop the running command and everything it started",
        ),
        Binding(
            "n",
            "start",
            "New deployment",
            id="runbook-start",
            tooltip="Start a new deployment (id YYYYMMDD_HHMMSS) with the runbook",
        ),
        Binding(
            "p",
            "start_planned_rollback",
            "Planned rollback",
            id="runbook-planned-rollback",
            tooltip="Start the runbook's planned rollback: 50% -> monitor 120 s -> 0% -> validate blue",
        ),
        Binding(
            "u",
            "resume",
            "Resume…",
            id="runbook-resume",
            tooltip="Resume the unfinished deployment found in the audit trail",
        ),
        Binding(
            "x",
            "end",
            "End…",
            id="runbook-end",
            tooltip="End the deployment early (rolled back or aborted), with a reason",
        ),
        Binding(
            "left_square_bracket",
            "phase(-1)",
            "Prev phase",
            id="runbook-prev-phase",
            tooltip="Show the previous phase's checklist",
            show=False,
        ),
        Binding(
            "right_square_bracket",
            "phase(1)",
            "Next phase",
            id="runbook-next-phase",
            tooltip="Show the next phase's checklist",
            show=False,
        ),
        Binding(
            "full_stop",
            "follow",
            "Current step",
            id="runbook-follow",
            tooltip="Go back to the current phase and step",
            show=False,
        ),
        Binding(
            "escape",
            "close",
            "Dashboard",
            id="runbook-close",
            tooltip="Back to the dashboard (the deployment carries on)",
        ),
    ]

    def __init__(self, driver: RunbookDriver) -> None:
        """Create the screen for a driver (which holds the session and the snapshots)."""
        super().__init__()
        self.driver = driver
        self.shown_phase: str | None = None
        """The phase whose checklist is shown (None: follow the current phase)."""
        self.selected: str | None = None
        """The step whose details are shown (None: follow the current step)."""
        self.view: GateView | None = None
        """The gate view last rendered."""
        self._phase_ids: list[str] = []
        self._ready = False
        self._keys_state: tuple[bool | None, ...] = ()

    # --- composition ------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Header, phase strip, banner, checklist and details, gate, footer."""
        yield StatusHeader(id="rb-header")
        yield Static("", id="rb-phases")
        yield Static("", id="rb-banner")
        with Container(id="rb-body"):
            yield Checklist(id="rb-checklist")
            yield StepDetails(id="rb-details")
        yield GateBar(id="rb-gate")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        """Draw at once."""
        self._ready = True
        self.refresh_view()

    def on_screen_resume(self) -> None:
        """Draw what changed while another screen was on top."""
        self.refresh_view()

    @property
    def session(self) -> DeploymentSession | None:
        """The driver's session (None when it could not be built)."""
        return self.driver.session

    @property
    def checklist(self) -> Checklist:
        """The checklist widget."""
        return self.query_one(Checklist)

    @property
    def details(self) -> StepDetails:
        """The details pane."""
        return self.query_one(StepDetails)

    @property
    def gate_bar(self) -> GateBar:
        """The gate bar."""
        return self.query_one(GateBar)

    # --- rendering -----------------------------------------------------------------------------

    def _phases(self) -> list[Phase]:
        session = self.session
        if session is None:
            return []
        if session.active:
            return session.phases()
        try:
            return list(session.runbook.procedure("deployment").phases)
        except KeyError:
            return list(session.runbook.procedures[0].phases)

    def refresh_view(self) -> None:
        """Render the session's state as of now (called on changes and once a second)."""
        if not self._ready or not self.is_attached:
            return
        try:
            self._render_view()
        except NoMatches:
            # The screen is being torn down (the App is closing).
            return

    def _render_view(self) -> None:
        session = self.session
        now = self.driver.now()
        snapshot = self.driver.latest
        phases = self._phases()
        self._phase_ids = [p.id for p in phases]
        current = session.current() if session is not None and session.active else None
        current_phase = session.current_phase() if session is not None else None
        if self.shown_phase not in self._phase_ids:
            self.shown_phase = None
        shown_id = self.shown_phase or (
            current_phase.id if current_phase else (phases[0].id if phases else None)
        )
        shown = next((p for p in phases if p.id == shown_id), None)
        with self.app.batch_update():
            self._gate(session, current)
            self.query_one(StatusHeader).show(self._header_parts(session, snapshot, now))
            self.query_one("#rb-phases", Static).update(
                self._phase_strip(session, phases, shown_id)
            )
            self._banner(session)
            current_id = current[1].id if current else None
            if shown is None:
                self.checklist.show([], current=None, follow=None)
                self.details.show(None, self.driver.idle_text())
            else:
                step_ids = [s.id for s in shown.steps]
                following = self.selected is None or self.selected not in step_ids
                target = current_id if following and current_id in step_ids else None
                self.checklist.show(self._rows(session, shown), current=current_id, follow=target)
                step_id = (target or self.checklist.selected) if following else self.selected
                step = next((s for s in shown.steps if s.id == step_id), None)
                if session is None or not session.active or step is None:
                    self.details.show(None, self.driver.idle_text())
                else:
                    self.details.show(self._detail_view(session, step, current_id, snapshot, now))
        # The footer rebuilds itself on every refresh_bindings: only when a key changed.
        keys = tuple(self.check_action(a, ()) for a in _DRIVING)
        if keys != self._keys_state:
            self._keys_state = keys
            self.refresh_bindings()

    def _header_parts(
        self, session: DeploymentSession | None, snapshot: Snapshot | None, now: datetime
    ) -> list[Content]:
        parts: list[Content] = []
        if session is None or not session.active:
            parts.append(Content("no deployment"))
            if session is not None:
                parts.append(Content(f"{session.runbook.title} {session.runbook.version}"))
        else:
            engine = session.engine
            outcome = engine.state.outcome
            label = Content.assemble(("deploy ", "bold"), engine.deployment_id)
            if outcome != "in_progress":
                level = Level.OK if outcome == "completed" else Level.WARNING
                label = Content.assemble(
                    label, " ", (outcome.replace("_", " "), level_style(level))
                )
            parts.append(label)
            phase = session.current_phase()
            if phase is not None:
                level, text = phase_countdown(session.phase_clock(phase.id))
                parts.append(
                    Content.assemble(
                        (phase_label(phase.title), "bold"), " ", (text, level_style(level))
                    )
                )
        split = snapshot.traffic if snapshot is not None else None
        if split is None and session is not None:
            split = session.split
        if split is not None:
            level, text = split_text(split)
            parts.append(Content.assemble(("traffic ", "bold"), (text, level_style(level))))
        parts.append(Content(self.driver.operator))
        if session is not None and session.busy:
            parts.append(Content.assemble(badge_part(Badge(Level.WARNING, session.busy, "▶"))))
        return parts

    def _phase_strip(
        self, session: DeploymentSession | None, phases: list[Phase], shown_id: str | None
    ) -> Content:
        pieces: list[Content] = []
        for phase in phases:
            if session is not None and session.active:
                records = [session.record(s.id) for s in phase.steps]
                started = phase.id in session.engine.state.phase_started
                badge = step_badge(phase_state(records, started=started))
            else:
                badge = step_badge(StepState.PENDING)
            label = phase_label(phase.title)
            if phase.id == shown_id:
                piece = Content.assemble(
                    (badge.glyph + " ", level_style(badge.level)), (f"[{label}]", "bold reverse")
                )
            else:
                piece = Content.assemble((badge.glyph + " ", level_style(badge.level)), label)
            pieces.append(piece)
        return Content("  ").join(pieces)

    def _banner(self, session: DeploymentSession | None) -> None:
        banner = self.query_one("#rb-banner", Static)
        text = ""
        warning = False
        if session is not None and session.rollback_offered:
            auto = " (automatic rollback requested)" if session.engine.automatic_rollback else ""
            text = (
                f"✖ ROLLBACK OFFERED{auto}: {session.rollback_reason}. Press F9 to move all "
                "traffic back to blue; Continue runs the window again."
            )
        elif session is not None and session.persist_error:
            warning = True
            text = f"▲ progress not saved in the audit trail: {session.persist_error}"
        elif self.driver.error:
            warning = True
            text = f"▲ {self.driver.error}"
        banner.set_class(bool(text), "-shown")
        banner.set_class(warning, "-warning")
        banner.update(text)

    def _rows(self, session: DeploymentSession | None, phase: Phase) -> list[ChecklistRow]:
        rows = []
        for step in phase.steps:
            if session is not None and session.active:
                record = session.record(step.id)
                rows.append(
                    ChecklistRow(
                        step.id,
                        step_badge(record.state),
                        step.title,
                        evidence_summary(step, record),
                    )
                )
            else:
                rows.append(ChecklistRow(step.id, step_badge(StepState.PENDING), step.title))
        return rows

    def _detail_view(
        self,
        session: DeploymentSession,
        step: Step,
        current_id: str | None,
        snapshot: Snapshot | None,
        now: datetime,
    ) -> StepDetailView:
        engine = session.engine
        record = session.record(step.id)
        kind = engine.effective_kind(step)
        is_current = step.id == current_id
        outcomes: list[Outcome]
        judged_at: datetime | None
        if is_current and record.state is not StepState.RUNNING:
            gate = (
                self.view.gate if self.view is not None and self.view.step_id == step.id else None
            )
            gate = gate or engine.gate()
            outcomes = list(gate.outcomes) if gate is not None else []
            judged_at = snapshot.taken_at if snapshot is not None else None
        else:
            outcomes = _recorded_outcomes(record.evidence)
            judged_at = _when(record.evidence.get("snapshot_taken_at"))
        spec = engine.command_for(step.id)
        progress = session.monitor_progress()
        if progress is not None and progress.step_id != step.id:
            progress = None
        live = self.driver.output.get(step.id)
        tail = record.evidence.get("output_tail")
        output = live if live is not None else (tail if isinstance(tail, list) else [])
        return StepDetailView(
            step=step,
            kind=kind,
            record=record,
            current=is_current,
            outcomes=outcomes,
            judged_at=judged_at,
            argv=list(spec.argv) if spec is not None else None,
            progress=progress,
            alerts=snapshot.alerts if snapshot is not None else (),
            now=now,
            output=[str(line) for line in output],
        )

    def _gate(self, session: DeploymentSession | None, current: tuple[Phase, Step] | None) -> None:
        bar = self.gate_bar
        if session is None:
            view = GateView(
                step_id=None,
                kind=None,
                state=None,
                open=False,
                reasons=[self.driver.error or "the runbook could not be loaded"],
            )
        elif not session.active:
            view = GateView(
                step_id=None,
                kind=None,
                state=None,
                open=False,
                reasons=["no deployment: press n to start one" + self.driver.resume_hint()],
            )
        else:
            view = session.gate_view(typed=bar.typed)
        self.view = view
        target = (
            current[1].green_percentage
            if current is not None and isinstance(current[1], TrafficStep)
            else None
        )
        bar.show(view, target=target)

    # --- actions --------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Continue only through an open gate; the other keys only where they apply."""
        session = self.session
        active = session is not None and session.active and not session.finished
        view = self.view
        if action in _DRIVING and self.driver.read_only:
            return False
        if action == "continue":
            return True if active and view is not None and view.open else None
        if action == "skip":
            return True if active and view is not None and view.can_skip else None
        if action == "cancel_command":
            return active and view is not None and view.can_cancel
        if action in ("start", "start_planned_rollback"):
            return session is not None and not active
        if action == "resume":
            return session is not None and not active and bool(self.driver.unfinished())
        if action == "end":
            return active
        return True

    def action_continue(self) -> None:
        """The current step's Continue (asks for a note on attestations)."""
        session = self.session
        if session is None or not session.active:
            return
        typed = self.gate_bar.typed
        view = session.gate_view(typed=typed)
        if not view.open:
            self.notify("; ".join(view.reasons), title="gate closed", severity="warning")
            return
        cur = session.current()
        if cur is None:
            return
        _, step = cur
        if view.needs_note:
            prompt = getattr(step, "prompt", "") or step.description
            lines = [f"{step.title} ({step.id})", f"runbook: {step.source}"]
            if prompt:
                lines.append(prompt)
            if step.runbook_command:
                lines.append("runbook command: " + command_line(step.runbook_command))
            lines.append("Your note goes to the audit trail and the deployment report.")

            def attest(note: str | None) -> None:
                if note:
                    self._run_step(step.id, note=note, typed=typed)

            self.app.push_screen(
                ReasonDialog(
                    f"Attest: {step.title}",
                    lines,
                    placeholder="what you checked, where, and what you saw",
                    confirm="Attest",
                ),
                attest,
            )
            return
        self._run_step(step.id, typed=typed)

    def _run_step(self, step_id: str, *, note: str | None = None, typed: str | None = None) -> None:
        self.driver.output.pop(step_id, None)
        self.run_worker(
            self._proceed(step_id, note, typed),
            group="runbook-step",
            exit_on_error=False,
            description=f"runbook step {step_id}",
        )

    async def _proceed(self, step_id: str, note: str | None, typed: str | None) -> None:
        session = self.session
        if session is None:
            return
        lines = self.driver.output.setdefault(step_id, [])

        def on_output(line: str) -> None:
            lines.append(line)
            self.refresh_view()

        try:
            record = await session.proceed(note=note, typed=typed, on_output=on_output)
        except DeploymentError as exc:
            self.notify(str(exc), title=f"step {step_id}", severity="error", timeout=10)
            self.refresh_view()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an audit trail that lost a record, an engine bug
            self.notify(
                f"{type(exc).__name__}: {exc}",
                title=f"step {step_id}",
                severity="error",
                timeout=15,
            )
            self.refresh_view()
            return
        if record.state is not StepState.RUNNING:
            self.gate_bar.clear_typed()
        badge = step_badge(record.state)
        severity: Literal["information", "error"] = (
            "error" if record.state is StepState.FAILED else "information"
        )
        message = f"{badge.text}" + (f": {record.reason}" if record.reason else "")
        self.notify(message, title=f"step {step_id}", severity=severity, timeout=6)
        self.refresh_view()

    def action_skip(self) -> None:
        """Skip the current step, asking for the reason."""
        session = self.session
        if session is None or not session.active:
            return
        view = session.gate_view(typed=self.gate_bar.typed)
        if not view.can_skip or view.step_id is None:
            self.notify(view.skip_reason or "nothing to skip", title="skip", severity="warning")
            return
        step_id = view.step_id
        record = session.record(step_id)
        lines = [f"Skip {step_id}: it does not pass."]
        if record.state is StepState.FAILED and record.reason:
            lines.append(f"failed: {record.reason}")
        elif view.reasons:
            lines.extend(f"- {r}" for r in view.reasons)
        lines.append("The skip and your reason go to the audit trail and the deployment report.")

        def skip(reason: str | None) -> None:
            if not reason:
                return
            try:
                done = session.skip(reason)
            except DeploymentError as exc:
                self.notify(str(exc), title="skip", severity="error", timeout=10)
            else:
                self.notify(
                    f"{step_badge(done.state).text}: {done.reason}", title=f"step {step_id}"
                )
            self.refresh_view()

        self.app.push_screen(
            ReasonDialog(
                f"Skip step {step_id}",
                lines,
                placeholder="why it is safe to go on without this step",
                confirm="Skip step",
                variant="warning",
            ),
            skip,
        )

    def action_cancel_command(self) -> None:
        """Stop the running command."""
        session = self.session
        if session is not None and session.cancel_command():
            self.notify("cancelling the command…", title="command")
        else:
            self.notify("no command is running", title="command", severity="warning")

    def action_start(self) -> None:
        """Start a new deployment."""
        self.driver.start_new()
        self.shown_phase = None
        self.selected = None
        self.refresh_view()

    def action_start_planned_rollback(self) -> None:
        """Start the runbook's planned rollback as its own checklist flow."""
        self.driver.start_new("planned-rollback")
        self.shown_phase = None
        self.selected = None
        self.refresh_view()

    def action_resume(self) -> None:
        """Offer the unfinished deployment again."""
        self.driver.prompt_resume()

    def action_end(self) -> None:
        """End the deployment early, with a reason."""
        session = self.session
        if session is None or not session.active or session.finished:
            return

        def end(answer: tuple[str, str] | None) -> None:
            if answer is None:
                return
            outcome, reason = answer
            try:
                session.end("rolled_back" if outcome == "rolled_back" else "aborted", reason)
            except DeploymentError as exc:
                self.notify(str(exc), title="end deployment", severity="error", timeout=10)
            self.refresh_view()

        self.app.push_screen(
            EndDialog(session.engine.deployment_id, rolled_back=session.rollback_offered), end
        )

    def action_phase(self, delta: int) -> None:
        """Show the previous or next phase."""
        if not self._phase_ids:
            return
        shown = self.shown_phase or self._current_phase_id() or self._phase_ids[0]
        index = self._phase_ids.index(shown) if shown in self._phase_ids else 0
        index = max(0, min(len(self._phase_ids) - 1, index + delta))
        self.shown_phase = self._phase_ids[index]
        self.selected = None
        self.refresh_view()

    def _current_phase_id(self) -> str | None:
        session = self.session
        phase = session.current_phase() if session is not None else None
        return phase.id if phase is not None else None

    def action_follow(self) -> None:
        """Back to the current phase and step."""
        self.shown_phase = None
        self.selected = None
        self.refresh_view()

    def action_close(self) -> None:
        """Back to the dashboard."""
        if self.app.screen is self:
            self.app.pop_screen()

    # --- events ---------------------------------------------------------------------------------

    @on(Checklist.Selected)
    def _picked(self, event: Checklist.Selected) -> None:
        session = self.session
        current = session.current() if session is not None and session.active else None
        self.selected = (
            None if current is not None and current[1].id == event.step_id else event.step_id
        )
        self.refresh_view()

    @on(Button.Pressed, "#gate-continue")
    def _continue_pressed(self) -> None:
        self.action_continue()

    @on(Button.Pressed, "#gate-skip")
    def _skip_pressed(self) -> None:
        self.action_skip()

    @on(Button.Pressed, "#gate-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel_command()

    @on(Input.Changed, "#gate-typed")
    def _typed_changed(self) -> None:
        self._gate(
            self.session, self.session.current() if self.session and self.session.active else None
        )
        self.refresh_bindings()

    @on(Input.Submitted, "#gate-typed")
    def _typed_submitted(self) -> None:
        self.action_continue()

    def restyle(self) -> None:
        """Recolour what cannot follow a theme change by itself (table cells)."""
        self.checklist.restyle()
