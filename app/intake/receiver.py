"""``POST /webhooks/healthie/{integration_id}``: verify, resolve, publish, answer.

The handler never calls Healthie or the agent: it checks size, content type and signature,
turns the event into dirty marks (``app.intake.events``), publishes them through the queue with the
integration and cadence as attributes, and answers 2xx only once the publish is confirmed.
Status codes: 413 body too large, 415 not JSON, 401 bad or missing signature, 404 unknown
integration (no hint about others), 400 malformed body, 503 publish failed (Healthie retries).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from datetime import UTC, datetime

from fastapi import HTTPException, Request, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route, Router

from app.core.errors import ConfigurationError, QueueUnavailable, RetriableError
from app.core.logs import bind
from app.intake.batcher import PublishBatcher
from app.intake.events import read_event
from app.intake.signature import verify_healthie_signature
from app.observability import metrics
from app.queue.topology import DIRTY_TOPIC
from app.service.runtime import Runtime

log = logging.getLogger(__name__)


class WebhookAccepted(BaseModel):
    """Body of a 2xx answer."""

    status: str
    marks: int


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413 if declared.isdigit() else 400, "body too large or bad length")
    if declared is not None:
        return await request.body()  # the server enforces the declared length
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, "body too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _seen_before(runtime: Runtime, integration_id: str, body: bytes, signature: str) -> bool:
    """True when an identical delivery took the same key within the window (an expiring
    key in the state store, so every instance of the service sees it)."""
    digest = hashlib.sha256(body + b"\n" + signature.encode()).hexdigest()
    return not runtime.state.try_lease(
        f"webhook:{integration_id}:{digest}",
        uuid.uuid4().hex,  # a fresh owner: only an unexpired earlier key can refuse it
        float(runtime.settings.webhook_dedupe_seconds),
    )


def _answer(status: str, marks: int) -> Response:
    # Built directly (no response-model round trip): this is the hot path under load.
    body = WebhookAccepted(status=status, marks=marks).model_dump_json()
    return Response(body, status_code=202, media_type="application/json")


class _Outcomes:
    """The runtime's intake tally and the webhook metric, counted together."""

    __slots__ = ("integration", "started", "stats")

    def __init__(self, runtime: Runtime, integration: str) -> None:
        self.stats = runtime.stats
        self.integration = integration
        self.started = time.perf_counter()

    def count(self, outcome: str, event_type: str | None = None) -> None:
        self.stats.count(outcome, event_type)
        metrics.record_webhook(self.integration, outcome)


def build_router(runtime: Runtime) -> Router:
    """The webhook route bound to ``runtime``."""
    # A plain Starlette route: the intake's hot path needs no dependency injection, and
    # skipping it is most of the per-request framework cost (bench/webhook_throughput.py).
    batcher = PublishBatcher(runtime.queue, DIRTY_TOPIC)

    async def receive(request: Request) -> Response:
        integration_id: str = request.path_params["integration_id"]
        if integration_id not in runtime.integrations:
            return await handle(request, integration_id)
        with bind(integration=integration_id):  # its log lines carry the integration label
            return await handle(request, integration_id)

    async def handle(request: Request, integration_id: str) -> Response:
        integration = runtime.integrations.get(integration_id)
        # every outcome counted twice: /healthz's tally and the metrics (by integration; a
        # made-up id is "(unknown)", so senders cannot grow the label set)
        stats = _Outcomes(runtime, integration_id if integration else metrics.UNKNOWN)
        if integration is None:
            stats.count("rejected_unknown_integration")
            raise HTTPException(404, "not found")
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            stats.count("rejected_content_type")
            raise HTTPException(415, "content type must be application/json")
        try:
            body = await _read_limited(request, runtime.settings.max_webhook_body_bytes)
        except HTTPException:
            stats.count("rejected_size")
            raise
        # From the ASGI scope directly: the exact path and raw query Healthie signed.
        path = request.scope["path"]
        if runtime.settings.public_webhook_path:
            path = runtime.settings.public_webhook_path.format(integration_id=integration_id)
        try:
            secrets = runtime.webhook_secrets(integration_id)
        except (ConfigurationError, RetriableError) as exc:
            # Our misconfiguration, not the sender's: 503 so Healthie retries once it is fixed.
            stats.count("unconfigured")
            log.error("webhook not verifiable for %s: %s", integration_id, exc)  # noqa: TRY400
            raise HTTPException(503, "temporarily unavailable") from None
        if not verify_healthie_signature(
            secrets=secrets,
            method=request.method,
            path=path,
            query=request.scope["query_string"].decode("latin-1"),
            headers=request.headers,
            body=body,
        ):
            stats.count("rejected_signature")
            log.warning("webhook rejected: bad signature (integration=%s)", integration_id)
            raise HTTPException(401, "invalid signature")
        try:
            payload, marks = read_event(
                integration_id, body, datetime.now(UTC), frozenset(integration.events or ())
            )
        except (ValueError, ValidationError):
            stats.count("rejected_malformed")
            raise HTTPException(400, "malformed webhook body") from None
        if runtime.settings.webhook_dedupe_seconds and await run_in_threadpool(
            _seen_before, runtime, integration_id, body, request.headers.get("signature", "")
        ):
            stats.count("duplicate", payload.event_type)
            return _answer("duplicate", 0)
        if not marks:
            stats.count("ignored" if marks is None else "excluded", payload.event_type)
            return _answer("ignored", 0)
        attributes = {"integration": integration_id, "cadence": integration.cadence.value}
        messages = [(m.model_dump_json().encode(), attributes) for m in marks]
        try:
            await batcher.publish(messages)
        except QueueUnavailable:
            stats.count("publish_failed", payload.event_type)
            log.exception("webhook publish failed (integration=%s)", integration_id)
            raise HTTPException(503, "temporarily unavailable") from None
        stats.count("accepted", payload.event_type)
        metrics.record_dirty_marks(integration_id, len(marks))
        metrics.record_stage(integration_id, "intake", time.perf_counter() - stats.started)
        return _answer("accepted", len(marks))

    return Router(routes=[Route("/webhooks/healthie/{integration_id}", receive, methods=["POST"])])
