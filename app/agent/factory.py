"""Build an integration's agent backend from its config.

``plan`` needs only the plan file. ``claude`` needs an ``anthropic.Anthropic`` client, built by
the caller (``build_anthropic_client``) from a secret reference, and passed in: the factory never
reads keys or the environment itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import anthropic
import httpx2

from app.agent.base import Agent
from app.agent.claude import ClaudeAgent
from app.agent.plan import PlanAgent
from app.agent.usage import UsageMeter
from app.core.config import Integration
from app.core.errors import ConfigurationError
from app.core.models import Cadence
from app.resilience.guard import Guard
from connectors.base import Declared

#: Seconds one Messages API call may take before it is abandoned (and retried by the queue).
DEFAULT_TIMEOUT = 120.0


def build_anthropic_client(
    api_key: str,
    *,
    base_url: str | None = None,
    http_client: httpx2.Client | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> anthropic.Anthropic:
    """An SDK client for the agent. Retries are the agent's (``app.agent.api``), so the SDK's
    are off. ``api_key`` comes from the secrets interface, never from a config file."""
    key = api_key.strip()
    if not key or key.lower() in {"changeme", "placeholder", "xxx", "sk-ant-..."}:
        raise ConfigurationError("the Anthropic API key secret is empty or a placeholder")
    return anthropic.Anthropic(
        api_key=key, base_url=base_url, http_client=http_client, timeout=timeout, max_retries=0
    )


def build_agent(
    integration: Integration,
    connectors: Mapping[str, Declared],
    *,
    anthropic_client: anthropic.Anthropic | None = None,
    meter: UsageMeter | None = None,
    guard: Guard | None = None,
) -> Agent:
    """The agent the integration's ``agent.backend`` names; ``guard`` is the Anthropic key's
    circuit breaker (``app.resilience.guard``), shared by every agent of that key."""
    cfg = integration.agent
    if cfg.backend == "plan":
        if cfg.plan is None:
            raise ConfigurationError(f"integration {integration.id!r}: plan backend needs a plan")
        return PlanAgent.from_file(cfg.plan, cfg.instructions)
    if cfg.backend == "claude":
        if anthropic_client is None:
            raise ConfigurationError(
                f"integration {integration.id!r}: agent.backend = 'claude' needs an Anthropic "
                "API key (secret reference in the settings' anthropic_api_key_secret)"
            )
        batched = cfg.use_batches and integration.cadence != Cadence.HOURLY
        # A batch can take longer than the default 5-minute cache lifetime; the 1-hour cache
        # keeps the shared prefix warm across it (and across the direct retries after it).
        return ClaudeAgent(
            anthropic_client,
            integration,
            connectors,
            cache_ttl="1h" if batched else None,
            meter=meter,
            guard=guard,
        )
    raise ConfigurationError(
        f"integration {integration.id!r}: unknown agent backend {cfg.backend!r}"
    )
