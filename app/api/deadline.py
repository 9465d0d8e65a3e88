"""Blocking store and queue calls of the operator routes, answered within a deadline.

A locked SQLite file makes a write wait out its busy timeout (30 s), and every other call of
the process waits behind it on the store's lock; a full or unreachable queue blocks a publish
the same way. A request path must not hang that long and then fail with a 500: the call runs
in its own thread and the route answers **503 with Retry-After** when the deadline passes or
when the call raises ``StoreUnavailable`` / ``QueueUnavailable``.

A call that misses its deadline keeps running in its thread until it returns on its own; what
it does then stays correct without the request (a flush holds its cadence's lease and releases
it in its own ``finally``), and its outcome is logged. At most :data:`MAX_OVERDUE` calls may
be overdue at once: past that, new calls are refused with 503 at once instead of piling
threads onto a store that is not answering.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from fastapi import HTTPException

from app.core.errors import QueueUnavailable, StoreUnavailable
from app.resilience.retry import retry_after_header

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds an operator route waits for the state store or queue before answering 503.
ANSWER_WITHIN_SECONDS = 2.0
#: Retry-After (seconds) when the error carries none.
RETRY_AFTER_SECONDS = 5
#: Calls still running past their deadline before new ones are refused outright.
MAX_OVERDUE = 4

_overdue = 0
_overdue_lock = threading.Lock()


def unavailable(retry_after: float | None = None) -> HTTPException:
    """The 503 the operator routes answer when the store or queue is not answering."""
    return HTTPException(
        503,
        "state store or queue unavailable",
        headers=retry_after_header(retry_after or None, RETRY_AFTER_SECONDS),
    )


async def within(
    call: Callable[[], T],
    what: str,
    seconds: float | None = None,
    *,
    started: threading.Event | None = None,
) -> T:
    """``call()`` in a thread, its result if it returns within ``seconds`` (default
    :data:`ANSWER_WITHIN_SECONDS`); otherwise (or on StoreUnavailable / QueueUnavailable)
    raises the 503 of :func:`unavailable`. Other exceptions propagate unchanged. With
    ``started``, the deadline is for the call to set it (e.g. a flush that took its lease:
    the store answered); once set, the call's own length is not a failure and is awaited."""
    global _overdue
    with _overdue_lock:
        if _overdue >= MAX_OVERDUE:
            log.warning("%s refused: %d earlier calls still blocked", what, _overdue)
            raise unavailable()
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()  # the request's log context, as run_in_threadpool
    # under _overdue_lock: "finished" once the thread has its outcome, "late" once the
    # request gave up on it; whichever comes first decides who reports the outcome
    state = {"finished": False, "late": False}

    def run() -> None:
        global _overdue
        outcome: Callable[[], None]
        failure: str | None
        try:
            result = context.run(call)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
            error = exc  # ``exc`` is unbound once the block ends; the callback runs later
            outcome, failure = (lambda: future.set_exception(error)), type(exc).__name__
        else:
            outcome, failure = (lambda: future.set_result(result)), None
        with _overdue_lock:
            state["finished"] = True
            if state["late"]:
                _overdue -= 1
        if not state["late"]:
            loop.call_soon_threadsafe(outcome)
        elif failure:
            log.warning("%s failed after its 503 answer: %s", what, failure)
        else:
            log.warning("%s finished after its 503 answer", what)

    threading.Thread(target=run, name=f"deadline-{what}", daemon=True).start()
    limit = ANSWER_WITHIN_SECONDS if seconds is None else seconds
    try:
        try:
            return await asyncio.wait_for(asyncio.shield(future), limit)
        except TimeoutError:
            if started is not None and started.is_set():
                return await future  # under way: the store answered, the work is just long
            with _overdue_lock:
                if not state["finished"]:
                    state["late"] = True
                    _overdue += 1
            if not state["late"]:  # it finished in the instant between timeout and lock
                return await future
            log.warning("%s did not answer within %.1f s: 503", what, limit)
            raise unavailable() from None
    except (StoreUnavailable, QueueUnavailable) as exc:
        log.warning("%s: %s", what, exc.kind)
        raise unavailable(exc.retry_after) from None
