"""ASGI middleware at the HTTP edge: who may send a body, how big, and how slowly.

uvicorn bounds what it can (header size with ``h11_max_incomplete_event_size``, idle
keep-alive connections with ``timeout_keep_alive``, connections with ``limit_concurrency``:
``app.service.serving.server_config``) but has no deadline for a request *body*, and
Starlette's ``RequestBodyLimitMiddleware`` counts only what the route reads (``/flush`` reads
nothing, so an oversized body would still trigger a flush). This module fills both gaps.

Every request (the webhook route included):

- **a body deadline**: the whole body must arrive within ``body_seconds`` of the request's
  start; one that stalls is answered ``408`` and the connection closed;
- **a client that leaves mid-body** is one WARNING line (method, path, bytes received), never
  an ERROR traceback: the route sees ``http.disconnect`` and fails its own way, and the guard
  swallows that failure and whatever answer the route tried to send.

Guarded prefixes (``/flush`` and ``/ops``), in this order, before the route runs:

1. **credentials** (``authorize``, the ``Authorization`` header only): ``401`` before any path,
   query or body is parsed, so an unauthenticated caller learns nothing about the request
   and no byte of its body is read;
2. **size**: a declared ``Content-Length`` over the prefix's limit is ``413`` at once; a chunked
   body is read up to the limit and refused as soon as it passes it;
3. the body, read whole (at most the limit), is handed to the route, which marks the scope
   (:data:`OPERATOR_SCOPE_KEY`) so the route's own check does not verify the token twice.

Answers given before the body was read carry ``Connection: close``: the server then drops the
connection instead of reading and discarding the rest of an unwanted body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Authorize = Callable[[str | None], bool]  # the Authorization header -> allowed

#: Seconds a request's whole body may take to arrive (the stall deadline).
BODY_SECONDS = 10.0
#: Body limits of the guarded prefixes (bytes). /flush takes none (its options are in the
#: query); an /ops/replay filter is a few hundred bytes.
GUARDED_LIMITS: Mapping[str, int] = {"/flush": 4 * 1024, "/ops": 64 * 1024}
#: Set in the scope of a guarded request whose credentials the guard accepted.
OPERATOR_SCOPE_KEY = "healthie_sync.operator"

_DISCONNECT: Message = {"type": "http.disconnect"}


class RequestGuard:
    """Wraps the ASGI app (``app.add_middleware(RequestGuard, authorize=...)``); see the module
    docstring for what it enforces."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authorize: Authorize,
        guarded: Mapping[str, int] = GUARDED_LIMITS,
        body_seconds: float | None = None,
    ) -> None:
        """``body_seconds`` defaults to :data:`BODY_SECONDS` as it is when the app is built."""
        self.app = app
        self.authorize = authorize
        self.guarded = dict(guarded)
        self.body_seconds = BODY_SECONDS if body_seconds is None else body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request within the guard's rules (other scopes pass through)."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.body_seconds
        limit = self._limit(scope["path"])
        if limit is None:
            await _Watched(self.app, scope, receive, send, deadline).run()
        else:
            await self._guarded(scope, receive, send, limit, deadline)

    def _limit(self, path: str) -> int | None:
        for prefix, limit in self.guarded.items():
            if path == prefix or path.startswith(prefix + "/"):
                return limit
        return None

    async def _guarded(
        self, scope: Scope, receive: Receive, send: Send, limit: int, deadline: float
    ) -> None:
        headers = _headers(scope)
        # a thread: an OIDC check may fetch Google's certificates
        if not await run_in_threadpool(self.authorize, headers.get("authorization")):
            await _answer(send, 401, "unauthorized", close=True, bearer=True)
            return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _answer(send, 413 if declared.isdigit() else 400, "body too large", close=True)
            return
        body = bytearray()
        more = True
        while more:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                _warn("stalled", scope, len(body))
                await _answer(send, 408, "request body timed out", close=True)
                return
            if message["type"] == "http.disconnect":
                _warn("disconnected", scope, len(body))
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > limit:
                await _answer(send, 413, "body too large", close=True)
                return
        scope[OPERATOR_SCOPE_KEY] = True
        await self.app(scope, _replay(bytes(body), receive), send)


class _Watched:
    """One unguarded request: its body read under the deadline, a mid-body disconnect or stall
    turned into ``http.disconnect`` for the route and a warning for the log."""

    def __init__(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, deadline: float
    ) -> None:
        self.app, self.scope, self._receive, self._send = app, scope, receive, send
        self.deadline = deadline
        self.body_done = False
        self.received = 0
        self.fault: str | None = None  # "stalled" or "disconnected"
        self.started = False
        # One timer per request, not a timeout context per receive(): the webhook route's body
        # nearly always arrives with its headers, and a context per call costs ~25 us of its
        # ~150. The timer cancels the receive() it finds waiting (or marks the next one).
        self._timer: asyncio.TimerHandle | None = None
        self._waiting: asyncio.Task[Any] | None = None

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception:
            if self.fault is None:
                raise
            # the route failed because its client went away (or was cut off): expected
        if self.fault is None:
            return
        _warn(self.fault, self.scope, self.received)
        if self.fault == "stalled" and not self.started:
            await _answer(self._send, 408, "request body timed out", close=True)

    async def receive(self) -> Message:
        if self.body_done or self.fault is not None:
            return await self._receive() if self.fault is None else dict(_DISCONNECT)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            left = max(0.0, self.deadline - time.monotonic())
            self._timer = loop.call_at(loop.time() + left, self._expire)
        self._waiting = asyncio.current_task()
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.fault != "stalled" or task is None or task.uncancel() > 0:
                raise  # cancelled by someone else (the server shutting down)
            return dict(_DISCONNECT)
        finally:
            self._waiting = None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.body_done = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.fault = "disconnected"
        if self.body_done or self.fault is not None:
            self._timer.cancel()
        return message

    def _expire(self) -> None:
        """The body deadline passed: cut off the receive() waiting now, or the next one."""
        if self.body_done or self.fault is not None:
            return
        self.fault = "stalled"
        if self._waiting is not None:
            self._waiting.cancel()

    async def send(self, message: Message) -> None:
        if self.fault is not None and not self.started:
            return  # nobody is reading, or the guard answers 408 itself
        if message["type"] == "http.response.start":
            self.started = True
        try:
            await self._send(message)
        except (ClientDisconnect, OSError):
            if self.fault is None:
                raise


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then the server's own messages (disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _headers(scope: Scope) -> dict[str, str]:
    # the first of a repeated header, as Starlette's Headers.get does
    out: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


async def _answer(
    send: Send, status: int, detail: str, *, close: bool, bearer: bool = False
) -> None:
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    if bearer:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _warn(fault: str, scope: Scope, received: int) -> None:
    # method and path only: the query may carry filters, the body patient data
    log.warning(
        "request body %s: %s %s after %d bytes",
        fault,
        scope.get("method", "?"),
        scope.get("path", "?"),
        received,
    )
