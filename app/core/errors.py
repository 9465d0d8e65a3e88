"""Every failure the engine can meet, grouped by what happens next. No error class is defined
anywhere else in the engine (``tests/core/test_layout.py`` checks it).

::

    HealthieSyncError
    ├── ConfigurationError    stop and report: nothing will work until a person fixes config
    │   └── WebhookUrlRefused     (Healthie refused the receiver URL: fix ``--url``)
    ├── RetriableError        nack and back off: the same work may succeed later
    │   ├── RateLimited           (HTTP 429 / Healthie TOO_MANY_REQUESTS; carries retry_after)
    │   ├── UpstreamUnavailable   (5xx, timeouts, connection errors)
    │   │   └── CircuitOpen           (the upstream kept failing: fail fast until the cool-down)
    │   ├── QueueUnavailable      (a publish was not confirmed; the queue is locked or full)
    │   ├── StoreUnavailable      (the state store is locked, full or unreachable)
    │   └── ConflictingWrite      (a conditional state write lost a race: read again)
    ├── FatalError            dead-letter now: retrying the same input cannot succeed
    │   ├── InvalidResponse       (a reply that does not match its contract)
    │   │   └── ComplexityExceeded    (Healthie refused a request as too complex: split it)
    │   ├── PlanValidationError   (a WritePlan that names another patient, target or bad args)
    │   ├── TargetRejected        (a target refused a write for a reason that will not change)
    │   └── WebhookRefused        (Healthie refused a webhook mutation)
    └── SkippableError        acknowledge and record: nothing to do for this item
        ├── PatientNotFound       (deleted or merged away before the flush reached it)
        └── FlushInProgress       (another flush of the cadence holds the lease)

Vendor exceptions are converted once, at the edge that calls the vendor (``raise ... from
exc``): ``app.healthie.client`` (gql), ``app.agent.api`` (anthropic), ``app.queue.pubsub`` and
``app.state.firestore`` (google-api-core), ``app.queue.sqlite`` and ``app.state.sqlite``
(sqlite3), each connector (its driver), with the HTTP status table of
``app.resilience.status``. ``workers.consumer`` turns these kinds into ack, nack or
dead-letter in exactly one place. Messages carry ids, kinds, statuses and field paths, never a
patient value or a secret.
"""

from __future__ import annotations

from typing import Any


class HealthieSyncError(Exception):
    """Base of every error the engine raises on purpose."""

    #: short machine-readable name stored with dead letters and run records
    kind: str = "error"


class ConfigurationError(HealthieSyncError):
    """Configuration is missing or invalid; stop and report."""

    kind = "configuration"


class WebhookUrlRefused(ConfigurationError):
    """Healthie refused the webhook URL: fix the engine's public base URL. ``actions``: what
    the registration had already done when it was refused."""

    kind = "webhook_url_refused"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.actions: list[Any] = []


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


class CircuitOpen(UpstreamUnavailable):
    """The upstream kept failing; calls fail fast until ``retry_after`` seconds have passed."""

    kind = "circuit_open"


class QueueUnavailable(RetriableError):
    """A message could not be durably published."""

    kind = "queue_unavailable"


class StoreUnavailable(RetriableError):
    """The state store did not answer in time: locked by another writer, out of space, or
    unreachable. Request paths turn it into 503; workers retry the item."""

    kind = "store_unavailable"


class ConflictingWrite(RetriableError):
    """A conditional write found the documents changed since they were read."""

    kind = "conflicting_write"


class FatalError(HealthieSyncError):
    """Retrying the same input cannot succeed; dead-letter it."""

    kind = "fatal"


class InvalidResponse(FatalError):
    """An external reply did not match its contract."""

    kind = "invalid_response"


class ComplexityExceeded(InvalidResponse):
    """Healthie refused a request as too complex (``score`` over ``limit``)."""

    kind = "complexity_exceeded"

    def __init__(self, message: str, *, score: int, limit: int) -> None:
        super().__init__(message)
        self.score, self.limit = score, limit


class PlanValidationError(FatalError):
    """A WritePlan failed validation against the integration's targets and patient."""

    kind = "plan_invalid"


class TargetRejected(FatalError):
    """A target system refused a write permanently."""

    kind = "target_rejected"


class WebhookRefused(FatalError):
    """Healthie refused a webhook mutation (its ``messages``, without secrets). ``actions``:
    what the registration had already done when it was refused."""

    kind = "webhook_refused"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.actions: list[Any] = []


class SkippableError(HealthieSyncError):
    """Nothing to do for this item; acknowledge and record why."""

    kind = "skippable"


class PatientNotFound(SkippableError):
    """The patient no longer exists (deleted, or merged into another)."""

    kind = "patient_not_found"


class FlushInProgress(SkippableError):
    """Another flush of the same cadence holds the lease (or took it over): this trigger has
    nothing to do."""

    kind = "flush_in_progress"
