"""The header line: estate-wide hash verdict, deployment, operator, age of the last sweep.

::

    hash ✔ ok cdd01ef066bc6cf2 18/18 · no deployment · alice@bastion · swept 0.4 s ago

The parts are packed into as few lines as the width allows, never split
inside a part, so at 80 columns the header takes two lines and at 120 one.
"""

from __future__ import annotations

from textual.content import Content
from textual.geometry import Size
from textual.widget import Widget

from widgets.repaint import Painted, paint, refresh_changed

SEPARATOR = " · "


def pack(parts: list[Content], width: int) -> list[Content]:
    """Greedy packing of parts into lines no wider than ``width`` (a part never splits)."""
    lines: list[Content] = []
    current: Content | None = None
    for part in parts:
        if current is None:
            current = part
        elif current.cell_length + len(SEPARATOR) + part.cell_length <= width:
            current = Content.assemble(current, SEPARATOR, part)
        else:
            lines.append(current)
            current = part
    if current is not None:
        lines.append(current)
    return lines or [Content("")]


class StatusHeader(Widget):
    """The console's top line(s)."""

    DEFAULT_CSS = """
    StatusHeader {
        height: auto;
        background: $panel;
        color: $foreground;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create an empty header."""
        super().__init__(id=id)
        self._parts: list[Content] = []
        self._painted: Painted | None = None

    @property
    def plain_text(self) -> str:
        """All parts on one line (plain text), for tests."""
        return SEPARATOR.join(p.plain for p in self._parts)

    def show(self, parts: list[Content]) -> None:
        """Replace the header's parts (repaints only when something changed).

        Args:
            parts: The pieces, in order: hash, deployment, operator, sweep age.
        """
        if [p.plain for p in parts] == [p.plain for p in self._parts] and [
            p.spans for p in parts
        ] == [p.spans for p in self._parts]:
            return
        old_lines = len(pack(self._parts, max(1, self.content_region.width)))
        self._parts = list(parts)
        new_lines = len(pack(self._parts, max(1, self.content_region.width)))
        before, self._painted = self._painted, paint(self, self.render())
        # "swept 1 s ago" -> "swept 2 s ago" repaints one digit, not the line.
        if old_lines != new_lines or not refresh_changed(self, before, self._painted):
            self.refresh(layout=old_lines != new_lines)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """As many lines as the packed parts need at this width."""
        return len(pack(self._parts, max(1, width)))

    def render(self) -> Content:
        """The packed lines."""
        return Content("\n").join(pack(self._parts, max(1, self.content_region.width)))
