"""The one table from an HTTP status to the engine's error kind.

=========================  ==================================================
status                      kind (what the worker does next)
=========================  ==================================================
429                         RateLimited (nack, wait at least Retry-After)
408, 5xx (incl. 529)        UpstreamUnavailable (nack with back-off)
401, 403                    ConfigurationError (stop and report)
409, 422                    TargetRejected (dead-letter: the target refused it)
any other 4xx               FatalError (dead-letter now)
=========================  ==================================================

An edge whose vendor documents a status differently passes ``overrides`` (Anthropic: 409 is a
transient conflict, 402/404 are billing and model configuration) and may pass ``default`` for
the other 4xx (Healthie: an unexpected status means the reply broke its contract).
"""

from __future__ import annotations

from collections.abc import Mapping

from app.core.errors import (
    ConfigurationError,
    FatalError,
    HealthieSyncError,
    RateLimited,
    RetriableError,
    TargetRejected,
    UpstreamUnavailable,
)

ErrorClass = type[HealthieSyncError]

STATUS_KINDS: Mapping[int, ErrorClass] = {
    429: RateLimited,
    408: UpstreamUnavailable,
    401: ConfigurationError,
    403: ConfigurationError,
    409: TargetRejected,
    422: TargetRejected,
}


def kind_for_status(
    status: int,
    *,
    overrides: Mapping[int, ErrorClass] | None = None,
    default: ErrorClass = FatalError,
) -> ErrorClass:
    """The error class for ``status`` (>= 400)."""
    if overrides and status in overrides:
        return overrides[status]
    if status in STATUS_KINDS:
        return STATUS_KINDS[status]
    if status >= 500:
        return UpstreamUnavailable
    return default


def error_for_status(
    status: int,
    message: str,
    *,
    retry_after: float | None = None,
    overrides: Mapping[int, ErrorClass] | None = None,
    default: ErrorClass = FatalError,
) -> HealthieSyncError:
    """The engine error for an HTTP ``status`` answer; ``message`` must hold no payload
    values (ids, kinds and statuses only)."""
    cls = kind_for_status(status, overrides=overrides, default=default)
    if issubclass(cls, RetriableError):
        return cls(message, retry_after=retry_after)
    return cls(message)
