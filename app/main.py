"""FastAPI app factory: webhook intake, flush trigger, health. Built from a ``Runtime``."""

from __future__ import annotations

from datetime import datetime

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.flush_auth import FlushAuthorizer, Verifier
from app.models import Cadence, RunRecord
from app.runtime import Runtime
from app.webhooks import build_router
from workers.replay import DeadLetter, ReplayFilter, ReplayReport, list_dead_letters, replay


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
    app.router.routes.extend(build_router(runtime).routes)

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(
            status="ok",
            integrations=len(runtime.integrations),
            intake=runtime.stats.snapshot(),
        )

    @app.post("/flush/{cadence}")
    async def flush_cadence(
        cadence: Cadence,
        stage_only: bool = False,
        authorization: str | None = Header(default=None),
    ) -> FlushStarted:
        if not authorizer.allowed(authorization):
            raise HTTPException(401, "unauthorized")
        from workers.flusher import FlushInProgress, flush

        try:
            result = await run_in_threadpool(
                lambda: flush(runtime, cadence, stage_only=stage_only)
            )
        except FlushInProgress:
            raise HTTPException(409, f"a {cadence.value} flush is already running") from None
        return FlushStarted(
            flush_id=result.flush_id,
            marks=result.marks,
            work_items=result.work_items,
            unresolved_marks=result.unresolved_marks,
        )

    def require_operator(authorization: str | None) -> None:
        if not authorizer.allowed(authorization):
            raise HTTPException(401, "unauthorized")

    @app.get("/ops/runs")
    def ops_runs(
        integration: str | None = None,
        limit: int = 20,
        authorization: str | None = Header(default=None),
    ) -> list[RunRecord]:
        require_operator(authorization)
        return runtime.state.list_runs(integration, min(max(limit, 1), 500))

    @app.get("/ops/dead-letters")
    async def ops_dead_letters(
        integration: str | None = None,
        patient: str | None = None,
        error_kind: str | None = None,
        authorization: str | None = Header(default=None),
    ) -> list[DeadLetter]:
        require_operator(authorization)
        selector = ReplayFilter(integration_id=integration, patient_id=patient,
                                error_kind=error_kind)
        return await run_in_threadpool(list_dead_letters, runtime.queue, selector)

    @app.post("/ops/replay")
    async def ops_replay(
        request: ReplayRequest, authorization: str | None = Header(default=None)
    ) -> ReplayReport:
        require_operator(authorization)
        selector = ReplayFilter(integration_id=request.integration, patient_id=request.patient,
                                error_kind=request.error_kind, since=request.since,
                                until=request.until)
        return await run_in_threadpool(
            lambda: replay(runtime.queue, selector, preview=request.preview,
                           rate_per_second=request.rate_per_second)
        )

    return app


class ReplayRequest(BaseModel):
    """``POST /ops/replay`` body; a preview unless ``preview`` is false."""

    integration: str | None = None
    patient: str | None = None
    error_kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    preview: bool = True
    rate_per_second: float = Field(default=10.0, gt=0, le=1000)
