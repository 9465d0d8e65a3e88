"""The closed set of value transforms a compiled plan may apply (no code in plan files)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from app.core.errors import ConfigurationError

_NON_DIGITS = re.compile(r"\D")


def _phone_e164(value: Any, default_country: str = "1") -> Any:
    """US/NANP-style numbers to E.164; anything unparseable becomes None (never guessed)."""
    if value is None:
        return None
    text = str(value).strip()
    digits = _NON_DIGITS.sub("", text)
    if text.startswith("+") and 8 <= len(digits) <= 15:
        return "+" + digits
    if text.startswith("00") and 10 <= len(digits) <= 17:
        return "+" + digits[2:]
    if len(digits) == 10:
        return f"+{default_country}{digits}"
    if len(digits) == 11 and digits.startswith(default_country):
        return "+" + digits
    return None


def _date(value: Any) -> Any:
    if value is None or value == "":
        return None
    text = str(value)
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date().isoformat()
    except ValueError:
        return None


def _join(value: Any, sep: str = ", ") -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return sep.join(str(v) for v in value if v is not None)
    return str(value)


def _string(value: Any) -> Any:
    return None if value is None else str(value)


def _bool(value: Any) -> Any:
    return None if value is None else bool(value)


@dataclass(frozen=True, slots=True)
class Transform:
    """A resolved transform: its name (for error messages) and the function it applies."""

    name: str
    apply: Callable[[Any], Any]


TRANSFORMS: dict[str, Callable[..., Any]] = {
    "lower": lambda v: None if v is None else str(v).lower(),
    "upper": lambda v: None if v is None else str(v).upper(),
    "title": lambda v: None if v is None else str(v).title(),
    "strip": lambda v: None if v is None else str(v).strip(),
    "string": _string,
    "bool": _bool,
    "phone_e164": _phone_e164,
    "date": _date,
    "join": _join,
}


def resolve_transform(spec: str | Mapping[str, Any], tables: Mapping[str, Any]) -> Transform:
    """One transform, resolved once (at plan load): a name (``"lower"``) or
    ``{"name": ..., **params}``. ConfigurationError for an unknown name or a missing table.

    ``{"name": "lookup", "table": T, "default": D}`` maps through the plan's table ``T``;
    ``{"name": "default", "value": V}`` replaces None.
    """
    name = spec if isinstance(spec, str) else str(spec.get("name"))
    params = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "name"}
    if name == "lookup":
        table = tables.get(str(params.get("table")))
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"plan lookup table {params.get('table')!r} is missing")
        fallback = params.get("default")
        return Transform(name, lambda value: table.get(str(value), fallback))
    if name == "default":
        replacement = params.get("value")
        return Transform(name, lambda value: replacement if value is None else value)
    func = TRANSFORMS.get(name)
    if func is None:
        raise ConfigurationError(f"unknown plan transform {name!r}; known: {sorted(TRANSFORMS)}")
    if not params:
        return Transform(name, func)
    try:
        inspect.signature(func).bind(None, **params)
    except TypeError:
        raise ConfigurationError(
            f"plan transform {name!r} takes no parameters {sorted(params)}"
        ) from None
    return Transform(name, lambda value: func(value, **params))


def apply_transform(spec: str | Mapping[str, Any], value: Any, tables: Mapping[str, Any]) -> Any:
    """Apply one transform (see :func:`resolve_transform` for the forms a spec takes).

    ``{"name": "lookup", "table": T, "default": D}`` maps through the plan's table ``T``;
    ``{"name": "default", "value": V}`` replaces None.
    """
    return resolve_transform(spec, tables).apply(value)
