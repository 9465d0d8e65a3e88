"""The canonical form is frozen: fixed vectors, and the previous implementation as a reference.

A stored content hash must equal the hash of the same entry after an upgrade, or every patient
would be decided and written again. These tests pin the exact output of ``canonicalize`` and
``content_hash`` (literal vectors, computed by the implementation before it was made faster),
and compare the current code with that implementation, kept verbatim below, on every timestamp
shape and on real entries of the sandbox.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from app.healthie.entry import canonical_json, canonicalize, content_hash

# -- the reference: app/healthie/entry.py as it was when these hashes were first stored ---------

_REF_VOLATILE = frozenset({"updated_at", "last_active", "last_activity", "last_sign_in_at"})
_REF_TIMESTAMP = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) ?(Z|[+-]\d{2}:?\d{2})?$"
)


def _ref_parse(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    match = _REF_TIMESTAMP.match(value.strip())
    if not match:
        return None
    day, clock, offset = match.groups()
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}{(offset or '').replace('Z', '+00:00')}")
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _ref_normalize(value: str) -> str:
    parsed = _ref_parse(value) if value == value.strip() else None
    if parsed is None:
        return value
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ref_sort_key(item: Any) -> tuple[int, str]:
    if isinstance(item, dict) and "id" in item:
        ident = str(item["id"])
        return (0, ident.zfill(20) if ident.isdigit() else ident)
    return (1, json.dumps(item, sort_keys=True, ensure_ascii=False))


def ref_canonicalize(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ref_canonicalize(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        items = [ref_canonicalize(v) for v in value]
        if all(isinstance(i, dict) and "id" in i for i in items):
            items.sort(key=_ref_sort_key)
        return items
    if isinstance(value, str):
        return _ref_normalize(value)
    return value


def _ref_strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _ref_strip(v) for k, v in value.items() if k not in _REF_VOLATILE}
    if isinstance(value, list):
        return [_ref_strip(v) for v in value]
    return value


def ref_content_hash(entry: Any) -> str:
    stable = _ref_strip(ref_canonicalize(entry))
    text = json.dumps(stable, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- fixed vectors ------------------------------------------------------------------------------

#: (value, canonical value): every timestamp shape the parser accepts or refuses, and the
#: quirks that must survive (strftime's unpadded years below 1000, an offset of 75 minutes,
#: impossible dates kept as they are, whitespace keeping a value out)
STRINGS = [
    ("2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z"),
    ("2026-01-01T10:00:00+00:00", "2026-01-01T10:00:00Z"),
    ("2026-01-01 10:00:00 -0500", "2026-01-01T15:00:00Z"),
    ("2026-01-01 10:00:00 +0530", "2026-01-01T04:30:00Z"),
    ("2026-01-01T10:00:00+05:30", "2026-01-01T04:30:00Z"),
    ("2026-01-01T10:00:00-05:30", "2026-01-01T15:30:00Z"),
    ("2026-01-01T23:30:00-01:00", "2026-01-02T00:30:00Z"),
    ("2026-12-31T23:59:59-0100", "2027-01-01T00:59:59Z"),
    ("2026-01-01T00:10:00+01:00", "2025-12-31T23:10:00Z"),
    ("2026-03-01T00:00:00+0100", "2026-02-28T23:00:00Z"),
    ("2024-02-29T23:00:00-02:00", "2024-03-01T01:00:00Z"),
    ("2026-01-01T10:00:00 Z", "2026-01-01T10:00:00Z"),
    ("2026-01-01T10:00:00.123Z", "2026-01-01T10:00:00Z"),
    ("2026-01-01T10:00:00.999999+02:00", "2026-01-01T08:00:00Z"),
    ("2026-01-01T10:00Z", "2026-01-01T10:00:00Z"),
    ("2026-01-01 10:00 -0500", "2026-01-01T15:00:00Z"),
    ("2026-01-01T10:00:00", "2026-01-01T10:00:00"),
    ("2026-01-01 10:00:00", "2026-01-01 10:00:00"),
    ("1980-02-03", "1980-02-03"),
    (" 2026-01-01T10:00:00Z", " 2026-01-01T10:00:00Z"),
    ("2026-01-01T10:00:00Z ", "2026-01-01T10:00:00Z "),
    ("2026-01-01T10:00:00Z\n", "2026-01-01T10:00:00Z\n"),
    ("2026-02-30T10:00:00Z", "2026-02-30T10:00:00Z"),
    ("2026-13-01T10:00:00Z", "2026-13-01T10:00:00Z"),
    ("2026-01-01T25:00:00Z", "2026-01-01T25:00:00Z"),
    ("2026-01-01T10:00:60Z", "2026-01-01T10:00:60Z"),
    ("2026-01-01T10:00:00+24:00", "2026-01-01T10:00:00+24:00"),
    ("2026-01-01T10:00:00+05:75", "2026-01-01T03:45:00Z"),
    ("2026-01-01T10:00:00+0575", "2026-01-01T03:45:00Z"),
    ("2026-01-01T10:00:00z", "2026-01-01T10:00:00z"),
    ("2026-01-01T10:00:00  Z", "2026-01-01T10:00:00  Z"),
    ("0005-01-01T10:00:00Z", "5-01-01T10:00:00Z"),
    ("1000-01-01T00:30:00+01:00", "999-12-31T23:30:00Z"),
    ("0999-12-31T23:00:00-02:00", "1000-01-01T01:00:00Z"),
    ("9999-12-31T23:00:00+01:00", "9999-12-31T22:00:00Z"),
    ("2026-01-01T10:00:00+05:3", "2026-01-01T10:00:00+05:3"),
    ("2026-01-01T10:00:00+053:0", "2026-01-01T10:00:00+053:0"),
    ("2026-01-01t10:00:00Z", "2026-01-01t10:00:00Z"),
    ("2026/01/01T10:00:00Z", "2026/01/01T10:00:00Z"),
    ("２０２６-01-01T10:00:00Z", "２０２６-01-01T10:00:00Z"),
    ("2026-01-01T10:00:00+00", "2026-01-01T10:00:00+00"),
    ("2026-01-01T10:00:00-00:00", "2026-01-01T10:00:00Z"),
    ("2026-01-01T10:00:00.5 -0500", "2026-01-01T15:00:00Z"),
    ("not a timestamp", "not a timestamp"),
    ("", ""),
    ("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
    ("2026-01-01T", "2026-01-01T"),
    ("2026-01-01T10:00:00ZZ", "2026-01-01T10:00:00ZZ"),
    ("+1 353 753 0834", "+1 353 753 0834"),
    ("2026-01-01T10:00:00+0500extra", "2026-01-01T10:00:00+0500extra"),
]

ENTRY: dict[str, Any] = {
    "id": "1000042",
    "first_name": "Zoë",
    "created_at": "2023-11-21 21:32:41 -0500",
    "updated_at": "2026-01-29T07:13:44+00:00",
    "last_sign_in_at": "2026-01-30T07:13:44Z",
    "dob": "1963-12-29",
    "metadata": '{"k": "v"}',
    "active": True,
    "score": 1.5,
    "count": 3,
    "archived_at": None,
    "active_tags": [{"id": "10", "name": "b"}, {"id": "9", "name": "a"}, {"id": "x1", "name": "c"}],
    "policies": [],
    "notes": ["2026-01-01 10:00:00 +0100", "plain", 7, None],
    "appointments": [
        {
            "id": "50000002",
            "date": "2026-01-04T16:15:00.250+01:00",
            "updated_at": "2026-01-01T13:05:01Z",
            "provider": {"id": "10005", "full_name": "Lucas Ångström"},
            "last_activity": "x",
        },
        {
            "id": "50000001",
            "date": "2026-01-04 08:00 -0800",
            "deleted_at": None,
            "attendees": [{"id": 3}, {"id": 20}, {"id": "3"}],
        },
    ],
    "mixed": [{"id": "2"}, {"name": "no id"}, {"id": "1"}],
    "nested": {"b": {"z": 1, "a": "2026-02-30T10:00:00Z"}, "a": [[{"id": "2"}, {"id": "1"}]]},
}
#: canonicalize(ENTRY), as JSON in the order canonicalize builds it (keys sorted)
ENTRY_CANONICAL = (
    '{"active": true, "active_tags": [{"id": "9", "name": "a"}, {"id": "10", "name": "b"}, '
    '{"id": "x1", "name": "c"}], "appointments": [{"attendees": [{"id": 3}, {"id": "3"}, '
    '{"id": 20}], "date": "2026-01-04T16:00:00Z", "deleted_at": null, "id": "50000001"}, '
    '{"date": "2026-01-04T15:15:00Z", "id": "50000002", "last_activity": "x", "provider": '
    '{"full_name": "Lucas Ångström", "id": "10005"}, "updated_at": "2026-01-01T13:05:01Z"}], '
    '"archived_at": null, "count": 3, "created_at": "2023-11-22T02:32:41Z", "dob": '
    '"1963-12-29", "first_name": "Zoë", "id": "1000042", "last_sign_in_at": '
    '"2026-01-30T07:13:44Z", "metadata": "{\\"k\\": \\"v\\"}", "mixed": [{"id": "2"}, '
    '{"name": "no id"}, {"id": "1"}], "nested": {"a": [[{"id": "1"}, {"id": "2"}]], "b": '
    '{"a": "2026-02-30T10:00:00Z", "z": 1}}, "notes": ["2026-01-01T09:00:00Z", "plain", 7, '
    'null], "policies": [], "score": 1.5, "updated_at": "2026-01-29T07:13:44Z"}'
)
ENTRY_HASH = "sha256:63c91dee729fbafe11cb472a9b9facce405397d6da7fccecc51ed79cb21a33b0"


@pytest.mark.parametrize(("value", "expected"), STRINGS)
def test_each_string_canonicalizes_exactly_as_before(value: str, expected: str) -> None:
    assert canonicalize(value) == expected
    assert canonicalize({"v": [value]}) == {"v": [expected]}  # the inline path of a dict


def test_a_full_entry_keeps_its_canonical_text_and_its_hash() -> None:
    assert json.dumps(canonicalize(ENTRY), ensure_ascii=False) == ENTRY_CANONICAL
    assert content_hash(ENTRY) == ENTRY_HASH
    # the pipeline hashes the canonical entry: the same hash
    assert content_hash(canonicalize(ENTRY)) == ENTRY_HASH
    assert content_hash({"id": "1", "updated_at": "2026-01-01T00:00:00Z"}) == (
        "sha256:5811967f540d300d249ab30ae681359a7815fdb5d3dc71a94be1d491006a6b27"
    )


def test_a_timestamp_before_year_one_fails_as_it_did() -> None:
    # astimezone cannot go below year 1: the old code raised, and so must the new (an entry
    # holding one was never hashed, so no stored hash depends on another answer)
    value = "0001-01-01T00:00:00+01:00"
    with pytest.raises(OverflowError):
        _ref_normalize(value)
    with pytest.raises(OverflowError):
        canonicalize(value)


def _random_timestamps(n: int) -> list[str]:
    rng = random.Random(19)
    out = []
    for _ in range(n):
        year = rng.choice([rng.randint(1000, 9999), rng.randint(1, 999), 2026])
        month, day = rng.randint(0, 13), rng.randint(0, 32)
        hour, minute, second = rng.randint(0, 25), rng.randint(0, 61), rng.randint(0, 61)
        text = f"{year:04d}-{month:02d}-{day:02d}{rng.choice('T ')}{hour:02d}:{minute:02d}"
        text += rng.choice(["", f":{second:02d}", f":{second:02d}.{rng.randint(0, 999999)}"])
        zone = rng.choice(
            [
                "",
                "Z",
                " Z",
                "z",
                "+00:00",
                "-00:00",
                "+0000",
                " -0500",
                "+05:30",
                "-0930",
                f"{rng.choice('+-')}{rng.randint(0, 25):02d}{rng.choice(['', ':'])}"
                f"{rng.randint(0, 75):02d}",
                " ",
                "Z ",
                "+05",
                "+05:3",
            ]
        )
        out.append(text + zone)
    return out


def _outcome(function: Any, value: Any) -> Any:
    try:
        return function(value)
    except (OverflowError, ValueError) as exc:
        return type(exc).__name__


def test_random_timestamp_shapes_match_the_reference() -> None:
    values = _random_timestamps(20_000)
    for value in values:
        assert _outcome(canonicalize, value) == _outcome(ref_canonicalize, value), value
    parsed = sum(1 for v in values if _outcome(canonicalize, v) not in (v, "OverflowError"))
    assert parsed > 2_000  # the sample reaches the parser's accepting paths, not only refusals


@pytest.fixture(scope="module")
def sandbox_entries() -> list[dict[str, Any]]:
    """200 entries as the engine fetches them from the sandbox over HTTP."""
    from app.healthie.client import HealthieClient
    from app.service.serving import serve_in_thread
    from sandbox.core import Sandbox
    from sandbox.server import create_app

    sb = Sandbox(patients=200, seed=7)
    with serve_in_thread(create_app(sb)) as url:
        client = HealthieClient(url=f"{url}/graphql", api_key=sb.api_key, batch_size=20)
        try:
            fetched = dict(client.fetch_entries(list(sb.org.patient_ids())))
        finally:
            client.close()
    entries = [e for e in fetched.values() if e is not None]
    assert len(entries) == 200
    return entries


def test_sandbox_entries_canonicalize_and_hash_as_the_reference(
    sandbox_entries: list[dict[str, Any]],
) -> None:
    for raw in sandbox_entries:
        expected = ref_canonicalize(raw)
        got = canonicalize(raw)
        assert canonical_json(got) == canonical_json(expected)
        assert list(got) == list(expected)  # the same key order, not only the same JSON
        assert content_hash(raw) == ref_content_hash(raw)
        assert content_hash(got) == ref_content_hash(raw)
        assert canonicalize(got) == got  # idempotent: the pipeline's second pass is a no-op
