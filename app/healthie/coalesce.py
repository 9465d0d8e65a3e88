"""Full entries requests whatever the number of worker threads: concurrent fetches of one
client are merged before they are cut into requests.

Each worker thread fetches the patients of the batch it pulled. Cut per thread, every batch
ends in a partial request (25 patients are 20 + 5), so N threads send N partial requests
where one full one would do. :class:`FetchCoalescer` holds one FIFO of the patient ids every
caller still needs; a caller sends requests of ``per_request()`` ids taken from its head,
its own ids or another caller's, until each of its ids is answered::

    thread A: fetch(25 ids) ─┐                    ┌─▶ [A1..A20]          (sent by A)
    thread B: fetch(25 ids) ─┼─▶ pending FIFO ─────┼─▶ [A21..A25 B1..B15] (sent by B)
    thread C: fetch(10 ids) ─┘                    └─▶ [B16..B25 C1..C10] (sent by C)

Full requests go at once. Only a remainder shorter than a full request waits, at most
``linger`` seconds from the moment it is all its caller has left and the caller's own full
requests have answered, for another caller's ids to fill it: that bounds the latency
coalescing adds to one fetch call by one round trip plus ``linger``, spent only on its last,
partial request (a fetch of whole requests, such as a pulled batch of 100, costs one round
trip). A patient asked for by two callers at once is fetched once.

A request's failure is the failure of every caller with an id in it (as before coalescing,
when a failed request failed the one caller's whole fetch).

A call sends its requests in parallel, at most ``workers`` of its own and ``max_in_flight`` of
all callers' at once (one worker thread's pulled batch of 100 is five requests: one round
trip, not five). The requests go from daemon threads of their own, but a call's last request
goes from the caller's own thread (a one-request fetch never changes threads). Pacing is the
sender's business (``send`` goes through the key's guard and token bucket), so parallel
requests are still paced and still learn the upstream's limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

Raw = dict[str, Any] | None
Send = Callable[[Sequence[str]], dict[str, Raw]]


class _Slot:
    """One patient id's answer, shared by every caller waiting for it."""

    __slots__ = ("done", "error", "sent", "value")

    def __init__(self) -> None:
        self.sent = False
        self.done = False
        self.value: Raw = None
        self.error: BaseException | None = None


class _Call:
    """One ``fetch`` call's requests in flight."""

    __slots__ = ("running",)

    def __init__(self) -> None:
        self.running = 0


class FetchCoalescer:
    """Merges concurrent ``fetch`` calls' ids into requests of ``per_request()`` ids each.

    ``send(ids)`` performs one request and returns every id's answer; ``per_request`` is read
    each time a request is cut (the client's allowance changes when Healthie corrects its
    complexity estimate). ``requests`` counts the requests sent, ``in_flight`` those being
    sent now and ``peak_in_flight`` the most ever at once (at most ``max_in_flight``).
    """

    def __init__(
        self,
        send: Send,
        per_request: Callable[[], int],
        *,
        linger: float = 0.05,
        max_in_flight: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._per_request = per_request
        self.linger = linger
        self.max_in_flight = max(1, max_in_flight)
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[str, None] = {}  # ids not yet sent, oldest first
        self._slots: dict[str, _Slot] = {}  # ids pending or in flight
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    def fetch(self, ids: Sequence[str], *, workers: int = 1) -> dict[str, Raw]:
        """Every id's answer (in the order of ``ids``, each once), with up to ``workers`` of
        this call's requests in flight at once. Returns only when every request carrying one of
        ``ids`` has answered, then raises the error of the first such request that failed."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        call = _Call()
        workers = max(1, workers)
        with self._cond:
            mine = {pid: self._register(pid) for pid in wanted}
        deadline: float | None = None
        while True:
            with self._cond:
                chunks, deadline = self._next(mine, call, workers, deadline)
                if chunks is None:
                    return self._collect(mine)
                call.running += len(chunks)
                self.in_flight += len(chunks)
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                # nothing of ours is left to cut: the caller sends the last request itself
                last = chunks.pop() if all(s.sent for s in mine.values()) else None
            for chunk in chunks:
                self._dispatch(chunk, call)
            if last is not None:
                self._run(last, call)

    def close(self) -> None:
        """Nothing to stop: each request runs on a daemon thread of its own that ends with its
        answer (no pool whose threads the interpreter would join at exit: a process stopping
        within its grace period must not wait out a slow Healthie request)."""

    def _dispatch(self, chunk: list[str], call: _Call) -> None:
        """Send ``chunk`` from a thread of its own; ``_next`` never lets more than
        ``max_in_flight`` run, so a request starts at once (none waits holding ids)."""
        threading.Thread(
            target=self._run, args=(chunk, call), name="healthie-fetch", daemon=True
        ).start()

    def _register(self, pid: str) -> _Slot:
        slot = self._slots.get(pid)
        if slot is None:
            slot = self._slots[pid] = _Slot()
            self._pending[pid] = None
        return slot

    def _next(
        self, mine: dict[str, _Slot], call: _Call, workers: int, deadline: float | None
    ) -> tuple[list[list[str]] | None, float | None]:
        """Under the lock: the requests this call sends next (None when all of its ids are
        answered), waiting while there is nothing it may send yet."""
        while True:
            if all(slot.done for slot in mine.values()):
                return None, deadline
            free = min(workers - call.running, self.max_in_flight - self.in_flight)
            size = max(1, self._per_request())
            chunks: list[list[str]] = []
            while free > len(chunks) and len(self._pending) >= size:
                chunks.append(self._take(size))
            if chunks:
                return chunks, deadline
            if free > 0 and any(not slot.sent for slot in mine.values()):
                # only a partial request is left, some of it ours: wait for company while this
                # call's own requests are in flight (their answers are awaited anyway), then at
                # most ``linger`` more: the callers those answers free come back with new ids
                if call.running > 0:
                    deadline = None
                    self._cond.wait()
                    continue
                now = self._clock()
                deadline = now + self.linger if deadline is None else deadline
                if now >= deadline:
                    return [self._take(size)], deadline
                self._cond.wait(deadline - now)
            else:
                # our ids are in flight (ours or another caller's requests), or every slot is
                # taken: a request in flight will answer and notify
                self._cond.wait()

    def _take(self, size: int) -> list[str]:
        chunk = []
        for pid in self._pending:
            chunk.append(pid)
            if len(chunk) == size:
                break
        for pid in chunk:
            del self._pending[pid]
            self._slots[pid].sent = True
        self.requests += 1
        return chunk

    def _run(self, chunk: list[str], call: _Call) -> None:
        answers: dict[str, Raw] = {}
        error: BaseException | None = None
        try:
            answers = self._send(chunk)
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the chunk
            error = exc
        with self._cond:
            for pid in chunk:
                slot = self._slots.pop(pid)
                slot.value, slot.error, slot.done = answers.get(pid), error, True
            call.running -= 1
            self.in_flight -= 1
            self._cond.notify_all()

    @staticmethod
    def _collect(mine: dict[str, _Slot]) -> dict[str, Raw]:
        for slot in mine.values():
            if slot.error is not None:
                raise slot.error
        return {pid: slot.value for pid, slot in mine.items()}
