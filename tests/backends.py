"""The engine's two backends as one fixture, for tests that must hold on both.

``backend`` is parametrized over ``sqlite`` (SQLite queue and state, files under ``tmp_path``:
the embedded default) and ``gcp`` (Pub/Sub on its emulator, Firestore on its emulator: the
production pair). Its factories open *the same* durable queue and state every time they are
called, so a test can "restart" the engine: close the runtime, then build a new one on the
same data. On ``gcp`` each test gets its own Pub/Sub project (the emulator accepts any) and its
own Firestore collection prefix, because the tests share one emulator of each.

The backends differ in limits, not in outcomes: Pub/Sub's ack deadline is at least 10 s and its
``max_delivery_attempts`` at least 5 (``app.queue.pubsub`` clamps), SQLite honours 1 s and 1.
``min_ack_deadline`` and ``min_delivery_attempts`` say which, so a test asks for the smallest
values its backend honours and waits accordingly, without weakening what it asserts.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.core.settings import Settings
from app.queue.base import Queue
from app.queue.topology import ensure_topology, ensure_topology_for
from app.state.base import StateStore
from tests.firestore_emulator import firestore_emulator  # noqa: F401 - re-exported fixture
from tests.pubsub_emulator import pubsub_emulator  # noqa: F401 - re-exported fixture

#: Firestore project of every test; the per-test prefix keeps their documents apart.
FIRESTORE_PROJECT = "healthie-sync-test"

#: Leeway beyond an ack deadline before a lease counts as expired (clocks, emulator ticks).
LEASE_MARGIN_SECONDS = 0.5


@dataclass
class Backend:
    """A queue and a state store that survive their processes, and the backend's limits."""

    name: str
    min_ack_deadline: int  # seconds; smaller deadlines are raised to this
    min_delivery_attempts: int  # smaller max_delivery_attempts are raised to this
    _open_queue: Callable[[], Queue]
    _open_state: Callable[[], StateStore]
    _opened: list[Queue | StateStore] = field(default_factory=list)

    def make_queue(self, settings: Settings | None = None) -> Queue:
        """Open the test's queue (the same one on every call) and ensure the engine's topology:
        with the deadlines and attempts ``settings`` name, or ``ensure_topology``'s defaults
        (as ``demo_runtime`` does) when None. Subscriptions keep the settings of the call that
        created them."""
        queue = self._open_queue()
        self._opened.append(queue)
        if settings is None:
            ensure_topology(queue)
        else:
            ensure_topology_for(queue, settings)
        return queue

    def make_state(self) -> StateStore:
        """Open the test's state store (the same data on every call)."""
        state = self._open_state()
        self._opened.append(state)
        return state

    def settings(self, tmp_path: Path, **overrides: object) -> Settings:
        """Settings with the shortest leases this backend honours (work and dirty marks), so
        a crashed process's messages come back as soon as the backend allows."""
        values: dict[str, object] = {
            "data_dir": tmp_path,
            "work_ack_deadline_seconds": self.min_ack_deadline,
            "dirty_ack_deadline_seconds": self.min_ack_deadline,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    def wait_out_leases(self, since: float, deadline: int | None = None) -> None:
        """Sleep until leases taken at or after ``since`` (``time.monotonic()``) with an ack
        deadline of ``deadline`` seconds (default: the backend's minimum) have expired."""
        seconds = self.min_ack_deadline if deadline is None else deadline
        remaining = since + seconds + LEASE_MARGIN_SECONDS - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def close_all(self) -> None:
        """Close everything the factories opened (closing twice is harmless, and a test that
        failed half-way may have left some open)."""
        for opened in reversed(self._opened):
            with contextlib.suppress(Exception):
                opened.close()
        self._opened.clear()


def _sqlite(tmp_path: Path) -> Backend:
    from app.queue.sqlite import SqliteQueue
    from app.state.sqlite import SqliteStateStore

    return Backend(
        name="sqlite",
        min_ack_deadline=1,
        min_delivery_attempts=1,
        _open_queue=lambda: SqliteQueue(tmp_path / "queue.db"),
        _open_state=lambda: SqliteStateStore(tmp_path / "state.db"),
    )


def _gcp() -> Backend:
    from google.cloud import firestore

    from app.queue.pubsub import MIN_ACK_DEADLINE, MIN_DELIVERY_ATTEMPTS, PubSubQueue
    from app.state.firestore import FirestoreStateStore

    unique = uuid.uuid4().hex[:12]
    project = f"hs-test-{unique}"  # Pub/Sub project ids: 6..30 chars, lowercase, digits, '-'
    prefix = f"test-{unique}"
    return Backend(
        name="gcp",
        min_ack_deadline=MIN_ACK_DEADLINE,
        min_delivery_attempts=MIN_DELIVERY_ATTEMPTS,
        _open_queue=lambda: PubSubQueue(project=project, publish_timeout=10.0),
        _open_state=lambda: FirestoreStateStore(
            firestore.Client(project=FIRESTORE_PROJECT), prefix=prefix, timeout=10
        ),
    )


BACKENDS = [
    "sqlite",
    pytest.param("gcp", marks=[pytest.mark.pubsub, pytest.mark.firestore]),
]


@pytest.fixture(params=BACKENDS, name="backend")
def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """``backend``: the SQLite pair, or Pub/Sub + Firestore on their emulators (skipped locally
    without gcloud, failing under REQUIRE_SERVICES=1). A test module imports it together with
    the emulator fixtures it requests: ``backend_fixture, firestore_emulator, pubsub_emulator``.
    """
    if request.param == "gcp":
        request.getfixturevalue("pubsub_emulator")
        request.getfixturevalue("firestore_emulator")
        made = _gcp()
    else:
        made = _sqlite(tmp_path)
    yield made
    made.close_all()
