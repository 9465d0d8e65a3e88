"""The agent interface and the plan validator every backend's output passes through.

Every backend implements ``decide`` (one entry). A backend that can do better for many entries
at once (the Claude backend's Message Batches) also implements ``decide_many``; callers use the
module-level ``decide_many(agent, ...)``, which falls back to ``decide`` per entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from app.core.config import Integration
from app.core.errors import HealthieSyncError, PlanValidationError
from app.core.models import Entry, WritePlan
from app.state.base import PatientState
from connectors.base import Declared, safe_name


class Agent(Protocol):
    """Decides what to write for one entry."""

    name: str

    def decide(
        self, integration: Integration, entry: Entry, previous: PatientState | None
    ) -> WritePlan:
        """The WritePlan for ``entry``; ``previous`` is the last processed version, if any."""
        ...


#: One entry to decide and the patient's previously processed state (None on a first run).
DecideItem = tuple[Entry, PatientState | None]


@runtime_checkable
class BatchAgent(Agent, Protocol):
    """An agent with an optional many-entries method (``decide`` stays the required one)."""

    def decide_many(
        self, integration: Integration, items: Sequence[DecideItem]
    ) -> list[WritePlan | Exception]:
        """Plans for ``items`` in order; a failed item's slot holds its engine error
        (``app.core.errors`` kinds), so one bad entry never fails the others."""
        ...


def decide_each(
    agent: Agent, integration: Integration, items: Sequence[DecideItem]
) -> list[WritePlan | Exception]:
    """``decide`` for each item in turn, engine errors captured per item (bugs still raise)."""
    out: list[WritePlan | Exception] = []
    for entry, previous in items:
        try:
            out.append(agent.decide(integration, entry, previous))
        except HealthieSyncError as exc:
            out.append(exc)
    return out


def decide_many(
    agent: Agent, integration: Integration, items: Sequence[DecideItem]
) -> list[WritePlan | Exception]:
    """The agent's ``decide_many`` when it has one, else ``decide_each``."""
    if isinstance(agent, BatchAgent):
        return agent.decide_many(integration, items)
    return decide_each(agent, integration, items)


def validate_plan(
    plan: WritePlan, entry: Entry, connectors: Mapping[str, Declared]
) -> list[BaseModel]:
    """Each operation's parsed arguments, in order; PlanValidationError unless every operation
    targets a configured target, names an operation it declares, has valid arguments (declared
    tables, columns, typed values) and touches only the entry's patient. The error names
    targets, operations and field paths, never an argument's value."""
    if plan.patient_id != entry.patient_id:
        raise PlanValidationError("plan is for another patient than the entry")
    if plan.action == "skip":
        if plan.operations:
            raise PlanValidationError("a skip plan must not carry operations")
        return []
    parsed: list[BaseModel] = []
    for op in plan.operations:
        connector = connectors.get(op.target)
        if connector is None:
            raise PlanValidationError(
                f"unknown target {safe_name(op.target)!r}; configured: {sorted(connectors)}"
            )
        parsed.append(connector.validate(op.operation, op.args, entry.patient_id))
    return parsed
