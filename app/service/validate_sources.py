"""What ``validate`` reports (:class:`Finding`) and where a problem is in its file:
``path:line:column`` for a TOML key or a JSON value.

``tomllib`` reports no positions for what it parsed, so :func:`toml_position` finds a key by a
simple line scan that follows the ``[table]`` and ``[[array]]`` headers (inline tables count
as their enclosing table's lines). JSON positions come from :func:`json_positions`, a small
walk over the text with the standard library's own scanners that records where each value
starts, keyed by its path (``("operations", 0, "args", "key", "expr")``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, Literal

Loc = tuple[str | int, ...]
Severity = Literal["error", "warning", "info"]
_LABELS = {"error": "error", "warning": "warning", "info": "note"}


@dataclass(frozen=True)
class Finding:
    """One problem: which integration, where (``file:line:column``, an environment variable,
    or empty), what is wrong, how to fix it. Errors stop ``serve`` and fail ``validate``;
    warnings and infos (``note:``, e.g. a part of a path that could not be typed) do not."""

    integration: str
    where: str
    problem: str
    hint: str = ""
    severity: Severity = "error"

    def line(self) -> str:
        """``error: <what> (<where>)``, one line."""
        where = f" ({self.where})" if self.where else ""
        return f"{_LABELS[self.severity]}: {self.integration}: {self.problem}{where}"

    def render(self) -> str:
        """The line, and ``  hint: ...`` below it when there is one."""
        return self.line() + (f"\n  hint: {self.hint}" if self.hint else "")

    def as_dict(self) -> dict[str, str]:
        """The finding as a JSON-ready object."""
        return asdict(self)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_WS = re.compile(r"[ \t\n\r]*")


def _key_part(text: str) -> str:
    return text.strip().strip("\"'")


def toml_position(text: str, loc: Sequence[str | int]) -> tuple[int, int] | None:
    """Line and column (1-based) of the key ``loc`` names (pydantic's error location,
    e.g. ``("targets", 0, "options", "path")``), or None when the scan cannot find it."""
    keys = [str(p) for p in loc if isinstance(p, str)]
    if not keys:
        return None
    last = re.escape(keys[-1])
    key_re = re.compile(rf"(?:^|[{{,\s])(?:\"{last}\"|'{last}'|{last})\s*=")
    header: list[str | int] = []
    counts: dict[tuple[str | int, ...], int] = {}
    best: tuple[int, int, int] | None = None  # (score, line, column)
    for number, line in enumerate(text.splitlines(), start=1):
        match = _HEADER.match(line)
        if match:
            parts: list[str | int] = [_key_part(p) for p in match.group(2).split(".")]
            if match.group(1) == "[[":
                prefix = tuple(parts)
                counts[prefix] = counts.get(prefix, -1) + 1
                parts = [*parts, counts[prefix]]
            else:
                # [targets.options.tables.x] after the 2nd [[targets]] belongs to targets[1]
                head: tuple[str | int, ...] = (parts[0],)
                if head in counts:
                    parts = [parts[0], counts[head], *parts[1:]]
            header = parts
            if [str(p) for p in header] == [str(p) for p in loc]:
                score = len(header) * 4 + 1
                if best is None or score > best[0]:
                    best = (score, number, line.index(match.group(1)) + 1)
            continue
        found = key_re.search(line)
        if not found:
            continue
        if list(loc[: len(header)]) != header:
            continue
        score = len(header) * 4
        # an inline table: ``staging = { dsn = ... }`` is where targets[0].staging.dsn is
        if len(keys) > 1 and re.search(rf"\b{re.escape(keys[-2])}\s*=\s*{{", line):
            score += 2
        if best is None or score > best[0]:
            column = found.start() + (0 if found.group(0)[:1] not in "{, \t" else 1) + 1
            best = (score, number, column)
    return None if best is None else (best[1], best[2])


def json_positions(text: str) -> dict[Loc, tuple[int, int]]:
    """Line and column (1-based) of every value in a JSON text that parses, by its path."""
    out: dict[Loc, int] = {}
    decoder = json.JSONDecoder()

    def value(i: int, path: Loc) -> int:
        i = _WS.match(text, i).end()  # type: ignore[union-attr]
        out[path] = i
        char = text[i]
        if char == "{":
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            if text[i] == "}":
                return i + 1
            while True:
                key, i = scanstring(text, i + 1)
                i = _WS.match(text, i).end() + 1  # type: ignore[union-attr]  # past ':'
                i = _WS.match(text, value(i, (*path, key))).end()  # type: ignore[union-attr]
                if text[i] == "}":
                    return i + 1
                i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]  # past ','
        if char == "[":
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            if text[i] == "]":
                return i + 1
            index = 0
            while True:
                i = _WS.match(text, value(i, (*path, index))).end()  # type: ignore[union-attr]
                index += 1
                if text[i] == "]":
                    return i + 1
                i += 1
        _, end = decoder.raw_decode(text, i)
        return int(end)

    value(0, ())
    return {loc: line_column(text, offset) for loc, offset in out.items()}


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def where(path: Path, position: tuple[int, int] | None) -> str:
    """``path:line:column`` (or just the path), relative to the working directory when under
    it, as editors and terminals link it."""
    shown = display_path(path)
    return f"{shown}:{position[0]}:{position[1]}" if position else shown


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def nearest(positions: dict[Loc, tuple[int, int]], loc: Sequence[Any]) -> tuple[int, int] | None:
    """The position of ``loc`` or, when it is missing (an absent required key), of the
    closest enclosing value."""
    key = tuple(loc)
    while key:
        if key in positions:
            return positions[key]
        key = key[:-1]
    return positions.get(())
