"""The console's Textual App: polling, themes, keys, and the entry point for the CLI.

The App owns *when* things happen; the screens own *what* is shown.

Polling
    A worker awaits one sweep of the snapshot source, run on a private event
    loop (:class:`~console.ui.polling.SweepLoop`), and posts the result as a
    message; the main thread renders it and only then arms the next poll with
    ``set_timer``. Polls never overlap and never pile up; a failing source
    backs off. While a modal (help, palette) covers the dashboard, results
    are kept but not rendered; the newest is drawn when the dashboard returns.
    A one-second tick re-renders ages, timers and staleness between sweeps, so
    a hung probe turns the screen stale instead of freezing it.

Start-up
    The first frame that matters is the one with data. The CLI starts the
    sweep thread before it imports Textual (:func:`console.sweeps.start_first_sweep`):
    the snapshot source (the monitor, with httpx and the back-ends behind it)
    is built there and its first sweep runs while the UI imports and paints.
    The App takes that loop, source and result over (``first_sweep``); without
    one it starts the same on mount. What the first data frame does not need
    (the rollback thread's warm-up, the lease and shared state, the runbook's
    resume prompt, and the redis and psycopg imports behind them) starts only
    once the first sweep has been drawn, or after :data:`STARTUP_GRACE_S`.

Themes
    ``acgs-dark`` (default), ``acgs-light``, ``acgs-high-contrast``. Chosen by
    ``$TEXTUAL_THEME`` (this run), else the operator's last pick (persisted in
    the user state directory, see :mod:`console.ui.ui_state`), else the
    config's ``ui.theme``. A bad name falls back to ``acgs-dark`` with a
    notification.

Keys
    Every binding has an id and a tooltip; ``ui.keymap`` remaps by id
    (``App.set_keymap``). ``rollback`` (F9) is app-level so it works on every
    screen; a read-only console cannot reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import App
from textual.binding import Binding, BindingType
from textual.theme import Theme

from backends.models import Snapshot, utcnow
from console.identity import operator_identity
from console.sweeps import (
    FirstSweep,
    FirstSweepResult,
    SnapshotSource,
    SourceFactory,
    SweepLoop,
    default_source_factory,
    start_first_sweep,
    sweep_timeout_s,
)
from console.ui.commands import ConsoleCommands
from console.ui.polling import SweepCompleted, SweepFailed
from console.ui.screens.dashboard import DashboardScreen, DashboardState
from console.ui.screens.help import HelpScreen, key_help
from console.ui.screens.operators import (  # operators (issue 7)
    OPERATOR_ACTIONS,
    LeaseChanged,
    OperatorsDriver,
    OperatorsScreen,
)
from console.ui.screens.rollback import (
    RollbackConfirmScreen,
    RollbackDriver,
    RollbackProgress,
    RollbackScreen,
)
from console.ui.screens.runbook_driver import RunbookDriver  # runbook (issue 5)
from themes.themes import CSS_PATH, DEFAULT_THEME, THEME_NAMES, THEMES, VARIABLE_DEFAULTS

if TYPE_CHECKING:
    from console.config import AppConfig

STARTUP_GRACE_S = 2.0
"""The deferred start-up runs this long after mount at the latest, first sweep or not."""

DEFERRED_DELAY_S = 0.3
"""... and this long after the first data frame is drawn: the frame is written to the
terminal by Textual's writer thread, which the start-up's imports would otherwise hold up."""

MAX_BACKOFF_S = 30.0
"""Longest wait between retries of a failing source."""

SPARKLINE_SPAN_S = 300.0
"""What a sparkline covers: the last five minutes (a column per 10 s at 1 s refresh)."""


@dataclass(frozen=True)
class ConsoleCommand:
    """One command palette entry."""

    title: str
    help: str
    callback: Callable[[], object]


class ConsoleApp(App[int]):
    """The acgs-console TUI."""

    TITLE = "acgs-console"
    CSS_PATH = CSS_PATH
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    ENABLE_COMMAND_PALETTE = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "f9",
            "rollback",
            "Rollback",
            id="rollback",
            tooltip="Emergency rollback: move all traffic back to blue",
            priority=True,
        ),
        Binding("question_mark", "help", "Keys", id="help", tooltip="List every key"),
        Binding(
            "ctrl+p",
            "command_palette",
            "Palette",
            id="palette",
            tooltip="Open the command palette (console actions, themes)",
            priority=True,
        ),
        Binding(
            "t",
            "cycle_theme",
            "Theme",
            id="theme",
            tooltip="Switch to the next console theme (the choice is remembered)",
        ),
        Binding(
            "r",
            "refresh",
            "Sweep now",
            id="refresh",
            tooltip="Sweep now instead of waiting for the next poll",
        ),
        Binding(  # runbook (issue 5)
            "d",
            "runbook",
            "Runbook",
            id="runbook",
            tooltip="The guided runbook: each phase as a checklist with its gates (d again: back)",
        ),
        # operators (issue 7): shown on the lease line rather than the full footer.
        Binding(
            "l",
            "take_lead",
            "Take lead",
            id="take-lead",
            tooltip="Take the lead: this console drives (only while nobody holds the lease)",
            show=False,
        ),
        Binding(
            "h",
            "hand_over",
            "Hand over",
            id="hand-over",
            tooltip="Hand over the lead: free the lease so another operator can take it",
            show=False,
        ),
        Binding(
            "o",
            "operators",
            "Operators",
            id="operators",
            tooltip="Who drives, and the four-eyes requests waiting for a second operator",
            show=False,
        ),
        # -- end operators --
        Binding(
            "q", "quit", "Quit", id="quit", tooltip="Quit the console (the estate is untouched)"
        ),
        Binding(
            "ctrl+q",
            "quit",
            "Quit",
            id="quit-now",
            show=False,
            priority=True,
            tooltip="Quit the console from any screen",
        ),
    ]

    def __init__(
        self,
        config: AppConfig,
        source: SnapshotSource | None = None,
        *,
        source_factory: SourceFactory | None = None,
        config_path: Path | None = None,
        read_only: bool = False,
        clock: Callable[[], datetime] = utcnow,
        operator: str | None = None,
        state_dir: Path | None = None,
        poll_interval_s: float | None = None,
        sparkline_samples: int | None = None,
        environ: dict[str, str] | None = None,
        coordinate: bool = False,
        first_sweep: FirstSweep | None = None,
    ) -> None:
        """Create the console.

        Args:
            config: The console configuration.
            source: The snapshot source (tests pass a fake). Give this or ``source_factory``.
            source_factory: Builds the source from ``config`` after the first frame.
            config_path: The file the configuration came from (shown in the help).
            read_only: An observer console: rollback is unreachable.
            clock: "Now" (tests freeze it so snapshots are deterministic).
            operator: Who is at the keyboard (default: from config, SSH and the host).
            state_dir: Where the theme choice persists (default: the user state dir).
            poll_interval_s: Seconds between sweeps (default: ``config.refresh_interval_s``).
            sparkline_samples: Sweeps a sparkline spans (default: five minutes of sweeps).
            environ: The environment (default: ``os.environ``), for ``TEXTUAL_THEME``.
            coordinate: Coordinate with the other consoles of the deployment (lease, shared
                state, four eyes; ``run_tui`` does). Without it the console drives alone.
            first_sweep: The sweep loop with ``source_factory``'s source being built and its
                first sweep running (:func:`console.sweeps.start_first_sweep`); the App
                takes both over. Default: started on mount.
        """
        super().__init__()
        if source is None and source_factory is None:
            raise ValueError("ConsoleApp needs a snapshot source or a source_factory")
        self.config = config
        self.config_path = config_path
        self.read_only = read_only
        self.clock = clock
        self.operator = operator_identity(operator or config.operator)
        self.interval_s = config.refresh_interval_s if poll_interval_s is None else poll_interval_s
        self._source = source
        self._source_factory = source_factory
        self._first_sweep = first_sweep
        self._deferred: list[Callable[[], object]] | None = None
        """Start-up work the first data frame does not need; run once it is drawn."""
        self._sparkline_samples = sparkline_samples
        self._state_dir = state_dir
        self._environ = dict(os.environ if environ is None else environ)
        self._sweeps: SweepLoop | None = None
        self._in_flight = False
        self._poll_timer: object | None = None
        self._failures = 0
        self._error: str | None = None
        self._render_pending = False
        self._last_render = 0.0
        self._deployment: tuple[str | None, str | None] = (None, None)
        self._latest: Snapshot | None = None
        self._startup_notes: list[str] = []
        self.sweeps_completed = 0
        """Sweeps that returned a snapshot (for tests and the status line)."""
        self.rendered_sequence: int | None = None
        """``Snapshot.sequence`` of the snapshot last drawn."""
        # -- rollback (issue 6) --
        self.rollback = RollbackDriver(
            self,
            config,
            snapshot=lambda: self._latest,
            deployment_id=lambda: self._deployment[0],
            operator=self.operator,
            # operators (issue 7): rollback records carry the fence
            fence=lambda: self.operators.fence,
        )
        """The emergency rollback: key, confirmation, procedure thread, rollback screen."""
        # -- end rollback --
        # -- runbook (issue 5) --
        self.runbook_driver = RunbookDriver(self)
        """The guided runbook: deployment session, resume prompt, snapshots to the engine."""
        # -- operators (issue 7) --
        self.operators = OperatorsDriver(self, enabled=coordinate)
        """Several consoles: the lease, shared live state, break-glass, four-eyes approvals."""

        for theme in THEMES:
            self.register_theme(theme)
        self.theme = self._initial_theme()
        self._theme_ready = False
        self._apply_keymap()

    # -- themes and keys -------------------------------------------------------------------

    def get_theme_variable_defaults(self) -> dict[str, str]:
        """Values of the console's own variables for themes that lack them."""
        return dict(VARIABLE_DEFAULTS)

    @property
    def state_dir(self) -> Path:
        """Where the UI state persists."""
        if self._state_dir is None:
            from console.ui.ui_state import default_state_dir

            self._state_dir = default_state_dir()
        return self._state_dir

    def _initial_theme(self) -> str:
        from console.ui.ui_state import load_theme

        configured = self.config.ui.theme
        candidates: list[tuple[str, str]] = []
        env_theme = self._environ.get("TEXTUAL_THEME", "").strip()
        if env_theme:
            candidates.append((env_theme, "$TEXTUAL_THEME"))
        saved = load_theme(self.state_dir, configured)
        if saved:
            candidates.append((saved, "the saved theme choice"))
        candidates.append((configured, "ui.theme in the config"))
        for name, where in candidates:
            if name in self.available_themes:
                return name
            self._startup_notes.append(
                f"Theme {name!r} from {where} is not known; "
                f"use one of {', '.join(THEME_NAMES)} (or any Textual theme)."
            )
        return DEFAULT_THEME

    def _apply_keymap(self) -> None:
        keymap = dict(self.config.ui.keymap)
        if not keymap:
            return  # nothing to check: the catalogue imports every screen (not before a frame)
        known = {b.id for b in self._binding_catalogue() if b.id}
        unknown = sorted(k for k in keymap if k not in known)
        for key in unknown:
            del keymap[key]
        if unknown:
            self._startup_notes.append(
                f"ui.keymap names unknown binding ids {', '.join(unknown)}; "
                f"known ids: {', '.join(sorted(known))}."
            )
        if keymap:
            self.set_keymap(keymap)

    def _binding_catalogue(self) -> list[Binding]:
        bindings: list[Binding] = []
        for source in (
            ConsoleApp.BINDINGS,
            DashboardScreen.BINDINGS,
            HelpScreen.BINDINGS,
            RollbackScreen.BINDINGS,
            RollbackConfirmScreen.BINDINGS,
            *RunbookDriver.binding_sources(),  # runbook (issue 5)
            *OperatorsDriver.binding_sources(),  # operators (issue 7)
        ):
            bindings.extend(b for b in source if isinstance(b, Binding))
        return bindings

    def _on_theme_changed(self, theme: Theme) -> None:
        dashboard = self._dashboard_or_none()
        if dashboard is not None:
            dashboard.restyle()
        if not self._theme_ready:
            return
        from console.ui.ui_state import save_theme

        try:
            save_theme(self.state_dir, theme.name, self.config.ui.theme)
        except OSError as exc:
            self.notify(
                f"Could not remember the theme in {self.state_dir}: {exc.strerror or exc}",
                title="theme",
                severity="warning",
            )

    def action_cycle_theme(self) -> None:
        """Switch to the next console theme."""
        names = list(THEME_NAMES)
        index = names.index(self.theme) + 1 if self.theme in names else 0
        self.theme = names[index % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2)

    # -- screens ---------------------------------------------------------------------------

    async def on_mount(self) -> None:
        """Show the dashboard with the first sweep's data when it is there; defer the rest."""
        history = self._sparkline_samples or max(
            2, min(600, round(SPARKLINE_SPAN_S / self.config.refresh_interval_s))
        )
        # What the first data frame does not need runs once it is drawn (_finish_startup).
        deferred: list[Callable[[], object]] = []
        if not self.read_only:
            # The rollback thread, warmed up so the first press pays for nothing (a press
            # before that starts it on demand).
            deferred.append(self.rollback.start)
        # runbook (issue 5): the resume prompt; the engine ticks each second.
        if self.operators.enabled:
            # operators (issue 7): the runbook starts once the lease is known; until the
            # lease is known the console is read-only (F9 is break-glass).
            deferred.append(self.operators.launch)
        else:
            deferred.append(self.runbook_driver.startup)
        self._deferred = deferred
        dashboard = DashboardScreen(self.config, history=history, on_ready=self._dashboard_ready)
        self._dashboard = dashboard
        # A first sweep started before the UI and already done is taken now; the dashboard
        # draws it once its widgets are mounted (_dashboard_ready), into its first frame.
        self._start()
        await self.push_screen(dashboard)
        self.theme_changed_signal.subscribe(self, self._on_theme_changed)
        self._theme_ready = True
        for note in self._startup_notes:
            self.notify(note, title="configuration", severity="warning", timeout=10)
        if self.rendered_sequence is None:
            self.render_dashboard()  # no data yet: the empty (or failed) dashboard
        self.set_interval(1.0, self._tick, name="dashboard-tick")
        if self.operators.enabled:
            self.set_interval(1.0, self.operators.tick, name="operators-tick")
        self.set_interval(1.0, self.runbook_driver.tick, name="runbook-tick")
        if self._deferred is not None:
            self.set_timer(STARTUP_GRACE_S, self._finish_startup, name="startup-grace")

    def _dashboard_ready(self) -> None:
        if self._render_pending:
            self.render_dashboard()

    def _finish_startup(self) -> None:
        """Run the deferred start-up, once: after the first sweep is drawn, or the grace."""
        deferred, self._deferred = self._deferred, None
        for callback in deferred or ():
            self.set_timer(DEFERRED_DELAY_S, callback)

    def _dashboard_or_none(self) -> DashboardScreen | None:
        return getattr(self, "_dashboard", None)

    @property
    def dashboard(self) -> DashboardScreen:
        """The dashboard screen."""
        return self._dashboard

    def action_help(self) -> None:
        """Show every key."""
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(key_help(self.screen)))

    def action_runbook(self) -> None:
        """Open the guided runbook, or go back from it to the dashboard (runbook, issue 5)."""
        self.runbook_driver.toggle()

    # -- rollback (issue 6) ---------------------------------------------------------------

    def action_rollback(self) -> None:
        """Emergency rollback to blue, from any screen (the key is a priority binding).

        At once when blue is safe; otherwise the console says why and asks. A press
        while a rollback is being decided or runs starts nothing: it comes to the front.
        """
        started = time.monotonic()  # first: the rollback's clock starts at the key press
        if self.read_only:
            return
        if self.operators.wants_break_glass():
            # operators (issue 7): without the lead, F9 is break-glass: a reason, then rollback.
            self.operators.break_glass()
            return
        self.rollback.press(started)

    def start_rollback(
        self, reason: str, *, trigger: str = "automatic", started: float | None = None
    ) -> bool:
        """Start the emergency rollback from code: the runbook screen's ``on_rollback`` hook.

        The same procedure, screen and guards as the rollback key (F9):

        * ``trigger="automatic"`` (a critical alert failed a monitor window): with
          ``rollback.automatic = true`` and blue safe, it starts at once with the reason
          ``automatic: <reason>`` and says so (a notification, the rollback screen, and
          ``automatic`` in the incident record). Blue not safe: traffic is not moved, the
          refusal is recorded (``rollback.refused``) and the operator is asked, with the
          reasons. ``rollback.automatic = false``: the rollback is only offered (the
          confirmation names ``reason``); nothing moves without the operator.
        * any other trigger (``"runbook"``, ``"api"``): like the key, at once when blue is
          safe, else after confirmation.

        A rollback already being decided or running is not doubled: it comes to the front.

        Args:
            reason: Why (the alert, or the runbook's words); goes into the incident record.
            trigger: ``automatic``, or another name recorded as the trigger.
            started: ``time.monotonic()`` when the cause was seen (default: now).

        Returns:
            False in a read-only console (it never rolls back) or when a rollback is already
            being decided or running; True when this call started one (or its question).
        """
        started = time.monotonic() if started is None else started
        if self.read_only:
            self.notify(
                f"Rollback requested ({reason}) but this console is read-only: not run here.",
                title="rollback",
                severity="warning",
            )
            return False
        if trigger != "automatic":
            return self.rollback.press(started, reason=reason, trigger=trigger)
        if not self.config.rollback.automatic:
            return self.rollback.press(started, reason=reason, trigger=trigger, offer=reason)
        return self.rollback.press(
            started, reason=f"automatic: {reason}", trigger=trigger, automatic=True
        )

    @on(RollbackProgress)
    def _rollback_progress(self, message: RollbackProgress) -> None:
        self.rollback.apply(message.event)
        self.operators.rollback_progress(message.event)  # operators (issue 7): tell the others
        from console.rollback import RollbackOutcome

        result = message.event.result
        if result is not None and result.outcome in (
            RollbackOutcome.VERIFIED,
            RollbackOutcome.UNVERIFIED,
        ):
            # Traffic is back on blue: the deployment in progress ends as rolled back.
            self.runbook_driver.rolled_back(f"rollback {result.outcome.value}: {result.reason}")

    # -- end rollback ----------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A read-only console cannot reach rollback at all."""
        if action in OPERATOR_ACTIONS:  # operators (issue 7)
            return self.operators.check_action(action)
        return not (action == "rollback" and self.read_only)

    # -- operators (issue 7) --------------------------------------------------------------

    async def action_take_lead(self) -> None:
        """Take the lead (the lease) when nobody holds it."""
        await self.operators.take_lead()

    async def action_hand_over(self) -> None:
        """Hand the lead over: free the lease for another operator."""
        await self.operators.hand_over()

    def action_operators(self) -> None:
        """Show who drives and the four-eyes requests (again: back)."""
        if isinstance(self.screen, OperatorsScreen):
            self.pop_screen()
        else:
            self.push_screen(OperatorsScreen(self.operators))

    @on(LeaseChanged)
    def _lease_changed(self) -> None:
        self.operators.apply()

    # -- end operators ----------------------------------------------------------------------

    def console_commands(self) -> list[ConsoleCommand]:
        """The command palette's console commands, as allowed right now."""
        commands = [
            ConsoleCommand("Sweep now", "Poll the estate now", self.action_refresh),
            ConsoleCommand("Keys", "List every key and its binding id", self.action_help),
            ConsoleCommand(
                "Jump to blue",
                "Scroll to the blue environment's panel",
                lambda: self._dashboard.action_jump("blue"),
            ),
            ConsoleCommand(
                "Jump to green",
                "Scroll to the green environment's panel",
                lambda: self._dashboard.action_jump("green"),
            ),
        ]
        for name in THEME_NAMES:
            commands.append(
                ConsoleCommand(
                    f"Theme: {name}",
                    "Switch theme (remembered for next time)",
                    lambda name=name: setattr(self, "theme", name),  # type: ignore[misc]
                )
            )
        if not self.read_only:
            commands.insert(
                0,
                ConsoleCommand(
                    "Rollback to blue",
                    "Emergency rollback: move all traffic back to blue (F9)",
                    self.action_rollback,
                ),
            )
        if self.operators.enabled:  # operators (issue 7)
            if self.operators.check_action("take_lead"):
                commands.append(
                    ConsoleCommand(
                        "Take the lead",
                        "Drive this deployment (only while nobody holds the lease)",
                        lambda: self.run_worker(self.operators.take_lead(), exit_on_error=False),
                    )
                )
            if self.operators.check_action("hand_over"):
                commands.append(
                    ConsoleCommand(
                        "Hand over the lead",
                        "Free the lease so another operator can take it",
                        lambda: self.run_worker(self.operators.hand_over(), exit_on_error=False),
                    )
                )
            commands.append(
                ConsoleCommand(
                    "Operators and approvals",
                    "Who drives, and four-eyes requests waiting for a second operator",
                    self.action_operators,
                )
            )
        return commands

    # -- deployment shown in the header ------------------------------------------------------

    def set_deployment(self, deployment_id: str | None, phase: str | None = None) -> None:
        """Show the current deployment and phase in the header (None: "no deployment").

        The runbook engine calls this when a deployment starts, moves phase or ends.
        """
        self._deployment = (deployment_id, phase)
        self.render_dashboard()

    # -- polling ---------------------------------------------------------------------------

    def _start(self) -> None:
        """Start polling; a first sweep already done is taken over at once."""
        first = self._first_sweep
        if self._source is not None:
            self._sweeps = SweepLoop()
            self._poll_now()
            return
        if first is None:
            assert self._source_factory is not None
            first = start_first_sweep(
                self.config, self._source_factory, timeout_s=self.sweep_timeout_s
            )
            self._first_sweep = first
        self._sweeps = first.loop
        self._in_flight = True  # the first sweep runs; a refresh now starts nothing
        if first.future.done():
            # Started before the UI (the CLI does): its result goes into the first frame.
            self._take_over(first, self._first_result(first))
            return
        self.run_worker(self._await_first_sweep(first), group="source", exit_on_error=False)

    @staticmethod
    def _first_result(first: FirstSweep) -> FirstSweepResult:
        try:
            return first.future.result()
        except Exception as exc:
            return FirstSweepResult(
                None, None, f"cannot start the monitor: {type(exc).__name__}: {exc}"
            )

    async def _await_first_sweep(self, first: FirstSweep) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(first.future)
        self._take_over(first, self._first_result(first))

    def _take_over(self, first: FirstSweep, result: FirstSweepResult) -> None:
        """Take over the source built on the sweep thread and its first sweep's result."""
        self._first_sweep = None
        if result.source is None:
            self._in_flight = False
            self._error = result.error
            self.render_dashboard()
            self._finish_startup()
            return
        self._source = result.source
        # Counted from the start, so the next sweep keeps the cadence from the first.
        elapsed = time.monotonic() - first.started
        if result.snapshot is not None:
            self._sweep_completed(SweepCompleted(result.snapshot, elapsed))
        else:
            self._sweep_failed(SweepFailed(result.error or "the first sweep failed", elapsed))

    @property
    def sweep_timeout_s(self) -> float:
        """A sweep taking longer than this is abandoned (each probe has its own, shorter one)."""
        return sweep_timeout_s(self.interval_s)

    def _poll_now(self) -> None:
        """Start a sweep unless one is running (then this request is dropped)."""
        if self._in_flight or self._source is None or self._sweeps is None:
            return
        self._cancel_timer()
        self._in_flight = True
        self.run_worker(self._sweep(), group="sweep", exit_on_error=False, name="sweep")

    async def _sweep(self) -> None:
        assert self._sweeps is not None and self._source is not None
        started = time.monotonic()
        try:
            snapshot = await self._sweeps.run(self._source.sweep(), timeout=self.sweep_timeout_s)
        except TimeoutError:
            self.post_message(
                SweepFailed(
                    f"no answer within {self.sweep_timeout_s:.0f} s", time.monotonic() - started
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.post_message(
                SweepFailed(f"{type(exc).__name__}: {exc}", time.monotonic() - started)
            )
        else:
            self.post_message(SweepCompleted(snapshot, time.monotonic() - started))

    def _cancel_timer(self) -> None:
        timer = self._poll_timer
        self._poll_timer = None
        if timer is not None:
            timer.stop()  # type: ignore[attr-defined]

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        if delay < 0.001:
            # Textual timers cannot run at zero interval; a late sweep goes next in line.
            self.call_later(self._poll_now)
            return
        self._poll_timer = self.set_timer(delay, self._poll_now, name="next-sweep")

    @on(SweepCompleted)
    def _sweep_completed(self, message: SweepCompleted) -> None:
        self._in_flight = False
        self._failures = 0
        self._error = None
        self.sweeps_completed += 1
        self._accept(message.snapshot)
        self.runbook_driver.observe(message.snapshot)  # runbook (issue 5)
        self.render_dashboard()
        # Keep the cadence when sweeps are fast; never start the next before this one ended.
        self._arm(self.interval_s - message.duration_s)

    @on(SweepFailed)
    def _sweep_failed(self, message: SweepFailed) -> None:
        self._in_flight = False
        self._failures += 1
        self._error = message.error
        self.render_dashboard()
        self._finish_startup()
        self._arm(min(MAX_BACKOFF_S, max(self.interval_s, 0.2) * 2 ** min(self._failures, 8)))

    def _accept(self, snapshot: Snapshot) -> None:
        current = self._latest
        if current is None or snapshot.taken_at >= current.taken_at:
            self._latest = snapshot

    def action_refresh(self) -> None:
        """Sweep now (ignored while a sweep runs)."""
        self._poll_now()

    # -- rendering -------------------------------------------------------------------------

    def render_dashboard(self) -> None:
        """Draw the newest snapshot, unless something covers the dashboard."""
        dashboard = self._dashboard_or_none()
        if dashboard is None or not self.screen_stack:
            # operators (issue 7): closing, a sweep's result may still arrive after the
            # screens are gone (a slower shutdown: the lease is released first).
            return
        if self.screen is not dashboard:
            self._render_pending = True
            return
        self._render_pending = False
        self._last_render = time.monotonic()
        state = DashboardState(
            now=self.clock(),
            operator=self.operator,
            deployment_id=self._deployment[0],
            phase=self._deployment[1],
            error=self._error,
        )
        from textual.css.query import NoMatches

        try:
            with self.batch_update():
                dashboard.show(self._latest, state)
        except NoMatches:
            # The dashboard's widgets are being torn down (shutdown) or not composed yet:
            # nothing to draw into; the next tick draws when they are there.
            return
        if self._latest is not None:
            self.rendered_sequence = self._latest.sequence
            if self._deferred is not None:
                # The first data frame is drawn: now the rest of the start-up.
                self._finish_startup()

    def _tick(self) -> None:
        # Between sweeps (or while one hangs) ages, timers and staleness still move.
        if time.monotonic() - self._last_render >= 0.9:
            self.render_dashboard()

    @on(DashboardScreen.Uncovered)
    def _dashboard_uncovered(self) -> None:
        # Draw what arrived while a modal covered the dashboard.
        if self._render_pending:
            self.render_dashboard()

    # -- shutdown --------------------------------------------------------------------------

    async def on_unmount(self) -> None:
        """Let a running rollback end, cancel the sweep, close the source, stop the threads."""
        self._cancel_timer()
        self.workers.cancel_group(self, "sweep")
        await self.rollback.aclose()  # rollback (issue 6): waits up to the 30 s budget
        await self.runbook_driver.aclose()  # runbook (issue 5)
        await self.operators.aclose()  # operators (issue 7): a quitting console hands over
        sweeps, source, first = self._sweeps, self._source, self._first_sweep
        if first is not None:
            # Quit before the first sweep was taken over: stop it; its source, if it was
            # built, still needs closing.
            sweeps = first.loop
            first.future.cancel()
            source = first.built[0] if first.built else None
        if sweeps is None:
            return
        if source is not None:
            try:
                await sweeps.run(source.close(), timeout=3.0)
            except Exception:
                self.log.warning("closing the snapshot source failed")
        sweeps.stop()


_default_source_factory = default_source_factory
"""The real source (:func:`console.sweeps.default_source_factory`)."""


def run_tui(
    config: AppConfig,
    config_path: Path | None = None,
    *,
    read_only: bool = False,
    source_factory: SourceFactory | None = None,
    coordinate: bool = True,
    first_sweep: FirstSweep | None = None,
) -> int:
    """Run the dashboard until the operator quits; the CLI's entry point.

    Args:
        config: The loaded configuration.
        config_path: The file it came from (None: environment only).
        read_only: An observer console that can never drive (no rollback).
        source_factory: Builds the snapshot source (default: :class:`console.monitor.Monitor`).
        coordinate: Coordinate with the deployment's other consoles (lease, shared state).
        first_sweep: The first sweep, started by the caller before importing the UI
            (:func:`console.sweeps.start_first_sweep` with ``source_factory``).

    Returns:
        The process exit code (0 after a normal quit).
    """
    app = ConsoleApp(
        config,
        source_factory=source_factory or default_source_factory,
        config_path=config_path,
        read_only=read_only,
        coordinate=coordinate,  # operators (issue 7)
        first_sweep=first_sweep,
    )
    app.run()
    return app.return_code or 0
