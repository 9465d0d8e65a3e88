"""Compiled plan expressions evaluate exactly as jmespath's own interpreter does.

Every expression of every committed plan, and expressions exercising each JMESPath node kind,
run both ways over fixed and generated documents: the same result, or the same error."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jmespath
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jmespath.parser import Parser
from jmespath.visitor import TreeInterpreter

from app.agent.plan import PlanAgent
from app.agent.plan_exprs import compile_expression
from app.agent.plan_time import RunClock
from app.core.config import load_integration
from app.core.models import Entry

REPO = Path(__file__).resolve().parents[2]
PLANS = sorted((REPO / "prompts" / "plans").rglob("*.plan.json"))
INTEGRATION = load_integration(REPO / "config" / "integrations" / "demo-clinic.toml")
CLOCK = RunClock.at(datetime(2026, 12, 1, 16, 14, 31, tzinfo=UTC), "America/New_York")
EXPRESSION_KEYS = ("expr", "when", "for_each", "for_each_removed", "skip_when", "run_when")

# One or more of each node kind, and the library's corner cases (0/1 against booleans, !0,
# ordering across types, projections dropping nulls, slices, exprefs).
EDGE_EXPRESSIONS = [
    "@",
    "entry",
    "entry.a.b.c",
    "entry.list[0]",
    "entry.list[-1]",
    "entry.list[5]",
    "entry.list[1:]",
    "entry.list[::-1]",
    "entry.list[:2].id",
    "entry.list[*].id",
    "entry.list[].id",
    "entry.nested[]",
    "entry.nested[][]",
    "entry.obj.*",
    "entry.obj.*.x",
    "entry.list[?id == `1`]",
    "entry.list[?id > `1`].id",
    "entry.list[?name < 'm'].name",
    "entry.list[?!flag]",
    "entry.list[?flag && id]",
    "entry.list[?flag || name]",
    "entry.zero == `false`",
    "entry.one == `true`",
    "entry.one != `true`",
    "!entry.zero",
    "!entry.empty",
    "entry.num < entry.text",
    "entry.num >= `2`",
    "entry.text > 'a'",
    "entry.missing || `[]`",
    "entry.empty && 'x'",
    "[entry.num, entry.text]",
    "{n: entry.num, t: entry.text}",
    "entry.list | [0]",
    "entry.list | length(@)",
    "length(entry.list || `[]`)",
    "entry.text.length(@)",
    "sort(entry.list[].name || `[]`)",
    "sort_by(entry.list || `[]`, &id)[].id",
    "max_by(entry.list || `[]`, &id).id",
    "min_by(entry.list || `[]`, &id).id",
    "map(&name, entry.list || `[]`)",
    "contains(entry.list[].name || `[]`, 'b')",
    "join(', ', entry.list[].name || `[]`)",
    "to_string(entry.num)",
    "to_number(entry.text)",
    "not_null(entry.missing, entry.num)",
    "abs(entry.num)",
    "abs(entry.text)",
    "sum(entry.list[].name)",
    "keys(entry.obj)",
    "type(entry.obj)",
    "days_since(entry.when)",
    "days_until(entry.when)",
    "within_days(entry.when, `30`)",
    "within_next_days(entry.when, `30`)",
    "local_date(entry.when)",
    "run.date",
    "run.days_left_in_month < `7`",
    '`{"a": [1, 2]}`.a[1]',
]

DOCUMENTS: list[Any] = [
    None,
    {},
    {"entry": None},
    {"entry": []},
    {
        "entry": {
            "a": {"b": {"c": "deep"}},
            "list": [
                {"id": 1, "name": "a", "flag": True},
                {"id": 2, "name": "z", "flag": False},
                {"id": 0, "name": None, "flag": 0},
            ],
            "nested": [[1, 2], 3, [[4]]],
            "obj": {"x": {"x": 1}, "y": 2},
            "zero": 0,
            "one": 1,
            "empty": "",
            "num": 3,
            "text": "12",
            "when": "2026-11-20T10:00:00Z",
        },
        "run": CLOCK.context(),
    },
    {"entry": {"list": [{"id": "b", "name": 3}, {"id": 2}], "num": "x", "text": 2, "obj": []}},
]


def _plan_expressions() -> list[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in EXPRESSION_KEYS and isinstance(value, str):
                    found.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in PLANS:
        walk(json.loads(path.read_text(encoding="utf-8")))
    return sorted(found)


PLAN_EXPRESSIONS = _plan_expressions()


def _outcome(run: Any) -> tuple[str, str]:
    # repr, not ==: True == 1 and 0 == False in Python, and JMESPath tells them apart
    try:
        return "value", repr(run())
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {exc}"


def _both(expr: str, document: Any) -> tuple[tuple[str, str], tuple[str, str]]:
    compiled = compile_expression(expr)
    library = _outcome(lambda: jmespath.search(expr, document, options=CLOCK.options()))
    ours = _outcome(lambda: compiled(document, CLOCK.functions))
    return library, ours


def test_the_committed_plans_have_expressions_to_compare() -> None:
    assert len(PLANS) >= 4
    assert len(PLAN_EXPRESSIONS) >= 20


@pytest.mark.parametrize("expr", PLAN_EXPRESSIONS + EDGE_EXPRESSIONS)
def test_compiled_matches_the_library_on_fixed_documents(expr: str) -> None:
    for document in DOCUMENTS:
        library, ours = _both(expr, document)
        assert ours == library, (expr, document)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.sampled_from(["", "a", "m", "z", "12", "2026-11-20", "2026-12-03T10:00:00Z", "Occurred"]),
)
_keys = st.sampled_from(
    ["id", "name", "flag", "date", "pm_status", "deleted_at", "list", "obj", "num", "text"]
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entry=_json, previous=_json)
def test_compiled_matches_the_library_on_generated_documents(entry: Any, previous: Any) -> None:
    document = {"entry": entry, "previous": previous, "item": entry, "run": CLOCK.context()}
    for expr in PLAN_EXPRESSIONS + EDGE_EXPRESSIONS:
        library, ours = _both(expr, document)
        assert ours == library, expr


def test_an_expression_that_does_not_parse_raises_the_library_error() -> None:
    with pytest.raises(jmespath.exceptions.JMESPathError):
        compile_expression("entry.[")


def test_a_plan_parses_its_expressions_at_load_and_never_per_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = {"parse": 0, "interpreter": 0}
    parse, interpreter = Parser.parse, TreeInterpreter.__init__

    def counted_parse(self: Any, expression: str) -> Any:
        calls["parse"] += 1
        return parse(self, expression)

    def counted_interpreter(self: Any, *args: Any, **kwargs: Any) -> None:
        calls["interpreter"] += 1
        interpreter(self, *args, **kwargs)

    monkeypatch.setattr(Parser, "parse", counted_parse)
    monkeypatch.setattr(TreeInterpreter, "__init__", counted_interpreter)
    agent = PlanAgent.from_file(REPO / "prompts" / "plans" / "demo-clinic.plan.json")
    at_load = calls["parse"]
    assert at_load > 0
    document = DOCUMENTS[4]["entry"]
    for i in range(20):
        data = {**document, "id": str(i), "active_tags": [{"id": "1", "name": "vip"}]}
        e = Entry(
            integration_id="demo-clinic",
            patient_id=str(i),
            data=data,
            content_hash=str(i),
            fetched_at=CLOCK.as_of,
        )
        plan = agent.decide(INTEGRATION, e, None, as_of=CLOCK.as_of)
        assert plan.action == "write"
    assert calls == {"parse": at_load, "interpreter": 0}
