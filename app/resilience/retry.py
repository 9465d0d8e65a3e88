"""The one retry policy and the one Retry-After parser.

Every outbound call that may fail transiently (Healthie, Anthropic, every connector) retries
through :class:`RetryPolicy`: tenacity with exponential back-off and jitter, never waiting less
than the server asked (``RetriableError.retry_after``), never retrying a non-retriable kind or an
open circuit (fail fast: waiting out a cool-down belongs to the queue). A wait longer than
``max_wait`` is not slept: the error is raised so the queue's redelivery takes over.

:class:`Backoff` is the one back-off formula; the worker's redelivery delay
(:func:`redelivery_delay`) is the same formula with the queue's bounds.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from app.core.errors import CircuitOpen, RetriableError

T = TypeVar("T")


def retry_after_header(seconds: float | None, default: float) -> dict[str, str]:
    """The ``Retry-After`` header our own 503s send: whole seconds (RFC 9110 delta-seconds,
    rounded up, at least 1), ``default`` when the failure carried no figure of its own."""
    value = default if seconds is None else seconds
    return {"Retry-After": str(max(1, math.ceil(value)))}


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: Callable[[], datetime] | None = None
) -> float | None:
    """Seconds the server asked us to wait, or None.

    Reads ``retry-after-ms`` (Anthropic) before ``retry-after``, which is either delta-seconds
    or an HTTP-date (RFC 9110 §10.2.3). Negative or unparseable values read as None.
    """
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now() if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass(frozen=True)
class Backoff:
    """``initial * 2**attempt`` capped at ``cap``; with ``jitter`` up to that share of it is
    taken off at random. A server's Retry-After is a floor under the back-off, or with
    ``retry_after="exact"`` replaces it (Anthropic's SDK convention: the server knows)."""

    initial: float = 0.5
    cap: float = 8.0
    jitter: float = 0.25
    retry_after: Literal["floor", "exact"] = "floor"
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait before retry number ``attempt`` + 1 (``attempt`` counts from 0)."""
        if retry_after is not None and self.retry_after == "exact":
            return retry_after
        base = min(self.cap, self.initial * 2.0 ** min(max(attempt, 0), 30))
        if self.jitter:
            base *= 1.0 - self.jitter * self.rng()
        return max(base, retry_after or 0.0)


#: The worker's redelivery delay when it nacks a work item: 2 s doubling to 5 minutes.
REDELIVERY = Backoff(initial=1.0, cap=300.0, jitter=0.0)


def redelivery_delay(delivery_attempt: int, retry_after: float | None = None) -> float:
    """Seconds before the queue redelivers an item on its ``delivery_attempt``-th try."""
    return REDELIVERY.delay(min(delivery_attempt, 8), retry_after)


def is_retriable(exc: BaseException) -> bool:
    """A retriable engine error other than an open circuit."""
    # An open circuit means "fail fast": retrying here would only wait out the cool-down.
    return isinstance(exc, RetriableError) and not isinstance(exc, CircuitOpen)


class _Wait(wait_base):
    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, RetriableError) else None
        return self._backoff.delay(retry_state.attempt_number - 1, retry_after)


class _StopWhenWaitTooLong(stop_base):
    def __init__(self, max_wait: float) -> None:
        self._max_wait = max_wait

    def __call__(self, retry_state: RetryCallState) -> bool:
        return retry_state.upcoming_sleep > self._max_wait


@dataclass(frozen=True)
class RetryPolicy:
    """How one client retries: at most ``max_attempts`` calls in all, waits from ``backoff``,
    no single wait over ``max_wait`` and, with ``deadline``, no retry once that many seconds
    have passed since the first call (the last error is raised instead)."""

    max_attempts: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    max_wait: float = 60.0
    deadline: float | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    before_sleep: Callable[[RetryCallState], None] | None = field(
        default=None, compare=False, repr=False
    )
    #: told of each retry before its wait: the error retried and the seconds about to be
    #: slept (metrics: a fault that was retried and then succeeded leaves a trace there)
    on_retry: Callable[[BaseException, float], None] | None = field(
        default=None, compare=False, repr=False
    )

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        if self.on_retry is not None and retry_state.outcome is not None:
            exc = retry_state.outcome.exception()
            if exc is not None:
                self.on_retry(exc, retry_state.upcoming_sleep)
        if self.before_sleep is not None:
            self.before_sleep(retry_state)

    def retrying(self) -> Retrying:
        """A tenacity controller for this policy (re-raising the last error)."""
        stop = stop_after_attempt(self.max_attempts) | _StopWhenWaitTooLong(self.max_wait)
        if self.deadline is not None:
            stop = stop | stop_after_delay(self.deadline)
        return Retrying(
            retry=retry_if_exception(is_retriable),
            stop=stop,
            wait=_Wait(self.backoff),
            sleep=self.sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried under this policy."""
        result: T = self.retrying()(fn)
        return result


def google_rpc_retry(
    transient: tuple[type[Exception], ...], *, backoff: Backoff, deadline: float
) -> Any:
    """The retry the Google Cloud clients (Pub/Sub, Firestore) run inside one RPC, built from
    this module's back-off: ``backoff.initial`` doubling to ``backoff.cap`` with Google's own
    jitter, on ``transient`` errors, for at most ``deadline`` seconds. Those clients retry
    within their deadline and streaming semantics, so the policy is handed to them rather
    than wrapped around them; what is still failing then surfaces as an engine error."""
    from google.api_core.retry import Retry, if_exception_type

    return Retry(
        predicate=if_exception_type(*transient),
        initial=backoff.initial,
        maximum=max(backoff.initial, min(backoff.cap, deadline)),
        multiplier=2.0,
        timeout=deadline,
    )


def google_no_retry() -> Any:
    """A Google client retry that never retries: for clients whose calls run inside this
    module's :class:`RetryPolicy` (so retries are not stacked)."""
    from google.api_core.retry import Retry

    return Retry(predicate=lambda _exc: False)


__all__ = [
    "REDELIVERY",
    "Backoff",
    "RetryCallState",
    "RetryPolicy",
    "google_no_retry",
    "google_rpc_retry",
    "is_retriable",
    "parse_retry_after",
    "redelivery_delay",
]
