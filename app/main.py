"""FastAPI app factory: webhook intake, flush trigger, health. Built from a ``Runtime``."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

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


def create_app(runtime: Runtime) -> FastAPI:
    """The HTTP service for ``runtime``; the caller owns the runtime's lifecycle."""
    app = FastAPI(title="healthie-sync", docs_url=None, redoc_url=None, openapi_url=None)
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
        token = runtime.settings.flush_token
        # Cloud Scheduler's OIDC tokens are verified in issue 6; until then only a shared
        # token opens this route, and without one configured it stays closed.
        presented = (authorization or "").removeprefix("Bearer ").strip()
        if token is None or not hmac.compare_digest(presented, token.get_secret_value()):
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
