"""``validate``'s first step: read one integration file into findings instead of one exception.

Each file is read on its own, so a broken file is reported and the others are still checked:
TOML syntax (tomllib's line and column), then the ``Integration`` model of
``app.core.config`` (each pydantic error one finding at its key's line, unknown keys with the
close known ones, cadences with the supported list), then what ``load_integration`` adds
(instruction and plan files exist, target names unique). A file with no error here is loaded
once more with ``load_integration`` itself, so what validates is what ``serve`` loads.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from app.core.config import Integration, load_integration
from app.core.errors import ConfigurationError
from app.core.models import Cadence
from app.service.validate_sources import (
    Finding,
    Severity,
    display_path,
    toml_position,
    where,
)

CADENCES = "hourly, every_6_hours, daily or weekly"


@dataclass
class Source:
    """One integration file as read: its id (the file's stem until the id is known), its
    text, the validated integration (None when invalid) and the findings so far."""

    path: Path
    id: str
    text: str = ""
    integration: Integration | None = None
    findings: list[Finding] = field(default_factory=list)

    def at(self, loc: Sequence[str | int]) -> str:
        """``file:line:column`` of the key ``loc`` names (the file alone when not found)."""
        return where(self.path, toml_position(self.text, loc) if self.text else None)

    def add(
        self,
        loc: Sequence[str | int],
        problem: str,
        hint: str = "",
        severity: Severity = "error",
    ) -> None:
        """Record a finding at the key ``loc``."""
        self.findings.append(Finding(self.id, self.at(loc), problem, hint, severity))


def read_source(path: Path) -> Source:
    """Read and check one integration file (see the module docstring)."""
    source = Source(path=path, id=path.stem)
    try:
        source.text = path.read_text(encoding="utf-8")
    except OSError as exc:
        source.findings.append(
            Finding(source.id, display_path(path), f"cannot read the file: {exc.strerror}")
        )
        return source
    try:
        raw = tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        position = (int(found.group(1)), int(found.group(2))) if found else None
        what = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
        source.findings.append(
            Finding(
                source.id,
                where(path, position),
                f"not valid TOML: {what}",
                "strings need quotes, tables [name], arrays of tables [[targets]]",
            )
        )
        return source
    if isinstance(raw.get("id"), str):
        source.id = raw["id"]
    _resolve_paths(raw, path.parent)
    try:
        integration = Integration.model_validate(raw)
    except ValidationError as exc:
        for error in misspelt_once(exc.errors(include_input=False)):
            _model_error(source, raw, error)
        return source
    _file_checks(source, integration)
    if not source.findings:
        try:
            load_integration(path)
        except ConfigurationError as exc:  # a check load_integration has that this lacks
            source.add((), str(exc).removeprefix(f"{path}: "))
            return source
        source.integration = integration
    return source


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    # As load_integration does: the agent's files are relative to the integration file.
    agent = raw.get("agent")
    if isinstance(agent, dict):
        for key in ("instructions", "plan"):
            if isinstance(agent.get(key), str):
                agent[key] = str((base / agent[key]).resolve())


def dotted(loc: Sequence[str | int]) -> str:
    """``targets[0].options.path`` for pydantic's ``("targets", 0, "options", "path")``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that holds the keys at ``loc`` (list indices skipped), or None when
    the location is free-form (a dict of options)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return None
        current = _model_in(current.model_fields[part].annotation)
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def close_hint(name: str, known: Sequence[str], what: str = "keys") -> str:
    """``did you mean batch_size?``, or the known names when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f"did you mean {close[0]}?"
    return f"known {what}: {', '.join(sorted(known))}" if known else ""


def misspelt_once(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """The errors without the "missing" ones a misspelt key explains: ``pth = ...`` is one
    unknown key suggesting ``path``, not also a missing ``path``."""
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]

    def explained(error: ErrorDetails) -> bool:
        parent, name = tuple(error["loc"][:-1]), str(error["loc"][-1])
        return any(
            tuple(u["loc"][:-1]) == parent
            and difflib.get_close_matches(str(u["loc"][-1]), [name], n=1)
            for u in unknown
        )

    return [e for e in errors if not (e["type"] == "missing" and explained(e))]


def unknown_key(model: type[BaseModel] | None, loc: Sequence[str | int]) -> tuple[str, str]:
    """Problem and hint for a key the model does not have."""
    key = str(loc[-1])
    known = list(model.model_fields) if model is not None else []
    return f"unknown key {dotted(loc)}", close_hint(key, known)


def _model_error(source: Source, raw: dict[str, Any], error: ErrorDetails) -> None:
    loc = tuple(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        source.add(loc, *unknown_key(model_at(Integration, loc[:-1]), loc))
    elif loc == ("cadence",):
        value = str(raw.get("cadence"))
        allowed = [c.value for c in Cadence]
        if "month" in value.lower():
            hint = f"cadence must be {CADENCES}; monthly is not supported: use weekly"
        else:
            hint = f"cadence must be {CADENCES}; " + close_hint(value, allowed, "cadences")
        source.add(loc, f"cadence {value!r} is not supported", hint.removesuffix("; "))
    elif error["type"] == "missing":
        source.add(loc[:-1] or loc, f"missing key {dotted(loc)}", f"add {loc[-1]} = ...")
    else:
        source.add(loc, f"{dotted(loc) or 'the file'}: {message}")


def _file_checks(source: Source, integration: Integration) -> None:
    agent = integration.agent
    if not agent.instructions.is_file():
        source.add(
            ("agent", "instructions"),
            f"agent.instructions {display_path(agent.instructions)} does not exist",
            "paths are relative to the integration file",
        )
    if agent.backend == "plan":
        if agent.plan is None:
            source.add(
                ("agent",),
                "agent.backend = 'plan' needs agent.plan",
                'add plan = "path/to/<id>.plan.json" (healthie-sync compile writes one)',
            )
        elif not agent.plan.is_file():
            source.add(
                ("agent", "plan"),
                f"agent.plan {display_path(agent.plan)} does not exist",
                "paths are relative to the integration file; healthie-sync compile writes one",
            )
    names = [t.name for t in integration.targets]
    for index, name in enumerate(names):
        if name in names[:index]:
            source.add(("targets", index, "name"), f"target name {name!r} is used twice")
