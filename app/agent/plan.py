"""The compiled-plan backend: a reviewed JSON plan executed deterministically, no model call.

A plan file (``prompts/plans/*.plan.json``) holds ``operations``; each has an optional ``when``
(a JMESPath condition), an optional ``for_each`` (a JMESPath list; the item is ``item``), a
``target``, an ``operation`` and ``args`` built from value specs:

* ``{"const": V}`` - a literal;
* ``{"expr": "entry.first_name", "transforms": [...]}`` - JMESPath over
  ``{"entry", "previous", "item"}`` then transforms from ``app.agent.transforms``;
* ``{"concat": [spec, ...], "sep": " "}`` - joined strings, skipping empty parts;
* ``{"fields": {name: spec, ...}}`` - an object.

``for_each_removed`` (a JMESPath list, evaluated against the previous entry and the current one)
iterates the objects whose ``id`` was in the previous list and is gone now: how a plan deletes
rows for things Healthie no longer lists (deleted appointments, removed policies).

``skip_when`` (JMESPath) makes the whole plan a skip with ``skip_reason``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import BaseModel, ConfigDict, Field

from app.agent.base import DecideItem, decide_each
from app.agent.transforms import apply_transform
from app.core.config import Integration
from app.core.errors import ConfigurationError, FatalError
from app.core.models import Entry, WriteOperation, WritePlan
from app.state.base import PatientState

log = logging.getLogger(__name__)


class PlanStep(BaseModel):
    """One operation template of a compiled plan."""

    model_config = ConfigDict(extra="forbid")

    target: str
    operation: str
    args: dict[str, Any]
    when: str | None = None
    for_each: str | None = None
    for_each_removed: str | None = None
    note: str = ""


class CompiledPlan(BaseModel):
    """A whole compiled plan file."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    integration: str
    instructions_sha256: str
    skip_when: str | None = None
    skip_reason: str = "excluded by the instructions"
    tables: dict[str, dict[str, Any]] = Field(default_factory=dict)
    operations: list[PlanStep]


def _compile_expr(expr: str) -> Any:
    try:
        return jmespath.compile(expr)
    except JMESPathError as exc:
        raise ConfigurationError(f"invalid JMESPath {expr!r} in plan: {exc}") from exc


def _column_type(spec: Any) -> str:
    transforms = spec.get("transforms", []) if isinstance(spec, dict) else []
    names = [t if isinstance(t, str) else t.get("name") for t in transforms]
    last = names[-1] if names else None
    return {"bool": "boolean", "date": "date"}.get(str(last), "text")


class PlanAgent:
    """Executes a compiled plan; the same inputs always give the same WritePlan."""

    name = "plan"

    def __init__(self, plan: CompiledPlan, *, instructions_text: str | None = None) -> None:
        self.plan = plan
        if instructions_text is not None:
            digest = hashlib.sha256(instructions_text.encode("utf-8")).hexdigest()
            if digest != plan.instructions_sha256:
                # The document was edited after compiling: run the reviewed plan, but say so.
                log.warning(
                    "plan for %s was compiled from another version of its instructions; "
                    "recompile and review it",
                    plan.integration,
                )
        self._exprs: dict[str, Any] = {}
        for step in plan.operations:
            for expr in filter(None, (step.when, step.for_each, step.for_each_removed)):
                self._exprs[expr] = _compile_expr(expr)
            self._collect(step.args)
        if plan.skip_when:
            self._exprs[plan.skip_when] = _compile_expr(plan.skip_when)

    @classmethod
    def from_file(cls, path: Path, instructions: Path | None = None) -> PlanAgent:
        """Load and validate a plan file."""
        try:
            plan = CompiledPlan.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot load compiled plan {path}: {exc}") from exc
        text = instructions.read_text(encoding="utf-8") if instructions else None
        return cls(plan, instructions_text=text)

    def declared_tables(self) -> dict[str, dict[str, dict[str, str]]]:
        """The tables and typed columns the plan writes, per target: ``{target: {table:
        {column: type}}}``, for targets whose operations name a constant table. A column's type
        follows its last transform (``bool`` -> boolean, ``date`` -> date), otherwise text. The
        write stage refuses anything a plan writes outside these declarations."""
        out: dict[str, dict[str, dict[str, str]]] = {}
        for step in self.plan.operations:
            table = step.args.get("table")
            if not (isinstance(table, dict) and isinstance(table.get("const"), str)):
                continue
            columns = out.setdefault(step.target, {}).setdefault(table["const"], {})
            fields = step.args.get("values", {})
            for column, spec in (
                fields.get("fields", {}) if isinstance(fields, dict) else {}
            ).items():
                columns[column] = _column_type(spec)
        return out

    def _collect(self, spec: Any) -> None:
        if isinstance(spec, dict):
            if "expr" in spec:
                self._exprs[spec["expr"]] = _compile_expr(spec["expr"])
            for value in spec.values():
                self._collect(value)
        elif isinstance(spec, list):
            for value in spec:
                self._collect(value)

    def _search(self, expr: str, context: dict[str, Any]) -> Any:
        try:
            return self._exprs[expr].search(context)
        except JMESPathError as exc:
            raise FatalError(f"plan expression {expr!r} failed: {exc}") from exc

    def _value(self, spec: Any, context: dict[str, Any]) -> Any:
        if not isinstance(spec, dict):
            return spec
        if "const" in spec:
            return spec["const"]
        if "expr" in spec:
            value = self._search(spec["expr"], context)
            for transform in spec.get("transforms", []):
                value = apply_transform(transform, value, self.plan.tables)
            return value
        if "concat" in spec:
            parts = [self._value(p, context) for p in spec["concat"]]
            text = str(spec.get("sep", "")).join(str(p) for p in parts if p not in (None, ""))
            return text or None
        if "fields" in spec:
            return {k: self._value(v, context) for k, v in spec["fields"].items()}
        raise ConfigurationError(f"plan value spec {json.dumps(spec)[:80]} has no known kind")

    def _removed(self, expr: str, base: dict[str, Any]) -> list[Any]:
        if base["previous"] is None:
            return []
        before = self._exprs[expr].search(base["previous"]) or []
        now = self._exprs[expr].search(base["entry"]) or []
        current = {str(i.get("id")) for i in now if isinstance(i, dict)}
        return [i for i in before if isinstance(i, dict) and str(i.get("id")) not in current]

    def decide(
        self, integration: Integration, entry: Entry, previous: PatientState | None
    ) -> WritePlan:
        """Evaluate the plan against the entry (and the previous entry, for change rules)."""
        base = {"entry": entry.data, "previous": previous.entry if previous else None}
        if self.plan.skip_when and self._search(self.plan.skip_when, base):
            return WritePlan.skip(entry.patient_id, self.plan.skip_reason, backend=self.name)
        operations: list[WriteOperation] = []
        for step in self.plan.operations:
            items: list[Any] = [None]
            if step.for_each:
                found = self._search(step.for_each, base)
                items = list(found) if isinstance(found, list) else []
            elif step.for_each_removed:
                items = self._removed(step.for_each_removed, base)
            for item in items:
                context = {**base, "item": item}
                if step.when and not self._search(step.when, context):
                    continue
                args = {k: self._value(v, context) for k, v in step.args.items()}
                operations.append(
                    WriteOperation(target=step.target, operation=step.operation, args=args)
                )
        if not operations:
            return WritePlan.skip(entry.patient_id, "no plan step applies", backend=self.name)
        return WritePlan(
            patient_id=entry.patient_id,
            operations=tuple(operations),
            rationale=f"compiled plan v{self.plan.version}",
            backend=self.name,
        )

    def decide_many(
        self, integration: Integration, items: Sequence[DecideItem]
    ) -> list[WritePlan | Exception]:
        """``decide`` per entry (a compiled plan has nothing to gain from batching)."""
        return decide_each(self, integration, items)
