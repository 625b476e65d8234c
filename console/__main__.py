"""``python -m console`` runs the same entry point as ``acgs-console``."""

from console.cli import main

raise SystemExit(main())
