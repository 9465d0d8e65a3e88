"""The HTTP service's factory: the intake route (``app.intake.receiver``), the flush trigger
(``app.api.flush``), the operator routes (``app.api.ops``) and ``/healthz``. Built from a
``Runtime``; the caller owns the runtime's lifecycle.

Middleware, outermost first: ``TraceContext`` (the trace header becomes every log line's
context), then ``bodies.RequestGuard`` (credentials before validation on ``/flush`` and
``/ops``, body limits, the body deadline and mid-body disconnects on every route)."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from app.api import flush, metrics_route, ops
from app.api.auth import OperatorAuthorizer, Verifier
from app.api.bodies import RequestGuard
from app.api.tracing import TraceContext
from app.intake import hubspot_receiver, receiver
from app.service.runtime import Runtime


class Health(BaseModel):
    """``GET /healthz`` body."""

    status: str
    integrations: int
    intake: dict[str, int]


def create_app(runtime: Runtime, *, oidc_verifier: Verifier | None = None) -> FastAPI:
    """The HTTP service for ``runtime``.

    ``oidc_verifier`` replaces Google's token verification (tests); by default it is built
    from the settings when an OIDC audience and service account are configured.
    """
    app = FastAPI(title="healthie-sync", docs_url=None, redoc_url=None, openapi_url=None)
    authorizer = OperatorAuthorizer(runtime.settings, oidc_verifier)
    app.router.routes.extend(receiver.build_router(runtime).routes)
    app.router.routes.extend(hubspot_receiver.build_router(runtime).routes)
    app.include_router(flush.build_router(runtime, authorizer))
    app.include_router(ops.build_router(runtime, authorizer))
    app.router.routes.extend(metrics_route.build_router().routes)
    app.add_middleware(RequestGuard, authorize=authorizer.allowed)
    app.add_middleware(TraceContext)  # the request's trace header on every log line

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(
            status="ok",
            integrations=len(runtime.integrations),
            intake=runtime.stats.snapshot(),
        )

    return app
