"""File targets: CSV, JSON Lines, Excel and Parquet files appended run by run, to a local
directory (``path``) or to S3 (``url = "s3://bucket/prefix"``).

Layout: one file per chunk, table, run and day of the sync (UTC)::

    <root>/<table>/date=<YYYY-MM-DD>/<run_id>-<digest>.<csv|jsonl|xlsx|parquet>

(the run id as a file name: letters, digits and ``-``, anything else ``_``). Each row holds the
scope columns ``integration_id, patient_id, key, run_id, synced_at`` (ISO 8601 UTC; a timestamp
in Excel and Parquet), then the table's columns in declared order (an undeclared table: the
chunk's value columns, sorted). ``digest`` is a short sha256 of the file's rows (table, column
names, row ids, run id and values; not the sync time), so a chunk written again (a retry, or a
redelivered item batched alike) replaces its own file instead of adding a copy. Otherwise files
are an append log: a reader keeps the newest ``synced_at`` of each ``(integration_id,
patient_id, key)``, and readers skip dot files (a writer's temporary files).

Files cannot delete: ``delete_row`` appends a tombstone row, the scope columns and
``_deleted = true`` (in files of their own; row files have no ``_deleted`` column). Nothing
is ever rewritten or pruned, so the only sync mode is ``upsert``; results always report
``changed`` (a file target cannot know what an earlier file held).

Atomicity and error kinds: ``connectors.file_stores`` (nothing half-written is ever visible
under a final name; a chunk publishes its files only after all of them encoded). Encodings:
``connectors.file_formats`` (CSV nulls, Excel's limits, the Parquet schema).

S3 credentials come only from the target's secrets (``aws_access_key_id``,
``aws_secret_access_key``, optionally ``aws_session_token``), never from the environment or an
instance role; boto3's own retries are off so the platform's retry policy is the only one.
"""

from __future__ import annotations

import hashlib
import marshal
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from app.core.errors import ConfigurationError, TargetRejected
from app.resilience.guard import Guard
from app.resilience.retry import RetryPolicy
from connectors.base import Write, WriteResult
from connectors.file_formats import ENCODERS, Sheet
from connectors.file_stores import FileSpec, LocalStore, S3Store
from connectors.tables import (
    SCOPE_COLUMNS,
    ColumnType,
    Scalar,
    SyncMode,
    TableConnector,
    TableOptions,
)

_S3_URL = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?")
#: what a run id keeps in a file name (no path separators, no leading dot)
_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")
SCOPE_TYPES: tuple[ColumnType, ...] = ("text", "text", "text", "text", "timestamp")
DELETED = "_deleted"
S3_CREDENTIALS = ("aws_access_key_id", "aws_secret_access_key")


class FileOptions(TableOptions):
    """Where the files go: exactly one of ``path`` or ``url``."""

    #: a local directory (it must exist)
    path: str | None = Field(default=None, min_length=1)
    #: ``s3://bucket/prefix``
    url: str | None = None
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]{2,32}$")
    #: another S3 endpoint (an S3-compatible store, a test server); AWS's when unset
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://\S+$")

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and _S3_URL.fullmatch(value) is None:
            raise ValueError("must be s3://bucket/prefix (a valid bucket name)")
        return value

    @model_validator(mode="after")
    def _one_destination(self) -> FileOptions:
        if (self.path is None) == (self.url is None):
            raise ValueError("set exactly one of path (a local directory) or url (s3://...)")
        if self.endpoint_url is not None and self.url is None:
            raise ValueError("endpoint_url applies to url only")
        return self

    @property
    def bucket_and_prefix(self) -> tuple[str, str]:
        """The bucket and the key prefix (no leading or trailing slash) of ``url``."""
        match = _S3_URL.fullmatch(self.url or "")
        assert match is not None
        prefix = "/".join(p for p in (match["prefix"] or "").split("/") if p)
        return match["bucket"], prefix


def _iso_utc(moment: datetime) -> str:
    return (
        moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    ).isoformat()


def digest(sheet: Sheet) -> str:
    """A short sha256 of the sheet's table, columns, row ids, run and values (not the time).

    The columns are serialised with marshal format 2: exact for str/int/float/bool/None, and,
    unlike later formats and pickle, free of back-references, so equal data gives equal bytes
    whichever objects hold it (a redelivered item is decoded afresh). A Python upgrade that
    changed the format would only write one more copy of a chunk retried across it.
    """
    columns = list(sheet.data)
    del columns[4]  # synced_at: a retry's is later (run_id stays: the name holds it sanitised)
    data = marshal.dumps((sheet.table, sheet.columns, columns), 2)
    return hashlib.sha256(data).hexdigest()[:16]


class FileConnector(TableConnector):
    """What every file format shares (see the module docstring); subclasses name a format."""

    options_model: ClassVar[type[BaseModel]] = FileOptions
    modes: ClassVar[tuple[SyncMode, ...]] = ("upsert",)
    #: needed with ``url`` only (``from_config`` checks)
    credential_names: ClassVar[tuple[str, ...]] = S3_CREDENTIALS
    #: files like big chunks: one file per 5,000 rows
    max_batch: ClassVar[int] = 5000
    # One token per chunk call; a chunk costs 3 S3 requests per file (create, part, complete).
    # S3 takes 3,500 writes/s per prefix: 500 chunks/s (about 1,500 writes/s for one table)
    # leaves room for other writers of the bucket; a local disk is never near it.
    rate_limit: ClassVar[float | None] = 500.0
    #: the file name extension, also the encoder's name in ``file_formats.ENCODERS``
    extension: ClassVar[str]

    @classmethod
    def required_credentials(cls, options: BaseModel) -> tuple[str, ...]:
        """S3 keys with ``url``; a local ``path`` needs none."""
        assert isinstance(options, FileOptions)
        return cls.credential_names if options.url is not None else ()

    def __init__(
        self,
        name: str,
        options: BaseModel | None = None,
        credentials: Mapping[str, SecretStr] | None = None,
        *,
        guard: Guard | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(name, options, credentials, guard=guard, retry=retry)
        self.store: LocalStore | S3Store = self._open_store()
        #: files published
        self.files_written = 0

    def probe(self) -> str:
        """See :meth:`Connector.probe`: the directory or bucket, without writing."""
        return self.store.probe()

    @property
    def file_options(self) -> FileOptions:
        """The options, typed."""
        assert isinstance(self.options, FileOptions)
        return self.options

    def _open_store(self) -> LocalStore | S3Store:
        options = self.file_options
        label = f"target {self.name!r} ({self.kind})"
        if options.path is not None:
            return LocalStore(Path(options.path), label)
        missing = [c for c in S3_CREDENTIALS if c not in self.credentials]
        if missing:
            raise ConfigurationError(f"{label} needs credentials {missing} for options.url")
        bucket, prefix = options.bucket_and_prefix
        return S3Store.connect(
            bucket,
            prefix,
            label,
            region=options.region,
            endpoint_url=options.endpoint_url,
            credentials={k: v.get_secret_value() for k, v in self.credentials.items()},
        )

    # -- writing ---------------------------------------------------------------------------
    def write_upsert_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Append the rows, one file per table (and run and day) of the chunk."""
        return self._write(batch, tombstones=False)

    def write_delete_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Append tombstone rows (``_deleted = true``): files cannot delete."""
        return self._write(batch, tombstones=True)

    def _write(self, batch: Sequence[Write], *, tombstones: bool) -> list[WriteResult]:
        # Grouped through C-level maps (a batch is often one table, one run, one day).
        ats = list(map(attrgetter("scope.synced_at"), batch))
        stamps = {at: _iso_utc(at) for at in set(ats)}  # synced_at -> its ISO text
        days = {at: stamp[:10] for at, stamp in stamps.items()}
        keys = list(
            zip(
                map(attrgetter("args.table"), batch),
                map(attrgetter("scope.run_id"), batch),
                map(days.__getitem__, ats),
                strict=True,
            )
        )
        groups: dict[tuple[str, str, str], list[Write]] = {}
        if len(set(keys)) == 1:
            groups[keys[0]] = list(batch)
        else:
            for key, write in zip(keys, batch, strict=True):
                groups.setdefault(key, []).append(write)
        files: list[FileSpec] = []
        for (table, run_id, day), writes in groups.items():
            sheet = self._sheet(table, writes, tombstones, stamps)
            run = _UNSAFE.sub("_", run_id).strip("_")[:96] or "run"
            name = f"{table}/date={day}/{run}-{digest(sheet)}.{self.extension}"
            files.append((name, partial(ENCODERS[self.extension], sheet)))
        before = self.store.requests
        try:
            self.store.write_files(files)
        except UnicodeEncodeError:  # a lone surrogate (in a key): no file format can hold it
            raise TargetRejected(f"{self.name}: a text is not valid Unicode") from None
        finally:  # the base counted one request for this call: add the others
            self.requests += max(0, self.store.requests - before - 1)
        self.files_written += len(files)
        # self.ok(write) without its per-write lookups: a table row's key is its ``key``
        target = self.name
        return [WriteResult(target, w.operation, w.args.key) for w in batch]  # type: ignore[attr-defined]

    def _sheet(
        self,
        table: str,
        writes: Sequence[Write],
        tombstones: bool,
        stamps: Mapping[datetime, str],
    ) -> Sheet:
        # Column by column through C-level map: no Python step per row and value.
        scopes = list(map(attrgetter("scope"), writes))
        args: list[Any] = list(map(attrgetter("args"), writes))  # UpsertRow | DeleteRow
        data: list[list[Scalar]] = [
            list(map(attrgetter("integration_id"), scopes)),
            list(map(attrgetter("patient_id"), scopes)),
            list(map(attrgetter("key"), args)),
            list(map(attrgetter("run_id"), scopes)),
            list(map(stamps.__getitem__, map(attrgetter("synced_at"), scopes))),
        ]
        if tombstones:
            data.append([True] * len(writes))
            return Sheet(table, (*SCOPE_COLUMNS, DELETED), (*SCOPE_TYPES, "boolean"), data)
        values: list[dict[str, Scalar]] = list(map(attrgetter("values"), args))
        union: dict[str, Scalar] = {}
        if (self.table_options.tables or {}).get(table) is None:  # undeclared: what was written
            union = dict.fromkeys(sorted({c for v in values for c in v}))
        columns = self.columns_of(table, union)
        data += [list(map(dict.get, values, repeat(c))) for c in columns]
        return Sheet(table, (*SCOPE_COLUMNS, *columns), (*SCOPE_TYPES, *columns.values()), data)

    def close(self) -> None:
        """Close the S3 client's connections (nothing to close for a local directory)."""
        if isinstance(self.store, S3Store):
            self.store.client.close()


class CsvConnector(FileConnector):
    """CSV files (UTF-8, a header row; a bare empty field is null, ``""`` the empty text)."""

    kind: ClassVar[str] = "csv"
    description: ClassVar[str] = (
        "CSV files appended per run, partitioned by date, in a local directory or on S3."
    )
    extension: ClassVar[str] = "csv"


class JsonLinesConnector(FileConnector):
    """JSON Lines files (one object per row)."""

    kind: ClassVar[str] = "jsonl"
    description: ClassVar[str] = (
        "JSON Lines files appended per run, partitioned by date, in a local directory or on S3."
    )
    extension: ClassVar[str] = "jsonl"


class ExcelConnector(FileConnector):
    """Excel workbooks (.xlsx), one sheet named after the table."""

    kind: ClassVar[str] = "excel"
    description: ClassVar[str] = (
        "Excel workbooks appended per run, partitioned by date, in a local directory or on S3 "
        "(cells hold at most 32,767 characters)."
    )
    extension: ClassVar[str] = "xlsx"


class ParquetConnector(FileConnector):
    """Parquet files with a schema typed from the declared columns."""

    kind: ClassVar[str] = "parquet"
    description: ClassVar[str] = (
        "Parquet files (typed schema) appended per run, partitioned by date, in a local "
        "directory or on S3."
    )
    extension: ClassVar[str] = "parquet"
