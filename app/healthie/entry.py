"""Canonical form of a patient entry, and the content hash that decides "unchanged".

Canonical JSON: keys sorted, lists of objects with an ``id`` sorted by id (Healthie does not
promise an order), timestamps normalized to UTC ``YYYY-MM-DDTHH:MM:SSZ``. The hash ignores fields
that change without meaning for any target: they move whenever Healthie touches a record (a
login, a recalculation) and would otherwise defeat skip-unchanged.

The form is frozen: a stored hash must match the hash of the same entry after an upgrade, or
every patient would be written again (``tests/healthie/test_entry_vectors.py`` pins it). Speed
comes from doing less, never from a different result: strings that cannot be timestamps are
recognized by three characters, an already canonical timestamp by its shape, the rest are
parsed as before but written without strftime; the hash canonicalizes and drops volatile
fields in one walk.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

#: Fields left out of the content hash (still kept in the entry the agent sees).
VOLATILE_FIELDS = frozenset({"updated_at", "last_active", "last_activity", "last_sign_in_at"})

# ISO 8601 and Healthie's Ruby form ("2026-01-01 10:00:00 -0500").
_TIMESTAMP = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) ?(Z|[+-]\d{2}:?\d{2})?$"
)


def _normalize_timestamp(value: str) -> str:
    """``value`` as a UTC ``...Z`` timestamp, or unchanged (not a timestamp, or a naive one)."""
    n = len(value)
    if n < 16 or value[4] != "-" or value[7] != "-" or value[10] not in "T ":
        return value  # _TIMESTAMP cannot match: most strings end here
    if n == 20 and value[19] == "Z" and _already_canonical(value):
        return value
    if value != value.strip():
        return value
    match = _TIMESTAMP.match(value)
    if not match:
        return value
    day, clock, offset = match.groups()
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}{(offset or '').replace('Z', '+00:00')}")
    except ValueError:
        return value
    shift = parsed.utcoffset()
    if shift is None:
        return value  # naive: no single UTC instant, kept as is
    # naive isoformat is several times cheaper than strftime, and writes the same text for
    # years 1000-9999; strftime writes a smaller year unpadded, so those keep it
    utc = parsed.replace(tzinfo=None) - shift
    if utc.year < 1000 or parsed.year < 1000:
        return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return utc.isoformat()[:19] + "Z"


def _already_canonical(value: str) -> bool:
    """Whether ``value`` (20 characters ending in Z) is ASCII ``YYYY-MM-DDTHH:MM:SSZ`` with a
    year from 1000: normalizing it returns it unchanged (a valid one is rewritten as itself,
    an impossible date or time is kept), so the second walk of an entry skips the parser."""
    if value[10] != "T" or value[13] != ":" or value[16] != ":" or value[0] == "0":
        return False
    digits = value[0:4] + value[5:7] + value[8:10] + value[11:13] + value[14:16] + value[17:19]
    return digits.isascii() and digits.isdigit()


def parse_timestamp(value: object) -> datetime | None:
    """An aware datetime from Healthie's ISO 8601 or Ruby form; None when not a timestamp
    (or a naive one, which has no single instant)."""
    if not isinstance(value, str):
        return None
    match = _TIMESTAMP.match(value.strip())
    if not match:
        return None
    day, clock, offset = match.groups()
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}{(offset or '').replace('Z', '+00:00')}")
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _sort_key(item: Any) -> tuple[int, str]:
    if isinstance(item, dict) and "id" in item:
        ident = str(item["id"])
        return (0, ident.zfill(20) if ident.isdigit() else ident)
    return (1, json.dumps(item, sort_keys=True, ensure_ascii=False))


def canonicalize(value: Any) -> Any:
    """A copy of ``value`` in canonical form (see module docstring)."""
    return _walk(value, None)


def _stable(value: Any) -> Any:
    """``canonicalize(value)`` without the volatile fields, in one walk: dropping one never
    changes a list's order (lists sort by ``id``, which is not volatile)."""
    return _walk(value, VOLATILE_FIELDS)


#: leaves returned as they are (exact types: a subclass takes the general branch)
_SCALARS = frozenset({int, float, bool, type(None)})


def _walk(value: Any, drop: frozenset[str] | None) -> Any:
    # The hot loop of every entry: leaves are handled inline (no call for an int, and a
    # string that cannot be a timestamp is recognized by three characters).
    kind = type(value)
    if kind is str:
        return _normalize_timestamp(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key in sorted(value):
            if drop is not None and key in drop:
                continue
            v = value[key]
            t = type(v)
            if t is str:
                if len(v) >= 16 and v[4] == "-" and v[7] == "-":
                    v = _normalize_timestamp(v)
            elif t not in _SCALARS:
                v = _walk(v, drop)
            out[key] = v
        return out
    if isinstance(value, list):
        items = [_walk(v, drop) for v in value]
        if _all_identified(items):
            items.sort(key=_sort_key)
        return items
    if isinstance(value, str):
        return _normalize_timestamp(value)
    return value


def _all_identified(items: list[Any]) -> bool:
    for i in items:
        if not isinstance(i, dict) or "id" not in i:
            return False
    return True


def canonical_json(value: Any) -> str:
    """Deterministic compact JSON of an already canonical value."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(entry: Any) -> str:
    """SHA-256 of the canonical entry without volatile fields, as ``sha256:<hex>``."""
    # _walk builds every dict in sorted key order: the JSON is canonical_json's without the
    # second sort
    text = json.dumps(_stable(entry), ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
