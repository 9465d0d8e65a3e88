"""The connector contract: typed operations declared once, executed by name.

A connector subclass declares ``operations`` (name -> ``OperationSpec`` with a pydantic argument
model) and implements one method per operation. The agent's tool definitions and the plan
validator are generated from these declarations, never written by hand. Every operation must be
an idempotent upsert or delete keyed by a Healthie id, so at-least-once delivery never duplicates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from app.errors import PlanValidationError


@dataclass(frozen=True)
class OperationSpec:
    """One operation a connector offers."""

    name: str
    args_model: type[BaseModel]
    description: str
    #: argument that must equal the entry's patient id, so a plan can only touch that patient
    patient_field: str = "patient_id"


@dataclass(frozen=True)
class WriteResult:
    """What one executed operation did."""

    target: str
    operation: str
    key: str
    changed: bool = True


class Connector(ABC):
    """Base class of every target connector."""

    #: the config name (``connector = "sqlite"``)
    kind: ClassVar[str]
    operations: ClassVar[Mapping[str, OperationSpec]]

    def __init__(self, name: str) -> None:
        self.name = name

    def validate(self, operation: str, args: Mapping[str, Any], patient_id: str) -> BaseModel:
        """Parsed arguments for ``operation``; PlanValidationError when anything is off.

        The patient check is the security boundary: a plan for patient A can never write B.
        """
        spec = self.operations.get(operation)
        if spec is None:
            raise PlanValidationError(
                f"target {self.name!r} ({self.kind}) has no operation {operation!r}; "
                f"known: {sorted(self.operations)}"
            )
        try:
            parsed = spec.args_model.model_validate(dict(args))
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
            raise PlanValidationError(
                f"invalid arguments for {self.name}.{operation}: {fields}"
            ) from None
        if str(getattr(parsed, spec.patient_field)) != patient_id:
            raise PlanValidationError(
                f"{self.name}.{operation} names another patient than the entry's"
            )
        return parsed

    def execute(self, operation: str, args: BaseModel) -> WriteResult:
        """Run one validated operation (dispatches to the method named like the operation)."""
        method = getattr(self, operation)
        result: WriteResult = method(args)
        return result

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
