"""The key help screen: every key the console answers to, after keymap overrides.

Built from the bindings that are active on the screen underneath (so a key
remapped with ``ui.keymap`` shows its new key), including the ones the
footer hides for lack of room.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Static


@dataclass(frozen=True)
class KeyHelp:
    """One line of the help: key, what it does, and the binding id for ``ui.keymap``."""

    key: str
    description: str
    tooltip: str
    binding_id: str


def key_help(screen: Screen[object]) -> list[KeyHelp]:
    """Every active, non-system binding of a screen (app, screen and focused widget)."""
    rows: list[KeyHelp] = []
    seen: set[tuple[str, str]] = set()
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if binding.system:
            continue
        display = screen.app.get_key_display(binding) or key
        ident = binding.id or ""
        if (display, binding.action) in seen:
            continue
        seen.add((display, binding.action))
        rows.append(
            KeyHelp(
                key=display,
                description=binding.description or binding.action,
                tooltip=active.tooltip or binding.tooltip or "",
                binding_id=ident,
            )
        )
    # The console's own keys (they have ids) first; the widgets' navigation keys after.
    return sorted(rows, key=lambda r: 0 if r.binding_id else 1)


class HelpScreen(ModalScreen[None]):
    """A modal listing every key; escape, q or ? closes it."""

    BINDINGS = [
        Binding(
            "escape,q,question_mark",
            "close",
            "Close",
            id="help-close",
            tooltip="Close the key help and return to the dashboard",
        ),
    ]

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > Vertical {
        width: auto;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-title-color: $primary;
        background: $surface;
        padding: 0 1;
    }
    HelpScreen DataTable {
        height: auto;
        max-height: 100%;
        width: auto;
    }
    HelpScreen .help--hint {
        color: $text-muted;
    }
    """

    def __init__(self, rows: list[KeyHelp]) -> None:
        """Create the help for these keys.

        Args:
            rows: The keys to list (see :func:`key_help`).
        """
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        """A table of keys and a hint line."""
        with Vertical() as box:
            box.border_title = "keys"
            yield DataTable(cursor_type="row", zebra_stripes=True, id="help-keys")
            yield Static(
                'Remap a key in the config: [ui.keymap] <binding id> = "<key>" · '
                "esc, q or ? closes",
                classes="help--hint",
                markup=False,
            )

    def on_mount(self) -> None:
        """Fill the table."""
        table = self.query_one("#help-keys", DataTable)
        table.add_columns("key", "action", "binding id", "what it does")
        for row in self.rows:
            table.add_row(
                Text(row.key),
                Text(row.description),
                Text(row.binding_id),
                Text(row.tooltip),
                key=row.key,
            )
        for binding in self.BINDINGS:
            assert isinstance(binding, Binding)
            table.add_row(
                Text("esc / q / ?"),
                Text(binding.description),
                Text(binding.id or ""),
                Text(binding.tooltip),
            )

    def action_close(self) -> None:
        """Close the help."""
        self.dismiss(None)
