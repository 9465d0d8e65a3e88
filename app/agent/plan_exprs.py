"""A compiled plan's JMESPath expressions, turned into Python closures once, at plan load.

``jmespath.compile`` parses an expression once, but every ``search`` then builds a tree
interpreter and dispatches on every node of the AST by name, for every entry. A plan runs the
same few dozen expressions over thousands of entries, so :func:`compile_expression` walks the
AST once and returns a closure per node that does only the node's own work (a chain of
``entry.first_name`` lookups is one loop over two names).

The closures keep ``jmespath.visitor.TreeInterpreter``'s semantics exactly: the same falsy
values, the same number/boolean equality rules, ordering comparisons only between numbers or
strings, projections that drop nulls; functions (built-in and the plan's own) run through the
same ``Functions.call_function`` with its type checks. A node kind this module does not know
(a newer jmespath) is evaluated by the library's interpreter. ``tests/agent/test_plan_exprs.py``
compares both on every expression of the committed plans and on generated entries.

Errors are the library's own (``JMESPathError`` when the text does not parse, its type errors at
evaluation); callers turn them into engine errors without the values they mention.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from numbers import Number
from typing import Any

import jmespath
from jmespath.functions import Functions
from jmespath.visitor import Options, TreeInterpreter

#: A compiled expression: ``(value, functions) -> result``; ``functions`` carries the plan's
#: own functions bound to the run's clock (``app.agent.plan_time.PlanFunctions``).
Evaluator = Callable[[Any, Functions], Any]


def compile_expression(text: str) -> Evaluator:
    """The closure evaluating ``text``; JMESPathError when it does not parse."""
    return _build(dict(jmespath.compile(text).parsed))


def _is_false(value: Any) -> bool:
    # JMESPath's falsy values (compared with ==, as the library does: 0 is true)
    return value == "" or value == [] or value == {} or value is None or value is False


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is int or kind is float:
        return True
    if kind is str or kind is bool or value is None:
        return False  # the common non-numbers, without the ABC check below
    return not isinstance(value, bool) and isinstance(value, Number)


def _equals(x: Any, y: Any) -> bool:
    # 0/1 never equal false/true in JMESPath, though they do in Python
    if _is_number(x) and x in (0, 1):
        if isinstance(y, bool):
            return False
    elif _is_number(y) and y in (0, 1) and isinstance(x, bool):
        return False
    return bool(x == y)


_ORDERING: dict[str, Callable[[Any, Any], Any]] = {
    "lt": operator.lt,
    "gt": operator.gt,
    "lte": operator.le,
    "gte": operator.ge,
}


class _Expression:
    """An ``&expr`` argument, as ``jmespath.functions`` expects one: its type check reads the
    class name (``_Expression``), and ``sort_by``/``map`` call ``visit(expression, item)``."""

    def __init__(self, expression: Evaluator, functions: Functions) -> None:
        self.expression = expression
        self.functions = functions

    def visit(self, node: Evaluator, value: Any) -> Any:
        return node(value, self.functions)


def _chain(parts: list[Evaluator]) -> Evaluator:
    def chain(value: Any, fns: Functions) -> Any:
        for part in parts:
            value = part(value, fns)
        return value

    return chain


def _fields(names: list[str]) -> Evaluator:
    # One and two names (``entry.email``, ``item.provider``) are most of a plan's expressions:
    # without the loop. Null, a string or a list has no ``get``: the rest of the chain is null.
    if len(names) == 1:
        (only,) = names

        def field(value: Any, fns: Functions) -> Any:
            try:
                return value.get(only)
            except AttributeError:
                return None

        return field
    if len(names) == 2:
        first, second = names

        def pair(value: Any, fns: Functions) -> Any:
            try:
                return value.get(first).get(second)
            except AttributeError:
                return None

        return pair

    def fields(value: Any, fns: Functions) -> Any:
        for name in names:
            try:
                value = value.get(name)
            except AttributeError:
                return None  # every further field of null is null
        return value

    return fields


def _field_names(node: dict[str, Any]) -> list[str] | None:
    """``a.b.c`` (however the parser nested it) as ``["a", "b", "c"]``; None for anything
    that is not a chain of plain fields."""
    if node["type"] == "field":
        return [str(node["value"])]
    if node["type"] not in ("subexpression", "pipe"):
        return None
    names: list[str] = []
    for child in node.get("children", []):
        part = _field_names(child)
        if part is None:
            return None
        names.extend(part)
    return names


def _build(node: dict[str, Any]) -> Evaluator:
    kind = node["type"]
    children: list[Any] = node.get("children", [])
    if kind in ("identity", "current"):
        return lambda value, fns: value
    if kind == "literal":
        literal = node["value"]
        return lambda value, fns: literal
    if kind == "field":
        return _fields([node["value"]])
    if kind in ("subexpression", "index_expression", "pipe"):
        names = _field_names(node)
        if names is not None:
            return _fields(names)
        return _chain([_build(c) for c in children])
    if kind == "index":
        index = node["value"]

        def at(value: Any, fns: Functions) -> Any:
            if not isinstance(value, list):
                return None
            try:
                return value[index]
            except IndexError:
                return None

        return at
    if kind == "slice":
        cut = slice(*children)
        return lambda value, fns: value[cut] if isinstance(value, list) else None
    if kind == "comparator":
        return _comparator(node["value"], _build(children[0]), _build(children[1]))
    if kind == "or_expression":
        left, right = _build(children[0]), _build(children[1])

        def either(value: Any, fns: Functions) -> Any:
            matched = left(value, fns)
            return right(value, fns) if _is_false(matched) else matched

        return either
    if kind == "and_expression":
        left, right = _build(children[0]), _build(children[1])

        def both(value: Any, fns: Functions) -> Any:
            matched = left(value, fns)
            return matched if _is_false(matched) else right(value, fns)

        return both
    if kind == "not_expression":
        inner = _build(children[0])

        def negate(value: Any, fns: Functions) -> Any:
            result = inner(value, fns)
            if _is_number(result) and result == 0:
                return False  # !0 is false: 0 is not falsy in JMESPath
            return not result

        return negate
    if kind in ("projection", "filter_projection"):
        return _projection(
            _build(children[0]),
            _build(children[1]),
            _build(children[2]) if kind == "filter_projection" else None,
        )
    if kind == "flatten":
        return _flatten(_build(children[0]))
    if kind == "value_projection":
        return _value_projection(_build(children[0]), _build(children[1]))
    if kind == "multi_select_list":
        parts = [_build(c) for c in children]

        def select_list(value: Any, fns: Functions) -> Any:
            return None if value is None else [p(value, fns) for p in parts]

        return select_list
    if kind == "multi_select_dict":
        pairs = [(str(c["value"]), _build(c["children"][0])) for c in children]

        def select_dict(value: Any, fns: Functions) -> Any:
            return None if value is None else {k: p(value, fns) for k, p in pairs}

        return select_dict
    if kind == "function_expression":
        return _function(str(node["value"]), [_build(c) for c in children])
    if kind == "expref":
        ref = _build(children[0])
        return lambda value, fns: _Expression(ref, fns)
    return _interpreted(node)


def _comparator(op: str, left: Evaluator, right: Evaluator) -> Evaluator:
    if op in ("eq", "ne"):
        negated = op == "ne"

        def equality(value: Any, fns: Functions) -> Any:
            return _equals(left(value, fns), right(value, fns)) != negated

        return equality
    compare = _ORDERING[op]

    def ordering(value: Any, fns: Functions) -> Any:
        a, b = left(value, fns), right(value, fns)
        # only numbers and strings are ordered; anything else compares to null
        if not ((_is_number(a) or isinstance(a, str)) and (_is_number(b) or isinstance(b, str))):
            return None
        return compare(a, b)

    return ordering


def _projection(left: Evaluator, right: Evaluator, condition: Evaluator | None) -> Evaluator:
    def project(value: Any, fns: Functions) -> Any:
        base = left(value, fns)
        if not isinstance(base, list):
            return None
        out = []
        for element in base:
            if condition is not None and _is_false(condition(element, fns)):
                continue
            current = right(element, fns)
            if current is not None:
                out.append(current)
        return out

    return project


def _flatten(inner: Evaluator) -> Evaluator:
    def flatten(value: Any, fns: Functions) -> Any:
        base = inner(value, fns)
        if not isinstance(base, list):
            return None
        out: list[Any] = []
        for element in base:
            if isinstance(element, list):
                out.extend(element)
            else:
                out.append(element)
        return out

    return flatten


def _value_projection(left: Evaluator, right: Evaluator) -> Evaluator:
    def project(value: Any, fns: Functions) -> Any:
        base = left(value, fns)
        try:
            values = base.values()
        except AttributeError:
            return None
        out = []
        for element in values:
            current = right(element, fns)
            if current is not None:
                out.append(current)
        return out

    return project


def _function(name: str, args: list[Evaluator]) -> Evaluator:
    def call(value: Any, fns: Functions) -> Any:
        return fns.call_function(name, [a(value, fns) for a in args])

    return call


def _interpreted(node: dict[str, Any]) -> Evaluator:
    # A node kind this module does not compile: the library evaluates that subtree.
    def interpret(value: Any, fns: Functions) -> Any:
        return TreeInterpreter(Options(custom_functions=fns)).visit(node, value)  # type: ignore[arg-type]

    return interpret
