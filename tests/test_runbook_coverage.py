"""The shipped runbook carries the whole runbook document.

The markdown (a verbatim copy in tests/data/) is parsed for what an operator
acts on: section and step headings, "- [ ]" checklist items, "**Success
Criteria**" bullets, every commented command in the code blocks, the recovery
sequence with its budgets, the phase budgets, and the emergency contacts. The
test fails if the default runbook leaves any of them out. The "Monitoring
Thresholds and Alerts" section is the alert rules' (tests/test_rules.py).
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from console.runbook.loader import load_runbook
from console.runbook.model import Runbook

MARKDOWN = Path(__file__).parent / "data" / "acgs-production-deployment-runbook.md"

COVERED = {
    "Pre-Deployment Checklist",
    "Blue-Green Deployment Strategy",
    "Rollback Procedures",
    "Disaster Recovery Procedures",
    "Success Criteria Validation",
    "Emergency Contacts and Escalation",
}
NOT_STEPS = {
    "Executive Summary",  # prose
    "Monitoring Thresholds and Alerts",  # the alert rules carry these
    "Implementation Status",  # document status
    "Performance Targets",  # the config's [thresholds]
}


def _heading_text(line: str) -> str:
    return line.lstrip("#").strip()


@dataclass
class Document:
    """What the markdown asks of the runbook data."""

    headings: list[str] = field(default_factory=list)
    items: list[tuple[str, str]] = field(default_factory=list)
    """(section heading, line) for checklist items and success-criteria bullets."""
    success_bullets: list[tuple[str, str]] = field(default_factory=list)
    checklist: list[tuple[str, str]] = field(default_factory=list)
    commands: list[tuple[str, str, str]] = field(default_factory=list)
    """(section heading, comment line, command text)."""
    contacts: list[tuple[str, str]] = field(default_factory=list)
    budgets: dict[str, float] = field(default_factory=dict)
    """Heading or list line -> budget in seconds."""
    top_sections: list[str] = field(default_factory=list)


_BUDGET = re.compile(r"\((\d+) minutes\)|\(<(\d+) seconds\)")


def _budget_of(line: str) -> float | None:
    m = _BUDGET.search(line)
    if not m:
        return None
    return float(m.group(1)) * 60 if m.group(1) else float(m.group(2))


def parse_markdown(text: str) -> Document:
    """Parse the runbook markdown into what must be transcribed."""
    doc = Document()
    top = ""
    section = ""
    in_code = False
    fence_indent = 0
    code: list[str] = []
    in_criteria = False
    lines = text.splitlines()

    def flush_code() -> None:
        block = textwrap.dedent("\n".join(line[fence_indent:] for line in code))
        comment: str | None = None
        body: list[str] = []
        for raw in [*block.splitlines(), ""]:
            line = raw.rstrip()
            if line.startswith("#") or not line:
                if comment is not None and body:
                    doc.commands.append((section, comment, "\n".join(body)))
                comment, body = (line, []) if line.startswith("#") else (None, [])
            elif comment is not None:
                body.append(line)

    for raw in lines:
        stripped = raw.strip()
        if stripped.startswith("```"):
            if in_code:
                in_code = False
                if top in COVERED:
                    flush_code()
                code = []
            else:
                in_code = True
                fence_indent = len(raw) - len(raw.lstrip())
            continue
        if in_code:
            code.append(raw)
            continue
        if re.match(r"^#{2,4} ", raw):
            level = len(raw) - len(raw.lstrip("#"))
            if level == 2:
                top = _heading_text(raw)
                doc.top_sections.append(top)
            section = _heading_text(raw)
            in_criteria = False
            if top in COVERED:
                doc.headings.append(raw.strip())
                budget = _budget_of(raw)
                if budget is not None:
                    doc.budgets[raw.strip()] = budget
            continue
        if top not in COVERED:
            continue
        if stripped.startswith("**Success Criteria**"):
            in_criteria = True
            continue
        if stripped.startswith("- [ ] "):
            doc.checklist.append((section, stripped))
            doc.items.append((section, stripped))
        elif in_criteria and stripped.startswith("- "):
            doc.success_bullets.append((section, stripped))
            doc.items.append((section, stripped))
        elif top == "Emergency Contacts and Escalation" and stripped.startswith("- **"):
            doc.contacts.append((section, stripped))
        elif re.match(r"^\d+\. \*\*", stripped):
            budget = _budget_of(stripped)
            assert budget is not None, stripped
            doc.budgets[stripped] = budget
        elif stripped and not stripped.startswith("- "):
            in_criteria = False
    return doc


@pytest.fixture(scope="module")
def document() -> Document:
    return parse_markdown(MARKDOWN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runbook() -> Runbook:
    return load_runbook()


def missing_from(doc: Document, rb: Runbook) -> list[str]:
    """Everything the document has that the runbook data leaves out."""
    headings = {_heading_text(h) for h in rb.headings}
    steps = [(p, ph, s) for p, ph, s in rb.all_steps()]
    for proc in rb.procedures:
        headings.add(_heading_text(proc.source))
        headings |= {_heading_text(h) for h in proc.headings}
        for phase in proc.phases:
            headings.add(_heading_text(phase.source))
    headings |= {s.section for _, _, s in steps}
    headings |= {_heading_text(t.source) for t in rb.contacts}

    out = [f"heading: {h}" for h in doc.headings if _heading_text(h) not in headings]
    have_items = Counter((s.section, s.source) for _, _, s in steps)
    need_items = Counter(doc.items)
    out += [f"item under {sec!r}: {line}" for (sec, line) in need_items - have_items]
    have_cmds = Counter(
        (s.section, s.source, s.runbook_command) for _, _, s in steps if s.runbook_command
    )
    need_cmds = Counter(doc.commands)
    out += [f"command under {sec!r}: {c} -> {cmd!r}" for (sec, c, cmd) in need_cmds - have_cmds]
    have_contacts = {(t.team, c.source) for t in rb.contacts for c in t.contacts}
    out += [
        f"contact under {t!r}: {line}"
        for (t, line) in doc.contacts
        if (t, line) not in have_contacts
    ]
    budgets: dict[str, float | None] = {}
    for proc in rb.procedures:
        budgets[proc.source] = proc.budget_s
        for phase in proc.phases:
            budgets[phase.source] = phase.budget_s
    for where, seconds in doc.budgets.items():
        if budgets.get(where) != seconds:
            out.append(
                f"budget of {where!r}: want {seconds:g} s, runbook data has {budgets.get(where)}"
            )
    return out


def test_the_parser_sees_everything_a_plain_scan_sees(document: Document) -> None:
    text = MARKDOWN.read_text(encoding="utf-8")
    assert len(document.checklist) == sum(1 for ln in text.splitlines() if ln.startswith("- [ ] "))
    assert len(document.checklist) == 22
    step_headings = [ln for ln in text.splitlines() if ln.startswith("#### Step ")]
    assert len(step_headings) == 7
    assert all(h in document.headings for h in step_headings)
    assert text.count("**Success Criteria**") == 5
    assert len(document.success_bullets) == 20
    # Every commented command in every code block (the uncovered sections have none).
    in_code, comments = False, 0
    for ln in text.splitlines():
        if ln.strip().startswith("```"):
            in_code = not in_code
        elif in_code and ln.strip().startswith("#"):
            comments += 1
    assert len(document.commands) == comments == 35
    assert len(document.contacts) == 9
    assert set(document.top_sections) == COVERED | NOT_STEPS, "a new section needs a decision"


def test_default_runbook_leaves_nothing_out(document: Document, runbook: Runbook) -> None:
    missing = missing_from(document, runbook)
    assert not missing, "the default runbook leaves out:\n" + "\n".join(missing)


def test_a_dropped_step_is_noticed(document: Document, runbook: Runbook) -> None:
    data = runbook.model_dump()
    phase = data["procedures"][0]["phases"][1]  # Phase 1
    phase["steps"] = [s for s in phase["steps"] if s["id"] != "app-performance"]
    smaller = Runbook.model_validate(data)
    missing = missing_from(document, smaller)
    assert missing == [
        "item under 'Step 1.2: Application Deployment': "
        "- Performance targets met: P99 <5ms, >100 RPS, >85% cache hit"
    ]


def test_phase_budgets_are_the_runbooks(runbook: Runbook) -> None:
    deployment = runbook.procedure("deployment")
    budgets = {p.id: p.budget_s for p in deployment.phases}
    assert (budgets["phase-1"], budgets["phase-2"], budgets["phase-3"]) == (1800, 300, 900)
    dr = [p.budget_s for p in runbook.procedure("disaster-recovery").phases if p.budget_s]
    assert dr == [15 * 60, 30 * 60, 20 * 60, 15 * 60]


def test_success_criteria_are_checks_or_attestations(document: Document, runbook: Runbook) -> None:
    by_source = {(s.section, s.source): s for _, _, s in runbook.all_steps()}
    criteria = document.success_bullets + [
        item for item in document.checklist if item[0] == "Deployment Success Criteria"
    ]
    for key in criteria:
        assert by_source[key].kind in ("check", "attestation"), key


def test_gradual_migration_is_the_runbooks(runbook: Runbook) -> None:
    phase = next(p for p in runbook.procedure("deployment").phases if p.id == "phase-2")
    shape = [
        (s.id, s.kind, getattr(s, "green_percentage", None), getattr(s, "duration_s", None))
        for s in phase.steps
        if s.kind in ("traffic", "monitor")
    ]
    assert shape == [
        ("switch-10", "traffic", 10, None),
        ("monitor-10", "monitor", None, 120),
        ("switch-50", "traffic", 50, None),
        ("monitor-50", "monitor", None, 120),
        ("switch-100", "traffic", 100, None),
        ("post-switch-monitoring", "monitor", None, 300),
    ]
    planned = [
        (s.kind, getattr(s, "green_percentage", None), getattr(s, "duration_s", None))
        for _, s in runbook.procedure("planned-rollback").steps()
        if s.kind in ("traffic", "monitor")
    ]
    assert planned == [("traffic", 50, None), ("monitor", None, 120), ("traffic", 0, None)]


def test_destructive_and_four_eyes_steps(runbook: Runbook) -> None:
    from console.config import CoordinationConfig

    steps = {s.id: s for _, _, s in runbook.all_steps()}
    assert steps["switch-100"].confirm_typed is not None
    assert steps["switch-100"].confirm_typed.value == "green"
    assert steps["decommission-blue"].confirm_typed is not None
    assert steps["decommission-blue"].confirm_typed.value == "blue"
    for gate in CoordinationConfig().four_eyes_gates:
        assert gate in steps
