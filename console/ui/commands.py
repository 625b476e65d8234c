"""The command palette's console commands (rollback, refresh, themes, help, jump to a panel).

The commands come from :meth:`console.ui.app.ConsoleApp.console_commands`,
which knows what is allowed right now (a read-only console offers no
rollback); this provider only finds and ranks them.
"""

from __future__ import annotations

from textual.command import DiscoveryHit, Hit, Hits, Provider


class ConsoleCommands(Provider):
    """Command palette provider for the console's own actions."""

    def _commands(self) -> list[tuple[str, str, object]]:
        from console.ui.app import ConsoleApp

        app = self.app
        if not isinstance(app, ConsoleApp):
            return []
        return [(c.title, c.help, c.callback) for c in app.console_commands()]

    async def discover(self) -> Hits:
        """Every console command, for the palette's empty query."""
        for title, help_text, callback in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)  # type: ignore[arg-type]

    async def search(self, query: str) -> Hits:
        """Console commands matching the query, best first."""
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)  # type: ignore[arg-type]
