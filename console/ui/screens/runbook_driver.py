"""What the App keeps for the guided runbook: the deployment session, resume, timers.

The App owns one :class:`RunbookDriver`. It

* builds the :class:`~console.deployment.DeploymentSession` from the config on first use
  (the runbook file, the audit trail, the traffic switch, the report writer);
* looks for an unfinished deployment in the audit trail after the first frame (in a
  thread: the chain may be long) and offers to resume it (:class:`ResumeDialog`);
* feeds every snapshot to the engine (:meth:`observe`) and ticks it once a second
  (:meth:`tick`: monitor windows close on time, phase countdowns move, spooled audit
  records are flushed when the store is back);
* shows the deployment and its phase in the dashboard's header;
* tells the operator when a monitor window offers rollback (F9 does the rollback; with
  ``rollback.automatic`` the App's rollback action is run, or :attr:`rollback_hook` when
  the console wires one).

Everything here runs on the App's event loop; blocking reads of the chain go to a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backends.models import Snapshot

if TYPE_CHECKING:
    from console.deployment import DeploymentScan, DeploymentSession, SavedDeployment
    from console.runbook.engine import RollbackHook
    from console.ui.app import ConsoleApp
    from console.ui.screens.runbook import RunbookScreen

FLUSH_EVERY_S = 5.0
"""How often spooled audit records are pushed to the store while some wait."""


class RunbookDriver:
    """The App's handle on the deployment: session, resume prompt, snapshots, ticks."""

    def __init__(
        self,
        app: ConsoleApp,
        *,
        session_factory: Callable[[], DeploymentSession] | None = None,
    ) -> None:
        """Create the driver (nothing is built or read yet).

        Args:
            app: The console App.
            session_factory: Builds the session (default: from the App's config).
        """
        self.app = app
        self._factory = session_factory
        self.session: DeploymentSession | None = None
        self.error: str | None = None
        """Why the session could not be built (a bad runbook file), if it could not."""
        self.scan: DeploymentScan | None = None
        """The last look at the audit trail for deployments."""
        self.latest: Snapshot | None = None
        """The newest snapshot fed to the engine."""
        self.output: dict[str, list[str]] = {}
        """Command output lines by step id, as they streamed in this console."""
        self.rollback_hook: RollbackHook | None = None
        """Called when a monitor window offers rollback (e.g. ``RunbookRollbackHook``)."""
        self._shown: tuple[str | None, str | None] = (None, None)
        self._last_flush = 0.0
        self._flushing = False
        self._prompted = False
        self.pending_end: tuple[str | None, str] | None = None
        """``(deployment id, rollback reason)``: a deployment a rollback left open because a
        command was running; it is ended as rolled back once the command has ended."""

    @staticmethod
    def binding_sources() -> list[list[Any]]:
        """The runbook screens' bindings (for the App's keymap check), imported on demand."""
        from console.ui.screens.runbook import RunbookScreen
        from console.ui.screens.runbook_dialogs import EndDialog, ReasonDialog, ResumeDialog

        return [
            list(RunbookScreen.BINDINGS),
            list(ReasonDialog.BINDINGS),
            list(EndDialog.BINDINGS),
            list(ResumeDialog.BINDINGS),
        ]

    @property
    def read_only(self) -> bool:
        """An observer console, or one without the lead: it shows the deployment, never drives."""
        if getattr(self.app, "read_only", False):
            return True
        # operators (issue 7): with several consoles, only the lease holder drives.
        operators = getattr(self.app, "operators", None)
        return operators is not None and not operators.can_drive()

    def read_only_reason(self) -> str:
        """Why this console may not drive now (operators, issue 7)."""
        operators = getattr(self.app, "operators", None)
        if operators is not None and not getattr(self.app, "read_only", False):
            return str(operators.reason())
        return "this console is read-only"

    # --- the session -----------------------------------------------------------------------

    @property
    def operator(self) -> str:
        """Who is at the keyboard."""
        return self.app.operator

    def now(self) -> datetime:
        """The engine's "now" when a session runs, else the App's."""
        if self.session is not None:
            return self.session.clock()
        return self.app.clock()

    def attach(self, session: DeploymentSession) -> None:
        """Use this session (tests, or a console that built its own)."""
        session.on_change = self._changed
        if session.on_rollback is None:
            session.on_rollback = self._rollback_offered
        operators = getattr(self.app, "operators", None)
        if operators is not None:  # operators (issue 7): lease guard, fence, approvals, events
            operators.wire(session)
        self.session = session
        self.error = None
        if self.latest is not None:
            session.observe(self.latest)
        self._changed()

    def ensure_session(self) -> DeploymentSession | None:
        """The session, built on first use; None (with :attr:`error`) when it cannot be."""
        if self.session is not None:
            return self.session
        try:
            if self._factory is not None:
                session = self._factory()
            else:
                from console.deployment import open_session

                session = open_session(
                    self.app.config,
                    config_path=self.app.config_path,
                    operator=self.operator,
                )
        except Exception as exc:
            self.error = f"the guided runbook is unavailable: {exc}"
            return None
        self.attach(session)
        return session

    def unfinished(self) -> list[SavedDeployment]:
        """Unfinished deployments found in the audit trail (newest first)."""
        if self.scan is None:
            return []
        session = self.session
        # operators (issue 7): a deployment only shown here (another console drove it) is
        # still there to resume.
        loaded = session.deployment_id if session is not None and not session.view_only else None
        return [d for d in self.scan.unfinished if d.deployment_id != loaded]

    def resume_hint(self) -> str:
        """`` or u to resume 20250107_100000`` when one waits."""
        waiting = self.unfinished()
        return f", or u to resume {waiting[0].deployment_id}" if waiting else ""

    def idle_text(self) -> str:
        """What the details pane says when no deployment is loaded."""
        if self.error:
            return self.error
        session = self.session
        lines = ["No deployment is running."]
        if session is not None:
            lines.append(
                f"Press n to start one with {session.runbook.title} {session.runbook.version}."
            )
        waiting = self.unfinished()
        if waiting:
            saved = waiting[0]
            lines.append(
                f"Deployment {saved.deployment_id} is unfinished (at step "
                f"{saved.current_step or '?'}): press u to resume or abandon it."
            )
        if self.scan is not None and self.scan.error:
            lines.append(f"Audit trail: {self.scan.error}")
        return "\n".join(lines)

    # --- start-up and resume ---------------------------------------------------------------

    async def startup(self) -> None:
        """After the first frame: build the session and look for an unfinished deployment."""
        session = self.ensure_session()
        if session is None:
            self.app.notify(self.error or "", title="runbook", severity="warning", timeout=10)
            return
        await self.rescan()
        if self.read_only:
            return
        if self.unfinished() and not session.active and not self._prompted:
            self._prompted = True
            self.prompt_resume()

    async def rescan(self) -> DeploymentScan | None:
        """Read the audit trail (in a thread) for deployments."""
        session = self.ensure_session()
        if session is None:
            return None
        from console.deployment import DeploymentScan, scan_deployments

        if not self._store_exists():
            # Nothing was ever recorded here; reading would create an empty store.
            self.scan = DeploymentScan()
            return self.scan
        self.scan = await asyncio.to_thread(scan_deployments, session.trail)
        if self.scan.error:
            self.app.notify(self.scan.error, title="audit trail", severity="warning", timeout=10)
        self._changed()
        return self.scan

    def _store_exists(self) -> bool:
        """False when the configured SQLite store and its spool were never written."""
        from console.audit import default_spool_path, default_sqlite_path

        audit = self.app.config.audit
        if audit.postgres_dsn:
            return True
        sqlite = (audit.sqlite_path or default_sqlite_path()).expanduser()
        spool = (audit.spool_path or default_spool_path()).expanduser()
        return sqlite.exists() or spool.exists()

    def prompt_resume(self) -> None:
        """Ask whether to resume (or abandon) the newest unfinished deployment."""
        waiting = self.unfinished()
        if not waiting:
            self.app.notify("no unfinished deployment in the audit trail", title="resume")
            return
        from console.ui.screens.runbook_dialogs import ReasonDialog, ResumeDialog

        saved = waiting[0]

        def answered(choice: str | None) -> None:
            if choice == "resume":
                self.app.run_worker(self.resume(saved), group="runbook-resume", exit_on_error=False)
            elif choice == "abandon":
                self.app.push_screen(
                    ReasonDialog(
                        f"Abandon deployment {saved.deployment_id}",
                        [
                            f"Deployment {saved.deployment_id} ends as aborted, at step "
                            f"{saved.current_step or '?'}.",
                            "Nothing is changed on the estate; the audit trail records why.",
                        ],
                        placeholder="why it is abandoned",
                        confirm="Abandon",
                        variant="error",
                    ),
                    lambda reason: self.abandon(saved, reason) if reason else None,
                )

        self.app.push_screen(ResumeDialog(saved, others=len(waiting) - 1), answered)

    async def resume(self, saved: SavedDeployment) -> bool:
        """Resume a saved deployment and read the split back; open the runbook screen."""
        from console.deployment import DeploymentError

        session = self.ensure_session()
        if session is None:
            return False
        try:
            session.resume(saved)
        except DeploymentError as exc:
            self.app.notify(str(exc), title="resume", severity="error", timeout=15)
            return False
        self.output.clear()
        if self.latest is not None:
            session.observe(self.latest)
        try:
            split = await session.read_back_traffic()
        except DeploymentError as exc:
            self.app.notify(str(exc), title="traffic read-back", severity="warning", timeout=10)
        else:
            shown = (
                f"{split.green_percentage:g}% green"
                if split.green_percentage is not None
                else f"unknown ({split.error})"
            )
            self.app.notify(
                f"resumed {saved.deployment_id} at step {session.engine.current_step_id}; "
                f"the load balancer reads back {shown}",
                title="resume",
                timeout=10,
            )
        self._changed()
        self.open()
        return True

    def abandon(self, saved: SavedDeployment, reason: str) -> None:
        """End a saved deployment as aborted."""
        from console.deployment import DeploymentError

        session = self.ensure_session()
        if session is None:
            return
        try:
            session.abandon(saved, reason)
        except DeploymentError as exc:
            self.app.notify(str(exc), title="abandon", severity="error", timeout=15)
            return
        self.app.notify(f"deployment {saved.deployment_id} ended as aborted", title="abandon")
        self.app.run_worker(self.rescan(), group="runbook-scan", exit_on_error=False)

    async def became_driver(self) -> None:
        """This console just took the lead (operators, issue 7): drive from the audit trail.

        A deployment only shown here, or this console's own engine when another console
        recorded a newer state meanwhile, is dropped, and the newest unfinished deployment
        is offered for resuming (resuming re-reads the split from the load balancer).
        """
        session = self.ensure_session()
        if session is None or session.busy:
            return
        scan = await self.rescan()
        if session.active and not session.view_only and not session.finished:
            current = session.deployment_id
            saved = next(
                (d for d in (scan.deployments if scan else []) if d.deployment_id == current), None
            )
            newer = saved is not None and int(saved.state.get("events") or 0) > int(
                session.engine.state.events
            )
            if not newer:
                return  # nobody else drove it meanwhile: carry on where this console stood
        if session.active and (session.view_only or not session.finished):
            session.view(None)
        self._changed()
        from console.ui.screens.runbook_dialogs import ResumeDialog

        asking = any(isinstance(screen, ResumeDialog) for screen in self.app.screen_stack)
        if self.unfinished() and not asking:
            self.prompt_resume()

    def start_new(self, procedure: str = "deployment") -> bool:
        """Start a new deployment (refused while an unfinished one waits in the trail).

        Args:
            procedure: The runbook procedure to walk: ``deployment``, or
                ``planned-rollback`` (50 % -> monitor -> 0 % -> validate blue).
        """
        from console.deployment import DeploymentError

        session = self.ensure_session()
        if session is None:
            self.app.notify(self.error or "", title="runbook", severity="error")
            return False
        if self.read_only:
            self.app.notify(
                self.read_only_reason(), title="new deployment", severity="warning", timeout=10
            )
            return False
        waiting = self.unfinished()
        if waiting:
            self.app.notify(
                f"deployment {waiting[0].deployment_id} is unfinished: resume or abandon it first (u)",
                title="new deployment",
                severity="warning",
                timeout=10,
            )
            return False
        try:
            engine = session.start(procedure)
        except DeploymentError as exc:
            self.app.notify(str(exc), title="new deployment", severity="error", timeout=10)
            return False
        self.output.clear()
        if self.latest is not None:
            session.observe(self.latest)
        self.app.notify(f"deployment {engine.deployment_id} started", title="runbook")
        self._changed()
        return True

    # --- the screen ------------------------------------------------------------------------

    def open(self) -> None:
        """Show the runbook screen (or bring it back to the top)."""
        from console.ui.screens.runbook import RunbookScreen

        self.ensure_session()
        if isinstance(self.app.screen, RunbookScreen):
            return
        if any(isinstance(s, RunbookScreen) for s in self.app.screen_stack):
            # Something (a rollback in progress, a question) covers it: never close that.
            self.app.notify(
                "the runbook is under the current screen: close this one first",
                title="runbook",
                severity="warning",
            )
            return
        self.app.push_screen(RunbookScreen(self))
        operators = getattr(self.app, "operators", None)
        if operators is not None:  # operators (issue 7): the lease line under its header
            self.app.call_after_refresh(operators.ensure_lines)

    def toggle(self) -> None:
        """Open the runbook screen, or go back to the dashboard from it."""
        from console.ui.screens.runbook import RunbookScreen

        if isinstance(self.app.screen, RunbookScreen):
            self.app.pop_screen()
        else:
            self.open()

    def _screen(self) -> RunbookScreen | None:
        from console.ui.screens.runbook import RunbookScreen

        for screen in self.app.screen_stack:
            if isinstance(screen, RunbookScreen):
                return screen
        return None

    def _changed(self) -> None:
        session = self.session
        shown: tuple[str | None, str | None] = (None, None)
        if session is not None and session.active and not session.finished:
            phase = session.current_phase()
            shown = (session.deployment_id, phase.title if phase is not None else None)
        if shown != self._shown:
            self._shown = shown
            self.app.set_deployment(*shown)
        screen = self._screen()
        if screen is not None and screen is self.app.screen:
            screen.refresh_view()

    # --- snapshots and time ----------------------------------------------------------------

    def observe(self, snapshot: Snapshot) -> None:
        """Feed a snapshot to the engine (the App calls this for every sweep)."""
        if self.latest is None or snapshot.taken_at >= self.latest.taken_at:
            self.latest = snapshot
        session = self.session
        if session is None or not session.active:
            return
        if self.read_only:  # operators (issue 7): only the lead's engine records
            return
        self._sync_fence(session)
        try:
            session.observe(snapshot)
        except Exception as exc:  # the audit trail lost a record: say so, keep sweeping
            self.app.notify(f"{type(exc).__name__}: {exc}", title="runbook", severity="error")

    def tick(self) -> None:
        """Once a second: close monitor windows on time, redraw, flush the audit spool."""
        session = self.session
        if session is None:
            return
        if session.active and not self.read_only:  # operators (issue 7): only the lead's
            self._sync_fence(session)
            try:
                session.tick()
            except Exception as exc:
                self.app.notify(f"{type(exc).__name__}: {exc}", title="runbook", severity="error")
            if self.pending_end is not None and session.busy is None and self._end_pending(session):
                self.app.notify(
                    f"Deployment {session.deployment_id} ended as rolled back.",
                    title="runbook",
                    timeout=10,
                )
        screen = self._screen()
        if screen is not None and screen is self.app.screen:
            screen.refresh_view()
        now = time.monotonic()
        if not self._flushing and now - self._last_flush >= FLUSH_EVERY_S:
            self._last_flush = now
            self._flushing = True
            self.app.run_worker(self._flush(session), group="audit-flush", exit_on_error=False)

    async def _flush(self, session: DeploymentSession) -> None:
        try:
            status = session.trail.status()
            if status.pending:
                await asyncio.to_thread(session.flush)
        finally:
            self._flushing = False

    def _sync_fence(self, session: DeploymentSession) -> None:
        """Records from ticks and snapshots carry the lease's current fence (operators, issue 7)."""
        operators = getattr(self.app, "operators", None)
        if operators is not None and operators.coordinator is not None and not session.busy:
            session.fence = operators.fence

    def _rollback_offered(self, reason: str, automatic: bool) -> None:
        if self.rollback_hook is not None:
            self.rollback_hook(reason, automatic)
            return
        start_rollback = getattr(self.app, "start_rollback", None)
        if start_rollback is not None:
            # The App's emergency rollback decides: automatic when the config says so (and
            # blue is safe), otherwise it asks the operator, naming the reason.
            start_rollback(reason, trigger="automatic")
            return
        self.app.notify(
            f"{reason}. Press F9 to move all traffic back to blue.",
            title="rollback offered",
            severity="error",
            timeout=30,
        )

    def rolled_back(self, reason: str) -> bool:
        """End the loaded deployment as rolled back (call it when the rollback has run).

        A running command holds the deployment open: it then ends as rolled back as soon
        as the command does (:meth:`tick`), or is cancelled, and the console says so.

        Returns:
            True when a deployment in progress was ended now.
        """
        session = self.session
        if session is None or not session.active or session.finished:
            return False
        self.pending_end = (session.deployment_id, reason)
        if self._end_pending(session):
            return True
        if self.pending_end is not None:
            self.app.notify(
                f"The rollback is done, but deployment {session.deployment_id} stays open while "
                f"it is {session.busy}. It ends as rolled back when that ends; cancel it with k "
                "on the runbook screen.",
                title="runbook",
                severity="warning",
                timeout=30,
            )
        return False

    def _end_pending(self, session: DeploymentSession) -> bool:
        """End the deployment a rollback left waiting, if it still can; True when ended."""
        from console.deployment import DeploymentError

        if self.pending_end is None:
            return False
        deployment_id, reason = self.pending_end
        if not session.active or session.finished or session.deployment_id != deployment_id:
            self.pending_end = None  # over by other means, or another deployment is loaded
            return False
        try:
            session.end("rolled_back", reason)
        except DeploymentError as exc:
            if session.busy is not None:
                return False  # a command still runs: again once it has ended
            self.pending_end = None
            self.app.notify(str(exc), title="runbook", severity="error", timeout=15)
            return False
        self.pending_end = None
        return True

    async def aclose(self) -> None:
        """Save what is pending, release the switch and the trail."""
        session = self.session
        if session is None:
            return
        await session.aclose()
        try:
            await asyncio.to_thread(session.trail.close)
        except Exception:
            self.app.log.warning("closing the audit trail failed")
