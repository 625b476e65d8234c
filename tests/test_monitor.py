"""The monitor loop against the real sandbox fleet and real engines.

Faults are injected through the fleet's control endpoint and always cleared
again: the fleet is shared by the whole session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from backends.models import (
    AlertPhase,
    Environment,
    ProbeState,
    ServiceState,
    Snapshot,
)
from console.config import AppConfig
from console.engines import free_port
from console.monitor import Monitor, is_stale, window_seconds
from console.rules import (
    AuditVerification,
    RuleInputs,
    RuleMetric,
    alert_passes,
    build_rules,
)

pytestmark = pytest.mark.engines

HUNG = ("green", "unified_orchestrator")


def fleet_config(
    fleet: Any,
    *,
    timeout_s: float = 1.0,
    interval_s: float = 1.0,
    stale_after_s: float = 5.0,
    prometheus_url: str | None = None,
    redis_url: str | None = None,
    pg: Any = None,
    metrics_interval_s: float | None = None,
    thresholds: dict[str, Any] | None = None,
) -> AppConfig:
    """A console config for the session fleet (and whichever engines are given)."""
    environments: dict[str, Any] = {}
    for env in ("blue", "green"):
        spec: dict[str, Any] = {
            "services": {
                s.service: {"base_url": s.base_url} for s in fleet.services if s.environment == env
            }
        }
        if redis_url:
            spec["redis"] = {"url": redis_url, "timeout_s": timeout_s}
        if pg is not None:
            spec["postgres"] = {
                "primary_dsn": pg.primary_dsn,
                "replica_dsns": [pg.replica_dsn],
                "expected_replicas": 1,
                "timeout_s": 2.0,
            }
        environments[env] = spec
    prometheus: dict[str, Any] = {"url": prometheus_url}
    if metrics_interval_s is not None:
        prometheus["fetch_interval_s"] = metrics_interval_s
    return AppConfig(
        environments=environments,
        traffic={"kind": "sandbox", "control_url": fleet.control_url},
        prometheus=prometheus,
        probe_timeout_s=timeout_s,
        refresh_interval_s=interval_s,
        thresholds={"stale_after_s": stale_after_s, **(thresholds or {})},
    )


def control(fleet: Any, path: str, body: dict[str, Any]) -> None:
    response = httpx.post(f"{fleet.control_url}{path}", json=body, timeout=5)
    assert response.status_code == 200, response.text


@contextlib.contextmanager
def fault(fleet: Any, environment: str, service: str, kind: str) -> Iterator[None]:
    control(fleet, "/control/fault", {"environment": environment, "service": service, "kind": kind})
    try:
        yield
    finally:
        control(fleet, "/control/clear", {"environment": environment, "service": service})


@contextlib.asynccontextmanager
async def monitoring(config: AppConfig, **kwargs: Any) -> AsyncIterator[Monitor]:
    monitor = Monitor(config, **kwargs)
    try:
        yield monitor
    finally:
        await monitor.close()


def service(snapshot: Snapshot, environment: str, name: str) -> Any:
    return next(s for s in snapshot.env(environment).services if s.service == name)


def alert(snapshot: Snapshot, rule_id: str) -> Any:
    return next(a for a in snapshot.alerts if a.rule_id == rule_id)


async def test_full_sweep_sees_both_environments(
    fleet: Any, redis_server: Any, pg_cluster: Any
) -> None:
    config = fleet_config(fleet, redis_url=redis_server.url, pg=pg_cluster)
    async with monitoring(config) as monitor:
        snapshot = await monitor.sweep()
    assert snapshot.sequence == 1
    assert snapshot.duration_ms > 0
    for env in Environment:
        side = snapshot.env(env)
        assert side.environment is env
        assert len(side.services) == 9
        assert {s.service for s in side.services} == set(config.env(env).services)
        bad = [
            (s.service, s.state, s.reason) for s in side.services if s.state is not ServiceState.UP
        ]
        assert bad == []
        assert all(s.hash_ok for s in side.services)
        assert side.redis.state is ProbeState.OK, side.redis.reason
        assert side.replication.state is ProbeState.OK, side.replication.reason
        assert side.replication.synchronized is True
        assert side.compliance.checks, "compliance assessed per environment"
        assert side.taken_at == snapshot.taken_at
    assert snapshot.traffic.green_percentage is not None, snapshot.traffic.error
    assert len(snapshot.alerts) == 28
    assert alert_passes(alert(snapshot, "constitutional.hash_mismatch/blue"))
    assert alert_passes(alert(snapshot, "performance.service_unavailable/green"))
    # Never observed: unknown, not passing.
    assert alert(snapshot, "security.score").unknown
    # The snapshot is immutable.
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        snapshot.sequence = 5  # type: ignore[misc]


async def test_metrics_through_prometheus(fleet: Any, prometheus: Any) -> None:
    prometheus.wait_for_sample('acgs_requests_total{environment="blue"}')
    # A rate needs two scrapes in the window.
    prometheus.wait_for_sample('rate(acgs_requests_total{environment="blue"}[1m]) > 0')
    config = fleet_config(fleet, prometheus_url=prometheus.url)
    async with monitoring(config) as monitor:
        snapshot = await monitor.sweep()
    blue = snapshot.blue.metrics
    assert blue.requests_per_second.known, blue.requests_per_second
    assert blue.requests_per_second.source == "prometheus"
    assert blue.cache_hit_rate.known and 0.5 < (blue.cache_hit_rate.value or 0) <= 1.0
    assert blue.compliance_score.value == 100.0


async def test_a_hung_service_costs_only_its_timeout(fleet: Any) -> None:
    timeout = 0.5
    config = fleet_config(fleet, timeout_s=timeout)
    async with monitoring(config) as monitor:
        await monitor.sweep()  # warm the keep-alive connections
        with fault(fleet, *HUNG, "hang"):
            snapshot = await monitor.sweep()
    hung = service(snapshot, *HUNG)
    assert hung.state is ServiceState.DOWN
    assert hung.reason.startswith("timeout"), hung.reason
    others = [
        s
        for env in Environment
        for s in snapshot.env(env).services
        if (s.environment.value, s.service) != HUNG
    ]
    assert len(others) == 17
    assert all(s.state is ServiceState.UP for s in others), [
        (s.service, s.reason) for s in others if s.state is not ServiceState.UP
    ]
    # Generous bound (loaded CI machine): far below "one timeout per service".
    assert snapshot.duration_ms < (timeout + 2.0) * 1000
    unavailable = alert(snapshot, "performance.service_unavailable/green")
    assert unavailable.phase is AlertPhase.FIRING
    assert "unified_orchestrator" in unavailable.detail


async def test_repeated_failure_backs_off_then_recovers(fleet: Any) -> None:
    config = fleet_config(fleet, timeout_s=0.3, interval_s=1.0, stale_after_s=5.0)
    name = f"health:{HUNG[0]}:{HUNG[1]}"
    async with monitoring(config, backoff_after=2) as monitor:
        with fault(fleet, *HUNG, "hang"):
            await monitor.sweep()
            await monitor.sweep()
            record = monitor.records[name]
            assert (record.failures, record.probes, record.skip_left) == (2, 2, 1)
            skipped = await monitor.sweep()
            assert monitor.records[name].probes == 2, "the backed-off probe was not made"
            hung = service(skipped, *HUNG)
            assert hung.state is ServiceState.DOWN and not hung.stale
            assert "backing off" in hung.reason
            # Other probes were made as usual.
            assert monitor.records["health:blue:unified_orchestrator"].probes == 3
            third = await monitor.sweep()
            assert monitor.records[name].probes == 3
            assert monitor.records[name].skip_left == 2, "the skip grows"
            assert service(third, *HUNG).state is ServiceState.DOWN
        # Fault cleared: once the skip is over the service is probed and up again.
        for _ in range(4):
            snapshot = await monitor.sweep()
            if service(snapshot, *HUNG).state is ServiceState.UP:
                break
        assert service(snapshot, *HUNG).state is ServiceState.UP
        assert monitor.records[name].failures == 0


async def test_data_past_its_age_is_stale_never_the_last_value(fleet: Any) -> None:
    # The probe's own timeout (0.3 s) is longer than the data may age (0.25 s), so a
    # skipped probe's last result is always past its age when the next sweep shows it.
    config = fleet_config(fleet, timeout_s=0.3, interval_s=0.2, stale_after_s=0.25)
    async with monitoring(config, backoff_after=1) as monitor:
        monitor.max_skip = 3
        with fault(fleet, *HUNG, "hang"):
            first = await monitor.sweep()
            assert service(first, *HUNG).state is ServiceState.DOWN
            second = await monitor.sweep()
    hung = service(second, *HUNG)
    assert hung.stale
    assert hung.state is ServiceState.UNKNOWN
    assert hung.reason.startswith("stale")
    assert hung.checked_at == service(first, *HUNG).checked_at
    assert not alert_passes(alert(second, "constitutional.hash_mismatch/green"))


async def test_concurrent_sweeps_share_one_sweep(fleet: Any) -> None:
    config = fleet_config(fleet, timeout_s=0.3)
    async with monitoring(config) as monitor:
        with fault(fleet, *HUNG, "hang"):
            a, b, c = await asyncio.gather(monitor.sweep(), monitor.sweep(), monitor.sweep())
        assert a is b is c
        assert monitor.sweeps_run == 1
        d = await monitor.sweep()
        assert d.sequence == 2 and monitor.sweeps_run == 2


async def test_run_arms_the_next_sweep_after_the_previous_one(fleet: Any) -> None:
    # Sweeps (0.3 s with a hung service) are longer than the interval (0.2 s).
    config = fleet_config(fleet, timeout_s=0.3, interval_s=0.2)
    seen: list[Snapshot] = []
    in_flight: list[bool] = []

    async with monitoring(config, backoff_after=100) as monitor:

        async def callback(snapshot: Snapshot) -> None:
            task = monitor._inflight
            in_flight.append(task is not None and not task.done())
            seen.append(snapshot)

        with fault(fleet, *HUNG, "hang"):
            await monitor.run(callback, count=3)
    assert [s.sequence for s in seen] == [1, 2, 3]
    assert in_flight == [False, False, False]
    for before, after in itertools.pairwise(seen):
        ended = before.taken_at.timestamp() + before.duration_ms / 1000
        assert after.taken_at.timestamp() >= ended, "a sweep began before the previous ended"


async def test_a_callback_error_does_not_stop_the_loop(fleet: Any) -> None:
    config = fleet_config(fleet, interval_s=0.2)
    calls: list[int] = []

    def callback(snapshot: Snapshot) -> None:
        calls.append(snapshot.sequence)
        raise RuntimeError("widget bug")

    async with monitoring(config) as monitor:
        await monitor.run(callback, count=2)
    assert calls == [1, 2]


async def test_nothing_reachable_is_states_not_exceptions() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    services = {n: {"base_url": dead} for n in ("performance_suite", "unified_orchestrator")}
    config = AppConfig(
        environments={
            "blue": {"services": services, "redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}},
            "green": {"services": services},
        },
        traffic={"kind": "sandbox", "control_url": dead},
        prometheus={"url": dead},
        probe_timeout_s=0.5,
    )
    async with monitoring(config) as monitor:
        snapshot = await monitor.sweep()
    for side in (snapshot.blue, snapshot.green):
        assert [s.state for s in side.services] == [ServiceState.DOWN] * 2
        assert all("refused" in s.reason for s in side.services)
        assert not any(m.known for m in side.metrics.all())
    assert snapshot.blue.redis.state is ProbeState.REFUSED
    assert snapshot.green.redis.state is ProbeState.NOT_CONFIGURED
    assert snapshot.blue.replication.state is ProbeState.NOT_CONFIGURED
    assert snapshot.traffic.green_percentage is None and snapshot.traffic.error
    assert not any(
        alert_passes(a)
        for a in snapshot.alerts
        if a.rule_id.startswith(("constitutional.hash_mismatch", "performance.p99"))
    )


async def test_wrong_hash_fires_the_hash_alert(fleet: Any) -> None:
    config = fleet_config(fleet)
    async with monitoring(config) as monitor:
        with fault(fleet, "blue", "cache_optimizer", "wrong_hash"):
            snapshot = await monitor.sweep()
    hit = alert(snapshot, "constitutional.hash_mismatch/blue")
    assert hit.phase is AlertPhase.FIRING
    assert "cache_optimizer" in hit.detail
    assert alert_passes(alert(snapshot, "constitutional.hash_mismatch/green"))
    assert alert(snapshot, "constitutional.compliance_violation/blue").phase is AlertPhase.FIRING


async def test_redis_auth_error_and_postgres_down_are_named_states_in_the_sweep(
    fleet: Any, fresh_redis: Any, fresh_pg_cluster: Any
) -> None:
    """Real engines: a Redis that wants a password the config lacks; a primary stopped."""
    guarded = fresh_redis(password="correct-horse-7")
    cluster = fresh_pg_cluster()
    config = fleet_config(fleet, redis_url=guarded.url, pg=cluster)
    async with monitoring(config) as monitor:
        await asyncio.to_thread(cluster.stop_primary)
        snapshot = await monitor.sweep()
    for side in (snapshot.blue, snapshot.green):
        assert side.redis.state is ProbeState.AUTH_FAILED, side.redis
        assert not side.redis.operational and side.redis.reason
        assert "correct-horse-7" not in side.redis.model_dump_json()
        assert side.replication.state is ProbeState.REFUSED, side.replication
        assert side.replication.synchronized is None  # unknown, never "synchronized"
        assert "refused" in side.replication.reason
        # The services themselves are fine: one bad engine spoils nothing else.
        assert side.services_up == 9


@pytest.mark.parametrize(
    ("kind", "state", "verdicts"),
    [
        ("garbage", ServiceState.BAD_RESPONSE, ("unknown", "ok")),
        ("missing_hash", ServiceState.UP, ("missing", "missing")),
    ],
)
async def test_garbage_and_missing_hash_are_named_in_the_snapshot_and_never_pass(
    fleet: Any, kind: str, state: ServiceState, verdicts: tuple[str, str]
) -> None:
    config = fleet_config(fleet)
    async with monitoring(config) as monitor:
        with fault(fleet, "green", "cache_optimizer", kind):
            snapshot = await monitor.sweep()
    hit = service(snapshot, "green", "cache_optimizer")
    assert hit.state is state and hit.reason
    assert (hit.body_hash_verdict.value, hit.header_hash_verdict.value) == verdicts
    assert not hit.hash_ok
    failed = {c.name: c.detail for c in snapshot.green.compliance.failed}
    assert "cache_optimizer" in failed.get("body hash", ""), failed
    assert not alert_passes(alert(snapshot, "constitutional.hash_mismatch/green"))
    assert alert_passes(alert(snapshot, "constitutional.hash_mismatch/blue"))


async def test_metrics_when_prometheus_hangs_or_goes_away(
    fleet: Any, fresh_prometheus: Any
) -> None:
    prom = fresh_prometheus()
    prom.wait_for_sample('rate(acgs_requests_total{environment="blue"}[1m]) > 0')
    # Every sweep queries Prometheus here (the cadence is tested below).
    config = fleet_config(fleet, prometheus_url=prom.url, metrics_interval_s=1.0)
    config = config.model_copy(
        update={"prometheus": config.prometheus.model_copy(update={"timeout_s": 1.0})}
    )
    async with monitoring(config) as monitor:
        before = await monitor.sweep()
        rps = before.blue.metrics.requests_per_second
        assert rps.known and not rps.stale

        # A hung Prometheus (stopped, its socket still accepting): the sweep ends on time and
        # shows the earlier values marked stale, never as current.
        os.kill(prom.pid, signal.SIGSTOP)
        try:
            hung = await monitor.sweep()
        finally:
            os.kill(prom.pid, signal.SIGCONT)
        assert hung.duration_ms < 5000
        stale = hung.blue.metrics.requests_per_second
        assert stale.stale and not stale.known
        assert stale.value == rps.value and "timeout" in (stale.error or "")
        p99 = alert(hung, "performance.p99_latency.critical/blue")
        assert p99.unknown and not alert_passes(p99)

        fresh = await monitor.sweep()
        assert fresh.blue.metrics.requests_per_second.known

        prom.stop()
        after = await monitor.sweep()
    for side in (after.blue, after.green):
        for value in side.metrics.all():
            assert not value.known, value
            assert value.value is None or value.stale, value


async def test_close_during_run_ends_the_loop(fleet: Any) -> None:
    config = fleet_config(fleet, timeout_s=2.0)
    seen: list[int] = []
    async with monitoring(config) as monitor:
        with fault(fleet, *HUNG, "hang"):
            runner = asyncio.create_task(monitor.run(lambda s: seen.append(s.sequence)))
            await asyncio.sleep(0.3)  # the first sweep is waiting on the hung service
            await monitor.close()
            await asyncio.wait_for(runner, timeout=5)
    assert seen == []
    with pytest.raises(RuntimeError, match="closed"):
        await monitor.sweep()


async def test_rule_timers_follow_the_injected_clock_across_sweeps(fleet: Any) -> None:
    from datetime import UTC, datetime, timedelta

    now = [datetime(2025, 6, 1, 9, 0, tzinfo=UTC)]
    rules = [
        r.model_copy(update={"for_seconds": 120.0})
        for r in build_rules(fleet_config(fleet).thresholds)
        if r.metric is RuleMetric.ORCHESTRATORS_UNAVAILABLE
    ]
    config = fleet_config(fleet, timeout_s=0.3)
    rid = "performance.service_unavailable/green"
    async with monitoring(config, rules=rules, clock=lambda: now[0]) as monitor:
        with fault(fleet, *HUNG, "hang"):
            phases = []
            for step in (0, 60, 119, 120, 300):
                now[0] = datetime(2025, 6, 1, 9, 0, tzinfo=UTC) + timedelta(seconds=step)
                snapshot = await monitor.sweep()
                assert snapshot.taken_at == now[0]
                phases.append(alert(snapshot, rid).phase)
            # Backing off (after three timeouts) keeps the down verdict: no flapping.
            assert monitor.records[f"health:{HUNG[0]}:{HUNG[1]}"].failures >= 3
        assert phases == [AlertPhase.PENDING] * 3 + [AlertPhase.FIRING] * 2
        assert alert(snapshot, rid).active_since == datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
        assert alert(snapshot, "performance.service_unavailable/blue").phase is (
            AlertPhase.INACTIVE
        )
        for _ in range(6):
            now[0] += timedelta(seconds=1)
            snapshot = await monitor.sweep()
            if alert(snapshot, rid).phase is AlertPhase.INACTIVE:
                break
        assert alert_passes(alert(snapshot, rid))


async def test_rule_inputs_provider_is_called_and_bounded(fleet: Any) -> None:
    config = fleet_config(fleet, timeout_s=0.3)
    calls: list[int] = []

    async def corrupt() -> RuleInputs:
        calls.append(1)
        return RuleInputs(audit=AuditVerification(ok=False, detail="record 12 breaks the chain"))

    async with monitoring(config, inputs=corrupt) as monitor:
        snapshot = await monitor.sweep()
    audit = alert(snapshot, "constitutional.audit_trail_corruption")
    assert calls == [1]
    assert audit.phase is AlertPhase.FIRING and "record 12" in audit.detail

    async def hangs() -> RuleInputs:
        await asyncio.sleep(30)
        return RuleInputs()

    def broken() -> RuleInputs:
        raise RuntimeError("scanner offline")

    for provider in (hangs, broken):
        async with monitoring(config, inputs=provider) as monitor:
            snapshot = await monitor.sweep()
        assert snapshot.duration_ms < 5000, "a hung provider must not hold the sweep"
        audit = alert(snapshot, "constitutional.audit_trail_corruption")
        assert audit.unknown and not alert_passes(audit)


def test_stale_snapshot_helper_and_window() -> None:
    from datetime import timedelta

    from backends.models import utcnow

    assert window_seconds("1m") == 60 and window_seconds("1m30s") == 90
    assert window_seconds("bogus") == 60

    class Fake:
        taken_at = utcnow() - timedelta(seconds=10)

    assert is_stale(Fake(), 5.0)  # type: ignore[arg-type]
    assert not is_stale(Fake(), 60.0)  # type: ignore[arg-type]


# --- the metrics cadence -----------------------------------------------------------------------


class Ticks:
    """A monotonic clock the test moves by hand (the metrics cadence reads it)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_metrics_are_fetched_on_their_own_cadence_health_every_sweep(fleet: Any) -> None:
    config = fleet_config(fleet, interval_s=1.0, metrics_interval_s=5.0)
    ticks = Ticks()
    async with monitoring(config, monotonic=ticks) as monitor:
        first = await monitor.sweep()
        await asyncio.sleep(0.3)  # real time for the scrape's rates
        ticks.t += 1
        second = await monitor.sweep()
        # A rate needs two scrapes: the first two sweeps both fetch.
        assert monitor.metrics_fetches == 2
        rps = second.blue.metrics.requests_per_second
        assert rps.known and rps.sampled_at is not None
        assert rps.sampled_at > first.blue.metrics.cache_hit_rate.sampled_at  # type: ignore[operator]
        reused = []
        for _ in range(3):
            ticks.t += 1
            reused.append(await monitor.sweep())
        assert monitor.metrics_fetches == 2, "within the interval the last answer is reused"
        for snapshot in reused:
            for env in Environment:
                for before, now in zip(
                    second.env(env).metrics.all(), snapshot.env(env).metrics.all(), strict=True
                ):
                    # As it was: same value, same sample time, not stale (it is 3 s old at most).
                    assert (now.value, now.sampled_at, now.stale) == (
                        before.value,
                        before.sampled_at,
                        before.stale,
                    )
        # Health, hashes and the split were probed every sweep all the same.
        assert monitor.records["health:blue:unified_orchestrator"].probes == 5
        assert monitor.records["traffic"].probes == 5
        assert len({s.taken_at for s in (first, second, *reused)}) == 5

        ticks.t += 1.5  # 5.5 s after the last fetch: due (half a sweep early at most)
        fetched = await monitor.sweep()
        assert monitor.metrics_fetches == 3
        newer = fetched.blue.metrics.requests_per_second
        assert newer.known and newer.sampled_at > rps.sampled_at  # type: ignore[operator]


async def test_a_reused_value_past_its_age_is_stale_never_current(fleet: Any) -> None:
    # The direct scrape's values may be twice the fetch interval old (0.6 s here).
    config = fleet_config(fleet, interval_s=0.2, stale_after_s=0.25, metrics_interval_s=0.3)
    ticks = Ticks()  # never moves: after the first two fetches nothing is due
    async with monitoring(config, monotonic=ticks) as monitor:
        await monitor.sweep()
        await asyncio.sleep(0.2)
        fresh = await monitor.sweep()
        cache = fresh.blue.metrics.cache_hit_rate
        assert cache.known and not cache.stale
        assert monitor.metrics_fetches == 2
        await asyncio.sleep(0.8)
        aged = await monitor.sweep()
    assert monitor.metrics_fetches == 2
    old = aged.blue.metrics.cache_hit_rate
    assert old.stale and not old.known
    assert old.value == cache.value and old.sampled_at == cache.sampled_at
    for env in Environment:
        assert not any(v.known for v in aged.env(env).metrics.all())
    rule = alert(aged, "performance.cache_hit_rate.critical/blue")
    assert rule.unknown and not alert_passes(rule)


async def test_a_failed_fetch_is_not_reused_the_next_sweep_fetches_again(fleet: Any) -> None:
    # The scrape times out (every service hung): unknown, and fetched again at once.
    config = fleet_config(fleet, timeout_s=0.3, metrics_interval_s=5.0)
    ticks = Ticks()
    async with monitoring(config, monotonic=ticks, backoff_after=10) as monitor:
        await monitor.sweep()
        ticks.t += 1
        await monitor.sweep()
        assert monitor.metrics_fetches == 2
        services = [s.service for s in fleet.services if s.environment == "blue"]
        with contextlib.ExitStack() as stack:
            for name in services:
                stack.enter_context(fault(fleet, "blue", name, "hang"))
            ticks.t += 5
            hung = await monitor.sweep()
            assert monitor.records["metrics"].probes == 3
            blue = hung.blue.metrics.cache_hit_rate
            # The earlier value, marked stale with the reason: never shown as current.
            assert not blue.known and blue.stale and "timeout" in (blue.error or ""), blue
        ticks.t += 1  # well inside the interval, but the last fetch failed for blue ...
        after = await monitor.sweep()
    assert monitor.records["metrics"].probes == 4, "... so this sweep fetched again"
    assert after.blue.metrics.cache_hit_rate.known


async def test_rule_timers_run_on_across_sweeps_that_reuse_the_metrics(fleet: Any) -> None:
    from datetime import UTC, datetime, timedelta

    start = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
    now = [start]
    # Cache hit below 99.5 % (the fleet's is about 90 %) for 12 s: the condition holds.
    thresholds = {
        "cache_hit_critical": 0.995,
        "cache_hit_warning": 0.999,
        "cache_hit_critical_for_s": 12.0,
    }
    config = fleet_config(fleet, metrics_interval_s=5.0, thresholds=thresholds)
    ticks = Ticks()
    rid = "performance.cache_hit_rate.critical/blue"
    phases = []
    async with monitoring(config, clock=lambda: now[0], monotonic=ticks) as monitor:
        for step in range(15):
            now[0] = start + timedelta(seconds=step)
            ticks.t = 1000.0 + step
            snapshot = await monitor.sweep()
            state = alert(snapshot, rid)
            assert not state.unknown, (step, state.detail)
            assert state.active_since == start, "the timer never restarted"
            phases.append(state.phase)
        # Fetched at 0 and 1 (two scrapes for a rate), then every five seconds: 5-6, 10-11.
        assert 4 <= monitor.metrics_fetches <= 5
    assert phases == [AlertPhase.PENDING] * 12 + [AlertPhase.FIRING] * 3


def test_the_fetch_interval_is_checked_against_the_ages_it_must_fit() -> None:
    from console.monitor import scrape_max_age_s

    fleetless = {
        env: {"services": {"x": {"base_url": "http://127.0.0.1:1"}}} for env in ("blue", "green")
    }
    base: dict[str, Any] = {
        "environments": fleetless,
        "traffic": {"kind": "sandbox", "control_url": "http://127.0.0.1:1"},
    }
    # The direct scrape's values may be twice the fetch interval old, or stale_after_s.
    assert scrape_max_age_s(AppConfig(**base)) == 10.0
    assert scrape_max_age_s(AppConfig(**base, prometheus={"fetch_interval_s": 1.0})) == 5.0
    # Prometheus: a fetch interval past the allowed sample age would make every value stale.
    with pytest.raises(ValueError, match="fetch_interval_s"):
        AppConfig(
            **base,
            prometheus={"url": "http://127.0.0.1:9090", "fetch_interval_s": 30.0},
        )
    assert AppConfig(**base, prometheus={"url": "http://127.0.0.1:9090"}).prometheus.url
