"""Explicit registry: connector config name -> class. Unknown names fail clearly."""

from __future__ import annotations

from collections.abc import Mapping

from app.core.config import TargetConfig
from app.core.errors import ConfigurationError
from connectors.base import Connector, TargetSchema
from connectors.memory import MemoryConnector
from connectors.sqlite import SqliteConnector

CONNECTORS: dict[str, type[Connector]] = {
    "sqlite": SqliteConnector,
    "memory": MemoryConnector,
}


def connector_class(target: TargetConfig) -> type[Connector]:
    """The class a target's config names, or ConfigurationError listing the known ones."""
    cls = CONNECTORS.get(target.connector)
    if cls is None:
        raise ConfigurationError(
            f"target {target.name!r}: unknown connector {target.connector!r}; "
            f"available: {sorted(CONNECTORS)}"
        )
    return cls


def target_schema(target: TargetConfig) -> TargetSchema:
    """The target's declarations (no connection is opened)."""
    return connector_class(target).schema(target.name)


def build_connector(target: TargetConfig, credentials: Mapping[str, str]) -> Connector:
    """Build the connector a target's config names."""
    return connector_class(target).from_config(target.name, dict(target.options), credentials)
