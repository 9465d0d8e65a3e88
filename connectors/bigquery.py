"""BigQuery tables: one MERGE query job per table and chunk, a real upsert keyed by the scope.

::

    write_upsert_row (chunk of <= 500)       BigQuery REST (google-cloud-bigquery)
    ──────────────────────────────────       ───────────────────────────────────────────────
    first use of the target                  datasets.get (missing -> ConfigurationError)
    first use of a table                     tables.get; 404 -> tables.insert (scope columns
                                               REQUIRED, declared ones NULLABLE, clustered
                                               on patient_id); the schema is cached
    a newly declared column                  tables.get again (another worker may have added
                                               it), then tables.patch with the wider schema
    the rows of each table in the chunk      ONE jobs.query: MERGE ... USING (SELECT * FROM
                                               UNNEST(@upserts)), @upserts an ARRAY<STRUCT<...>>
                                               query parameter

Each statement starts with a marker comment (``-- healthie-sync:merge-upsert``, ...) naming its
shape. The MERGE matches on ``(integration_id, patient_id, key)`` and writes every declared
column (a value the write leaves out becomes NULL, as the other table targets replace a row);
``WHEN MATCHED AND (T.c IS DISTINCT FROM S.c OR ...)`` leaves equal rows untouched, so
``numDmlAffectedRows`` counts the rows that changed. BigQuery does not say which rows those
were: a statement that changed none reports every write unchanged, otherwise all changed.
(The parameter is ``@upserts``, not ``@rows``: ROWS is a reserved keyword of GoogleSQL.)
``update_only`` drops the NOT MATCHED clause, ``insert_only`` the MATCHED one; ``delete_row`` is
``DELETE ... WHERE STRUCT(integration_id, patient_id, key) IN UNNEST(@keys)`` and mirror
pruning one DELETE per table of the scope's rows whose key is not kept.

FLOAT64 values travel as STRING parameters and are CAST in the statement: the client library
encodes FLOAT64 parameter values as JSON numbers, and the discovery document declares
``QueryParameterValue.value`` a string.

Credentials: a service-account key JSON from the secrets interface (``service_account_json``).
The library's own retries are off (a never-retrying policy on every call, explicit timeouts, no
401 refresh loop), so the platform's RetryPolicy is the only one. Errors are converted here:
429 and 403 rateLimitExceeded/quotaExceeded -> RateLimited (Retry-After honoured), 5xx and
transport failures -> UpstreamUnavailable, 400 -> TargetRejected (the base bisects to the bad
row), 401/403 and a refused token -> ConfigurationError, a missing dataset -> ConfigurationError.
Messages carry methods, tables, statuses and Google's reason codes, never a value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, ClassVar, TypeVar

import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as gauth
from google.auth.transport.requests import AuthorizedSession
from google.cloud import bigquery
from google.oauth2 import service_account
from pydantic import BaseModel, Field, SecretStr

from app.core.errors import (
    ConfigurationError,
    HealthieSyncError,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from app.resilience.retry import google_no_retry, parse_retry_after
from app.resilience.status import error_for_status
from connectors.base import Scope, Write, WriteResult
from connectors.tables import (
    SCOPE_COLUMNS,
    ColumnType,
    TableConnector,
    TableOptions,
    is_identifier,
)
from connectors.tables import Scalar as Value
from connectors.tables import UpsertRow as Upsert

T = TypeVar("T")
RowId = tuple[str, str, str]  # (integration_id, patient_id, key) within one table

BIGQUERY_SCOPE = "https://www.googleapis.com/auth/bigquery"
MARK = "-- healthie-sync:"
SCOPE_TYPES = {c: "STRING" for c in SCOPE_COLUMNS} | {"synced_at": "TIMESTAMP"}
BQ_TYPES: dict[ColumnType, str] = {
    "text": "STRING",
    "integer": "INT64",
    "number": "FLOAT64",
    "boolean": "BOOL",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
}
_CANONICAL = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}  # tables.get's names
_TIMEOUT = 30.0  # seconds per HTTP request
_QUERY_WAIT = 120.0  # seconds a DML job may take before the call gives up
# jobs.query bodies are capped at 10 MB (cloud.google.com/bigquery/quotas, "API request
# limits"); a chunk of large rows is split into several statements below that.
_MAX_PARAM_BYTES = 8_000_000
_NO_RETRY = google_no_retry()  # the platform's RetryPolicy retries


class BigQueryOptions(TableOptions):
    """Where the tables live; the tables, mode and size cap of every table target."""

    project: str = Field(pattern=r"^(?:[a-z][a-z0-9.-]*:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
    dataset: str = Field(pattern=r"^[A-Za-z0-9_]{1,1024}$")
    location: str = Field(default="US", pattern=r"^[A-Za-z0-9-]{1,64}$")
    #: another endpoint than bigquery.googleapis.com (tests point it at the local fake)
    api_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s`]+$")


class BigQueryConnector(TableConnector):
    """Rows of declared tables in one BigQuery dataset (see the module docstring)."""

    kind: ClassVar[str] = "bigquery"
    description: ClassVar[str] = (
        "BigQuery tables in one dataset; one MERGE job per table and chunk, keyed by "
        "(integration_id, patient_id, key)."
    )
    options_model: ClassVar[type[BaseModel]] = BigQueryOptions
    credential_names: ClassVar[tuple[str, ...]] = ("service_account_json",)
    max_batch: ClassVar[int] = 500
    # "API requests per second per user per method: 100" (cloud.google.com/bigquery/quotas,
    # API request limits); one MERGE carries up to max_batch rows, so this is rarely reached.
    rate_limit: ClassVar[float | None] = 100.0

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        self._auth = _service_account(name, self.credentials.get("service_account_json"))
        self._client: bigquery.Client | None = None
        self._tables: dict[str, bigquery.Table] = {}
        self._types: dict[str, dict[str, str]] = {}  # table -> column -> canonical type
        self._dataset_checked = False
        #: BigQuery API requests sent (token requests excluded)
        self.api_calls = 0

    @property
    def bq(self) -> BigQueryOptions:
        """The options, typed."""
        assert isinstance(self.options, BigQueryOptions)
        return self.options

    @property
    def client(self) -> bigquery.Client:
        """The library client, built on first use (no I/O until a request)."""
        if self._client is None:
            endpoint = self.bq.api_endpoint
            self._client = bigquery.Client(
                project=self.bq.project,
                credentials=self._auth,
                location=self.bq.location,
                client_options=ClientOptions(api_endpoint=endpoint) if endpoint else None,
                # no refresh-and-retry on 401: the token is refreshed before it expires
                _http=AuthorizedSession(  # type: ignore[no-untyped-call]
                    self._auth, refresh_status_codes=()
                ),
            )
        return self._client

    def close(self) -> None:
        """Close the HTTP session."""
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]
            self._client = None

    # -- operations ----------------------------------------------------------------------
    def write_upsert_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """One MERGE per table (and per 8 MB of rows) of the chunk."""
        changed: dict[tuple[str, RowId], bool] = {}
        with self._counting():
            for table, rows in _by_table(batch).items():
                values: dict[str, Value] = {}
                for write in rows.values():
                    assert isinstance(write.args, Upsert)
                    values.update(write.args.values)
                wanted = self.columns_of(table, values)
                types = self._columns(table, wanted)
                for part in _parts(list(rows.items())):
                    affected = self._merge(table, list(wanted), types, [w for _, w in part])
                    changed.update({(table, rid): affected > 0 for rid, _ in part})
        return [self.ok(w, changed=changed[_key(w)]) for w in batch]

    def write_delete_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """One DELETE per table of the chunk (nothing to do for a table not created yet)."""
        changed: dict[tuple[str, RowId], bool] = {}
        with self._counting():
            for table, rows in _by_table(batch).items():
                affected = 0
                if self._existing(table) is not None:
                    keys = [
                        bigquery.StructQueryParameter(
                            None, *(_param(c, "STRING", v) for c, v in zip(_ID, rid, strict=True))
                        )
                        for rid in rows
                    ]
                    sql = (
                        f"{MARK}delete-keys\nDELETE FROM {self._fq(table)} "
                        "WHERE STRUCT(`integration_id`, `patient_id`, `key`) IN UNNEST(@keys)"
                    )
                    param = bigquery.ArrayQueryParameter("keys", "STRUCT", keys)
                    affected = self._dml(f"DELETE {table}", table, sql, [param])
                changed.update({(table, rid): affected > 0 for rid in rows})
        return [self.ok(w, changed=changed[_key(w)]) for w in batch]

    def prune(self, scope: Scope, keep: Mapping[str, set[str]]) -> None:
        """Mirror mode: one DELETE per table of the scope's rows whose key is not kept."""
        with self._counting(first_is_counted=False):
            tables = set(self.table_options.tables or {}) | set(keep) | set(self._types)
            if self.table_options.tables is None:
                tables |= self._listed_tables()
            for table in sorted(t for t in tables if is_identifier(t)):  # names go into SQL
                if self._existing(table) is None:
                    continue
                sql = (
                    f"{MARK}prune\nDELETE FROM {self._fq(table)} "
                    "WHERE `integration_id` = @integration_id AND `patient_id` = @patient_id "
                    "AND `key` NOT IN UNNEST(@keep)"
                )
                params = [
                    _param("integration_id", "STRING", scope.integration_id),
                    _param("patient_id", "STRING", scope.patient_id),
                    bigquery.ArrayQueryParameter("keep", "STRING", sorted(keep.get(table, ()))),
                ]
                self._dml(f"prune {table}", table, sql, params)

    # -- statements ----------------------------------------------------------------------
    def _merge(
        self, table: str, data: list[str], types: Mapping[str, str], rows: list[Write]
    ) -> int:
        mode = self.table_options.mode
        shape = {"update_only": "update", "insert_only": "insert"}.get(mode, "upsert")
        floats = [c for c in data if types[c] == "FLOAT64"]
        # MERGE's USING takes a table or a subquery (GoogleSQL DML syntax), not UNNEST itself
        source = "(SELECT * FROM UNNEST(@upserts))"
        if floats:
            casts = ", ".join(f"CAST(`{c}` AS FLOAT64) AS `{c}`" for c in floats)
            # names are checked identifiers (connectors.tables.IDENTIFIER); values are parameters
            source = f"(SELECT * REPLACE ({casts}) FROM UNNEST(@upserts))"  # noqa: S608
        scope = ["integration_id", "patient_id", "key", "run_id", "synced_at"]
        differs = " OR ".join(f"T.`{c}` IS DISTINCT FROM S.`{c}`" for c in data) or "FALSE"
        sets = ", ".join(f"`{c}` = S.`{c}`" for c in [*data, "run_id", "synced_at"])
        columns = [*scope, *data]
        lines = [
            f"{MARK}merge-{shape}",
            f"MERGE {self._fq(table)} T",
            f"USING {source} S",
            "ON " + " AND ".join(f"T.`{c}` = S.`{c}`" for c in _ID),
        ]
        if shape != "insert":
            lines.append(f"WHEN MATCHED AND ({differs}) THEN UPDATE SET {sets}")
        if shape != "update":
            names = ", ".join(f"`{c}`" for c in columns)
            sources = ", ".join(f"S.`{c}`" for c in columns)
            lines.append(f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({sources})")  # noqa: S608
        structs = []
        for write in rows:
            args = write.args
            assert isinstance(args, Upsert)
            s = write.scope
            fields = [
                _param("integration_id", "STRING", s.integration_id),
                _param("patient_id", "STRING", s.patient_id),
                _param("key", "STRING", args.key),
                _param("run_id", "STRING", s.run_id),
                _param("synced_at", "TIMESTAMP", s.synced_at),
                *(_typed(c, types[c], args.values.get(c)) for c in data),
            ]
            structs.append(bigquery.StructQueryParameter(None, *fields))
        param = bigquery.ArrayQueryParameter("upserts", "STRUCT", structs)
        return self._dml(f"MERGE {table}", table, "\n".join(lines), [param])

    def _dml(self, what: str, table: str, sql: str, params: list[Any]) -> int:
        config = bigquery.QueryJobConfig(query_parameters=params)

        def run() -> int:
            try:
                result = self.client.query_and_wait(
                    sql,
                    job_config=config,
                    location=self.bq.location,
                    project=self.bq.project,
                    api_timeout=_TIMEOUT,
                    wait_timeout=_QUERY_WAIT,
                    retry=_NO_RETRY,
                    job_retry=_NO_RETRY,
                )
            except gexc.NotFound as exc:
                # the table or dataset went away since it was cached: look again on retry
                self._forget(table)
                raise UpstreamUnavailable(f"BigQuery {what}: HTTP 404 (table re-checked)") from exc
            return int(result.num_dml_affected_rows or 0)

        return self._call(f"jobs.query {what}", run)

    # -- tables --------------------------------------------------------------------------
    def _fq(self, table: str) -> str:
        return f"`{self.bq.project}.{self.bq.dataset}.{table}`"

    def _ref(self, table: str) -> bigquery.TableReference:
        return bigquery.DatasetReference(self.bq.project, self.bq.dataset).table(table)

    def _forget(self, table: str) -> None:
        self._tables.pop(table, None)
        self._types.pop(table, None)
        self._dataset_checked = False

    def probe(self) -> str:
        """See :meth:`Connector.probe`: datasets.get on the configured dataset."""
        self._dataset_checked = False
        self._check_dataset()
        return f"dataset {self.bq.project}.{self.bq.dataset} found in {self.bq.location}"

    def _check_dataset(self) -> None:
        if self._dataset_checked:
            return
        where = f"{self.bq.project}.{self.bq.dataset}"

        def get() -> bigquery.Dataset:
            try:
                return self.client.get_dataset(where, retry=_NO_RETRY, timeout=_TIMEOUT)
            except gexc.NotFound as exc:
                raise ConfigurationError(
                    f"target {self.name!r} (bigquery): dataset {where} not found "
                    "(create it, or fix options.project / options.dataset)"
                ) from exc

        dataset = self._call("datasets.get", get)
        if (dataset.location or "").lower() != self.bq.location.lower():
            raise ConfigurationError(
                f"target {self.name!r} (bigquery): dataset {where} is in {dataset.location}, "
                f"options.location says {self.bq.location}"
            )
        self._dataset_checked = True

    def _get(self, table: str) -> bigquery.Table | None:
        def get() -> bigquery.Table | None:
            try:
                return self.client.get_table(self._ref(table), retry=_NO_RETRY, timeout=_TIMEOUT)
            except gexc.NotFound:
                return None

        return self._call(f"tables.get {table}", get)

    def _existing(self, table: str) -> dict[str, str] | None:
        """The cached column types of ``table``; None when it does not exist."""
        if table in self._types:
            return self._types[table]
        self._check_dataset()
        found = self._get(table)
        return None if found is None else self._remember(table, found)

    def _remember(self, table: str, found: bigquery.Table) -> dict[str, str]:
        types = {f.name: _CANONICAL.get(str(f.field_type), str(f.field_type)) for f in found.schema}
        wrong = [c for c, t in SCOPE_TYPES.items() if types.get(c) != t]
        if wrong:
            raise ConfigurationError(
                f"target {self.name!r} (bigquery): table {table} predates row scoping "
                f"(columns {wrong} missing or of another type); rename it and let the "
                "connector create it"
            )
        self._tables[table], self._types[table] = found, types
        return types

    def _columns(self, table: str, wanted: Mapping[str, ColumnType]) -> dict[str, str]:
        """The column types of ``table``, created or widened to hold ``wanted``."""
        cached = table in self._types
        types = self._existing(table)
        if types is None:
            types = self._create(table, wanted)
        elif cached and any(c not in types for c in wanted):
            found = self._get(table)  # another worker may have added the column
            types = self._remember(table, found) if found is not None else types
        missing = [c for c in wanted if c not in types]
        if missing:
            types = self._add_columns(table, {c: wanted[c] for c in missing})
        clashes = [c for c, kind in wanted.items() if types[c] != BQ_TYPES[kind]]
        if clashes:
            raise ConfigurationError(
                f"target {self.name!r} (bigquery): columns {clashes} of {table} have another "
                "type in BigQuery than declared"
            )
        return types

    def _create(self, table: str, wanted: Mapping[str, ColumnType]) -> dict[str, str]:
        schema = [bigquery.SchemaField(c, t, mode="REQUIRED") for c, t in SCOPE_TYPES.items()]
        schema += [bigquery.SchemaField(c, BQ_TYPES[k], mode="NULLABLE") for c, k in wanted.items()]
        new = bigquery.Table(self._ref(table), schema=schema)
        new.clustering_fields = ["patient_id"]
        new.description = "healthie-sync rows keyed by (integration_id, patient_id, key)"
        created = self._call(
            f"tables.insert {table}",
            lambda: self.client.create_table(
                new, exists_ok=True, retry=_NO_RETRY, timeout=_TIMEOUT
            ),
            rejected=ConfigurationError,
        )
        return self._remember(table, created)

    def _add_columns(self, table: str, new: Mapping[str, ColumnType]) -> dict[str, str]:
        current = self._tables[table]
        current.schema = [
            *current.schema,
            *(bigquery.SchemaField(c, BQ_TYPES[k], mode="NULLABLE") for c, k in new.items()),
        ]

        def patch() -> bigquery.Table:
            try:  # If-Match: the etag we read, so two workers cannot undo each other's columns
                return self.client.update_table(
                    current, ["schema"], retry=_NO_RETRY, timeout=_TIMEOUT
                )
            except gexc.PreconditionFailed as exc:
                self._forget(table)
                raise UpstreamUnavailable(
                    f"BigQuery tables.patch {table}: HTTP 412 (changed meanwhile; read again)"
                ) from exc

        return self._remember(
            table, self._call(f"tables.patch {table}", patch, rejected=ConfigurationError)
        )

    def _listed_tables(self) -> set[str]:
        """Tables of the dataset that carry the scope columns (undeclared targets' prune)."""
        self._check_dataset()
        where = f"{self.bq.project}.{self.bq.dataset}"
        listed = self._call(
            "tables.list",
            lambda: [
                t.table_id
                for t in self.client.list_tables(where, retry=_NO_RETRY, timeout=_TIMEOUT)
            ],
        )
        out = set()
        for table in listed:
            found = self._get(table) if table not in self._types else self._tables[table]
            names = {f.name for f in found.schema} if found is not None else set()
            if set(SCOPE_COLUMNS) <= names:
                out.add(table)
        return out

    # -- the edge ------------------------------------------------------------------------
    def _counting(self, *, first_is_counted: bool = True) -> _Counter:
        return _Counter(self, 1 if first_is_counted else 0)

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        rejected: type[HealthieSyncError] = TargetRejected,
    ) -> T:
        """``fn()`` (one BigQuery request), its failures as engine errors."""
        self.api_calls += 1
        try:
            return fn()
        except HealthieSyncError:
            raise
        except gauth.RefreshError as exc:
            if getattr(exc, "retryable", False):
                raise UpstreamUnavailable(f"BigQuery {what}: token endpoint unavailable") from exc
            raise ConfigurationError(
                f"target {self.name!r} (bigquery): the service account's token request was "
                "refused (check credentials.service_account_json)"
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise _translate(what, exc, rejected) from exc
        except (gauth.TransportError, requests.RequestException, TimeoutError) as exc:
            raise UpstreamUnavailable(f"BigQuery {what}: {type(exc).__name__}") from exc


class _Counter:
    """Adds a call's BigQuery requests beyond the one the base counts to ``requests``."""

    def __init__(self, connector: BigQueryConnector, counted: int) -> None:
        self.connector, self.counted = connector, counted

    def __enter__(self) -> None:
        self.start = self.connector.api_calls

    def __exit__(self, *exc: object) -> None:
        made = self.connector.api_calls - self.start
        self.connector.requests += max(0, made - self.counted)


_ID = ("integration_id", "patient_id", "key")


def _key(write: Write) -> tuple[str, RowId]:
    integration, patient, table, key = TableConnector.row_id(write)
    return table, (integration, patient, key)


def _by_table(batch: Sequence[Write]) -> dict[str, dict[RowId, Write]]:
    """The chunk's writes per table, one per row (the last wins: a MERGE source may match a
    target row once only)."""
    out: dict[str, dict[RowId, Write]] = {}
    for write in batch:
        table, rid = _key(write)
        rows = out.setdefault(table, {})
        rows.pop(rid, None)
        rows[rid] = write
    return out


def _parts(rows: list[tuple[RowId, Write]]) -> Iterator[list[tuple[RowId, Write]]]:
    """``rows`` in groups whose parameters stay under the jobs.query body cap."""
    part: list[tuple[RowId, Write]] = []
    size = 0
    for item in rows:
        args = item[1].args
        assert isinstance(args, Upsert)
        row = 400 + sum(len(str(v)) * 2 + 80 for v in args.values.values())  # JSON-escaped
        if part and size + row > _MAX_PARAM_BYTES:
            yield part
            part, size = [], 0
        part.append(item)
        size += row
    if part:
        yield part


def _param(name: str, kind: str, value: Any) -> bigquery.ScalarQueryParameter:
    return bigquery.ScalarQueryParameter(name, kind, value)


def _typed(name: str, column_type: str, value: Value) -> bigquery.ScalarQueryParameter:
    """A struct field of ``@upserts`` for a value checked against the column's declared type."""
    if value is None:
        kind = "STRING" if column_type == "FLOAT64" else column_type
        return _param(name, kind, None)
    if column_type == "FLOAT64":  # cast in the statement (see the module docstring)
        return _param(name, "STRING", str(value))
    if column_type == "DATE":
        return _param(name, "DATE", date.fromisoformat(str(value)))
    if column_type == "TIMESTAMP":
        moment = datetime.fromisoformat(str(value))
        return _param(name, "TIMESTAMP", moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return _param(name, column_type, value)


def _translate(
    what: str, exc: gexc.GoogleAPICallError, rejected: type[HealthieSyncError]
) -> HealthieSyncError:
    """The engine error for a BigQuery HTTP answer: status and reason code only (Google's
    message can quote the statement's values)."""
    status = int(exc.code or 503)
    reasons = [str(e.get("reason", "")) for e in (exc.errors or []) if isinstance(e, dict)]
    reason = next((r for r in reasons if r.isidentifier()), "")
    label = f"BigQuery {what}: HTTP {status}" + (f" {reason}" if reason else "")
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    retry_after = parse_retry_after(
        {k.lower(): v for k, v in headers.items()} if headers is not None else None
    )
    if status == 403 and reason in ("rateLimitExceeded", "quotaExceeded"):
        return RateLimited(label, retry_after=retry_after)  # BigQuery's documented 403s
    if status == 400:
        return rejected(label)
    if status == 404:
        return ConfigurationError(f"{label} (dataset or table not found)")
    return error_for_status(status, label, retry_after=retry_after)


def _service_account(target: str, secret: SecretStr | None) -> service_account.Credentials:
    """Credentials from a service-account key JSON (never quoted in an error)."""
    problem = f"target {target!r} (bigquery): credentials.service_account_json is not a "
    if secret is None:
        raise ConfigurationError(
            f"target {target!r} (bigquery) needs credentials ['service_account_json']"
        )
    try:
        info = json.loads(secret.get_secret_value())
    except ValueError:
        raise ConfigurationError(problem + "JSON document") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ConfigurationError(problem + "service-account key (type service_account)")
    try:
        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call,no-any-return]
            info, scopes=[BIGQUERY_SCOPE]
        )
    except (ValueError, KeyError, TypeError):
        raise ConfigurationError(problem + "usable service-account key") from None
