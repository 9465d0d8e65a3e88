"""The engine's metrics, per integration, through OpenTelemetry: a tiny recording API that is a
no-op until :func:`configure` is called (nothing is built at import time).

Every instrument is one row of :data:`INSTRUMENTS` (the alert policies in
``deploy/monitoring/`` are checked against it); each is exported to Cloud Monitoring as
``workload.googleapis.com/<name>`` and to Prometheus as the name with ``_`` for ``.``
(counters get ``_total``, the histogram ``_seconds``)::

    instrument                        labels                               recorded by
    ──────────                        ──────                               ───────────
    healthie_sync.webhooks            integration, outcome                 app.intake.receiver
    healthie_sync.dirty_marks         integration                          app.intake.receiver
    healthie_sync.entries_fetched     integration, found                   app.healthie.client
    healthie_sync.healthie.requests   integration, outcome                 app.healthie.client
    healthie_sync.retries             integration, client, kind            RetryPolicy.on_retry
    healthie_sync.rate_limited        integration, client                  app.healthie.client
    healthie_sync.work_items          integration, outcome, kind           workers (middleware)
    healthie_sync.model.tokens        integration, kind, mode              app.agent.usage
    healthie_sync.target.writes       integration, target, connector,      connectors.base
                                      outcome, kind
    healthie_sync.runs                integration, cadence, status         workers.flusher
    healthie_sync.flushes             cadence, outcome                     workers.flusher
    healthie_sync.stage.duration      integration, stage                   stage_timer

Labels are ids, names and kinds: never a patient id (unbounded) nor any value. An integration
id that is not configured (a webhook for a made-up id) is recorded as ``(unknown)`` so callers
cannot grow the label set. Exporters and the Prometheus registry: ``app.observability.setup``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

CLOUD_MONITORING_PREFIX = "workload.googleapis.com"
UNKNOWN = "(unknown)"
#: stage latency buckets, seconds: a webhook answer (ms) to a model batch (minutes)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


@dataclass(frozen=True)
class Instrument:
    """One metric: its OpenTelemetry name, kind, unit and the labels it carries."""

    name: str
    kind: Literal["counter", "histogram"]
    unit: str
    description: str
    labels: tuple[str, ...]

    @property
    def metric_type(self) -> str:
        """Its metric type in Cloud Monitoring."""
        return f"{CLOUD_MONITORING_PREFIX}/{self.name}"


def _counter(name: str, description: str, *labels: str) -> Instrument:
    return Instrument(name, "counter", "1", description, labels)


INSTRUMENTS: dict[str, Instrument] = {
    i.name: i
    for i in (
        _counter(
            "healthie_sync.webhooks", "Webhook deliveries by outcome", "integration", "outcome"
        ),
        _counter("healthie_sync.dirty_marks", "Dirty marks published", "integration"),
        _counter(
            "healthie_sync.entries_fetched",
            "Patient entries fetched from Healthie (found=false: no such patient)",
            "integration",
            "found",
        ),
        _counter(
            "healthie_sync.healthie.requests",
            "Healthie GraphQL requests sent, by outcome (ok or the error kind)",
            "integration",
            "outcome",
        ),
        _counter(
            "healthie_sync.retries",
            "Retries of a failed call (the error kind that was retried)",
            "integration",
            "client",
            "kind",
        ),
        _counter(
            "healthie_sync.rate_limited",
            "Rate-limit answers (HTTP 429, TOO_MANY_REQUESTS)",
            "integration",
            "client",
        ),
        _counter(
            "healthie_sync.work_items",
            "Work items settled: processed, skipped_unchanged, skipped, retried, dead_lettered",
            "integration",
            "outcome",
            "kind",
        ),
        _counter(
            "healthie_sync.model.tokens",
            "Model tokens by billing kind and call mode (direct or batch)",
            "integration",
            "kind",
            "mode",
        ),
        _counter(
            "healthie_sync.target.writes",
            "Target writes by outcome (ok or error, with the error kind)",
            "integration",
            "target",
            "connector",
            "outcome",
            "kind",
        ),
        _counter(
            "healthie_sync.runs",
            "Runs (one flush of one integration) by status: finished or failed",
            "integration",
            "cadence",
            "status",
        ),
        _counter(
            "healthie_sync.flushes",
            "Flushes of a cadence (finished, failed): the cadence-missed alert's heartbeat",
            "cadence",
            "outcome",
        ),
        Instrument(
            "healthie_sync.stage.duration",
            "histogram",
            "s",
            "Seconds spent in a stage: intake, fetch, write (and the pipeline's own stages)",
            ("integration", "stage"),
        ),
    )
}


class _Live:
    """The configured provider and its instruments."""

    def __init__(self, provider: MeterProvider) -> None:
        self.provider = provider
        meter = provider.get_meter("healthie_sync")
        self.instruments: dict[str, Any] = {}
        for spec in INSTRUMENTS.values():
            if spec.kind == "counter":
                self.instruments[spec.name] = meter.create_counter(
                    spec.name, unit=spec.unit, description=spec.description
                )
            else:
                self.instruments[spec.name] = meter.create_histogram(
                    spec.name, unit=spec.unit, description=spec.description
                )


_live: _Live | None = None
_lock = threading.Lock()


def configure(readers: Sequence[MetricReader], *, resource: Any = None) -> MeterProvider:
    """Start recording into ``readers`` (replacing an earlier configuration, which is shut
    down). The provider is the engine's own, not OpenTelemetry's global one, so tests and a
    reload can configure again."""
    from opentelemetry.sdk.metrics import Histogram, MeterProvider
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource

    global _live
    view = View(
        instrument_type=Histogram,
        instrument_name="healthie_sync.stage.duration",
        aggregation=ExplicitBucketHistogramAggregation(STAGE_BUCKETS),
    )
    provider = MeterProvider(
        metric_readers=list(readers),
        resource=resource or Resource.create({"service.name": "healthie-sync"}),
        views=[view],
    )
    with _lock:
        previous, _live = _live, _Live(provider)
    if previous is not None:
        previous.provider.shutdown()
    return provider


def shutdown() -> None:
    """Flush the exporters and stop recording (recording is a no-op again)."""
    global _live
    with _lock:
        previous, _live = _live, None
    if previous is not None:
        previous.provider.shutdown()


def is_configured() -> bool:
    """True once :func:`configure` ran (and :func:`shutdown` did not)."""
    return _live is not None


def _add(name: str, amount: int | float, labels: Mapping[str, str]) -> None:
    live = _live
    if live is None or amount <= 0:
        return
    spec = INSTRUMENTS[name]
    attributes = {key: str(labels.get(key) or "") for key in spec.labels}
    if spec.kind == "counter":
        live.instruments[name].add(amount, attributes)
    else:
        live.instruments[name].record(amount, attributes)


def record_webhook(integration: str, outcome: str) -> None:
    """A webhook delivery answered with ``outcome`` (accepted, rejected_signature, ...)."""
    _add("healthie_sync.webhooks", 1, {"integration": integration, "outcome": outcome})


def record_dirty_marks(integration: str, count: int) -> None:
    """``count`` dirty marks published for ``integration``."""
    _add("healthie_sync.dirty_marks", count, {"integration": integration})


def record_entries_fetched(integration: str, found: int, missing: int = 0) -> None:
    """Entries fetched: ``found`` returned, ``missing`` patients Healthie does not have."""
    _add("healthie_sync.entries_fetched", found, {"integration": integration, "found": "true"})
    _add("healthie_sync.entries_fetched", missing, {"integration": integration, "found": "false"})


def record_healthie_request(integration: str, outcome: str) -> None:
    """One Healthie request sent and how it ended (``ok`` or the error kind)."""
    _add("healthie_sync.healthie.requests", 1, {"integration": integration, "outcome": outcome})


def record_retry(integration: str, client: str, kind: str) -> None:
    """A call of ``client`` (healthie, a target name, anthropic) retried after ``kind``."""
    _add("healthie_sync.retries", 1, {"integration": integration, "client": client, "kind": kind})


def record_rate_limited(integration: str, client: str) -> None:
    """A rate-limit answer from ``client``."""
    _add("healthie_sync.rate_limited", 1, {"integration": integration, "client": client})


def record_item(integration: str, outcome: str, kind: str | None = None) -> None:
    """A work item settled: processed, skipped_unchanged, skipped, retried or dead_lettered."""
    labels = {"integration": integration, "outcome": outcome, "kind": kind or ""}
    _add("healthie_sync.work_items", 1, labels)


def record_tokens(integration: str, kind: str, count: int, *, batch: bool = False) -> None:
    """``count`` model tokens of billing ``kind`` (input, cache_creation, cache_read, output)."""
    labels = {"integration": integration, "kind": kind, "mode": "batch" if batch else "direct"}
    _add("healthie_sync.model.tokens", count, labels)


def record_target_write(
    integration: str, target: str, connector: str, *, ok: bool, kind: str | None = None
) -> None:
    """One write to ``target`` done (``ok``) or failed with error ``kind``."""
    labels = {
        "integration": integration,
        "target": target,
        "connector": connector,
        "outcome": "ok" if ok else "error",
        "kind": kind or "",
    }
    _add("healthie_sync.target.writes", 1, labels)


def record_run(integration: str, cadence: str, status: str) -> None:
    """A run ended with ``status`` (finished or failed)."""
    labels = {"integration": integration, "cadence": cadence, "status": status}
    _add("healthie_sync.runs", 1, labels)


def record_flush(cadence: str, outcome: str) -> None:
    """A flush of ``cadence`` ended (finished, or failed), whether or not it had work."""
    _add("healthie_sync.flushes", 1, {"cadence": cadence, "outcome": outcome})


def record_stage(integration: str, stage: str, seconds: float) -> None:
    """``seconds`` spent in ``stage`` for ``integration``."""
    live = _live
    if live is None:
        return
    attributes = {"integration": integration, "stage": stage}
    live.instruments["healthie_sync.stage.duration"].record(max(0.0, seconds), attributes)


@contextmanager
def stage_timer(integration: str, stage: str) -> Iterator[None]:
    """Record the block's duration as ``stage`` (also when it raises)."""
    if _live is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        record_stage(integration, stage, time.perf_counter() - started)
