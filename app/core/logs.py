"""Logging that never carries entry data: the engine's own lines hold ids, kinds and counts,
and the libraries that log whole request and response bodies are held at WARNING whatever
the root level (gql's transports print each GraphQL response, i.e. whole patient entries, at
INFO; the Anthropic SDK prints each request's JSON, i.e. the entry sent to the model, at DEBUG;
httpcore's trace lines are noise at DEBUG).

``configure`` is called by the command line and by ``build_runtime`` (so an embedding process
with its own DEBUG configuration is covered too); it is idempotent.
"""

from __future__ import annotations

import logging

#: loggers whose records at INFO and DEBUG quote request or response bodies
PAYLOAD_LOGGERS = (
    "gql.transport",
    "gql.dsl",
    "anthropic",
    "httpcore",
    "hpack",
)


def silence_payload_loggers() -> None:
    """Hold every payload logger at WARNING (their warnings and errors carry no bodies)."""
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure(level: int = logging.WARNING) -> None:
    """The process's logging: one line per record on stderr at ``level``, bodies silenced."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    silence_payload_loggers()
