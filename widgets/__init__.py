"""Reusable widgets that render backends.models (no I/O), and the visual vocabulary they share."""
