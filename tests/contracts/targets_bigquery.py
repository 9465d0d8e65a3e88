"""BigQuery in the connector contract suite: the real connector (google-cloud-bigquery, the
real OAuth flow with a generated service-account key) against the local fake of
``tests.servers.bigquery``, which checks every request against Google's discovery document.

Each test gets a fresh dataset; at its end the fake must have recorded no violation. BigQuery
reports how many rows a MERGE changed, not which, so ``reports_unchanged`` is False.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from google.api_core.exceptions import NotFound

from connectors.base import Connector
from connectors.bigquery import BigQueryConnector
from tests.contracts.targets import Rows, TargetBackend
from tests.servers.bigquery import PROJECT, FakeBigQuery, fresh_dataset, session_fake

_ACCOUNTS: dict[int, str] = {}  # one generated key per fake (RSA generation is slow)


def service_account_json(fake: FakeBigQuery) -> str:
    """The session's service-account key JSON for ``fake``."""
    if id(fake) not in _ACCOUNTS:
        _ACCOUNTS[id(fake)] = json.dumps(fake.service_account())
    return _ACCOUNTS[id(fake)]


def read_rows(connector: Connector, table: str) -> Rows:
    """Every row of ``table`` through tabledata.list (validated like every other request)."""
    bq = cast(BigQueryConnector, connector)
    where = f"{bq.bq.project}.{bq.bq.dataset}.{table}"
    try:
        return [dict(row.items()) for row in bq.client.list_rows(where, timeout=10)]
    except NotFound:
        return []


def bigquery_backend(request: Any) -> Iterator[TargetBackend]:
    """The BigQuery connector on the session's fake, with a fresh dataset."""
    fake = session_fake(request.config)
    account = service_account_json(fake)
    with fresh_dataset(fake) as dataset:

        def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
            merged = {
                "project": PROJECT,
                "dataset": dataset,
                "api_endpoint": fake.base_url,
                **options,
            }
            secrets = {"service_account_json": account} if credentials is None else credentials
            return BigQueryConnector.from_config("warehouse", merged, dict(secrets))

        @contextmanager
        def poison(connector: Connector) -> Iterator[None]:
            with fake.poisoned():
                yield

        yield TargetBackend(
            name="bigquery",
            build=build,
            read=read_rows,
            modes=("upsert", "update_only", "insert_only", "mirror"),
            credential_names=("service_account_json",),
            fault=fake.failing,
            poison=poison,
            reports_unchanged=False,
        )
    violations = fake.take_violations()
    assert violations == [], "requests that break BigQuery's discovery document:\n" + "\n".join(
        violations
    )


BIGQUERY_BACKENDS = {"bigquery": bigquery_backend}
