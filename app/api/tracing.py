"""ASGI middleware: the request's trace header becomes the log context of its handling.

Cloud Run's front end adds ``traceparent`` (W3C) and ``X-Cloud-Trace-Context`` to every
request; with the trace and span in ``app.core.logs``' context, each line the request writes
carries ``logging.googleapis.com/trace`` and ``spanId`` and is grouped under the request's
entry in Cloud Logging. A pure ASGI class rather than Starlette's ``BaseHTTPMiddleware``: it
adds no task or body buffering to the webhook route's hot path, and the context it sets is
seen by the handler (same task) and by ``run_in_threadpool`` calls (which copy the context).
"""

from __future__ import annotations

from typing import Any

from app.core.logs import parse_trace_headers, trace_scope

Scope = dict[str, Any]


class TraceContext:
    """Wraps an ASGI app; ``app.add_middleware(TraceContext)`` installs it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Run the request inside its trace's log context (untouched when it has none)."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        traceparent = cloud = None
        for name, value in scope.get("headers") or ():
            if name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"x-cloud-trace-context":
                cloud = value.decode("latin-1")
        found = parse_trace_headers(traceparent, cloud)
        if found is None:
            await self.app(scope, receive, send)
            return
        with trace_scope(*found):
            await self.app(scope, receive, send)
