"""The sandbox estate: the fleet plus whatever real engines are at hand, and its config.

This module owns ``acgs-console sandbox up``'s work: it starts the fleet
(``python -m console.sandbox.fleet``) as a child process, then, with
``engines="auto"``, HAProxy in front of the two ingresses (and points the
traffic generator at it), Prometheus scraping the eighteen services, a Redis per
environment plus one for operator coordination, and a PostgreSQL primary with a
streaming replica, each through :mod:`console.engines`. An engine whose binary
is missing (or that fails to start) is replaced by the embedded default: the
in-process router, direct scrape, SQLite, a lock file, "not configured".

Then it writes a console configuration (TOML, the schema of
:class:`console.config.AppConfig`) pointing at what it started, with a comment
saying which engines are real, and validates it with the console's own loader.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import tomlkit

from console.sandbox.faults import ENVIRONMENTS, SERVICES

#: First line of every config the sandbox writes; only such files are overwritten.
CONFIG_MARKER = "# Written by `acgs-console sandbox up`"

FLEET_START_TIMEOUT_S = 30.0
PROMETHEUS_SCRAPE_INTERVAL = "1s"

EnginesMode = Literal["auto", "none"]
ENGINE_NAMES: tuple[str, ...] = ("haproxy", "prometheus", "redis", "postgresql")


class SandboxError(RuntimeError):
    """The sandbox could not be started; the message says what and why."""


@dataclass(frozen=True)
class FleetInfo:
    """Where the fleet listens (the fleet's state file, parsed)."""

    control_url: str
    ingress: dict[str, str]
    services: list[dict[str, str]]

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FleetInfo:
        """Parse the fleet's state document.

        Args:
            state: The JSON the fleet wrote.

        Returns:
            The parsed info.
        """
        return cls(str(state["control_url"]), dict(state["ingress"]), list(state["services"]))

    def base_url(self, environment: str, service: str) -> str:
        """Base URL of one service.

        Args:
            environment: ``blue`` or ``green``.
            service: Orchestrator name.

        Returns:
            Its base URL.
        """
        for entry in self.services:
            if entry["environment"] == environment and entry["service"] == service:
                return entry["base_url"]
        raise KeyError(f"{environment}/{service}")


@dataclass
class EngineEndpoints:
    """What the real engines that did start offer the console (``None``: not started)."""

    haproxy_admin: str | None = None
    haproxy_frontend: str | None = None
    prometheus_url: str | None = None
    redis_urls: dict[str, str] = field(default_factory=dict)
    coordination_redis_url: str | None = None
    postgres_primary_dsn: str | None = None
    postgres_replica_dsns: list[str] = field(default_factory=list)
    fallbacks: dict[str, str] = field(default_factory=dict)

    @property
    def real(self) -> list[str]:
        """Names of the engines running for real."""
        names = []
        if self.haproxy_admin:
            names.append("haproxy")
        if self.prometheus_url:
            names.append("prometheus")
        if self.redis_urls:
            names.append("redis")
        if self.postgres_primary_dsn:
            names.append("postgresql")
        return names


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not {"control_url", "ingress", "services"} <= state.keys():
        return None
    return state


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no output)"


def start_fleet_process(
    workdir: Path, constitutional_hash: str, rate: float
) -> tuple[subprocess.Popen[bytes], FleetInfo]:
    """Start ``python -m console.sandbox.fleet`` and wait for its state file.

    Args:
        workdir: Where the state file and the fleet's log go.
        constitutional_hash: The hash the fleet's services carry.
        rate: Traffic generator rate, requests/s.

    Returns:
        The child process and where the fleet listens.

    Raises:
        SandboxError: The fleet exited or wrote no state in time (with its output).
    """
    state_file = workdir / "fleet.json"
    log_path = workdir / "fleet.log"
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()
    argv = [
        sys.executable,
        "-m",
        "console.sandbox.fleet",
        "--hash",
        constitutional_hash,
        "--state-file",
        str(state_file),
        "--rate",
        f"{rate:g}",
    ]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + FLEET_START_TIMEOUT_S
    while (state := _read_state(state_file)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            why = (
                f"exited with status {proc.returncode}"
                if proc.poll() is not None
                else f"wrote no state file within {FLEET_START_TIMEOUT_S:g} s"
            )
            stop_process(proc)
            raise SandboxError(f"the sandbox fleet {why}; its output:\n{_tail(log_path)}")
        time.sleep(0.05)
    return proc, FleetInfo.from_state(state)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped.

    Args:
        proc: The child.
        timeout: Seconds to wait after SIGTERM.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise SandboxError(f"fleet URL {url!r} has no host:port")
    return parts.hostname, parts.port


class SandboxEstate:
    """The fleet and the engines of one ``sandbox up``; stop() tears all of it down."""

    def __init__(
        self,
        workdir: Path,
        engines: EnginesMode = "auto",
        rate: float = 150.0,
        constitutional_hash: str = "cdd01ef066bc6cf2",
        log: Any = None,
    ) -> None:
        """Prepare the estate (nothing runs until :meth:`start`).

        Args:
            workdir: Directory for every engine's files, the fleet's state and logs.
            engines: ``auto`` uses real engines where present; ``none`` only embedded defaults.
            rate: Traffic generator rate, requests/s.
            constitutional_hash: The hash the services carry.
            log: Callable taking a line of progress text (default: print to stderr).
        """
        self.workdir = workdir
        self.engines_mode = engines
        self.rate = rate
        self.constitutional_hash = constitutional_hash
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.fleet_proc: subprocess.Popen[bytes] | None = None
        self.fleet: FleetInfo | None = None
        self.endpoints = EngineEndpoints()
        self._engines: list[Any] = []

    def start(self) -> None:
        """Start the fleet, then the engines (falling back per engine), then route traffic.

        Raises:
            SandboxError: The fleet itself did not start.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.fleet_proc, self.fleet = start_fleet_process(
            self.workdir, self.constitutional_hash, self.rate
        )
        self._log(f"fleet: 18 services, control {self.fleet.control_url}")
        if self.engines_mode == "none":
            for name in ENGINE_NAMES:
                self.endpoints.fallbacks[name] = "--engines none"
            return
        try:
            self._start_engines()
        except BaseException:
            self.stop()
            raise

    def _try(self, name: str, start: Any) -> Any:
        from console.engines import EngineMissing, EngineStartError

        try:
            engine = start()
        except EngineMissing as exc:
            self.endpoints.fallbacks[name] = (
                f"binary missing ({exc.binary}; apt package {exc.package})"
            )
            self._log(f"{name}: not installed, using the embedded default")
            return None
        except (EngineStartError, OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.endpoints.fallbacks[name] = f"failed to start: {first}"
            self._log(f"{name}: failed to start ({first}); using the embedded default")
            return None
        return engine

    def _start_engines(self) -> None:
        from console.engines import HAProxy, PostgresCluster, Prometheus, RedisServer

        fleet = self.fleet
        assert fleet is not None
        ep = self.endpoints

        def haproxy() -> HAProxy:
            proxy = HAProxy(
                self.workdir / "haproxy",
                blue=_host_port(fleet.ingress["blue"]),
                green=_host_port(fleet.ingress["green"]),
            )
            self._engines.append(proxy)
            return proxy.start()

        proxy = self._try("haproxy", haproxy)
        if proxy is not None:
            ep.haproxy_admin = str(proxy.admin_socket)
            ep.haproxy_frontend = proxy.frontend_url
            self._log(f"haproxy: frontend {proxy.frontend_url}, admin {proxy.admin_socket}")

        def prometheus() -> Prometheus:
            server = Prometheus(
                self.workdir / "prometheus",
                [
                    (s["base_url"], {"environment": s["environment"], "service": s["service"]})
                    for s in fleet.services
                ],
                scrape_interval=PROMETHEUS_SCRAPE_INTERVAL,
            )
            self._engines.append(server)
            return server.start()

        prom = self._try("prometheus", prometheus)
        if prom is not None:
            ep.prometheus_url = prom.url
            self._log(f"prometheus: {prom.url}")

        redis_urls: dict[str, str] = {}
        for role in (*ENVIRONMENTS, "coordination"):

            def redis(role: str = role) -> RedisServer:
                server = RedisServer(self.workdir / f"redis-{role}")
                self._engines.append(server)
                return server.start()

            server = self._try("redis", redis)
            if server is None:
                break
            redis_urls[role] = server.url
        if len(redis_urls) == len(ENVIRONMENTS) + 1:
            ep.coordination_redis_url = redis_urls.pop("coordination")
            ep.redis_urls = redis_urls
            self._log(f"redis: {', '.join(f'{k} {v}' for k, v in redis_urls.items())}")

        def postgres() -> PostgresCluster:
            cluster = PostgresCluster(self.workdir / "postgres")
            self._engines.append(cluster)
            return cluster.start()

        cluster = self._try("postgresql", postgres)
        if cluster is not None:
            ep.postgres_primary_dsn = cluster.primary_dsn
            ep.postgres_replica_dsns = [cluster.replica_dsn]
            self._log(f"postgresql: primary {cluster.primary_dsn}; replica {cluster.replica_dsn}")

        if ep.haproxy_frontend is not None:
            self.set_traffic_target(ep.haproxy_frontend)

    def set_traffic_target(self, target: str | None) -> None:
        """Point the generator at ``target`` (``None``: the in-process router).

        Args:
            target: URL of the HAProxy frontend, or ``None``.

        Raises:
            SandboxError: The control endpoint refused or did not answer.
        """
        import httpx

        assert self.fleet is not None
        try:
            response = httpx.put(
                f"{self.fleet.control_url}/control/traffic", json={"target": target}, timeout=5.0
            )
        except httpx.HTTPError as exc:
            raise SandboxError(f"sandbox control endpoint did not answer: {exc}") from exc
        if response.status_code != 200:
            raise SandboxError(f"sandbox control endpoint refused the target: {response.text}")

    def alive(self) -> bool:
        """Whether the fleet process still runs."""
        return self.fleet_proc is not None and self.fleet_proc.poll() is None

    def stop(self) -> None:
        """Stop the engines (newest first) and the fleet; always reaps every child."""
        while self._engines:
            engine = self._engines.pop()
            with contextlib.suppress(Exception):
                engine.stop()
        if self.fleet_proc is not None:
            stop_process(self.fleet_proc)
            self.fleet_proc = None

    # -- the console configuration -----------------------------------------------------

    def config_document(self) -> tomlkit.TOMLDocument:
        """The console configuration for this estate, with comments.

        Returns:
            A TOML document in the :class:`console.config.AppConfig` schema.
        """
        fleet = self.fleet
        assert fleet is not None
        ep = self.endpoints
        real = ep.real
        doc = tomlkit.document()
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        doc.add(tomlkit.comment(CONFIG_MARKER.removeprefix("# ") + f" at {stamp}."))
        doc.add(
            tomlkit.comment("It points at a local sandbox estate; it stops working when that does.")
        )
        doc.add(tomlkit.comment(f"Real engines: {', '.join(real) if real else 'none'}."))
        for name in ENGINE_NAMES:
            if name in ep.fallbacks:
                doc.add(tomlkit.comment(f"Embedded default for {name}: {ep.fallbacks[name]}."))
        doc.add(tomlkit.nl())
        doc["constitutional_hash"] = self.constitutional_hash
        doc["refresh_interval_s"] = 1.0

        environments = tomlkit.table(is_super_table=True)
        for env in ENVIRONMENTS:
            env_table = tomlkit.table()
            env_table["prometheus_label"] = env
            services = tomlkit.table(is_super_table=True)
            for name in SERVICES:
                svc = tomlkit.table()
                svc["base_url"] = fleet.base_url(env, name)
                svc["health_path"] = "/health"
                services[name] = svc
            env_table["services"] = services
            if env in ep.redis_urls:
                redis = tomlkit.table()
                redis["url"] = ep.redis_urls[env]
                env_table["redis"] = redis
            if ep.postgres_primary_dsn is not None:
                pg = tomlkit.table()
                pg["primary_dsn"] = ep.postgres_primary_dsn
                pg["replica_dsns"] = list(ep.postgres_replica_dsns)
                pg["expected_replicas"] = len(ep.postgres_replica_dsns)
                env_table["postgres"] = pg
            environments[env] = env_table
        doc["environments"] = environments

        prometheus = tomlkit.table()
        if ep.prometheus_url is not None:
            prometheus["url"] = ep.prometheus_url
        else:
            prometheus.add(tomlkit.comment("No Prometheus: the console scrapes /metrics directly."))
        prometheus["environment_label"] = "environment"
        prometheus["window"] = "1m"
        doc["prometheus"] = prometheus

        traffic = tomlkit.table()
        if ep.haproxy_admin is not None:
            traffic["kind"] = "haproxy"
            traffic["admin"] = ep.haproxy_admin
            traffic["backend"] = "acgs"
            traffic["blue_server"] = "blue"
            traffic["green_server"] = "green"
        else:
            traffic.add(
                tomlkit.comment("No HAProxy: the sandbox's in-process router moves traffic.")
            )
            traffic["kind"] = "sandbox"
            traffic["control_url"] = fleet.control_url
        doc["traffic"] = traffic

        audit = tomlkit.table()
        if ep.postgres_primary_dsn is not None:
            audit["postgres_dsn"] = ep.postgres_primary_dsn
        else:
            audit["sqlite_path"] = str(self.workdir / "audit.sqlite")
        audit["spool_path"] = str(self.workdir / "audit-spool.jsonl")
        doc["audit"] = audit

        coordination = tomlkit.table()
        if ep.coordination_redis_url is not None:
            coordination["redis_url"] = ep.coordination_redis_url
        else:
            coordination["lock_file"] = str(self.workdir / "console.lock")
        doc["coordination"] = coordination

        security = tomlkit.table()
        security.add(
            tomlkit.comment(
                "The sandbox's stand-ins for the site's scanner output (see security.py)."
            )
        )
        for key, path in write_security_outputs(self.workdir / "security").items():
            security[key] = str(path)
        doc["security"] = security

        sandbox = tomlkit.table()
        sandbox["control_url"] = fleet.control_url
        sandbox["real_engines"] = real
        doc["sandbox"] = sandbox
        return doc

    def write_config(self, path: Path, force: bool = False) -> None:
        """Write the console configuration atomically, and check it with the console's loader.

        Args:
            path: Destination.
            force: Overwrite a file the sandbox did not write.

        Raises:
            SandboxError: The file exists and is someone else's, or the config is invalid.
        """
        check_config_target(path, force)
        text = tomlkit.dumps(self.config_document())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        from console.config import ConfigError, load_config

        try:
            load_config(tmp)
        except ConfigError as exc:
            tmp.unlink(missing_ok=True)
            raise SandboxError(f"the sandbox wrote a config the console rejects:\n{exc}") from exc
        tmp.replace(path)


def write_security_outputs(folder: Path) -> dict[str, Path]:
    """Write what a site's security tools would leave for a release, for the sandbox.

    The SBOM is real: a CycloneDX document of the Python distributions installed
    beside the console. The vulnerability report is a Trivy-format report with
    no findings (no scanner runs here) and the score file says 98/100, the
    runbook's target; edit them to rehearse a failing security gate.

    Args:
        folder: Where to write them.

    Returns:
        The config keys of the ``[security]`` section and their files.
    """
    import importlib.metadata
    import json

    folder.mkdir(parents=True, exist_ok=True)
    components = sorted(
        {
            (d.metadata["Name"], d.version)
            for d in importlib.metadata.distributions()
            if d.metadata["Name"]
        }
    )
    sbom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {"component": {"type": "application", "name": "acgs-sandbox"}},
        "components": [
            {"type": "library", "name": n, "version": v, "purl": f"pkg:pypi/{n.lower()}@{v}"}
            for n, v in components
        ],
    }
    trivy = {
        "SchemaVersion": 2,
        "ArtifactName": "acgs-sandbox",
        "ArtifactType": "filesystem",
        "Results": [{"Target": "acgs-sandbox", "Class": "lang-pkgs", "Vulnerabilities": []}],
    }
    out = {
        "vulnerability_report": folder / "trivy.json",
        "sbom": folder / "sbom.cdx.json",
        "security_score_file": folder / "security-score.json",
    }
    out["vulnerability_report"].write_text(json.dumps(trivy, indent=2), encoding="utf-8")
    out["sbom"].write_text(json.dumps(sbom, indent=2), encoding="utf-8")
    out["security_score_file"].write_text(json.dumps({"score": 98.0}), encoding="utf-8")
    return out


def check_config_target(path: Path, force: bool = False) -> None:
    """Refuse to overwrite a config file the sandbox did not write (unless forced).

    Args:
        path: Where the config is to go.
        force: Overwrite whatever is there.

    Raises:
        SandboxError: The file exists, is not the sandbox's, and ``force`` is false.
    """
    if force or not path.exists():
        return
    try:
        first = path.read_text(encoding="utf-8", errors="replace").lstrip()
    except OSError as exc:
        raise SandboxError(f"cannot read {path}: {exc}") from exc
    if first and not first.startswith(CONFIG_MARKER):
        raise SandboxError(
            f"{path} exists and was not written by the sandbox; "
            "choose another --write-config path or pass --force"
        )
