"""MongoDB documents (pymongo): a collection per table, one unordered ``bulk_write`` per
collection and chunk, each document keyed by the write's scope.

::

    per chunk (<= 1,000 writes)            MongoDB commands (pymongo)
    ───────────────────────────            ─────────────────────────────────────────────────
    first use of a collection              createIndexes: unique {integration_id: 1,
                                             patient_id: 1, key: 1} ("healthie_sync_identity")
    upsert_row, per collection             find: the chunk's documents' content digests only
                                           bulk_write(ordered=False): UpdateOne(identity,
                                             {"$set": document}, upsert=True) per new or
                                             changed row (none sent when nothing changed)
    delete_row, per collection             find (which exist), bulk_write of DeleteOne
    mirror prune, per collection           delete_many(integration, patient, key $nin kept)

A document is ``{integration_id, patient_id, key, run_id, synced_at, <values>, _sync_digest}``;
the identity comes from the scope, never the plan (see ``connectors.tables``), and the unique
index makes it so at the database too. A declared table's document carries every declared
column (a value the write leaves out is null, as the other table targets replace a row); an
undeclared table's carries the written values as text (a field an earlier write set and this
one leaves out stays). Dates are BSON datetimes at midnight UTC, timestamps BSON datetimes in
UTC (BSON keeps milliseconds: finer digits are dropped).

Which writes changed: a bulk write reports counts (matched, modified, upserted), not which
operation did what (and mongomock's upserted indexes are positions, not operation indexes).
So each chunk first reads the stored ``_sync_digest`` (a SHA-256 of the row's values) of the
rows it names, one ``find`` per collection, and sends only rows that are new or differ (as the
mode allows): those are the changed ones, exactly, and an unchanged document keeps its run and
time. A row named twice in a chunk is applied in order (only its last differing content is
sent). The read and the write are not one transaction: a concurrent writer of the same row
between them (the engine's per-patient lease rules that out) can make the report stale, never
the data a mix of two writes. Modes: ``update_only`` sends ``upsert=False`` updates of rows
that exist, ``insert_only`` ``$setOnInsert`` upserts of rows that do not.

Per-write failures: the bulk is unordered, so the server applies every operation it can and
``BulkWriteError.details["writeErrors"]`` names the refused ones by index; each becomes its own
write's error (code only: MongoDB's messages quote the duplicate key's values), so one refused
document fails only its patient. Errors are mapped here: AutoReconnect (incl. server selection
timeouts, network errors, not-primary) and transient server codes -> UpstreamUnavailable;
authentication and authorization codes, a bad connection string, a conflicting index ->
ConfigurationError; document validation (121), duplicate keys (11000) and other refusals ->
TargetRejected; write-concern errors -> UpstreamUnavailable (the write is idempotent). The
driver's own retries are off (``retryWrites=False``, ``retryReads=False``): the platform's
RetryPolicy is the only one.

Vendor limits (www.mongodb.com/docs/manual/reference/limits/): 100,000 writes per write
command ("Write Command Batch Limit Size", since 3.6) and 16 MiB per document; pymongo splits
a bulk larger than that or than the 48 MB message size itself. A chunk here is at most 1,000
writes, so its digest read stays small. MongoDB publishes no request rate limit, except Atlas's
shared tiers ("Atlas M0 (Free Cluster) Limits": 100 operations per second on M0, which Atlas
throttles rather than refuses), so the connector is unpaced (``rate_limit`` None).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, time
from datetime import date as date_type
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from pymongo import DeleteOne, MongoClient, UpdateOne
from pymongo import errors as perr

from app.core.errors import (
    ConfigurationError,
    HealthieSyncError,
    PlanValidationError,
    UpstreamUnavailable,
)
from app.resilience.guard import Guard
from connectors.base import Connector, Scope, Write, WriteResult
from connectors.mongodb_errors import INDEX_NAME, for_code, mapped
from connectors.tables import (
    ColumnType,
    DeleteRow,
    Scalar,
    TableConnector,
    TableOptions,
    UpsertRow,
    is_identifier,
)

RowId = tuple[str, str, str]  # (integration_id, patient_id, key) within one collection
Outcome = tuple[bool, HealthieSyncError | None]  # (changed, error) of one write
ClientFactory = Callable[..., Any]  # pymongo.MongoClient's signature (tests: mongomock's)

IDENTITY = ("integration_id", "patient_id", "key")
DIGEST = "_sync_digest"
_INT64 = (-(2**63), 2**63 - 1)
_MAX_DOCUMENT = 15 * 1024 * 1024  # BSON's 16 MiB, less room for field names and scope


class MongoOptions(TableOptions):
    """Where the collections live; the tables, mode and size cap of every table target."""

    database: str = Field(pattern=r"^[A-Za-z0-9_-]{1,63}$")
    #: how long a command waits for a usable server before it fails (and is retried later)
    server_selection_timeout_ms: int = Field(default=10_000, ge=100, le=60_000)


class MongoConnector(TableConnector):
    """Documents in one MongoDB database, a collection per table (see the module docstring)."""

    kind: ClassVar[str] = "mongodb"
    description: ClassVar[str] = (
        "MongoDB documents, a collection per table, upserted by (integration_id, patient_id, "
        "key) with one unordered bulk_write per collection and chunk."
    )
    options_model: ClassVar[type[BaseModel]] = MongoOptions
    credential_names: ClassVar[tuple[str, ...]] = ("uri",)
    max_batch: ClassVar[int] = 1_000

    def __init__(
        self, name: str, *args: Any, client_factory: ClientFactory | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name, *args, **kwargs)
        uri = self.credentials.get("uri")
        if uri is not None and not uri.get_secret_value().startswith(
            ("mongodb://", "mongodb+srv://")
        ):
            raise ConfigurationError(
                f"target {name!r} (mongodb): credentials.uri is not a MongoDB connection "
                "string (mongodb://... or mongodb+srv://...)"
            )
        self._factory: ClientFactory = client_factory or MongoClient
        self._client: Any = None
        self._lock = threading.Lock()
        self._indexed: set[str] = set()  # collections whose identity index exists
        self._local = threading.local()  # commands sent by this thread's current call

    @classmethod
    def from_config(
        cls,
        name: str,
        options: Mapping[str, Any],
        credentials: Mapping[str, str],
        *,
        guard: Guard | None = None,
        client_factory: ClientFactory | None = None,
    ) -> Connector:
        """Build from a target's config; ``client_factory`` replaces ``pymongo.MongoClient``
        (tests pass ``mongomock.MongoClient``)."""
        built = super().from_config(name, options, credentials, guard=guard)
        assert isinstance(built, MongoConnector)
        if client_factory is not None:
            built._factory = client_factory
        return built

    @property
    def mongo(self) -> MongoOptions:
        """The options, typed."""
        assert isinstance(self.options, MongoOptions)
        return self.options

    @property
    def client(self) -> Any:
        """The driver's client, built on first use (it connects in the background then)."""
        with self._lock:
            if self._client is None:
                uri = self.credentials["uri"].get_secret_value()
                timeout = self.mongo.server_selection_timeout_ms
                with mapped(self._where("connect")):
                    self._client = self._factory(
                        uri,
                        serverSelectionTimeoutMS=timeout,
                        connectTimeoutMS=min(timeout, 10_000),
                        socketTimeoutMS=60_000,
                        appname="healthie-sync",
                        tz_aware=True,
                        retryWrites=False,  # the platform's RetryPolicy retries
                        retryReads=False,
                        connect=False,
                    )
            return self._client

    def close(self) -> None:
        """Close the client's connection pool."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def collection(self, table: str) -> Any:
        """The collection of ``table``."""
        return self.client[self.mongo.database][table]

    # -- configuration checks ------------------------------------------------------------
    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """The table checks, and what BSON cannot hold: integers beyond 64 bits, documents
        over 16 MiB."""
        checked = super().check_args(options, operation, args)
        if isinstance(checked, UpsertRow):
            size = 0
            for column, value in checked.values.items():
                if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
                    raise PlanValidationError(
                        f"{checked.table}.{column}: outside MongoDB's 64-bit integer range"
                    )
                size += len(value.encode("utf-8")) if isinstance(value, str) else 8
            if size > _MAX_DOCUMENT:
                raise PlanValidationError(f"{checked.table}: document larger than 16 MiB")
        return checked

    # -- operations ----------------------------------------------------------------------
    def write_upsert_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Per collection: read the digests, one bulk_write of the new or changed rows."""
        return self._per_collection(batch, self._upsert)

    def write_delete_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Per collection: read which rows exist, one bulk_write deleting those."""
        return self._per_collection(batch, self._delete)

    def prune(self, scope: Scope, keep: Mapping[str, set[str]]) -> None:
        """Mirror mode: delete the scope's documents whose keys are not kept, one delete_many
        per declared collection (undeclared: every collection carrying the identity index)."""
        where = self._where("prune")
        with self._counting(first_is_counted=False), mapped(where):
            tables = sorted(self.table_options.tables or {})
            if self.table_options.tables is None:
                self._sent()
                listed = self.client[self.mongo.database].list_collection_names()
                tables = [t for t in sorted(listed) if is_identifier(t) and self._ours(t)]
            for table in tables:
                self._sent()
                self.collection(table).delete_many(
                    {
                        "integration_id": scope.integration_id,
                        "patient_id": scope.patient_id,
                        "key": {"$nin": sorted(keep.get(table, ()))},
                    }
                )

    def probe(self) -> str:
        """See :meth:`Connector.probe`: listCollections on the database (nothing is written;
        a user without rights on it is refused here as a write would be)."""
        with mapped(self._where("probe")):
            names = self.client[self.mongo.database].list_collection_names()
        return f"database {self.mongo.database!r} answers listCollections ({len(names)} found)"

    def ensure_tables(self) -> None:
        """Create every declared collection's identity index now (else the first write does)."""
        with mapped(self._where("index")):
            for table in self.table_options.tables or {}:
                self._indexed_collection(table)

    def fetch_rows(self, table: str) -> list[dict[str, Any]]:
        """Every document of ``table`` (all integrations and patients), without ``_id`` and
        the digest."""
        with mapped(self._where(f"read {table}")):
            return list(self.collection(table).find({}, {"_id": 0, DIGEST: 0}))

    # -- one collection ------------------------------------------------------------------
    def _per_collection(
        self, batch: Sequence[Write], apply: Callable[[str, list[Write]], list[Outcome]]
    ) -> list[WriteResult]:
        outcome: list[Outcome] = [(False, None)] * len(batch)
        with self._counting(first_is_counted=True):
            for table, indexes in _by_table(batch).items():
                done = apply(table, [batch[i] for i in indexes])
                for i, result in zip(indexes, done, strict=True):
                    outcome[i] = result
        return [
            WriteResult(self.name, w.operation, _rid(w)[2], changed and error is None, error)
            for w, (changed, error) in zip(batch, outcome, strict=True)
        ]

    def _delete(self, table: str, writes: list[Write]) -> list[Outcome]:
        where = self._where(f"delete {table}")
        rids = [_rid(w) for w in writes]
        coll = self.collection(table)
        found = self._digests(where, coll, rids)
        first: dict[RowId, int] = {}  # row -> its first delete (the one that deletes it)
        for n, rid in enumerate(rids):
            if rid in found:
                first.setdefault(rid, n)
        errors = self._bulk(where, coll, [DeleteOne(_filter(rid)) for rid in first])
        out: list[Outcome] = [(False, None)] * len(writes)
        for op, n in enumerate(first.values()):
            out[n] = (op not in errors, errors.get(op))
        return out

    def _upsert(self, table: str, writes: list[Write]) -> list[Outcome]:
        where = self._where(f"upsert {table}")
        mode = self.table_options.mode
        with mapped(where):
            coll = self._indexed_collection(table)
        docs = [self._document(table, w) for w in writes]
        state = self._digests(where, coll, [rid for rid, _ in docs])
        sent: dict[RowId, int] = {}  # row -> the write whose content is sent (its last change)
        changes: dict[RowId, list[int]] = {}  # row -> the writes reported changed
        for n, (rid, fields) in enumerate(docs):
            exists = rid in state
            if (mode == "insert_only" and exists) or (mode == "update_only" and not exists):
                continue
            if exists and state[rid] == fields[DIGEST]:
                continue
            state[rid] = fields[DIGEST]
            sent[rid] = n
            changes.setdefault(rid, []).append(n)
        ops = []
        for rid, n in sent.items():
            fields = docs[n][1]
            if mode == "insert_only":
                ops.append(UpdateOne(_filter(rid), {"$setOnInsert": fields}, upsert=True))
            else:
                ops.append(UpdateOne(_filter(rid), {"$set": fields}, upsert=mode != "update_only"))
        errors = self._bulk(where, coll, ops)
        out: list[Outcome] = [(False, None)] * len(writes)
        for op, rid in enumerate(sent):
            for n in changes[rid]:
                out[n] = (op not in errors, errors.get(op))
        return out

    def _document(self, table: str, write: Write) -> tuple[RowId, dict[str, Any]]:
        args = write.args
        assert isinstance(args, UpsertRow)
        declared = (self.table_options.tables or {}).get(table)
        kinds: Mapping[str, ColumnType] = declared or {}
        if declared is None:  # undeclared: the written values, as text (checked so)
            kinds = {c: "text" for c in args.values}
        values = {c: args.values.get(c) for c in kinds}
        text = json.dumps(sorted(values.items()), ensure_ascii=False, separators=(",", ":"))
        fields: dict[str, Any] = {c: _bson(kinds[c], v) for c, v in values.items()}
        fields["run_id"] = write.scope.run_id
        fields["synced_at"] = write.scope.synced_at.astimezone(UTC)
        fields[DIGEST] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return _rid(write), fields

    def _digests(self, where: str, coll: Any, rids: list[RowId]) -> dict[RowId, str]:
        """The stored digest of each of ``rids`` that exists ("" if it has none)."""
        keys: dict[tuple[str, str], set[str]] = {}
        for integration, patient, key in rids:
            keys.setdefault((integration, patient), set()).add(key)
        clauses = [
            {"integration_id": i, "patient_id": p, "key": {"$in": sorted(k)}}
            for (i, p), k in keys.items()
        ]
        query = clauses[0] if len(clauses) == 1 else {"$or": clauses}
        projection = {"_id": 0, "integration_id": 1, "patient_id": 1, "key": 1, DIGEST: 1}
        with mapped(where):
            self._sent()
            return {
                (d["integration_id"], d["patient_id"], d["key"]): str(d.get(DIGEST, ""))
                # one batch: the default first batch (101 documents) would cost a getMore
                for d in coll.find(query, projection, batch_size=max(len(rids), 1))
            }

    def _bulk(self, where: str, coll: Any, ops: list[Any]) -> dict[int, HealthieSyncError]:
        """One unordered bulk_write; the error of each refused operation, by its index."""
        if not ops:
            return {}
        with mapped(where):
            try:
                self._sent()
                coll.bulk_write(ops, ordered=False)
            except perr.BulkWriteError as exc:
                details = exc.details or {}
                if details.get("writeConcernErrors"):
                    raise UpstreamUnavailable(
                        f"{where}: the write concern was not met (the writes are retried)"
                    ) from None
                return {
                    int(e["index"]): for_code(f"{where}: the document was refused", e.get("code"))
                    for e in details.get("writeErrors", [])
                }
        return {}

    def _indexed_collection(self, table: str) -> Any:
        coll = self.collection(table)
        if table not in self._indexed:
            self._sent()
            coll.create_index([(c, 1) for c in IDENTITY], unique=True, name=INDEX_NAME)
            with self._lock:
                self._indexed.add(table)
        return coll

    def _ours(self, table: str) -> bool:
        if table in self._indexed:
            return True
        self._sent()
        return INDEX_NAME in self.collection(table).index_information()

    # -- counting and errors -------------------------------------------------------------
    def _where(self, what: str) -> str:
        return f"target {self.name!r} (mongodb): {what}"

    def _sent(self) -> None:
        self._local.sent = getattr(self._local, "sent", 0) + 1

    @contextmanager
    def _counting(self, *, first_is_counted: bool) -> Iterator[None]:
        self._local.sent = 0
        try:
            yield
        finally:  # the base counted one request per chunk already
            self.requests += max(0, self._local.sent - (1 if first_is_counted else 0))


def _bson(kind: ColumnType, value: Scalar) -> Any:
    """A validated value as BSON stores it: dates and timestamps as UTC datetimes."""
    if value is None or not isinstance(value, str):
        return value
    if kind == "date":
        return datetime.combine(date_type.fromisoformat(value), time(), UTC)
    if kind == "timestamp":
        moment = datetime.fromisoformat(value)
        # A timestamp without an offset is taken as UTC, the engine's clock (as SQL does).
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    return value


def _rid(write: Write) -> RowId:
    args = write.args
    assert isinstance(args, UpsertRow | DeleteRow)
    return (write.scope.integration_id, write.scope.patient_id, args.key)


def _filter(rid: RowId) -> dict[str, str]:
    return dict(zip(IDENTITY, rid, strict=True))


def _by_table(batch: Sequence[Write]) -> dict[str, list[int]]:
    tables: dict[str, list[int]] = {}
    for i, write in enumerate(batch):
        args = write.args
        assert isinstance(args, UpsertRow | DeleteRow)
        tables.setdefault(args.table, []).append(i)
    return tables
