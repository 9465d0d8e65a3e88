"""The Pub/Sub emulator as a session fixture (see tests/emulators.py).

Tests share one emulator, so each must use its own topic and subscription names.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulators import running_emulator

PROJECT = "test-project"


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """Start the emulator, point ``PUBSUB_EMULATOR_HOST`` at it, yield ``host:port``."""
    with running_emulator(
        "Pub/Sub emulator",
        ["beta", "emulators", "pubsub", "start", f"--project={PROJECT}"],
        "PUBSUB_EMULATOR_HOST",
    ) as host:
        yield host
