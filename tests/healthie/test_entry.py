"""Canonical entries and the content hash that recognizes an unchanged patient."""

from __future__ import annotations

from app.healthie.entry import canonicalize, content_hash


def test_order_and_timestamp_format_do_not_change_the_hash():
    a = {
        "id": "1",
        "tags": [{"id": "2", "name": "b"}, {"id": "10", "name": "a"}],
        "created_at": "2026-01-01 10:00:00 -0500",
    }
    b = {
        "created_at": "2026-01-01T15:00:00Z",
        "id": "1",
        "tags": [{"name": "a", "id": "10"}, {"id": "2", "name": "b"}],
    }
    assert content_hash(a) == content_hash(b)
    assert canonicalize(a)["tags"][0]["id"] == "2"  # numeric ids sort numerically


def test_volatile_fields_are_ignored_but_meaningful_ones_count():
    base = {
        "id": "1",
        "phone_number": "555",
        "updated_at": "2026-01-01T00:00:00Z",
        "appointments": [{"id": "5", "updated_at": "2026-01-01T00:00:00Z"}],
    }
    touched = {
        **base,
        "updated_at": "2026-02-01T00:00:00Z",
        "appointments": [{"id": "5", "updated_at": "2026-03-01T00:00:00Z"}],
    }
    changed = {**base, "phone_number": "556"}
    assert content_hash(base) == content_hash(touched)
    assert content_hash(base) != content_hash(changed)
    assert content_hash(base).startswith("sha256:")


def test_naive_timestamps_and_plain_strings_are_kept():
    assert canonicalize({"t": "2026-01-01T10:00:00"}) == {"t": "2026-01-01T10:00:00"}
    assert canonicalize({"dob": "1980-02-03"}) == {"dob": "1980-02-03"}
