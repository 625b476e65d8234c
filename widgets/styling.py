"""Colours of levels, as theme variables, for the widgets' inline text.

Widgets colour whole regions through CSS classes (``-ok``, ``-critical``,
``-stale`` ...); inline pieces of text (a badge in a line, a table cell) take
their colour from here. Every colour is a theme variable, so a theme switch
recolours everything; every coloured piece also carries a symbol and a word.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.style import Style
from rich.text import Text
from textual.content import Content

from widgets.verdicts import SYMBOLS, Badge, Level

if TYPE_CHECKING:
    from textual.app import App

LEVEL_VARIABLE: dict[Level, str] = {
    Level.OK: "success",
    Level.WARNING: "warning",
    Level.CRITICAL: "error",
    Level.UNKNOWN: "text-muted",
    Level.STALE: "stale",
}
"""The theme variable that colours each level."""

LEVEL_CLASSES: tuple[str, ...] = tuple(f"-{level.value}" for level in Level)
"""Every level's CSS class, to remove before setting the current one."""


def level_style(level: Level, *, stale: bool = False) -> str:
    """A Textual style string for a level; stale data greys everything out."""
    if stale:
        return "$stale"
    style = f"${LEVEL_VARIABLE[level]}"
    return style + " bold" if level is Level.CRITICAL else style


def stale_badge(badge: Badge) -> Badge:
    """The badge of a stale observation: the last word, with the stale symbol.

    ``✔ up`` seen 30 s ago reads ``◌ up``: no tick mark survives on stale data,
    which matters where grey is not visible (``NO_COLOR``, 16 colours).
    """
    return Badge(Level.STALE, badge.word)


def badge_part(badge: Badge, *, stale: bool = False, width: int = 0) -> tuple[str, str]:
    """A badge as a ``(text, style)`` part for :meth:`Content.assemble`."""
    if stale:
        badge = stale_badge(badge)
    text = badge.text.ljust(width) if width else badge.text
    return (text, level_style(badge.level, stale=stale))


def badge_content(badge: Badge, *, stale: bool = False) -> Content:
    """A badge as styled Content."""
    return Content.assemble(badge_part(badge, stale=stale))


def set_level_class(widget: object, level: Level | None) -> None:
    """Put exactly one ``-<level>`` class on a widget (none when level is None)."""
    from textual.dom import DOMNode

    assert isinstance(widget, DOMNode)
    wanted = f"-{level.value}" if level is not None else None
    current = {c for c in LEVEL_CLASSES if widget.has_class(c)}
    if current == ({wanted} if wanted else set()):
        return
    widget.remove_class(*current)
    if wanted:
        widget.add_class(wanted)


class RichPalette:
    """Level colours resolved to Rich styles for one theme (for DataTable cells).

    DataTable cells are Rich renderables, which cannot read theme variables;
    this resolves them once per theme.
    """

    def __init__(self, app: App[object]) -> None:
        """Resolve the current theme's level colours.

        Args:
            app: The running app (its current theme is read).
        """
        variables = app.get_css_variables()
        self.theme = app.theme
        background = variables.get("background", "")
        self._styles: dict[tuple[Level, bool], Style] = {}
        for level, name in LEVEL_VARIABLE.items():
            # "text-muted" is "auto 60%", which only CSS can resolve; its hex twin is:
            name = "foreground-muted" if name == "text-muted" else name
            colour = variables.get(name) or variables.get("foreground", "")
            bold = level is Level.CRITICAL
            self._styles[(level, False)] = _parse(colour, background, bold=bold)
        stale = _parse(variables.get("stale", ""), background, bold=False)
        for level in Level:
            self._styles[(level, True)] = stale

    def text(self, text: str, level: Level | None, *, stale: bool = False) -> Text:
        """A Rich Text in the level's colour (plain when level is None and fresh).

        A stale badge cell (``"✔ up"``) gets the stale symbol (``"◌ up"``).
        """
        if level is None:
            return Text(text, style=self._styles[(Level.STALE, True)] if stale else "", end="")
        if stale and len(text) > 2 and text[1] == " ":
            text = SYMBOLS[Level.STALE] + text[1:]
        return Text(text, style=self._styles[(level, stale)], end="")


def _parse(colour: str, background: str, *, bold: bool) -> Style:
    """A Rich style from a CSS colour such as ``#3FB950``; alpha is blended onto the background."""
    from textual.color import Color

    try:
        parsed = Color.parse(colour.split()[0]) if colour else None
        if parsed is not None and parsed.a < 1 and background:
            parsed = Color.parse(background).blend(parsed.with_alpha(1.0), parsed.a)
    except Exception:
        parsed = None
    if parsed is None:
        return Style(bold=bold)
    return Style(color=parsed.rich_color, bold=bold)
