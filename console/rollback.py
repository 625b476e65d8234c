"""The emergency rollback to blue: one procedure for the hotkey, the CLI and the automatic hook.

This module owns the runbook's "Emergency Rollback (<30 seconds)". (Its "Planned Rollback",
50 % -> monitor 120 s -> 0 % -> validate blue, is the ``planned-rollback`` procedure of the
default runbook, walked by the runbook engine.) The emergency procedure,
:meth:`RollbackController.trigger`:

1. **switch** 100 % of traffic to blue through the traffic switch, and nothing else: no
   Prometheus, Redis, PostgreSQL or dashboard on this path. A failure is reported at once
   through the progress callback, with the load balancer's (or command's) own text, and
   retried with backoff (``rollback.retries``, ``rollback.retry_backoff_s``); after the last
   failure the manual fallback from the config is shown;
2. **verify**: the load balancer reads back 0 % green (success is never claimed on a value
   that was not read back); blue's orchestrators answer healthy; requests actually reach
   blue and no longer reach green (HAProxy's per-server session counters, the sandbox
   router's counts, or the services' own ``acgs_requests_total`` counters for a site
   command);
3. **constitutional compliance** on blue: the hash in the body and the header of every
   blue response;
4. the **incident record** in the audit trail (action ``rollback``; it spools locally when
   the store is down) and the **incident report** (Markdown and JSON).

Every step is timed in milliseconds since the trigger (a ``time.monotonic()`` value taken
at the key press or command start and passed in) and the total is compared with the
runbook's 30 s budget (``thresholds.rollback_budget_s``).

:func:`assess_rollback_safety` is the pre-flight decision: blue healthy and not
decommissioned acts at once; otherwise the caller must ask for explicit confirmation and
show the reasons. :meth:`RollbackController.preflight` makes that decision from a current
snapshot, or, when the dashboard is stale or absent, by probing blue directly with a short
timeout. A second trigger while a rollback runs returns the running one.

:class:`RunbookRollbackHook` is the runbook engine's ``on_rollback`` hook (and
:func:`automatic_rollback` the same for one alert): when a critical alert fails a monitor
window and ``rollback.automatic = true``, it runs the same procedure with the reason
``automatic: <alert>``, and refuses (saying why) when blue is not safe, because an automatic
move onto an unhealthy blue needs a person.

No textual here: the rollback screen renders :class:`RollbackEvent` and
:class:`RollbackResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from backends.models import (
    ORCHESTRATORS,
    AlertPhase,
    AlertSeverity,
    AlertState,
    ComplianceResult,
    Environment,
    EnvironmentMetrics,
    MetricValue,
    ServiceHealth,
    ServiceState,
    Snapshot,
    TrafficSplit,
    utcnow,
)
from backends.traffic import RequestCounter, TrafficSwitchError

if TYPE_CHECKING:
    import httpx

    from backends.traffic import TrafficSwitch
    from console.audit import AppendResult, AuditTrail
    from console.config import AppConfig

__all__ = [
    "STEP_TITLES",
    "AuditOutcome",
    "ProgressCallback",
    "RequestEvidence",
    "RollbackController",
    "RollbackEvent",
    "RollbackEventKind",
    "RollbackOutcome",
    "RollbackResult",
    "RollbackSafety",
    "RollbackStep",
    "RollbackTicket",
    "RunbookRollbackHook",
    "SafetyVerdict",
    "SwitchAttempt",
    "assess_rollback_safety",
    "automatic_rollback",
    "render_markdown",
    "run_automatic",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

AUDIT_ACTION = "rollback"
"""The audit action of the incident record."""
AUDIT_ACTION_REFUSED = "rollback.refused"
"""The audit action when a rollback was asked for and refused (unsafe, not confirmed)."""

PREFLIGHT_TIMEOUT_S = 0.5
"""Bound on the direct probe of blue when the dashboard cannot answer the safety question."""
MAX_BACKOFF_S = 2.0
"""Longest wait between two switch attempts."""
COUNTER_POLL_S = 0.05
"""How often the request counters are read while confirming that requests reach blue."""
AUDIT_TIMEOUT_S = 10.0
"""The procedure stops waiting for the audit append after this long (its thread goes on)."""

STEP_SWITCH = "switch"
STEP_READ_BACK = "read_back"
STEP_BLUE_HEALTHY = "blue_healthy"
STEP_REQUESTS = "requests_reach_blue"
STEP_COMPLIANCE = "compliance"
STEP_AUDIT = "audit"
STEP_REPORT = "report"

STEP_TITLES: Mapping[str, str] = {
    STEP_SWITCH: "Switch 100% of traffic to blue",
    STEP_READ_BACK: "Load balancer reads back 0% green",
    STEP_BLUE_HEALTHY: "Blue healthy",
    STEP_REQUESTS: "Requests reach blue, none reach green",
    STEP_COMPLIANCE: "Constitutional compliance on blue",
    STEP_AUDIT: "Incident record in the audit trail",
    STEP_REPORT: "Incident report",
}
"""Every step of the emergency rollback, in order, with its title."""

_VERIFY_STEPS = (STEP_BLUE_HEALTHY, STEP_REQUESTS, STEP_COMPLIANCE)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- the result model ---------------------------------------------------------------------------


class RollbackOutcome(StrEnum):
    """How a rollback ended (the CLI maps each to an exit code)."""

    VERIFIED = "verified"
    """Traffic read back 0 % green and every check passed."""
    UNVERIFIED = "unverified"
    """Traffic is on blue by the read-back (or the switch ran), but a check found a problem."""
    SWITCH_FAILED = "switch_failed"
    """The switch failed and the load balancer does not read back 0 % green."""
    REFUSED = "refused"
    """Not started: blue is not safe and nobody confirmed."""


class RollbackStep(_Model):
    """One step of the procedure, timed from the trigger."""

    name: str
    title: str
    ok: bool
    skipped: bool = False
    """Not run (ok is then False): e.g. verification after a switch that did not happen."""
    started_ms: float
    ended_ms: float
    detail: str = ""

    @property
    def duration_ms(self) -> float:
        """How long the step took."""
        return self.ended_ms - self.started_ms


class SwitchAttempt(_Model):
    """One try of the traffic switch."""

    attempt: int
    ok: bool
    started_ms: float
    ended_ms: float
    error: str | None = None
    """The switch's error, with the load balancer's or command's own text."""


class SafetyVerdict(StrEnum):
    """The pre-flight verdict."""

    SAFE = "safe"
    NEEDS_CONFIRMATION = "needs_confirmation"


class RollbackSafety(_Model):
    """The pre-flight decision: act at once, or ask for confirmation first."""

    verdict: SafetyVerdict
    reasons: tuple[str, ...] = ()
    """Why confirmation is needed (empty when safe)."""
    source: str = ""
    """What the decision is based on: the dashboard snapshot or a direct probe of blue."""
    checked_at: datetime = Field(default_factory=utcnow)

    @property
    def safe(self) -> bool:
        """True when the rollback may start at the first press."""
        return self.verdict is SafetyVerdict.SAFE


class RequestEvidence(_Model):
    """What the request counters showed after the switch."""

    source: str
    blue_requests: int | None = None
    """Requests blue served after the switch (until the end of the watch)."""
    green_requests: int | None = None
    """Requests green served after the switch."""
    green_last_change_ms: float | None = None
    """When green's counter was last seen to move (ms since the trigger); None if never."""
    watched_ms: float = 0.0
    error: str | None = None


class AuditOutcome(_Model):
    """What became of the incident record."""

    stored: bool
    spooled: bool
    seq: int | None = None
    hash: str | None = None
    pending: int = 0
    error: str | None = None


class RollbackResult(_Model):
    """Everything a rollback did and found; the incident report is this, rendered."""

    incident_id: str
    target: Environment = Environment.BLUE
    reason: str
    operator: str
    trigger: str
    """``hotkey``, ``cli``, ``automatic`` or ``api``."""
    automatic: bool = False
    deployment_id: str | None = None
    started_at: datetime
    trigger_monotonic: float | None = None
    """``time.monotonic()`` at the trigger (system-wide on Linux: lines up with other processes)."""
    outcome: RollbackOutcome
    steps: tuple[RollbackStep, ...] = ()
    attempts: tuple[SwitchAttempt, ...] = ()
    switch: str = ""
    """The traffic switch used (its name)."""
    read_back: TrafficSplit | None = None
    """The split as the load balancer read it back after the switch."""
    switched: bool = False
    """True only when the load balancer read back 0 % green."""
    success: bool = False
    """True only when traffic read back 0 % green and every check passed."""
    total_ms: float = 0.0
    budget_s: float = 30.0
    within_budget: bool = False
    manual_fallback: str | None = None
    """Shown when the switch failed: what to do by hand."""
    safety: RollbackSafety | None = None
    confirmed: bool = False
    """An operator confirmed a rollback the safety check did not call safe."""
    compliance: ComplianceResult | None = None
    requests: RequestEvidence | None = None
    audit: AuditOutcome | None = None
    report_paths: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    """One line per failed or skipped step."""
    constitutional_hash: str = ""

    def step(self, name: str) -> RollbackStep | None:
        """The step called ``name``, if it ran."""
        return next((s for s in self.steps if s.name == name), None)

    def step_end_ms(self, name: str) -> float | None:
        """When step ``name`` ended, in ms since the trigger."""
        found = self.step(name)
        return None if found is None else found.ended_ms

    @property
    def verification_end_ms(self) -> float | None:
        """When the last verification step (read-back, health, requests, compliance) ended."""
        ends = [
            s.ended_ms
            for s in self.steps
            if s.name in (STEP_READ_BACK, *_VERIFY_STEPS) and not s.skipped
        ]
        return max(ends) if ends else None


class RollbackEventKind(StrEnum):
    """What a progress event reports."""

    STARTED = "started"
    STEP_STARTED = "step_started"
    STEP_FINISHED = "step_finished"
    ATTEMPT_FAILED = "attempt_failed"
    MANUAL_FALLBACK = "manual_fallback"
    FINISHED = "finished"


class RollbackEvent(_Model):
    """One progress report, delivered the moment it happens."""

    kind: RollbackEventKind
    at_ms: float
    """Milliseconds since the trigger."""
    incident_id: str
    step: str | None = None
    title: str = ""
    message: str = ""
    attempt: int | None = None
    retry_in_s: float | None = None
    """After a failed attempt: the wait before the next one (None: it was the last)."""
    finished_step: RollbackStep | None = None
    result: RollbackResult | None = None


ProgressCallback = Callable[[RollbackEvent], None]
"""Receives progress events; called on the event loop, it must return quickly."""


# --- pre-flight safety ------------------------------------------------------------------------


def assess_rollback_safety(
    snapshot: Snapshot | None,
    decommissioned: bool,
    *,
    blue_services: Sequence[ServiceHealth] | None = None,
    expected_services: Sequence[str] = ORCHESTRATORS,
    source: str | None = None,
) -> RollbackSafety:
    """Decide whether the rollback may act at the first press.

    Safe only when blue is not decommissioned and every expected blue orchestrator was
    observed up with the constitutional hash in body and header. Anything else, including
    not knowing, needs explicit confirmation, and each reason is named.

    Args:
        snapshot: The dashboard's latest snapshot; None when there is none (or it is stale
            and ``blue_services`` carries a direct probe instead).
        decommissioned: Blue was shut down in Phase 3.1.
        blue_services: Fresh probes of blue, used instead of the snapshot's.
        expected_services: The orchestrators blue must run.
        source: What the observation is, for the operator.

    Returns:
        The verdict with its reasons.
    """
    reasons: list[str] = []
    if decommissioned:
        reasons.append(
            "blue is decommissioned (shut down in Phase 3.1): its services may not serve traffic"
        )
    services = (
        list(blue_services)
        if blue_services is not None
        else (list(snapshot.blue.services) if snapshot is not None else None)
    )
    if source is None:
        source = (
            "direct probe of blue"
            if blue_services is not None
            else ("dashboard snapshot" if snapshot is not None else "nothing observed")
        )
    if services is None:
        reasons.append("blue's health is unknown: no current observation of blue")
    else:
        by_name = {s.service: s for s in services}
        unhealthy: list[str] = []
        for name in expected_services:
            health = by_name.get(name)
            if health is None:
                unhealthy.append(f"{name} (not probed)")
            elif health.stale:
                unhealthy.append(f"{name} (stale observation)")
            elif health.state is not ServiceState.UP:
                why = f": {health.reason}" if health.reason else ""
                unhealthy.append(f"{name} ({health.state.value}{why})")
        if unhealthy:
            up = len(expected_services) - len(unhealthy)
            reasons.append(
                f"blue unhealthy: {up}/{len(expected_services)} orchestrators up; "
                + ", ".join(unhealthy)
            )
        hash_problems = [v for s in services for v in s.violations]
        if hash_problems:
            reasons.append("blue failing its constitutional hash: " + "; ".join(hash_problems))
    verdict = SafetyVerdict.NEEDS_CONFIRMATION if reasons else SafetyVerdict.SAFE
    return RollbackSafety(verdict=verdict, reasons=tuple(reasons), source=source)


# --- request counting -----------------------------------------------------------------------


class _Counter(Protocol):
    async def request_counts(self) -> dict[Environment, int]: ...


class _CounterError(Exception):
    """The request counters could not be read."""


class _ScrapeRequestCounter:
    """Per-environment requests from the services' own ``acgs_requests_total`` counters.

    Used when the traffic switch cannot count (a site command): a direct scrape of every
    service's ``/metrics``, summed per environment. A counter that cannot be read makes
    the whole count unknown, never zero.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        targets: Mapping[Environment, Sequence[str]],
        timeout_s: float,
    ) -> None:
        self._client = client
        self._targets = {env: list(urls) for env, urls in targets.items()}
        self._timeout_s = timeout_s
        self.name = "services' acgs_requests_total (direct scrape)"

    async def _one(self, url: str) -> float:
        import httpx

        from backends.scrape import parse_exposition

        try:
            response = await self._client.get(url, timeout=self._timeout_s)
        except httpx.HTTPError as exc:
            raise _CounterError(f"{url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise _CounterError(f"{url}: HTTP {response.status_code}")
        try:
            sample = parse_exposition(response.text, time.monotonic(), utcnow())
        except ValueError as exc:
            raise _CounterError(f"{url}: not a metrics exposition: {exc}") from None
        if sample.requests is None:
            raise _CounterError(f"{url}: does not export acgs_requests_total")
        return sample.requests

    async def request_counts(self) -> dict[Environment, int]:
        envs = list(self._targets)
        results = await asyncio.gather(
            *(asyncio.gather(*(self._one(u) for u in self._targets[e])) for e in envs),
            return_exceptions=True,
        )
        out: dict[Environment, int] = {}
        for env, got in zip(envs, results, strict=True):
            if isinstance(got, BaseException):
                raise _CounterError(str(got))
            out[env] = int(sum(got))
        return out


async def _read_counts(counter: _Counter) -> dict[Environment, int]:
    try:
        return await counter.request_counts()
    except (TrafficSwitchError, _CounterError) as exc:
        raise _CounterError(str(exc)) from None
    except Exception as exc:
        raise _CounterError(f"{type(exc).__name__}: {exc}") from None


# --- the procedure ------------------------------------------------------------------------------


async def _guarded(run: _Run, names: tuple[str, ...], work: Awaitable[T]) -> T | None:
    """Await a verification step; an unexpected error fails its steps instead of the rollback."""
    try:
        return await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("rollback %s: %s failed unexpectedly", run.incident_id, ", ".join(names))
        for name in names:
            if name not in run.steps:
                at = run.ms()
                run.end(name, at, False, f"could not be checked: {type(exc).__name__}: {exc}")
        return None


@dataclass
class _Run:
    """Book-keeping of one running procedure."""

    incident_id: str
    started: float
    progress: ProgressCallback | None
    steps: dict[str, RollbackStep] = field(default_factory=dict)

    def ms(self) -> float:
        return (time.monotonic() - self.started) * 1000.0

    def emit(self, kind: RollbackEventKind, **fields: Any) -> None:
        if self.progress is None:
            return
        event = RollbackEvent(kind=kind, at_ms=self.ms(), incident_id=self.incident_id, **fields)
        try:
            self.progress(event)
        except Exception:  # a broken listener must never stop a rollback
            log.exception("rollback progress callback failed on %s", kind.value)

    def begin(self, name: str) -> float:
        at = self.ms()
        self.emit(RollbackEventKind.STEP_STARTED, step=name, title=STEP_TITLES[name])
        return at

    def end(
        self, name: str, started_ms: float, ok: bool, detail: str, *, skipped: bool = False
    ) -> RollbackStep:
        step = RollbackStep(
            name=name,
            title=STEP_TITLES[name],
            ok=ok and not skipped,
            skipped=skipped,
            started_ms=started_ms,
            ended_ms=self.ms(),
            detail=detail,
        )
        self.steps[name] = step
        self.emit(
            RollbackEventKind.STEP_FINISHED,
            step=name,
            title=step.title,
            message=detail,
            finished_step=step,
        )
        return step

    def skip(self, name: str, why: str) -> None:
        at = self.ms()
        self.end(name, at, False, why, skipped=True)

    def ordered(self) -> tuple[RollbackStep, ...]:
        return tuple(self.steps[n] for n in STEP_TITLES if n in self.steps)


@dataclass(frozen=True)
class RollbackTicket:
    """What :meth:`RollbackController.trigger` hands back."""

    task: asyncio.Task[RollbackResult]
    """The running procedure; await it for the result."""
    started_new: bool
    """False when a rollback was already running and this is that one."""
    incident_id: str


def _new_incident_id(at: datetime) -> str:
    # The runbook's deployment id format, plus a suffix: two rollbacks in one second differ.
    return f"{at.strftime('%Y%m%d_%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("acgs-console"))


def _is_zero(split: TrafficSplit | None) -> bool:
    return (
        split is not None
        and split.green_percentage is not None
        and math.isfinite(split.green_percentage)
        and abs(split.green_percentage) < 1e-9
        and (split.blue_weight is None or split.blue_weight > 0)
    )


def _describe_split(split: TrafficSplit) -> str:
    if split.green_percentage is None:
        return f"not read back: {split.error or 'no value'}"
    text = f"{split.green_percentage:g} % green"
    if split.blue_weight is not None and split.green_weight is not None:
        text += f" (weights blue={split.blue_weight} green={split.green_weight})"
    if split.source:
        text += f", from {split.source}"
    return text


def _unknown_metrics(why: str) -> EnvironmentMetrics:
    names = list(EnvironmentMetrics.model_fields)
    return EnvironmentMetrics(**{n: MetricValue(name=n, error=why) for n in names})


class RollbackController:
    """Runs the emergency rollback; at most one at a time per controller.

    The console keeps one controller for its lifetime (the hotkey, the automatic hook and
    the rollback screen share it); the CLI makes one per invocation. Nothing is contacted
    before the first trigger or pre-flight.

    Args:
        config: The console configuration.
        switch: The traffic switch (default: built from ``config.traffic`` on first use).
        client: HTTP client for the health probes (default: one of its own).
        audit: The audit trail (default: the one ``config.audit`` names).
        report_dir: Where incident reports go (default: ``rollback.report_dir``, else
            ``<state dir>/incidents``).
        operator: Who acts (default: the configured operator, else ``user@host``).
        fence: The fencing number of the lease this console drives with, read when a
            record is written (None without the lease: break-glass, a lone CLI run).
    """

    def __init__(
        self,
        config: AppConfig,
        *,
        switch: TrafficSwitch | None = None,
        client: httpx.AsyncClient | None = None,
        audit: AuditTrail | None = None,
        report_dir: Path | None = None,
        operator: str | None = None,
        fence: Callable[[], int | None] | None = None,
    ) -> None:
        self.config = config
        self._fence = fence
        self._switch = switch
        self._own_switch = switch is None
        self._client = client
        self._own_client = client is None
        self._audit = audit
        self._own_audit = audit is None
        self.report_dir = report_dir or config.rollback.report_dir or _state_dir() / "incidents"
        self._operator = operator
        self._task: asyncio.Task[RollbackResult] | None = None
        self._incident_id: str | None = None
        self.last_result: RollbackResult | None = None

    # -- what it talks to --

    @property
    def operator(self) -> str:
        """Who acts by default."""
        if self._operator is None:
            from console.audit import default_operator

            self._operator = default_operator(self.config)
        return self._operator

    @property
    def blue_services(self) -> list[str]:
        """The orchestrators blue must run."""
        return list(self.config.env(Environment.BLUE).services)

    def switch(self) -> TrafficSwitch:
        """The traffic switch, built from the config on first use (and nothing else).

        Raises:
            ValueError: The configured switch cannot be built (bad admin address, ...).
        """
        if self._switch is None:
            from console.monitor import build_traffic_switch

            self._switch = build_traffic_switch(self.config)
        return self._switch

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            from backends.health import make_client

            self._client = make_client(self.config.probe_timeout_s)
        return self._client

    def trail(self) -> AuditTrail:
        """The audit trail (opened from the config on first use; nothing connects yet)."""
        if self._audit is None:
            from console.audit import open_trail

            self._audit = open_trail(self.config, operator=self.operator)
        return self._audit

    async def probe_blue(self, timeout_s: float | None = None) -> list[ServiceHealth]:
        """Probe blue's orchestrators now, concurrently, each bounded by ``timeout_s``."""
        from backends.health import HealthProber

        limit = self.config.probe_timeout_s if timeout_s is None else timeout_s
        prober = HealthProber(self._http(), self.config.constitutional_hash, limit)
        blue = self.config.env(Environment.BLUE)
        return await prober.probe_many(
            (Environment.BLUE, name, svc.health_url) for name, svc in blue.services.items()
        )

    async def aclose(self) -> None:
        """Release what this controller made itself (waits for a running rollback first)."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        if self._own_switch and self._switch is not None:
            closer = getattr(self._switch, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
            self._switch = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._own_audit and self._audit is not None:
            await asyncio.to_thread(self._audit.close)
            self._audit = None

    # -- pre-flight --

    def _snapshot_current(self, snapshot: Snapshot) -> bool:
        age = utcnow() - snapshot.taken_at
        return age <= timedelta(seconds=self.config.thresholds.stale_after_s)

    async def preflight(
        self, snapshot: Snapshot | None, decommissioned: bool = False
    ) -> RollbackSafety:
        """The safety decision before a rollback.

        A current snapshot decides at once (no I/O). A stale or missing one (the dashboard
        is behind) is replaced by a direct probe of blue bounded by
        :data:`PREFLIGHT_TIMEOUT_S`.
        """
        if snapshot is not None and self._snapshot_current(snapshot):
            return assess_rollback_safety(
                snapshot, decommissioned, expected_services=self.blue_services
            )
        services = await self.probe_blue(min(self.config.probe_timeout_s, PREFLIGHT_TIMEOUT_S))
        why = "no dashboard snapshot" if snapshot is None else "the dashboard snapshot is stale"
        return assess_rollback_safety(
            None,
            decommissioned,
            blue_services=services,
            expected_services=self.blue_services,
            source=f"direct probe of blue ({why})",
        )

    # -- trigger --

    @property
    def running(self) -> RollbackTicket | None:
        """The running rollback, if one is running."""
        task = self._task
        if task is None or task.done() or self._incident_id is None:
            return None
        return RollbackTicket(task=task, started_new=False, incident_id=self._incident_id)

    def trigger(
        self,
        *,
        started: float,
        reason: str,
        operator: str | None = None,
        trigger: str = "hotkey",
        automatic: bool = False,
        snapshot: Snapshot | None = None,
        safety: RollbackSafety | None = None,
        confirmed: bool = False,
        progress: ProgressCallback | None = None,
        deployment_id: str | None = None,
    ) -> RollbackTicket:
        """Start the emergency rollback, or return the one already running.

        Must be called on the event loop. The procedure runs as a task, so a running
        command, a monitor window or a slow screen does not hold it up.

        Args:
            started: ``time.monotonic()`` at the key press / command start.
            reason: Why (goes into the incident record and report).
            operator: Who (default: the controller's operator).
            trigger: ``hotkey``, ``cli``, ``automatic`` or ``api``.
            automatic: Started by :func:`automatic_rollback`.
            snapshot: The dashboard's latest snapshot, used for compliance metrics when current.
            safety: The pre-flight decision, kept in the record.
            confirmed: The operator confirmed despite the safety reasons.
            progress: Receives every step and failure the moment it happens.
            deployment_id: The deployment this rollback belongs to, if any.
        """
        running = self.running
        if running is not None:
            log.info("rollback already running (%s); not starting another", running.incident_id)
            return running
        incident_id = _new_incident_id(utcnow())
        run = _Run(incident_id=incident_id, started=started, progress=progress)
        self._incident_id = incident_id
        self._task = asyncio.get_running_loop().create_task(
            self._procedure(
                run,
                reason=reason,
                operator=operator,
                trigger=trigger,
                automatic=automatic,
                snapshot=snapshot,
                safety=safety,
                confirmed=confirmed,
                deployment_id=deployment_id,
            ),
            name=f"rollback-{incident_id}",
        )
        return RollbackTicket(task=self._task, started_new=True, incident_id=incident_id)

    async def run(self, *, started: float, reason: str, **kwargs: Any) -> RollbackResult:
        """Trigger (see :meth:`trigger`) and wait for the result."""
        return await self.trigger(started=started, reason=reason, **kwargs).task

    async def refuse(
        self,
        *,
        started: float,
        reason: str,
        safety: RollbackSafety,
        operator: str | None = None,
        trigger: str = "cli",
        automatic: bool = False,
        deployment_id: str | None = None,
        report: bool = True,
    ) -> RollbackResult:
        """Record a rollback that was asked for and not started (unsafe, not confirmed).

        Traffic is not touched. The refusal goes into the audit trail
        (``rollback.refused``) and, when ``report`` is set, an incident report.
        """
        at = utcnow()
        incident_id = _new_incident_id(at)
        run = _Run(incident_id=incident_id, started=started, progress=None)
        who = operator or self.operator
        problems = ("not started: blue is not safe and the rollback was not confirmed",)
        evidence = {
            "incident_id": incident_id,
            "reason": reason,
            "operator": who,
            "trigger": trigger,
            "automatic": automatic,
            "safety": safety.model_dump(mode="json"),
        }
        audit = await self._append(AUDIT_ACTION_REFUSED, evidence, who, deployment_id)
        result = RollbackResult(
            incident_id=incident_id,
            reason=reason,
            operator=who,
            trigger=trigger,
            automatic=automatic,
            deployment_id=deployment_id,
            started_at=at,
            trigger_monotonic=started,
            outcome=RollbackOutcome.REFUSED,
            total_ms=run.ms(),
            budget_s=self.config.thresholds.rollback_budget_s,
            within_budget=False,
            safety=safety,
            audit=audit,
            problems=problems + safety.reasons,
            constitutional_hash=self.config.constitutional_hash,
        )
        if report:
            paths, error = await asyncio.to_thread(self._write_report, result)
            result = result.model_copy(
                update={
                    "report_paths": paths,
                    "problems": result.problems + ((error,) if error else ()),
                }
            )
        self.last_result = result
        return result

    # -- the steps --

    async def _procedure(
        self,
        run: _Run,
        *,
        reason: str,
        operator: str | None,
        trigger: str,
        automatic: bool,
        snapshot: Snapshot | None,
        safety: RollbackSafety | None,
        confirmed: bool,
        deployment_id: str | None,
    ) -> RollbackResult:
        started_at = utcnow() - timedelta(milliseconds=run.ms())
        what = "automatic rollback" if automatic else "emergency rollback"
        run.emit(RollbackEventKind.STARTED, message=f"{what} to blue: {reason}")

        # 1. The switch: the traffic switch alone.
        _, attempts, switch_name = await self._switch_step(run)

        # 2a. The read-back, always: the load balancer is the truth about traffic.
        read_back = await self._read_back_step(run)
        switched = _is_zero(read_back)
        fallback: str | None = None
        compliance: ComplianceResult | None = None
        requests: RequestEvidence | None = None
        if switched:
            # 2b + 3. Health and compliance, and the request counters, side by side. Traffic
            # has moved: whatever a check does, the record and the report must still follow.
            health_task = asyncio.create_task(
                _guarded(
                    run,
                    (STEP_BLUE_HEALTHY, STEP_COMPLIANCE),
                    self._health_and_compliance(run, snapshot),
                )
            )
            requests = await _guarded(run, (STEP_REQUESTS,), self._requests_step(run))
            compliance = await health_task
        else:
            fallback = self.config.rollback.manual_fallback
            lb_text = "; ".join(a.error for a in attempts if a.error)[-600:]
            run.emit(
                RollbackEventKind.MANUAL_FALLBACK,
                message=f"{fallback} (the switch said: {lb_text or 'no error text'})",
            )
            for name in _VERIFY_STEPS:
                run.skip(name, "skipped: traffic is not confirmed on blue")

        # Resolved only now: the default identity comes from the audit module, whose
        # import (psycopg) must not delay the switch or its verification.
        operator = operator or self.operator
        log.info("%s %s to blue by %s: %s", what, run.incident_id, operator, reason)

        # 4. The incident record, then the report.
        def result(audit: AuditOutcome | None, paths: tuple[str, ...]) -> RollbackResult:
            steps = run.ordered()
            problems = tuple(f"{s.title}: {s.detail}" for s in steps if not s.ok)
            all_ok = bool(steps) and all(s.ok for s in steps)
            switch_ok = self._switch_ok(run)
            if not switched:
                outcome = RollbackOutcome.SWITCH_FAILED
            elif all_ok and switch_ok:
                outcome = RollbackOutcome.VERIFIED
            else:
                outcome = RollbackOutcome.UNVERIFIED
            total = max((s.ended_ms for s in steps), default=run.ms())
            budget = self.config.thresholds.rollback_budget_s
            return RollbackResult(
                incident_id=run.incident_id,
                reason=reason,
                operator=operator,
                trigger=trigger,
                automatic=automatic,
                deployment_id=deployment_id,
                started_at=started_at,
                trigger_monotonic=run.started,
                outcome=outcome,
                steps=steps,
                attempts=tuple(attempts),
                switch=switch_name,
                read_back=read_back,
                switched=switched,
                success=outcome is RollbackOutcome.VERIFIED,
                total_ms=total,
                budget_s=budget,
                within_budget=total <= budget * 1000.0,
                manual_fallback=fallback,
                safety=safety,
                confirmed=confirmed,
                compliance=compliance,
                requests=requests,
                audit=audit,
                report_paths=paths,
                problems=problems,
                constitutional_hash=self.config.constitutional_hash,
            )

        audit = await self._audit_step(run, result(None, ()), operator, deployment_id)
        final = await self._report_step(run, lambda paths: result(audit, paths))
        run.emit(
            RollbackEventKind.FINISHED,
            message=f"{final.outcome.value} in {final.total_ms:.0f} ms",
            result=final,
        )
        log.info(
            "rollback %s finished: %s in %.0f ms",
            run.incident_id,
            final.outcome.value,
            final.total_ms,
        )
        self.last_result = final
        return final

    @staticmethod
    def _switch_ok(run: _Run) -> bool:
        step = run.steps.get(STEP_SWITCH)
        return step is not None and step.ok

    async def _switch_step(self, run: _Run) -> tuple[TrafficSplit | None, list[SwitchAttempt], str]:
        begun = run.begin(STEP_SWITCH)
        attempts: list[SwitchAttempt] = []
        try:
            switch = self.switch()
        except Exception as exc:
            error = f"cannot build the traffic switch from the config: {exc}"
            attempts.append(
                SwitchAttempt(attempt=1, ok=False, started_ms=begun, ended_ms=run.ms(), error=error)
            )
            run.emit(RollbackEventKind.ATTEMPT_FAILED, step=STEP_SWITCH, message=error, attempt=1)
            run.end(STEP_SWITCH, begun, False, error)
            return None, attempts, ""
        total = self.config.rollback.retries + 1
        delay = self.config.rollback.retry_backoff_s
        for attempt in range(1, total + 1):
            at = run.ms()
            try:
                split = await switch.set_green_percentage(0.0)
            except asyncio.CancelledError:
                raise
            except TrafficSwitchError as exc:
                error = str(exc)
            except Exception as exc:  # whatever the switch does, the rollback reports it
                error = f"{type(exc).__name__}: {exc}"
            else:
                attempts.append(
                    SwitchAttempt(attempt=attempt, ok=True, started_ms=at, ended_ms=run.ms())
                )
                note = f" (after {attempt - 1} failed attempt(s))" if attempt > 1 else ""
                run.end(STEP_SWITCH, begun, True, f"{_describe_split(split)}{note}")
                return split, attempts, switch.name
            attempts.append(
                SwitchAttempt(
                    attempt=attempt, ok=False, started_ms=at, ended_ms=run.ms(), error=error
                )
            )
            last = attempt == total
            run.emit(
                RollbackEventKind.ATTEMPT_FAILED,
                step=STEP_SWITCH,
                message=error,
                attempt=attempt,
                retry_in_s=None if last else delay,
            )
            log.info("rollback switch attempt %d/%d failed: %s", attempt, total, error)
            if not last:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        run.end(
            STEP_SWITCH,
            begun,
            False,
            f"failed {total} time(s); last error: {attempts[-1].error}",
        )
        return None, attempts, switch.name

    async def _read_back_step(self, run: _Run) -> TrafficSplit | None:
        begun = run.begin(STEP_READ_BACK)
        try:
            switch = self.switch()
        except Exception as exc:
            run.end(STEP_READ_BACK, begun, False, f"no traffic switch: {exc}")
            return None
        try:
            split = await switch.read_split()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # read_split should not raise; if it does, say so
            split = TrafficSplit(
                green_percentage=None, source=switch.name, error=f"{type(exc).__name__}: {exc}"
            )
        ok = _is_zero(split)
        detail = _describe_split(split)
        if not ok and split.green_percentage is not None:
            detail = f"green is NOT at 0: {detail}"
        run.end(STEP_READ_BACK, begun, ok, detail)
        return split

    async def _health_and_compliance(
        self, run: _Run, snapshot: Snapshot | None
    ) -> ComplianceResult:
        from console.compliance import (
            CHECK_BODY_HASH,
            CHECK_GAUGE,
            CHECK_HASH_FAILURES,
            CHECK_HEADER_HASH,
            assess_compliance,
        )

        begun = run.begin(STEP_BLUE_HEALTHY)
        services = await self.probe_blue()
        expected = self.blue_services
        safety = assess_rollback_safety(
            None, False, blue_services=services, expected_services=expected
        )
        unhealthy = [r for r in safety.reasons if r.startswith("blue unhealthy")]
        up = sum(1 for s in services if s.state is ServiceState.UP)
        run.end(
            STEP_BLUE_HEALTHY,
            begun,
            not unhealthy,
            unhealthy[0] if unhealthy else f"{up}/{len(expected)} orchestrators up",
        )

        begun = run.begin(STEP_COMPLIANCE)
        if snapshot is not None and self._snapshot_current(snapshot):
            metrics = snapshot.blue.metrics
        else:
            metrics = _unknown_metrics("no current dashboard metrics during the rollback")
        compliance = assess_compliance(
            services,
            metrics,
            expected,
            expected_hash=self.config.constitutional_hash,
        )
        by_name = {c.name: c for c in compliance.checks}
        required = [by_name[n] for n in (CHECK_BODY_HASH, CHECK_HEADER_HASH) if n in by_name]
        # The hash on every blue response decides; the metrics' checks fail it only when
        # they were evaluated and failed (Prometheus may be down: that is not a verdict).
        failed_metrics = [
            c
            for c in compliance.checks
            if c.name in (CHECK_GAUGE, CHECK_HASH_FAILURES) and c.passed is False
        ]
        ok = bool(required) and all(c.passed is True for c in required) and not failed_metrics
        parts = [f"{c.name}: {c.detail}" for c in required]
        parts += [f"{c.name}: {c.detail}" for c in failed_metrics]
        unknown = [c.name for c in compliance.checks if c.passed is None and c not in required]
        if unknown:
            parts.append("not evaluated: " + ", ".join(unknown))
        run.end(STEP_COMPLIANCE, begun, ok, "; ".join(parts))
        return compliance

    def _counter(self) -> _Counter:
        switch = self.switch()
        if isinstance(switch, RequestCounter):
            return switch
        targets = {
            env: [svc.base_url + "/metrics" for svc in self.config.env(env).services.values()]
            for env in Environment
        }
        return _ScrapeRequestCounter(self._http(), targets, self.config.probe_timeout_s)

    async def _requests_step(self, run: _Run) -> RequestEvidence:
        begun = run.begin(STEP_REQUESTS)
        window_ms = self.config.rollback.verify_window_s * 1000.0
        timeout_ms = max(
            self.config.rollback.verify_timeout_s * 1000.0, window_ms + 2 * COUNTER_POLL_S * 1000
        )
        counter = self._counter()
        source = getattr(counter, "name", type(counter).__name__)
        try:
            base = await _read_counts(counter)
        except _CounterError as exc:
            detail = f"unknown: the request counters cannot be read: {exc}"
            run.end(STEP_REQUESTS, begun, False, detail)
            return RequestEvidence(source=source, error=str(exc))
        watch_from = run.ms()
        last_green = base[Environment.GREEN]
        quiet_since = watch_from
        blue_at_quiet = base[Environment.BLUE]
        green_changed: float | None = None
        now = base
        error: str | None = None
        ok = False
        while True:
            await asyncio.sleep(COUNTER_POLL_S)
            try:
                now = await _read_counts(counter)
            except _CounterError as exc:
                error = str(exc)
                break
            t = run.ms()
            if now[Environment.GREEN] != last_green:
                # Green moved: requests already in flight may finish; the quiet window restarts.
                last_green = now[Environment.GREEN]
                green_changed = t
                quiet_since = t
                blue_at_quiet = now[Environment.BLUE]
            elif t - quiet_since >= window_ms and now[Environment.BLUE] > blue_at_quiet:
                ok = True
                break
            if t - watch_from >= timeout_ms:
                break
        blue_n = now[Environment.BLUE] - base[Environment.BLUE]
        green_n = now[Environment.GREEN] - base[Environment.GREEN]
        watched = run.ms() - watch_from
        evidence = RequestEvidence(
            source=source,
            blue_requests=blue_n,
            green_requests=green_n,
            green_last_change_ms=green_changed,
            watched_ms=watched,
            error=error,
        )
        counts = f"blue +{blue_n}, green +{green_n} in {watched:.0f} ms ({source})"
        if ok:
            detail = f"{counts}; green quiet for {window_ms / 1000:g} s"
        elif error is not None:
            detail = f"unknown: the request counters stopped answering: {error}; {counts}"
        elif now[Environment.GREEN] != last_green or (
            green_changed is not None and run.ms() - green_changed < window_ms
        ):
            detail = f"green is still receiving requests: {counts}"
        else:
            detail = (
                f"unconfirmed: no requests reached blue in a quiet {window_ms / 1000:g} s "
                f"window; {counts}"
            )
        run.end(STEP_REQUESTS, begun, ok, detail)
        return evidence

    async def _append(
        self,
        action: str,
        evidence: dict[str, Any],
        operator: str,
        deployment_id: str | None,
    ) -> AuditOutcome:
        try:
            trail = self.trail()
        except Exception as exc:
            return AuditOutcome(stored=False, spooled=False, error=f"no audit trail: {exc}")

        fence = self._fence() if self._fence is not None else None

        def append() -> AppendResult:
            return trail.append(
                action,
                evidence=evidence,
                operator=operator,
                deployment_id=deployment_id,
                fence=fence,
            )

        try:
            got = await asyncio.wait_for(asyncio.to_thread(append), AUDIT_TIMEOUT_S)
        except TimeoutError:
            return AuditOutcome(
                stored=False,
                spooled=False,
                error=f"the audit append did not finish within {AUDIT_TIMEOUT_S:g} s",
            )
        except Exception as exc:
            return AuditOutcome(stored=False, spooled=False, error=f"{type(exc).__name__}: {exc}")
        return AuditOutcome(
            stored=got.record is not None,
            spooled=got.spooled,
            seq=got.record.seq if got.record else None,
            hash=got.record.hash if got.record else None,
            pending=got.pending,
            error=got.error,
        )

    async def _audit_step(
        self, run: _Run, partial: RollbackResult, operator: str, deployment_id: str | None
    ) -> AuditOutcome:
        begun = run.begin(STEP_AUDIT)
        evidence: dict[str, Any] = {
            "incident_id": partial.incident_id,
            "reason": partial.reason,
            "operator": operator,
            "trigger": partial.trigger,
            "automatic": partial.automatic,
            "target": partial.target.value,
            "outcome": partial.outcome.value,
            "switched": partial.switched,
            "read_back": partial.read_back.model_dump(mode="json") if partial.read_back else None,
            "steps": [
                {
                    "name": s.name,
                    "ok": s.ok,
                    "skipped": s.skipped,
                    "started_ms": round(s.started_ms, 3),
                    "ended_ms": round(s.ended_ms, 3),
                    "detail": s.detail,
                }
                for s in partial.steps
            ],
            "attempts": [a.model_dump(mode="json") for a in partial.attempts],
            "switch": partial.switch,
            "total_ms_before_record": round(run.ms(), 3),
            "budget_s": partial.budget_s,
            "safety": partial.safety.model_dump(mode="json") if partial.safety else None,
            "confirmed": partial.confirmed,
            "manual_fallback": partial.manual_fallback,
        }
        outcome = await self._append(AUDIT_ACTION, evidence, operator, deployment_id)
        if outcome.stored:
            detail = f"record #{outcome.seq} ({(outcome.hash or '')[:16]}...)"
        elif outcome.spooled:
            detail = (
                f"spooled locally ({outcome.pending} waiting; flushed when the store is back): "
                f"{outcome.error or 'store unavailable'}"
            )
        else:
            detail = f"NOT recorded: {outcome.error}"
        run.end(STEP_AUDIT, begun, outcome.stored or outcome.spooled, detail)
        return outcome

    async def _report_step(
        self, run: _Run, build: Callable[[tuple[str, ...]], RollbackResult]
    ) -> RollbackResult:
        begun = run.begin(STEP_REPORT)
        base = self.report_dir / f"incident-{run.incident_id}"
        paths = (str(base.with_suffix(".md")), str(base.with_suffix(".json")))
        # The report carries its own step as done: the write itself takes well under 1 ms.
        run.end(STEP_REPORT, begun, True, f"{paths[0]} and {paths[1]}")
        result = build(paths)
        written, error = await asyncio.to_thread(self._write_report, result)
        if error is not None:
            run.end(STEP_REPORT, begun, False, error)
            return build(written)
        return result

    def _write_report(self, result: RollbackResult) -> tuple[tuple[str, ...], str | None]:
        base = self.report_dir / f"incident-{result.incident_id}"
        md, js = base.with_suffix(".md"), base.with_suffix(".json")
        try:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            js.write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
            md.write_text(render_markdown(result), encoding="utf-8")
        except OSError as exc:
            return (), f"cannot write the incident report in {self.report_dir}: {exc}"
        return (str(md), str(js)), None


# --- the automatic hook -------------------------------------------------------------------------


async def run_automatic(
    controller: RollbackController,
    why: str,
    *,
    snapshot: Snapshot | None = None,
    started: float | None = None,
    decommissioned: bool = False,
    progress: ProgressCallback | None = None,
    deployment_id: str | None = None,
) -> RollbackResult | None:
    """Run the emergency procedure automatically, with the reason ``automatic: <why>``.

    Does nothing (returns None) unless ``rollback.automatic`` is true. When blue is not
    safe it does not move traffic: it records the refusal and returns it (outcome
    ``refused``), because an automatic move onto an unhealthy blue needs a person; the
    console then offers a confirmed rollback. A rollback already running is returned, not
    doubled.
    """
    if not controller.config.rollback.automatic:
        return None
    started = time.monotonic() if started is None else started
    reason = f"automatic: {why}"
    running = controller.running
    if running is not None:
        return await running.task
    safety = await controller.preflight(snapshot, decommissioned)
    if not safety.safe:
        return await controller.refuse(
            started=started,
            reason=reason,
            safety=safety,
            trigger="automatic",
            automatic=True,
            deployment_id=deployment_id,
        )
    ticket = controller.trigger(
        started=started,
        reason=reason,
        trigger="automatic",
        automatic=True,
        snapshot=snapshot,
        safety=safety,
        progress=progress,
        deployment_id=deployment_id,
    )
    return await ticket.task


async def automatic_rollback(
    controller: RollbackController,
    alert: AlertState,
    *,
    snapshot: Snapshot | None = None,
    started: float | None = None,
    decommissioned: bool = False,
    progress: ProgressCallback | None = None,
    deployment_id: str | None = None,
) -> RollbackResult | None:
    """A critical alert fired during a monitor window: roll back if the config says so.

    Only a *firing critical* alert counts; see :func:`run_automatic` for the rest.
    """
    if alert.severity is not AlertSeverity.CRITICAL or alert.phase is not AlertPhase.FIRING:
        return None
    where = f" on {alert.environment.value}" if alert.environment is not None else ""
    return await run_automatic(
        controller,
        f"{alert.name}{where}: {alert.summary}",
        snapshot=snapshot,
        started=started,
        decommissioned=decommissioned,
        progress=progress,
        deployment_id=deployment_id,
    )


class RunbookRollbackHook:
    """The runbook engine's ``on_rollback(reason, automatic)`` hook, wired to a controller.

    The engine calls it (on the event loop) when a critical alert fails a monitor window.
    With ``automatic`` true (the engine sets it from ``rollback.automatic``) the emergency
    procedure starts at once as a task, reason ``automatic: <the engine's reason>``; the
    clock starts at the call. Otherwise the rollback is only offered: ``on_offer`` is
    told, and the console asks the operator.

    Args:
        controller: The console's rollback controller.
        snapshot: Returns the latest dashboard snapshot (or None).
        decommissioned: Returns whether blue was decommissioned.
        deployment_id: Returns the deployment the engine runs.
        progress: Receives the procedure's progress events.
        on_result: Receives the result when the automatic rollback ends.
        on_offer: Receives the reason when a rollback is offered but not automatic.
    """

    def __init__(
        self,
        controller: RollbackController,
        *,
        snapshot: Callable[[], Snapshot | None] | None = None,
        decommissioned: Callable[[], bool] | None = None,
        deployment_id: Callable[[], str | None] | None = None,
        progress: ProgressCallback | None = None,
        on_result: Callable[[RollbackResult], None] | None = None,
        on_offer: Callable[[str], None] | None = None,
    ) -> None:
        self.controller = controller
        self._snapshot = snapshot
        self._decommissioned = decommissioned
        self._deployment_id = deployment_id
        self._progress = progress
        self._on_result = on_result
        self._on_offer = on_offer
        self.task: asyncio.Task[RollbackResult | None] | None = None
        """The last automatic rollback started by this hook."""

    def __call__(self, reason: str, automatic: bool) -> None:
        started = time.monotonic()
        if not (automatic and self.controller.config.rollback.automatic):
            if self._on_offer is not None:
                self._on_offer(reason)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.error("automatic rollback requested outside the event loop: %s", reason)
            return
        self.task = loop.create_task(
            run_automatic(
                self.controller,
                reason,
                snapshot=self._snapshot() if self._snapshot else None,
                started=started,
                decommissioned=self._decommissioned() if self._decommissioned else False,
                progress=self._progress,
                deployment_id=self._deployment_id() if self._deployment_id else None,
            ),
            name="automatic-rollback",
        )
        if self._on_result is not None:
            deliver = self._on_result

            def done(task: asyncio.Task[RollbackResult | None]) -> None:
                if task.cancelled():
                    return
                error = task.exception()
                if error is not None:
                    log.error("automatic rollback failed", exc_info=error)
                    return
                result = task.result()
                if result is not None:
                    deliver(result)

            self.task.add_done_callback(done)


# --- the incident report --------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: RollbackResult) -> str:
    """The incident report as Markdown: what happened, when, and what was verified."""
    verdict = {
        RollbackOutcome.VERIFIED: "ROLLED BACK TO BLUE AND VERIFIED",
        RollbackOutcome.UNVERIFIED: "TRAFFIC ON BLUE, VERIFICATION FOUND PROBLEMS",
        RollbackOutcome.SWITCH_FAILED: "SWITCH FAILED: TRAFFIC NOT CONFIRMED ON BLUE",
        RollbackOutcome.REFUSED: "NOT STARTED: BLUE NOT SAFE, NOT CONFIRMED",
    }[result.outcome]
    lines = [
        f"# Incident report: emergency rollback {result.incident_id}",
        "",
        f"**Outcome:** {verdict}",
        "",
        f"- Started: {result.started_at.isoformat(timespec='milliseconds')}",
        f"- Operator: {result.operator}",
        f"- Trigger: {result.trigger}" + (" (automatic)" if result.automatic else ""),
        f"- Reason: {result.reason}",
        f"- Deployment: {result.deployment_id or '(none)'}",
        f"- Traffic switch: {result.switch or '(none)'}",
        f"- Constitutional hash: `{result.constitutional_hash}`",
        f"- Total: {result.total_ms:.0f} ms of the runbook's {result.budget_s:g} s budget "
        f"({'within' if result.within_budget else 'NOT within'} budget)",
    ]
    if result.read_back is not None:
        lines.append(f"- Load balancer read-back: {_describe_split(result.read_back)}")
    if result.safety is not None:
        safety = result.safety
        text = "safe" if safety.safe else "needed confirmation: " + "; ".join(safety.reasons)
        lines.append(f"- Pre-flight ({safety.source}): {text}")
        if result.confirmed:
            lines.append("- Confirmed by the operator despite the pre-flight reasons")
    lines += ["", "## Steps", "", "| step | result | start (ms) | end (ms) | detail |"]
    lines.append("|---|---|---:|---:|---|")
    for step in result.steps:
        state = "skipped" if step.skipped else ("ok" if step.ok else "FAILED")
        lines.append(
            f"| {_cell(step.title)} | {state} | {step.started_ms:.1f} | {step.ended_ms:.1f} "
            f"| {_cell(step.detail)} |"
        )
    if result.attempts:
        lines += ["", "## Switch attempts", ""]
        for a in result.attempts:
            state = "ok" if a.ok else f"failed: {a.error}"
            lines.append(f"- attempt {a.attempt} ({a.started_ms:.1f}-{a.ended_ms:.1f} ms): {state}")
    if result.manual_fallback:
        lines += ["", "## Manual fallback", "", result.manual_fallback]
    if result.compliance is not None:
        score = result.compliance.score
        lines += [
            "",
            "## Constitutional compliance on blue",
            "",
            "The rollback judges the constitutional hash in the body and the header of every "
            "blue response; the metrics' checks count against it only when they were "
            "evaluated (metrics may be down during an incident).",
            "",
            f"Score over all checks (unevaluated ones count as failed): "
            f"{'unknown' if score is None else f'{score:.0f} %'}",
            "",
        ]
        for c in result.compliance.checks:
            mark = {True: "pass", False: "FAIL", None: "unknown"}[c.passed]
            lines.append(f"- {c.name}: {mark} ({c.detail})")
        lines += [f"- note: {n}" for n in result.compliance.notes]
    if result.audit is not None:
        audit = result.audit
        if audit.stored:
            where = f"record #{audit.seq}, hash `{audit.hash}`"
        elif audit.spooled:
            where = f"spooled locally ({audit.pending} waiting): {audit.error}"
        else:
            where = f"NOT recorded: {audit.error}"
        lines += ["", "## Audit trail", "", where]
    if result.problems:
        lines += ["", "## Problems", ""]
        lines += [f"- {p}" for p in result.problems]
    return "\n".join(lines) + "\n"
