"""The console's Textual themes and shared stylesheet (:mod:`themes.themes`, ``console.tcss``)."""
