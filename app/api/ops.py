"""``/ops/*``: what an operator reads and replays over HTTP (runs, dead letters, replay), all
guarded by :class:`app.api.auth.OperatorAuthorizer`. Answers carry ids, kinds and counts only."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Header, HTTPException
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.api.auth import OperatorAuthorizer
from app.core.models import RunRecord
from app.service.runtime import Runtime
from workers.replay import DeadLetter, ReplayFilter, ReplayReport, list_dead_letters, replay


class ReplayRequest(BaseModel):
    """``POST /ops/replay`` body; a preview unless ``preview`` is false."""

    integration: str | None = None
    patient: str | None = None
    error_kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    preview: bool = True
    rate_per_second: float = Field(default=10.0, gt=0, le=1000)


def build_router(runtime: Runtime, authorizer: OperatorAuthorizer) -> APIRouter:
    """The operator routes bound to ``runtime``."""
    router = APIRouter(prefix="/ops")

    def require_operator(authorization: str | None) -> None:
        if not authorizer.allowed(authorization):
            raise HTTPException(401, "unauthorized")

    @router.get("/runs")
    def ops_runs(
        integration: str | None = None,
        limit: int = 20,
        authorization: str | None = Header(default=None),
    ) -> list[RunRecord]:
        require_operator(authorization)
        return runtime.state.list_runs(integration, min(max(limit, 1), 500))

    @router.get("/dead-letters")
    async def ops_dead_letters(
        integration: str | None = None,
        patient: str | None = None,
        error_kind: str | None = None,
        authorization: str | None = Header(default=None),
    ) -> list[DeadLetter]:
        require_operator(authorization)
        selector = ReplayFilter(
            integration_id=integration, patient_id=patient, error_kind=error_kind
        )
        return await run_in_threadpool(list_dead_letters, runtime.state, selector)

    @router.post("/replay")
    async def ops_replay(
        request: ReplayRequest, authorization: str | None = Header(default=None)
    ) -> ReplayReport:
        require_operator(authorization)
        selector = ReplayFilter(
            integration_id=request.integration,
            patient_id=request.patient,
            error_kind=request.error_kind,
            since=request.since,
            until=request.until,
        )
        return await run_in_threadpool(
            lambda: replay(
                runtime,
                selector,
                preview=request.preview,
                rate_per_second=request.rate_per_second,
            )
        )

    return router
