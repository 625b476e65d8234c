"""``python -m console.sandbox up|fault ...``: the sandbox commands without the console CLI."""

from console.sandbox.cli import main

raise SystemExit(main())
