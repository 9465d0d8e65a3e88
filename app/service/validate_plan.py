"""``validate``'s plan checks: a compiled plan file read into findings at ``file:line:column``.

In order: the file is JSON (``json.JSONDecodeError``'s position), it is a ``CompiledPlan``
(``app.agent.plan``; unknown keys with the close known ones), then per step: its target is one
of the integration's, its operation one the target's connector offers, its argument names the
operation's, every value spec of a known kind (``const``, ``expr``, ``concat``, ``fields``),
every transform in ``app.agent.transforms`` with parameters it takes (a lookup's table in the
plan), and every JMESPath expression parses and reads only what the entry selects
(``app.agent.plan_paths``: ``entry.user_grop.name`` is an error suggesting ``user_group``).
``item`` is typed as an element of the step's ``for_each`` (or ``for_each_removed``, which is
read from the entry itself), so ``item.provider.full_name`` is checked too.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jmespath.exceptions import JMESPathError
from pydantic import ValidationError

from app.agent.plan import CompiledPlan, PlanStep
from app.agent.plan_paths import (
    Leaf,
    Obj,
    Shape,
    Unknown,
    base_shape,
    check_expression,
    context_shape,
    describe,
    element,
    run_shape,
)
from app.agent.transforms import TRANSFORMS
from app.core.config import Integration
from app.service.validate_config import close_hint, dotted, misspelt_once, model_at
from app.service.validate_sources import (
    Finding,
    Loc,
    Severity,
    display_path,
    json_positions,
    nearest,
    where,
)
from connectors.base import Connector

#: transforms ``apply_transform`` handles itself, with the parameters each takes
SPECIAL_TRANSFORMS = {"lookup": ("table", "default"), "default": ("value",)}
SPEC_KINDS = ("const", "expr", "concat", "fields")


@dataclass
class PlanCheck:
    """The findings for one plan file, placed at their JSON values."""

    integration: str
    path: Path
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def add(
        self, loc: Sequence[Any], problem: str, hint: str = "", severity: Severity = "error"
    ) -> None:
        """Record a finding at the JSON value ``loc`` (or its closest enclosing one)."""
        position = nearest(self.positions, loc)
        self.findings.append(
            Finding(self.integration, where(self.path, position), problem, hint, severity)
        )


def read_plan(integration: Integration, path: Path) -> tuple[CompiledPlan | None, PlanCheck]:
    """Parse the plan file; the plan (None when it does not parse) and its findings."""
    check = PlanCheck(integration.id, path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        check.findings.append(
            Finding(integration.id, display_path(path), f"cannot read the plan: {exc.strerror}")
        )
        return None, check
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        check.findings.append(
            Finding(
                integration.id,
                where(path, (exc.lineno, exc.colno)),
                f"the plan is not valid JSON: {exc.msg}",
                "a trailing comma, a missing comma or quote, or a comment (JSON has none)",
            )
        )
        return None, check
    check.positions = json_positions(text)
    try:
        plan = CompiledPlan.model_validate(data)
    except ValidationError as exc:
        for error in misspelt_once(exc.errors(include_input=False)):
            loc = tuple(error["loc"])
            if error["type"] == "extra_forbidden":
                model = model_at(CompiledPlan, loc[:-1])
                check.add(
                    loc, f"unknown plan key {dotted(loc)}", close_hint(str(loc[-1]), _keys(model))
                )
            elif error["type"] == "missing":
                check.add(loc[:-1], f"missing plan key {dotted(loc)}")
            else:
                check.add(loc, f"plan {dotted(loc) or 'file'}: {error['msg']}")
        return None, check
    if plan.integration != integration.id:
        check.add(
            ("integration",),
            f"the plan says it is for integration {plan.integration!r}",
            f"is agent.plan the right file? (this integration is {integration.id!r})",
            "warning",
        )
    instructions = integration.agent.instructions
    if instructions.is_file():
        digest = hashlib.sha256(instructions.read_bytes()).hexdigest()
        if digest != plan.instructions_sha256:
            check.add(
                ("instructions_sha256",),
                "the plan was compiled from another version of its instructions",
                f"recompile and review it: healthie-sync compile {integration.id}",
                "warning",
            )
    return plan, check


def _keys(model: Any) -> list[str]:
    return list(model.model_fields) if model is not None else []


def check_plan(
    plan: CompiledPlan,
    check: PlanCheck,
    integration: Integration,
    entry: Obj,
    connectors: Mapping[str, type[Connector] | None],
) -> None:
    """Check every step of a parsed plan (see the module docstring); findings go to
    ``check``. ``connectors``: each target's connector class, None when it is unknown."""
    base = base_shape(entry)
    if plan.run_when:
        _expr(check, plan.run_when, run_shape(), ("run_when",), "run_when")
    if plan.skip_when:
        _expr(check, plan.skip_when, base, ("skip_when",), "skip_when")
    for index, step in enumerate(plan.operations):
        label = f"step {index + 1}" + (f" ({step.note})" if step.note else "")
        loc: Loc = ("operations", index)
        _step_target(check, step, loc, label, integration, connectors)
        item: Shape | None = None
        if step.for_each:
            listed = _expr(check, step.for_each, base, (*loc, "for_each"), label)
            item = _items(check, listed, (*loc, "for_each"), label, step.for_each)
        elif step.for_each_removed:
            # evaluated on the previous and the current entry themselves, not on the context
            listed = _expr(check, step.for_each_removed, entry, (*loc, "for_each_removed"), label)
            item = _items(check, listed, (*loc, "for_each_removed"), label, step.for_each_removed)
        context = context_shape(entry, item)
        if step.when:
            _expr(check, step.when, context, (*loc, "when"), label)
        for name, spec in step.args.items():
            _spec(check, plan, spec, context, (*loc, "args", name), f"{label}, {name}")


def _items(check: PlanCheck, listed: Shape, loc: Loc, label: str, expr: str) -> Shape:
    found = element(listed)
    if isinstance(listed, Obj) or (isinstance(listed, Leaf) and not listed.opaque):
        check.add(
            loc,
            f"{label}: {expr} is {describe(listed)}, not a list: the step runs for no item",
            "iterate a list, e.g. entry.appointments",
        )
    return found


def _step_target(
    check: PlanCheck,
    step: PlanStep,
    loc: Loc,
    label: str,
    integration: Integration,
    connectors: Mapping[str, type[Connector] | None],
) -> None:
    names = [t.name for t in integration.targets]
    if step.target not in names:
        check.add(
            (*loc, "target"),
            f"{label}: no target named {step.target!r} in the integration",
            close_hint(step.target, names, "targets"),
        )
        return
    cls = connectors.get(step.target)
    if cls is None:  # its unknown connector is reported with the target
        return
    spec = cls.operations.get(step.operation)
    if spec is None:
        check.add(
            (*loc, "operation"),
            f"{label}: target {step.target!r} ({cls.kind}) has no operation {step.operation!r}",
            close_hint(step.operation, list(cls.operations), "operations"),
        )
        return
    fields = spec.args_model.model_fields
    for name in step.args:
        if name not in fields:
            check.add(
                (*loc, "args", name),
                f"{label}: {step.operation} takes no argument {name!r} (it would be dropped)",
                close_hint(name, list(fields), "arguments"),
            )
    for name, info in fields.items():
        if info.is_required() and name not in step.args:
            check.add((*loc, "args"), f"{label}: {step.operation} needs the argument {name!r}")


def _spec(
    check: PlanCheck, plan: CompiledPlan, spec: Any, context: Obj, loc: Loc, label: str
) -> None:
    if not isinstance(spec, dict):
        return  # a bare JSON value is a literal
    if "const" in spec:
        return
    if "expr" in spec:
        if isinstance(spec["expr"], str):
            _expr(check, spec["expr"], context, (*loc, "expr"), label)
        else:
            check.add((*loc, "expr"), f"{label}: expr must be a JMESPath string")
        transforms = spec.get("transforms", [])
        if not isinstance(transforms, list):
            check.add((*loc, "transforms"), f"{label}: transforms must be a list")
            return
        for index, transform in enumerate(transforms):
            _transform(check, plan, transform, (*loc, "transforms", index), label)
        return
    if "concat" in spec:
        parts = spec["concat"]
        if not isinstance(parts, list):
            check.add((*loc, "concat"), f"{label}: concat must be a list of value specs")
            return
        for index, part in enumerate(parts):
            _spec(check, plan, part, context, (*loc, "concat", index), label)
        return
    if "fields" in spec:
        fields = spec["fields"]
        if not isinstance(fields, dict):
            check.add((*loc, "fields"), f"{label}: fields must be an object of value specs")
            return
        for name, part in fields.items():
            _spec(check, plan, part, context, (*loc, "fields", name), f"{label}.{name}")
        return
    keys = sorted(spec)
    hint = close_hint(keys[0], SPEC_KINDS, "kinds") if keys else ""
    check.add(
        loc,
        f"{label}: a value spec needs one of {', '.join(SPEC_KINDS)} (got {keys or 'none'})",
        hint,
    )


def _transform(check: PlanCheck, plan: CompiledPlan, spec: Any, loc: Loc, label: str) -> None:
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
        name, params = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        check.add(loc, f'{label}: a transform is a name or {{"name": ..., params}}')
        return
    known = sorted([*TRANSFORMS, *SPECIAL_TRANSFORMS])
    if name not in known:
        check.add(
            loc, f"{label}: unknown transform {name!r}", close_hint(name, known, "transforms")
        )
        return
    if name in SPECIAL_TRANSFORMS:
        accepted = SPECIAL_TRANSFORMS[name]
        if name == "lookup" and str(params.get("table")) not in plan.tables:
            check.add(
                loc,
                f"{label}: lookup table {params.get('table')!r} is not in the plan's tables",
                close_hint(str(params.get("table")), list(plan.tables), "tables"),
            )
    else:  # the function's parameters after the value
        accepted = tuple(list(inspect.signature(TRANSFORMS[name]).parameters)[1:])
    extra = sorted(set(params) - set(accepted))
    if extra:
        check.add(
            loc,
            f"{label}: transform {name!r} takes no parameter {', '.join(map(repr, extra))}",
            f"it takes: {', '.join(accepted)}" if accepted else "it takes no parameters",
        )


def _expr(check: PlanCheck, expr: str, context: Shape, loc: Loc, label: str) -> Shape:
    try:
        shape, issues = check_expression(expr, context)
    except JMESPathError as exc:
        position = getattr(exc, "lex_position", getattr(exc, "lexer_position", None))
        reason = getattr(exc, "msg", None) or getattr(exc, "message", None) or type(exc).__name__
        at = f" at character {position}" if isinstance(position, int) else ""
        check.add(loc, f"{label}: invalid JMESPath {expr!r}: {reason}{at}")
        return Unknown(None)
    for issue in issues:
        check.add(loc, f"{label}: {issue.path}: {issue.problem}", issue.hint, issue.severity)
    return shape
