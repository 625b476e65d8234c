"""Sweep results as messages to the App (the loop itself is :mod:`console.sweeps`).

The App never runs a sweep on its own event loop. Sweeps run on a private
asyncio loop in a daemon thread (:class:`~console.sweeps.SweepLoop`), so a probe that blocks (a stuck DNS lookup, a sync client without a
timeout) can delay the data but never the keyboard or the screen. The App awaits
the result and receives it as a :class:`SweepCompleted` (or :class:`SweepFailed`)
message; a newer result replaces an older one still queued
(``Message.can_replace``), so a slow terminal never works through stale frames.
"""

from __future__ import annotations

from textual.message import Message

from backends.models import Snapshot


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
