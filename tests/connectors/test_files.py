"""The file targets beyond the contract suite: the layout (table, date, run, digest), atomic
publishing locally and on S3 (a writer killed mid-file, a failed multipart upload), error kinds
at the edge, each format's encoding (CSV nulls, Excel's cell limits, the Parquet schema)."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import connectors.file_formats as file_formats
from app.core.errors import (
    ConfigurationError,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Scope, Write
from connectors.file_stores import S3Store
from connectors.files import FileConnector
from connectors.registry import load
from tests.contracts.targets_files import EXTENSIONS, file_bytes, file_names, read_rows
from tests.helpers import REPO
from tests.servers.s3 import MotoS3, moto_s3_for

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TABLES = {
    "patients": {
        "first_name": "text",
        "age": "integer",
        "score": "number",
        "active": "boolean",
        "dob": "date",
        "seen_at": "timestamp",
    },
    "appointments": {"kind": "text"},
}
KINDS = sorted(EXTENSIONS)
NO_WAIT = RetryPolicy(max_attempts=1, backoff=Backoff(initial=0.0, cap=0.0), sleep=lambda _: None)


@pytest.fixture
def s3(request: pytest.FixtureRequest) -> MotoS3:
    """The session's moto server (skips locally when it cannot start)."""
    return moto_s3_for(request)


@pytest.fixture
def bucket(s3: MotoS3) -> Iterator[str]:
    """A fresh bucket, deleted after the test."""
    name = s3.create_bucket()
    yield name
    s3.delete_bucket(name)


def local(kind: str, root: Path, **options: Any) -> FileConnector:
    connector = load(kind).from_config(
        "warehouse", {"tables": TABLES, "path": str(root), **options}, {}
    )
    assert isinstance(connector, FileConnector)
    return connector


def on_s3(kind: str, server: MotoS3, bucket: str, **options: Any) -> FileConnector:
    credentials = options.pop("credentials", server.credentials)
    connector = load(kind).from_config(
        "warehouse",
        {
            "tables": TABLES,
            "url": f"s3://{bucket}/exports",
            "endpoint_url": server.endpoint_url,
            **options,
        },
        credentials,
    )
    assert isinstance(connector, FileConnector)
    return connector


def upsert(
    connector: FileConnector,
    patient: str,
    key: str,
    values: dict,
    *,
    table: str = "patients",
    run: str = "run-1",
    at: datetime = AT,
) -> Write:
    args = connector.validate(
        "upsert_row", {"table": table, "key": key, "patient_id": patient, "values": values}, patient
    )
    return Write(Scope("clinic-a", patient, run, at), "upsert_row", args)


def published(root: Path) -> list[str]:
    """Every file below ``root``, hidden ones included, relative and sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- options ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"path": "/tmp", "url": "s3://bucket-a/x"},
        {"url": "http://bucket-a/x"},
        {"url": "s3://Bucket_A/x"},
        {"path": "/tmp", "endpoint_url": "http://127.0.0.1:9"},
        {"path": "/tmp", "bucket": "x"},
    ],
)
def test_options_name_exactly_one_destination(options):
    with pytest.raises(ConfigurationError) as refused:
        load("csv").from_config("warehouse", options, {})
    assert "\n" not in str(refused.value)


def test_files_offer_upsert_only(tmp_path):
    for mode in ("update_only", "insert_only", "mirror"):
        with pytest.raises(ConfigurationError, match="not offered"):
            local("csv", tmp_path, mode=mode)


def test_s3_keys_are_required_with_url_only(tmp_path):
    local("parquet", tmp_path).close()  # no credentials needed
    with pytest.raises(ConfigurationError) as missing:
        load("parquet").from_config(
            "warehouse", {"url": "s3://bucket-a/x"}, {"aws_access_key_id": "AKIA"}
        )
    assert "aws_secret_access_key" in str(missing.value)


# -- layout -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_files_are_partitioned_by_table_date_and_run(tmp_path, kind):
    connector = local(kind, tmp_path)
    late = datetime(2026, 12, 1, 23, 30, tzinfo=UTC) + timedelta(hours=1)  # the next UTC day
    writes = [
        upsert(connector, "1", "1", {"first_name": "A"}),
        upsert(connector, "2", "2", {"first_name": "B"}, at=late),
        upsert(connector, "3", "3", {"first_name": "C"}, run="run-2"),
        upsert(connector, "1", "a1", {"kind": "visit"}, table="appointments"),
    ]
    assert [r.error for r in connector.execute_batch(writes)] == [None] * 4
    ext = EXTENSIONS[kind]
    names = published(tmp_path)
    patterns = [
        rf"appointments/date=2026-12-01/run-1-[0-9a-f]{{16}}\.{ext}",
        rf"patients/date=2026-12-01/run-1-[0-9a-f]{{16}}\.{ext}",
        rf"patients/date=2026-12-01/run-2-[0-9a-f]{{16}}\.{ext}",
        rf"patients/date=2026-12-02/run-1-[0-9a-f]{{16}}\.{ext}",
    ]
    assert len(names) == 4
    for name, pattern in zip(names, patterns, strict=True):
        assert re.fullmatch(pattern, name), name
    assert connector.files_written == 4
    assert connector.requests == 4  # one per file (the base counted the chunk as one)


def test_a_run_id_cannot_leave_the_partition(tmp_path):
    connector = local("jsonl", tmp_path)
    connector.execute_batch([upsert(connector, "1", "1", {}, run="../../.evil/run")])
    (name,) = published(tmp_path)
    assert re.fullmatch(r"patients/date=2026-12-01/evil_run-[0-9a-f]{16}\.jsonl", name)
    (row,) = read_rows(connector, "patients")
    assert row["run_id"] == "../../.evil/run"  # the row keeps the real id


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_chunk_twice_yields_one_file(tmp_path, kind):
    connector = local(kind, tmp_path)
    writes = [upsert(connector, p, p, {"first_name": f"P{p}", "age": 40}) for p in "123"]
    connector.execute_batch(writes)
    once = published(tmp_path)
    # a redelivery: the same rows, synced again later in the same run
    later = AT + timedelta(minutes=5)
    again = [
        Write(Scope("clinic-a", w.scope.patient_id, "run-1", later), w.operation, w.args)
        for w in writes
    ]
    connector.execute_batch(again)
    assert published(tmp_path) == once
    assert len(read_rows(connector, "patients")) == 3
    changed = [upsert(connector, "1", "1", {"first_name": "Other", "age": 40})]
    connector.execute_batch(changed)
    assert len(published(tmp_path)) == 2  # other values: another file


def test_rows_hold_the_scope_columns_then_the_declared_ones_in_order(tmp_path):
    connector = local("csv", tmp_path)
    connector.execute_batch([upsert(connector, "1", "1", {"dob": "1990-02-28"})])
    (name,) = file_names(connector, "patients")
    header = file_bytes(connector, name).split(b"\r\n", 1)[0].decode()
    assert header == (
        '"integration_id","patient_id","key","run_id","synced_at",'
        '"first_name","age","score","active","dob","seen_at"'
    )
    (row,) = read_rows(connector, "patients")
    assert row["synced_at"] == AT
    assert row["first_name"] is None


def test_an_undeclared_table_holds_the_chunks_columns_sorted(tmp_path):
    connector = load("csv").from_config("warehouse", {"path": str(tmp_path)}, {})
    assert isinstance(connector, FileConnector)
    connector.execute_batch(
        [
            upsert(connector, "1", "1", {"zeta": "z", "alpha": "a"}),
            upsert(connector, "2", "2", {"mid": 7}),
        ]
    )
    (name,) = file_names(connector, "patients")
    header = file_bytes(connector, name).split(b"\r\n", 1)[0].decode()
    assert header.endswith('"synced_at","alpha","mid","zeta"')
    rows = {r["key"]: r for r in read_rows(connector, "patients")}
    assert rows["2"]["mid"] == "7"  # undeclared columns are text
    assert rows["2"]["alpha"] is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_delete_is_a_tombstone_row(tmp_path, kind):
    connector = local(kind, tmp_path)
    args = connector.validate(
        "delete_row", {"table": "patients", "key": "k1", "patient_id": "1"}, "1"
    )
    (result,) = connector.execute_batch(
        [Write(Scope("clinic-a", "1", "run-1", AT), "delete_row", args)]
    )
    assert result.error is None
    (row,) = read_rows(connector, "patients")
    assert row == {
        "integration_id": "clinic-a",
        "patient_id": "1",
        "key": "k1",
        "run_id": "run-1",
        "synced_at": AT,
        "_deleted": True,
    }


# -- round trips --------------------------------------------------------------------------
VALUES: dict[str, Any] = {
    "first_name": 'Zoë "Z" 😀, ñandú\nline two\r\n' + "é" * 3000,
    "age": -(2**62),
    "score": 0.1,
    "active": False,
    "dob": "1990-02-28",
    "seen_at": "2026-11-30T22:15:30.250000-05:00",
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_type_round_trips(tmp_path, kind):
    connector = local(kind, tmp_path)
    nulls = dict.fromkeys(VALUES)
    connector.execute_batch(
        [upsert(connector, "1", "1", VALUES), upsert(connector, "2", "2", nulls)]
    )
    rows = {r["key"]: r for r in read_rows(connector, "patients")}
    expected = {
        **VALUES,
        "dob": date(1990, 2, 28),
        "seen_at": datetime.fromisoformat(VALUES["seen_at"]),
    }
    if kind == "excel":  # a cell is XML text: its line ends read back as "\n"
        expected["first_name"] = VALUES["first_name"].replace("\r\n", "\n")
    assert {c: rows["1"][c] for c in VALUES} == expected
    assert {c: rows["2"][c] for c in VALUES} == nulls
    assert rows["1"]["synced_at"] == AT


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_empty_text_stays_distinct_from_null(tmp_path, kind):
    connector = local(kind, tmp_path)
    connector.execute_batch(
        [upsert(connector, "1", "1", {"first_name": ""}), upsert(connector, "2", "2", {})]
    )
    rows = {r["key"]: r for r in read_rows(connector, "patients")}
    assert rows["1"]["first_name"] == ""
    assert rows["2"]["first_name"] is None


def test_csv_writes_null_as_a_bare_empty_field_and_empty_text_quoted(tmp_path):
    import csv

    connector = local("csv", tmp_path)
    connector.execute_batch(
        [upsert(connector, "1", "1", {"first_name": "", "age": 3, "active": True})]
    )
    (name,) = file_names(connector, "patients")
    body = file_bytes(connector, name).decode("utf-8").split("\r\n")[1]
    assert body.endswith(',"",3,,"true",,')  # first_name, age, score, active, dob, seen_at
    # any CSV reader parses it (Python's cannot tell null from "" without QUOTE_NOTNULL)
    (_, row) = list(csv.reader(io.StringIO(file_bytes(connector, name).decode("utf-8"))))
    assert len(row) == 11


# -- atomic publishing, locally -----------------------------------------------------------
def _failing_encoder(real: Any, error: BaseException) -> Any:
    def encode(sheet: Any, out: Any) -> None:
        buffer = io.BytesIO()
        real(sheet, buffer)
        out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half a file, then fail
        raise error

    return encode


@pytest.mark.parametrize("kind", KINDS)
def test_an_encoder_failing_mid_file_leaves_nothing(tmp_path, kind, monkeypatch):
    connector = local(kind, tmp_path)
    ext = EXTENSIONS[kind]
    disk_full = OSError(28, "No space left on device")
    monkeypatch.setitem(
        file_formats.ENCODERS, ext, _failing_encoder(file_formats.ENCODERS[ext], disk_full)
    )
    (result,) = connector.execute_batch([upsert(connector, "1", "1", {"first_name": "Ann"})])
    assert isinstance(result.error, UpstreamUnavailable)
    assert "ENOSPC" in str(result.error)
    assert "Ann" not in str(result.error)
    assert published(tmp_path) == []  # not even a temporary file


def test_a_chunk_publishes_nothing_until_all_its_files_encoded(tmp_path):
    connector = local("excel", tmp_path, max_value_bytes=100_000)
    batch = [
        upsert(connector, "1", "1", {"first_name": "Ann"}),
        upsert(connector, "1", "a1", {"kind": "x" * 40_000}, table="appointments"),
    ]
    with pytest.raises(TargetRejected):
        connector.write_upsert_row(batch)
    assert published(tmp_path) == []


KILLED_WRITER = """
import os, sys, time
from pathlib import Path
import connectors.file_formats as ff
from tests.connectors.test_files import killed_writer_batch

connector, batch = killed_writer_batch(sys.argv[1], sys.argv[2])
ready = Path(sys.argv[3])
if sys.argv[4] == "file":
    real = ff.ENCODERS[connector.extension]
    def encode(sheet, out):
        import io
        buffer = io.BytesIO()
        real(sheet, buffer)
        out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        out.flush()
        os.fsync(out.fileno())
        ready.touch()
        time.sleep(60)
    ff.ENCODERS[connector.extension] = encode
else:
    client = connector.store.client
    real_complete = client.complete_multipart_upload
    def complete(**kwargs):
        ready.touch()
        time.sleep(60)
    client.complete_multipart_upload = complete
connector.execute_batch(batch)
"""


def killed_writer_batch(kind: str, where: str) -> tuple[FileConnector, list[Write]]:
    """The connector and writes of the killed-writer tests (also run by the subprocess)."""
    if where.startswith("s3://"):
        endpoint, url = os.environ["KILL_ENDPOINT"], where
        connector = load(kind).from_config(
            "warehouse",
            {"tables": TABLES, "url": url, "endpoint_url": endpoint},
            {
                "aws_access_key_id": os.environ["KILL_KEY_ID"],
                "aws_secret_access_key": os.environ["KILL_SECRET"],
            },
        )
    else:
        connector = load(kind).from_config("warehouse", {"tables": TABLES, "path": where}, {})
    assert isinstance(connector, FileConnector)
    batch = [upsert(connector, str(p), str(p), {"first_name": f"P{p}"}) for p in range(2000)]
    return connector, batch


def _run_until_ready(args: list[str], ready: Path, env: dict[str, str] | None = None) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, *args, str(ready), "file" if env is None else "s3"],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        until = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the writer exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            assert time.monotonic() < until, "the writer never got mid-write"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-write, as a crash or an OOM kill would
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_writer_killed_mid_file_leaves_the_complete_file_alone(tmp_path, kind):
    root = tmp_path / "files"
    root.mkdir()
    connector, batch = killed_writer_batch(kind, str(root))
    connector.execute_batch(batch)
    (name,) = published(root)
    complete = (root / name).read_bytes()
    # the same chunk again (its file's name again), killed half-way through the file
    _run_until_ready([kind, str(root)], tmp_path / "ready")
    names = published(root)
    assert name in names
    assert (root / name).read_bytes() == complete
    leftovers = [n for n in names if n != name]
    assert len(leftovers) == 1  # the killed writer's temporary file ...
    assert Path(leftovers[0]).name.startswith(".")
    assert leftovers[0].endswith(".tmp")
    assert len(read_rows(connector, "patients")) == 2000  # ... which no reader counts


# -- atomic publishing, on S3 -------------------------------------------------------------
class _Failing:
    """A boto3 client whose ``operation`` fails (from its ``after``-th call on)."""

    def __init__(self, client: Any, operation: str, error: BaseException, after: int = 1):
        self._client, self._operation, self._error, self._after = client, operation, error, after
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._operation:
            return real

        def call(**kwargs: Any) -> Any:
            self.calls += 1
            if self.calls >= self._after:
                raise self._error
            return real(**kwargs)

        return call


def _bucket_state(server: MotoS3, bucket: str) -> tuple[list[str], list[str]]:
    client = server.client()
    try:
        objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        pending = [
            u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        ]
    finally:
        client.close()
    return objects, pending


@pytest.mark.parametrize(
    ("operation", "after"),
    [("upload_part", 2), ("complete_multipart_upload", 1)],  # a second part, the last step
)
def test_a_failed_multipart_upload_leaves_no_object_and_no_pending_upload(
    s3, bucket, operation, after
):
    from botocore.exceptions import EndpointConnectionError

    connector = on_s3("csv", s3, bucket, max_value_bytes=10_000_000)
    assert isinstance(connector.store, S3Store)
    error = EndpointConnectionError(endpoint_url=s3.endpoint_url)
    failing = _Failing(connector.store.client, operation, error, after)
    connector.store.client = failing
    connector.retry = NO_WAIT
    big = "x" * 3_000_000  # three rows: 9 MB, two parts
    try:
        results = connector.execute_batch(
            [upsert(connector, p, p, {"first_name": big}) for p in "123"]
        )
    finally:
        connector.store.client = failing._client
        connector.close()
    assert all(isinstance(r.error, UpstreamUnavailable) for r in results)
    assert failing.calls == after
    assert _bucket_state(s3, bucket) == ([], [])


def test_a_writer_killed_mid_upload_publishes_no_object(s3, bucket, tmp_path):
    env = {
        "KILL_ENDPOINT": s3.endpoint_url,
        "KILL_KEY_ID": s3.access_key_id,
        "KILL_SECRET": s3.secret_access_key,
    }
    _run_until_ready(["parquet", f"s3://{bucket}/exports"], tmp_path / "ready", env)
    objects, pending = _bucket_state(s3, bucket)
    assert objects == []  # every part was sent; without the completion nothing is visible
    assert len(pending) == 1  # what a lifecycle rule reclaims (the writer had no chance)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_s3_files_are_laid_out_and_idempotent(s3, bucket, kind):
    connector = on_s3(kind, s3, bucket)
    try:
        writes = [
            upsert(connector, "1", "1", {"first_name": "A"}),
            upsert(connector, "1", "a1", {"kind": "visit"}, table="appointments"),
        ]
        connector.execute_batch(writes)
        connector.execute_batch(writes)
        objects, pending = _bucket_state(s3, bucket)
        ext = EXTENSIONS[kind]
        assert len(objects) == 2
        assert pending == []
        assert re.fullmatch(
            rf"exports/patients/date=2026-12-01/run-1-[0-9a-f]{{16}}\.{ext}", objects[1]
        )
        # create, one part, complete: three S3 requests per file, two files per chunk
        assert connector.requests == 12
        assert isinstance(connector.store, S3Store)
        assert connector.store.client.meta.config.retries == {
            "total_max_attempts": 1,
            "mode": "standard",
        }
    finally:
        connector.close()


# -- error kinds --------------------------------------------------------------------------
def test_wrong_s3_keys_are_a_configuration_error(s3, bucket):
    cases = {
        "InvalidAccessKeyId": ("AKIAWRONGWRONGWRONG0", s3.secret_access_key),
        "SignatureDoesNotMatch": (s3.access_key_id, "not-the-secret"),
        "AccessDenied": (s3.reader_key_id, s3.reader_secret),
    }
    for code, (key_id, secret) in cases.items():
        credentials = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        connector = on_s3("csv", s3, bucket, credentials=credentials)
        try:
            (result,) = connector.execute_batch(
                [upsert(connector, "1", "1", {"first_name": "Mallory"})]
            )
        finally:
            connector.close()
        assert isinstance(result.error, ConfigurationError), code
        assert code in str(result.error)
        assert secret not in str(result.error)
        assert "Mallory" not in str(result.error)
    assert _bucket_state(s3, bucket) == ([], [])


def test_a_missing_bucket_is_a_configuration_error(s3):
    connector = on_s3("parquet", s3, "no-such-bucket-here")
    try:
        (result,) = connector.execute_batch([upsert(connector, "1", "1", {"first_name": "A"})])
    finally:
        connector.close()
    assert isinstance(result.error, ConfigurationError)
    assert "NoSuchBucket" in str(result.error)


def test_an_unreachable_endpoint_is_upstream_unavailable():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    connector = load("csv").from_config(
        "warehouse",
        {"url": "s3://bucket-a/x", "endpoint_url": f"http://127.0.0.1:{port}"},
        {"aws_access_key_id": "AKIA", "aws_secret_access_key": "secret"},
    )
    assert isinstance(connector, FileConnector)
    connector.retry = NO_WAIT
    try:
        (result,) = connector.execute_batch([upsert(connector, "1", "1", {"x": "A"})])
    finally:
        connector.close()
    assert isinstance(result.error, UpstreamUnavailable)
    assert "EndpointConnectionError" in str(result.error)


@pytest.fixture
def s3_answering() -> Iterator[tuple[str, list[str], dict[str, Any]]]:
    """An HTTP server that answers every request with ``answer["status"]`` and S3 error
    ``answer["code"]``; yields its URL, the requests it saw and the answer to set."""
    seen: list[str] = []
    answer: dict[str, Any] = {"status": 503, "code": "SlowDown"}

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append(f"{self.command} {self.path}")
            body = f"<Error><Code>{answer['code']}</Code><Message>m</Message></Error>".encode()
            self.send_response(answer["status"])
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = _reply

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen, answer
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (503, "SlowDown", RateLimited),
        (500, "InternalError", UpstreamUnavailable),
        (403, "AccessDenied", ConfigurationError),
    ],
)
def test_s3_answers_become_the_right_kinds_without_botocore_retries(
    s3_answering, status, code, kind
):
    url, seen, answer = s3_answering
    answer.update(status=status, code=code)
    cls = load("jsonl")
    options = cls.parse_options("w", {"url": "s3://bucket-a/x", "endpoint_url": url})
    from pydantic import SecretStr

    secrets = {"aws_access_key_id": SecretStr("AKIA"), "aws_secret_access_key": SecretStr("s")}
    retry = RetryPolicy(max_attempts=2, backoff=Backoff(initial=0.0, cap=0.0), sleep=lambda _: None)
    connector = cls("w", options, secrets, retry=retry)
    assert isinstance(connector, FileConnector)
    try:
        (result,) = connector.execute_batch([upsert(connector, "1", "1", {"x": "A"})])
    finally:
        connector.close()
    assert type(result.error) is kind
    # one HTTP request per platform attempt: botocore itself never retried
    assert len(seen) == (2 if kind is not ConfigurationError else 1)
    assert all(s.startswith("POST /bucket-a/x/") and s.endswith("?uploads") for s in seen)


def test_local_errors_become_the_right_kinds(tmp_path, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    connector = local("csv", not_a_dir)
    (result,) = connector.execute_batch([upsert(connector, "1", "1", {"first_name": "A"})])
    assert isinstance(result.error, ConfigurationError)

    connector = local("csv", tmp_path)

    def denied(*args: Any) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "Ann"))

    monkeypatch.setattr(os, "replace", denied)
    (result,) = connector.execute_batch([upsert(connector, "1", "1", {"first_name": "Ann"})])
    assert isinstance(result.error, ConfigurationError)
    assert "EACCES" in str(result.error)
    assert "Ann" not in str(result.error)
    assert published(tmp_path) == ["file"]  # the temporary file went too


# -- Excel --------------------------------------------------------------------------------
def test_an_excel_cell_over_the_limit_fails_only_its_row(tmp_path):
    connector = local("excel", tmp_path, max_value_bytes=200_000)
    too_long = {
        "ascii": "y" * 32_768,
        "emoji": "😀" * 16_384,  # 16,384 characters but 32,768 UTF-16 units
        "control": "bell\x07",
    }
    writes = [upsert(connector, "1", "1", {"first_name": "x" * 32_767})]
    writes += [
        upsert(connector, str(i), str(i), {"first_name": v})
        for i, v in enumerate(too_long.values(), 2)
    ]
    writes.append(upsert(connector, "9", "9", {"first_name": "Bo"}))
    results = connector.execute_batch(writes)
    assert results[0].error is None
    assert results[-1].error is None
    for result in results[1:-1]:
        assert isinstance(result.error, TargetRejected)
        assert "patients.first_name" in str(result.error)
        assert "yyy" not in str(result.error)
        assert "bell" not in str(result.error)
    rows = {r["key"]: r["first_name"] for r in read_rows(connector, "patients")}
    assert rows == {"1": "x" * 32_767, "9": "Bo"}


def test_excel_keeps_formulas_and_error_codes_as_text(tmp_path):
    from openpyxl import load_workbook

    connector = local("excel", tmp_path)
    texts = ['=HYPERLINK("http://evil")', "#N/A", "=", "+1", "2**60"]
    connector.execute_batch(
        [upsert(connector, str(i), str(i), {"first_name": t}) for i, t in enumerate(texts)]
        + [upsert(connector, "big", "big", {"age": 2**60})]
    )
    rows = {r["key"]: r for r in read_rows(connector, "patients")}
    assert [rows[str(i)]["first_name"] for i in range(len(texts))] == texts
    assert rows["big"]["age"] == 2**60  # written as text: no digit lost to a double
    (name,) = file_names(connector, "patients")
    book = load_workbook(io.BytesIO(file_bytes(connector, name)))
    try:
        sheet = book["patients"]
        assert {sheet.cell(row=r, column=6).data_type for r in range(2, len(texts) + 2)} == {"s"}
    finally:
        book.close()


def test_an_excel_sheet_is_named_after_its_table(tmp_path):
    from openpyxl import load_workbook

    table = "a_table_name_longer_than_excel_allows_for_sheets"
    connector = load("excel").from_config("w", {"path": str(tmp_path)}, {})
    assert isinstance(connector, FileConnector)
    connector.execute_batch([upsert(connector, "1", "1", {"x": "1"}, table=table)])
    (name,) = file_names(connector, table)
    book = load_workbook(io.BytesIO(file_bytes(connector, name)), read_only=True)
    try:
        assert book.sheetnames == [table[:31]]
    finally:
        book.close()


# -- Parquet ------------------------------------------------------------------------------
def test_parquet_has_a_schema_typed_from_the_declared_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    connector = local("parquet", tmp_path)
    connector.execute_batch([upsert(connector, "1", "1", {"first_name": "A", "age": 3})])
    (name,) = file_names(connector, "patients")
    schema = pq.read_schema(io.BytesIO(file_bytes(connector, name)))
    utc = pa.timestamp("us", tz="UTC")
    assert [(f.name, f.type) for f in schema] == [
        ("integration_id", pa.string()),
        ("patient_id", pa.string()),
        ("key", pa.string()),
        ("run_id", pa.string()),
        ("synced_at", utc),
        ("first_name", pa.string()),
        ("age", pa.int64()),
        ("score", pa.float64()),
        ("active", pa.bool_()),
        ("dob", pa.date32()),
        ("seen_at", utc),
    ]


def test_a_parquet_value_that_does_not_fit_fails_only_its_row(tmp_path):
    connector = local("parquet", tmp_path)
    results = connector.execute_batch(
        [
            upsert(connector, "1", "1", {"age": 2**63 - 1, "score": 2**70}),
            upsert(connector, "2", "2", {"age": 2**63}),
            upsert(connector, "3", "3", {"age": -(2**63)}),
        ]
    )
    assert results[0].error is None
    assert results[2].error is None
    assert isinstance(results[1].error, TargetRejected)
    assert "patients.age" in str(results[1].error)
    assert str(2**63) not in str(results[1].error)
    rows = {r["key"]: r for r in read_rows(connector, "patients")}
    assert rows["1"]["age"] == 2**63 - 1
    assert rows["1"]["score"] == float(2**70)
    assert set(rows) == {"1", "3"}


def test_parquet_reads_every_iso_form_python_accepts(tmp_path):
    # Arrow parses the common forms itself; a column holding one it cannot (no offset, a week
    # date, seven fraction digits) is parsed by Python instead, to the same instants and days.
    connector = local("parquet", tmp_path)
    forms = [
        ("2026-12-01", "2026-12-01T09:30:00+01:00"),
        ("2026-W48-2", "2026-12-01T09:30:00"),
        ("20261201", "2026-12-01T09:30:00.1234567+00:00"),
    ]
    connector.execute_batch(
        [
            upsert(connector, str(i), str(i), {"dob": d, "seen_at": t})
            for i, (d, t) in enumerate(forms)
        ]
    )
    rows = {r["key"]: r for r in read_rows(connector, "patients")}
    for i, (d, t) in enumerate(forms):
        moment = datetime.fromisoformat(t)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # no offset: UTC
        assert rows[str(i)]["dob"] == date.fromisoformat(d)
        assert rows[str(i)]["seen_at"] == moment


def test_json_lines_keep_text_unescaped(tmp_path):
    connector = local("jsonl", tmp_path)
    connector.execute_batch([upsert(connector, "1", "1", {"first_name": "Zoë 😀"})])
    (name,) = file_names(connector, "patients")
    line = file_bytes(connector, name).decode("utf-8")
    assert '"first_name":"Zoë 😀"' in line
    assert line.count("\n") == 1
