"""The embedded scheduler: fires each cadence's flush on the local default, on the same
schedule ``cloudbuild.yaml`` gives Cloud Scheduler (UTC):

=============  ==================
hourly         every hour at :00
every_6_hours  00:00, 06:00, 12:00, 18:00
daily          03:00
weekly         Mondays 04:00
=============  ==================

A cadence change in an integration's config applies from the next run: marks already queued
under the old cadence are flushed by that cadence's next run, new ones follow the new cadence.

A flush refused with FlushInProgress (another process holds the cadence's lease: a flush
still running, or one that crashed and whose lease has not lapsed yet) is fired again
``retry_seconds`` later, the flush lease's horizon plus a margin, and again after that, until it
runs or the cadence's next calendar instant comes: a crashed flush costs seconds, not the slot.
Fires run one at a time on the scheduler's thread, so a retry never overlaps another flush of
this scheduler, and the lease refuses it while any other process's flush of the cadence runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from app.core.errors import FlushInProgress
from app.core.models import Cadence
from app.core.settings import FLUSH_LEASE_SECONDS

log = logging.getLogger(__name__)


def next_fire(cadence: Cadence, after: datetime) -> datetime:
    """The first scheduled instant of ``cadence`` strictly after ``after`` (aware, UTC)."""
    now = after.astimezone(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    if cadence is Cadence.HOURLY:
        return hour + timedelta(hours=1)
    if cadence is Cadence.EVERY_6_HOURS:
        candidate = hour.replace(hour=hour.hour - hour.hour % 6)
        while candidate <= now:
            candidate += timedelta(hours=6)
        return candidate
    if cadence is Cadence.DAILY:
        candidate = hour.replace(hour=3)
        return candidate if candidate > now else candidate + timedelta(days=1)
    candidate = hour.replace(hour=4) - timedelta(days=now.weekday())  # this week's Monday
    while candidate <= now:
        candidate += timedelta(days=7)
    return candidate


class EmbeddedScheduler:
    """A daemon thread that calls ``fire(cadence)`` at each cadence's scheduled instants.

    A fire that is still running when its next instant comes is not started twice; a failure
    is logged and the schedule goes on; a fire refused with FlushInProgress is retried
    ``retry_seconds`` later (until the cadence's next instant).
    """

    def __init__(
        self,
        fire: Callable[[Cadence], object],
        *,
        cadences: tuple[Cadence, ...] = tuple(Cadence),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], bool] | None = None,
        retry_seconds: float = FLUSH_LEASE_SECONDS + 1.0,
    ) -> None:
        self._fire = fire
        self._cadences = cadences
        self._clock = clock
        self._retry = timedelta(seconds=retry_seconds)
        self._stop = threading.Event()
        # sleep(seconds) -> True when stopped meanwhile; tests pass one that moves a fake clock
        self._sleep = sleep or self._stop.wait
        self._thread: threading.Thread | None = None
        self.fired: list[tuple[Cadence, datetime]] = []

    def start(self) -> None:
        """Start the schedule thread."""
        self._thread = threading.Thread(target=self._run, name="embedded-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current fire, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        start = self._clock()
        calendar = {c: next_fire(c, start) for c in self._cadences}
        retries: dict[Cadence, datetime] = {}  # a refused fire's next try, before its instant

        def due(c: Cadence) -> datetime:
            return retries.get(c, calendar[c])

        while not self._stop.is_set():
            at = min(due(c) for c in self._cadences)
            wait = (at - self._clock()).total_seconds()
            if wait > 0 and self._sleep(wait):
                return
            if self._stop.is_set():
                return
            # every cadence due at this instant fires (00:00 is hourly and every 6 hours...)
            for cadence in [c for c in self._cadences if due(c) == at]:
                if retries.pop(cadence, None) is None:
                    calendar[cadence] = next_fire(cadence, at)
                self.fired.append((cadence, at))
                try:
                    self._fire(cadence)
                except FlushInProgress:
                    again = max(at, self._clock()) + self._retry
                    if again < calendar[cadence]:
                        retries[cadence] = again
                    log.warning(
                        "scheduled %s flush refused: another holds its lease; %s",
                        cadence.value,
                        f"retried at {again:%H:%M:%S}"
                        if cadence in retries
                        else "the next instant runs it",
                    )
                except Exception:  # noqa: BLE001 - one failed flush must not stop the schedule
                    log.exception("scheduled %s flush failed", cadence.value)
