"""The Anthropic API edge: SDK exceptions become engine errors here, and transient ones retry
through the shared resilience layer (``app.resilience``).

Every call the agent package makes to Anthropic goes through ``call_with_retries``: one retry
policy (the SDK's own is switched off by the callers), the one Retry-After parser, the one
status table (with Anthropic's documented differences), and a circuit breaker per API key
when the caller passes its guard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import anthropic

from app.core.errors import (
    ConfigurationError,
    FatalError,
    HealthieSyncError,
    InvalidResponse,
    UpstreamUnavailable,
)
from app.resilience.guard import Guard
from app.resilience.retry import Backoff, RetryCallState, RetryPolicy, parse_retry_after
from app.resilience.status import ErrorClass, error_for_status

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where Anthropic's statuses differ from the shared table: 409 is a transient conflict
#: (the SDK retries it); 402 (billing) and 404 (model id) need a person, like 401/403.
ANTHROPIC_STATUS: dict[int, ErrorClass] = {
    409: UpstreamUnavailable,
    402: ConfigurationError,
    404: ConfigurationError,
}

#: Anthropic's back-off: 0.5 s doubling to 8 s, up to a quarter taken off at random; a
#: retry-after from the API is waited exactly.
ANTHROPIC_BACKOFF = Backoff(initial=0.5, cap=8.0, jitter=0.25, retry_after="exact")


def convert_api_error(exc: anthropic.AnthropicError, what: str = "Anthropic") -> HealthieSyncError:
    """The engine's error kind for an SDK exception (the only place this mapping lives).

    429 -> RateLimited; 408/409/5xx/529 and connection errors -> UpstreamUnavailable (both carry
    ``retry_after``); 401/402/403/404 -> ConfigurationError (key, billing, permission, model id);
    other 4xx -> FatalError; a reply that does not parse -> InvalidResponse.
    """
    if isinstance(exc, anthropic.APIConnectionError):
        return UpstreamUnavailable(f"{what}: {type(exc).__name__}")
    if isinstance(exc, anthropic.APIResponseValidationError):
        return InvalidResponse(f"{what}: reply did not match the SDK's schema")
    if not isinstance(exc, anthropic.APIStatusError):
        return FatalError(f"{what}: {type(exc).__name__}: {exc}")
    status = exc.status_code
    # The API's message explains the cause (never the prompt); keep it short for dead letters.
    detail = f"{what}: HTTP {status} {exc.type or ''} {(exc.api_message or '')[:200]}".strip()
    if exc.request_id:
        detail += f" (request {exc.request_id})"
    return error_for_status(
        status,
        detail,
        retry_after=parse_retry_after(exc.response.headers),
        overrides=ANTHROPIC_STATUS,
    )


def call_with_retries(
    call: Callable[[], T],
    what: str,
    *,
    max_retries: int,
    max_wait: float,
    sleep: Callable[[float], None],
    guard: Guard | None = None,
) -> T:
    """Run one API call; retry RateLimited / UpstreamUnavailable up to ``max_retries`` times,
    waiting the server's ``retry-after`` (or the back-off). A wait longer than ``max_wait`` is
    not slept: the error is raised so the queue's back-off takes over."""

    def once() -> T:
        try:
            return call()
        except anthropic.AnthropicError as exc:
            raise convert_api_error(exc, what) from exc

    def note(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        kind = getattr(err, "kind", "error")
        log.info(
            "%s: %s; retry %d in %.2fs", what, kind, state.attempt_number, state.upcoming_sleep
        )

    policy = RetryPolicy(
        max_attempts=max_retries + 1,
        backoff=ANTHROPIC_BACKOFF,
        max_wait=max_wait,
        sleep=sleep,
        before_sleep=note,
    )
    return policy.call(lambda: guard.call(once) if guard is not None else once())
