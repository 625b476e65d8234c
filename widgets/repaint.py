"""Repaint only the cells that changed, so a slow link carries the change and not the screen.

Textual repaints a widget's whole region whenever it refreshes: a timer
going from ``1m12s`` to ``1m13s`` in the alerts panel rewrote every alert
line and the panel's border, and a latency going from 24 to 25 ms rewrote
the whole table. Over SSH that was most of what the console sent.

Three tools here:

* :class:`QuietStatic` (and :func:`paint` / :func:`refresh_changed` for
  widgets with their own ``render``): the widget renders its new content to
  strips itself, compares them cell by cell (text and style) with what it
  painted last, and marks only the changed span of each line dirty
  (``Widget.refresh(region)``). Anything that changes the geometry (line
  count, size, an auto width) or the widget's own style takes the ordinary
  full refresh, and a class or theme change repaints the whole widget as
  usual, so the screen cannot drift from the content.
* :class:`QuietBorderTitle`: a new border title repaints the top border
  line, not the container and every child inside it.
* :func:`wobbles`: the readable cadence for secondary numbers (a probe's
  round trip): kept on screen while they only wobble, for a few seconds.

Textual sends a dirty span from the left edge of the widget that holds it
(it crops the end of a span, not the start; Textualize/textual#5625), so a
value that changes often belongs at the left of a widget of its own: the
orchestrator table is a widget per column, alert timers and Redis details
stand in columns, an environment's reasons follow its verdict in a part of
their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.style import Style
from textual.content import Content
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.visual import Visual, VisualType, visualize
from textual.widget import Widget
from textual.widgets import Static

SETTLE_S = 5.0
"""A number that only wobbles is repainted at most this often (seconds of data time)."""

SETTLE_FACTOR = 2.0
"""... unless it moved by more than this factor (a probe's round trip on a busy host halves
and doubles from one second to the next; an order of magnitude is what a reader acts on)."""

Cell = tuple[str, Style | None]
"""One terminal cell: its character ("" for the right half of a wide one) and style."""


def wobbles(shown: float, new: float, age_s: float) -> bool:
    """Whether ``new`` only wobbles around the ``shown`` number, which may stay on screen.

    A secondary number (a probe's round trip) that jitters every second is noise
    to a reader and a line of output to a slow link; it is kept while it stays
    within :data:`SETTLE_FACTOR` of what is shown and what is shown is younger
    than :data:`SETTLE_S`. A real move, and every state, shows at once.

    Args:
        shown: The number on screen.
        new: The number just measured.
        age_s: Seconds (of data time) since ``shown`` was painted.
    """
    if age_s >= SETTLE_S or age_s < 0:
        return False
    low, high = sorted((abs(shown), abs(new)))
    return high <= SETTLE_FACTOR * low and (shown >= 0) == (new >= 0)


def strip_cells(strip: Strip) -> list[Cell]:
    """A strip as one (character, style) per terminal cell."""
    cells: list[Cell] = []
    for segment in strip:
        if segment.control:
            continue
        for char in segment.text:
            width = cell_len(char)
            if width == 0:
                continue
            cells.append((char, segment.style))
            if width == 2:
                cells.append(("", segment.style))
    return cells


def changed_span(before: Strip, after: Strip) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of the cells that differ between two lines, or None."""
    if before == after:
        return None
    old, new = strip_cells(before), strip_cells(after)
    length = max(len(old), len(new))
    blank: Cell = (" ", None)
    old += [blank] * (length - len(old))
    new += [blank] * (length - len(new))
    start = next((i for i in range(length) if old[i] != new[i]), None)
    if start is None:
        return None
    end = next(i for i in range(length, start, -1) if old[i - 1] != new[i - 1])
    # Never cut a wide character in half: repaint the whole of it at either end.
    while start > 0 and (old[start][0] == "" or new[start][0] == ""):
        start -= 1
    while end < length and (old[end][0] == "" or new[end][0] == ""):
        end += 1
    return start, end


@dataclass(frozen=True)
class Painted:
    """What a widget's content area showed after its last paint."""

    size: Size
    style: object
    strips: tuple[Strip, ...]

    def changes(self, after: Painted) -> list[Region] | None:
        """The regions (content coordinates) that differ in ``after``; None if it needs it all."""
        if after.size != self.size or after.style != self.style:
            return None
        if len(after.strips) != len(self.strips):
            return None
        regions: list[Region] = []
        for y, (old, new) in enumerate(zip(self.strips, after.strips, strict=True)):
            span = changed_span(old, new)
            if span is not None:
                regions.append(Region(span[0], y, span[1] - span[0], 1))
        return regions


def paint(widget: Widget, renderable: object) -> Painted | None:
    """Render ``renderable`` as ``widget`` would paint it now (None before it has a size)."""
    size = widget.size
    if not widget.is_mounted or size.width <= 0 or size.height <= 0:
        return None
    style = widget.visual_style
    visual = visualize(widget, renderable, markup=False)
    strips = Visual.to_strips(widget, visual, size.width, None, style)
    return Painted(size, style, tuple(strips))


def refresh_changed(widget: Widget, before: Painted | None, after: Painted | None) -> bool:
    """Mark only the changed cells of ``widget`` dirty.

    Args:
        widget: The widget (already holding its new content).
        before: What it painted last (None: unknown).
        after: What it paints now (from :func:`paint`).

    Returns:
        False when the change could not be narrowed down (the caller refreshes it all).
    """
    if before is None or after is None:
        return False
    regions = before.changes(after)
    if regions is None or len(after.strips) != widget.size.height:
        return False
    offset = widget.scroll_offset
    if regions:
        widget.refresh(*(region.translate(-offset) for region in regions))
    return True


class QuietStatic(Static):
    """A :class:`~textual.widgets.Static` whose :meth:`show_content` repaints only changed cells."""

    _painted: Painted | None = None
    """What the content area showed after the last paint (None: unknown)."""
    _holding = False
    """Inside :meth:`show_content`: the whole-widget refresh of ``update`` is held back."""
    _content_width = -1
    """The widest line of the content shown (an auto-width widget resizes when it changes)."""
    _shown: Content | None = None
    """The content :meth:`show_content` showed last (None: unknown, e.g. after ``update``)."""

    def refresh(
        self,
        *regions: Region,
        repaint: bool = True,
        layout: bool = False,
        recompose: bool = False,
    ) -> QuietStatic:
        """Refresh as usual, except the whole-widget repaint ``update`` asks for inside
        :meth:`show_content` (the changed cells are marked dirty there instead)."""
        if self._holding and not (regions or layout or recompose):
            return self
        super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)
        return self

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        """Show content as :class:`~textual.widgets.Static` does (the whole widget repaints)."""
        if not self._holding:
            self._shown = None
        super().update(content, layout=layout)

    def show_content(self, content: Content) -> None:
        """Show new content, repainting only the cells that differ from the last paint.

        The same content (text and styles) at the same size and style is not even
        rendered again: most parts of the dashboard stay as they are from one
        sweep to the next.

        Args:
            content: The widget's new content.
        """
        shown, before = self._shown, self._painted
        if (
            shown is not None
            and before is not None
            and shown.is_same(content)
            and self.is_mounted
            and before.size == self.size
            and before.style == self.visual_style
        ):
            return
        after = paint(self, content)
        self._painted = after
        width = max((line.cell_length for line in content.split("\n")), default=0)
        # An auto-width widget whose content got wider or narrower needs a layout.
        resized = self.styles.width is not None and self.styles.width.is_auto
        resized = resized and width != self._content_width
        self._content_width = width
        self._holding = True
        try:
            self.update(content, layout=False)
        finally:
            self._holding = False
        if resized or not refresh_changed(self, before, after):
            # New geometry (or nothing painted yet): the ordinary refresh, with a layout.
            self.update(content)
        self._shown = content


class QuietBorderTitle(Widget):
    """A widget whose border title changes repaint its top border line, not the whole widget.

    Setting ``border_title`` refreshes the widget's whole region, and for a
    container that is every child inside it: an environment panel whose verdict
    word changes would resend its table, tiles and stores. Use
    :meth:`set_border_title` instead.
    """

    _holding_title = False
    """Inside :meth:`set_border_title`: the whole-widget refresh is held back."""

    def refresh(
        self,
        *regions: Region,
        repaint: bool = True,
        layout: bool = False,
        recompose: bool = False,
    ) -> QuietBorderTitle:
        """Refresh as usual, except the whole-widget refresh of a border title change."""
        if self._holding_title and not (regions or layout or recompose):
            return self
        super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)
        return self

    def set_border_title(self, title: str) -> None:
        """Change the border title (plain text), repainting the top border line only.

        Args:
            title: The new title.
        """
        content = Content(title)
        if self.border_title == content.markup:
            return
        if not self.is_mounted or not self.outer_size:
            self.border_title = content
            return
        self._holding_title = True
        try:
            self.border_title = content
        finally:
            self._holding_title = False
        # Regions are relative to the content area: the top border sits above it.
        offset = self.content_offset
        self.refresh(Region(-offset.x, -offset.y, self.outer_size.width, 1))
