"""Throw-away real engines on loopback: Redis, HAProxy, Prometheus, PostgreSQL.

This module owns starting and stopping the engines the console talks to, as foreground child
processes on free ``127.0.0.1`` ports with every file in a work directory. The test harness
(``tests/conftest.py``) and the sandbox (``acgs-console sandbox up --engines auto``) both use it.
It never touches the machine's own services: every port is either chosen here or passed in.

Every engine follows the same life cycle::

    with RedisServer(workdir) as redis_server:   # start(): spawn, wait until it answers
        ...                                      # stop(): terminate, then kill, then wait

``stop()`` always reaps the child (no zombies). A child also gets a parent-death signal, so a
parent killed with SIGKILL does not leave engines behind; note that Linux sends that signal
when the *thread* that started the engine exits, so start engines from a long-lived thread.
When an engine fails to start, :class:`EngineStartError` carries the tail of its log; when its
binary is missing, :class:`EngineMissing` names the binary and the apt package that provides it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import httpx
import psycopg

__all__ = [
    "APT_PACKAGES",
    "HAPROXY_BACKEND",
    "HAPROXY_SERVERS",
    "EngineMissing",
    "EngineStartError",
    "HAProxy",
    "PostgresCluster",
    "Prometheus",
    "RedisServer",
    "die_with_parent",
    "find_binary",
    "free_port",
]

APT_PACKAGES: Mapping[str, str] = {
    "redis-server": "redis-server",
    "haproxy": "haproxy",
    "prometheus": "prometheus",
    "postgres": "postgresql",
    "initdb": "postgresql",
    "pg_basebackup": "postgresql",
}
"""The Debian/Ubuntu package that provides each engine binary."""

HAPROXY_BACKEND = "acgs"
"""Name of the HAProxy backend that carries the ACGS traffic."""

HAPROXY_SERVERS: Mapping[str, str] = {"blue": "blue", "green": "green"}
"""HAProxy server name per environment inside :data:`HAPROXY_BACKEND`."""

LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 30
# A bind race with another process on this machine shows up as this text in every engine's log.
_PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107


class EngineMissing(RuntimeError):
    """An engine binary is not installed.

    Attributes:
        binary: The executable that was looked for.
        package: The apt package that provides it.
    """

    def __init__(self, binary: str, package: str | None = None) -> None:
        self.binary = binary
        self.package = package or APT_PACKAGES.get(binary, binary)
        super().__init__(
            f"engine binary {binary!r} not found (searched PATH, /usr/sbin and "
            f"/usr/lib/postgresql/*/bin); install the apt package {self.package!r}: "
            f"apt-get install {self.package}"
        )


class EngineStartError(RuntimeError):
    """An engine did not come up; the message ends with the tail of its log.

    Attributes:
        engine: Human name of the engine ("redis-server", "postgres primary", ...).
        log_path: The engine's log file.
        log_tail: The last lines of that log written by this attempt.
    """

    def __init__(self, engine: str, reason: str, log_path: Path, log_tail: str) -> None:
        self.engine = engine
        self.log_path = log_path
        self.log_tail = log_tail
        super().__init__(
            f"{engine} failed to start: {reason}\n--- last lines of {log_path} ---\n"
            f"{log_tail or '(log is empty)'}"
        )


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for ``/usr/lib/postgresql/<version>/bin`` directories."""
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_binary(name: str) -> str:
    """Find an engine binary.

    Looks on ``PATH``, then in ``/usr/sbin`` and ``/usr/local/sbin`` (HAProxy lives there on
    Debian and is not on a normal user's PATH), then in ``/usr/lib/postgresql/*/bin``, newest
    version first.

    Args:
        name: Executable name, e.g. ``"haproxy"`` or ``"initdb"``.

    Returns:
        The absolute path of the executable.

    Raises:
        EngineMissing: Nowhere to be found.
    """
    found = shutil.which(name)
    if found:
        return found
    candidates = [Path("/usr/sbin") / name, Path("/usr/local/sbin") / name]
    pg_bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    candidates.extend(directory / name for directory in pg_bins)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise EngineMissing(name)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it before the engine binds it; engines started on a port chosen
    here retry with a new one when their log says the address is in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, offset: int, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``offset``."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


if sys.platform == "linux":
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
else:  # pragma: no cover - the console's engines are Linux-only
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``signum`` when its parent dies.

    Linux delivers it when the *thread* that spawned the child exits, so spawn from a
    long-lived thread. Returns None where the platform has no such facility.
    """
    libc = _LIBC
    if libc is None:  # pragma: no cover
        return None

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return arm


class _RunAs:
    """Credentials to run a child as another user (PostgreSQL refuses to run as root)."""

    def __init__(self, user: str) -> None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise EngineMissing(f"system user {user!r}", "postgresql") from None
        self.name = user
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid
        self.home = entry.pw_dir

    def popen_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`subprocess.Popen` that drop to this user."""
        # extra_groups=[] drops root's supplementary groups as well, like runuser does.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        """Give ``path`` to this user."""
        os.chown(path, self.uid, self.gid)


def _clean_env(run_as: _RunAs | None = None) -> dict[str, str]:
    """The environment for engine children: no PG* variables that could redirect them."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if run_as is not None:
        env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
    return env


_LIVE: set[_Engine] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_leftovers() -> None:
    """Stop engines whose owner forgot to, so an interpreter exit leaves none behind."""
    with _LIVE_LOCK:
        leftovers = list(_LIVE)
    for engine in leftovers:
        with contextlib.suppress(Exception):
            engine.stop()


class _Engine:
    """One engine process: a foreground child, its log in the work directory.

    Subclasses give the command line, write their config, say which ports they pick
    themselves, and probe readiness.
    """

    #: Human name used in errors and as the log file's stem.
    label: str = "engine"
    #: Signal for a clean, prompt shutdown.
    stop_signal: int = signal.SIGTERM
    #: Default seconds to wait for readiness.
    start_timeout: float = 15.0

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.label.replace(' ', '-')}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        # Ports stay fixed after the first successful start so restart() comes back where
        # clients (and HAProxy/Prometheus configs) expect it.
        self._ports_fixed = False

    # -- hooks ---------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files before each spawn."""

    def _pick_ports(self) -> bool:
        """Choose ports that were not given; return True when any port was chosen here."""
        return False

    def _probe(self) -> bool:
        """Return True once the engine answers; must not raise."""
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, Any]:
        return {"env": _clean_env()}

    # -- life cycle ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Start the engine and wait until it answers.

        Args:
            timeout: Seconds to wait for readiness (default: the engine's own).

        Returns:
            The engine itself, for chaining.

        Raises:
            EngineMissing: Its binary is not installed.
            EngineStartError: It exited or did not answer in time (with its log tail).
        """
        if self.running:
            return self
        limit = self.start_timeout if timeout is None else timeout
        retry_ports = False
        if not self._ports_fixed:
            retry_ports = self._pick_ports()
        attempts = 3 if retry_ports else 1
        for attempt in range(1, attempts + 1):
            self._prepare()
            self._spawn()
            try:
                self._wait_ready(limit)
            except EngineStartError as exc:
                self.stop()
                if attempt < attempts and _PORT_TAKEN.search(exc.log_tail):
                    self._pick_ports()
                    continue
                raise
            self._ports_fixed = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the engine: its stop signal, then SIGKILL after ``timeout``; always reaped."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._forget()

    def kill(self) -> None:
        """Kill the engine abruptly (SIGKILL), as a crash would, and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait()
        self._forget()

    def restart(self, timeout: float | None = None) -> Self:
        """Stop (if running) and start again on the same ports."""
        self.stop()
        return self.start(timeout)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the engine's log since its latest start."""
        return _log_tail(self.log_path, self._log_offset, lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------

    def _spawn(self) -> None:
        argv = self._argv()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                close_fds=True,
                preexec_fn=die_with_parent(self.stop_signal),
                **self._popen_kwargs(),
            )
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _wait_ready(self, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        while True:
            status = proc.poll()
            if status is not None:
                raise EngineStartError(
                    self.label,
                    f"exited with status {status} before it was ready",
                    self.log_path,
                    self.log_tail(),
                )
            if self._probe():
                return
            if time.monotonic() >= deadline:
                raise EngineStartError(
                    self.label, f"not ready within {timeout:g} s", self.log_path, self.log_tail()
                )
            time.sleep(_POLL_INTERVAL)

    def _forget(self) -> None:
        self._proc = None
        with _LIVE_LOCK:
            _LIVE.discard(self)


_REDIS_PID = re.compile(rb"process_id:(\d+)\r\n")
_RESP_ERROR = re.compile(rb"(?:^|\r\n)-")


def _resp(*parts: str) -> bytes:
    """Encode one Redis command in RESP."""
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        raw = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _redis_quote(value: str) -> str:
    """Quote a value for redis.conf (double quotes with backslash escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class RedisServer(_Engine):
    """A throw-away ``redis-server`` without persistence, bound to 127.0.0.1.

    Args:
        workdir: Directory for its config and log (created if missing).
        port: TCP port; a free one when None.
        password: ``requirepass``; kept in a mode-600 config file, never on the command line.
    """

    label = "redis-server"
    start_timeout = 10.0

    def __init__(
        self, workdir: Path | str, port: int | None = None, password: str | None = None
    ) -> None:
        super().__init__(workdir)
        self.binary = find_binary("redis-server")
        self._fixed_port = port
        self.port = port or 0
        self.password = password
        self.config_path = self.workdir / "redis.conf"

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, password={'set' if self.password else 'none'})"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (without the password; pass that separately)."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _pick_ports(self) -> bool:
        if self._fixed_port is not None:
            return False
        self.port = free_port()
        return True

    def _prepare(self) -> None:
        lines = [
            f"port {self.port}",
            f"bind {LOOPBACK}",
            "protected-mode yes",
            "daemonize no",
            'save ""',
            "appendonly no",
            f"dir {_redis_quote(str(self.workdir))}",
            'logfile ""',
            "databases 16",
        ]
        if self.password is not None:
            lines.append(f"requirepass {_redis_quote(self.password)}")
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    def _argv(self) -> list[str]:
        return [self.binary, str(self.config_path)]

    def _probe(self) -> bool:
        commands = [_resp("AUTH", self.password)] if self.password is not None else []
        commands.append(_resp("INFO", "server"))
        data = b""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                sock.sendall(b"".join(commands))
                while not _REDIS_PID.search(data) and not _RESP_ERROR.search(data):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return False
        # Answering is not enough: it must be *our* child, not another server on the port.
        match = _REDIS_PID.search(data)
        return match is not None and int(match.group(1)) == self.pid


def _admin_exchange(sock: socket.socket, command: str, timeout: float) -> str:
    sock.settimeout(timeout)
    sock.sendall(command.rstrip("\n").encode() + b"\n")
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


class HAProxy(_Engine):
    """A throw-away HAProxy in front of the blue and green ingresses.

    The backend ``acgs`` (round robin) holds server ``blue`` (weight 256) and ``green``
    (weight 0), so all traffic starts on blue. Its runtime API listens on a unix socket in the
    work directory and on a TCP port on 127.0.0.1, both at admin level.

    Args:
        workdir: Directory for haproxy.cfg, the admin socket and the log (created if missing).
        blue: ``(host, port)`` of the blue environment's ingress.
        green: ``(host, port)`` of the green environment's ingress.
        frontend_port: Port of the traffic frontend; a free one when None.
        admin_port: Port of the TCP admin socket; a free one when None.
        health_checks: Add ``check`` to the servers (TCP checks every second), so a dead
            ingress shows as DOWN in ``show servers state`` as it would in production.
    """

    label = "haproxy"
    start_timeout = 10.0
    backend = HAPROXY_BACKEND
    server_names: tuple[str, ...] = tuple(HAPROXY_SERVERS.values())

    def __init__(
        self,
        workdir: Path | str,
        blue: tuple[str, int],
        green: tuple[str, int],
        frontend_port: int | None = None,
        admin_port: int | None = None,
        health_checks: bool = True,
    ) -> None:
        super().__init__(workdir)
        self.binary = find_binary("haproxy")
        self.blue = blue
        self.green = green
        self.health_checks = health_checks
        self._fixed_frontend = frontend_port
        self._fixed_admin = admin_port
        self.frontend_port = frontend_port or 0
        self.admin_port = admin_port or 0
        self.config_path = self.workdir / "haproxy.cfg"
        self.admin_socket = self.workdir / "admin.sock"
        if len(str(self.admin_socket)) > _MAX_UNIX_SOCKET_PATH:
            raise ValueError(
                f"HAProxy admin socket path {str(self.admin_socket)!r} is longer than "
                f"{_MAX_UNIX_SOCKET_PATH} bytes (the unix socket limit); use a shorter workdir"
            )

    def __repr__(self) -> str:
        return f"HAProxy(frontend={self.frontend_url}, admin_tcp={self.admin_tcp})"

    @property
    def admin_tcp(self) -> str:
        """The TCP admin socket as ``"127.0.0.1:<port>"``."""
        return f"{LOOPBACK}:{self.admin_port}"

    @property
    def frontend_url(self) -> str:
        """``http://127.0.0.1:<port>``: where traffic enters."""
        return f"http://{LOOPBACK}:{self.frontend_port}"

    def admin_command(
        self, command: str, via: Literal["unix", "tcp"] = "unix", timeout: float = 5.0
    ) -> str:
        """Send one runtime API command (one per connection) and return the whole reply.

        Args:
            command: E.g. ``"show servers state acgs"``.
            via: The unix socket or the TCP admin socket.
            timeout: Socket timeout in seconds.

        Raises:
            OSError: HAProxy is not answering.
        """
        if via == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.admin_socket))
                return _admin_exchange(sock, command, timeout)
        with socket.create_connection((LOOPBACK, self.admin_port), timeout=timeout) as sock:
            return _admin_exchange(sock, command, timeout)

    def _pick_ports(self) -> bool:
        chosen = False
        if self._fixed_frontend is None:
            self.frontend_port = free_port()
            chosen = True
        if self._fixed_admin is None:
            self.admin_port = free_port()
            chosen = True
        return chosen

    def _server_line(self, name: str, address: tuple[str, int], weight: int) -> str:
        check = " check inter 1s fall 2 rise 2" if self.health_checks else ""
        return f"    server {name} {address[0]}:{address[1]} weight {weight}{check}"

    def _prepare(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.admin_socket.unlink()
        config = "\n".join(
            [
                "global",
                "    maxconn 1000",
                # One thread: the machines that run the tests and the sandbox are small.
                "    nbthread 1",
                # Without SO_REUSEPORT a stale instance on the same port makes bind fail
                # instead of silently sharing the port with us.
                "    noreuseport",
                f"    stats socket {self.admin_socket} mode 600 level admin",
                f"    stats socket ipv4@{LOOPBACK}:{self.admin_port} level admin",
                "    stats timeout 30s",
                "",
                "defaults",
                "    mode http",
                "    timeout connect 2s",
                "    timeout client 30s",
                "    timeout server 30s",
                "    timeout http-request 10s",
                "",
                "frontend acgs_ingress",
                f"    bind {LOOPBACK}:{self.frontend_port}",
                f"    default_backend {self.backend}",
                "",
                f"backend {self.backend}",
                "    balance roundrobin",
                self._server_line(HAPROXY_SERVERS["blue"], self.blue, 256),
                self._server_line(HAPROXY_SERVERS["green"], self.green, 0),
                "",
            ]
        )
        self.config_path.write_text(config, encoding="utf-8")

    def _argv(self) -> list[str]:
        return [self.binary, "-db", "-f", str(self.config_path)]

    def _probe(self) -> bool:
        # "Pid:" proves the TCP admin port is ours, not a stale instance's.
        mine = f"Pid: {self.pid}\n"
        try:
            return all(
                mine in self.admin_command("show info", via=via, timeout=1.0)
                for via in ("unix", "tcp")
            )
        except OSError:
            return False


def _host_port(target: str) -> str:
    """``"host:port"`` from either ``"host:port"`` or a URL like ``"http://host:port/x"``."""
    if "://" in target:
        netloc = urlsplit(target).netloc
        if not netloc:
            raise ValueError(f"scrape target {target!r} has no host:port")
        return netloc
    return target


class Prometheus(_Engine):
    """A throw-away Prometheus scraping the given targets.

    Args:
        workdir: Directory for prometheus.yml, the TSDB and the log (created if missing).
        targets: ``(host:port or base URL, labels)`` per target; labels such as
            ``{"environment": "green", "service": "cache_optimizer"}`` are attached to every
            series scraped from it.
        scrape_interval: Scrape and rule-evaluation interval (Prometheus duration).
        port: Web port; a free one when None.
        rule_files: Rule files to load (recording or alerting rules).
        job_name: The scrape job's name (the ``job`` label).
    """

    label = "prometheus"
    start_timeout = 30.0

    def __init__(
        self,
        workdir: Path | str,
        targets: Sequence[tuple[str, Mapping[str, str]]],
        scrape_interval: str = "1s",
        port: int | None = None,
        rule_files: Sequence[Path | str] | None = None,
        job_name: str = "acgs",
    ) -> None:
        super().__init__(workdir)
        self.binary = find_binary("prometheus")
        self.targets = [(_host_port(target), dict(labels)) for target, labels in targets]
        self.scrape_interval = scrape_interval
        self.rule_files = [str(Path(path).resolve()) for path in rule_files or ()]
        self.job_name = job_name
        self._fixed_port = port
        self.port = port or 0
        self.config_path = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "data"

    def __repr__(self) -> str:
        return f"Prometheus(url={self.url}, targets={len(self.targets)})"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the Prometheus HTTP API."""
        return f"http://{LOOPBACK}:{self.port}"

    def query(self, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Run an instant query and return its result vector (may be empty).

        Raises:
            httpx.HTTPError: Prometheus did not answer.
            RuntimeError: Prometheus answered with an error.
        """
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=timeout)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body.get('error', body)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_sample(self, promql: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns at least one sample.

        Prometheus 2.42 applies new scrape targets only every 5 s, so the first sample after a
        start takes 5-7 s; this polls instead of sleeping.

        Args:
            promql: The query, e.g. ``'up{environment="green"} == 1'``.
            timeout: Seconds to keep polling.

        Returns:
            The non-empty result vector.

        Raises:
            TimeoutError: Still no sample after ``timeout`` (the message says what came back).
        """
        deadline = time.monotonic() + timeout
        last: str = "no answer yet"
        while True:
            try:
                result = self.query(promql)
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                last = f"error: {exc}"
            else:
                if result:
                    return result
                last = "empty result"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no sample for {promql!r} within {timeout:g} s ({last})")
            time.sleep(0.25)

    def _pick_ports(self) -> bool:
        if self._fixed_port is not None:
            return False
        self.port = free_port()
        return True

    def _prepare(self) -> None:
        scrape_config: dict[str, Any] = {
            "job_name": self.job_name,
            "metrics_path": "/metrics",
            # The fleet labels its own series with environment and service too; honouring
            # them keeps one clean label set instead of adding exported_environment, ...
            "honor_labels": True,
            "static_configs": [
                {"targets": [target], "labels": labels} for target, labels in self.targets
            ],
        }
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                # The timeout may not exceed the interval; the default (10 s) would.
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [scrape_config],
        }
        if self.rule_files:
            config["rule_files"] = self.rule_files
        # JSON is valid YAML, and json needs no extra dependency or escaping rules.
        self.config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def _argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
        ]

    def _probe(self) -> bool:
        try:
            if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code != 200:
                return False
            flags = httpx.get(f"{self.url}/api/v1/status/flags", timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            return False
        # Ready is not enough: it must be *our* child (our TSDB), not another on the port.
        tsdb_path = flags.get("data", {}).get("storage.tsdb.path")
        return isinstance(tsdb_path, str) and Path(tsdb_path) == self.data_dir


class _PostgresServer(_Engine):
    """One ``postgres`` process (primary or replica) of a :class:`PostgresCluster`."""

    # SIGTERM is "smart" shutdown, which waits for every client to leave; SIGINT is "fast".
    stop_signal = signal.SIGINT
    start_timeout = 30.0

    def __init__(
        self,
        role: str,
        workdir: Path,
        binary: str,
        datadir: Path,
        sockdir: Path,
        run_as: _RunAs | None,
        port: int | None = None,
    ) -> None:
        self.label = f"postgres {role}"
        super().__init__(workdir)
        self.binary = binary
        self.datadir = datadir
        self.sockdir = sockdir
        self.run_as = run_as
        self._fixed_port = port
        self.port = port or 0

    @property
    def dsn(self) -> str:
        """libpq connection string for the ``postgres`` superuser and database."""
        return f"host={LOOPBACK} port={self.port} user=postgres dbname=postgres"

    def _pick_ports(self) -> bool:
        if self._fixed_port is not None:
            return False
        self.port = free_port()
        return True

    def _argv(self) -> list[str]:
        settings = {
            "listen_addresses": LOOPBACK,
            "unix_socket_directories": str(self.sockdir),
            # Throw-away data: durability buys nothing and costs seconds.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": "100",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "max_replication_slots": "5",
            "hot_standby": "on",
            "wal_receiver_status_interval": "1s",
            # A replica whose primary went away retries every 5 s by default; tests wait on it.
            "wal_retrieve_retry_interval": "500ms",
            "logging_collector": "off",
        }
        argv = [self.binary, "-D", str(self.datadir), "-p", str(self.port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"env": _clean_env(self.run_as)}
        if self.run_as is not None:
            kwargs.update(self.run_as.popen_kwargs())
        return kwargs

    def _probe(self) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=1, autocommit=True) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error:
            return False
        # Answering is not enough: it must be *our* child (our data directory).
        return row is not None and os.path.realpath(row[0]) == os.path.realpath(self.datadir)


class PostgresCluster:
    """A throw-away PostgreSQL primary with one streaming replica on a physical slot.

    As root, every PostgreSQL program runs as the ``postgres`` user (dropped with
    setuid/setgid in the child, the same as ``runuser -u postgres``, but without an
    intermediate process between us and the server we wait on); the data directories then
    live in a private temporary directory owned by ``postgres``, because test work directories
    are usually not reachable by that user. Logs always go to ``workdir``.

    Args:
        workdir: Directory for the logs (and, when not root, the data).
        slot: Name of the replica's physical replication slot.
        primary_port: Primary's port; a free one when None.
        replica_port: Replica's port; a free one when None.
    """

    def __init__(
        self,
        workdir: Path | str,
        slot: str = "acgs_replica",
        primary_port: int | None = None,
        replica_port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.slot = slot
        # Resolve symlinks (e.g. /usr/local/bin/postgres) to reach the version's own bindir.
        self._postgres = str(Path(find_binary("postgres")).resolve())
        bindir = Path(self._postgres).parent
        # Take initdb and pg_basebackup from the same installation as postgres.
        self._initdb = self._sibling(bindir, "initdb")
        self._basebackup = self._sibling(bindir, "pg_basebackup")
        self._run_as = _RunAs("postgres") if os.geteuid() == 0 else None
        self._private_root: Path | None = None
        if self._run_as is not None:
            self._private_root = Path(tempfile.mkdtemp(prefix="acgs-pg-"))
            self._run_as.chown(self._private_root)
            root = self._private_root
            # The data lives outside workdir, so nobody else would remove it.
            atexit.register(self.stop)
        else:
            root = self.workdir / "pg"
            root.mkdir(exist_ok=True)
        self.sockdir = root / "sock"
        self.sockdir.mkdir(exist_ok=True)
        if self._run_as is not None:
            self._run_as.chown(self.sockdir)
        self.primary = _PostgresServer(
            "primary",
            self.workdir,
            self._postgres,
            root / "primary",
            self.sockdir,
            self._run_as,
            primary_port,
        )
        self.replica = _PostgresServer(
            "replica",
            self.workdir,
            self._postgres,
            root / "replica",
            self.sockdir,
            self._run_as,
            replica_port,
        )

    @staticmethod
    def _sibling(bindir: Path, name: str) -> str:
        candidate = bindir / name
        return str(candidate) if candidate.is_file() else find_binary(name)

    def __repr__(self) -> str:
        return f"PostgresCluster(primary={self.primary.port}, replica={self.replica.port})"

    @property
    def primary_dsn(self) -> str:
        """libpq connection string of the primary."""
        return self.primary.dsn

    @property
    def replica_dsn(self) -> str:
        """libpq connection string of the streaming replica."""
        return self.replica.dsn

    def start(self, timeout: float = 60.0) -> Self:
        """Create (first time only) and start the primary and the replica.

        Raises:
            EngineMissing: A PostgreSQL binary or the ``postgres`` user is missing.
            EngineStartError: A step failed (with its log tail).
        """
        deadline = time.monotonic() + timeout
        try:
            if not (self.primary.datadir / "PG_VERSION").exists():
                self._run(
                    "initdb",
                    [
                        self._initdb,
                        "--auth=trust",
                        "--username=postgres",
                        f"--pgdata={self.primary.datadir}",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                    ],
                    deadline,
                )
            self.primary.start(max(1.0, deadline - time.monotonic()))
            if not (self.replica.datadir / "PG_VERSION").exists():
                self._run(
                    "pg_basebackup",
                    [
                        self._basebackup,
                        f"--host={LOOPBACK}",
                        f"--port={self.primary.port}",
                        "--username=postgres",
                        f"--pgdata={self.replica.datadir}",
                        "--write-recovery-conf",
                        "--wal-method=stream",
                        "--create-slot",
                        f"--slot={self.slot}",
                        # A spread checkpoint would make us wait for minutes.
                        "--checkpoint=fast",
                        "--no-sync",
                    ],
                    deadline,
                )
            self.replica.start(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop_primary(self) -> None:
        """Stop the primary (fast shutdown), leaving the replica running."""
        self.primary.stop()

    def start_primary(self, timeout: float = 30.0) -> None:
        """Start the primary again on the same port; the replica reconnects by itself."""
        self.primary.start(timeout)

    def stop(self) -> None:
        """Stop both servers and remove the private data directory (if one was made).

        This is final when the data lived in a private directory: make a new cluster to
        start again. To take the primary down and up mid-test, use :meth:`stop_primary` and
        :meth:`start_primary`.
        """
        for server in (self.replica, self.primary):
            proc = server._proc
            if proc is not None and proc.poll() is None:
                # Signal both first so they shut down side by side.
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(server.stop_signal)
        self.replica.stop()
        self.primary.stop()
        if self._private_root is not None:
            shutil.rmtree(self._private_root, ignore_errors=True)
            self._private_root = None
            atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, step: str, argv: list[str], deadline: float) -> None:
        """Run a one-shot PostgreSQL program to completion, logging to ``<step>.log``."""
        log_path = self.workdir / f"{step}.log"
        kwargs: dict[str, Any] = {"env": _clean_env(self._run_as)}
        if self._run_as is not None:
            kwargs.update(self._run_as.popen_kwargs())
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.sockdir.parent,
                close_fds=True,
                preexec_fn=die_with_parent(),
                **kwargs,
            )
        try:
            status = proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise EngineStartError(
                step, "did not finish in time", log_path, _log_tail(log_path, offset)
            ) from None
        if status != 0:
            raise EngineStartError(
                step, f"exited with status {status}", log_path, _log_tail(log_path, offset)
            )
