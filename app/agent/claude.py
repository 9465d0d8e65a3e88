"""The Claude backend: one forced tool call per changed entry returns its WritePlan.

Per entry the agent sends the cached prefix (tools, engine rules, instruction document; see
``app.agent.prompt``) and the minimized entry, and the model must call ``submit_write_plan``.
The answer is parsed (``app.agent.tools.parse_answer``) and validated against the integration's
connectors (``app.agent.base.validate_plan``). An invalid answer gets exactly one corrective
turn carrying the validation error; a second invalid answer raises ``PlanValidationError``
(fatal: the work item is dead-lettered with the reason). The model never sees credentials,
other patients, or anything it could use to write outside the plan the engine executes.

Transient API failures (429, 5xx, 529 overloaded, connection errors) are retried by
``app.agent.api.call_with_retries`` with the server's ``retry-after`` honoured up to
``max_retry_wait``; the SDK's own retries are switched off so there is one retry policy, not two
stacked. What is left is converted once, in ``app.agent.api.convert_api_error``.

Token usage (uncached input, cache writes, cache reads, output) is returned per entry by
``decide_with_usage`` and summed per integration in ``agent.usage``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anthropic
from anthropic.types import Message

from app.agent.api import call_with_retries
from app.agent.base import DecideItem, decide_each, validate_plan
from app.agent.batches import PollPolicy, decide_in_batch
from app.agent.prompt import entry_message, load_system_prompt, system_blocks
from app.agent.tools import TOOL_NAME, build_tools, forced_tool_choice, parse_answer
from app.agent.usage import TokenUsage, UsageMeter
from app.core.config import Integration
from app.core.errors import ConfigurationError, PlanValidationError
from app.core.models import Cadence, Entry, WritePlan
from app.resilience.guard import Guard
from app.state.base import PatientState
from connectors.base import Declared

log = logging.getLogger(__name__)

#: Default model: a current Sonnet id the installed SDK lists (anthropic 2.12, ``ModelParam``),
#: not on its deprecation list. Override per integration with ``agent.model``.
DEFAULT_MODEL = "claude-sonnet-5-5"

T = TypeVar("T")


@dataclass(frozen=True)
class Decision:
    """A validated plan and the tokens it cost (all calls, the corrective one included)."""

    plan: WritePlan
    usage: TokenUsage


def _assistant_turn(message: Message) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text":
            content.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
    return {"role": "assistant", "content": content}


class ClaudeAgent:
    """Applies one integration's instruction document to entries with Claude."""

    name = "claude"

    def __init__(
        self,
        client: anthropic.Anthropic,
        integration: Integration,
        connectors: Mapping[str, Declared],
        *,
        instructions: str | None = None,
        system_prompt: str | None = None,
        model: str | None = None,
        cache_ttl: str | None = None,
        max_retries: int = 4,
        max_retry_wait: float = 60.0,
        meter: UsageMeter | None = None,
        poll: PollPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        guard: Guard | None = None,
    ) -> None:
        # The engine owns retries (below); stacking the SDK's would multiply attempts.
        self.client = client.with_options(max_retries=0)
        self.integration_id = integration.id
        self.cadence = integration.cadence
        self.use_batches = integration.agent.use_batches
        self.visible_fields = integration.agent.visible_fields
        self.max_tokens = integration.agent.max_output_tokens
        self.connectors = dict(connectors)
        self.model = model or integration.agent.model or DEFAULT_MODEL
        if instructions is None:
            try:
                instructions = integration.agent.instructions.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(
                    f"integration {integration.id!r}: cannot read instructions: {exc}"
                ) from exc
        self.tools = build_tools(self.connectors)
        self.system = system_blocks(
            system_prompt if system_prompt is not None else load_system_prompt(),
            instructions,
            integration.id,
            cache_ttl=cache_ttl,
        )
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.usage = meter or UsageMeter()
        self.poll = poll or PollPolicy()
        self.sleep = sleep
        #: the API key's circuit breaker (shared by every agent of that key in the process)
        self.guard = guard
        #: smallest number of entries sent as a Message Batch (fewer go direct)
        self.min_batch = 2

    # -- requests ---------------------------------------------------------------------------

    def request_params(self, entry: Entry, previous: PatientState | None) -> dict[str, Any]:
        """The Messages API parameters for one entry (also the ``params`` of a batch request)."""
        text = entry_message(
            entry.patient_id,
            entry.data,
            previous.entry if previous is not None else None,
            self.visible_fields,
            run_at=entry.fetched_at,  # the stated run date is the entry's, not the clock's
        )
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": self.system,
            "tools": self.tools,
            "tool_choice": forced_tool_choice(),
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        }

    def with_retries(self, call: Callable[[], T], what: str) -> T:
        """Run one API call with the agent's retry policy (``app.agent.api``)."""
        return call_with_retries(
            call,
            what,
            max_retries=self.max_retries,
            max_wait=self.max_retry_wait,
            sleep=self.sleep,
            guard=self.guard,
        )

    def _create(self, params: Mapping[str, Any]) -> Message:
        message: Message = self.with_retries(
            lambda: self.client.messages.create(**params), f"Anthropic messages ({self.model})"
        )
        return message

    # -- answers ----------------------------------------------------------------------------

    def _plan_of(self, message: Message, entry: Entry) -> WritePlan:
        calls = [b for b in message.content if b.type == "tool_use" and b.name == TOOL_NAME]
        if len(calls) != 1:
            raise PlanValidationError(
                f"expected one {TOOL_NAME} call, got {len(calls)} "
                f"(stop_reason={message.stop_reason})"
            )
        block = calls[0]
        assert block.type == "tool_use"  # narrowed for mypy  # noqa: S101
        plan = parse_answer(block.input, entry.patient_id, backend=self.name)
        validate_plan(plan, entry, self.connectors)
        return plan

    def plan_from_message(
        self,
        message: Message,
        entry: Entry,
        params: Mapping[str, Any],
        *,
        batch: bool = False,
    ) -> Decision:
        """Validate a model answer; on failure, one corrective call with the reason, then
        PlanValidationError. Usage of both calls is recorded (the first as batch if ``batch``)."""
        usage = TokenUsage.from_api(message.usage)
        self.usage.record(self.integration_id, usage, batch=batch)
        try:
            return Decision(self._plan_of(message, entry), usage)
        except PlanValidationError as first:
            reason = str(first)
        log.info("patient %s: plan refused (%s); one corrective retry", entry.patient_id, reason)
        feedback = (
            f"The engine refused this plan: {reason}. Call {TOOL_NAME} again with the whole "
            "corrected plan for the same patient."
        )
        calls = [b for b in message.content if b.type == "tool_use"]
        turn: dict[str, Any]
        if calls:
            turn = {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": b.id,
                        "is_error": True,
                        "content": feedback,
                    }
                    for b in calls
                ],
            }
        else:
            turn = {"role": "user", "content": [{"type": "text", "text": feedback}]}
        retry_params = dict(params)
        history = [*params["messages"]]
        if message.content:
            history.append(_assistant_turn(message))
        retry_params["messages"] = [*history, turn]
        second = self._create(retry_params)
        second_usage = TokenUsage.from_api(second.usage)
        self.usage.record(self.integration_id, second_usage)
        try:
            plan = self._plan_of(second, entry)
        except PlanValidationError as exc:
            raise PlanValidationError(
                f"Claude's plan for patient {entry.patient_id} was invalid twice: {exc}"
            ) from None
        return Decision(plan, usage + second_usage)

    # -- the Agent protocol -----------------------------------------------------------------

    def _check(self, integration: Integration) -> None:
        if integration.id != self.integration_id:
            raise ConfigurationError(
                f"agent built for {self.integration_id!r} asked to decide for {integration.id!r}"
            )

    def decide_with_usage(
        self, integration: Integration, entry: Entry, previous: PatientState | None
    ) -> Decision:
        """Like ``decide``, with the tokens this entry cost."""
        self._check(integration)
        params = self.request_params(entry, previous)
        return self.plan_from_message(self._create(params), entry, params)

    def decide(
        self, integration: Integration, entry: Entry, previous: PatientState | None
    ) -> WritePlan:
        """The validated WritePlan for ``entry`` (one model call; two if the first is refused)."""
        return self.decide_with_usage(integration, entry, previous).plan

    def batches_apply(self, integration: Integration, count: int) -> bool:
        """Whether ``count`` entries go through Message Batches: enabled, a non-hourly cadence
        (batches may take hours), and enough entries to be worth one."""
        return (
            integration.agent.use_batches
            and integration.cadence != Cadence.HOURLY
            and count >= self.min_batch
        )

    def decide_many(
        self,
        integration: Integration,
        items: Sequence[DecideItem],
    ) -> list[WritePlan | Exception]:
        """Plans for many entries, in order; a failed entry's slot holds its engine error.

        Uses one Message Batch when ``batches_apply``; direct calls otherwise."""
        self._check(integration)
        if self.batches_apply(integration, len(items)):
            return decide_in_batch(self, integration, items)
        return decide_each(self, integration, items)
