"""The file targets in the connector contract suite: each format to a local directory, and to
S3 on the session's moto server (``tests.servers.s3``).

Reading back parses every file of a table with a reader independent of the writer: pyarrow's
CSV reader (which tells a bare empty field, null, from a quoted one, ""), ``json``, openpyxl's
read-only workbook, pyarrow's Parquet reader. Values come back typed by the connector's declared
columns: integers as int, numbers as float, booleans as bool, dates as ``date``, timestamps as
``datetime`` (aware when the file kept an offset; Excel and Parquet hold UTC).

S3 is an HTTP target: ``fault(status)`` answers every request of the backend's connectors with
that status before it leaves the client (a botocore ``before-send`` hook), so the answer goes
through botocore's parser and the connector's error mapping as a real one would.

A file is written whole (no per-row refusal: ``poison`` is None) and a file target cannot know
whether a write changed anything (``reports_unchanged`` is False).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from itertools import zip_longest
from pathlib import Path
from typing import Any

from connectors.base import Connector
from connectors.file_stores import S3Store
from connectors.files import DELETED, S3_CREDENTIALS, SCOPE_TYPES, FileConnector
from connectors.registry import load
from connectors.tables import SCOPE_COLUMNS
from tests.contracts.targets import BackendFactory, Rows, TargetBackend
from tests.servers.s3 import moto_s3_for

#: file name extension of each connector kind
EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "excel": "xlsx", "parquet": "parquet"}


# -- decoding -----------------------------------------------------------------------------
def decode_csv(data: bytes) -> list[dict[str, Any]]:
    """Rows of a CSV file, every value text or None."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    header = next(csv.reader([data.split(b"\r\n", 1)[0].decode("utf-8")]))  # plain names
    table = pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(block_size=max(1 << 20, len(data) + 1)),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={c: pa.string() for c in header},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    return list(table.to_pylist())


def decode_jsonl(data: bytes) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file."""
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line]


def decode_excel(data: bytes) -> list[dict[str, Any]]:
    """Rows of the (only) sheet of a workbook, empty cells as None."""
    from openpyxl import load_workbook

    book = load_workbook(io.BytesIO(data), read_only=True)
    try:
        (sheet,) = book.worksheets
        rows = list(sheet.iter_rows(values_only=True))
    finally:
        book.close()
    header = [str(c) for c in rows[0]]
    return [dict(zip_longest(header, row)) for row in rows[1:]]


def decode_parquet(data: bytes) -> list[dict[str, Any]]:
    """Rows of a Parquet file."""
    import pyarrow.parquet as pq

    return list(pq.read_table(io.BytesIO(data)).to_pylist())


DECODERS = {
    "csv": decode_csv,
    "jsonl": decode_jsonl,
    "xlsx": decode_excel,
    "parquet": decode_parquet,
}


def typed(kind: str, value: Any) -> Any:
    """A decoded value as the Python value of its column type."""
    if value is None:
        return None
    if kind == "integer":
        return value if isinstance(value, int) else int(value)
    if kind == "number":
        return float(value)
    if kind == "boolean":
        return value if isinstance(value, bool) else value == "true"
    if kind == "date":
        if isinstance(value, datetime):  # Excel: a date cell reads back as midnight
            return value.date()
        return value if isinstance(value, date) else date.fromisoformat(value)
    if kind == "timestamp":
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
        if not isinstance(value, str) and moment.tzinfo is None:  # Excel holds UTC
            moment = moment.replace(tzinfo=UTC)
        return moment
    return value


def column_types(connector: Connector, table: str) -> dict[str, str]:
    """The types of every column a file of ``table`` may hold (undeclared ones: text)."""
    assert isinstance(connector, FileConnector)
    declared = (connector.table_options.tables or {}).get(table) or {}
    return {**dict(zip(SCOPE_COLUMNS, SCOPE_TYPES, strict=True)), **declared, DELETED: "boolean"}


def file_names(connector: Connector, table: str) -> list[str]:
    """Every published file of ``table`` (its name below the root), sorted."""
    assert isinstance(connector, FileConnector)
    store = connector.store
    if isinstance(store, S3Store):
        prefix = store.key(f"{table}/")
        pages = store.client.get_paginator("list_objects_v2").paginate(
            Bucket=store.bucket, Prefix=prefix
        )
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        return sorted(k[len(store.key("")) :] for k in keys)
    root = store.root
    return sorted(str(p.relative_to(root)) for p in (root / table).rglob("*") if p.is_file())


def file_bytes(connector: Connector, name: str) -> bytes:
    """The content of the published file ``name``."""
    assert isinstance(connector, FileConnector)
    store = connector.store
    if isinstance(store, S3Store):
        reply = store.client.get_object(Bucket=store.bucket, Key=store.key(name))
        return bytes(reply["Body"].read())
    return (store.root / name).read_bytes()


def read_rows(connector: Connector, table: str) -> Rows:
    """Every row of every published (non-hidden) file of ``table``, typed back."""
    types = column_types(connector, table)
    rows: Rows = []
    for name in file_names(connector, table):
        if Path(name).name.startswith("."):
            continue  # a writer's temporary file, never a published one
        decode = DECODERS[name.rsplit(".", 1)[-1]]
        for row in decode(file_bytes(connector, name)):
            rows.append({c: typed(types.get(c, "text"), v) for c, v in row.items()})
    return rows


# -- backends -----------------------------------------------------------------------------
def _local(kind: str) -> BackendFactory:
    def factory(request: Any) -> Iterator[TargetBackend]:
        root: Path = request.getfixturevalue("tmp_path") / f"{kind}-files"
        root.mkdir()
        cls = load(kind)

        def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
            return cls.from_config(
                "warehouse", {**options, "path": str(root)}, dict(credentials or {})
            )

        yield TargetBackend(
            name=kind,
            build=build,
            read=read_rows,
            modes=("upsert",),
            credential_names=(),
            poison=None,
            reports_unchanged=False,
        )

    return factory


class _Raw:
    """The raw body botocore reads an answer from."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


#: the S3 error code answered with each injected status
FAULT_CODES = {429: "TooManyRequests", 503: "ServiceUnavailable", 401: "Unauthorized"}


def s3_fault(connectors: list[Connector]) -> Any:
    """``fault(status)``: a context in which every S3 request of ``connectors`` is answered
    with ``status`` and an S3 error document (botocore's own parser reads it), before it is
    sent."""
    from botocore.awsrequest import AWSResponse, HTTPHeaders

    @contextmanager
    def fault(status: int) -> Iterator[None]:
        code = FAULT_CODES.get(status, "InternalError")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>injected</Message>"
            "<RequestId>fault</RequestId></Error>"
        ).encode()

        def answer(request: Any, **_: Any) -> AWSResponse:
            headers = HTTPHeaders()
            headers["Content-Type"] = "application/xml"
            headers["Content-Length"] = str(len(body))
            return AWSResponse(request.url, status, headers, _Raw(body))

        clients = [
            c.store.client
            for c in connectors
            if isinstance(c, FileConnector) and isinstance(c.store, S3Store)
        ]
        for client in clients:
            client.meta.events.register_first("before-send.s3", answer, unique_id="fault")
        try:
            yield
        finally:
            for client in clients:
                client.meta.events.unregister("before-send.s3", unique_id="fault")

    return fault


def _s3(kind: str) -> BackendFactory:
    def factory(request: Any) -> Iterator[TargetBackend]:
        server = moto_s3_for(request)
        bucket = server.create_bucket()
        cls = load(kind)
        built: list[Connector] = []

        def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
            connector = _build(options, credentials)
            built.append(connector)
            return connector

        def _build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
            return cls.from_config(
                "warehouse",
                {
                    **options,
                    "url": f"s3://{bucket}/exports/healthie",
                    "endpoint_url": server.endpoint_url,
                },
                server.credentials if credentials is None else dict(credentials),
            )

        try:
            yield TargetBackend(
                name=f"{kind}-s3",
                build=build,
                read=read_rows,
                modes=("upsert",),
                credential_names=S3_CREDENTIALS,
                fault=s3_fault(built),
                poison=None,
                reports_unchanged=False,
            )
        finally:
            server.delete_bucket(bucket)

    return factory


FILE_BACKENDS: dict[str, BackendFactory] = {
    **{kind: _local(kind) for kind in EXTENSIONS},
    **{f"{kind}-s3": _s3(kind) for kind in EXTENSIONS},
}
