"""``/ops/*``: what an operator reads and replays over HTTP (runs, dead letters, replay), all
guarded by :class:`app.api.auth.OperatorAuthorizer` (checked before a query or body is parsed
or read: ``app.api.bodies``; bodies are limited to 64 KiB). Answers carry ids, kinds and counts
only. Each route's store and queue calls answer within ``app.api.deadline``'s deadline or 503
with Retry-After; a replay that misses it goes on in its thread (its leases are its own) and
logs its end."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.api.auth import OperatorAuthorizer, operator_required
from app.api.deadline import within
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
    router = APIRouter(prefix="/ops", dependencies=[Depends(operator_required(authorizer))])

    @router.get("/runs")
    async def ops_runs(integration: str | None = None, limit: int = 20) -> list[RunRecord]:
        bounded = min(max(limit, 1), 500)
        return await within(lambda: runtime.state.list_runs(integration, bounded), "ops runs")

    @router.get("/dead-letters")
    async def ops_dead_letters(
        integration: str | None = None,
        patient: str | None = None,
        error_kind: str | None = None,
    ) -> list[DeadLetter]:
        selector = ReplayFilter(
            integration_id=integration, patient_id=patient, error_kind=error_kind
        )
        return await within(lambda: list_dead_letters(runtime.state, selector), "ops dead letters")

    @router.post("/replay")
    async def ops_replay(request: ReplayRequest) -> ReplayReport:
        selector = ReplayFilter(
            integration_id=request.integration,
            patient_id=request.patient,
            error_kind=request.error_kind,
            since=request.since,
            until=request.until,
        )
        return await within(
            lambda: replay(
                runtime,
                selector,
                preview=request.preview,
                rate_per_second=request.rate_per_second,
            ),
            "ops replay",
        )

    return router
