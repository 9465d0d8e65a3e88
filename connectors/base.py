"""The connector contract: typed operations declared once, executed by name.

A connector subclass declares ``operations`` (name -> ``OperationSpec`` with a pydantic argument
model) and implements one method per operation. The agent's tool definitions and the plan
validator are generated from these declarations, never written by hand. Every operation must be
an idempotent upsert or delete keyed by a Healthie id, so at-least-once delivery never duplicates.

Declarations are usable without a connection: ``TargetSchema`` (a target's name plus its
connector's declarations) is what the agent and the plan validator see, so asking for an agent
never opens a target; the write stage is the only place a ``Connector`` is built and executes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ValidationError

from app.core.errors import PlanValidationError


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


class Declared(Protocol):
    """What the agent and the plan validator need of a target: its declarations only."""

    @property
    def name(self) -> str:
        """The target's name in the integration config."""
        ...

    @property
    def kind(self) -> str:
        """The connector's config name."""
        ...

    @property
    def operations(self) -> Mapping[str, OperationSpec]:
        """Its operations by name."""
        ...

    def validate(self, operation: str, args: Mapping[str, Any], patient_id: str) -> BaseModel:
        """Parsed arguments, or PlanValidationError."""
        ...


def validate_operation(
    target: Declared, operation: str, args: Mapping[str, Any], patient_id: str
) -> BaseModel:
    """Parsed arguments for ``target.operation``; PlanValidationError when anything is off.

    The patient check is the security boundary: a plan for patient A can never write B.
    """
    spec = target.operations.get(operation)
    if spec is None:
        raise PlanValidationError(
            f"target {target.name!r} ({target.kind}) has no operation {operation!r}; "
            f"known: {sorted(target.operations)}"
        )
    try:
        parsed = spec.args_model.model_validate(dict(args))
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        raise PlanValidationError(
            f"invalid arguments for {target.name}.{operation}: {fields}"
        ) from None
    if str(getattr(parsed, spec.patient_field)) != patient_id:
        raise PlanValidationError(
            f"{target.name}.{operation} names another patient than the entry's"
        )
    return parsed


@dataclass(frozen=True)
class TargetSchema:
    """A configured target's declarations, with no connection behind them."""

    name: str
    kind: str
    operations: Mapping[str, OperationSpec]

    def validate(self, operation: str, args: Mapping[str, Any], patient_id: str) -> BaseModel:
        """See :func:`validate_operation`."""
        return validate_operation(self, operation, args, patient_id)


class Connector(ABC):
    """Base class of every target connector."""

    #: the config name (``connector = "sqlite"``)
    kind: ClassVar[str]
    operations: ClassVar[Mapping[str, OperationSpec]]

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_config(
        cls, name: str, options: Mapping[str, Any], credentials: Mapping[str, str]
    ) -> Connector:
        """Build from a target's config (options as written, credentials resolved). The
        default suits a connector that takes neither; one that does overrides this."""
        return cls(name)

    @classmethod
    def schema(cls, name: str) -> TargetSchema:
        """The declarations of a target named ``name`` using this connector."""
        return TargetSchema(name, cls.kind, cls.operations)

    def validate(self, operation: str, args: Mapping[str, Any], patient_id: str) -> BaseModel:
        """See :func:`validate_operation`."""
        return validate_operation(self, operation, args, patient_id)

    def execute(self, operation: str, args: BaseModel) -> WriteResult:
        """Run one validated operation (dispatches to the method named like the operation)."""
        method = getattr(self, operation)
        result: WriteResult = method(args)
        return result

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
