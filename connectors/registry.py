"""Explicit registry: connector config name -> builder. Unknown names fail clearly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.config import TargetConfig
from app.errors import ConfigurationError
from connectors import memory, sqlite
from connectors.base import Connector

Builder = Callable[[str, dict[str, Any], dict[str, str]], Connector]

CONNECTORS: dict[str, Builder] = {
    "sqlite": sqlite.build,
    "memory": memory.build,
}


def build_connector(target: TargetConfig, credentials: dict[str, str]) -> Connector:
    """Build the connector a target's config names."""
    builder = CONNECTORS.get(target.connector)
    if builder is None:
        raise ConfigurationError(
            f"target {target.name!r}: unknown connector {target.connector!r}; "
            f"available: {sorted(CONNECTORS)}"
        )
    return builder(target.name, dict(target.options), credentials)
