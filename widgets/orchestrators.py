"""The orchestrator table of one environment, updated in place by row key.

One row per orchestrator (the row key is the service name), four columns:
state (symbol and word), name, latency, and the body/header hash verdict.

Each column is its own widget, and each repaints only the cells that
changed (:class:`widgets.repaint.QuietStatic`). Textual sends a changed span
from the left edge of the widget it sits in, so in one wide table (a
``DataTable``) a latency moving from 24 to 25 ms rewrote the state and the
name before it, on nine rows of each panel, every second; with a widget per
column only the latency digits travel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Static

from backends.models import ORCHESTRATORS, ServiceHealth
from widgets.repaint import QuietStatic, wobbles
from widgets.verdicts import (
    SYMBOLS,
    Badge,
    Level,
    format_latency,
    hash_badge,
    service_badge,
    service_label,
)

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("state", "state", 11),
    ("name", "orchestrator", 20),
    ("latency", "latency", 7),
    ("hash", "hash", 13),
)
"""(column key, label, width) of each column."""

NOT_PROBED = Badge(Level.UNKNOWN, "unknown")

Cell = tuple[str, Level | None]
"""A cell's plain text and level (None: no colour)."""

CELL_COLOUR: dict[Level, str] = {
    Level.OK: "$success",
    Level.WARNING: "$warning",
    Level.CRITICAL: "$error bold",
    # The muted foreground as a colour (``$text-muted`` is a blend only CSS resolves).
    Level.UNKNOWN: "$foreground-muted",
    Level.STALE: "$stale",
}
"""The style of a cell's text at each level."""


def ordered_services(names: Iterable[str]) -> list[str]:
    """The runbook's nine first, in its order, then any others alphabetically."""
    names = list(dict.fromkeys(names))
    known = [n for n in ORCHESTRATORS if n in names]
    return known + sorted(n for n in names if n not in ORCHESTRATORS)


def row_cells(service: str, health: ServiceHealth | None) -> dict[str, Cell]:
    """The four cells of one orchestrator's row."""
    if health is None:
        return {
            "state": (NOT_PROBED.text, Level.UNKNOWN),
            "name": (service_label(service), None),
            "latency": ("—", None),
            "hash": (NOT_PROBED.text, Level.UNKNOWN),
        }
    state = service_badge(health.state)
    verdict = hash_badge(health.body_hash_verdict, health.header_hash_verdict)
    return {
        "state": (state.text, state.level),
        "name": (service_label(service), None),
        "latency": (format_latency(health.latency_ms), None),
        "hash": (verdict.text, verdict.level),
    }


def cell_content(cell: Cell, *, stale: bool) -> Content:
    """A cell as shown: stale data greys out, and a stale badge loses its tick mark."""
    text, level = cell
    if stale:
        if level is not None and len(text) > 2 and text[1] == " ":
            text = SYMBOLS[Level.STALE] + text[1:]
        return Content.styled(text, "$stale")
    if level is None:
        return Content(text)
    return Content.styled(text, CELL_COLOUR[level])


class OrchestratorTable(Vertical):
    """The nine orchestrators of one environment (display only)."""

    DEFAULT_CSS = (
        """
    OrchestratorTable {
        height: auto;
        max-height: 12;
        background: $surface;
    }
    OrchestratorTable > .orchestrators--header {
        height: 1;
        color: $text-muted;
        text-style: bold;
        text-wrap: nowrap;
    }
    OrchestratorTable > Horizontal {
        height: auto;
    }
    OrchestratorTable .orchestrators--column {
        height: auto;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """
        + "".join(
            f"OrchestratorTable .orchestrators--{key} {{ width: {width + 2}; }}\n"
            for key, _, width in COLUMNS[:-1]
        )
        + """
    OrchestratorTable .orchestrators--hash {
        width: 1fr;
    }
    """
    )

    def __init__(self, services: Sequence[str], *, id: str | None = None) -> None:
        """Create the table with one row per configured orchestrator.

        Args:
            services: The orchestrator names the configuration lists.
            id: The widget id.
        """
        super().__init__(id=id)
        self._order = ordered_services(services)
        self._cells: dict[tuple[str, str], Cell] = {
            (service, column): cell
            for service in self._order
            for column, cell in row_cells(service, None).items()
        }
        self._stale = False
        self._latency: dict[str, tuple[float, datetime]] = {}
        """The latency on screen per orchestrator, and the data time it was painted."""

    def compose(self) -> ComposeResult:
        """The header line, then one widget per column with a line per orchestrator."""
        yield Static(
            Content("".join(f" {label:<{width}} " for _, label, width in COLUMNS)),
            classes="orchestrators--header",
        )
        with Horizontal():
            for key, _, _ in COLUMNS:
                yield QuietStatic(
                    self._column(key), classes=f"orchestrators--column orchestrators--{key}"
                )

    def _column(self, key: str) -> Content:
        return Content("\n").join(
            cell_content(self._cells[(service, key)], stale=self._stale) for service in self._order
        )

    @property
    def row_keys(self) -> list[str]:
        """The row keys (service names), in display order."""
        return list(self._order)

    @property
    def row_count(self) -> int:
        """How many orchestrator rows the table has."""
        return len(self._order)

    def cell_text(self, service: str, column: str) -> str:
        """The plain text of one cell, before stale marking (for tests and reports)."""
        return self._cells[(service, column)][0]

    def get_cell(self, service: str, column: str) -> Content:
        """One cell as shown (stale marking included)."""
        return cell_content(self._cells[(service, column)], stale=self._stale)

    def _settled(self, service: str, health: ServiceHealth | None, at: datetime | None) -> bool:
        """The latency on screen may stay: the new one only wobbles around it (same state)."""
        shown = self._latency.get(service)
        if at is None or shown is None or health is None or health.latency_ms is None:
            return False
        return wobbles(shown[0], health.latency_ms, (at - shown[1]).total_seconds())

    def show(
        self, services: Sequence[ServiceHealth], *, stale: bool, at: datetime | None = None
    ) -> None:
        """Show one sweep's health results; only columns with a changed cell repaint, and
        within them only the changed cells.

        A latency that only wobbles stays as shown for a few seconds (see
        :func:`widgets.repaint.wobbles`); states and hash verdicts show at once.

        Args:
            services: The environment's health results.
            stale: The sweep is older than its allowed age (grey everything).
            at: When the results were taken (None: show every latency as measured).
        """
        restyle = stale != self._stale
        self._stale = stale
        by_name = {s.service: s for s in services}
        grown = False
        for service in ordered_services(by_name):
            if service not in self._order:
                self._order.append(service)
                grown = True
        changed: set[str] = set()
        for service in self._order:
            health = by_name.get(service)
            settled = self._settled(service, health, at)
            for column, cell in row_cells(service, health).items():
                if self._cells.get((service, column)) == cell:
                    continue
                if column == "latency" and settled:
                    continue
                self._cells[(service, column)] = cell
                changed.add(column)
                if column == "latency":
                    if health is None or health.latency_ms is None or at is None:
                        self._latency.pop(service, None)
                    else:
                        self._latency[service] = (health.latency_ms, at)
        for key, _, _ in COLUMNS:
            if restyle or grown or key in changed:
                self.query_one(f".orchestrators--{key}", QuietStatic).show_content(
                    self._column(key)
                )

    def restyle(self) -> None:
        """Repaint every cell (after a theme change; theme variables re-resolve as they paint)."""
        for column in self.query(QuietStatic):
            column.refresh()
