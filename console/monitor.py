"""The monitor loop: one immutable Snapshot of both environments per interval.

This module owns turning an :class:`~console.config.AppConfig` into the
back-ends (:func:`build_backends`) and, every interval, gathering one
:class:`~backends.models.Snapshot` (:class:`Monitor`): the eighteen health
probes, the metrics of both environments, both Redis, both PostgreSQL
clusters and the traffic split, then compliance per environment and the alert
rules over the result.

How a sweep behaves:

* Every probe runs concurrently (``asyncio.gather``) and each is bounded by
  its own timeout, counted from the start of the sweep (a probe set up a few
  milliseconds after the others gets no extra time), so one hung endpoint
  costs its own timeout and delays nothing else; the sweep takes as long as
  its slowest probe.
* Sweeps never overlap: a sweep asked for while one is running gets that
  sweep's snapshot; :meth:`Monitor.run` arms the next sweep only after the
  previous one (and the callback) finished.
* A probe that fails ``backoff_after`` times in a row (no answer: refused,
  timeout, unreachable) is skipped for a growing number of sweeps (1, 2, 4, ...
  capped so that its last result never outlives its age). While skipped, its
  last result is shown with a note saying so; a result past its age
  (``thresholds.stale_after_s``) becomes ``unknown`` with ``stale=True``.
  Metrics that cannot be fetched keep no value that could pass for current:
  earlier values are carried only marked ``stale``.
* Metrics are fetched on their own cadence, ``prometheus.fetch_interval_s``
  (5 s by default; Prometheus itself scrapes every 15 s), while health, hashes,
  Redis, PostgreSQL and the split are probed every sweep. The sweeps in between
  reuse the last answer as it was, each value with its ``sampled_at``, and mark
  a value that has passed its allowed age stale. The first two fetches run a
  sweep apart (a rate needs two scrapes), and a fetch that failed is retried at
  the next sweep. Alert rules see a metric change when it is fetched, as
  Prometheus's own rules do.
* Nothing a probe or a rule does can break the loop: errors become named
  states in the snapshot.

Heavy clients (prometheus-api-client, psycopg, redis) are imported inside
:func:`build_backends`, only for what the configuration uses.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from backends.models import (
    ComplianceCheck,
    ComplianceResult,
    Environment,
    EnvironmentMetrics,
    EnvironmentSnapshot,
    MetricValue,
    ProbeState,
    RedisStatus,
    ReplicationStatus,
    ServiceHealth,
    ServiceState,
    Snapshot,
    TrafficSplit,
    utcnow,
)
from console.rules import RuleEvaluator, RuleInputs, build_rules

if TYPE_CHECKING:
    import httpx

    from backends.metrics import MetricsSource
    from backends.traffic import TrafficSwitch
    from console.config import AppConfig
    from console.rules import AlertRule

log = logging.getLogger(__name__)

T = TypeVar("T")


BACKOFF_AFTER = 3
"""Consecutive failures of a probe before it is skipped for some sweeps."""

# No answer worth repeating every second. A refused password counts too: hammering a
# server with a wrong password floods its log and can lock the account.
_FAILED_ENGINE_STATES = frozenset(
    {
        ProbeState.REFUSED,
        ProbeState.TIMEOUT,
        ProbeState.ERROR,
        ProbeState.UNKNOWN,
        ProbeState.AUTH_FAILED,
    }
)


# --- back-ends ---------------------------------------------------------------------------------


class HealthProbe(Protocol):
    """``backends.health.HealthProber``."""

    async def probe(self, environment: Environment, service: str, url: str) -> ServiceHealth:
        """One service's health; never raises for what the service does."""
        ...


class RedisProbe(Protocol):
    """``backends.redis_probe.probe_redis``."""

    def __call__(
        self,
        url: str | None,
        password: Any = None,
        username: str | None = None,
        timeout_s: float = 1.0,
    ) -> Awaitable[RedisStatus]: ...


class ReplicationProbe(Protocol):
    """``backends.postgres.probe_replication``."""

    def __call__(
        self,
        primary_dsn: str | None,
        replica_dsns: list[str],
        password: Any,
        expected_replicas: int,
        max_lag_bytes: int,
        max_lag_seconds: float,
        timeout_s: float = 2.0,
    ) -> Awaitable[ReplicationStatus]: ...


@dataclass
class Backends:
    """What the monitor talks through; built from the config by :func:`build_backends`."""

    client: httpx.AsyncClient
    """The one HTTP client every health probe shares (keep-alive)."""
    prober: HealthProbe
    metrics: MetricsSource
    traffic: TrafficSwitch
    probe_redis: RedisProbe | None = None
    """None when no environment configures Redis (nothing to import)."""
    probe_replication: ReplicationProbe | None = None
    """None when no environment configures PostgreSQL."""
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Called by :meth:`Monitor.close`, in order."""


def window_seconds(window: str, default: float = 60.0) -> float:
    """Seconds in a Prometheus duration such as ``1m``, ``90s`` or ``1m30s``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", window.strip())
    if not parts or "".join(n + u for n, u in parts) != window.strip():
        return default
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    return sum(float(n) * scale[u] for n, u in parts)


def build_traffic_switch(
    config: AppConfig, client: httpx.AsyncClient | None = None
) -> TrafficSwitch:
    """The traffic switch the config names (HAProxy runtime API, site command, or sandbox).

    Args:
        config: The console configuration.
        client: An HTTP client the sandbox switch may share.
    """
    from backends import traffic

    spec = config.traffic
    if spec.kind == "haproxy":
        return traffic.HAProxyRuntimeSwitch(
            spec.admin,
            backend=spec.backend,
            blue_server=spec.blue_server,
            green_server=spec.green_server,
            timeout_s=spec.timeout_s,
        )
    if spec.kind == "command":
        return traffic.CommandTrafficSwitch(
            spec.set_argv, read_argv=spec.read_argv, cwd=spec.cwd, timeout_s=spec.timeout_s
        )
    return traffic.SandboxRouterSwitch(
        spec.control_url, timeout_s=config.probe_timeout_s, client=client
    )


def build_metrics_source(config: AppConfig, client: httpx.AsyncClient) -> MetricsSource:
    """Prometheus when ``prometheus.url`` is set, else a direct scrape of the services.

    Args:
        config: The console configuration.
        client: The HTTP client the direct scrape uses. Give it its own client, not the
            health probes' one: httpcore's pool does work quadratic in its connection count
            on every request, so one pool per job keeps each sweep cheap.
    """
    prom = config.prometheus
    if prom.url:
        from backends.prometheus import PrometheusSource

        return PrometheusSource(
            prom.url,
            prom.queries.model_dump(),
            prom.environment_label,
            {e: config.prometheus_label_of(e) for e in Environment},
            extra_selector=prom.extra_selector,
            window=prom.window,
            timeout_s=prom.timeout_s,
            max_age_s=prom.max_sample_age_s,
        )
    from backends.scrape import DirectScrapeSource

    targets = {
        e: [svc.base_url + "/metrics" for svc in config.env(e).services.values()]
        for e in Environment
    }
    return DirectScrapeSource(
        client,
        targets,
        window_s=window_seconds(prom.window),
        timeout_s=config.probe_timeout_s,
        # Scraped every fetch_interval_s: one missed scrape is not yet stale, two are.
        max_age_s=scrape_max_age_s(config),
    )


def scrape_max_age_s(config: AppConfig) -> float:
    """How old a directly scraped value may be before it is stale.

    ``thresholds.stale_after_s``, or twice ``prometheus.fetch_interval_s`` when
    that is longer (what Prometheus asks of its own sample age against its scrape
    interval), so a value never turns stale merely because the next fetch is not
    due yet.
    """
    return max(config.thresholds.stale_after_s, 2.0 * config.prometheus.fetch_interval_s)


def build_backends(config: AppConfig) -> Backends:
    """Build every back-end the config asks for (imports only what it uses).

    Args:
        config: The console configuration.

    Returns:
        The back-ends; :meth:`Monitor.close` releases them.
    """
    from backends.health import HealthProber, make_client

    client = make_client(config.probe_timeout_s)
    scrape_client = None if config.prometheus.url else make_client(config.probe_timeout_s)
    backends = Backends(
        client=client,
        prober=HealthProber(client, config.constitutional_hash, config.probe_timeout_s),
        metrics=build_metrics_source(config, scrape_client or client),
        # The sandbox switch keeps its own small client, out of the health probes' pool.
        traffic=build_traffic_switch(config),
    )
    envs = [config.env(e) for e in Environment]
    if any(env.redis is not None for env in envs):
        from backends.redis_probe import close_redis_probers, probe_redis

        backends.probe_redis = probe_redis
        backends.closers.append(close_redis_probers)
    if any(env.postgres is not None for env in envs):
        from backends.postgres import close_replication_probers, probe_replication

        backends.probe_replication = probe_replication
        backends.closers.append(close_replication_probers)
    backends.closers.append(backends.metrics.aclose)
    closer = getattr(backends.traffic, "aclose", None)
    if closer is not None:
        backends.closers.append(closer)
    backends.closers.append(client.aclose)
    if scrape_client is not None:
        backends.closers.append(scrape_client.aclose)
    return backends


# --- backoff and staleness -----------------------------------------------------------------


@dataclass
class ProbeRecord:
    """Backoff bookkeeping of one probe (one service, one engine, the metrics, the split)."""

    name: str
    failures: int = 0
    """Consecutive failed probes."""
    skip_left: int = 0
    """Sweeps still to skip before probing again."""
    last_probed: float | None = None
    """Monotonic time of the last real probe."""
    last_result: Any = None
    probes: int = 0
    """Real probes made (skipped sweeps not counted)."""


@dataclass(frozen=True)
class _Kind(Generic[T]):
    """How the monitor treats one kind of probe result."""

    failed: Callable[[T], bool]
    """No answer at all (what counts towards backoff)."""
    error: Callable[[str, T | None], T]
    """The result for a probe the monitor itself had to stop (reason, previous result)."""
    carried: Callable[[T, str], T]
    """The last result, still within its age, shown while the probe is skipped."""
    stale: Callable[[T, str], T]
    """The last result past its age: unknown, marked stale."""


def _note(reason: str, note: str) -> str:
    return f"{reason}; {note}" if reason else note


def _health_kind(environment: Environment, service: str, url: str) -> _Kind[ServiceHealth]:
    def error(reason: str, _prev: ServiceHealth | None) -> ServiceHealth:
        state = ServiceState.DOWN if reason.startswith("timeout") else ServiceState.UNKNOWN
        return ServiceHealth(
            environment=environment, service=service, url=url, state=state, reason=reason
        )

    def stale(prev: ServiceHealth, note: str) -> ServiceHealth:
        return ServiceHealth(
            environment=environment,
            service=service,
            url=url,
            state=ServiceState.UNKNOWN,
            reason=f"stale: {note} (last seen {prev.state.value}: {prev.reason or 'no reason'})",
            checked_at=prev.checked_at,
            stale=True,
        )

    return _Kind(
        failed=lambda h: h.http_status is None,
        error=error,
        carried=lambda h, note: h.model_copy(update={"reason": _note(h.reason, note)}),
        stale=stale,
    )


def _redis_kind() -> _Kind[RedisStatus]:
    return _Kind(
        failed=lambda r: r.state in _FAILED_ENGINE_STATES,
        error=lambda reason, _p: RedisStatus(
            state=ProbeState.TIMEOUT if reason.startswith("timeout") else ProbeState.ERROR,
            reason=reason,
        ),
        carried=lambda r, note: r.model_copy(update={"reason": _note(r.reason, note)}),
        stale=lambda r, note: RedisStatus(
            state=ProbeState.UNKNOWN,
            reason=f"stale: {note} (last seen {r.state.value}: {r.reason or 'no reason'})",
            checked_at=r.checked_at,
            stale=True,
        ),
    )


def _replication_kind(expected: int) -> _Kind[ReplicationStatus]:
    return _Kind(
        failed=lambda r: r.state in _FAILED_ENGINE_STATES,
        error=lambda reason, _p: ReplicationStatus(
            state=ProbeState.TIMEOUT if reason.startswith("timeout") else ProbeState.ERROR,
            reason=reason,
            expected_replicas=expected,
        ),
        carried=lambda r, note: r.model_copy(update={"reason": _note(r.reason, note)}),
        stale=lambda r, note: ReplicationStatus(
            state=ProbeState.UNKNOWN,
            reason=f"stale: {note} (last seen {r.state.value}: {r.reason or 'no reason'})",
            expected_replicas=expected,
            checked_at=r.checked_at,
            stale=True,
        ),
    )


def _traffic_kind(source: str) -> _Kind[TrafficSplit]:
    return _Kind(
        failed=lambda t: t.green_percentage is None,
        error=lambda reason, _p: TrafficSplit(green_percentage=None, source=source, error=reason),
        carried=lambda t, note: t.model_copy(update={"error": _note(t.error or "", note)}),
        stale=lambda t, note: TrafficSplit(
            green_percentage=None,
            source=source,
            error=f"stale: {note} (last error: {t.error or 'none'})",
            read_at=t.read_at,
            stale=True,
        ),
    )


_METRIC_FIELDS: tuple[str, ...] = tuple(EnvironmentMetrics.model_fields)


def _unknown_metrics(source: str, reason: str) -> EnvironmentMetrics:
    return EnvironmentMetrics(
        **{n: MetricValue(name=n, source=source, error=reason) for n in _METRIC_FIELDS}
    )


def _stale_metrics(previous: EnvironmentMetrics, reason: str) -> EnvironmentMetrics:
    """Earlier metrics, every value marked stale: shown as stale, never as current."""
    return EnvironmentMetrics(
        **{
            n: getattr(previous, n).model_copy(update={"stale": True, "error": reason})
            for n in _METRIC_FIELDS
        }
    )


MetricsResult = dict[Environment, EnvironmentMetrics]


def _no_metrics(metrics: EnvironmentMetrics) -> bool:
    """Not one value known for the environment (its scrape or query failed)."""
    return all(v.value is None for v in metrics.all())


def _metrics_kind(source: str) -> _Kind[MetricsResult]:
    def failed(result: MetricsResult) -> bool:
        return all(_no_metrics(m) for m in result.values())

    def error(reason: str, prev: MetricsResult | None) -> MetricsResult:
        return {
            e: _stale_metrics(prev[e], reason)
            if prev is not None and e in prev
            else _unknown_metrics(source, reason)
            for e in Environment
        }

    return _Kind(
        failed=failed,
        error=error,
        # Whatever the last fetch kept is shown as stale, never as current.
        carried=lambda r, note: error(note, r),
        stale=lambda r, note: error(note, r),
    )


def is_stale(snapshot: Snapshot, max_age_s: float, now: datetime | None = None) -> bool:
    """Whether a snapshot is older than ``max_age_s`` (show it as stale, not as current)."""
    return ((now or utcnow()) - snapshot.taken_at).total_seconds() > max_age_s


# --- the monitor -------------------------------------------------------------------------------

InputsProvider = Callable[[], RuleInputs | Awaitable[RuleInputs]]
Callback = Callable[[Snapshot], Awaitable[None] | None]


class Monitor:
    """Sweeps both environments into one immutable :class:`Snapshot` per interval.

    Use as an async context manager, or call :meth:`close` when done::

        async with Monitor(config) as monitor:
            snapshot = await monitor.sweep()
    """

    def __init__(
        self,
        config: AppConfig,
        *,
        backends: Backends | None = None,
        rules: Sequence[AlertRule] | None = None,
        inputs: RuleInputs | InputsProvider | None = None,
        clock: Callable[[], datetime] = utcnow,
        backoff_after: int = BACKOFF_AFTER,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the monitor and its back-ends (nothing is contacted yet).

        Args:
            config: The console configuration.
            backends: Back-ends to use instead of building them from ``config``.
            rules: Alert rules (default: every runbook rule for the config's thresholds).
            inputs: The rules' input hooks: fixed values, or a function called once per
                sweep (audit verification, security scan results).
            clock: The wall clock for ``taken_at`` and rule timers (tests step it).
            backoff_after: Consecutive failures before a probe is skipped for some sweeps.
            monotonic: The clock of the metrics cadence and of backoff ages (tests step it).
        """
        self.config = config
        self.backends = backends if backends is not None else build_backends(config)
        self.evaluator = RuleEvaluator(
            rules if rules is not None else build_rules(config.thresholds)
        )
        self._inputs = inputs
        self._clock = clock
        self._monotonic = monotonic
        self.backoff_after = max(1, backoff_after)
        self.interval_s = config.refresh_interval_s
        self.max_age_s = config.thresholds.stale_after_s
        # Skip no longer than the data may age: a carried result is never past its age.
        self.max_skip = max(0, math.floor(self.max_age_s / self.interval_s) - 1)
        self.metrics_interval_s = config.prometheus.fetch_interval_s
        """Seconds between metric fetches; the sweeps between them reuse the last answer."""
        self.metrics_fetches = 0
        """Metric fetches the source answered (sweeps that reused an answer not counted)."""
        self._metrics_kept: MetricsResult | None = None
        """The last fetch's answer while it may be reused (None: fetch at the next sweep)."""
        self._metrics_fetched_at = 0.0
        """Monotonic time the kept answer's fetch began."""
        self.records: dict[str, ProbeRecord] = {}
        self.sequence = 0
        self.sweeps_run = 0
        self.last: Snapshot | None = None
        self._inflight: asyncio.Task[Snapshot] | None = None
        self._sweep_started: float | None = None
        """Event-loop time the running sweep began: every probe's deadline counts from it."""
        self._closed = False

    async def __aenter__(self) -> Monitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- one sweep ---------------------------------------------------------------------------

    async def sweep(self) -> Snapshot:
        """Gather one snapshot; while a sweep runs, callers share its result.

        Returns:
            The snapshot.
        """
        if self._closed:
            raise RuntimeError("the monitor is closed")
        task = self._inflight
        if task is None or task.done():
            task = asyncio.ensure_future(self._sweep())
            self._inflight = task
        # shield: one caller giving up must not cancel the sweep the others wait for.
        return await asyncio.shield(task)

    async def _sweep(self) -> Snapshot:
        self.sweeps_run += 1
        self._sweep_started = asyncio.get_running_loop().time()
        try:
            return await self._gather_snapshot()
        finally:
            self._sweep_started = None

    async def _gather_snapshot(self) -> Snapshot:
        taken_at = self._clock()
        started = time.perf_counter()
        cfg = self.config
        health_targets = [
            (env, name, svc.health_url)
            for env in Environment
            for name, svc in cfg.env(env).services.items()
        ]
        health_jobs = [self._health(env, name, url) for env, name, url in health_targets]
        redis_jobs = [self._redis(env) for env in Environment]
        pg_jobs = [self._replication(env) for env in Environment]
        # Started in this order: the metrics query (a thread for Prometheus) first, so its
        # round trip overlaps with setting up the eighteen health requests.
        results = await asyncio.gather(
            self._metrics(),
            self._traffic(),
            asyncio.gather(*redis_jobs),
            asyncio.gather(*pg_jobs),
            asyncio.gather(*health_jobs),
            self._rule_inputs(),
        )
        metrics: MetricsResult = results[0]
        traffic: TrafficSplit = results[1]
        redis: list[RedisStatus] = results[2]
        replication: list[ReplicationStatus] = results[3]
        healths: list[ServiceHealth] = results[4]
        inputs: RuleInputs = results[5]

        environments: dict[Environment, EnvironmentSnapshot] = {}
        for i, env in enumerate(Environment):
            services = tuple(h for h in healths if h.environment is env)
            env_metrics = metrics.get(env) or _unknown_metrics(
                self.backends.metrics.name, "source returned nothing for this environment"
            )
            environments[env] = EnvironmentSnapshot(
                environment=env,
                services=services,
                metrics=env_metrics,
                compliance=self._compliance(env, services, env_metrics),
                redis=redis[i],
                replication=replication[i],
                taken_at=taken_at,
            )
        alerts = self.evaluator.evaluate(environments, taken_at, inputs)
        self.sequence += 1
        snapshot = Snapshot(
            taken_at=taken_at,
            duration_ms=(time.perf_counter() - started) * 1000.0,
            blue=environments[Environment.BLUE],
            green=environments[Environment.GREEN],
            traffic=traffic,
            alerts=alerts,
            constitutional_hash=cfg.constitutional_hash,
            sequence=self.sequence,
        )
        self.last = snapshot
        return snapshot

    async def _bounded(
        self,
        name: str,
        call: Callable[[], Awaitable[T]],
        timeout_s: float,
        kind: _Kind[T],
    ) -> T:
        """Run one probe under its own timeout, with backoff; never raises (but cancels)."""
        record = self.records.get(name)
        if record is None:
            record = self.records[name] = ProbeRecord(name)
        if record.skip_left > 0 and record.last_result is not None:
            record.skip_left -= 1
            age = self._monotonic() - (record.last_probed or 0.0)
            note = (
                f"not re-probed: backing off after {record.failures} failures in a row, "
                f"last probe {age:.1f} s ago"
            )
            if age <= self.max_age_s:
                return kind.carried(record.last_result, note)
            return kind.stale(record.last_result, note)
        probed_at = self._monotonic()
        begun = self._sweep_started
        deadline = (begun if begun is not None else asyncio.get_running_loop().time()) + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                result = await call()
        except TimeoutError:
            result = kind.error(f"timeout after {timeout_s:g} s", record.last_result)
        except Exception as exc:  # a back-end bug must not break the sweep
            log.warning("probe %s raised %s: %s", name, type(exc).__name__, exc)
            result = kind.error(f"probe error: {type(exc).__name__}: {exc}", record.last_result)
        record.probes += 1
        record.last_probed = probed_at
        record.last_result = result
        if kind.failed(result):
            record.failures += 1
            if record.failures >= self.backoff_after:
                record.skip_left = min(2 ** (record.failures - self.backoff_after), self.max_skip)
        else:
            record.failures = 0
            record.skip_left = 0
        return result

    async def _health(self, env: Environment, service: str, url: str) -> ServiceHealth:
        prober = self.backends.prober

        return await self._bounded(
            f"health:{env.value}:{service}",
            lambda: prober.probe(env, service, url),
            self.config.probe_timeout_s,
            _health_kind(env, service, url),
        )

    def _metrics_due(self, now: float) -> bool:
        """Whether this sweep fetches the metrics, or reuses the last answer."""
        if self._metrics_kept is None or self.metrics_interval_s <= self.interval_s:
            return True  # nothing to reuse (the first fetch, or the last one failed)
        record = self.records.get("metrics")
        if record is None or record.probes < 2:
            return True  # a rate needs two scrapes: the second one comes a sweep later
        # Half a sweep early: sweeps a second apart fetch every fifth one, not every sixth.
        return now - self._metrics_fetched_at >= self.metrics_interval_s - self.interval_s / 2

    async def _metrics(self) -> MetricsResult:
        """Both environments' metrics, fetched every :attr:`metrics_interval_s`.

        Between fetches the last answer is shown as it was: every value keeps its
        ``sampled_at``, and one past its allowed age is marked stale again here
        (never shown as current). A fetch that failed is not reused; the next sweep
        fetches again (with the usual backoff).
        """
        source = self.backends.metrics
        now = self._monotonic()
        kept = self._metrics_kept
        if kept is not None and not self._metrics_due(now):
            return self._rejudged(kept)
        timeout = (
            self.config.prometheus.timeout_s
            if self.config.prometheus.url
            else self.config.probe_timeout_s
        )

        before = self.metrics_fetches

        async def call() -> MetricsResult:
            result = dict(await source.fetch())
            self.metrics_fetches += 1
            return result

        result = await self._bounded("metrics", call, timeout, _metrics_kind(source.name))
        # Only the source's own answer, with data for each environment, is reused; a timeout,
        # an error, a backed-off sweep (earlier values marked stale) or an environment that
        # answered nothing is not, and the next sweep fetches again.
        answered = self.metrics_fetches > before
        if answered and not any(_no_metrics(m) for m in result.values()):
            self._metrics_kept, self._metrics_fetched_at = result, now
        else:
            self._metrics_kept = None
        return result

    def _rejudged(self, result: MetricsResult) -> MetricsResult:
        """The kept answer with every value past its age marked stale (the rest unchanged)."""
        max_age = getattr(self.backends.metrics, "max_age_s", None)
        if not isinstance(max_age, int | float):
            max_age = self.max_age_s
        now = utcnow()
        out: MetricsResult = {}
        for env, metrics in result.items():
            aged = {
                name: value.model_copy(update={"stale": True})
                for name in _METRIC_FIELDS
                if (value := getattr(metrics, name)).value is not None
                and not value.stale
                and value.sampled_at is not None
                and (now - value.sampled_at).total_seconds() > max_age
            }
            out[env] = metrics.model_copy(update=aged) if aged else metrics
        return out

    async def _redis(self, env: Environment) -> RedisStatus:
        spec = self.config.env(env).redis
        probe = self.backends.probe_redis
        if spec is None or probe is None:
            return RedisStatus(state=ProbeState.NOT_CONFIGURED, reason="no Redis configured")
        return await self._bounded(
            f"redis:{env.value}",
            lambda: probe(spec.url, spec.password, spec.username, spec.timeout_s),
            spec.timeout_s,
            _redis_kind(),
        )

    async def _replication(self, env: Environment) -> ReplicationStatus:
        spec = self.config.env(env).postgres
        probe = self.backends.probe_replication
        if spec is None or probe is None:
            return ReplicationStatus(
                state=ProbeState.NOT_CONFIGURED, reason="no PostgreSQL configured"
            )
        return await self._bounded(
            f"postgres:{env.value}",
            lambda: probe(
                spec.primary_dsn,
                list(spec.replica_dsns),
                spec.password,
                spec.expected_replicas,
                spec.max_lag_bytes,
                spec.max_lag_seconds,
                spec.timeout_s,
            ),
            # Primary and replicas are probed one after the other inside the back-end.
            spec.timeout_s * (1 + len(spec.replica_dsns)),
            _replication_kind(spec.expected_replicas),
        )

    async def _traffic(self) -> TrafficSplit:
        switch = self.backends.traffic
        timeout = getattr(self.config.traffic, "timeout_s", self.config.probe_timeout_s)
        return await self._bounded(
            "traffic", switch.read_split, timeout, _traffic_kind(switch.name)
        )

    def _compliance(
        self, env: Environment, services: tuple[ServiceHealth, ...], metrics: EnvironmentMetrics
    ) -> ComplianceResult:
        expected = list(self.config.env(env).services)
        try:
            from console.compliance import assess_compliance
        except ImportError:
            return ComplianceResult(
                checks=(
                    ComplianceCheck(
                        name="compliance assessment",
                        passed=None,
                        detail="console.compliance is not available",
                    ),
                )
            )
        try:
            result: ComplianceResult = assess_compliance(
                services,
                metrics,
                expected,
                gauge_target=self.config.thresholds.compliance_critical,
                # The runbook allows no hash-validation failure for a 100 % score.
                max_hash_failure_rate=0.0,
                expected_hash=self.config.constitutional_hash,
            )
        except Exception as exc:  # an assessment bug must not break the sweep
            log.warning("compliance assessment of %s failed: %s", env.value, exc)
            return ComplianceResult(
                checks=(
                    ComplianceCheck(
                        name="compliance assessment",
                        passed=None,
                        detail=f"assessment failed: {type(exc).__name__}: {exc}",
                    ),
                )
            )
        return result

    async def _rule_inputs(self) -> RuleInputs:
        provider = self._inputs
        if provider is None:
            return RuleInputs()
        if isinstance(provider, RuleInputs):
            return provider
        begun = self._sweep_started
        deadline = (
            begun if begun is not None else asyncio.get_running_loop().time()
        ) + self.config.probe_timeout_s
        try:
            # Bounded like a probe: a slow provider makes its rules unknown, not the sweep late.
            async with asyncio.timeout_at(deadline):
                value = provider()
                if inspect.isawaitable(value):
                    value = await value
        except Exception as exc:  # unknown inputs are unknown, not a crash
            log.warning("rule inputs provider failed: %s: %s", type(exc).__name__, exc)
            return RuleInputs()
        return value if isinstance(value, RuleInputs) else RuleInputs()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, callback: Callback, *, count: int | None = None) -> None:
        """Sweep every interval and hand each snapshot to ``callback``.

        The next sweep is armed only after the previous sweep and its callback
        finished, so a slow sweep or a slow consumer never piles up sweeps. An
        exception in the callback is logged; the loop goes on.

        Args:
            callback: Called with each snapshot (may be async).
            count: Stop after this many sweeps (None: until cancelled).
        """
        async for snapshot in self.snapshots(count=count):
            try:
                result = callback(snapshot)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("monitor callback failed on snapshot %d", snapshot.sequence)

    async def snapshots(self, *, count: int | None = None) -> AsyncIterator[Snapshot]:
        """Yield one snapshot per interval (the next sweep starts after the consumer is done).

        Args:
            count: Stop after this many (None: until cancelled or closed).
        """
        loop = asyncio.get_running_loop()
        made = 0
        while (count is None or made < count) and not self._closed:
            started = loop.time()
            try:
                snapshot = await self.sweep()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and (task is None or not task.cancelling()):
                    return  # close() stopped the sweep under us: the iteration just ends
                raise
            made += 1
            yield snapshot
            if count is not None and made >= count:
                return
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    async def close(self) -> None:
        """Release every back-end (HTTP client, metrics source, engine connections)."""
        if self._closed:
            return
        self._closed = True
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for closer in self.backends.closers:
            try:
                await closer()
            except Exception as exc:  # closing is best effort
                log.warning("closing a back-end failed: %s", exc)

    # -- reading the bookkeeping ----------------------------------------------------------

    def backing_off(self) -> Mapping[str, ProbeRecord]:
        """The probes currently being skipped, by name."""
        return {n: r for n, r in self.records.items() if r.skip_left > 0}
