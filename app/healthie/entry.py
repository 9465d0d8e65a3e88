"""Canonical form of a patient entry, and the content hash that decides "unchanged".

Canonical JSON: keys sorted, lists of objects with an ``id`` sorted by id (Healthie does not
promise an order), timestamps normalized to UTC ``YYYY-MM-DDTHH:MM:SSZ``. The hash ignores fields
that change without meaning for any target: they move whenever Healthie touches a record (a
login, a recalculation) and would otherwise defeat skip-unchanged.
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
    parsed = parse_timestamp(value) if value == value.strip() else None
    if parsed is None:
        return value  # not a timestamp, or a naive one (no single UTC instant): keep as is
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    if isinstance(value, dict):
        return {k: canonicalize(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        items = [canonicalize(v) for v in value]
        if all(isinstance(i, dict) and "id" in i for i in items):
            items.sort(key=_sort_key)
        return items
    if isinstance(value, str):
        return _normalize_timestamp(value)
    return value


def _strip_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_volatile(v) for k, v in value.items() if k not in VOLATILE_FIELDS}
    if isinstance(value, list):
        return [_strip_volatile(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Deterministic compact JSON of an already canonical value."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(entry: Any) -> str:
    """SHA-256 of the canonical entry without volatile fields, as ``sha256:<hex>``."""
    stable = _strip_volatile(canonicalize(entry))
    return "sha256:" + hashlib.sha256(canonical_json(stable).encode("utf-8")).hexdigest()
