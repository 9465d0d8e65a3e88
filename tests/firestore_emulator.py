"""The Firestore emulator as a session fixture (see tests/emulators.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulators import running_emulator


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[str]:
    """``host:port`` of a running emulator; ``FIRESTORE_EMULATOR_HOST`` points at it meanwhile."""
    with running_emulator(
        "Firestore emulator",
        ["emulators", "firestore", "start", "--quiet"],
        "FIRESTORE_EMULATOR_HOST",
        ready=lambda status, body: body.strip() == b"Ok",
    ) as host:
        yield host
