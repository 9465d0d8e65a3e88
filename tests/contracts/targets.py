"""What the connector contract suite needs of each target: how to build its connector on a
real (or validating mock) server, and how to read back what it wrote.

Each target family registers its backends in its own module (``targets_memory``,
``targets_sql``, ``targets_files``, ``targets_bigquery``); ``test_connector_contract`` runs
the same tests on every one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from connectors.base import Connector

#: rows of one table as dicts: the written values plus integration_id, patient_id and key
Rows = list[dict[str, Any]]


@dataclass
class TargetBackend:
    """One connector on one server, for the contract suite."""

    name: str
    #: build the connector with these options (``tables``, ``mode`` ... merged into the
    #: backend's own, e.g. its path or DSN) and these credentials (None: the backend's own)
    build: Callable[[Mapping[str, Any], Mapping[str, str] | None], Connector]
    #: every row of ``table`` the target holds now
    read: Callable[[Connector, str], Rows]
    modes: tuple[str, ...] = ("upsert",)
    #: credentials the connector needs (empty: the missing-credential test does not apply)
    credential_names: tuple[str, ...] = ()
    #: a context in which the target answers every request with this HTTP status (HTTP
    #: targets only), or None
    fault: Callable[[int], AbstractContextManager[None]] | None = None
    #: a context in which the target itself refuses rows whose key is "poison" (None: the
    #: target writes a batch all or nothing, e.g. a file)
    poison: Callable[[Connector], AbstractContextManager[None]] | None = None
    #: whether a write that changes nothing is reported as unchanged by this target
    reports_unchanged: bool = True
    teardown: list[Callable[[], None]] = field(default_factory=list)


BackendFactory = Callable[[Any], Iterator[TargetBackend]]
