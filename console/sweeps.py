"""Where sweeps run, without Textual: the private sweep loop and the early first sweep.

The console never runs a sweep on the UI's event loop. :class:`SweepLoop` is a
private asyncio loop in a daemon thread, so a probe that blocks (a stuck DNS
lookup, a sync client without a timeout) can delay the data but never the
keyboard or the screen.

:func:`start_first_sweep` is the console's cold start: the CLI calls it as soon
as the configuration is loaded, *before* it imports Textual, so the snapshot
source (the monitor, with httpx and the back-ends behind it) is built and its
first sweep is on the wire while the UI is still importing and painting its
first frame. The App then takes over the loop, the source and that first
result (:class:`FirstSweep`). Nothing here imports Textual.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from backends.models import Snapshot
    from console.config import AppConfig

T = TypeVar("T")


@runtime_checkable
class SnapshotSource(Protocol):
    """What the dashboard reads: one immutable :class:`~backends.models.Snapshot` per sweep.

    The real one is :class:`console.monitor.Monitor`; tests pass a fake that
    returns fixed snapshots. ``sweep`` must not raise for an observation
    failure (that is a state inside the snapshot); if it raises anyway, the
    dashboard shows the error and backs off.
    """

    async def sweep(self) -> Snapshot:
        """Observe the whole estate once."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


SourceFactory = Callable[["AppConfig"], SnapshotSource]
"""Builds the snapshot source from the config (called on the sweep thread)."""


def default_source_factory(config: AppConfig) -> SnapshotSource:
    """The real source: :class:`console.monitor.Monitor` with the configured rule inputs."""
    from console.monitor import Monitor
    from console.rule_inputs import ConfiguredRuleInputs

    return Monitor(config, inputs=ConfiguredRuleInputs(config))


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` at the OS level too (Linux; best effort).

    Python names its threads for itself only (before 3.14); with the OS name the
    sweep thread's CPU shows apart from the UI's in ``top -H`` and in the
    dashboard benchmark, which is where the time of a slow probe goes.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_name = 15
        ctypes.CDLL(None).prctl(pr_set_name, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        return


class SweepLoop:
    """A private asyncio event loop in a daemon thread, for the snapshot source."""

    def __init__(self, name: str = "acgs-sweeps") -> None:
        """Start the loop's thread.

        Args:
            name: The thread's name (shows in py-spy and thread dumps, and on Linux in
                ``top -H`` and ``/proc/<pid>/task/*/comm``).
        """
        self.name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        name_os_thread(self.name)
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # Run the callbacks queued before the stop (a submit's task is created by one), so
        # no submitted coroutine is left never awaited; then let the cancelled tasks clean up.
        self._loop.run_until_complete(asyncio.sleep(0))
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    @property
    def running(self) -> bool:
        """The loop's thread is alive."""
        return self._thread.is_alive()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run a coroutine on the loop; returns a thread-safe future.

        Raises:
            RuntimeError: The loop has stopped (the coroutine is closed, not left pending).
        """
        if self._loop.is_closed() or not self._thread.is_alive():
            coro.close()
            raise RuntimeError(f"{self.name} has stopped")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:
            coro.close()
            raise

    async def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Await, from another loop, a coroutine run on this loop.

        Args:
            coro: The coroutine.
            timeout: Seconds before it is cancelled (on this loop too).

        Raises:
            TimeoutError: It took longer than ``timeout``.
        """
        future = self.submit(coro)
        wrapped: Awaitable[T] = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(wrapped, timeout)
        except (TimeoutError, asyncio.CancelledError):
            future.cancel()
            raise

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the loop and wait (briefly) for its thread."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


@dataclass(frozen=True)
class FirstSweepResult:
    """The source, built on the sweep thread, and how its first sweep went.

    Exactly one of ``snapshot`` and ``error`` is set when ``source`` is; a source
    that could not be built leaves ``source`` None and says why in ``error``.
    """

    source: SnapshotSource | None
    snapshot: Snapshot | None
    error: str | None


async def _build_and_sweep(
    factory: SourceFactory,
    config: AppConfig,
    timeout_s: float,
    go: threading.Event | None,
    built: list[SnapshotSource],
) -> FirstSweepResult:
    try:
        source = factory(config)
    except Exception as exc:
        return FirstSweepResult(
            None, None, f"cannot start the monitor: {type(exc).__name__}: {exc}"
        )
    built.append(source)
    if go is not None and not go.is_set():
        # Probes timed while another thread imports hold their answers for the GIL: the
        # first latencies would read hundreds of ms. Sweep once the UI is imported.
        await asyncio.get_running_loop().run_in_executor(None, go.wait, GO_WAIT_S)
    try:
        snapshot = await asyncio.wait_for(source.sweep(), timeout_s)
    except TimeoutError:
        return FirstSweepResult(source, None, f"no answer within {timeout_s:g} s")
    except Exception as exc:
        return FirstSweepResult(source, None, f"{type(exc).__name__}: {exc}")
    return FirstSweepResult(source, snapshot, None)


GO_WAIT_S = 3.0
"""The first sweep waits at most this long for :meth:`FirstSweep.go`."""


@dataclass
class FirstSweep:
    """A sweep loop with the source being built and its first sweep running on it."""

    loop: SweepLoop
    future: Future[FirstSweepResult]
    started: float
    """``time.monotonic()`` when it was started."""
    ready: threading.Event | None = None
    """Set by :meth:`go`; the sweep (not the source's build) waits for it."""
    built: list[SnapshotSource] = field(default_factory=list)
    """The source once built (before its first sweep ends): closed by whoever gives up."""

    def go(self) -> None:
        """Let the first sweep run (the caller's own heavy imports are done)."""
        if self.ready is not None:
            self.ready.set()

    def wait(self, timeout_s: float) -> bool:
        """Block (without the GIL) until the first sweep is done or ``timeout_s`` passed.

        The caller waits instead of starting its own work so the sweep's probes are
        timed on a quiet interpreter, not against the caller holding the GIL.

        Returns:
            Whether it is done.
        """
        done, _ = wait([self.future], timeout=timeout_s)
        return bool(done)


def sweep_timeout_s(interval_s: float) -> float:
    """A sweep taking longer than this is abandoned (each probe has its own, shorter one)."""
    return max(10.0, 3 * interval_s)


def start_first_sweep(
    config: AppConfig,
    factory: SourceFactory = default_source_factory,
    *,
    loop: SweepLoop | None = None,
    timeout_s: float | None = None,
    hold: bool = False,
) -> FirstSweep:
    """Build the source on the sweep thread and run its first sweep there, starting now.

    The CLI calls this before it imports the UI, so the source's imports and the
    first sweep's round trips overlap the UI's start-up.

    Args:
        config: The console configuration.
        factory: Builds the source (on the sweep thread).
        loop: The sweep loop to use (default: a new one).
        timeout_s: Longest first sweep (default: :func:`sweep_timeout_s` of the refresh).
        hold: Build the source now but sweep only after :meth:`FirstSweep.go` (or
            :data:`GO_WAIT_S`), so the probes are not timed against the caller's imports.
    """
    loop = SweepLoop() if loop is None else loop
    timeout = sweep_timeout_s(config.refresh_interval_s) if timeout_s is None else timeout_s
    ready = threading.Event() if hold else None
    built: list[SnapshotSource] = []
    future = loop.submit(_build_and_sweep(factory, config, timeout, ready, built))
    return FirstSweep(loop, future, time.monotonic(), ready, built)
