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

**Time.** Every expression can also read ``run``, the run's time (``run.now``, ``run.date``,
``run.weekday``, ``run.day_of_month``, ``run.days_in_month``, ``run.days_left_in_month``...),
and call the date functions ``days_since(ts)``, ``days_until(ts)``, ``within_days(ts, n)``,
``within_next_days(ts, n)`` and ``local_date(ts)`` (``app.agent.plan_time``). Calendar dates
are those of the plan's ``timezone`` (an IANA name, default ``"UTC"``). Example, "customer if
an appointment occurred in the last 90 days"::

    length(entry.appointments[?pm_status == 'Occurred' && within_days(date, `90`)] || `[]`) > `0`

``run_when`` (JMESPath over ``run`` only) says on which runs the plan produces anything at all,
e.g. ``run.days_left_in_month < `7``` (a weekly run that writes only in a month's last week:
a monthly schedule). On other runs the integration's patients wait, unprocessed, for the next
run where it holds. The same entry at the same run time always gives the same plan.

**Loading and errors.** Loading a plan compiles everything once: each expression into a closure
(``app.agent.plan_exprs``), each value spec and transform into a function, so an invalid
expression, an unknown transform or lookup table, or a spec of no known kind is a
ConfigurationError at load, and an entry only runs closures. An expression or transform that
fails on an entry is a FatalError naming its place in the plan (``operations[0]
(warehouse.upsert_row) args.values.fields.phone``), the expression and the JMESPath types
involved, never the value: the text ends up in dead letters and logs. Each plan is compiled
twice for that: an entry first runs the bare closures (no per-expression error handling, the
hot path), and only when that run fails is it evaluated again with every expression and
transform guarded; evaluation is deterministic, so the second run fails at the same place.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jmespath.exceptions import ArityError, JMESPathError, JMESPathTypeError
from jmespath.functions import Functions
from pydantic import BaseModel, ConfigDict, Field

from app.agent.base import DecideItem
from app.agent.plan_exprs import Evaluator, compile_expression
from app.agent.plan_paths import check_expression, run_shape
from app.agent.plan_time import RunClock, zone
from app.agent.transforms import Transform, resolve_transform
from app.core.config import Integration
from app.core.errors import ConfigurationError, FatalError, HealthieSyncError, RetriableError
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
    #: the IANA zone of the plan's calendar (``run.date``, ``days_since``...)
    timezone: str = "UTC"
    #: on which runs the plan writes at all (JMESPath over ``run``); None: every run
    run_when: str | None = None
    skip_when: str | None = None
    skip_reason: str = "excluded by the instructions"
    tables: dict[str, dict[str, Any]] = Field(default_factory=dict)
    operations: list[PlanStep]


#: A compiled value spec: ``(context, functions) -> value``.
_Value = Callable[[dict[str, Any], Functions], Any]

# What evaluating a plan over an entry can raise besides JMESPath's errors (an ordering of a
# string with a number, a transform meeting an odd value). The messages of these can quote the
# value, so only their class names are kept.
_EVALUATION_ERRORS = (TypeError, ValueError, ArithmeticError, AttributeError, LookupError)


def _reason(exc: Exception) -> str:
    """Why an expression failed, from the error's kinds and names only: JMESPath's own message
    quotes the offending value (``invalid type for value: 555-0100``), a patient's data."""
    if isinstance(exc, JMESPathTypeError):
        expected = " or ".join(str(t) for t in exc.expected_types)
        return f"{exc.function_name}() received {exc.actual_type}, expected {expected}"
    if isinstance(exc, ArityError):
        return (
            f"{exc.function_name}() takes {exc.expected_arity} argument(s), got {exc.actual_arity}"
        )
    return type(exc).__name__


@dataclass(frozen=True)
class _Expr:
    """One expression of the plan, compiled once; ``where`` is its place in the plan file."""

    where: str
    text: str
    evaluate: Evaluator

    def __call__(self, context: Any, functions: Functions) -> Any:
        try:
            return self.evaluate(context, functions)
        except _EVALUATION_ERRORS as exc:  # JMESPathError is a ValueError
            raise FatalError(
                f"plan {self.where}: expression {self.text!r} failed: {_reason(exc)}"
            ) from None


def _compile_expr(expr: str, where: str) -> _Expr:
    try:
        return _Expr(where, expr, compile_expression(expr))
    except JMESPathError as exc:
        # the plan's own text, not a patient value: the parser's message is safe here
        raise ConfigurationError(f"invalid JMESPath {expr!r} at {where} in plan: {exc}") from exc


def _transformed(expr: Evaluator, transforms: list[Transform], where: str) -> _Value:
    def value(context: dict[str, Any], functions: Functions) -> Any:
        result = expr(context, functions)
        for transform in transforms:
            try:
                result = transform.apply(result)
            except _EVALUATION_ERRORS as exc:
                raise FatalError(
                    f"plan {where}: transform {transform.name!r} failed: {type(exc).__name__}"
                ) from None
        return result

    return value


def _applied(expr: Evaluator, transforms: list[Transform]) -> _Value:
    """``expr`` then ``transforms``, unguarded (the fast evaluation, see ``PlanAgent``)."""
    if len(transforms) == 1:
        apply = transforms[0].apply
        return lambda context, functions: apply(expr(context, functions))
    applies = [t.apply for t in transforms]

    def value(context: dict[str, Any], functions: Functions) -> Any:
        result = expr(context, functions)
        for apply in applies:
            result = apply(result)
        return result

    return value


def _concat(parts: list[_Value], sep: str) -> _Value:
    def value(context: dict[str, Any], functions: Functions) -> Any:
        texts = []
        for part in parts:
            v = part(context, functions)
            if v is not None and v != "":
                texts.append(str(v))
        return sep.join(texts) or None

    return value


def _object(fields: dict[str, _Value]) -> _Value:
    def value(context: dict[str, Any], functions: Functions) -> Any:
        return {k: f(context, functions) for k, f in fields.items()}

    return value


def _constant(literal: Any) -> _Value:
    return lambda context, functions: literal


def _compile_value(
    spec: Any, where: str, tables: dict[str, dict[str, Any]], *, guarded: bool = True
) -> _Value:
    """A value spec (see the module docstring) as a closure; ConfigurationError, at load, for
    an unknown kind, expression or transform. ``guarded``: each expression and transform turns
    its failure into a FatalError naming its place; unguarded, failures are raised as they
    are (the fast evaluation, re-run guarded when it fails)."""
    if not isinstance(spec, dict):
        return _constant(spec)
    if "const" in spec:
        return _constant(spec["const"])
    if "expr" in spec:
        expr = _compile_expr(str(spec["expr"]), where)
        transforms = [resolve_transform(t, tables) for t in spec.get("transforms", [])]
        if not guarded:
            return _applied(expr.evaluate, transforms) if transforms else expr.evaluate
        return _transformed(expr, transforms, where) if transforms else expr
    if "concat" in spec:
        parts = [
            _compile_value(p, f"{where}.concat[{i}]", tables, guarded=guarded)
            for i, p in enumerate(spec["concat"])
        ]
        return _concat(parts, str(spec.get("sep", "")))
    if "fields" in spec:
        return _object(
            {
                name: _compile_value(sub, f"{where}.fields.{name}", tables, guarded=guarded)
                for name, sub in spec["fields"].items()
            }
        )
    raise ConfigurationError(f"plan value spec at {where} has no known kind ({sorted(spec)})")


@dataclass(frozen=True)
class _Step:
    """A plan step compiled: its conditions, its iteration and its argument builders, each
    both guarded (naming its place when it fails) and unguarded (``fast``)."""

    target: str
    operation: str
    args: dict[str, _Value]
    fast_args: dict[str, _Value]
    when: _Expr | None
    for_each: _Expr | None
    for_each_removed: _Expr | None


def _compile_step(step: PlanStep, index: int, tables: dict[str, dict[str, Any]]) -> _Step:
    where = f"operations[{index}] ({step.target}.{step.operation})"

    def expr(name: str) -> _Expr | None:
        text = getattr(step, name)
        return _compile_expr(text, f"{where} {name}") if text else None

    def args(guarded: bool) -> dict[str, _Value]:
        return {
            k: _compile_value(v, f"{where} args.{k}", tables, guarded=guarded)
            for k, v in step.args.items()
        }

    return _Step(
        target=step.target,
        operation=step.operation,
        args=args(True),
        fast_args=args(False),
        when=expr("when"),
        for_each=expr("for_each"),
        for_each_removed=expr("for_each_removed"),
    )


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
        # Every expression and transform is compiled here, once per plan: a bad one fails at
        # load, and entries only run closures (``app.agent.plan_exprs``).
        tables = plan.tables
        self._steps = [_compile_step(step, i, tables) for i, step in enumerate(plan.operations)]
        self._skip_when = _compile_expr(plan.skip_when, "skip_when") if plan.skip_when else None
        zone(plan.timezone)  # an unknown zone fails at load, not at the first entry
        self._last_clock: RunClock | None = None
        self._run_when: _Expr | None = None
        if plan.run_when:
            self._run_when = _compile_expr(plan.run_when, "run_when")
            _, issues = check_expression(plan.run_when, run_shape())
            errors = [f"{i.path}: {i.problem}" for i in issues if i.severity == "error"]
            if errors:
                raise ConfigurationError(f"plan run_when {plan.run_when!r}: {'; '.join(errors)}")

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

    def clock(self, as_of: datetime | None = None) -> RunClock:
        """The plan's clock at ``as_of`` (now when None), in the plan's time zone. The
        entries of one run share one instant: its clock (and the functions bound to it) is
        made once, not once per entry."""
        last = self._last_clock
        if as_of is not None and last is not None and last.as_of == as_of:
            return last  # the same instant: every answer of the clock is the same
        clock = RunClock.at(as_of, self.plan.timezone)
        self._last_clock = clock  # one assignment: threads sharing the agent see one or other
        return clock

    def runs_at(self, as_of: datetime | None = None) -> bool:
        """Whether ``run_when`` holds at ``as_of``: whether a run then may write anything. A
        flush asks before publishing an integration's patients, so on other runs they wait."""
        return self._runs(self.clock(as_of))

    def _runs(self, clock: RunClock) -> bool:
        if self._run_when is None:
            return True
        return bool(self._run_when({"run": clock.context()}, clock.functions))

    def opens_at(self, as_of: datetime) -> datetime | None:
        """The first local midnight after ``as_of`` (within 62 days) when ``run_when`` holds;
        None when there is none (a run-time condition that no day start satisfies)."""
        start = self.clock(as_of).local.replace(hour=0, minute=0, second=0, microsecond=0)
        for days in range(1, 63):
            # wall-clock midnight of each following date (astimezone settles DST gaps)
            moment = (start + timedelta(days=days)).astimezone(start.tzinfo)
            if self.runs_at(moment):
                return moment
        return None

    def _removed(self, expr: Evaluator, base: dict[str, Any], functions: Functions) -> list[Any]:
        if base["previous"] is None:
            return []
        before = expr(base["previous"], functions) or []
        now = expr(base["entry"], functions) or []
        current = {str(i.get("id")) for i in now if isinstance(i, dict)}
        return [i for i in before if isinstance(i, dict) and str(i.get("id")) not in current]

    def _operations(
        self, base: dict[str, Any], functions: Functions, *, guarded: bool
    ) -> list[WriteOperation] | None:
        """The plan's operations for ``base``; None when ``skip_when`` holds. Unguarded, an
        entry runs only the compiled closures (no per-expression error handling), and a
        failure is raised as it is; guarded, it is the FatalError naming its place."""

        def run(expr: _Expr) -> Evaluator:
            return expr if guarded else expr.evaluate

        if self._skip_when is not None and run(self._skip_when)(base, functions):
            return None
        operations: list[WriteOperation] = []
        for step in self._steps:
            builders = step.args if guarded else step.fast_args
            items: list[Any] = [None]
            if step.for_each is not None:
                found = run(step.for_each)(base, functions)
                items = list(found) if isinstance(found, list) else []
            elif step.for_each_removed is not None:
                items = self._removed(run(step.for_each_removed), base, functions)
            for item in items:
                context = {**base, "item": item}
                if step.when is not None and not run(step.when)(context, functions):
                    continue
                args = {k: build(context, functions) for k, build in builders.items()}
                operations.append(
                    WriteOperation(target=step.target, operation=step.operation, args=args)
                )
        return operations

    def decide(
        self,
        integration: Integration,
        entry: Entry,
        previous: PatientState | None,
        *,
        as_of: datetime | None = None,
    ) -> WritePlan:
        """Evaluate the plan against the entry (and the previous entry, for change rules) as
        of ``as_of``, the run's time (default: when the entry was fetched). Raises
        RetriableError, with the wait until the next run window, when ``run_when`` does not
        hold: the patient is not recorded as processed, so nothing is lost."""
        clock = self.clock(as_of or entry.fetched_at)
        if not self._runs(clock):
            opens = self.opens_at(clock.as_of)
            wait = (opens - clock.as_of).total_seconds() if opens else None
            raise RetriableError(
                f"plan run_when does not hold on {clock.today.isoformat()}: "
                f"the patient waits for a run where it does",
                retry_after=wait,
            )
        functions = clock.functions
        base = {
            "entry": entry.data,
            "previous": previous.entry if previous else None,
            "run": clock.context(),
        }
        try:
            operations = self._operations(base, functions, guarded=False)
        except _EVALUATION_ERRORS:
            # An expression or transform failed on this entry. Evaluation is deterministic
            # (the same entries, the same clock), so the guarded run fails at the same place
            # and raises the FatalError naming it, never the value.
            operations = self._operations(base, functions, guarded=True)
        if operations is None:
            return WritePlan.skip(entry.patient_id, self.plan.skip_reason, backend=self.name)
        if not operations:
            return WritePlan.skip(entry.patient_id, "no plan step applies", backend=self.name)
        return WritePlan(
            patient_id=entry.patient_id,
            operations=tuple(operations),
            rationale=f"compiled plan v{self.plan.version}",
            backend=self.name,
        )

    def decide_many(
        self,
        integration: Integration,
        items: Sequence[DecideItem],
        *,
        as_of: datetime | None = None,
    ) -> list[WritePlan | Exception]:
        """``decide`` per entry, all as of the same ``as_of`` (a compiled plan has nothing to
        gain from batching); an engine error fills its own item's slot."""
        out: list[WritePlan | Exception] = []
        for entry, previous in items:
            try:
                # without a run time, the three-argument call of the Agent protocol (so a
                # wrapped or recording ``decide`` keeps working)
                if as_of is None:
                    out.append(self.decide(integration, entry, previous))
                else:
                    out.append(self.decide(integration, entry, previous, as_of=as_of))
            except HealthieSyncError as exc:
                out.append(exc)
        return out


def held_until(integration: Integration, as_of: datetime) -> datetime | None:
    """For a flush at ``as_of``: None when the integration may run now, else when its plan's
    ``run_when`` next holds (its patients then stay pending until that run). Only a compiled
    plan has a ``run_when``; an unloadable plan is the run's own ConfigurationError."""
    path = integration.agent.plan
    if integration.agent.backend != "plan" or path is None:
        return None
    agent = PlanAgent.from_file(path)
    if agent.runs_at(as_of):
        return None
    opens = agent.opens_at(as_of)
    return opens if opens is not None else as_of + timedelta(days=62)
