"""``POST /flush/{cadence}``: Cloud Scheduler's (or an operator's) trigger of one cadence's
flush. Guarded by :class:`app.api.auth.OperatorAuthorizer` (checked before the cadence or the
query is parsed: ``app.api.bodies``).

Answers: 200 with the flush's counts; 409 while another flush of the cadence runs; 503 with
Retry-After when the state store or queue is locked, full or unreachable: the flush has not
taken its cadence's lease within ``app.api.deadline.ANSWER_WITHIN_SECONDS``. A flush that took
its lease is awaited however long it runs (a big backlog is not a failure). After a 503 a flush
still waiting for the store goes on in its thread: once it gets the lease it holds it (a retry
gets 409 until it ends), releases it itself, and its outcome is logged and recorded in its
runs.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from app.api.auth import OperatorAuthorizer, operator_required
from app.api.deadline import within
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
    router = APIRouter(dependencies=[Depends(operator_required(authorizer))])

    @router.post("/flush/{cadence}")
    async def flush_cadence(cadence: Cadence, stage_only: bool = False) -> FlushStarted:
        leased = threading.Event()
        try:
            result = await within(
                lambda: flush(runtime, cadence, stage_only=stage_only, on_lease=leased.set),
                f"flush {cadence.value}",
                started=leased,
            )
        except FlushInProgress:
            raise HTTPException(409, f"a {cadence.value} flush is already running") from None
        return FlushStarted(
            flush_id=result.flush_id,
            marks=result.marks,
            work_items=result.work_items,
            unresolved_marks=result.unresolved_marks,
        )

    return router
