"""Message Batches: many entries decided in one asynchronous batch (non-hourly cadences).

A flush of a daily or weekly integration has hours to spare, and a batch costs half the tokens
of direct calls (Anthropic's batch pricing) and a handful of HTTP requests however many entries
it holds::

    create (one request per entry, custom_id = its position)
      ▸ poll with back-off until processing_status == "ended"
      ▸ read the JSONL results, matched back by custom_id (they come in any order)
      ▸ delete the batch at Anthropic (its results are no longer needed there)
      ▸ succeeded  → validate like a direct answer (one direct corrective call if invalid)
        errored / expired / canceled / missing → one direct call, then the item's error

When the batches endpoint is unavailable (404, 405 or 501: a proxy or an account without it)
every entry is decided directly instead. Each item's failure stays its own: the returned list
holds a WritePlan or the engine error for that entry, in the order of ``items``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anthropic

from app.agent.api import convert_api_error
from app.agent.base import DecideItem, decide_each
from app.core.config import Integration
from app.core.errors import HealthieSyncError, UpstreamUnavailable
from app.core.models import WritePlan

if TYPE_CHECKING:
    from app.agent.claude import ClaudeAgent

log = logging.getLogger(__name__)

#: Statuses meaning "this deployment has no batches endpoint": decide directly instead.
UNAVAILABLE_STATUSES = frozenset({404, 405, 501})


@dataclass(frozen=True)
class PollPolicy:
    """How a batch is polled: waits grow from ``initial`` by ``factor`` up to ``maximum``;
    after ``timeout`` seconds the batch is cancelled and its items fail as retriable.
    Anthropic ends every batch within 24 hours of its creation (``MessageBatch.expires_at``)."""

    initial: float = 10.0
    factor: float = 1.5
    maximum: float = 120.0
    timeout: float = 25 * 3600.0


def custom_id(index: int) -> str:
    """The id of the ``index``-th request (ids only, never patient data)."""
    return f"entry-{index:06d}"


def _wait_until_ended(agent: ClaudeAgent, batch: Any, policy: PollPolicy) -> Any:
    batches = agent.client.messages.batches
    deadline = time.monotonic() + policy.timeout
    delay = policy.initial
    while batch.processing_status != "ended":
        if time.monotonic() + delay > deadline:
            try:
                batches.cancel(batch.id)
            except anthropic.AnthropicError as exc:
                log.warning("could not cancel batch %s: %s", batch.id, type(exc).__name__)
            raise UpstreamUnavailable(f"message batch {batch.id} did not end in time")
        agent.sleep(delay)
        batch = agent.with_retries(partial(batches.retrieve, batch.id), "Anthropic batch poll")
        delay = min(delay * policy.factor, policy.maximum)
    return batch


def _delete(agent: ClaudeAgent, batch_id: str) -> None:
    # Data minimization: the results hold plans (patient ids and values); once read they are
    # not needed on Anthropic's side. Best effort: a failure only leaves Anthropic's retention.
    try:
        agent.client.messages.batches.delete(batch_id)
    except anthropic.AnthropicError as exc:
        log.warning("could not delete batch %s: %s", batch_id, type(exc).__name__)


def decide_in_batch(
    agent: ClaudeAgent,
    integration: Integration,
    items: Sequence[DecideItem],
    *,
    policy: PollPolicy | None = None,
) -> list[WritePlan | Exception]:
    """Plans for ``items`` through one Message Batch (see the module docstring)."""
    policy = policy or agent.poll
    params = [agent.request_params(entry, previous) for entry, previous in items]
    requests: list[Any] = [{"custom_id": custom_id(i), "params": p} for i, p in enumerate(params)]
    batches = agent.client.messages.batches
    try:
        batch = agent.with_retries(
            lambda: batches.create(requests=requests), "Anthropic batch create"
        )
    except HealthieSyncError as exc:
        cause = exc.__cause__
        if isinstance(cause, anthropic.APIStatusError) and (
            cause.status_code in UNAVAILABLE_STATUSES
        ):
            log.warning(
                "%s: message batches unavailable (HTTP %d); deciding %d entries directly",
                integration.id,
                cause.status_code,
                len(items),
            )
            return decide_each(agent, integration, items)
        return [exc for _ in items]
    try:
        batch = _wait_until_ended(agent, batch, policy)
        batch_id = batch.id
        lines = agent.with_retries(
            lambda: list(batches.results(batch_id)), "Anthropic batch results"
        )
    except HealthieSyncError as exc:
        return [exc for _ in items]
    except anthropic.AnthropicError as exc:  # e.g. results asked for before results_url exists
        err = convert_api_error(exc, "Anthropic batch results")
        return [err for _ in items]
    results = {line.custom_id: line.result for line in lines}
    _delete(agent, batch_id)
    log.info(
        "%s: batch %s ended with %d results for %d entries",
        integration.id,
        batch.id,
        len(results),
        len(items),
    )
    out: list[WritePlan | Exception] = []
    for index, (entry, previous) in enumerate(items):
        result = results.get(custom_id(index))
        try:
            if result is not None and result.type == "succeeded":
                decision = agent.plan_from_message(result.message, entry, params[index], batch=True)
            else:
                outcome = result.type if result is not None else "missing"
                log.info("%s: batch item %d %s; one direct call", integration.id, index, outcome)
                decision = agent.decide_with_usage(integration, entry, previous)
            out.append(decision.plan)
        except HealthieSyncError as exc:
            out.append(exc)
    return out
