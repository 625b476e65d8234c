"""The orchestrator table of one environment, updated in place by row key.

One row per orchestrator (the row key is the service name), four columns:
state (symbol and word), name, latency, and the body/header hash verdict.
Rows are created once; later snapshots change only the cells whose text or
level changed, so a quiet estate costs no repaint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.text import Text
from textual.widgets import DataTable

from backends.models import ORCHESTRATORS, ServiceHealth
from widgets.styling import RichPalette
from widgets.verdicts import (
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


class OrchestratorTable(DataTable[Text]):
    """The nine orchestrators of one environment (display only, no cursor)."""

    can_focus = False

    DEFAULT_CSS = """
    OrchestratorTable {
        height: auto;
        max-height: 12;
        background: $surface;
        scrollbar-size: 0 0;
    }
    OrchestratorTable > .datatable--header {
        background: $surface;
        color: $text-muted;
        text-style: bold;
    }
    """

    def __init__(self, services: Sequence[str], *, id: str | None = None) -> None:
        """Create the table with one row per configured orchestrator.

        Args:
            services: The orchestrator names the configuration lists.
            id: The widget id.
        """
        super().__init__(cursor_type="none", show_cursor=False, zebra_stripes=False, id=id)
        self._order = ordered_services(services)
        self._cells: dict[tuple[str, str], Cell] = {}
        self._stale = False
        self._palette: RichPalette | None = None

    def on_mount(self) -> None:
        """Create the columns and the rows (all unknown until the first sweep)."""
        for key, label, width in COLUMNS:
            self.add_column(label, width=width, key=key)
        for service in self._order:
            self._add_row(service, row_cells(service, None))

    @property
    def row_keys(self) -> list[str]:
        """The row keys (service names), in display order."""
        return [str(row.key.value) for row in self.ordered_rows]

    def cell_text(self, service: str, column: str) -> str:
        """The plain text shown in one cell (for tests and reports)."""
        return self._cells[(service, column)][0]

    def _style(self, cell: Cell) -> Text:
        if self._palette is None or self._palette.theme != self.app.theme:
            self._palette = RichPalette(self.app)
        return self._palette.text(cell[0], cell[1], stale=self._stale)

    def _add_row(self, service: str, cells: dict[str, Cell]) -> None:
        for column, cell in cells.items():
            self._cells[(service, column)] = cell
        self.add_row(*(self._style(cells[key]) for key, _, _ in COLUMNS), key=service)

    def show(self, services: Sequence[ServiceHealth], *, stale: bool) -> None:
        """Show one sweep's health results; only changed cells are touched.

        Args:
            services: The environment's health results.
            stale: The sweep is older than its allowed age (grey everything).
        """
        restyle = stale != self._stale
        self._stale = stale
        by_name = {s.service: s for s in services}
        for service in ordered_services(by_name):
            if service not in self._order:
                self._order.append(service)
                self._add_row(service, row_cells(service, by_name[service]))
        for service in self._order:
            for column, cell in row_cells(service, by_name.get(service)).items():
                if not restyle and self._cells.get((service, column)) == cell:
                    continue
                self._cells[(service, column)] = cell
                self.update_cell(service, column, self._style(cell))

    def restyle(self) -> None:
        """Recolour every cell (after a theme change)."""
        self._palette = None
        for (service, column), cell in self._cells.items():
            self.update_cell(service, column, self._style(cell))
