"""The Anthropic API edge: SDK exceptions become engine errors here, and transient ones retry.

Every call the agent package makes to Anthropic goes through ``call_with_retries``, so there is
one retry policy (the SDK's own is switched off by the callers) and one error mapping.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

import anthropic

from app.errors import (
    ConfigurationError,
    FatalError,
    HealthieSyncError,
    InvalidResponse,
    RateLimited,
    RetriableError,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def _retry_after(response_headers: Any) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response_headers.get(name) if response_headers is not None else None
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: let the back-off decide
    return None


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
    retry_after = _retry_after(exc.response.headers)
    # The API's message explains the cause (never the prompt); keep it short for dead letters.
    detail = f"{what}: HTTP {status} {exc.type or ''} {(exc.api_message or '')[:200]}".strip()
    if exc.request_id:
        detail += f" (request {exc.request_id})"
    if status == 429:
        return RateLimited(detail, retry_after=retry_after)
    if status in (408, 409) or status >= 500:
        return UpstreamUnavailable(detail, retry_after=retry_after)
    if status in (401, 402, 403, 404):
        return ConfigurationError(detail)
    return FatalError(detail)


def call_with_retries(
    call: Callable[[], T],
    what: str,
    *,
    max_retries: int,
    max_wait: float,
    sleep: Callable[[float], None],
) -> T:
    """Run one API call; retry RateLimited / UpstreamUnavailable up to ``max_retries`` times,
    waiting the server's ``retry-after`` (or an exponential back-off with jitter). A wait longer
    than ``max_wait`` is not slept: the error is raised so the queue's back-off takes over."""
    attempt = 0
    while True:
        try:
            return call()
        except anthropic.AnthropicError as exc:
            err = convert_api_error(exc, what)
            if not isinstance(err, RetriableError) or attempt >= max_retries:
                raise err from exc
            delay = err.retry_after
            if delay is None:
                delay = min(0.5 * 2**attempt, 8.0) * random.uniform(0.75, 1.0)  # noqa: S311
            if delay > max_wait:
                raise err from exc
            attempt += 1
            log.info("%s: %s; retry %d in %.2fs", what, err.kind, attempt, delay)
            sleep(delay)
