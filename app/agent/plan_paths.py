"""Type a compiled plan's JMESPath expressions against the entry the engine fetches.

The entry's shape is a tree of :data:`Shape` values (built from the ``PatientEntry`` selection
by ``app.service.validate_entry.entry_shape``). With a GraphQL schema each field is typed
(object, list, scalar); without one only the selection is known, so a field with a
sub-selection may be one object or a list of them (:class:`Either`) and list/object mistakes
go unnoticed, though every field name is still checked.

:func:`check_expression` parses an expression with the ``jmespath`` library's own parser and
walks its AST with JMESPath's semantics: a field of an object, ``[0]`` of a list, projections
(``[*]``, ``[]``, ``[?filter]``, ``[a:b]``), pipes, functions with their known result types,
literals. A field the selection lacks is an error with close matches; so is a field read on a
list or a scalar and an index on an object (each always yields null). Where a value cannot be
typed (the result of ``values()``, an object's ``.*`` values, a custom scalar's insides) the
parts read from it are reported as *not checked* rather than guessed.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jmespath import parser as jmespath_parser
from jmespath.functions import Functions

from app.agent.plan_time import PLAN_FUNCTIONS, RUN_FIELDS


@dataclass(frozen=True)
class Obj:
    """An object with known fields (a GraphQL object's selection, or a JMESPath ``{…}``)."""

    name: str
    fields: Mapping[str, Shape]


@dataclass(frozen=True)
class Lst:
    """A list of ``item``."""

    item: Shape


@dataclass(frozen=True)
class Leaf:
    """A scalar. ``opaque``: a custom scalar (JSON, dates) whose insides are not known."""

    name: str
    opaque: bool = False


@dataclass(frozen=True)
class Either:
    """No schema: the selection says what ``item`` holds but not whether it is a list of it."""

    item: Obj | Leaf


@dataclass(frozen=True)
class Unknown:
    """A value that cannot be typed; ``why`` is said once when something is read from it
    (None: already reported as an error, say nothing more)."""

    why: str | None


Shape = Obj | Lst | Leaf | Either | Unknown
NULL = Leaf("null")
BOOLEAN = Leaf("boolean")
NUMBER = Leaf("number")
STRING = Leaf("string")
SILENT = Unknown(None)


@dataclass(frozen=True)
class PathIssue:
    """One problem (or unchecked part) of an expression; ``path`` as written, e.g.
    ``entry.user_grop``."""

    path: str
    problem: str
    hint: str = ""
    severity: Literal["error", "info"] = "error"


# -- expressions ----------------------------------------------------------------------------


def parse_expression(expr: str) -> dict[str, Any]:
    """The JMESPath AST of ``expr`` (the library's parser); JMESPathError when invalid."""
    ast = jmespath_parser.Parser().parse(expr).parsed
    return dict(ast)


def check_expression(expr: str, context: Shape) -> tuple[Shape, list[PathIssue]]:
    """The shape ``expr`` yields over ``context`` and the issues found on the way. Raises
    JMESPathError when ``expr`` does not parse."""
    walker = _Walker()
    shape = walker.walk(parse_expression(expr), context, "")
    return shape, walker.issues


def element(shape: Shape) -> Shape:
    """What iterating ``shape`` yields (a ``for_each``'s ``item``); Unknown when it is not a
    list (the step then runs for no item)."""
    if isinstance(shape, Lst | Either):
        return shape.item
    if isinstance(shape, Unknown):
        return shape
    return Unknown(None)


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeio' else 'a'} {word}"


def describe(shape: Shape) -> str:
    """A short human name for a shape: ``a list of Appointment``, ``a String``."""
    if isinstance(shape, Obj):
        return _a(f"{shape.name} object")
    if isinstance(shape, Lst):
        return f"a list of {describe(shape.item).split(' ', 1)[1]}"
    if isinstance(shape, Leaf):
        return "null" if shape.name == "null" else _a(shape.name)
    if isinstance(shape, Either):
        return describe(shape.item)
    return "an untyped value"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# Functions whose result shape follows from their arguments' (jmespath.functions' table).
_RESULTS: dict[str, Shape] = {
    **dict.fromkeys(("length", "abs", "ceil", "floor", "sum", "avg", "to_number"), NUMBER),
    **dict.fromkeys(("contains", "starts_with", "ends_with"), BOOLEAN),
    **dict.fromkeys(("join", "to_string", "type"), STRING),
    "keys": Lst(STRING),
}
_TYPES: dict[str, Shape] = {"string": STRING, "number": NUMBER, "boolean": BOOLEAN}
# The plan language's own functions and its ``run`` root (``app.agent.plan_time``).
_RESULTS.update({name: _TYPES[kind] for name, kind in PLAN_FUNCTIONS.items()})
RUN = Obj("run", {name: _TYPES[kind] for name, kind in RUN_FIELDS.items()})
_KNOWN_FUNCTIONS = sorted([*Functions.FUNCTION_TABLE, *PLAN_FUNCTIONS])


class _Walker:
    """Evaluates an AST on shapes instead of values (see the module docstring)."""

    def __init__(self) -> None:
        self.issues: list[PathIssue] = []
        self._said: set[str] = set()

    def error(self, path: str, problem: str, hint: str = "") -> Unknown:
        self.issues.append(PathIssue(path, problem, hint))
        return SILENT

    def unchecked(self, path: str, shape: Unknown) -> Unknown:
        if shape.why is not None and shape.why not in self._said:
            self._said.add(shape.why)
            self.issues.append(PathIssue(path, f"not checked: {shape.why}", severity="info"))
        return Unknown(None) if shape.why is None else Unknown(shape.why)

    def walk(self, node: dict[str, Any], cur: Shape, path: str) -> Shape:
        kind = node["type"]
        children: list[Any] = node.get("children", [])
        if kind in ("identity", "current"):
            return cur
        if kind == "field":
            return self.field(str(node["value"]), cur, path)
        if kind == "subexpression":
            for child in children:
                cur = self.walk(child, cur, path)
                path = self.text(child, path)
            return cur
        if kind == "index_expression":
            left, right = children
            shape = self.walk(left, cur, path)
            return self.index(right, shape, self.text(left, path))
        if kind == "projection":
            left, right = children
            items = self.items(self.walk(left, cur, path), self.text(left, path))
            return Lst(self.walk(right, items, self.text(node, path)))
        if kind == "filter_projection":
            left, right, condition = children
            where = self.text(left, path)
            items = self.items(self.walk(left, cur, path), where)
            self.walk(condition, items, f"{where}[?]")
            return Lst(self.walk(right, items, f"{where}[]"))
        if kind == "flatten":
            (child,) = children
            shape = self.walk(child, cur, path)
            inner = self.items(shape, self.text(child, path))
            return inner if isinstance(inner, Lst) else Lst(inner)
        if kind == "value_projection":
            left, right = children
            shape = self.walk(left, cur, path)
            where = self.text(left, path) + ".*"
            self.walk(right, Unknown("the values of an object (.*) are not typed"), where)
            return Lst(SILENT)
        if kind == "pipe":
            left, right = children
            return self.walk(right, self.walk(left, cur, path), self.text(left, path))
        if kind == "literal":
            return _literal(node.get("value"))
        if kind in ("comparator", "not_expression"):
            for child in children:
                self.walk(child, cur, path)
            return BOOLEAN
        if kind in ("and_expression", "or_expression"):
            left = self.walk(children[0], cur, path)
            right = self.walk(children[1], cur, path)
            if kind == "and_expression":
                return right
            # ``a || `[]```: the fallback literal says nothing more than ``a``'s own shape
            return right if isinstance(left, Unknown) else left
        if kind == "multi_select_list":
            for child in children:
                self.walk(child, cur, path)
            return Lst(Unknown("the items of a [a, b] list are not typed"))
        if kind == "multi_select_dict":
            return Obj(
                "{…}", {str(c["value"]): self.walk(c["children"][0], cur, path) for c in children}
            )
        if kind == "function_expression":
            return self.function(str(node["value"]), children, cur, path)
        if kind == "expref":
            return Unknown("an &expression outside sort_by, min_by, max_by or map")
        return Unknown(f"JMESPath {kind} nodes are not typed")

    def text(self, node: dict[str, Any], path: str) -> str:
        """How the path reads after ``node`` (for messages: ``entry.appointments``)."""
        kind = node["type"]
        if kind == "field":
            return _join(path, str(node["value"]))
        if kind == "subexpression":
            for child in node["children"]:
                path = self.text(child, path)
            return path
        if kind == "index_expression":
            left, right = node["children"]
            suffix = f"[{right['value']}]" if right["type"] == "index" else "[:]"
            return self.text(left, path) + suffix
        if kind == "projection":
            left = node["children"][0]
            # a flatten or a slice already reads as one; a bare [*] projection does not
            suffix = "" if left["type"] in ("flatten", "index_expression") else "[*]"
            return self.text(left, path) + suffix
        if kind in ("flatten", "filter_projection"):
            return self.text(node["children"][0], path) + "[]"
        if kind == "not_expression":
            return "!" + self.text(node["children"][0], path)
        if kind == "multi_select_dict":
            return _join(path, "{…}")
        if kind == "function_expression":
            return f"{node['value']}(…)"
        return path

    def field(self, name: str, cur: Shape, path: str) -> Shape:
        where = _join(path, name)
        if isinstance(cur, Either):
            cur = cur.item
        if isinstance(cur, Obj):
            if name in cur.fields:
                return cur.fields[name]
            if name == "null":
                # A bare ``null`` is JMESPath for a field named "null"; no entry has one, so it
                # reads null, which is what ``x == null`` means to say.
                return NULL
            if name in ("true", "false"):
                return self.error(
                    where,
                    f"bare {name} is a field name, not the boolean: it reads null",
                    f"write `{name}` (in backticks)",
                )
            return self.error(where, *_missing(name, cur, path))
        if isinstance(cur, Unknown):
            return self.unchecked(where, cur)
        if isinstance(cur, Lst):
            return self.error(
                where,
                f"reads a field of a list ({path} is {describe(cur)}), which is always null",
                f"use {path}[].{name} (every item) or {path}[0].{name} (the first)",
            )
        if cur.opaque:
            return self.unchecked(where, Unknown(f"{path} is {_a(cur.name)}, opaque to the check"))
        hint = ""
        if path == "item":
            hint = "item is set only in steps with for_each or for_each_removed"
        elif path.startswith("!"):
            hint = f"JMESPath reads {path}.{name} as ({path}).{name}: write !({path[1:]}.{name})"
        return self.error(
            where, f"reads a field of {path or 'a value'}, which is {describe(cur)}", hint
        )

    def index(self, node: dict[str, Any], shape: Shape, path: str) -> Shape:
        if node["type"] == "slice":
            return Lst(self.items(shape, path))
        return self.items(shape, path)

    def items(self, shape: Shape, path: str) -> Shape:
        """What a list's projection or index iterates; an error for objects and scalars."""
        if isinstance(shape, Lst | Either):
            return shape.item
        if isinstance(shape, Unknown):
            return self.unchecked(path, shape)
        if isinstance(shape, Leaf) and shape.opaque:
            return self.unchecked(path, Unknown(f"{path} is {_a(shape.name)}, opaque to the check"))
        hint = f"drop the [] or [0] after {path}" if isinstance(shape, Obj) else ""
        return self.error(
            path, f"is {describe(shape)}, not a list: [] or [0] on it reads null", hint
        )

    def function(self, name: str, args: list[Any], cur: Shape, path: str) -> Shape:
        where = f"{name}()"
        if name not in _KNOWN_FUNCTIONS:
            close = difflib.get_close_matches(name, _KNOWN_FUNCTIONS, n=1)
            return self.error(
                where,
                f"unknown JMESPath function {name}()",
                f"did you mean {close[0]}()?" if close else "",
            )
        shapes = [SILENT if a["type"] == "expref" else self.walk(a, cur, path) for a in args]
        exprefs = [a for a in args if a["type"] == "expref"]
        listed = shapes[1] if name == "map" and len(shapes) > 1 else shapes[0] if shapes else NULL
        by: Shape = SILENT
        for ref in exprefs:  # sort_by/min_by/max_by/map: the &expr runs on each item
            by = self.walk(ref["children"][0], self.items(listed, path or where), f"{where}&")
        if name in _RESULTS:
            return _RESULTS[name]
        if name in ("sort", "reverse", "sort_by"):
            return shapes[0] if shapes else SILENT
        if name in ("max", "min", "max_by", "min_by"):
            return element(listed)
        if name == "not_null":
            typed = [s for s in shapes if not isinstance(s, Unknown)]
            return typed[0] if typed else SILENT
        if name == "to_array":
            first = shapes[0] if shapes else SILENT
            return first if isinstance(first, Lst) else Lst(first)
        if name == "map":
            return Lst(by)
        return Unknown(f"the result of {name}() is not typed")


def _missing(name: str, obj: Obj, path: str) -> tuple[str, str]:
    known = sorted(obj.fields)
    close = difflib.get_close_matches(name, known, n=1)
    if obj.name == "plan context":
        entry = obj.fields.get("entry")
        if isinstance(entry, Obj) and name in entry.fields:
            return (
                f"{name!r} is not a name a plan expression starts from ({', '.join(known)})",
                f"did you mean entry.{name}?",
            )
        return (
            f"{name!r} is not a name a plan expression starts from ({', '.join(known)})",
            f"did you mean {close[0]}?" if close else f"start from one of: {', '.join(known)}",
        )
    if obj is RUN:
        hint = f"did you mean {close[0]}?" if close else f"run has: {', '.join(known)}"
        return f"run has no field {name!r}", hint
    problem = f"{obj.name} has no field {name!r} in the entry selection"
    if close:
        return problem, f"did you mean {close[0]}?"
    return problem, "add it to healthie.entry_extra_selection if Healthie has it"


def _literal(value: Any) -> Shape:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int | float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, list):
        return Lst(Unknown("the items of a literal list are not typed"))
    return Unknown("a literal object is not typed")


def base_shape(entry: Obj) -> Obj:
    """What ``skip_when`` and ``for_each`` start from: ``entry``, ``previous`` (the entry as
    last processed, null on the first run) and ``run`` (the run's time)."""
    return Obj("plan context", {"entry": entry, "previous": entry, "run": RUN})


def run_shape() -> Obj:
    """What a plan's ``run_when`` starts from: ``run`` only (it is decided before any entry)."""
    return Obj("plan context", {"run": RUN})


def context_shape(entry: Obj, item: Shape | None) -> Obj:
    """The names a step's expressions start from: :func:`base_shape`'s and, in per-item
    steps, ``item``."""
    fields: dict[str, Shape] = dict(base_shape(entry).fields)
    fields["item"] = item if item is not None else NULL
    return Obj("plan context", fields)
