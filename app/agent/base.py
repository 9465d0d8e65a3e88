"""The agent interface and the plan validator every backend's output passes through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from app.config import Integration
from app.errors import PlanValidationError
from app.models import Entry, WritePlan
from app.state.base import PatientState
from connectors.base import Connector


class Agent(Protocol):
    """Decides what to write for one entry."""

    name: str

    def decide(
        self, integration: Integration, entry: Entry, previous: PatientState | None
    ) -> WritePlan:
        """The WritePlan for ``entry``; ``previous`` is the last processed version, if any."""
        ...


def validate_plan(plan: WritePlan, entry: Entry, connectors: Mapping[str, Connector]) -> None:
    """Raise PlanValidationError unless every operation targets a configured target, names an
    operation it declares, has valid arguments, and touches only the entry's patient."""
    if plan.patient_id != entry.patient_id:
        raise PlanValidationError("plan is for another patient than the entry")
    if plan.action == "skip":
        if plan.operations:
            raise PlanValidationError("a skip plan must not carry operations")
        return
    for op in plan.operations:
        connector = connectors.get(op.target)
        if connector is None:
            raise PlanValidationError(
                f"unknown target {op.target!r}; configured: {sorted(connectors)}"
            )
        connector.validate(op.operation, op.args, entry.patient_id)
