"""Where sweeps run: the snapshot-source contract, its own event loop, and the result messages.

The App never runs a sweep on its own event loop. Sweeps run on a private
asyncio loop in a daemon thread (:class:`SweepLoop`), so a probe that blocks
(a stuck DNS lookup, a sync client without a timeout) can delay the data but
never the keyboard or the screen. The App awaits the result and receives it
as a :class:`SweepCompleted` (or :class:`SweepFailed`) message; a newer
result replaces an older one still queued (``Message.can_replace``), so a
slow terminal never works through stale frames.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar, runtime_checkable

from textual.message import Message

from backends.models import Snapshot

T = TypeVar("T")


@runtime_checkable
class SnapshotSource(Protocol):
    """What the dashboard reads: one immutable :class:`Snapshot` per sweep.

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

    def call(self, func: Callable[[], T]) -> Future[T]:
        """Run a plain callable on the loop's thread (e.g. a source factory)."""

        async def _call() -> T:
            return func()

        return self.submit(_call())

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


class SweepCompleted(Message):
    """A sweep finished; carries its snapshot."""

    def __init__(self, snapshot: Snapshot, duration_s: float) -> None:
        """Create the message.

        Args:
            snapshot: The sweep's result.
            duration_s: Wall-clock seconds the sweep took, as seen by the App.
        """
        super().__init__()
        self.snapshot = snapshot
        self.duration_s = duration_s

    def can_replace(self, message: Message) -> bool:
        """Drop this (older, still queued) result when a newer one is queued behind it.

        Textual asks the message about to be handled whether the next queued
        message may take its place; a newer snapshot makes this one stale.
        """
        return isinstance(message, SweepCompleted)


class SweepFailed(Message):
    """A sweep raised or timed out (a bug or a hang in the source, not an observation)."""

    def __init__(self, error: str, duration_s: float) -> None:
        """Create the message.

        Args:
            error: What went wrong, for the operator.
            duration_s: Wall-clock seconds until it failed.
        """
        super().__init__()
        self.error = error
        self.duration_s = duration_s

    def can_replace(self, message: Message) -> bool:
        """Drop this (older) failure when any newer sweep result is queued behind it."""
        return isinstance(message, SweepCompleted | SweepFailed)
