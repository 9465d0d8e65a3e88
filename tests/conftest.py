"""Shared fixtures: where ../shared is, and how tests needing a server skip or fail.

Tests that need ``../shared`` skip with a message when it is absent. Tests that need a server
(emulators, PostgreSQL) skip locally when it is missing and fail when ``REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def require_service(name: str, why: str) -> None:
    """Skip (locally) or fail (CI, REQUIRE_SERVICES=1) because ``name`` is unavailable."""
    message = f"{name} unavailable: {why}"
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder beside the repo, or skip."""
    if not (SHARED / "healthie" / "schema.graphql").is_file():
        pytest.skip(f"../shared not found at {SHARED}; contract tests need Healthie's schema")
    return SHARED


@pytest.fixture(scope="session")
def healthie_schema(shared_dir: Path):
    """Healthie's published schema, built once per session."""
    from graphql import build_schema

    return build_schema((shared_dir / "healthie" / "schema.graphql").read_text(encoding="utf-8"))
