"""FastAPI app factory: webhook intake, flush trigger, health. Built from a ``Runtime``."""

from __future__ import annotations

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.flush_auth import FlushAuthorizer, Verifier
from app.models import Cadence
from app.runtime import Runtime
from app.webhooks import build_router


class Health(BaseModel):
    """``GET /healthz`` body."""

    status: str
    integrations: int
    intake: dict[str, int]


class FlushStarted(BaseModel):
    """``POST /flush/{cadence}`` body."""

    flush_id: str
    marks: int
    work_items: int
    unresolved_marks: int


def create_app(runtime: Runtime, *, oidc_verifier: Verifier | None = None) -> FastAPI:
    """The HTTP service for ``runtime``; the caller owns the runtime's lifecycle.

    ``oidc_verifier`` replaces Google's token verification (tests); by default it is built
    from the settings when an OIDC audience and service account are configured.
    """
    app = FastAPI(title="healthie-sync", docs_url=None, redoc_url=None, openapi_url=None)
    authorizer = FlushAuthorizer(runtime.settings, oidc_verifier)
    app.include_router(build_router(runtime))

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(
            status="ok",
            integrations=len(runtime.integrations),
            intake=runtime.stats.snapshot(),
        )

    @app.post("/flush/{cadence}")
    async def flush_cadence(
        cadence: Cadence, authorization: str | None = Header(default=None)
    ) -> FlushStarted:
        if not authorizer.allowed(authorization):
            raise HTTPException(401, "unauthorized")
        from workers.flusher import flush

        result = await run_in_threadpool(flush, runtime, cadence)
        return FlushStarted(
            flush_id=result.flush_id,
            marks=result.marks,
            work_items=result.work_items,
            unresolved_marks=result.unresolved_marks,
        )

    return app
