"""Check HTTP requests (and a fake's answers) against a Google API discovery document.

A discovery document is not OpenAPI. Its methods sit in nested ``resources``; a method's URL is
``rootUrl + servicePath + path`` with ``{param}`` / ``{+param}`` placeholders (``+``: reserved
expansion, constrained by the parameter's ``pattern``); its body is ``schemas[request.$ref]``
and its answer ``schemas[response.$ref]``, in Google's JSON-Schema dialect::

    type     object | array | string | integer | number | boolean | any
    object   properties (anything else is an unknown field) or additionalProperties (a map)
    array    items
    $ref     a schema by its id
    format   int32/uint32 (integer), int64/uint64 (decimal string), double/float (number),
             date-time/google-datetime (RFC 3339 string), byte (base64 string)
    enum     the allowed strings

JSON values follow the proto3 JSON mapping Google's servers use: ``null`` is accepted for every
field (it means "unset"), 64-bit integers arrive as decimal strings (numbers are accepted too),
and numbers may be the strings ``NaN`` / ``Infinity`` / ``-Infinity``.

``Discovery.match`` finds the method of a request; ``check_query`` and ``check_body`` return
the problems (field paths and reasons, never values), an empty list when the request conforms.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_INT = re.compile(r"-?[0-9]+")
_UINT = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_PLACEHOLDER = re.compile(r"\{(\+?)([A-Za-z0-9_.]+)\}")
_RANGES = {"int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}
_RANGES64 = {"int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}


@dataclass(frozen=True)
class Method:
    """One discovery method and the regular expression of its URL path."""

    id: str
    http_method: str
    template: str
    regex: re.Pattern[str]
    spec: dict[str, Any]

    @property
    def request_ref(self) -> str | None:
        """The id of the request body's schema, if the method takes a body."""
        ref = self.spec.get("request", {}).get("$ref")
        return str(ref) if ref else None

    @property
    def response_ref(self) -> str | None:
        """The id of the response body's schema, if the method answers one."""
        ref = self.spec.get("response", {}).get("$ref")
        return str(ref) if ref else None


class Discovery:
    """A loaded discovery document: route matching and the dialect's validator."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.schemas: dict[str, Any] = document["schemas"]
        self.global_parameters: dict[str, Any] = document.get("parameters", {})
        prefix = urlsplit(document["rootUrl"]).path + document["servicePath"]
        self.methods: list[Method] = []
        self._collect(document.get("resources", {}), prefix)

    @classmethod
    def load(cls, path: Path) -> Discovery:
        """The document at ``path``."""
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def _collect(self, resources: dict[str, Any], prefix: str) -> None:
        for resource in resources.values():
            for spec in resource.get("methods", {}).values():
                template = prefix + spec["path"]
                pattern = ""
                last = 0
                for m in _PLACEHOLDER.finditer(template):
                    pattern += re.escape(template[last : m.start()])
                    # reserved expansion may span "/" unless the parameter's pattern says not
                    declared = spec.get("parameters", {}).get(m.group(2), {})
                    spans = m.group(1) and declared.get("pattern") != "^[^/]+$"
                    group = ".+" if spans else "[^/]+"
                    pattern += f"(?P<{m.group(2).replace('.', '__')}>{group})"
                    last = m.end()
                pattern += re.escape(template[last:])
                self.methods.append(
                    Method(
                        spec["id"],
                        spec["httpMethod"],
                        template,
                        re.compile(pattern),
                        spec,
                    )
                )
            self._collect(resource.get("resources", {}), prefix)

    # -- routes --------------------------------------------------------------------------
    def match(self, http_method: str, path: str) -> tuple[Method, dict[str, str]] | None:
        """The method serving ``http_method path`` and its path parameters (decoded), or None.
        A candidate whose path parameters break their declared ``pattern`` does not match."""
        for method in self.methods:
            if method.http_method != http_method.upper():
                continue
            found = method.regex.fullmatch(path)
            if found is None:
                continue
            params = {k.replace("__", "."): unquote(v) for k, v in found.groupdict().items()}
            declared = method.spec.get("parameters", {})
            if all(
                re.search(declared.get(k, {}).get("pattern", ""), v) is not None
                for k, v in params.items()
            ):
                return method, params
        return None

    def check_query(self, method: Method, query: list[tuple[str, str]]) -> list[str]:
        """Problems with the query string: unknown parameters, bad values, missing ones."""
        declared = {
            **self.global_parameters,
            **{
                k: v
                for k, v in method.spec.get("parameters", {}).items()
                if v.get("location") == "query"
            },
        }
        problems: list[str] = []
        seen: dict[str, int] = {}
        for name, value in query:
            seen[name] = seen.get(name, 0) + 1
            spec = declared.get(name)
            if spec is None:
                problems.append(f"query parameter {name!r} is not declared by {method.id}")
                continue
            if seen[name] > 1 and not spec.get("repeated"):
                problems.append(f"query parameter {name!r} repeated")
            problems += _check_parameter(name, spec, value)
        for name, spec in declared.items():
            if spec.get("required") and spec.get("location") == "query" and name not in seen:
                problems.append(f"required query parameter {name!r} missing")
        return problems

    # -- bodies --------------------------------------------------------------------------
    def check_body(self, ref: str, body: Any) -> list[str]:
        """Problems with ``body`` as an instance of schema ``ref``."""
        problems: list[str] = []
        self.check({"$ref": ref}, body, ref, problems)
        return problems

    def check(self, schema: dict[str, Any], value: Any, where: str, problems: list[str]) -> None:
        """Append to ``problems`` what is wrong with ``value`` under ``schema`` at ``where``."""
        if value is None:  # proto3 JSON: null means the field's default
            return
        while "$ref" in schema:
            ref = schema["$ref"]
            if ref not in self.schemas:
                problems.append(f"{where}: the document has no schema {ref!r}")
                return
            schema = self.schemas[ref]
        kind = schema.get("type")
        if kind == "any" or kind is None:
            return
        if kind == "object":
            self._object(schema, value, where, problems)
        elif kind == "array":
            if not isinstance(value, list):
                problems.append(f"{where}: expected an array, got {_json_type(value)}")
                return
            for i, item in enumerate(value):
                self.check(schema.get("items", {}), item, f"{where}[{i}]", problems)
        elif kind == "string":
            _string(schema, value, where, problems)
        elif kind == "integer":
            _integer(schema, value, where, problems)
        elif kind == "number":
            if not _is_number(value):
                problems.append(f"{where}: expected a number, got {_json_type(value)}")
        elif kind == "boolean":
            if not isinstance(value, bool):
                problems.append(f"{where}: expected a boolean, got {_json_type(value)}")
        else:
            problems.append(f"{where}: the document uses an unknown type {kind!r}")

    def _object(self, schema: dict[str, Any], value: Any, where: str, problems: list[str]) -> None:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {_json_type(value)}")
            return
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if properties is not None and name in properties:
                self.check(properties[name], item, f"{where}.{name}", problems)
            elif extra is not None:
                self.check(extra, item, f"{where}[{name!r}]", problems)
            else:
                problems.append(f"{where}: unknown field {name!r}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and (
        value in ("NaN", "Infinity", "-Infinity") or _NUMBER.fullmatch(value) is not None
    )


def _in_range(text: str, fmt: str, ranges: dict[str, tuple[int, int]]) -> bool:
    low, high = ranges.get(fmt, (-(2**63), 2**64))
    return low <= int(text) <= high


def _string(schema: dict[str, Any], value: Any, where: str, problems: list[str]) -> None:
    fmt = schema.get("format")
    if fmt in _RANGES64 and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # proto3 JSON accepts a number for a 64-bit integer
    if not isinstance(value, str):
        problems.append(f"{where}: expected a string, got {_json_type(value)}")
        return
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: not one of the declared enum values")
    if fmt in _RANGES64:
        pattern = _UINT if fmt.startswith("u") else _INT
        if pattern.fullmatch(value) is None or not _in_range(value, fmt, _RANGES64):
            problems.append(f"{where}: not a {fmt} decimal string")
    elif fmt in ("date-time", "google-datetime"):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            problems.append(f"{where}: not an RFC 3339 timestamp")
    elif fmt == "byte":
        try:
            base64.b64decode(value.replace("-", "+").replace("_", "/") + "==", validate=False)
        except (binascii.Error, ValueError):
            problems.append(f"{where}: not base64")
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        problems.append(f"{where}: does not match the declared pattern")


def _integer(schema: dict[str, Any], value: Any, where: str, problems: list[str]) -> None:
    fmt = schema.get("format", "int32")
    if isinstance(value, str) and _INT.fullmatch(value):
        value = int(value)  # proto3 JSON accepts a decimal string for any integer
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(f"{where}: expected an integer, got {_json_type(value)}")
        return
    if not _in_range(str(value), fmt, _RANGES):
        problems.append(f"{where}: out of range for {fmt}")


def _check_parameter(name: str, spec: dict[str, Any], value: str) -> list[str]:
    """Problems with one query-string value (always text on the wire)."""
    kind = spec.get("type", "string")
    where = f"query parameter {name!r}"
    if kind == "boolean":
        # requests renders Python's True as "True"; Google's servers read booleans
        # case-insensitively, so only the word matters
        return [] if value.lower() in ("true", "false") else [f"{where}: not a boolean"]
    if kind == "integer":
        fmt = spec.get("format", "int32")
        pattern = _UINT if fmt.startswith("u") else _INT
        if pattern.fullmatch(value) is None or not _in_range(value, fmt, _RANGES):
            return [f"{where}: not a {fmt}"]
        return []
    problems: list[str] = []
    _string(spec, value, where, problems)
    return problems
