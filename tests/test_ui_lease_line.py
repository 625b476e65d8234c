"""The lease line: its words, and what a countdown tick costs on the terminal.

The countdowns and the holder's age tick every second; they stand apart at the
right end of the line so that a tick resends a few cells, not the line. The
terminal tests drive a real Textual App whose driver feeds everything Textual
writes into a ``pyte`` terminal, and check that after every update the terminal
shows exactly what a full repaint shows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pilot_support import PyteDriver, on_pyte, repainted_from_scratch, terminal
from textual.app import App, ComposeResult

from backends.lease import LeaseHolder
from console.coordination import LeaseStatus, Role
from widgets.lease_status import LeaseLineKeys, LeaseStatusLine, lease_line
from widgets.verdicts import Level

T0 = datetime(2025, 6, 1, 14, 2, 7, tzinfo=UTC)
KEYS = LeaseLineKeys(take_lead="l", hand_over="h", operators="o", rollback="f9")


def status(role: Role, **fields: Any) -> LeaseStatus:
    base: dict[str, Any] = {
        "deployment": "d1",
        "mode": "redis",
        "where": "redis://127.0.0.1:1/0",
        "operator": "bob@host-b",
        "role": role,
        "can_drive": role is Role.DRIVING,
        "reason": "",
    }
    base.update(fields)
    return LeaseStatus(**base)


def holder(operator: str = "alice@host-a", **fields: Any) -> LeaseHolder:
    base: dict[str, Any] = {
        "deployment": "d1",
        "operator": operator,
        "fence": 7,
        "acquired_at": T0 - timedelta(seconds=93),
        "expires_at": T0 + timedelta(seconds=12),
        "mode": "redis",
    }
    base.update(fields)
    return LeaseHolder(**base)


def driving(deadline_in_s: float) -> Any:
    own = holder("bob@host-b")
    return lease_line(
        status(Role.DRIVING, holder=own, fence=7, deadline_in_s=deadline_in_s), T0, KEYS
    )


# --- the words ---------------------------------------------------------------------------


def test_the_countdown_and_the_age_tick_apart_from_the_steady_parts() -> None:
    line = driving(12.4)
    # In the line's own order the countdown follows the time the lease was taken.
    assert line.plain.startswith("▶ driving bob@host-b · fence 7 · since ")
    assert line.plain.endswith(" · lease runs out here in 12 s · h: hand over · o: operators")
    assert line.clock.plain == "lease runs out here in 12 s"
    assert "runs out" not in line.steady.plain
    assert line.steady.plain.startswith("▶ driving bob@host-b · fence 7 · since ")
    assert line.steady.plain.endswith("h: hand over · o: operators")

    seen = lease_line(status(Role.OBSERVING, holder=holder()), T0, KEYS)
    assert seen.level is Level.WARNING
    # In the line's own order the age stays beside the time it counts from ...
    assert "drives since " in seen.plain and " (93 s ago) · lease expires in 12 s · fence 7" in (
        seen.plain
    )
    # ... on screen both moving parts stand at the end.
    assert seen.clock.plain == "(93 s ago) · lease expires in 12 s"
    assert "ago" not in seen.steady.plain and "expires" not in seen.steady.plain
    assert seen.steady.plain.endswith(
        "fence 7 · l: take the lead once the lease is free · o: operators"
    )


def renewed(deadline_in_s: float, lease_s: float = 15.0) -> Any:
    """The driving console's line as its coordinator reports it: renewed, with a deadline."""
    own = holder(
        "bob@host-b",
        renewed_at=T0 - timedelta(seconds=2),
        expires_at=T0 - timedelta(seconds=2) + timedelta(seconds=lease_s),
    )
    return lease_line(
        status(Role.DRIVING, holder=own, fence=7, deadline_in_s=deadline_in_s), T0, KEYS
    )


def test_renewals_on_time_say_so_and_a_late_one_counts_down() -> None:
    # A 15 s lease renewed every 5 s: the local deadline cycles between 13.5 s and 8.5 s.
    for deadline in (13.5, 11.0, 8.5):
        line = renewed(deadline)
        assert "lease renewed on time" in line.plain and "runs out" not in line.plain
        assert line.ticking == frozenset(), "nothing moves while renewals come on time"
    # A renewal is late: under half the lease left, the seconds count down.
    late = renewed(7.2)
    assert "lease runs out here in 7 s" in late.plain
    assert late.clock.plain == "lease runs out here in 7 s"
    assert "renewed on time" not in late.plain
    # Without the renewal times to judge by, the countdown always shows.
    assert "lease runs out here in 12 s" in driving(12.4).plain


def test_a_lock_file_lease_and_a_cut_off_console_have_nothing_ticking() -> None:
    lock = lease_line(
        status(Role.DRIVING, mode="lock_file", holder=holder("bob@host-b", mode="lock_file")),
        T0,
        KEYS,
    )
    assert lock.ticking == frozenset() and lock.clock.plain == ""
    why = "lease renewal failed (Redis did not answer); read-only until a renewal succeeds"
    cut = lease_line(status(Role.SUSPENDED, reason=why), T0, KEYS)
    assert cut.level is Level.CRITICAL and cut.clock.plain == ""
    assert cut.steady.plain == cut.plain and why in cut.plain


# --- on the terminal -----------------------------------------------------------------------


class LineApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LeaseStatusLine(id="lease-line")


async def test_a_tick_resends_a_few_cells_and_the_terminal_stays_right() -> None:
    width = 120
    app = LineApp()
    on_pyte(app, width, 6)
    async with app.run_test(size=(width, 6), headless=False) as pilot:
        widget = app.query_one(LeaseStatusLine)
        widget.show(driving(13.4))
        await pilot.pause(0.05)
        first = terminal()[0]
        assert first.startswith(" ▶ driving bob@host-b · fence 7 · since ")
        assert first.endswith("lease runs out here in 13 s")
        assert first.index("h: hand over") < first.index("lease runs out")

        widget.show(driving(12.4))  # the first change after mounting may repaint it all
        await pilot.pause(0.05)
        costs: list[int] = []
        full: list[int] = []
        # Renewed every 5 s: the countdown goes 13 .. 9, then back to 13 (two digits, one).
        for deadline in (11.4, 10.4, 9.4, 8.6, 13.4, 12.4):
            before = PyteDriver.written
            widget.show(driving(deadline))
            await pilot.pause(0.05)
            costs.append(PyteDriver.written - before)
            shown = terminal()
            assert f"lease runs out here in {deadline:.0f} s" in shown[0]
            before = PyteDriver.written
            assert shown == await repainted_from_scratch(app, pilot), deadline
            full.append(PyteDriver.written - before)
        # A tick resends the clock column (about 30 cells with their colours), not the
        # line, and never moves the layout.
        assert max(costs) < min(full) / 2, (costs, full)
        assert max(costs) < 120, costs
        assert costs[3] == 0, "9.4 s and 8.6 s both read 9 s: nothing to send"

        # Handing over: the line changes its shape, the clock column goes away.
        widget.show(lease_line(status(Role.FREE), T0, LeaseLineKeys(take_lead="l")))
        await pilot.pause(0.05)
        shown = terminal()
        assert shown[0] == " ▲ read-only · nobody holds the lease · l: take the lead"
        assert shown == await repainted_from_scratch(app, pilot)


async def test_a_narrow_line_wraps_its_steady_parts_and_keeps_the_clock() -> None:
    width = 60
    app = LineApp()
    on_pyte(app, width, 6)
    async with app.run_test(size=(width, 6), headless=False) as pilot:
        widget = app.query_one(LeaseStatusLine)
        widget.show(lease_line(status(Role.OBSERVING, holder=holder()), T0, KEYS))
        await pilot.pause(0.05)
        shown = terminal()
        text = "\n".join(shown)
        assert "(93 s ago) · lease expires in 12 s" in text
        assert "take the lead" in text and "operators" in text
        assert widget.plain_text.startswith("▲ read-only · alice@host-a drives since ")
        assert shown == await repainted_from_scratch(app, pilot)
