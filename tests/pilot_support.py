"""Waiting on Pilot-driven apps, and the notifications they showed.

Both are bounded by wall-clock time, not by a count of pauses: on a loaded CI machine a
``pilot.pause(0.01)`` can take far longer than asked, and a notification's own timeout can
remove it from the screen before the test looks. Neither is a timing assertion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyte
from textual.app import App
from textual.css.query import NoMatches
from textual.drivers.headless_driver import HeadlessDriver

WAIT_S = 45.0
"""How long a test waits for a condition before it fails (a bound, not a target)."""


async def wait_until(
    pilot: Any,
    condition: Callable[[], bool],
    what: str,
    seconds: float = WAIT_S,
    step_s: float = 0.02,
) -> None:
    """Let the app(s) run until ``condition`` holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} ({seconds:g} s)")
        await pilot.pause(step_s)


def notes_seen(app: Any) -> list[str]:
    """Every notification the app has shown, in order, expired ones included.

    Recorded by the ``_record_notifications`` fixture in ``conftest.py``.
    """
    return list(app.__dict__.get("_notes_seen", ()))


async def click_when_drawn(pilot: Any, selector: str, seconds: float = WAIT_S) -> None:
    """Click a widget once the screen in front has laid it out.

    A click lands where the widget is drawn; right after a screen is pushed it may not have
    a region yet, and the click would hit nothing.
    """
    app = pilot.app

    def drawn() -> bool:
        try:
            return bool(app.screen.query_one(selector).region.area > 0)
        except NoMatches:  # pushed, but its widgets are not mounted yet
            return False

    await wait_until(pilot, drawn, f"{selector} drawn", seconds)
    await pilot.click(selector)


# --- a real terminal behind Pilot -------------------------------------------------------------


class PyteDriver(HeadlessDriver):
    """A driver that is not headless: everything Textual writes goes to a pyte terminal
    (:func:`on_pyte`), and is counted in :attr:`written` (bytes)."""

    screen: pyte.Screen
    stream: pyte.Stream
    written = 0

    @property
    def is_headless(self) -> bool:
        return False

    def write(self, data: str) -> None:
        PyteDriver.written += len(data.encode())
        PyteDriver.stream.feed(data)


def on_pyte(app: App[Any], width: int, height: int) -> None:
    """Have ``app`` (run with ``run_test(headless=False)``) draw on a fresh pyte terminal."""
    PyteDriver.screen = pyte.Screen(width, height)
    PyteDriver.stream = pyte.Stream(PyteDriver.screen)
    app.driver_class = PyteDriver


def terminal() -> list[str]:
    """What the terminal shows."""
    return [line.rstrip() for line in PyteDriver.screen.display]


async def repainted_from_scratch(app: App[Any], pilot: Any) -> list[str]:
    """What the terminal shows after every widget re-renders and repaints in full."""
    for widget in app.screen.walk_children(with_self=True):
        widget.refresh()
    await pilot.pause(0.05)
    return terminal()
