"""File target write throughput: each format's connector against the bare library, side by side.

For each format, to a fresh local temporary directory: N rows (10 typed value columns plus the
5 scope columns) go through the connector's ``execute_batch`` as the pipeline sends them (one
call; the connector chunks by ``max_batch``, writes one file per chunk, atomically: temporary
file, fsync, rename), against the bare library writing the same writes to one file: the
simplest code a person would write, a dict per write (scope columns and values) handed to
``csv.writer``, ``json.dumps`` lines, an openpyxl write-only workbook or
``pyarrow.parquet.write_table`` (inferred types; no typed schema, no atomic publish, no fsync,
no digest, no per-write results). Both start from the same validated writes, so the ratio is
what the connector costs over that. Rounds alternate which goes first so machine noise hits
both alike; the median rows/s of each is reported, and the median of the rounds' ratios
connector / bare (each round's pair ran back to back; target >= 0.8).

Then the target requests of 1,000 patients x 4 rows (a patient row and 3 appointments) in one
batch: files written locally, and S3 requests (create, part, complete per file) counted against
moto's in-process S3 (``moto.mock_aws``; skipped when moto is not installed).

    python -m bench.file_writes [--rows 50000] [--rounds 7] [--formats csv,jsonl,excel,parquet]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connectors.base import Scope, Write
from connectors.files import FileConnector
from connectors.registry import load

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TABLES = {
    "patients": {
        "first_name": "text",
        "last_name": "text",
        "email": "text",
        "city": "text",
        "age": "integer",
        "visits": "integer",
        "score": "number",
        "active": "boolean",
        "dob": "date",
        "seen_at": "timestamp",
    },
    "appointments": {"kind": "text", "starts_at": "timestamp"},
}
FORMATS = ("csv", "jsonl", "excel", "parquet")
TARGET_RATIO = 0.8


def values(i: int) -> dict[str, Any]:
    """The value columns of row ``i`` (some nulls, some non-ASCII, as patient data has)."""
    return {
        "first_name": f"Zoë{i}",
        "last_name": f"Nuñez-{i % 977}",
        "email": f"patient{i}@example.org",
        "city": None if i % 7 == 0 else "Zürich",
        "age": 18 + i % 80,
        "visits": i % 13,
        "score": (i % 1000) / 7,
        "active": i % 2 == 0,
        "dob": f"19{50 + i % 50}-0{1 + i % 9}-1{i % 10}",
        "seen_at": (AT - timedelta(minutes=i)).isoformat(),
    }


def build_writes(connector: FileConnector, n: int) -> list[Write]:
    """``n`` validated patient rows, four per patient, as the pipeline hands them over."""
    writes = []
    for i in range(n):
        patient = str(100_000 + i // 4)
        args = connector.validate(
            "upsert_row",
            {"table": "patients", "key": str(i), "patient_id": patient, "values": values(i)},
            patient,
        )
        writes.append(Write(Scope("clinic-a", patient, "daily-run-1", AT), "upsert_row", args))
    return writes


def bare_rows(writes: list[Write]) -> list[dict[str, Any]]:
    """The writes as plain dicts (scope columns, then values), as the bare writers make them."""
    rows = []
    for w in writes:
        args: Any = w.args
        rows.append(
            {
                "integration_id": w.scope.integration_id,
                "patient_id": w.scope.patient_id,
                "key": args.key,
                "run_id": w.scope.run_id,
                "synced_at": w.scope.synced_at.isoformat(),
                **args.values,
            }
        )
    return rows


def bare_csv(writes: list[Write], path: Path) -> None:
    rows = bare_rows(writes)
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(rows[0].keys())
        writer.writerows(r.values() for r in rows)


def bare_jsonl(writes: list[Write], path: Path) -> None:
    rows = bare_rows(writes)
    with path.open("w", encoding="utf-8") as out:
        out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def bare_excel(writes: list[Write], path: Path) -> None:
    from openpyxl import Workbook

    rows = bare_rows(writes)
    book = Workbook(write_only=True)
    sheet = book.create_sheet("patients")
    sheet.append(list(rows[0].keys()))
    for r in rows:
        sheet.append(list(r.values()))
    book.save(path)


def bare_parquet(writes: list[Write], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = bare_rows(writes)
    pq.write_table(pa.Table.from_pylist(rows), path)


BARE: dict[str, Callable[[list[Write], Path], None]] = {
    "csv": bare_csv,
    "jsonl": bare_jsonl,
    "excel": bare_excel,
    "parquet": bare_parquet,
}


def connector_for(kind: str, root: Path) -> FileConnector:
    """The format's connector writing below ``root``."""
    connector = load(kind).from_config("bench", {"tables": TABLES, "path": str(root)}, {})
    assert isinstance(connector, FileConnector)
    return connector


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def throughput(kind: str, n: int, rounds: int) -> dict[str, Any]:
    """Rows/s of the connector and of the bare library (medians over alternating rounds)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    try:
        writes = build_writes(connector_for(kind, scratch), n)
        ours: list[float] = []
        bare: list[float] = []
        for r in range(rounds):

            def run_connector(r: int = r) -> None:
                root = scratch / f"connector-{r}"
                root.mkdir()
                connector = connector_for(kind, root)
                results = connector.execute_batch(writes)
                assert all(x.error is None for x in results), "a write failed"

            def run_bare(r: int = r) -> None:
                BARE[kind](writes, scratch / f"bare-{r}.out")

            order = [(run_connector, ours), (run_bare, bare)]
            for fn, samples in order if r % 2 == 0 else order[::-1]:
                samples.append(timed(fn))
            shutil.rmtree(scratch / f"connector-{r}")
            (scratch / f"bare-{r}.out").unlink()
        # Each round's pair ran back to back, so its ratio shares that moment's noise.
        ratios = [b / o for o, b in zip(ours, bare, strict=True)]
        return {
            "connector_rows_per_s": round(n / statistics.median(ours)),
            "bare_rows_per_s": round(n / statistics.median(bare)),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def patient_batch(connector: FileConnector, patients: int) -> list[Write]:
    """``patients`` x 4 rows: a patient row and three appointments each."""
    writes = []
    for p in range(patients):
        patient = str(200_000 + p)
        scope = Scope("clinic-a", patient, "daily-run-1", AT)
        rows = [("patients", patient, values(p))] + [
            ("appointments", f"{patient}-{a}", {"kind": "visit", "starts_at": AT.isoformat()})
            for a in range(3)
        ]
        for table, key, vals in rows:
            args = connector.validate(
                "upsert_row",
                {"table": table, "key": key, "patient_id": patient, "values": vals},
                patient,
            )
            writes.append(Write(scope, "upsert_row", args))
    return writes


def requests(kind: str, patients: int = 1000) -> dict[str, Any]:
    """Files and requests for ``patients`` x 4 rows, locally and on (moto's) S3."""
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-req-{kind}-"))
    try:
        connector = connector_for(kind, scratch)
        connector.execute_batch(patient_batch(connector, patients))
        out: dict[str, Any] = {
            "writes": patients * 4,
            "files": connector.files_written,
            "local_requests": connector.requests,
            "s3_requests": None,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        import boto3
        from moto import mock_aws
    except ImportError:
        return out
    with mock_aws():
        s3 = boto3.session.Session().client(
            "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
        )
        s3.create_bucket(Bucket="bench-bucket")
        remote = load(kind).from_config(
            "bench",
            {"tables": TABLES, "url": "s3://bench-bucket/exports"},
            {"aws_access_key_id": "k", "aws_secret_access_key": "s"},
        )
        try:
            results = remote.execute_batch(patient_batch(connector, patients))
            assert all(r.error is None for r in results), "an S3 write failed"
            out["s3_requests"] = remote.requests
        finally:
            remote.close()
            s3.close()
    return out


def main() -> None:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args()
    kinds = [k for k in args.formats.split(",") if k]
    result: dict[str, Any] = {
        "bench": "file_writes",
        "rows": args.rows,
        "value_columns": 10,
        "rounds": args.rounds,
        "target_ratio": TARGET_RATIO,
        "formats": {},
        "requests_1000_patients_x4": {},
    }
    for kind in kinds:
        figures = throughput(kind, args.rows, args.rounds)
        figures["meets_target"] = figures["ratio"] >= TARGET_RATIO
        result["formats"][kind] = figures
        print(f"{kind}: {figures}", flush=True)
    for kind in kinds:
        result["requests_1000_patients_x4"][kind] = requests(kind)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
