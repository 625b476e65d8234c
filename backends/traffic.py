"""The traffic switch: how the blue/green split is read and moved.

Owns the :class:`TrafficSwitch` protocol and its three implementations:

- :class:`HAProxyRuntimeSwitch`: the HAProxy runtime API over a unix socket
  or ``host:port``, one command per connection. Weights are absolute,
  0..256: green gets ``round(256 * p / 100)``, blue the rest. Every set is
  verified by reading ``show servers state`` back; any text HAProxy answers
  to ``set weight`` is an error and is carried in the exception.
- :class:`CommandTrafficSwitch`: the site's own command (Istio, an ALB, a
  script) as an argv template, run without a shell and with a timeout, plus
  an optional read-back command that prints the green percentage.
- :class:`SandboxRouterSwitch`: the sandbox fleet's ``/control/split``.

``read_split()`` never raises: a split that cannot be read back has
``green_percentage=None`` and an ``error``. ``set_green_percentage()`` raises
:class:`TrafficSwitchError` unless the read-back shows what was asked for,
and returns that read-back (never merely the value that was sent).

Switches that can say how many requests each environment actually served
(the rollback's "requests reach blue" check) also implement
:class:`RequestCounter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from backends.models import Environment, TrafficSplit

__all__ = [
    "MAX_WEIGHT",
    "CommandTrafficSwitch",
    "HAProxyRuntimeSwitch",
    "RequestCounter",
    "SandboxRouterSwitch",
    "TrafficSwitch",
    "TrafficSwitchError",
    "parse_servers_state",
    "parse_show_stat",
    "weights_for",
]

MAX_WEIGHT = 256
"""HAProxy's largest absolute server weight."""

_TAIL_CHARS = 2000
_PLACEHOLDER = "{green_percentage}"
# HAProxy's CLI splits on ';' and newlines; a name is never allowed to carry a second command.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


class TrafficSwitchError(Exception):
    """The traffic switch failed; carries the load balancer's or command's own text.

    Attributes:
        detail: What HAProxy answered, or the command's stderr tail (may be empty).
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(f"{message}: {detail}" if detail else message)
        self.detail = detail


class TrafficSwitch(Protocol):
    """Reads and moves the blue/green traffic split."""

    name: str

    async def read_split(self) -> TrafficSplit:
        """Read the split back from the load balancer. Never raises."""
        ...

    async def set_green_percentage(self, p: float) -> TrafficSplit:
        """Send ``p`` % of traffic to green and return the verified read-back.

        Raises:
            TrafficSwitchError: the switch refused, failed, or the read-back differs.
        """
        ...


@runtime_checkable
class RequestCounter(Protocol):
    """A switch that can count the requests each environment has served."""

    async def request_counts(self) -> dict[Environment, int]:
        """Cumulative requests served per environment.

        Raises:
            TrafficSwitchError: the counters could not be read.
        """
        ...


def _check_percentage(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p):
        raise TrafficSwitchError(f"green percentage must be a number from 0 to 100, got {p!r}")
    if not 0.0 <= p <= 100.0:
        raise TrafficSwitchError(f"green percentage must be from 0 to 100, got {p:g}")
    return float(p)


def weights_for(p: float) -> tuple[int, int]:
    """Absolute HAProxy weights ``(blue, green)`` for ``p`` % green.

    Args:
        p: green percentage, 0..100.

    Raises:
        TrafficSwitchError: p is not a number from 0 to 100.
    """
    green = round(MAX_WEIGHT * _check_percentage(p) / 100.0)
    return MAX_WEIGHT - green, green


def _tail(text: str, limit: int = _TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


# --- HAProxy ------------------------------------------------------------------------


def parse_servers_state(text: str, backend: str) -> dict[str, dict[str, str]]:
    """Parse ``show servers state <backend>`` into ``{server: {column: value}}``.

    Columns are found by the header's names (``srv_uweight``, ``srv_iweight``,
    ...), not by position, so a newer HAProxy with more columns still parses.

    Args:
        text: the reply.
        backend: only rows of this backend are kept.

    Raises:
        TrafficSwitchError: the reply has no header (HAProxy answered an error).
    """
    header: list[str] | None = None
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            header = line.lstrip("#").split()
            continue
        if header is None:
            continue  # the format version line ("1") comes before the header
        fields = line.split()
        row = dict(zip(header, fields, strict=False))
        if row.get("be_name") == backend and "srv_name" in row:
            rows[row["srv_name"]] = row
    if header is None:
        raise TrafficSwitchError("HAProxy did not return a servers state table", _tail(text))
    return rows


def parse_show_stat(text: str) -> list[dict[str, str]]:
    """Parse ``show stat`` CSV into one dict per line, keyed by the header's names.

    Raises:
        TrafficSwitchError: the reply is not the CSV table (HAProxy answered an error).
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise TrafficSwitchError("HAProxy did not return stats CSV", _tail(text))
    header = lines[0][2:].split(",")
    return [dict(zip(header, ln.split(","), strict=False)) for ln in lines[1:]]


class HAProxyRuntimeSwitch:
    """Moves traffic with the HAProxy runtime API.

    Args:
        admin: the admin socket: a unix socket path (anything with a ``/``, or
            ``unix:<path>``), or ``host:port`` of a TCP stats socket.
        backend: the backend holding the blue and green servers.
        blue_server: the blue server's name in that backend.
        green_server: the green server's name in that backend.
        timeout_s: bound on each runtime API command.

    Raises:
        ValueError: a name could smuggle a second command, or admin is not an address.
    """

    def __init__(
        self,
        admin: str,
        backend: str = "acgs",
        blue_server: str = "blue",
        green_server: str = "green",
        timeout_s: float = 2.0,
    ) -> None:
        for what, value in (
            ("backend", backend),
            ("blue_server", blue_server),
            ("green_server", green_server),
        ):
            if not _SAFE_NAME.match(value):
                raise ValueError(
                    f"HAProxy {what} {value!r} must be letters, digits, '_', '.', ':' or '-'"
                )
        self.admin = admin
        self.backend = backend
        self.blue_server = blue_server
        self.green_server = green_server
        self.timeout_s = timeout_s
        self._unix_path: str | None = None
        self._tcp: tuple[str, int] | None = None
        if admin.startswith("unix:"):
            self._unix_path = admin.removeprefix("unix:")
        elif "/" in admin:
            self._unix_path = admin
        else:
            host, sep, port = admin.removeprefix("tcp:").rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"HAProxy admin {admin!r} must be a unix socket path or host:port")
            self._tcp = (host.strip("[]"), int(port))
        self.name = f"haproxy {admin} {backend}/{blue_server},{green_server}"

    @property
    def _source(self) -> str:
        return f"haproxy {self.admin}"

    async def command(self, command: str) -> str:
        """Send one runtime API command (one per connection) and return the whole reply.

        Raises:
            TrafficSwitchError: HAProxy could not be reached or did not answer in time.
        """
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._unix_path is not None:
                    reader, writer = await asyncio.open_unix_connection(self._unix_path)
                else:
                    assert self._tcp is not None
                    reader, writer = await asyncio.open_connection(*self._tcp)
                try:
                    writer.write(command.encode() + b"\n")
                    await writer.drain()
                    # Non-interactive mode: HAProxy answers and closes the connection.
                    data = await reader.read()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            raise TrafficSwitchError(
                f"HAProxy runtime API at {self.admin} did not answer {command!r} "
                f"within {self.timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise TrafficSwitchError(
                f"cannot reach the HAProxy runtime API at {self.admin}",
                exc.strerror or str(exc),
            ) from None
        return data.decode("utf-8", "replace")

    async def _weights(self) -> tuple[int, int]:
        reply = await self.command(f"show servers state {self.backend}")
        rows = parse_servers_state(reply, self.backend)
        weights: list[int] = []
        for server in (self.blue_server, self.green_server):
            row = rows.get(server)
            if row is None:
                raise TrafficSwitchError(
                    f"server {server!r} not found in HAProxy backend {self.backend!r} "
                    f"(it has: {', '.join(sorted(rows)) or 'no servers'})"
                )
            # srv_uweight is the weight in force (as set at runtime); srv_iweight the
            # configured one, used only when the runtime column is absent.
            raw = row.get("srv_uweight", row.get("srv_iweight"))
            if raw is None or not raw.isdigit():
                raise TrafficSwitchError(
                    f"no readable weight for {self.backend}/{server}", _tail(reply)
                )
            weights.append(int(raw))
        return weights[0], weights[1]

    def _split(self, blue: int, green: int) -> TrafficSplit:
        if blue + green == 0:
            return TrafficSplit(
                green_percentage=None,
                blue_weight=0,
                green_weight=0,
                source=self._source,
                error="both blue and green have weight 0: the backend serves no traffic",
            )
        return TrafficSplit(
            green_percentage=100.0 * green / (blue + green),
            blue_weight=blue,
            green_weight=green,
            source=self._source,
        )

    async def read_split(self) -> TrafficSplit:
        """Read the weights back with ``show servers state``. Never raises."""
        try:
            blue, green = await self._weights()
        except Exception as exc:
            return TrafficSplit(green_percentage=None, source=self._source, error=str(exc))
        return self._split(blue, green)

    async def set_weight(self, server: str, weight: int) -> None:
        """``set weight <backend>/<server> <weight>``; any reply text is an error.

        Raises:
            TrafficSwitchError: carrying HAProxy's reply.
        """
        if not _SAFE_NAME.match(server):
            raise TrafficSwitchError(f"bad HAProxy server name {server!r}")
        if not 0 <= weight <= MAX_WEIGHT:
            raise TrafficSwitchError(f"weight must be 0..{MAX_WEIGHT}, got {weight}")
        reply = await self.command(f"set weight {self.backend}/{server} {weight}")
        if reply.strip():
            raise TrafficSwitchError(
                f"HAProxy refused 'set weight {self.backend}/{server} {weight}'",
                _tail(reply),
            )

    async def set_green_percentage(self, p: float) -> TrafficSplit:
        """Set absolute weights for ``p`` % green and verify them by reading back.

        The server getting the larger weight is set first, so no moment has
        both weights at 0 (which would serve nothing).

        Raises:
            TrafficSwitchError: HAProxy refused, could not be reached, or the
                read-back differs from the weights set.
        """
        blue, green = weights_for(p)
        order = [(self.blue_server, blue), (self.green_server, green)]
        order.sort(key=lambda item: item[1], reverse=True)
        for server, weight in order:
            await self.set_weight(server, weight)
        got_blue, got_green = await self._weights()
        if (got_blue, got_green) != (blue, green):
            raise TrafficSwitchError(
                f"HAProxy read-back after setting {p:g} % green shows weights "
                f"blue={got_blue} green={got_green}, expected blue={blue} green={green}"
            )
        return self._split(got_blue, got_green)

    async def server_request_counts(self) -> dict[str, int]:
        """Cumulative sessions (``stot`` in ``show stat``) per server of the backend.

        Raises:
            TrafficSwitchError: HAProxy could not be reached or answered an error.
        """
        reply = await self.command("show stat")
        out: dict[str, int] = {}
        for row in parse_show_stat(reply):
            if row.get("pxname") != self.backend:
                continue
            name = row.get("svname", "")
            if name in ("FRONTEND", "BACKEND"):
                continue
            stot = row.get("stot", "")
            if not stot.isdigit():
                raise TrafficSwitchError(f"no readable stot for {self.backend}/{name}")
            out[name] = int(stot)
        if not out:
            raise TrafficSwitchError(f"HAProxy has no backend {self.backend!r} in show stat")
        return out

    async def request_counts(self) -> dict[Environment, int]:
        """Cumulative requests served per environment (the blue and green servers).

        Raises:
            TrafficSwitchError: the counters could not be read.
        """
        per_server = await self.server_request_counts()
        out: dict[Environment, int] = {}
        for env, server in (
            (Environment.BLUE, self.blue_server),
            (Environment.GREEN, self.green_server),
        ):
            if server not in per_server:
                raise TrafficSwitchError(
                    f"server {server!r} not found in HAProxy backend {self.backend!r}"
                )
            out[env] = per_server[server]
        return out

    async def aclose(self) -> None:
        """Nothing to close: every command has its own connection."""


# --- a site command -----------------------------------------------------------------


def _format_percentage(p: float) -> str:
    return f"{p:g}" if abs(p) >= 1e-4 or p == 0 else f"{p:.6f}"


class CommandTrafficSwitch:
    """Moves traffic with the site's own command.

    Args:
        set_argv: the command as an argv list; ``{green_percentage}`` in any
            argument is replaced by the percentage (``10``, ``12.5``).
        read_argv: optional command that prints the current green percentage
            (a number, optionally followed by ``%``) on stdout.
        cwd: working directory for both commands.
        timeout_s: bound on each command run; past it the command's whole
            process group is killed.
        tolerance: how far (percentage points) the read-back may be from the
            value set, for load balancers that round.

    Raises:
        ValueError: set_argv is empty or lacks the placeholder.
    """

    def __init__(
        self,
        set_argv: Sequence[str],
        read_argv: Sequence[str] | None = None,
        cwd: Path | None = None,
        timeout_s: float = 10.0,
        tolerance: float = 0.5,
    ) -> None:
        if not set_argv or not any(_PLACEHOLDER in arg for arg in set_argv):
            raise ValueError(f"set_argv needs a command with {_PLACEHOLDER} in an argument")
        self.set_argv = list(set_argv)
        self.read_argv = list(read_argv) if read_argv else None
        self.cwd = cwd
        self.timeout_s = timeout_s
        self.tolerance = tolerance
        self.name = f"command {self.set_argv[0]}"

    async def _run(self, argv: list[str]) -> str:
        """Run argv (no shell); return stdout; raise on failure, timeout or non-zero exit."""
        shown = " ".join(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                # Its own process group, so a timeout kills what it started, too.
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise TrafficSwitchError(
                f"traffic command not found: {argv[0]!r}", exc.strerror or ""
            ) from None
        except OSError as exc:
            raise TrafficSwitchError(
                f"cannot run traffic command {argv[0]!r}", exc.strerror or str(exc)
            ) from None
        try:
            async with asyncio.timeout(self.timeout_s):
                out, err = await proc.communicate()
        except BaseException as exc:
            _kill_group(proc.pid)
            with contextlib.suppress(Exception):
                # Reap it; bounded in case something odd keeps it alive.
                async with asyncio.timeout(5.0):
                    await proc.wait()
            if isinstance(exc, TimeoutError):
                raise TrafficSwitchError(
                    f"traffic command {shown!r} did not finish within {self.timeout_s:g} s "
                    "and was killed"
                ) from None
            raise
        stdout = out.decode("utf-8", "replace")
        if proc.returncode != 0:
            stderr = err.decode("utf-8", "replace")
            raise TrafficSwitchError(
                f"traffic command {shown!r} exited with status {proc.returncode}",
                _tail(stderr or stdout),
            )
        return stdout

    async def _read(self) -> float:
        assert self.read_argv is not None
        out = await self._run(self.read_argv)
        text = out.strip()
        try:
            value = float(text.removesuffix("%").strip())
        except ValueError:
            raise TrafficSwitchError(
                "traffic read-back command did not print a number", _tail(text) or "(nothing)"
            ) from None
        if not math.isfinite(value) or not 0.0 <= value <= 100.0:
            raise TrafficSwitchError(
                f"traffic read-back command printed {value:g}, not a percentage from 0 to 100"
            )
        return value

    async def read_split(self) -> TrafficSplit:
        """Run the read-back command. Never raises."""
        if self.read_argv is None:
            return TrafficSplit(
                green_percentage=None,
                source=self.name,
                error="no read-back command configured: the split cannot be read",
            )
        try:
            value = await self._read()
        except Exception as exc:
            return TrafficSplit(green_percentage=None, source=self.name, error=str(exc))
        return TrafficSplit(green_percentage=value, source=self.name)

    async def set_green_percentage(self, p: float) -> TrafficSplit:
        """Run the set command with ``p``, then the read-back command (when configured).

        Without a read-back command the returned split has
        ``green_percentage=None`` and an error saying it is unverified.

        Raises:
            TrafficSwitchError: bad p, the command failed or timed out, or the
                read-back differs from p by more than the tolerance.
        """
        value = _format_percentage(_check_percentage(p))
        await self._run([arg.replace(_PLACEHOLDER, value) for arg in self.set_argv])
        if self.read_argv is None:
            return TrafficSplit(
                green_percentage=None,
                source=self.name,
                error=f"set to {value} % (exit 0) but not verified: no read-back command",
            )
        got = await self._read()
        if abs(got - p) > self.tolerance:
            raise TrafficSwitchError(
                f"traffic read-back after setting {value} % green shows {got:g} %"
            )
        return TrafficSplit(green_percentage=got, source=self.name)

    async def aclose(self) -> None:
        """Nothing to close."""


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# --- the sandbox router ---------------------------------------------------------------


class SandboxRouterSwitch:
    """Moves the sandbox fleet's in-process router (``/control/split``).

    Args:
        control_url: the sandbox control endpoint (``http://127.0.0.1:P``).
        timeout_s: bound on each request.
        client: an HTTP client to use; by default one is made (and kept) on first use.
    """

    def __init__(
        self,
        control_url: str,
        timeout_s: float = 2.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        base = control_url.rstrip("/")
        base = base.removesuffix("/control/split")
        self.control_url = base
        self.timeout_s = timeout_s
        self.name = f"sandbox router {base}"
        self._client = client
        self._own_client = client is None
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # no running loop: built on first use
            # Built on the loop that will use it: the client (and its transport's imports)
            # is ready before the first read, which is timed with the sweep's probes.
            self._http()

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or (self._own_client and self._loop is not loop):
            # An own client is tied to the loop that made it.
            self._client = httpx.AsyncClient(timeout=self.timeout_s, trust_env=False)
            self._loop = loop
        return self._client

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.control_url + path
        try:
            response = await self._http().request(method, url, json=body, timeout=self.timeout_s)
        except httpx.TimeoutException:
            raise TrafficSwitchError(
                f"sandbox control {url} did not answer within {self.timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise TrafficSwitchError(f"cannot reach sandbox control {url}", str(exc)) from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code != 200:
            detail = payload.get("error") if isinstance(payload, dict) else response.text
            raise TrafficSwitchError(
                f"sandbox control {method} {url} answered {response.status_code}",
                _tail(str(detail)),
            )
        if not isinstance(payload, dict):
            raise TrafficSwitchError(
                f"sandbox control {url} answered no JSON object", _tail(response.text)
            )
        return payload

    async def _read(self) -> float:
        payload = await self._call("GET", "/control/split")
        value = payload.get("green_percentage")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TrafficSwitchError(f"sandbox split has no green_percentage: {payload!r}")
        return float(value)

    async def read_split(self) -> TrafficSplit:
        """``GET /control/split``. Never raises."""
        try:
            value = await self._read()
        except Exception as exc:
            return TrafficSplit(green_percentage=None, source=self.name, error=str(exc))
        return TrafficSplit(green_percentage=value, source=self.name)

    async def set_green_percentage(self, p: float) -> TrafficSplit:
        """``PUT /control/split``, then verify with a ``GET``.

        Raises:
            TrafficSwitchError: refused, unreachable, or the read-back differs.
        """
        value = _check_percentage(p)
        await self._call("PUT", "/control/split", {"green_percentage": value})
        got = await self._read()
        if abs(got - value) > 1e-9:
            raise TrafficSwitchError(
                f"sandbox read-back after setting {value:g} % green shows {got:g} %"
            )
        return TrafficSplit(green_percentage=got, source=self.name)

    async def request_counts(self) -> dict[Environment, int]:
        """Requests the sandbox traffic generator has had served, per environment.

        Raises:
            TrafficSwitchError: the counters could not be read.
        """
        payload = await self._call("GET", "/control/traffic")
        stats = payload.get("stats")
        served = stats.get("served_by_environment") if isinstance(stats, dict) else None
        if not isinstance(served, dict):
            raise TrafficSwitchError(f"sandbox traffic state has no counts: {payload!r}")
        out: dict[Environment, int] = {}
        for env in Environment:
            count = served.get(env.value, 0)
            if isinstance(count, bool) or not isinstance(count, int):
                raise TrafficSwitchError(f"sandbox count for {env.value} is {count!r}")
            out[env] = count
        return out

    async def aclose(self) -> None:
        """Close the HTTP client if this switch made it."""
        client, self._client = self._client, None
        if client is not None and self._own_client:
            await client.aclose()
