"""Where the metrics go: a Prometheus registry scraped at ``GET /metrics`` (local default) and
Cloud Monitoring (default on Cloud Run), chosen by ``HEALTHIE_SYNC_METRICS``.

``HEALTHIE_SYNC_METRICS`` is a comma-separated list of ``prometheus``, ``cloud-monitoring``,
or ``none``; unset, it is ``cloud-monitoring`` when ``K_SERVICE`` is set (Cloud Run) and
``prometheus`` elsewhere. Cloud Monitoring receives the metrics through Google's
OpenTelemetry exporter (``opentelemetry-exporter-gcp-monitoring``: metric types
``workload.googleapis.com/healthie_sync.*``) once a minute, the interval its quotas suit (a
time series accepts one point per 5 s at most: https://cloud.google.com/monitoring/quotas),
into the project ``HEALTHIE_SYNC_GCP_PROJECT`` (or the credentials' default project). Each
Cloud Run instance writes its own time series (the exporter's unique instance label), and the
alert policies sum them.

The exporter's 1.15.0a0 release flags ``CloudMonitoringMetricsExporter`` as deprecated in favour
of sending OTLP to Google's telemetry endpoint; the class still works and writes the same
``workload.googleapis.com`` metric types. Moving to OTLP is one reader swapped here (an OTLP
exporter with Google credentials), the instruments and policies unchanged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigurationError
from app.observability import metrics

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from prometheus_client import CollectorRegistry

EXPORTERS = ("prometheus", "cloud-monitoring")
EXPORT_INTERVAL_SECONDS = 60.0
_registry: CollectorRegistry | None = None


def exporters_from(environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters ``HEALTHIE_SYNC_METRICS`` names (see the module docstring)."""
    env = os.environ if environ is None else environ
    raw = env.get("HEALTHIE_SYNC_METRICS", "").strip().lower()
    if not raw:
        return ["cloud-monitoring" if env.get("K_SERVICE") else "prometheus"]
    chosen = [part.strip() for part in raw.split(",") if part.strip()]
    if chosen == ["none"]:
        return []
    unknown = [c for c in chosen if c not in EXPORTERS]
    if unknown:
        raise ConfigurationError(
            f"HEALTHIE_SYNC_METRICS names {unknown}: use {', '.join(EXPORTERS)} or none"
        )
    return list(dict.fromkeys(chosen))


def prometheus_reader() -> tuple[MetricReader, CollectorRegistry]:
    """A reader that serves collections to a fresh Prometheus registry (not the process-wide
    default one, so configuring again never registers the same names twice)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    # scope labels (otel_scope_name=...) would only repeat "healthie_sync" on every series
    return PrometheusMetricReader(registry=registry, scope_info_enabled=False), registry


def cloud_monitoring_reader(
    project: str | None, *, client: Any = None, interval: float = EXPORT_INTERVAL_SECONDS
) -> MetricReader:
    """A reader that pushes to Cloud Monitoring every ``interval`` seconds (``client``: a
    ``MetricServiceClient``, or a fake in tests)."""
    try:
        from opentelemetry.exporter.cloud_monitoring import CloudMonitoringMetricsExporter
    except ImportError as exc:  # pragma: no cover - a runtime dependency
        raise ConfigurationError(
            "metrics to Cloud Monitoring need opentelemetry-exporter-gcp-monitoring"
        ) from exc
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    with warnings.catch_warnings():
        # 1.15.0a0 marks the class deprecated in favour of OTLP ingestion (module docstring);
        # it still writes the same workload.googleapis.com series the alert policies watch.
        warnings.simplefilter("ignore", DeprecationWarning)
        exporter = CloudMonitoringMetricsExporter(
            project_id=project, client=client, add_unique_identifier=True
        )
    return PeriodicExportingMetricReader(exporter, export_interval_millis=interval * 1000)


def _resource(on_gcp: bool) -> Any:
    from opentelemetry.sdk.resources import Resource

    base = Resource.create({"service.name": "healthie-sync"})
    if not on_gcp:
        return base
    try:
        # Cloud Run's service, revision, region and instance, from the metadata server.
        from opentelemetry.resourcedetector.gcp_resource_detector import (
            GoogleCloudResourceDetector,
        )
    except ImportError:  # pragma: no cover - optional: the exporter works without it
        return base
    return base.merge(GoogleCloudResourceDetector(raise_on_error=False).detect())


def configure_from_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """Configure the metrics the environment asks for; returns the exporters started."""
    global _registry
    env = os.environ if environ is None else environ
    chosen = exporters_from(env)
    if not chosen:
        metrics.shutdown()
        _registry = None
        return []
    readers: list[MetricReader] = []
    registry = None
    if "prometheus" in chosen:
        reader, registry = prometheus_reader()
        readers.append(reader)
    if "cloud-monitoring" in chosen:
        readers.append(cloud_monitoring_reader(env.get("HEALTHIE_SYNC_GCP_PROJECT") or None))
    metrics.configure(readers, resource=_resource("cloud-monitoring" in chosen))
    _registry = registry
    return chosen


def use_prometheus() -> CollectorRegistry:
    """Configure Prometheus only (tests, ``demo``); returns the registry ``/metrics`` serves."""
    global _registry
    reader, registry = prometheus_reader()
    metrics.configure([reader])
    _registry = registry
    return registry


def prometheus_registry() -> CollectorRegistry | None:
    """The registry ``GET /metrics`` serves, or None when Prometheus is not configured."""
    return _registry if metrics.is_configured() else None
