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
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import BaseModel, ConfigDict, Field

from app.agent.base import DecideItem
from app.agent.plan_paths import check_expression, run_shape
from app.agent.plan_time import RunClock, zone
from app.agent.transforms import apply_transform
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
        zone(plan.timezone)  # an unknown zone fails at load, not at the first entry
        if plan.run_when:
            self._exprs[plan.run_when] = _compile_expr(plan.run_when)
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

    def _collect(self, spec: Any) -> None:
        if isinstance(spec, dict):
            if "expr" in spec:
                self._exprs[spec["expr"]] = _compile_expr(spec["expr"])
            for value in spec.values():
                self._collect(value)
        elif isinstance(spec, list):
            for value in spec:
                self._collect(value)

    def clock(self, as_of: datetime | None = None) -> RunClock:
        """The plan's clock at ``as_of`` (now when None), in the plan's time zone."""
        return RunClock.at(as_of, self.plan.timezone)

    def runs_at(self, as_of: datetime | None = None) -> bool:
        """Whether ``run_when`` holds at ``as_of``: whether a run then may write anything. A
        flush asks before publishing an integration's patients, so on other runs they wait."""
        if not self.plan.run_when:
            return True
        clock = self.clock(as_of)
        return bool(self._search(self.plan.run_when, {"run": clock.context()}, clock))

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

    def _search(self, expr: str, context: dict[str, Any], clock: RunClock | None = None) -> Any:
        options = (clock or self.clock()).options()
        try:
            return self._exprs[expr].search(context, options=options)
        except JMESPathError as exc:
            raise FatalError(f"plan expression {expr!r} failed: {exc}") from exc

    def _value(self, spec: Any, context: dict[str, Any], clock: RunClock) -> Any:
        if not isinstance(spec, dict):
            return spec
        if "const" in spec:
            return spec["const"]
        if "expr" in spec:
            value = self._search(spec["expr"], context, clock)
            for transform in spec.get("transforms", []):
                value = apply_transform(transform, value, self.plan.tables)
            return value
        if "concat" in spec:
            parts = [self._value(p, context, clock) for p in spec["concat"]]
            text = str(spec.get("sep", "")).join(str(p) for p in parts if p not in (None, ""))
            return text or None
        if "fields" in spec:
            return {k: self._value(v, context, clock) for k, v in spec["fields"].items()}
        raise ConfigurationError(f"plan value spec {json.dumps(spec)[:80]} has no known kind")

    def _removed(self, expr: str, base: dict[str, Any], clock: RunClock) -> list[Any]:
        if base["previous"] is None:
            return []
        before = self._search(expr, base["previous"], clock) or []
        now = self._search(expr, base["entry"], clock) or []
        current = {str(i.get("id")) for i in now if isinstance(i, dict)}
        return [i for i in before if isinstance(i, dict) and str(i.get("id")) not in current]

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
        if not self.runs_at(clock.as_of):
            opens = self.opens_at(clock.as_of)
            wait = (opens - clock.as_of).total_seconds() if opens else None
            raise RetriableError(
                f"plan run_when does not hold on {clock.today.isoformat()}: "
                f"the patient waits for a run where it does",
                retry_after=wait,
            )
        base = {
            "entry": entry.data,
            "previous": previous.entry if previous else None,
            "run": clock.context(),
        }
        if self.plan.skip_when and self._search(self.plan.skip_when, base, clock):
            return WritePlan.skip(entry.patient_id, self.plan.skip_reason, backend=self.name)
        operations: list[WriteOperation] = []
        for step in self.plan.operations:
            items: list[Any] = [None]
            if step.for_each:
                found = self._search(step.for_each, base, clock)
                items = list(found) if isinstance(found, list) else []
            elif step.for_each_removed:
                items = self._removed(step.for_each_removed, base, clock)
            for item in items:
                context = {**base, "item": item}
                if step.when and not self._search(step.when, context, clock):
                    continue
                args = {k: self._value(v, context, clock) for k, v in step.args.items()}
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
