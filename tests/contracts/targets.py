"""What the connector contract suite needs of each target: how to build its connector on a
real (or validating mock) server, how to make its primary write, and how to read back what it
wrote.

Each target family registers its backends in its own module (``targets_memory``,
``targets_sql``, ``targets_files``, ``targets_bigquery``, ``targets_crm``);
``test_connector_contract`` runs the same tests on every one.

Two shapes of target meet the same contract:

* **table targets** (the default): the primary write is ``upsert_row`` into the declared table
  ``patients``; ``read(connector, table)`` returns the table's rows.
* **record targets** (CRMs: one vendor record per patient or per Healthie object): the backend
  supplies ``write`` (how to make its primary write for a patient, a key and values) and
  ``read`` returns every record it holds as a row keyed by ``integration_id``, ``patient_id``
  and ``key`` (the table argument is ignored); options take no ``tables``. A test whose premise
  does not hold for such a target (say, records keyed by the vendor's own identity rather than
  by patient and key) is skipped with the backend's one-line reason from ``skips``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from connectors.base import Connector, Scope, Write

#: rows of one table as dicts: the written values plus integration_id, patient_id and key
Rows = list[dict[str, Any]]


@dataclass
class TargetBackend:
    """One connector on one server, for the contract suite."""

    name: str
    #: build the connector with these options (``tables``, ``mode`` ... merged into the
    #: backend's own, e.g. its path or DSN) and these credentials (None: the backend's own)
    build: Callable[[Mapping[str, Any], Mapping[str, str] | None], Connector]
    #: every row of ``table`` the target holds now (record targets: every record, any table)
    read: Callable[[Connector, str], Rows]
    modes: tuple[str, ...] = ("upsert",)
    #: credentials the connector needs (empty: the missing-credential test does not apply)
    credential_names: tuple[str, ...] = ()
    #: a context in which the target answers every request with this HTTP status (HTTP
    #: targets only), or None
    fault: Callable[[int], AbstractContextManager[None]] | None = None
    #: a context in which the target itself refuses rows (records) whose key is "poison"
    #: (None: the target writes a batch all or nothing, e.g. a file)
    poison: Callable[[Connector], AbstractContextManager[None]] | None = None
    #: whether a write that changes nothing is reported as unchanged by this target
    reports_unchanged: bool = True
    #: record targets: the primary write for (scope, key, values), validated as the pipeline
    #: validates one (None: ``upsert_row`` into the table ``patients``)
    write: Callable[[Connector, Scope, str, dict[str, Any]], Write] | None = None
    #: whether the options take declared ``tables`` (False for record targets)
    tables: bool = True
    #: (operation, arguments) the target must refuse before any I/O, for patient "1"
    #: (None: the table cases of the suite)
    invalid: tuple[tuple[str, dict[str, Any]], ...] | None = None
    #: the largest text value the target takes, in UTF-8 bytes (None: no lower cap than 10 KB)
    max_text_bytes: int | None = None
    #: contract test name -> why its premise does not hold for this target (it is skipped)
    skips: dict[str, str] = field(default_factory=dict)
    teardown: list[Callable[[], None]] = field(default_factory=list)


BackendFactory = Callable[[Any], Iterator[TargetBackend]]
