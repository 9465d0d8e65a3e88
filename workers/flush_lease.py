"""The flush lease of one cadence, with a heartbeat (``workers.flusher`` takes it).

One flush per cadence runs at a time: the lease lives in the state store, is held a short
horizon ahead (``flush_lease_seconds``, 15 s by default) and renewed every third of it by a
thread while the flush runs. The same beat keeps the chunk of dirty marks being staged leased
for that horizon. A killed flush stops heartbeating, so its cadence is free again, and its
pulled marks visible again, within one horizon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from app.core.errors import FlushInProgress
from app.core.models import Cadence
from app.queue.base import Queue
from app.state.base import StateStore

log = logging.getLogger(__name__)


class FlushLease:
    """A cadence's flush lease with a heartbeat: taken ``seconds`` ahead, renewed every third
    of that by a thread until ``release``, together with the dirty marks the flush is staging
    (``hold``). ``check`` raises FlushInProgress once the lease was taken over or could not be
    confirmed for a whole horizon (the state store unreachable: it may have lapsed)."""

    def __init__(
        self, state: StateStore, queue: Queue, cadence: Cadence, owner: str, seconds: float
    ) -> None:
        self._state = state
        self._queue = queue
        self._name = f"flush:{cadence.value}"
        self._cadence = cadence
        self._owner = owner
        self._seconds = seconds
        self._confirmed = 0.0  # time.monotonic() of the last renewal the store confirmed
        self._lost = False
        self._marks: tuple[str, list[str]] | None = None
        # held while renewing marks and while the flush acks or nacks them, so a renewal never
        # lands after a nack (its "now" must stand)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease and start the heartbeat; FlushInProgress when another flush holds it."""
        if not self._state.try_lease(self._name, self._owner, self._seconds):
            raise FlushInProgress(f"a {self._cadence.value} flush is already running")
        self._confirmed = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"flush-lease-{self._cadence.value}", daemon=True
        )
        self._thread.start()

    def check(self) -> None:
        """Raise FlushInProgress if this flush may no longer hold its lease."""
        if self._lost:
            raise FlushInProgress(f"flush {self._owner} lost its lease to another flush")
        if time.monotonic() - self._confirmed >= self._seconds:
            raise FlushInProgress(f"flush {self._owner} could not renew its lease in time")

    def hold(self, subscription: str, ack_ids: Sequence[str]) -> None:
        """Lease these pulled marks one horizon ahead now, and with every beat until
        ``settle``."""
        with self._lock:
            self._marks = (subscription, list(ack_ids))
            self._renew_marks()

    def settle(self, *, give_back: bool = False) -> None:
        """The held marks are done: acknowledge them, or give them back for redelivery at once
        (``give_back``). Either way the heartbeat stops renewing them."""
        with self._lock:
            if self._marks is None:
                return
            subscription, ack_ids = self._marks
            self._marks = None
            if give_back:
                self._queue.nack(subscription, ack_ids, 0)
            else:
                self._queue.ack(subscription, ack_ids)

    def release(self) -> None:
        """Stop the heartbeat and free the lease (if still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._state.release_lease(self._name, self._owner)

    def _renew_marks(self) -> None:
        if self._marks is None:
            return
        subscription, ack_ids = self._marks
        try:
            self._queue.extend(subscription, ack_ids, self._seconds)
        except Exception as exc:  # noqa: BLE001 - they come back later; staging is idempotent
            log.warning("could not renew %d mark leases (%s)", len(ack_ids), type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.wait(self._seconds / 3):
            # the marks first: the lease then outlasts them, so the flush that takes a dead
            # one's lease over finds its marks visible again
            with self._lock:
                self._renew_marks()
            try:
                if self._state.try_lease(self._name, self._owner, self._seconds):
                    self._confirmed = time.monotonic()
                else:
                    self._lost = True
                    log.warning("flush %s lost its lease to another flush", self._owner)
            except Exception as exc:  # noqa: BLE001 - check() stops the flush if this lasts
                log.warning(
                    "flush %s could not renew its lease (%s)", self._owner, type(exc).__name__
                )
