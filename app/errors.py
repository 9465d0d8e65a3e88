"""Every failure the engine can meet, grouped by what happens next.

::

    HealthieSyncError
    ├── ConfigurationError   stop and report: nothing will work until a person fixes config
    ├── RetriableError       nack and back off: the same work may succeed later
    │   ├── RateLimited          (Healthie TOO_MANY_REQUESTS / HTTP 429, carries retry_after)
    │   ├── UpstreamUnavailable  (5xx, timeouts, connection errors, an open circuit breaker)
    │   └── QueueUnavailable     (a publish was not confirmed)
    ├── FatalError           dead-letter now: retrying the same input cannot succeed
    │   ├── InvalidResponse      (a reply that does not match its contract; one patient's
    │   │                         entry still over the complexity cap after splitting)
    │   ├── PlanValidationError  (a WritePlan that names another patient, target or bad args)
    │   └── TargetRejected       (a target refused a write for a reason that will not change)
    └── SkippableError       acknowledge and record: nothing to do for this item
        └── PatientNotFound      (deleted or merged away before the flush reached it)

Vendor exceptions are converted at the edge that calls the vendor (``raise ... from exc``);
``workers.processor`` turns these kinds into ack / nack / dead-letter in exactly one place.
"""

from __future__ import annotations


class HealthieSyncError(Exception):
    """Base of every error the engine raises on purpose."""

    #: short machine-readable name stored with dead letters and run records
    kind: str = "error"


class ConfigurationError(HealthieSyncError):
    """Configuration is missing or invalid; stop and report."""

    kind = "configuration"


class RetriableError(HealthieSyncError):
    """A transient failure; the same work may succeed after a back-off."""

    kind = "retriable"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(RetriableError):
    """The upstream said we are over its rate limit."""

    kind = "rate_limited"


class UpstreamUnavailable(RetriableError):
    """The upstream failed transiently (5xx, timeout, connection error)."""

    kind = "upstream_unavailable"


class QueueUnavailable(RetriableError):
    """A message could not be durably published."""

    kind = "queue_unavailable"


class FatalError(HealthieSyncError):
    """Retrying the same input cannot succeed; dead-letter it."""

    kind = "fatal"


class InvalidResponse(FatalError):
    """An external reply did not match its contract."""

    kind = "invalid_response"


class PlanValidationError(FatalError):
    """A WritePlan failed validation against the integration's targets and patient."""

    kind = "plan_invalid"


class TargetRejected(FatalError):
    """A target system refused a write permanently."""

    kind = "target_rejected"


class SkippableError(HealthieSyncError):
    """Nothing to do for this item; acknowledge and record why."""

    kind = "skippable"


class PatientNotFound(SkippableError):
    """The patient no longer exists (deleted, or merged into another)."""

    kind = "patient_not_found"
