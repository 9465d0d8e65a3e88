"""Airtable in the connector contract suite: the real connector (pyairtable's request layer,
paced at 5 requests/s) against the in-memory mock of ``tests.servers.airtable``, which follows
Airtable's documented answers (not a vendor-published contract: Airtable publishes none).

Each test gets a fresh base; at its end the mock must have recorded no violation. Airtable says
which upserted records were updated, not whether they changed, so ``reports_unchanged`` is False.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from connectors.airtable import AirtableConnector
from connectors.base import Connector
from tests.contracts.targets import Rows, TargetBackend
from tests.servers.airtable import MockAirtable, session_mock


def read_rows(mock: MockAirtable, connector: Connector, table: str) -> Rows:
    """Every record of ``table`` as a row: each field of the table, None when empty (Airtable
    leaves empty cells out of a record)."""
    airtable = cast(AirtableConnector, connector)
    found = mock.table(airtable.at.base_id, airtable.at.table_names.get(table, table))
    if found is None:
        return []
    with mock.lock:
        names = list(found.types())
        return [{n: r["fields"].get(n) for n in names} for r in found.records.values()]


def airtable_backend(request: Any) -> Iterator[TargetBackend]:
    """The Airtable connector on the session's mock, with a fresh base."""
    mock = session_mock(request.config)
    assert mock.take_violations() == []
    base = mock.add_base()

    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        merged = {"base_id": base, "api_url": mock.base_url, **options}
        secrets = {"token": mock.token} if credentials is None else credentials
        return AirtableConnector.from_config("crm", merged, dict(secrets))

    @contextmanager
    def poison(connector: Connector) -> Iterator[None]:
        with mock.poisoned():
            yield

    yield TargetBackend(
        name="airtable",
        build=build,
        read=lambda connector, table: read_rows(mock, connector, table),
        modes=("upsert", "update_only", "insert_only", "mirror"),
        credential_names=("token",),
        fault=mock.failing,
        poison=poison,
        reports_unchanged=False,
    )
    with mock.lock:
        mock.bases.pop(base, None)
    violations = mock.take_violations()
    assert violations == [], "requests Airtable would refuse as malformed:\n" + "\n".join(
        violations
    )


AIRTABLE_BACKENDS = {"airtable": airtable_backend}
