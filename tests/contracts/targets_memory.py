"""The in-memory target in the connector contract suite (the reference the others match)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, cast

from connectors.base import Connector
from connectors.memory import MemoryConnector
from tests.contracts.targets import Rows, TargetBackend


def _read(connector: Connector, table: str) -> Rows:
    memory = cast(MemoryConnector, connector)
    return [
        {**row, "integration_id": rid[0], "patient_id": rid[1], "key": rid[3]}
        for rid, row in memory.rows.items()
        if rid[2] == table
    ]


def memory_backend(request: Any) -> Iterator[TargetBackend]:
    """The in-memory connector."""

    shared: dict = {}  # one "server": every connector built here sees the same rows

    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        connector = MemoryConnector.from_config("warehouse", dict(options), dict(credentials or {}))
        cast(MemoryConnector, connector).rows = shared
        return connector

    yield TargetBackend(
        name="memory",
        build=build,
        read=_read,
        modes=("upsert", "update_only", "insert_only", "mirror"),
    )
