"""The emergency rollback in the TUI: the key, the confirmation, the rollback screen.

This module owns what happens between the rollback key and the end of the procedure:

* :class:`RollbackDriver` -- the App's rollback. A press takes the pre-flight decision
  (:meth:`console.rollback.RollbackController.preflight`) and, when blue is safe, starts
  the procedure at once; when blue is unhealthy, decommissioned or failing its hash, it
  asks first (:class:`RollbackConfirmScreen`). A press while a rollback is being decided or
  runs starts nothing: the running rollback's screen comes to the front.
* :class:`RollbackScreen` -- every step with its state, the milliseconds since the key
  press and its detail; the failed switch attempts with their backoff; the manual
  fallback; the total against the runbook's 30 s budget.
* :class:`RollbackConfirmScreen` -- why blue is not safe, and an explicit question.
* :class:`RollbackProgress` -- one progress event, as a message to the App.

The procedure runs on a private asyncio loop in its own thread (the console's
:class:`~console.ui.polling.SweepLoop` kind, a second one), never on the App's loop or the
sweep loop: a slow frame, a hung sweep or a running command cannot hold up the switch.
Its progress events are posted to the App as :class:`RollbackProgress` messages (Textual's
``post_message`` is thread-safe) and folded into a
:class:`~widgets.rollback_steps.RollbackView` on the main thread only.

``console.rollback`` (and httpx behind it) is imported on the rollback thread while the
console starts, not on the App's import path: the first frame does not wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static

from console.sweeps import SweepLoop

if TYPE_CHECKING:
    from concurrent.futures import Future

    from backends.models import Snapshot
    from console.config import AppConfig
    from console.rollback import (
        RollbackController,
        RollbackEvent,
        RollbackResult,
        RollbackSafety,
        RollbackTicket,
    )
    from widgets.rollback_steps import RollbackView

__all__ = [
    "DECOMMISSION_STEP",
    "HOTKEY_REASON",
    "RollbackConfirmScreen",
    "RollbackDriver",
    "RollbackPhase",
    "RollbackProgress",
    "RollbackScreen",
]

log = logging.getLogger(__name__)

HOTKEY_REASON = "emergency rollback from the console's rollback key"
"""The reason recorded for a key press (the key gives no other)."""

DECOMMISSION_STEP = "decommission-blue"
"""The runbook step that shuts blue down (Phase 3.1); once it ran, a rollback asks first."""

TICK_S = 0.1
"""How often the rollback screen redraws the live elapsed time while the procedure runs."""


class RollbackProgress(Message):
    """One progress event of the procedure (posted from the rollback thread)."""

    def __init__(self, event: RollbackEvent) -> None:
        """Create the message.

        Args:
            event: The procedure's event.
        """
        super().__init__()
        self.event = event


# --- the rollback screen --------------------------------------------------------------------


class RollbackScreen(Screen[None]):
    """One rollback, step by step, timed from the key press.

    Layout, top to bottom: the title; the verdict, the budget and the context (reason,
    trigger, pre-flight, incident); the manual fallback (only when the switch failed); the
    steps (the switch's failed attempts under it); the footer. Escape goes back to the
    screen underneath: the rollback goes on, and the rollback key shows it again.
    """

    BINDINGS = [
        Binding(
            "escape",
            "hide",
            "Back",
            id="rollback-back",
            tooltip="Back to the previous screen; a running rollback goes on "
            "(the rollback key shows it again)",
        ),
    ]

    DEFAULT_CSS = """
    RollbackScreen {
        layout: vertical;
        background: $background;
    }
    RollbackScreen > #rollback-title {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $error;
        text-style: bold;
    }
    RollbackScreen > #rollback-body {
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(
        self,
        driver: RollbackDriver,
        view: RollbackView,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the screen of one rollback.

        Args:
            driver: The App's rollback driver (it redraws this screen on every event).
            view: The rollback to show.
            monotonic: The clock of the live elapsed time.
        """
        super().__init__()
        self.driver = driver
        self.view = view
        self._monotonic = monotonic

    def compose(self) -> ComposeResult:
        """Title, headline, fallback, steps, footer."""
        from widgets.rollback_steps import (
            ManualFallback,
            PreflightReasons,
            RollbackHeadline,
            RollbackSteps,
        )

        yield Static(Content("EMERGENCY ROLLBACK TO BLUE"), id="rollback-title", markup=False)
        yield RollbackHeadline(id="rollback-headline")
        with VerticalScroll(id="rollback-body"):
            yield ManualFallback(id="rollback-fallback")
            yield RollbackSteps(id="rollback-steps")
            yield PreflightReasons(id="rollback-preflight")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        """Draw, and keep the elapsed time moving while the procedure runs."""
        self.driver._screens.append(self)
        self.show(self.view)
        self.set_interval(TICK_S, self._tick, name="rollback-elapsed")

    def on_unmount(self) -> None:
        """Stop receiving redraws."""
        if self in self.driver._screens:
            self.driver._screens.remove(self)

    def show(self, view: RollbackView) -> None:
        """Draw a rollback (the driver calls this on every change)."""
        from widgets.rollback_steps import (
            ManualFallback,
            PreflightReasons,
            RollbackHeadline,
            RollbackSteps,
        )

        self.view = view
        now = self._monotonic() if view.running else None
        with self.app.batch_update():
            self.query_one(RollbackHeadline).show(view, now)
            self.query_one(ManualFallback).show(view)
            self.query_one(RollbackSteps).show(view)
            self.query_one(PreflightReasons).show(view)

    def _tick(self) -> None:
        from widgets.rollback_steps import RollbackHeadline

        if self.view.running:
            self.query_one(RollbackHeadline).show(self.view, self._monotonic())

    @property
    def verdict_text(self) -> str:
        """The verdict line as drawn (plain), for tests."""
        from widgets.rollback_steps import RollbackHeadline

        return self.query_one(RollbackHeadline).verdict_text

    def action_hide(self) -> None:
        """Back to the screen underneath (a running rollback goes on)."""
        self.dismiss(None)
        self.driver.hidden()


# --- the confirmation -------------------------------------------------------------------------


class RollbackConfirmScreen(ModalScreen[float | None]):
    """Blue is not safe (or the runbook only offers a rollback): say why, ask explicitly.

    Dismissed with ``time.monotonic()`` at the confirming key press (the rollback's clock
    starts there), or None when cancelled.
    """

    BINDINGS = [
        Binding(
            "enter,y",
            "confirm",
            "Roll back anyway",
            id="rollback-confirm",
            tooltip="Roll back to blue although the pre-flight named reasons not to",
            priority=True,
        ),
        Binding(
            "escape,n",
            "cancel",
            "Cancel",
            id="rollback-cancel",
            tooltip="Do not roll back: traffic stays as it is (the refusal is recorded)",
            priority=True,
        ),
    ]

    DEFAULT_CSS = """
    RollbackConfirmScreen {
        align: center middle;
    }
    RollbackConfirmScreen > Vertical {
        width: 76;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: heavy $error;
        border-title-color: $error;
        border-title-style: bold;
        background: $surface;
        padding: 0 1;
    }
    RollbackConfirmScreen .confirm--offer {
        text-style: bold;
    }
    RollbackConfirmScreen .confirm--reasons {
        color: $error;
    }
    RollbackConfirmScreen .confirm--source {
        color: $text-muted;
    }
    RollbackConfirmScreen .confirm--question {
        text-style: bold;
        margin-top: 1;
    }
    RollbackConfirmScreen .confirm--keys {
        color: $text-muted;
    }
    """

    def __init__(self, safety: RollbackSafety, *, offer: str | None = None) -> None:
        """Create the question.

        Args:
            safety: The pre-flight decision and its reasons.
            offer: Why the rollback is offered, when it was not the operator's own key
                press (an alert during a monitor window).
        """
        super().__init__()
        self.safety = safety
        self.offer = offer

    @property
    def reasons_text(self) -> str:
        """Every reason, one per line, as shown."""
        if self.safety.reasons:
            return "\n".join(f"✖ {reason}" for reason in self.safety.reasons)
        return "✔ blue looks safe"

    def compose(self) -> ComposeResult:
        """Why, what it is based on, the question, the keys."""
        with Vertical() as box:
            box.border_title = "confirm emergency rollback to blue"
            if self.offer:
                yield Static(
                    Content(f"The runbook offers a rollback: {self.offer}"),
                    classes="confirm--offer",
                )
            if self.safety.reasons:
                yield Static(Content("Blue is not safe to roll back to:"))
            yield Static(Content(self.reasons_text), classes="confirm--reasons")
            yield Static(
                Content(f"judged from: {self.safety.source or 'unknown'}"),
                classes="confirm--source",
            )
            yield Static(Content("Roll back to blue anyway?"), classes="confirm--question")
            yield Static(
                Content("enter / y: roll back anyway · esc / n: cancel, traffic stays as it is"),
                classes="confirm--keys",
            )

    def action_confirm(self) -> None:
        """Roll back: the clock starts at this key press."""
        at = time.monotonic()
        self.dismiss(at)

    def action_cancel(self) -> None:
        """Do not roll back."""
        self.dismiss(None)


# --- the driver -------------------------------------------------------------------------------


class RollbackPhase(StrEnum):
    """Where the console's rollback is (a press outside ``idle`` starts nothing)."""

    IDLE = "idle"
    PREFLIGHT = "preflight"
    """Deciding whether blue is safe (at once from a current snapshot, else a probe)."""
    CONFIRMING = "confirming"
    """Waiting for the operator's answer."""
    RUNNING = "running"


@dataclass(frozen=True)
class _Request:
    """One request for a rollback, as the press (or the runbook) made it."""

    started: float
    reason: str
    trigger: str
    automatic: bool
    snapshot: Snapshot | None
    decommissioned: bool
    deployment_id: str | None
    offer: str | None = None
    """Set when the rollback is only offered: always ask, naming this."""


async def _outcome_of(task: asyncio.Task[RollbackResult]) -> RollbackResult:
    # Shielded: whoever stops waiting (the App quitting) must not cancel the rollback.
    return await asyncio.shield(task)


class RollbackDriver:
    """The console's emergency rollback, from the key press to the last step.

    The App makes one, calls :meth:`start` at mount, :meth:`press` from its rollback
    action, :meth:`apply` for each :class:`RollbackProgress`, and :meth:`aclose` at
    unmount. Everything here runs on the App's thread except the ``_here`` methods, which
    run on the rollback thread and touch only the controller.

    Args:
        app: The console App.
        config: The console configuration.
        snapshot: Returns the dashboard's latest snapshot (None before the first).
        deployment_id: Returns the deployment in progress, if any.
        operator: Who is at the keyboard (goes into the incident record).
        monotonic: The clock of the live elapsed time on the rollback screen.
    """

    def __init__(
        self,
        app: App[Any],
        config: AppConfig,
        *,
        snapshot: Callable[[], Snapshot | None],
        deployment_id: Callable[[], str | None] = lambda: None,
        operator: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        fence: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.app = app
        self.config = config
        self._snapshot = snapshot
        self._deployment_id = deployment_id
        self._operator = operator
        self._fence = fence
        self._monotonic = monotonic
        self.blue_decommissioned = False
        """Blue is known to be shut down, whatever the runbook says: a rollback then asks first.

        The runbook's own record counts as well (see :meth:`decommissioned`)."""
        self.phase = RollbackPhase.IDLE
        self.view: RollbackView | None = None
        """The current (or last) rollback as shown."""
        self.results: list[RollbackResult] = []
        """Every rollback this console ran to its end, oldest first."""
        self._loop: SweepLoop | None = None
        self._controller: RollbackController | None = None
        """Made and used on the rollback thread only."""
        self._screens: list[RollbackScreen] = []
        self._confirm: RollbackConfirmScreen | None = None
        self._current: tuple[_Request, RollbackSafety | None, bool, float] | None = None
        """The rollback being decided or run: request, pre-flight, confirmed, clock start."""
        self._shown: str | None = None

    def decommissioned(self) -> bool:
        """Is blue decommissioned? Then even a healthy-looking blue needs a confirmation.

        True when :attr:`blue_decommissioned` is set, or when the deployment loaded in the
        runbook screen has run (or is running) its Phase 3.1 shutdown of blue, the step
        :data:`DECOMMISSION_STEP`, passed or attested. A skipped or failed shutdown does not
        count: blue's health probes then decide. Read on the App's thread, at the key press.
        """
        if self.blue_decommissioned:
            return True
        from console.runbook.engine import StepState

        driver = getattr(self.app, "runbook_driver", None)
        session = getattr(driver, "session", None)
        if session is None or not session.active:
            return False
        try:
            record = session.record(DECOMMISSION_STEP)
        except KeyError:  # the loaded procedure has no such step (a planned rollback)
            return False
        return record.state in (StepState.RUNNING, StepState.PASSED, StepState.ATTESTED)

    # -- the rollback thread -------------------------------------------------------------

    def start(self) -> None:
        """Start the rollback thread and warm it up (imports, the traffic switch)."""
        if self._loop is None:
            self._loop = SweepLoop(name="acgs-rollback")
            self.app.run_worker(
                self._warm_up(self._loop.submit(self._warm_here())),
                group="rollback-warm-up",
                exit_on_error=False,
            )

    def _ensure_loop(self) -> SweepLoop:
        self.start()
        assert self._loop is not None
        return self._loop

    def _controller_here(self) -> RollbackController:
        if self._controller is None:
            from console.rollback import RollbackController

            self._controller = RollbackController(
                self.config, operator=self._operator, fence=self._fence
            )
        return self._controller

    async def _warm_here(self) -> str | None:
        # The first press must not pay for imports or for building the switch.
        import importlib

        controller = self._controller_here()
        for module in ("backends.health", "console.compliance"):
            importlib.import_module(module)
        try:
            controller.switch()
        except Exception as exc:
            return f"the traffic switch cannot be built from the configuration: {exc}"
        return None

    async def _warm_up(self, future: Future[str | None]) -> None:
        try:
            problem = await asyncio.wrap_future(future)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            self.app.notify(
                f"Emergency rollback will fail: {problem}. Fix [traffic] in the config; "
                f"until then: {self.config.rollback.manual_fallback}",
                title="rollback",
                severity="error",
                timeout=30,
            )

    def _post(self, event: RollbackEvent) -> None:
        # Called on the rollback thread: post_message is thread-safe.
        self.app.post_message(RollbackProgress(event))

    async def _begin_here(self, request: _Request) -> tuple[RollbackSafety, RollbackTicket | None]:
        from console.rollback import RollbackSafety, SafetyVerdict

        controller = self._controller_here()
        try:
            safety = await controller.preflight(request.snapshot, request.decommissioned)
        except Exception as exc:  # not knowing is never safe: ask
            log.exception("rollback pre-flight failed")
            safety = RollbackSafety(
                verdict=SafetyVerdict.NEEDS_CONFIRMATION,
                reasons=(f"the pre-flight check failed: {type(exc).__name__}: {exc}",),
                source="pre-flight",
            )
        if not safety.safe or request.offer is not None:
            return safety, None
        return safety, self._trigger_here(request, safety, request.started, confirmed=False)

    def _trigger_here(
        self, request: _Request, safety: RollbackSafety, started: float, *, confirmed: bool
    ) -> RollbackTicket:
        return self._controller_here().trigger(
            started=started,
            reason=request.reason,
            operator=self._operator,
            trigger=request.trigger,
            automatic=request.automatic,
            snapshot=request.snapshot,
            safety=safety,
            confirmed=confirmed,
            progress=self._post,
            deployment_id=request.deployment_id,
        )

    async def _confirmed_here(
        self, request: _Request, safety: RollbackSafety, started: float
    ) -> RollbackTicket:
        return self._trigger_here(request, safety, started, confirmed=True)

    async def _refuse_here(self, request: _Request, safety: RollbackSafety) -> None:
        await self._controller_here().refuse(
            started=request.started,
            reason=request.reason,
            safety=safety,
            operator=self._operator,
            trigger=request.trigger,
            automatic=request.automatic,
            deployment_id=request.deployment_id,
            report=request.automatic,
        )

    async def _close_here(self) -> None:
        if self._controller is not None:
            await self._controller.aclose()

    # -- the App's side ----------------------------------------------------------------------

    def press(
        self,
        started: float,
        *,
        reason: str = HOTKEY_REASON,
        trigger: str = "hotkey",
        automatic: bool = False,
        offer: str | None = None,
    ) -> bool:
        """A request for the emergency rollback (the key, or the runbook).

        Args:
            started: ``time.monotonic()`` at the key press (taken before anything else).
            reason: Why, for the incident record.
            trigger: ``hotkey``, ``automatic``, ...
            automatic: Started by an alert, not a person.
            offer: Only offer it (always ask), naming why it is offered.

        Returns:
            True when this request started the decision; False when a rollback was already
            being decided or running (its screen comes to the front instead).
        """
        if self.phase is not RollbackPhase.IDLE:
            self.bring_to_front()
            return False
        loop = self._ensure_loop()
        self.phase = RollbackPhase.PREFLIGHT
        request = _Request(
            started=started,
            reason=reason,
            trigger=trigger,
            automatic=automatic,
            snapshot=self._snapshot(),
            decommissioned=self.decommissioned(),
            deployment_id=self._deployment_id(),
            offer=offer,
        )
        self._current = (request, None, False, started)
        # Submitted before anything is drawn: the rollback thread starts on it at once.
        future = loop.submit(self._begin_here(request))
        self.app.run_worker(
            self._follow(request, future), group="rollback", name="rollback", exit_on_error=False
        )
        return True

    async def _follow(
        self, request: _Request, future: Future[tuple[RollbackSafety, RollbackTicket | None]]
    ) -> None:
        try:
            safety, ticket = await asyncio.wrap_future(future)
        except Exception as exc:
            self.phase = RollbackPhase.IDLE
            log.exception("the rollback could not start")
            self.app.notify(
                f"The rollback could not start: {type(exc).__name__}: {exc}. "
                f"Manual fallback: {self.config.rollback.manual_fallback}",
                title="rollback",
                severity="error",
                timeout=60,
            )
            return
        if ticket is None:
            if request.automatic and request.offer is None:
                self.app.notify(
                    "Automatic rollback NOT run: blue is not safe ("
                    + "; ".join(safety.reasons)
                    + "). Confirm to roll back anyway.",
                    title="rollback",
                    severity="error",
                    timeout=30,
                )
                self._record_refusal(request, safety)
            self._ask(request, safety)
            return
        await self._watch(request, safety, ticket, confirmed=False, started=request.started)

    def _ask(self, request: _Request, safety: RollbackSafety) -> None:
        self.phase = RollbackPhase.CONFIRMING
        screen = RollbackConfirmScreen(safety, offer=request.offer)
        self._confirm = screen

        def answered(at: float | None) -> None:
            self._confirm = None
            # The operator decided: whatever offered it, this is now a person's decision.
            decided = request
            if request.automatic or request.offer is not None:
                verb = "declined" if at is None else "confirmed"
                decided = _Request(
                    started=request.started if at is None else at,
                    reason=f"{request.reason} (offered, {verb} by the operator)",
                    trigger="hotkey",
                    automatic=False,
                    snapshot=request.snapshot,
                    decommissioned=request.decommissioned,
                    deployment_id=request.deployment_id,
                )
            if at is None:
                self.phase = RollbackPhase.IDLE
                self.app.notify(
                    "Rollback cancelled: traffic is unchanged.", title="rollback", timeout=5
                )
                self._record_refusal(decided, safety)
                return
            confirmed = decided
            self.phase = RollbackPhase.RUNNING
            self._current = (confirmed, safety, True, at)
            future = self._ensure_loop().submit(self._confirmed_here(confirmed, safety, at))
            self.app.run_worker(
                self._watch_future(confirmed, safety, future, at),
                group="rollback",
                name="rollback",
                exit_on_error=False,
            )

        self.app.push_screen(screen, callback=answered)

    def _record_refusal(self, request: _Request, safety: RollbackSafety) -> None:
        future = self._ensure_loop().submit(self._refuse_here(request, safety))

        async def wait() -> None:
            try:
                await asyncio.wrap_future(future)
            except Exception:
                log.exception("recording the rollback refusal failed")

        self.app.run_worker(wait(), group="rollback-refusal", exit_on_error=False)

    async def _watch_future(
        self,
        request: _Request,
        safety: RollbackSafety,
        future: Future[RollbackTicket],
        started: float,
    ) -> None:
        try:
            ticket = await asyncio.wrap_future(future)
        except Exception as exc:
            self.phase = RollbackPhase.IDLE
            self.app.notify(
                f"The rollback could not start: {type(exc).__name__}: {exc}. "
                f"Manual fallback: {self.config.rollback.manual_fallback}",
                title="rollback",
                severity="error",
                timeout=60,
            )
            return
        await self._watch(request, safety, ticket, confirmed=True, started=started)

    async def _watch(
        self,
        request: _Request,
        safety: RollbackSafety,
        ticket: RollbackTicket,
        *,
        confirmed: bool,
        started: float,
    ) -> None:
        self.phase = RollbackPhase.RUNNING
        self._current = (request, safety, confirmed, started)
        view = self._view_for(ticket.incident_id)
        if request.automatic:
            self.app.notify(
                f"Automatic rollback to blue started: {request.reason}",
                title="rollback",
                severity="warning",
                timeout=15,
            )
        self._show_once(view)
        loop = self._ensure_loop()
        try:
            result = await asyncio.wrap_future(loop.submit(_outcome_of(ticket.task)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("the rollback procedure failed")
            view.crash(f"{type(exc).__name__}: {exc}", self.config.rollback.manual_fallback)
            self.phase = RollbackPhase.IDLE
            self._redraw()
            self.app.notify(
                f"The rollback failed: {exc}. Traffic is NOT confirmed on blue.",
                title="rollback",
                severity="error",
                timeout=60,
            )
            return
        view.finish(result)
        self.results.append(result)
        self.phase = RollbackPhase.IDLE
        self._redraw()
        if not isinstance(self.app.screen, RollbackScreen):
            self._notify_result(result)

    def _notify_result(self, result: RollbackResult) -> None:
        from console.rollback import RollbackOutcome

        if result.outcome is RollbackOutcome.VERIFIED:
            self.app.notify(
                f"Rolled back to blue and verified in {result.total_ms:.0f} ms.",
                title="rollback",
                timeout=10,
            )
        else:
            view = self.view
            words = view.headline()[1] if view is not None else result.outcome.value
            fallback = (
                f" Manual fallback: {result.manual_fallback}" if result.manual_fallback else ""
            )
            problems = "; ".join(result.problems[:2])
            self.app.notify(
                f"Rollback ended: {words}. {problems}.{fallback}",
                title="rollback",
                severity="error",
                timeout=120,
            )

    def _view_for(self, incident_id: str) -> RollbackView:
        from widgets.rollback_steps import RollbackView

        view = self.view
        if view is None or view.incident_id != incident_id:
            view = RollbackView(
                incident_id,
                budget_s=self.config.thresholds.rollback_budget_s,
                manual_fallback=self.config.rollback.manual_fallback,
            )
            self.view = view
        if self._current is not None and view.result is None:
            request, safety, confirmed, started = self._current
            view.reason, view.trigger, view.started = request.reason, request.trigger, started
            view.safety, view.confirmed = safety or view.safety, confirmed
        return view

    def apply(self, event: RollbackEvent) -> None:
        """Fold a progress event in and redraw (the App calls this for each message)."""
        from console.rollback import RollbackEventKind

        view = self._view_for(event.incident_id)
        changed = view.apply(event)
        if event.kind is RollbackEventKind.STARTED:
            self._show_once(view)
        elif changed:
            self._redraw()
        failed = event.kind in (
            RollbackEventKind.ATTEMPT_FAILED,
            RollbackEventKind.MANUAL_FALLBACK,
        )
        if failed and changed and not isinstance(self.app.screen, RollbackScreen):
            # The operator hid the rollback screen: a failing switch must still be loud.
            self._say_failing(view)

    def hidden(self) -> None:
        """The operator hid the rollback screen: if its switch is failing, keep saying so."""
        view = self.view
        if view is not None and view.switch_failing:
            self._say_failing(view)

    def _say_failing(self, view: RollbackView) -> None:
        self.app.notify(
            f"Rollback: {view.headline()[1]}. The rollback key shows it.",
            title="rollback",
            severity="error",
            timeout=30,
        )

    def _show_once(self, view: RollbackView) -> None:
        # The screen comes up once per rollback; hidden with escape, it stays hidden
        # until the rollback key asks for it.
        if self._shown == view.incident_id:
            self._redraw()
            return
        self._shown = view.incident_id
        self.show()

    def show(self) -> None:
        """Put the current (or last) rollback's screen in front."""
        view = self.view
        if view is None:
            return
        top = self.app.screen
        if isinstance(top, RollbackScreen):
            top.show(view)
            return
        self.app.push_screen(RollbackScreen(self, view, monotonic=self._monotonic))

    def bring_to_front(self) -> None:
        """A press while a rollback is decided or runs: show it, start nothing."""
        if self.phase is RollbackPhase.CONFIRMING:
            if self._confirm is not None and self.app.screen is not self._confirm:
                self.app.notify(
                    "A rollback confirmation is waiting underneath: close this screen "
                    "to answer it.",
                    title="rollback",
                    severity="warning",
                )
            return
        if self.phase is RollbackPhase.PREFLIGHT:
            self.app.notify(
                "The rollback is starting (checking blue); not starting another.",
                title="rollback",
                timeout=3,
            )
            return
        self.app.notify(
            "A rollback is already running; not starting another.", title="rollback", timeout=3
        )
        self.show()

    def _redraw(self) -> None:
        view = self.view
        if view is None:
            return
        for screen in list(self._screens):
            if screen.is_attached:
                screen.show(view)

    async def aclose(self) -> None:
        """Wait (up to the budget) for a running rollback, release, stop the thread."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            await loop.run(
                self._close_here(), timeout=max(5.0, self.config.thresholds.rollback_budget_s)
            )
        except Exception:
            log.exception("closing the rollback controller failed")
        loop.stop()
