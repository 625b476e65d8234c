"""The console's Textual UI: the App (:mod:`console.ui.app`), its screens, the sweep plumbing."""
