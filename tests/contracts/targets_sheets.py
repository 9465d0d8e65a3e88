"""Google Sheets in the connector contract suite: the real connector (google-api-python-client,
the real OAuth flow with a generated service-account key) against the local fake of
``tests.servers.sheets``, which checks every request against Google's Sheets v4 discovery
document.

Each test gets a fresh spreadsheet; at its end the fake must have recorded no violation. Rows
are read back through values.batchGet (validated like every other request); an empty cell
reads as None, as Sheets has no NULL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from connectors.base import Connector
from connectors.sheets import SheetsConnector
from tests.contracts.targets import Rows, TargetBackend
from tests.servers.sheets import FakeSheets, fresh_spreadsheet, session_fake

_ACCOUNTS: dict[int, str] = {}  # one generated key per fake (RSA generation is slow)


def service_account_json(fake: FakeSheets) -> str:
    """The session's service-account key JSON for ``fake``."""
    if id(fake) not in _ACCOUNTS:
        _ACCOUNTS[id(fake)] = json.dumps(fake.service_account())
    return _ACCOUNTS[id(fake)]


def read_rows(connector: Connector, table: str) -> Rows:
    """Every row of tab ``table`` as dicts by header name ("" as None)."""
    sheets = cast(SheetsConnector, connector)
    sheets._tabs = None  # another connector may have added the tab
    if table not in sheets._known_tabs():
        return []
    read = sheets._read([table])[table]
    out = []
    for cells in read.rows[1:]:
        if not any(c != "" for c in cells):
            continue
        row = {name: (cells[i] if i < len(cells) else "") for i, name in enumerate(read.header)}
        out.append({k: (None if v == "" else v) for k, v in row.items()})
    return out


def sheets_backend(request: Any) -> Iterator[TargetBackend]:
    """The Sheets connector on the session's fake, with a fresh spreadsheet."""
    fake = session_fake(request.config)
    account = service_account_json(fake)
    with fresh_spreadsheet(fake) as spreadsheet:

        def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
            merged = {"spreadsheet_id": spreadsheet, "api_endpoint": fake.base_url, **options}
            secrets = {"service_account_json": account} if credentials is None else credentials
            return SheetsConnector.from_config("sheet", merged, dict(secrets))

        @contextmanager
        def poison(connector: Connector) -> Iterator[None]:
            with fake.poisoned():
                yield

        yield TargetBackend(
            name="sheets",
            build=build,
            read=read_rows,
            modes=("upsert", "update_only", "insert_only", "mirror"),
            credential_names=("service_account_json",),
            fault=fake.failing,
            poison=poison,
            reports_unchanged=True,
        )
    violations = fake.take_violations()
    assert violations == [], "requests that break the Sheets discovery document:\n" + "\n".join(
        violations
    )


SHEETS_BACKENDS = {"sheets": sheets_backend}
