"""The checklist of one runbook phase: every step with its state and its evidence.

::

    state       step                                  evidence
    ✔ passed    Constitutional hash in all 9 orches…  18/18 ok
    ✎ attested  Comprehensive validation run          note: ran it, 0 failures
    ↷ skipped   Dependency audit                      skipped: no tool at this site
    ✖ failed  » Green performance targets             [green] p99 < 5: 7.2 ms (want < 5)
    ○ pending   Green security validation

One row per step, keyed by the step id; a new view changes only the cells whose text or
level changed (rows are rebuilt only when another phase is shown). The current step's
title carries ``»``. The cursor selects the step whose details are shown; it follows the
current step until the operator moves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from widgets.step_view import BADGE_WIDTH
from widgets.styling import RichPalette
from widgets.verdicts import Badge, Level

CURRENT_MARK = "» "
"""Prefix of the current step's title."""

EVIDENCE_LIMIT = 160
"""Characters of evidence shown in a cell (the details pane shows all of it)."""

Cell = tuple[str, Level | None]


@dataclass(frozen=True)
class ChecklistRow:
    """One step as the checklist shows it."""

    step_id: str
    badge: Badge
    title: str
    evidence: str = ""


def row_cells(row: ChecklistRow, *, current: bool) -> dict[str, Cell]:
    """The three cells of a row."""
    evidence = " ".join(row.evidence.split())
    if len(evidence) > EVIDENCE_LIMIT:
        evidence = evidence[: EVIDENCE_LIMIT - 1] + "…"
    return {
        "state": (row.badge.text, row.badge.level),
        "step": ((CURRENT_MARK if current else "  ") + row.title, None),
        "evidence": (evidence, None),
    }


class Checklist(DataTable[Text]):
    """A phase's steps; the row cursor picks the step shown in detail."""

    DEFAULT_CSS = """
    Checklist {
        height: 1fr;
        background: $surface;
        scrollbar-size-vertical: 1;
        overflow-x: hidden;
    }
    Checklist > .datatable--header {
        background: $surface;
        color: $text-muted;
        text-style: bold;
    }
    """

    class Selected(Message):
        """The operator moved the cursor to a step."""

        def __init__(self, step_id: str) -> None:
            super().__init__()
            self.step_id = step_id

    def __init__(self, *, title_width: int = 34, id: str | None = None) -> None:
        """Create an empty checklist.

        Args:
            title_width: Cells of the step title column.
            id: The widget id.
        """
        super().__init__(cursor_type="row", zebra_stripes=False, id=id)
        self._title_width = title_width
        self._cells: dict[tuple[str, str], Cell] = {}
        self._keys: list[str] = []
        self._palette: RichPalette | None = None

    def on_mount(self) -> None:
        """Create the columns."""
        self.add_column("state", width=BADGE_WIDTH, key="state")
        self.add_column("step", width=self._title_width, key="step")
        self.add_column("evidence", key="evidence")

    @property
    def row_keys(self) -> list[str]:
        """The step ids shown, in order."""
        return list(self._keys)

    def cell_text(self, step_id: str, column: str) -> str:
        """The plain text of a cell (for tests)."""
        return self._cells[(step_id, column)][0]

    def _style(self, cell: Cell) -> Text:
        if self._palette is None or self._palette.theme != self.app.theme:
            self._palette = RichPalette(self.app)
        return self._palette.text(cell[0], cell[1])

    def show(
        self, rows: Sequence[ChecklistRow], *, current: str | None, follow: str | None
    ) -> None:
        """Show a phase's rows (in place when the same steps are shown).

        Args:
            rows: The steps of the phase, in order.
            current: The deployment's current step (marked), if it is in this phase.
            follow: Put the cursor on this step (None: leave it where it is).
        """
        keys = [r.step_id for r in rows]
        if keys != self._keys:
            self.clear()
            self._cells.clear()
            self._keys = keys
            for row in rows:
                cells = row_cells(row, current=row.step_id == current)
                for column, cell in cells.items():
                    self._cells[(row.step_id, column)] = cell
                self.add_row(
                    *(self._style(cells[c]) for c in ("state", "step", "evidence")),
                    key=row.step_id,
                )
        else:
            for row in rows:
                for column, cell in row_cells(row, current=row.step_id == current).items():
                    if self._cells.get((row.step_id, column)) == cell:
                        continue
                    self._cells[(row.step_id, column)] = cell
                    self.update_cell(row.step_id, column, self._style(cell))
        if follow is not None and follow in self._keys:
            index = self._keys.index(follow)
            if self.cursor_row != index:
                self.move_cursor(row=index, animate=False, scroll=True)

    @property
    def selected(self) -> str | None:
        """The step under the cursor."""
        if not self._keys or not 0 <= self.cursor_row < len(self._keys):
            return None
        return self._keys[self.cursor_row]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Tell the screen which step the cursor is on (the screen tells following from picking)."""
        event.stop()
        if event.row_key.value is None:
            return
        self.post_message(self.Selected(str(event.row_key.value)))

    def restyle(self) -> None:
        """Recolour every cell (after a theme change)."""
        self._palette = None
        for (step_id, column), cell in self._cells.items():
            self.update_cell(step_id, column, self._style(cell))
