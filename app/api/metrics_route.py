"""``GET /metrics``: the Prometheus text exposition of the engine's metrics (local scraping).

Served only when the Prometheus exporter is configured (``app.observability.setup``);
otherwise 404, so a Cloud Run service that exports to Cloud Monitoring exposes nothing. The
metrics carry integration ids, names, kinds and counts: no patient id and no value.
"""

from __future__ import annotations

from fastapi import HTTPException, Request, Response
from starlette.routing import Route, Router

from app.observability.setup import prometheus_registry


async def metrics(request: Request) -> Response:
    """The current values, in Prometheus' text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = prometheus_registry()
    if registry is None:
        raise HTTPException(404, "metrics are not exported to Prometheus here")
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def build_router() -> Router:
    """The ``/metrics`` route."""
    return Router(routes=[Route("/metrics", metrics, methods=["GET"])])
