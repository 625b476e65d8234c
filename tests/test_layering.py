"""The layers hold at run time too: back-ends and the console core load no UI."""

from __future__ import annotations

import subprocess
import sys

import pytest

# rich is left out on purpose: httpx itself imports it when installed (for its CLI).
# That rich is never imported *directly* by backends/ is import-linter's contract.
UI_MODULES = ("textual", "widgets", "themes")


@pytest.mark.parametrize(
    "module",
    [
        "backends.models",
        "backends.health",
        "backends.traffic",
        "backends.redis_probe",
        "backends.postgres",
        "backends.audit_store",
        "console.config",
        "console.monitor",
        "console.rules",
        "console.rollback",
        "console.runbook.engine",
        "console.audit",
    ],
)
def test_module_loads_no_ui(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {UI_MODULES!r} or m.startswith('console.ui')]\n"
        "print(','.join(sorted(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = [m for m in out.stdout.strip().split(",") if m]
    assert not loaded, f"{module} pulled in UI modules: {loaded}"
