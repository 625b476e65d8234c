"""The real console in a pseudo-terminal, its output fed to a ``pyte`` screen.

For the tests that drive ``python -m console`` like an operator at an SSH terminal:
:func:`terminal_env` is the environment of such a session (``TERM=xterm-256color``, no
``COLORTERM``, a private state directory), :class:`Terminal` runs the command on the slave
side of a 120x40 pseudo-terminal and reads the screen back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyte

ROOT = Path(__file__).resolve().parents[1]
COLS, ROWS = 120, 40
SCREEN_WAIT_S = 30.0
"""How long to poll the screen for an expected text (a bound on waiting, not a timing test)."""


def terminal_env(
    state_home: Path,
    base: Mapping[str, str] | None = None,
    *,
    drop: tuple[str, ...] = ("TEXTUAL",),
    **extra: str,
) -> dict[str, str]:
    """The environment of an SSH-like 256-colour session at 120x40.

    Args:
        state_home: ``XDG_STATE_HOME`` (the theme choice persists there: keep it private).
        base: The environment to start from (default: this process's).
        drop: Prefixes of variables left out (``TEXTUAL...`` would change the theme).
        extra: More variables to set.
    """
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if k not in ("COLORTERM", "NO_COLOR", "FORCE_COLOR") and not k.startswith(drop)
    }
    env.update(
        TERM="xterm-256color",
        LANG="C.UTF-8",
        LC_ALL="C.UTF-8",
        COLUMNS=str(COLS),
        LINES=str(ROWS),
        XDG_STATE_HOME=str(state_home),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


class Terminal:
    """The console on the slave side of a 120x40 pseudo-terminal; its output feeds pyte."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,  # Textual draws on stderr: it must be the terminal too
                env=env,
                cwd=ROOT,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.master = master
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.ByteStream(self.screen)

    def pump(self, timeout: float) -> None:
        """Feed what the console wrote within ``timeout`` seconds to the screen."""
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select(
                [self.master], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                return
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the console is gone
                return
            if not data:
                return
            self.stream.feed(data)
            deadline = time.monotonic()  # drain what is there, wait no more

    def text(self) -> str:
        """The screen, line by line."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(
        self, what: str, found: Callable[[str], Any], seconds: float = SCREEN_WAIT_S
    ) -> Any:
        """Poll the screen until ``found(text)`` is truthy; returns it."""
        deadline = time.monotonic() + seconds
        while True:
            self.pump(0.2)
            result = found(self.text())
            if result:
                return result
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the console exited ({self.proc.returncode}) while waiting for {what}:\n"
                    + self.text()
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}; the screen:\n{self.text()}")

    def press(self, keys: str | bytes) -> None:
        """Type at the terminal."""
        os.write(self.master, keys.encode() if isinstance(keys, str) else keys)
        self.pump(0.1)

    def kill(self) -> int:
        """SIGKILL the console and reap it; returns its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()

    def close(self) -> None:
        """Make sure the console is gone and reaped, and the terminal closed."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)
