"""``POST /webhooks/healthie/{integration_id}``: verify, resolve, publish, answer.

The handler never calls Healthie or the agent, and never touches the state store: it checks size,
content type and signature, turns the event into dirty marks (``app.intake.events``), drops a
repeat of a delivery accepted within the window (``app.intake.dedupe``), publishes the marks
through the queue with the integration and cadence as attributes, and answers 2xx only once the
publish is confirmed.

Status codes: 202 accepted, ignored or duplicate; 413 body too large; 400 malformed body or
length; 415 not JSON; 401 bad, missing or ambiguous (repeated) signature headers; 404 unknown
integration (no hint about others); 503 with ``Retry-After`` when the publish failed or was not
confirmed within ``batcher.PUBLISH_DEADLINE_SECONDS`` (a locked, full or unreachable queue),
or the integration's signing secret cannot be read. Healthie retries every non-2xx answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.routing import Route, Router

from app.core.errors import ConfigurationError, QueueUnavailable, RetriableError
from app.core.logs import bind
from app.intake.batcher import PublishBatcher
from app.intake.dedupe import RecentDeliveries
from app.intake.events import read_event
from app.intake.signature import verify_healthie_signature
from app.observability import metrics
from app.queue.topology import DIRTY_TOPIC
from app.resilience.retry import retry_after_header
from app.service.runtime import Runtime

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Seconds Healthie is asked to wait before retrying a 503 (it backs off on its own as well).
RETRY_AFTER_SECONDS = 5
#: Signing headers that must appear at most once: with two, which one was verified is a guess.
_SINGLE_HEADERS = frozenset({b"signature", b"content-digest"})
#: The only headers the route reads (the rest are never decoded).
_READ_HEADERS = _SINGLE_HEADERS | {b"content-type", b"content-length"}


class WebhookAccepted(BaseModel):
    """Body of a 2xx answer."""

    status: str
    marks: int


async def _read_limited(request: Request, limit: int) -> bytes:
    """``request``'s body, refused (413, or 400 for a bad length) beyond ``limit`` bytes."""
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


async def _read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The ASGI request body, refused like :func:`_read_limited` (same limits, same codes)."""
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413 if declared.isdigit() else 400, "body too large or bad length")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect  # what Starlette's own body readers raise
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # chunked bodies declare no length: counted as they arrive
            raise HTTPException(413, "body too large")
        if not message.get("more_body", False):
            if not chunks:
                return chunk  # the usual case: one message, no copy
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def _unavailable(exc: RetriableError | None = None) -> HTTPException:
    retry_after = exc.retry_after if exc is not None else None
    return HTTPException(
        503,
        "temporarily unavailable",
        headers=retry_after_header(retry_after, RETRY_AFTER_SECONDS),
    )


_ANSWERS: dict[tuple[str, int], bytes] = {}


async def _answer(send: Send, status: str, marks: int) -> None:
    # Sent directly, with bodies built once per (status, marks): this is the hot path.
    body = _ANSWERS.get((status, marks))
    if body is None:
        body = WebhookAccepted(status=status, marks=marks).model_dump_json().encode()
        _ANSWERS[(status, marks)] = body
    await send(
        {
            "type": "http.response.start",
            "status": 202,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _headers(scope: Scope) -> tuple[dict[str, str], bool]:
    """The headers the route reads (ASGI names are lower-case; the first of repeated names
    wins) and whether a signing header was repeated."""
    headers: dict[str, str] = {}
    repeated = False
    for raw_name, raw_value in scope["headers"]:
        if raw_name not in _READ_HEADERS:
            continue
        name = raw_name.decode("latin-1")
        if name in headers:
            repeated = repeated or raw_name in _SINGLE_HEADERS
            continue
        headers[name] = raw_value.decode("latin-1")
    return headers, repeated


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


class _Receiver:
    """The route's ASGI endpoint. A plain ASGI callable, not a FastAPI function: the intake's
    hot path needs no dependency injection, request object or response object, and skipping
    them is most of the per-request framework cost (bench/webhook_throughput.py). Errors are
    raised as ``HTTPException`` and rendered by the app's exception middleware."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.batcher = PublishBatcher(runtime.queue, DIRTY_TOPIC)
        self.recent = RecentDeliveries(runtime.settings.webhook_dedupe_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        integration_id: str = scope["path_params"]["integration_id"]
        integration = runtime.integrations.get(integration_id)
        # every outcome counted twice: /healthz's tally and the metrics (by integration; a
        # made-up id is "(unknown)", so senders cannot grow the label set)
        stats = _Outcomes(runtime, integration_id if integration else metrics.UNKNOWN)
        if integration is None:
            stats.count("rejected_unknown_integration")
            raise HTTPException(404, "not found")
        headers, repeated = _headers(scope)
        content_type = headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            stats.count("rejected_content_type")
            raise HTTPException(415, "content type must be application/json")
        try:
            body = await _read_body(
                receive, headers.get("content-length"), runtime.settings.max_webhook_body_bytes
            )
        except HTTPException:
            stats.count("rejected_size")
            raise
        # From the ASGI scope directly: the exact path and raw query Healthie signed.
        path = scope["path"]
        if runtime.settings.public_webhook_path:
            path = runtime.settings.public_webhook_path.format(integration_id=integration_id)
        query = scope["query_string"].decode("latin-1")
        try:
            secrets = runtime.webhook_secrets(integration_id)
        except (ConfigurationError, RetriableError) as exc:
            # Our misconfiguration, not the sender's: 503 so Healthie retries once it is fixed.
            stats.count("unconfigured")
            with bind(integration=integration_id):
                log.error("webhook not verifiable for %s: %s", integration_id, exc)  # noqa: TRY400
            raise _unavailable(exc if isinstance(exc, RetriableError) else None) from None
        if repeated or not verify_healthie_signature(
            secrets=secrets,
            method=scope["method"],
            path=path,
            query=query,
            headers=headers,
            body=body,
        ):
            stats.count("rejected_signature")
            with bind(integration=integration_id):
                log.warning("webhook rejected: bad signature (integration=%s)", integration_id)
            raise HTTPException(401, "invalid signature")
        try:
            payload, marks = read_event(
                integration_id, body, datetime.now(UTC), frozenset(integration.events or ())
            )
        except (ValueError, ValidationError):
            stats.count("rejected_malformed")
            raise HTTPException(400, "malformed webhook body") from None
        if not marks:
            stats.count("ignored" if marks is None else "excluded", payload.event_type)
            await _answer(send, "ignored", 0)
            return
        key = RecentDeliveries.key(integration_id, path, query, body)
        if not self.recent.claim(key):
            stats.count("duplicate", payload.event_type)
            await _answer(send, "duplicate", 0)
            return
        attributes = {"integration": integration_id, "cadence": integration.cadence.value}
        messages = [(m.model_dump_json().encode(), attributes) for m in marks]
        try:
            # at most PUBLISH_DEADLINE_SECONDS: a locked or unreachable queue is a fast 503, and
            # a publish that still lands after it is harmless (Healthie retries the 503; a
            # repeated mark only re-syncs the same subject once at the next flush)
            await self.batcher.publish(messages)
        except QueueUnavailable as exc:
            self.recent.release(key)  # Healthie's retry of this delivery must count
            stats.count("publish_failed", payload.event_type)
            with bind(integration=integration_id):
                # one line, no traceback: a locked queue makes one per webhook
                log.warning("webhook publish failed (integration=%s): %s", integration_id, exc)
            raise _unavailable(exc) from None
        except BaseException:
            self.recent.release(key)  # e.g. cancelled by a disconnect: nothing was confirmed
            raise
        stats.count("accepted", payload.event_type)
        metrics.record_dirty_marks(integration_id, len(marks))
        metrics.record_stage(integration_id, "intake", time.perf_counter() - stats.started)
        await _answer(send, "accepted", len(marks))


def build_router(runtime: Runtime) -> Router:
    """The webhook route bound to ``runtime``."""
    return Router(
        routes=[Route("/webhooks/healthie/{integration_id}", _Receiver(runtime), methods=["POST"])]
    )
