"""Real engines for the test suite, started on loopback by the harness itself.

Session-scoped (shared, do not break them): ``fleet`` (the sandbox's eighteen services and two
ingresses, as a subprocess), ``haproxy`` (blue/green servers pointing at the fleet's
ingresses), ``prometheus`` (scraping the fleet's eighteen services, labelled by environment and
service), ``redis_server`` and ``pg_cluster`` (PostgreSQL primary plus a streaming replica).

Function-scoped factories for tests that stop, kill or reconfigure an engine:
``fresh_redis``, ``fresh_haproxy``, ``fresh_prometheus``, ``fresh_pg_cluster``; whatever they
make is stopped when the test ends.

A missing engine binary fails the test when ``CI`` is set and skips it otherwise; either way
the message names the binary and the apt package (see :func:`engine_or_report`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The suite runs from a checkout whether or not the package is installed.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from console.engines import (  # noqa: E402
    EngineMissing,
    HAProxy,
    PostgresCluster,
    Prometheus,
    RedisServer,
    die_with_parent,
)

CONSTITUTIONAL_HASH = "cdd01ef066bc6cf2"
FLEET_START_TIMEOUT = 30.0

T = TypeVar("T")


class _Engine(Protocol):
    def start(self) -> Any: ...

    def stop(self) -> None: ...


E = TypeVar("E", bound=_Engine)


def ci_is_set() -> bool:
    """Whether we run in CI, where a missing engine must fail instead of skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def engine_or_report(make: Callable[[], T]) -> T:
    """Run ``make``; on a missing engine binary fail (CI) or skip (elsewhere), naming it.

    Args:
        make: Builds (and usually starts) an engine.

    Returns:
        Whatever ``make`` returned.
    """
    try:
        return make()
    except EngineMissing as exc:
        if ci_is_set():
            pytest.fail(f"{exc} (CI is set: a missing engine is a failure)", pytrace=False)
        pytest.skip(str(exc))


# -- the sandbox fleet --------------------------------------------------------------------


@dataclass(frozen=True)
class FleetService:
    """One orchestrator of the fleet, as the fleet's state file lists it."""

    environment: str
    service: str
    base_url: str


@dataclass(frozen=True)
class Fleet:
    """A running sandbox fleet (``python -m console.sandbox.fleet``) and its state file.

    Attributes:
        control_url: The fleet's control endpoint (faults, split).
        ingress: Ingress base URL per environment (``blue``, ``green``).
        services: The eighteen services.
        state: The state file's whole JSON, for anything not modelled here.
        state_file: Where the fleet wrote it.
        log_path: The fleet's stdout/stderr.
    """

    control_url: str
    ingress: Mapping[str, str]
    services: tuple[FleetService, ...]
    state: Mapping[str, Any]
    state_file: Path
    log_path: Path

    def ingress_address(self, environment: str) -> tuple[str, int]:
        """``(host, port)`` of an environment's ingress, as HAProxy wants it."""
        parts = urlsplit(self.ingress[environment])
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"fleet ingress URL {self.ingress[environment]!r} has no host:port")
        return parts.hostname, parts.port

    def scrape_targets(self) -> list[tuple[str, dict[str, str]]]:
        """Prometheus targets: every service with its environment and service labels."""
        return [
            (svc.base_url, {"environment": svc.environment, "service": svc.service})
            for svc in self.services
        ]


def _read_fleet_state(path: Path) -> dict[str, Any] | None:
    """The state file's JSON once it is complete, else None (absent or half written)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not {"control_url", "ingress", "services"} <= state.keys():
        return None
    return state


def _stop_child(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _private_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the tests out of the operator's own state and config directories.

    The console keeps its audit file, theme choice and reports under the user's
    state directory (platformdirs); tests and the consoles they start get a
    throw-away one instead.
    """
    base = tmp_path_factory.mktemp("user-dirs")
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")}
    for key in saved:
        os.environ[key] = str(base / key.lower())
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The sandbox fleet (blue and green, nine services each) as a subprocess."""
    workdir = tmp_path_factory.mktemp("fleet")
    state_file = workdir / "state.json"
    log_path = workdir / "fleet.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [
        sys.executable,
        "-m",
        "console.sandbox.fleet",
        "--hash",
        CONSTITUTIONAL_HASH,
        "--state-file",
        str(state_file),
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            preexec_fn=die_with_parent(),
        )
    try:
        deadline = time.monotonic() + FLEET_START_TIMEOUT
        state = _read_fleet_state(state_file)
        while state is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited with status {proc.returncode}"
                    if proc.poll() is not None
                    else f"wrote no state file within {FLEET_START_TIMEOUT:g} s"
                )
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                pytest.fail(f"sandbox fleet {why}; its output:\n{tail}", pytrace=False)
            time.sleep(0.05)
            state = _read_fleet_state(state_file)
        yield Fleet(
            control_url=state["control_url"],
            ingress=dict(state["ingress"]),
            services=tuple(
                FleetService(s["environment"], s["service"], s["base_url"])
                for s in state["services"]
            ),
            state=state,
            state_file=state_file,
            log_path=log_path,
        )
    finally:
        _stop_child(proc)


# -- shared engines -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis server for the whole session (no password)."""
    server = engine_or_report(lambda: RedisServer(tmp_path_factory.mktemp("redis")))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def haproxy(tmp_path_factory: pytest.TempPathFactory, fleet: Fleet) -> Iterator[HAProxy]:
    """HAProxy with backend ``acgs``: blue (weight 256) and green (weight 0) = fleet ingresses.

    Shared: a test that changes weights must put them back, or use ``fresh_haproxy``.
    """
    proxy = engine_or_report(
        lambda: HAProxy(
            tmp_path_factory.mktemp("haproxy"),
            blue=fleet.ingress_address("blue"),
            green=fleet.ingress_address("green"),
        )
    )
    try:
        yield proxy.start()
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory, fleet: Fleet) -> Iterator[Prometheus]:
    """Prometheus scraping the fleet's eighteen services every second.

    Its first samples arrive 5-7 s after start: use ``prometheus.wait_for_sample(query)``.
    """
    server = engine_or_report(
        lambda: Prometheus(tmp_path_factory.mktemp("prometheus"), fleet.scrape_targets())
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """PostgreSQL primary plus one streaming replica for the whole session."""
    cluster = engine_or_report(lambda: PostgresCluster(tmp_path_factory.mktemp("pg")))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


# -- fresh engines for destructive tests ----------------------------------------------------


class _Made:
    """Engines made by one test, stopped in reverse order when it ends."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.engines: list[_Engine] = []

    def workdir(self, kind: str) -> Path:
        return self.tmp_path / f"{kind}{len(self.engines)}"

    def start(self, make: Callable[[], E]) -> E:
        engine = engine_or_report(make)
        # Tracked before start() so a half-started engine is still stopped at the end.
        self.engines.append(engine)
        engine.start()
        return engine

    def stop_all(self) -> None:
        for engine in reversed(self.engines):
            engine.stop()


@pytest.fixture
def _made(tmp_path: Path) -> Iterator[_Made]:
    made = _Made(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


@pytest.fixture
def fresh_redis(_made: _Made) -> Callable[..., RedisServer]:
    """Factory: ``fresh_redis(password=None, port=None)`` starts a Redis for this test only."""

    def make(password: str | None = None, port: int | None = None) -> RedisServer:
        return _made.start(lambda: RedisServer(_made.workdir("redis"), port, password))

    return make


@pytest.fixture
def fresh_haproxy(_made: _Made, fleet: Fleet) -> Callable[..., HAProxy]:
    """Factory: ``fresh_haproxy(blue=None, green=None, health_checks=True)`` for this test.

    Blue and green default to the fleet's ingresses.
    """

    def make(
        blue: tuple[str, int] | None = None,
        green: tuple[str, int] | None = None,
        health_checks: bool = True,
    ) -> HAProxy:
        return _made.start(
            lambda: HAProxy(
                _made.workdir("haproxy"),
                blue=blue or fleet.ingress_address("blue"),
                green=green or fleet.ingress_address("green"),
                health_checks=health_checks,
            )
        )

    return make


@pytest.fixture
def fresh_prometheus(_made: _Made, fleet: Fleet) -> Callable[..., Prometheus]:
    """Factory: ``fresh_prometheus(targets=None, rule_files=None)`` for this test.

    Targets default to the fleet's eighteen services.
    """

    def make(
        targets: Sequence[tuple[str, Mapping[str, str]]] | None = None,
        rule_files: Sequence[Path | str] | None = None,
    ) -> Prometheus:
        return _made.start(
            lambda: Prometheus(
                _made.workdir("prometheus"),
                fleet.scrape_targets() if targets is None else targets,
                rule_files=rule_files,
            )
        )

    return make


@pytest.fixture
def fresh_pg_cluster(_made: _Made) -> Callable[[], PostgresCluster]:
    """Factory: ``fresh_pg_cluster()`` starts a primary + replica for this test only."""

    def make() -> PostgresCluster:
        return _made.start(lambda: PostgresCluster(_made.workdir("pg")))

    return make


@pytest.fixture
def start_engine() -> Callable[[Callable[[], T]], T]:
    """The missing-binary policy as a fixture, for tests that build engines themselves."""
    return engine_or_report


@pytest.fixture(autouse=True)
def _record_notifications(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every notification an App shows (see ``pilot_support.notes_seen``).

    A notification leaves ``App._notifications`` when its timeout passes; on a slow machine
    that can happen before the test looks, so the tests read this record instead.
    """
    from textual.app import App

    original = App.notify

    def notify(self: App[Any], message: str, *args: Any, **kwargs: Any) -> None:
        self.__dict__.setdefault("_notes_seen", []).append(str(message))
        original(self, message, *args, **kwargs)

    monkeypatch.setattr(App, "notify", notify)
