"""The traffic split bar: blue % | green %, as read back from the load balancer.

::

    traffic  blue 90.0% ██████████████████████████░░░ 10.0% green   haproxy

Blue and green fill with different characters (``█`` and ``░``), so the bar
reads without colour too. A split that could not be read back shows
``? unknown`` and the load balancer's error, never the last value set.
"""

from __future__ import annotations

from datetime import datetime

from textual.content import Content
from textual.widget import Widget

from backends.models import TrafficSplit
from widgets.repaint import Painted, paint, refresh_changed
from widgets.styling import badge_part, set_level_class
from widgets.verdicts import Badge, Level, clock_time

BLUE_FILL = "█"
GREEN_FILL = "░"


class TrafficSplitBar(Widget):
    """One line: the traffic split between blue and green."""

    DEFAULT_CSS = """
    TrafficSplitBar {
        height: 1;
        padding: 0 1;
    }
    TrafficSplitBar.-stale {
        color: $stale;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        """Create the bar (unknown until the first sweep)."""
        super().__init__(id=id)
        self._split: TrafficSplit | None = None
        self._stale = False
        self._since: datetime | None = None
        self._picture: object = ()
        self._painted: Painted | None = None
        self.plain_text = ""
        """The line as last rendered (plain text), for tests."""

    def show(self, split: TrafficSplit | None, *, stale: bool, since: datetime | None) -> None:
        """Show a read-back split.

        Args:
            split: The split from the snapshot (None before the first sweep).
            stale: The snapshot is older than its allowed age.
            since: When it was read (for the stale note).
        """
        self.tooltip = (
            None
            if split is None
            else f"read back from {split.source or 'the load balancer'} "
            f"at {clock_time(split.read_at)} UTC"
        )
        picture = (
            None if split is None else (split.green_percentage, split.error, split.source),
            stale,
            since if stale else None,
        )
        self._split, self._stale, self._since = split, stale, since
        if picture == self._picture:
            return
        self._picture = picture
        set_level_class(self, Level.STALE if stale else None)
        before, self._painted = self._painted, paint(self, self.render())
        if not refresh_changed(self, before, self._painted):
            self.refresh()

    def render(self) -> Content:
        """The bar, sized to the widget's width."""
        width = self.content_region.width or self.size.width
        split, stale = self._split, self._stale
        label = ("traffic ", "bold")
        if split is None or split.green_percentage is None:
            why = (
                "waiting for the first sweep" if split is None else (split.error or "no read-back")
            )
            content = Content.assemble(
                label,
                " ",
                badge_part(Badge(Level.UNKNOWN, "unknown"), stale=stale),
                f" · cannot read the split back: {why}",
            )
        else:
            green = max(0.0, min(100.0, split.green_percentage))
            blue = 100.0 - green
            left = f"blue {blue:.1f}% "
            right = f" {green:.1f}% green"
            # The read time is left out on purpose: it changes every sweep, and a line
            # rewritten every second costs more than it tells (stale data says its time).
            source = f"  {split.source or 'load balancer'}"
            if stale:
                source = f"  ◌ stale since {clock_time(self._since)} UTC"
            room = width - len("traffic ") - len(left) - len(right) - len(source)
            if room < 10:
                source = ""
                room = width - len("traffic ") - len(left) - len(right)
            room = max(room, 4)
            blue_cells = round(room * blue / 100)
            content = Content.assemble(
                label,
                (left, "$env-blue bold" if not stale else "$stale"),
                (BLUE_FILL * blue_cells, "$env-blue" if not stale else "$stale"),
                (GREEN_FILL * (room - blue_cells), "$env-green" if not stale else "$stale"),
                (right, "$env-green bold" if not stale else "$stale"),
                (source, "$text-muted" if not stale else "$stale"),
            )
        self.plain_text = content.plain
        return content
