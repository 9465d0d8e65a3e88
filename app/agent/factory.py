"""Build an integration's agent backend from its config."""

from __future__ import annotations

from collections.abc import Mapping

from app.agent.base import Agent
from app.agent.plan import PlanAgent
from app.config import Integration
from app.errors import ConfigurationError
from connectors.base import Connector


def build_agent(integration: Integration, connectors: Mapping[str, Connector]) -> Agent:
    """The agent the integration's ``agent.backend`` names."""
    cfg = integration.agent
    if cfg.backend == "plan":
        if cfg.plan is None:
            raise ConfigurationError(f"integration {integration.id!r}: plan backend needs a plan")
        return PlanAgent.from_file(cfg.plan, cfg.instructions)
    raise ConfigurationError(
        f"integration {integration.id!r}: agent backend {cfg.backend!r} is not available in "
        "this version (the Claude backend is tracked in issue 7); use backend = 'plan'"
    )
