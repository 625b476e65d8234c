"""The runbook as data: procedures, phases and steps (pydantic models).

A runbook file (TOML) holds procedures (the deployment, the planned rollback,
the emergency rollback for reference, disaster recovery), each a list of phases
with an optional time budget, each a list of steps. A step is one of:

* ``check``: structured predicates over the live Snapshot (:mod:`console.runbook.predicates`);
* ``command``: a site command whose argv the config sets (``commands.<step-id>``);
  without one the step becomes an operator attestation, never a silent skip;
* ``traffic``: set the green percentage on the load balancer and verify the read-back;
* ``monitor``: a window of N seconds with the alert rules live;
* ``attestation``: the operator confirms with a note;
* ``report``: the deployment (or incident) report.

Every step quotes the runbook line it transcribes (``source``) under the heading
it falls in (``section``), so a test can prove the whole document is carried.
Step ids are unique across the whole runbook: the config refers to them.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from backends.models import Environment
from console.runbook.predicates import EnvScope, Predicate, StepCheck

Id = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)]
"""Lower-case letters, digits and dashes (``switch-10``, ``decommission-blue``)."""
Text = Annotated[str, StringConstraints(min_length=1)]


class StepKind(StrEnum):
    """What a step does."""

    CHECK = "check"
    COMMAND = "command"
    TRAFFIC = "traffic"
    MONITOR = "monitor"
    ATTESTATION = "attestation"
    REPORT = "report"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class _Step(_Model):
    """Fields every step has."""

    id: Id
    """Unique across the runbook; the config's ``commands.<id>`` and four-eyes gates use it."""
    title: Text
    """Short name shown in the checklist."""
    section: Text
    """The runbook heading this step falls under (``Step 1.1: Infrastructure Deployment``)."""
    source: Text
    """The runbook line this step transcribes, quoted exactly."""
    runbook_command: str | None = None
    """The command as the runbook shows it (for display; the argv comes from the config)."""
    description: str = ""
    """What the operator should know."""
    confirm_typed: Environment | None = None
    """Destructive step: the operator must type this environment's name to start it."""
    preconditions: list[Predicate] = []
    """Must pass on the current snapshot before the step may start."""


class CheckStep(_Step):
    """Structured predicates over the live snapshot; passes when every one passes."""

    kind: Literal["check"]
    checks: Annotated[list[Predicate], Field(min_length=1)]
    """The predicates; all must pass (an unknown one keeps the gate closed)."""


class CommandStep(_Step):
    """A site command (argv from ``commands.<id>`` in the config; else an attestation)."""

    kind: Literal["command"]


class TrafficStep(_Step):
    """Set green's share of traffic and verify the load balancer's read-back."""

    kind: Literal["traffic"]
    green_percentage: float = Field(ge=0, le=100)
    """The target share of traffic for green, 0..100."""
    tolerance: float = Field(1.0, gt=0, le=10)
    """Allowed difference of the read-back (weights are whole numbers out of 256)."""


class MonitorStep(_Step):
    """Watch for ``duration_s`` seconds; a firing alert of ``fail_on`` severity fails the window."""

    kind: Literal["monitor"]
    duration_s: float = Field(gt=0)
    """Window length in seconds (the config's ``monitor_windows.<id>`` may override it)."""
    environment: EnvScope = "both"
    """Which environment's alerts count."""
    fail_on: Literal["critical", "warning"] = "critical"
    """``critical``: critical alerts fail the window; ``warning``: warnings too."""


class AttestationStep(_Step):
    """The operator confirms, with a note, what the console cannot measure."""

    kind: Literal["attestation"]
    prompt: str = ""
    """What the operator is asked to confirm (default: the title)."""


class ReportStep(_Step):
    """Produce a report from the audit trail."""

    kind: Literal["report"]
    report: Literal["deployment", "incident"]


Step = Annotated[
    CheckStep | CommandStep | TrafficStep | MonitorStep | AttestationStep | ReportStep,
    Field(discriminator="kind"),
]


class Phase(_Model):
    """A phase of a procedure, with its time budget."""

    id: Id
    title: Text
    source: Text
    """The runbook heading (or list item) this phase transcribes."""
    budget_s: float | None = Field(None, gt=0)
    """The runbook's time budget in seconds (shown as a countdown), if it gives one."""
    steps: Annotated[list[Step], Field(min_length=1)]


class Procedure(_Model):
    """A procedure the console can walk (or, ``reference``, only show)."""

    id: Id
    title: Text
    source: Text
    """The runbook heading this procedure transcribes."""
    headings: list[str] = []
    """Further runbook headings this procedure covers (grouping headings)."""
    kind: Literal["guided", "reference"] = "guided"
    """``reference``: shown for information; another part of the console runs it."""
    handled_by: str | None = None
    """For a reference procedure: what runs it (``console.rollback``)."""
    budget_s: float | None = Field(None, gt=0)
    """The whole procedure's budget in seconds, if the runbook gives one."""
    description: str = ""
    phases: Annotated[list[Phase], Field(min_length=1)]

    def steps(self) -> Iterator[tuple[Phase, Step]]:
        """Every step with its phase, in order."""
        for phase in self.phases:
            for step in phase.steps:
                yield phase, step


class Contact(_Model):
    """One line of the escalation list."""

    role: Literal["Primary", "Secondary", "Escalation"]
    name: Text
    source: Text


class ContactTeam(_Model):
    """A team in "Emergency Contacts and Escalation"."""

    team: Text
    source: Text
    contacts: Annotated[list[Contact], Field(min_length=1)]


class Runbook(_Model):
    """A whole runbook."""

    title: Text
    version: Text
    constitutional_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
    source_document: str = ""
    """The markdown document this file transcribes."""
    headings: list[str] = []
    """Document-level headings this file covers (``## Emergency Contacts and Escalation``)."""
    procedures: Annotated[list[Procedure], Field(min_length=1)]
    contacts: list[ContactTeam] = []
    """Emergency contacts and escalation, for display."""

    @model_validator(mode="after")
    def _consistent(self) -> Runbook:
        problems: list[str] = []
        seen_proc: set[str] = set()
        seen_phase: set[str] = set()
        seen_step: set[str] = set()
        for proc in self.procedures:
            if proc.id in seen_proc:
                problems.append(f"procedure id {proc.id!r} is used twice")
            seen_proc.add(proc.id)
            earlier: set[str] = set()
            for phase in proc.phases:
                if phase.id in seen_phase:
                    problems.append(f"phase id {phase.id!r} is used twice")
                seen_phase.add(phase.id)
                for step in phase.steps:
                    if step.id in seen_step:
                        problems.append(
                            f"step id {step.id!r} is used twice (step ids must be unique)"
                        )
                    seen_step.add(step.id)
                    refs = [
                        c
                        for c in [*step.preconditions, *getattr(step, "checks", [])]
                        if isinstance(c, StepCheck)
                    ]
                    for ref in refs:
                        if ref.step_passed not in earlier:
                            problems.append(
                                f"step {step.id!r} checks step_passed={ref.step_passed!r}, "
                                f"which is not an earlier step of procedure {proc.id!r}"
                            )
                    earlier.add(step.id)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def procedure(self, procedure_id: str) -> Procedure:
        """The procedure with this id.

        Raises:
            KeyError: naming the known ids.
        """
        for proc in self.procedures:
            if proc.id == procedure_id:
                return proc
        raise KeyError(
            f"no procedure {procedure_id!r}; known: {', '.join(p.id for p in self.procedures)}"
        )

    def locate(self, step_id: str) -> tuple[Procedure, Phase, Step]:
        """Where a step lives.

        Raises:
            KeyError: when no step has this id.
        """
        for proc in self.procedures:
            for phase, step in proc.steps():
                if step.id == step_id:
                    return proc, phase, step
        raise KeyError(f"no step {step_id!r} in the runbook")

    def all_steps(self) -> Iterator[tuple[Procedure, Phase, Step]]:
        """Every step of every procedure."""
        for proc in self.procedures:
            for phase, step in proc.steps():
                yield proc, phase, step
