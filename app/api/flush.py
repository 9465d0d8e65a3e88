"""``POST /flush/{cadence}``: Cloud Scheduler's (or an operator's) trigger of one cadence's
flush; 409 while one runs. Guarded by :class:`app.api.auth.OperatorAuthorizer`."""

from __future__ import annotations

from fastapi import APIRouter, Header, HTTPException
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.api.auth import OperatorAuthorizer
from app.core.errors import FlushInProgress
from app.core.models import Cadence
from app.service.runtime import Runtime
from workers.flusher import flush


class FlushStarted(BaseModel):
    """``POST /flush/{cadence}`` body."""

    flush_id: str
    marks: int
    work_items: int
    unresolved_marks: int


def build_router(runtime: Runtime, authorizer: OperatorAuthorizer) -> APIRouter:
    """The flush route bound to ``runtime``."""
    router = APIRouter()

    @router.post("/flush/{cadence}")
    async def flush_cadence(
        cadence: Cadence,
        stage_only: bool = False,
        authorization: str | None = Header(default=None),
    ) -> FlushStarted:
        if not authorizer.allowed(authorization):
            raise HTTPException(401, "unauthorized")
        try:
            result = await run_in_threadpool(lambda: flush(runtime, cadence, stage_only=stage_only))
        except FlushInProgress:
            raise HTTPException(409, f"a {cadence.value} flush is already running") from None
        return FlushStarted(
            flush_id=result.flush_id,
            marks=result.marks,
            work_items=result.work_items,
            unresolved_marks=result.unresolved_marks,
        )

    return router
