"""The sandbox fleet: blue and green, nine orchestrators each, ingresses, control, traffic.

This module owns the process that is the sandbox estate's ACGS side. It binds,
on free loopback ports, one listener per orchestrator (18), one ingress per
environment (what the load balancer's ``blue``/``green`` servers point at) and
one control endpoint, and runs the traffic generator. Run it as::

    python -m console.sandbox.fleet --hash H --state-file FILE [--rate 150] [--target URL]

Once everything listens it writes ``FILE`` (atomically) as::

    {"control_url": "http://127.0.0.1:P",
     "ingress": {"blue": "http://127.0.0.1:P", "green": "http://127.0.0.1:P"},
     "services": [{"environment": "blue", "service": "performance_suite",
                   "base_url": "http://127.0.0.1:P"}, ... 18 entries]}

and runs until SIGTERM or SIGINT (or until its parent process goes away).

Control endpoint (JSON in and out):

- ``GET /control/state``: faults, split, traffic settings and counts, listeners.
- ``POST /control/fault`` ``{"environment", "service"?, "kind", "value"?}``.
- ``POST /control/clear`` ``{"environment"?, "service"?}`` (empty clears all).
- ``GET|PUT /control/split`` ``{"green_percentage": p}``: the in-process router.
- ``PUT /control/traffic`` ``{"target": url|null, "rate": rps, "probe": {env: rps}}``,
  every field optional.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import prometheus_client

from console.sandbox.faults import (
    ENVIRONMENTS,
    SERVICES,
    FaultError,
    FaultKind,
    check_target,
    make_fault,
)
from console.sandbox.httpd import HttpServer, Request, Response
from console.sandbox.services import FaultBoard, Ingress, SandboxService
from console.sandbox.traffic import TrafficGenerator

DEFAULT_HASH = "cdd01ef066bc6cf2"
DEFAULT_RATE = 150.0


def _json(status: int, payload: object) -> Response:
    return Response(status, json.dumps(payload).encode(), "application/json")


class _BadRequest(Exception):
    """A control request the endpoint refuses, with the message to send back."""


def _body(request: Request) -> dict[str, Any]:
    if not request.body.strip():
        return {}
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _BadRequest("body must be a JSON object")
    return data


class Fleet:
    """Blue and green orchestrators, their ingresses, the control endpoint and the traffic."""

    def __init__(
        self,
        constitutional_hash: str = DEFAULT_HASH,
        rate: float = DEFAULT_RATE,
        target: str | None = None,
        seed: int | None = None,
    ) -> None:
        """Create the fleet (nothing listens until :meth:`start`).

        Args:
            constitutional_hash: The hash every healthy service carries.
            rate: Traffic generator rate, requests/s.
            target: Where traffic goes (the HAProxy frontend); ``None`` for the router.
            seed: Seed of the random source (latencies, cache hits, errors).
        """
        self.constitutional_hash = constitutional_hash
        self.board = FaultBoard()
        rng = random.Random(seed)
        self.services: dict[tuple[str, str], SandboxService] = {
            (env, name): SandboxService(env, name, constitutional_hash, self.board, rng)
            for env in ENVIRONMENTS
            for name in SERVICES
        }
        self.ingresses = {
            env: Ingress(
                env,
                [self.services[(env, name)] for name in SERVICES],
                constitutional_hash,
                self.board,
            )
            for env in ENVIRONMENTS
        }
        self.control = HttpServer(self._control)
        self._rate = rate
        self._target = target
        self.traffic: TrafficGenerator | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Bind every listener on a free loopback port and start the traffic."""
        for service in self.services.values():
            await service.server.start()
        for ingress in self.ingresses.values():
            await ingress.server.start()
        await self.control.start()
        self.traffic = TrafficGenerator(
            {env: ingress.server.url for env, ingress in self.ingresses.items()},
            self.constitutional_hash,
            rate=self._rate,
            target=self._target,
        )
        self.traffic.start()

    async def stop(self) -> None:
        """Stop the traffic, wake hung requests and close every listener."""
        if self.traffic is not None:
            await self.traffic.stop()
        self.board.table.clear()
        self.board.notify()
        await self.control.close()
        for ingress in self.ingresses.values():
            await ingress.server.close()
        for service in self.services.values():
            await service.server.close()

    def state_document(self) -> dict[str, Any]:
        """The state file's content: control URL, ingresses and the 18 services.

        Returns:
            The JSON-ready document (the test harness and the CLI read it).
        """
        return {
            "control_url": self.control.url,
            "ingress": {env: ingress.server.url for env, ingress in self.ingresses.items()},
            "services": [
                {"environment": env, "service": name, "base_url": svc.base_url}
                for (env, name), svc in self.services.items()
            ],
        }

    async def _reconcile_listeners(self) -> None:
        """Close or reopen listeners so that *down* faults are connection refused."""
        table = self.board.table
        for (env, name), service in self.services.items():
            down = FaultKind.DOWN in table.effective(env, name)
            if down and service.server.listening:
                await service.server.close()
            elif not down and not service.server.listening:
                await service.server.start()
        for env, ingress in self.ingresses.items():
            down = FaultKind.DOWN in table.environment_faults(env)
            if down and ingress.server.listening:
                await ingress.server.close()
            elif not down and not ingress.server.listening:
                await ingress.server.start()

    def _listeners(self) -> dict[str, bool]:
        listening = {f"{e}/{n}": s.server.listening for (e, n), s in self.services.items()}
        listening.update({f"{e}/ingress": i.server.listening for e, i in self.ingresses.items()})
        return listening

    def _split(self) -> dict[str, Any]:
        assert self.traffic is not None
        green = self.traffic.router.green_percentage
        return {
            "green_percentage": green,
            "blue_percentage": 100.0 - green,
            "router_active": self.traffic.target is None,
        }

    def control_state(self) -> dict[str, Any]:
        """What ``GET /control/state`` answers.

        Returns:
            Hash, faults, split, traffic and listener states.
        """
        assert self.traffic is not None
        return {
            "constitutional_hash": self.constitutional_hash,
            "faults": self.board.table.as_json(),
            "held_requests": self.board.held,
            "split": self._split(),
            "traffic": self.traffic.state(),
            "listening": self._listeners(),
            **self.state_document(),
        }

    async def _control(self, request: Request) -> Response:
        routes = {
            "/control/state": ("GET",),
            "/control/fault": ("POST",),
            "/control/clear": ("POST",),
            "/control/split": ("GET", "PUT"),
            "/control/traffic": ("GET", "PUT"),
        }
        allowed = routes.get(request.path)
        if allowed is None:
            return _json(404, {"error": f"no such control path {request.path!r}"})
        if request.method not in allowed:
            return _json(405, {"error": f"{request.path} accepts {', '.join(allowed)}"})
        try:
            async with self._lock:
                return await self._dispatch(request)
        except (_BadRequest, FaultError, ValueError) as exc:
            return _json(400, {"error": str(exc)})
        except OSError as exc:
            # Reopening a listener after *down* failed: its port was taken meanwhile.
            return _json(500, {"error": f"cannot reopen a listener: {exc}"})

    async def _dispatch(self, request: Request) -> Response:
        assert self.traffic is not None
        if request.path == "/control/state":
            return _json(200, self.control_state())
        if request.path == "/control/fault":
            body = _body(request)
            env, service = check_target(body.get("environment"), body.get("service"))
            if "kind" not in body:
                raise _BadRequest("missing field 'kind'")
            fault = make_fault(body["kind"], body.get("value"))
            self.board.table.set(env, service, fault)
            self.board.notify()
            await self._reconcile_listeners()
            return _json(200, {"ok": True, "faults": self.board.table.as_json()})
        if request.path == "/control/clear":
            body = _body(request)
            env_raw, svc_raw = body.get("environment"), body.get("service")
            if env_raw is None and svc_raw is not None:
                raise _BadRequest("clearing a service needs its environment")
            if env_raw is None:
                self.board.table.clear()
            else:
                env, service = check_target(env_raw, svc_raw)
                self.board.table.clear(env, service)
            self.board.notify()
            await self._reconcile_listeners()
            return _json(200, {"ok": True, "faults": self.board.table.as_json()})
        if request.path == "/control/split":
            if request.method == "PUT":
                value = _body(request).get("green_percentage")
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise _BadRequest(f"green_percentage must be a number 0..100, got {value!r}")
                self.traffic.router.green_percentage = float(value)
            return _json(200, self._split())
        # /control/traffic
        if request.method == "PUT":
            body = _body(request)
            rate = body.get("rate")
            if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
                raise _BadRequest(f"rate must be a number, got {rate!r}")
            target = body.get("target")
            if target is not None and not isinstance(target, str):
                raise _BadRequest(f"target must be a URL string or null, got {target!r}")
            probe = body.get("probe")
            if probe is not None and not (
                isinstance(probe, dict)
                and all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in probe.values()
                )
            ):
                raise _BadRequest(f"probe must map environment -> requests/s, got {probe!r}")
            self.traffic.configure(
                rate=None if rate is None else float(rate),
                target=target,
                set_target="target" in body,
                probes=probe,
            )
        return _json(200, self.traffic.state())


def write_state_file(path: Path, document: dict[str, Any]) -> None:
    """Write the state file atomically (readers never see half a document).

    Args:
        path: Destination.
        document: JSON-ready content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fleet-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    Path(tmp).replace(path)


async def run_fleet(
    state_file: Path,
    constitutional_hash: str = DEFAULT_HASH,
    rate: float = DEFAULT_RATE,
    target: str | None = None,
    seed: int | None = None,
    exit_with_parent: bool = True,
) -> None:
    """Run the fleet until SIGTERM/SIGINT (or the parent's exit).

    Args:
        state_file: Where to write the state document once listening.
        constitutional_hash: The hash every healthy service carries.
        rate: Traffic generator rate, requests/s.
        target: Traffic target URL, or ``None`` for the in-process router.
        seed: Random seed.
        exit_with_parent: Stop when the process that started us goes away, so a
            killed test run or console never leaves a fleet behind.
    """
    # *_created series only add noise for Prometheus and the direct scrape.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    fleet = Fleet(constitutional_hash, rate=rate, target=target, seed=seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()
    await fleet.start()
    try:
        write_state_file(state_file, fleet.state_document())
        print(
            f"sandbox fleet listening; control {fleet.control.url}; state {state_file}",
            file=sys.stderr,
            flush=True,
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if exit_with_parent and os.getppid() != parent:
                break
    finally:
        await fleet.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m console.sandbox.fleet",
        description="Run the sandbox's blue and green ACGS fleets on loopback.",
    )
    parser.add_argument("--hash", default=DEFAULT_HASH, help="constitutional hash to carry")
    parser.add_argument("--state-file", required=True, type=Path, help="where to write URLs")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="traffic requests/s")
    parser.add_argument("--target", default=None, help="send traffic here (HAProxy frontend)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument(
        "--keep-without-parent",
        action="store_true",
        help="keep running when the parent process exits",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m console.sandbox.fleet``.

    Args:
        argv: Arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        Exit status.
    """
    args = _parser().parse_args(argv)
    if not 0 <= args.rate <= 5000:
        print(f"--rate must be between 0 and 5000, got {args.rate:g}", file=sys.stderr)
        return 2
    if args.target is not None:
        try:
            TrafficGenerator({}, args.hash, target=args.target)
        except ValueError as exc:
            print(f"--target: {exc}", file=sys.stderr)
            return 2
    asyncio.run(
        run_fleet(
            args.state_file,
            args.hash,
            rate=args.rate,
            target=args.target,
            seed=args.seed,
            exit_with_parent=not args.keep_without_parent,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
