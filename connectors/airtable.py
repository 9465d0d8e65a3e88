"""Airtable tables (records API): rows upserted with ``performUpsert``, ten per request, paced at
Airtable's five requests per second per base.

::

    the connector                              Airtable Web API (pyairtable's request layer)
    ─────────────                              ─────────────────────────────────────────────
    first use                                  GET /v0/meta/bases/{base}/tables (cached)
    a declared table missing                   POST /v0/meta/bases/{base}/tables
    a declared column missing                  the schema read again (another worker may have
                                                 added it), then POST .../tables/{id}/fields
    upsert_row, a chunk of <= 10 of one table  ONE PATCH /v0/{base}/{table} with
                                                 performUpsert.fieldsToMergeOn =
                                                 [integration_id, patient_id, key]
    update_only / insert_only                  a filterByFormula lookup, then a PATCH by record
                                                 id (update_only) or an upsert of the missing
                                                 rows only (insert_only)
    delete_row / mirror prune                  a filterByFormula lookup of the record ids, then
                                                 DELETE ?records[]=... (10 per request)

**Identity.** Rows are matched on the three fields every table target keys by, not on one
computed field: Airtable allows up to three ``fieldsToMergeOn`` (airtable.com/developers/web/api/
update-multiple-records), so the identity fits as it is; a computed ``a|b|c`` field would be a
fourth copy of the same values that a person editing the base could make disagree with them, and
would need an escaping rule. The lookups that find record ids for deletes match the same three
fields, and every id found is checked against the identity again here, so what Airtable's
formula comparison does with case or spacing can never delete another patient's record.
``key`` is the primary field of the tables created here.

**Vendor limits** (cited): "Updates up to 10 records" per request (update-multiple-records; the
same for create and delete-multiple-records) -> ``max_batch = 10``; "The API is limited to 5
requests per second per base ... If you exceed these rates, you will receive a 429 status code
and will need to wait 30 seconds" (airtable.com/developers/web/api/rate-limits, also
/api/errors) -> ``rate_limit = 5.0``. Pacing is per HTTP request, not per chunk: the token bucket
the runtime shares per credential is taken off the guard (which keeps the circuit breaker) and
put in front of every request, so metadata and lookup requests are paced too. A 429 pauses the
bucket for 30 s (or Retry-After) and is raised as RateLimited(retry_after=30): the default retry
policy here never sleeps that long in-process, so the queue's redelivery waits it out.

Writes are grouped by table before chunking, so a chunk of 10 is one request. Every declared
column is sent (a value the write leaves out is cleared, as other table targets replace a row).
Airtable omits empty cells from what it returns ("", false, null): a checkbox that is false
reads back as absent. Timestamps are sent as UTC ISO 8601 (a naive one is taken as UTC).
Airtable does not say which upserted records actually changed, so every write reports changed.

pyairtable (pinned) builds the requests; its own retry strategy is off (``retry_strategy=None``)
and its session is replaced by a plain paced one (no retrying adapter), so the platform's
RetryPolicy is the only retry. Errors are mapped once, here, with
``app.resilience.status``: 429 RateLimited, 5xx and transport failures UpstreamUnavailable,
401/403 ConfigurationError, 422 TargetRejected (the base bisects to the bad row). Messages carry
the request, status and Airtable's error type, never a value (Airtable's messages may quote one).
Credentials: a personal access token (``token``) with data.records:read/write and
schema.bases:read/write on the base.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar, TypeVar

import requests
from pydantic import BaseModel, Field, field_validator

from app.core.errors import (
    ConfigurationError,
    HealthieSyncError,
    UpstreamUnavailable,
)
from app.resilience.guard import Guard
from app.resilience.ratelimit import TokenBucket
from app.resilience.retry import Backoff, RetryPolicy, parse_retry_after
from app.resilience.status import error_for_status
from connectors.base import Scope, Write, WriteResult
from connectors.tables import (
    ColumnType,
    DeleteRow,
    Scalar,
    TableConnector,
    TableOptions,
    UpsertRow,
    is_identifier,
)

T = TypeVar("T")
RowId = tuple[str, str, str]  # (integration_id, patient_id, key) within one table
ID_FIELDS = ("integration_id", "patient_id", "key")
RATE_LIMIT_WAIT = 30.0  # "need to wait 30 seconds" (airtable.com/developers/web/api/rate-limits)
_TIMEOUT = (10, 30)  # connect, read seconds
_TEXT = {"type": "singleLineText"}
_DATETIME = {
    "type": "dateTime",
    "options": {
        "dateFormat": {"name": "iso"},
        "timeFormat": {"name": "24hour"},
        "timeZone": "utc",
    },
}
#: the fields of a table created here: the primary field first (Airtable makes it the primary)
SCOPE_FIELDS: dict[str, dict[str, Any]] = {
    "key": _TEXT,
    "integration_id": _TEXT,
    "patient_id": _TEXT,
    "run_id": _TEXT,
    "synced_at": _DATETIME,
}
#: how a declared column type is created (airtable.com/developers/web/api/field-model)
FIELD_FOR: dict[ColumnType, dict[str, Any]] = {
    "text": {"type": "multilineText"},
    "integer": {"type": "number", "options": {"precision": 0}},
    "number": {"type": "number", "options": {"precision": 8}},
    "boolean": {"type": "checkbox", "options": {"icon": "check", "color": "greenBright"}},
    "date": {"type": "date", "options": {"dateFormat": {"name": "iso"}}},
    "timestamp": _DATETIME,
}
#: Airtable field types an existing field may have for each declared type
ACCEPTED: dict[ColumnType, set[str]] = {
    "text": {"multilineText", "singleLineText", "email", "url", "phoneNumber", "richText"},
    "integer": {"number"},
    "number": {"number", "currency", "percent"},
    "boolean": {"checkbox"},
    "date": {"date"},
    "timestamp": {"dateTime"},
}


class AirtableOptions(TableOptions):
    """The base, how tables are named there, and the options of every table target."""

    base_id: str = Field(pattern=r"^app[A-Za-z0-9]{14}$")
    #: a table's name in Airtable when it is not the table's own name (``patients = "Patients"``)
    table_names: dict[str, str] = Field(default_factory=dict)
    #: another endpoint than https://api.airtable.com (tests point it at the local mock)
    api_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    # a long text cell holds at most 100,000 characters (airtable.com/developers/web/api/
    # field-model, "Long text"); bytes bound characters
    max_value_bytes: int = Field(default=65_536, ge=1, le=100_000)

    @field_validator("table_names")
    @classmethod
    def _table_names(cls, value: dict[str, str]) -> dict[str, str]:
        for table, name in value.items():
            if not is_identifier(table):
                raise ValueError(f"{table!r} is not a table name of this engine")
            if not name.strip() or name != name.strip() or len(name) > 255:
                raise ValueError(f"the Airtable name of {table!r} is empty, padded or too long")
        if len(set(value.values())) != len(value):
            raise ValueError("two tables map to the same Airtable table")
        return value


class _PacedSession(requests.Session):
    """Every request waits for the bucket and is counted (pyairtable sends through this)."""

    def __init__(self, bucket: TokenBucket, sent: Callable[[], None]) -> None:
        super().__init__()
        self._bucket, self._sent = bucket, sent

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._bucket.acquire()
        self._sent()
        return super().request(*args, **kwargs)


class AirtableConnector(TableConnector):
    """Rows of declared tables in one Airtable base (see the module docstring)."""

    kind: ClassVar[str] = "airtable"
    description: ClassVar[str] = (
        "Airtable tables in one base; performUpsert merged on (integration_id, patient_id, "
        "key), 10 records per request, 5 requests/s per base."
    )
    options_model: ClassVar[type[BaseModel]] = AirtableOptions
    credential_names: ClassVar[tuple[str, ...]] = ("token",)
    max_batch: ClassVar[int] = 10
    rate_limit: ClassVar[float | None] = 5.0

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        # Pacing moves from the chunk to each HTTP request (a chunk may need a lookup or a
        # metadata request too); the breaker stays on the guard.
        self.bucket = self.guard.bucket or TokenBucket(self.rate_limit or 5.0)
        self.guard = Guard(breaker=self.guard.breaker)
        if "retry" not in kwargs:  # a 30 s wait is the queue's to make, not a worker's sleep
            self.retry = RetryPolicy(
                max_attempts=3, backoff=Backoff(initial=0.2, cap=5.0), max_wait=10.0
            )
        self._api: Any = None
        self._schema: dict[str, dict[str, Any]] | None = None  # Airtable name -> table model
        #: Airtable API requests sent
        self.api_calls = 0

    @property
    def at(self) -> AirtableOptions:
        """The options, typed."""
        assert isinstance(self.options, AirtableOptions)
        return self.options

    @property
    def api(self) -> Any:
        """The pyairtable Api, built on first use (no I/O until a request)."""
        if self._api is None:
            from pyairtable import Api

            token = self.credentials["token"].get_secret_value()
            api = Api(
                token,
                timeout=_TIMEOUT,
                retry_strategy=None,  # the platform's RetryPolicy is the only retry
                endpoint_url=self.at.api_url or "https://api.airtable.com",
            )
            api.session = _PacedSession(self.bucket, self._count)
            api.api_key = token  # the Authorization header, on the paced session
            self._api = api
        return self._api

    def _count(self) -> None:
        self.api_calls += 1

    def close(self) -> None:
        """Close the HTTP session."""
        if self._api is not None:
            self._api.session.close()
            self._api = None

    # -- grouping ------------------------------------------------------------------------
    def execute_batch(self, writes: Sequence[Write]) -> list[WriteResult]:
        """The base's execute_batch per table, so a chunk of 10 is one request."""
        groups: dict[str, list[int]] = {}
        for i, w in enumerate(writes):
            groups.setdefault(getattr(w.args, "table", ""), []).append(i)
        results: list[WriteResult | None] = [None] * len(writes)
        for indexes in groups.values():
            done = super().execute_batch([writes[i] for i in indexes])
            for i, result in zip(indexes, done, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    # -- operations ----------------------------------------------------------------------
    def write_upsert_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """One upsert request per table of the chunk (plus a lookup in update/insert modes)."""
        changed: dict[tuple[str, RowId], bool] = {}
        mode = self.table_options.mode
        for table, rows in _by_table(batch).items():
            values: dict[str, Scalar] = {}
            for write in rows.values():
                assert isinstance(write.args, UpsertRow)
                values.update(write.args.values)
            columns = self.columns_of(table, values)
            target = self._table(table, columns)
            todo = dict(rows)
            if mode in ("update_only", "insert_only"):
                found = self._lookup(target, table, list(rows))
                if mode == "update_only":
                    updates = [
                        {"id": ids[0], "fields": _fields(w, columns)}
                        for rid, w in rows.items()
                        for ids in [found.get(rid, [])]
                        if ids
                    ]
                    if updates:
                        self._call(f"update {table}", partial(target.batch_update, updates))
                    changed.update({(table, rid): rid in found for rid in rows})
                    continue
                # insert_only upserts the missing rows: if another writer created one since
                # the lookup, it is overwritten rather than duplicated (a duplicate would make
                # every later upsert of that row fail with "multiple matches")
                todo = {rid: w for rid, w in rows.items() if rid not in found}
                changed.update({(table, rid): False for rid in found})
            if todo:
                records = [{"fields": _fields(w, columns)} for w in todo.values()]
                self._call(
                    f"upsert {table}",
                    partial(target.batch_upsert, records, key_fields=list(ID_FIELDS)),
                )
            changed.update({(table, rid): True for rid in todo})
        return [self.ok(w, changed=changed[_key(w)]) for w in batch]

    def write_delete_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """A lookup of the chunk's record ids per table, then one delete per 10 ids."""
        changed: dict[tuple[str, RowId], bool] = {}
        for table, rows in _by_table(batch).items():
            target = self._existing(table)
            found = {} if target is None else self._lookup(target, table, list(rows))
            ids = [i for rid in rows for i in found.get(rid, [])]
            self._delete(target, table, ids)
            changed.update({(table, rid): rid in found for rid in rows})
        return [self.ok(w, changed=changed[_key(w)]) for w in batch]

    def prune(self, scope: Scope, keep: Mapping[str, set[str]]) -> None:
        """Mirror mode: delete the scope's records whose key is not kept, table by table."""
        from pyairtable.formulas import match

        tables = set(self.table_options.tables or {}) | set(keep)
        if self.table_options.tables is None:
            tables |= self._scoped_tables()
        formula_scope = (scope.integration_id, scope.patient_id)
        formula = match(dict(zip(ID_FIELDS[:2], formula_scope, strict=True)))
        for table in sorted(tables):
            target = self._existing(table)
            if target is None:
                continue
            kept = keep.get(table, set())
            records = self._call(
                f"list {table}", partial(target.all, formula=formula, fields=list(ID_FIELDS))
            )
            doomed = []
            for record in records:
                rid = _identity(record)  # checked here too, whatever the formula matched
                if rid is not None and rid[:2] == formula_scope and rid[2] not in kept:
                    doomed.append(record["id"])
            self._delete(target, table, doomed)

    # -- records -------------------------------------------------------------------------
    def _lookup(self, target: Any, table: str, rids: list[RowId]) -> dict[RowId, list[str]]:
        """The record ids of ``rids`` (exact identity, checked here too)."""
        from pyairtable.formulas import OR, match

        ands = [match(dict(zip(ID_FIELDS, rid, strict=True))) for rid in rids]
        formula = ands[0] if len(ands) == 1 else OR(*ands)
        records = self._call(
            f"list {table}", lambda: target.all(formula=formula, fields=list(ID_FIELDS))
        )
        wanted = set(rids)
        found: dict[RowId, list[str]] = {}
        for record in records:
            rid = _identity(record)
            if rid is not None and rid in wanted:
                found.setdefault(rid, []).append(record["id"])
        return found

    def _delete(self, target: Any, table: str, ids: list[str]) -> None:
        if not ids:
            return
        # 404: a record went away since the lookup; the retry looks again
        self._call(
            f"delete {table}",
            lambda: target.batch_delete(ids),
            overrides={404: UpstreamUnavailable},
        )

    # -- tables --------------------------------------------------------------------------
    def _name(self, table: str) -> str:
        return self.at.table_names.get(table, table)

    def _tables(self, *, force: bool = False) -> dict[str, dict[str, Any]]:
        if self._schema is None or force:
            url = self.api.build_url("meta/bases", self.at.base_id, "tables")
            answer = self._call("get base schema", lambda: self.api.get(url))
            self._schema = {t["name"]: t for t in answer.get("tables", [])}
        return self._schema

    def _existing(self, table: str) -> Any | None:
        """The pyairtable Table of ``table``, or None when the base has none of that name."""
        found = self._tables().get(self._name(table))
        return None if found is None else self._checked(table, found, {})

    def _scoped_tables(self) -> set[str]:
        reverse = {v: k for k, v in self.at.table_names.items()}
        out = set()
        for name, model in self._tables().items():
            ours = reverse.get(name, name)
            names = {f["name"] for f in model.get("fields", [])}
            if is_identifier(ours) and set(SCOPE_FIELDS) <= names:
                out.add(ours)
        return out

    def _table(self, table: str, wanted: Mapping[str, ColumnType]) -> Any:
        """The pyairtable Table of ``table``, created or widened to hold ``wanted``."""
        name = self._name(table)
        model = self._tables().get(name)
        if model is None:
            fields = [{"name": n, **spec} for n, spec in SCOPE_FIELDS.items()]
            fields += [{"name": c, **FIELD_FOR[k]} for c, k in wanted.items()]
            body = {"name": name, "description": "healthie-sync rows", "fields": fields}
            url = self.api.build_url("meta/bases", self.at.base_id, "tables")
            model = self._call(
                f"create table {table}",
                lambda: self.api.post(url, json=body),
                overrides={422: ConfigurationError},
            )
            self._tables()[name] = model
        elif any(c not in _field_types(model) for c in wanted):
            model = self._tables(force=True).get(name, model)  # another worker may have added it
            for column in [c for c in wanted if c not in _field_types(model)]:
                url = self.api.build_url(
                    "meta/bases", self.at.base_id, "tables", model["id"], "fields"
                )
                spec = {"name": column, **FIELD_FOR[wanted[column]]}
                created = self._call(
                    f"create field {table}.{column}",
                    partial(self.api.post, url, json=spec),
                    overrides={422: ConfigurationError},
                )
                model.setdefault("fields", []).append(created)
        return self._checked(table, model, wanted)

    def _checked(self, table: str, model: dict[str, Any], wanted: Mapping[str, ColumnType]) -> Any:
        types = _field_types(model)
        scope = {c: spec["type"] for c, spec in SCOPE_FIELDS.items()}
        wrong = [
            c
            for c, t in scope.items()
            if types.get(c) != t
            and not (t == "singleLineText" and types.get(c) in ACCEPTED["text"])
        ]
        if wrong:
            raise ConfigurationError(
                f"target {self.name!r} (airtable): table {table} lacks the scope fields "
                f"{wrong} (or they have another type); rename it and let the connector create it"
            )
        clashes = [c for c, kind in wanted.items() if types.get(c) not in ACCEPTED[kind]]
        if clashes:
            raise ConfigurationError(
                f"target {self.name!r} (airtable): fields {clashes} of {table} have another "
                "type in Airtable than declared"
            )
        return self.api.table(self.at.base_id, model["id"])

    # -- the edge ------------------------------------------------------------------------
    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        overrides: Mapping[int, type[HealthieSyncError]] | None = None,
    ) -> T:
        try:
            return fn()
        except requests.HTTPError as exc:
            response = exc.response
            status = response.status_code if response is not None else 0
            kind = _error_type(response)
            retry_after = None
            if status == 429:
                headers = response.headers if response is not None else None
                retry_after = parse_retry_after(headers) or RATE_LIMIT_WAIT
                self.bucket.throttle(retry_after)  # every caller of this base waits it out
            if status in (403, 404):
                self._schema = None  # a table may have gone: read the schema again next time
            message = f"Airtable {what}: HTTP {status}" + (f" {kind}" if kind else "")
            raise error_for_status(
                status, message, retry_after=retry_after, overrides=overrides
            ) from exc
        except requests.RequestException as exc:
            raise UpstreamUnavailable(f"Airtable {what}: {type(exc).__name__}") from exc


def _error_type(response: requests.Response | None) -> str:
    """Airtable's error type (``{"error": {"type": ...}}`` or ``{"error": "NOT_FOUND"}``)."""
    try:
        body = response.json() if response is not None else None
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    found = error.get("type") if isinstance(error, dict) else error
    # only an upper-case code: never a message, which may quote a value
    return found if isinstance(found, str) and found.replace("_", "").isalnum() else ""


def _field_types(model: Mapping[str, Any]) -> dict[str, str]:
    return {f["name"]: f["type"] for f in model.get("fields", [])}


def _identity(record: Mapping[str, Any]) -> RowId | None:
    fields = record.get("fields", {})
    a, b, c = (fields.get(f) for f in ID_FIELDS)
    if isinstance(a, str) and isinstance(b, str) and isinstance(c, str):
        return a, b, c
    return None


def _cell(kind: ColumnType, value: Scalar) -> Scalar:
    if kind == "timestamp" and isinstance(value, str):
        return _utc(datetime.fromisoformat(value))
    return value


def _utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _fields(write: Write, columns: Mapping[str, ColumnType]) -> dict[str, Any]:
    args = write.args
    assert isinstance(args, UpsertRow)
    s = write.scope
    fields: dict[str, Any] = {
        "integration_id": s.integration_id,
        "patient_id": s.patient_id,
        "key": args.key,
        "run_id": s.run_id,
        "synced_at": _utc(s.synced_at),
    }
    fields.update({c: _cell(k, args.values.get(c)) for c, k in columns.items()})
    return fields


def _key(write: Write) -> tuple[str, RowId]:
    args = write.args
    assert isinstance(args, UpsertRow | DeleteRow)
    return args.table, (write.scope.integration_id, write.scope.patient_id, args.key)


def _by_table(batch: Sequence[Write]) -> dict[str, dict[RowId, Write]]:
    """The chunk's writes per table and row (a row named twice: the later write wins)."""
    out: dict[str, dict[RowId, Write]] = {}
    for write in batch:
        table, rid = _key(write)
        out.setdefault(table, {})[rid] = write
    return out


__all__ = ["AirtableConnector", "AirtableOptions"]
