"""Logging that never carries entry data, as text locally and as Cloud Logging's structured
JSON on Cloud Run.

The engine's own lines hold ids, kinds and counts, and the libraries that log whole request and
response bodies are held at WARNING whatever the root level (gql's transports print each
GraphQL response, i.e. whole patient entries, at INFO; the Anthropic SDK prints each request's
JSON, i.e. the entry sent to the model, at DEBUG; httpcore's trace lines are noise at DEBUG).

Formats (``configure``; ``HEALTHIE_SYNC_LOG_FORMAT=json|text``, default ``json`` when
``K_SERVICE`` is set, i.e. on Cloud Run, else ``text``):

* ``text``: ``LEVEL logger: message [integration=… run_id=… trace=…]``;
* ``json``: one JSON object per line in the shape Cloud Logging's agent reads from a
  container's output (https://cloud.google.com/logging/docs/structured-logging)::

      {"severity": "WARNING", "message": "...", "time": "2026-12-01T16:24:16.123456Z",
       "logger": "app.intake.receiver",
       "logging.googleapis.com/sourceLocation": {"file": ..., "line": ..., "function": ...},
       "logging.googleapis.com/trace": "projects/P/traces/T",
       "logging.googleapis.com/spanId": "000000000000004a",
       "logging.googleapis.com/trace_sampled": true,
       "logging.googleapis.com/labels": {"integration": "demo-clinic", "run_id": "..."}}

Context (:func:`bind`, :func:`trace_scope`): a ``contextvars`` value holding the request's
trace (``app.api.tracing`` reads it from ``traceparent`` / ``X-Cloud-Trace-Context``) and a
few labels from a fixed list (:data:`LABEL_KEYS`: ids only, never a field value), stamped on
every record written inside the scope. The message itself is the caller's format string with
ids and counts; the formatter adds nothing from the record's arguments beyond it.

``configure`` is called by the command line and by ``build_runtime`` (so an embedding process
with its own DEBUG configuration is covered too); it is idempotent.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from app.core.errors import ConfigurationError

#: loggers whose records at INFO and DEBUG quote request or response bodies
PAYLOAD_LOGGERS = (
    "gql.transport",
    "gql.dsl",
    "anthropic",
    "httpcore",
    "httpcore2",
    "hpack",
)
#: the only labels a record may carry (ids and names, never a patient's value)
LABEL_KEYS = frozenset({"integration", "run_id", "cadence", "target", "stage"})
Format = Literal["json", "text"]
_TRACE_KEY = "logging.googleapis.com/trace"
_SPAN_KEY = "logging.googleapis.com/spanId"
_SAMPLED_KEY = "logging.googleapis.com/trace_sampled"
_LABELS_KEY = "logging.googleapis.com/labels"
_SOURCE_KEY = "logging.googleapis.com/sourceLocation"
# Cloud Logging's LogSeverity names; Python's levels map onto them one to one.
_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


@dataclass(frozen=True)
class LogContext:
    """What every record written in this context carries besides its message."""

    trace_id: str | None = None  # 32 hex digits
    span_id: str | None = None  # 16 hex digits
    sampled: bool | None = None
    labels: dict[str, str] = field(default_factory=dict)


_EMPTY = LogContext()
_CONTEXT: contextvars.ContextVar[LogContext | None] = contextvars.ContextVar(
    "healthie_sync_log_context", default=None
)


def current() -> LogContext:
    """The context records written now are stamped with."""
    return _CONTEXT.get() or _EMPTY


@contextlib.contextmanager
def bind(**labels: str) -> Iterator[LogContext]:
    """Add ``labels`` (keys from :data:`LABEL_KEYS`) to every record written in the block."""
    unknown = set(labels) - LABEL_KEYS
    if unknown:
        # A programming error: labels are indexed by Cloud Logging, so they stay a fixed set.
        raise ValueError(f"unknown log labels {sorted(unknown)}; allowed: {sorted(LABEL_KEYS)}")
    base = current()
    context = replace(base, labels={**base.labels, **{k: str(v) for k, v in labels.items()}})
    token = _CONTEXT.set(context)
    try:
        yield context
    finally:
        _CONTEXT.reset(token)


@contextlib.contextmanager
def trace_scope(trace_id: str, span_id: str | None, sampled: bool | None) -> Iterator[None]:
    """Stamp every record written in the block with this trace and span."""
    token = _CONTEXT.set(replace(current(), trace_id=trace_id, span_id=span_id, sampled=sampled))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([0-9]+))?$")


def parse_trace_headers(
    traceparent: str | None, cloud_trace: str | None
) -> tuple[str, str | None, bool | None] | None:
    """``(trace_id, span_id, sampled)`` from a W3C ``traceparent`` (preferred) or Google's
    ``X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1`` (span id in decimal, written here in the
    16 hex digits Cloud Logging's ``spanId`` expects); None when neither is well formed. Only
    values matching the formats are kept: the headers come from the caller."""
    if traceparent:
        found = _TRACEPARENT.match(traceparent.strip().lower())
        if found:
            version, trace_id, span_id, flags = found.groups()
            if version != "ff" and trace_id != "0" * 32 and span_id != "0" * 16:
                return trace_id, span_id, bool(int(flags, 16) & 1)
    if cloud_trace:
        found = _CLOUD_TRACE.match(cloud_trace.strip())
        if found and found.group(1) != "0" * 32:
            trace_id, span, option = found.groups()
            span_id = None
            if span is not None and 0 < int(span) < 2**64:
                span_id = format(int(span), "016x")
            return trace_id.lower(), span_id, None if option is None else option == "1"
    return None


def _labels_and_trace(context: LogContext, project: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if context.trace_id:
        out[_TRACE_KEY] = (
            f"projects/{project}/traces/{context.trace_id}" if project else context.trace_id
        )
        if context.span_id:
            out[_SPAN_KEY] = context.span_id
        if context.sampled is not None:
            out[_SAMPLED_KEY] = context.sampled
    if context.labels:
        out[_LABELS_KEY] = dict(context.labels)
    return out


class CloudLoggingFormatter(logging.Formatter):
    """One record as one line of Cloud Logging's structured JSON (see the module docstring).

    ``project`` turns a trace id into the ``projects/P/traces/T`` name Cloud Logging links to
    Cloud Trace; without it the bare trace id is written (accepted, not linked)."""

    def __init__(self, project: str | None = None) -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line (no newline)."""
        message = record.getMessage()
        if record.exc_info:
            # Error Reporting reads the stack trace from the message; exception texts hold
            # ids and kinds only (app.core.errors).
            message = f"{message}\n{self.formatException(record.exc_info)}"
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": message,
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "logger": record.name,
            _SOURCE_KEY: {
                "file": record.pathname,
                "line": str(record.lineno),
                "function": record.funcName,
            },
        }
        entry.update(_labels_and_trace(current(), self.project))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``, and the context's labels and trace in brackets."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The text line."""
        text = super().format(record)
        context = current()
        parts = [f"{k}={v}" for k, v in sorted(context.labels.items())]
        if context.trace_id:
            parts.append(f"trace={context.trace_id}")
        return f"{text} [{' '.join(parts)}]" if parts else text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def log_format(environ: Mapping[str, str] | None = None) -> Format:
    """``HEALTHIE_SYNC_LOG_FORMAT`` (json or text); unset: json on Cloud Run (``K_SERVICE``
    set), text elsewhere. Any other value is a ConfigurationError."""
    env = os.environ if environ is None else environ
    chosen = env.get("HEALTHIE_SYNC_LOG_FORMAT", "").strip().lower()
    if not chosen:
        return "json" if env.get("K_SERVICE") else "text"
    if chosen not in ("json", "text"):
        raise ConfigurationError(f"HEALTHIE_SYNC_LOG_FORMAT={chosen!r}: use json or text")
    return "json" if chosen == "json" else "text"


def silence_payload_loggers() -> None:
    """Hold every payload logger at WARNING (their warnings and errors carry no bodies)."""
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure(level: int = logging.WARNING, fmt: Format | None = None) -> Format:
    """The process's logging: one line per record on stderr at ``level`` in ``fmt`` (default
    :func:`log_format`), bodies silenced. Returns the format chosen. Replaces the handler an
    earlier call installed; other handlers (a test runner's) are left alone."""
    chosen = fmt or log_format()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    project = os.environ.get("HEALTHIE_SYNC_GCP_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
    handler.setFormatter(CloudLoggingFormatter(project) if chosen == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # json: a Python warning printed raw on stderr would be a line Cloud Logging cannot parse
    logging.captureWarnings(chosen == "json")
    silence_payload_loggers()
    return chosen


def uvicorn_log_config() -> dict[str, Any]:
    """A ``log_config`` for uvicorn that sends its records through the root logger (so they
    take this module's format) instead of uvicorn's own plain-text handlers."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def is_json() -> bool:
    """True when the root logger writes Cloud Logging JSON (``configure`` chose ``json``)."""
    return any(
        isinstance(h, _StderrHandler) and isinstance(h.formatter, CloudLoggingFormatter)
        for h in logging.getLogger().handlers
    )
