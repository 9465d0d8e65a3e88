"""SQLite state store: the embedded default, and with ``":memory:"`` the unit-test fake."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from app.core.models import Counts, RunRecord, merge_run
from app.state.base import AuditRecord, DeadLetter, PatientState, PendingPatient


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
  integration_id TEXT NOT NULL, patient_id TEXT NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (integration_id, patient_id)
);
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, integration_id TEXT NOT NULL, started_at TEXT NOT NULL,
  body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_integration ON runs (integration_id, started_at);
CREATE TABLE IF NOT EXISTS watermarks (
  integration_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (integration_id, name)
);
CREATE TABLE IF NOT EXISTS pending (
  integration_id TEXT NOT NULL, patient_id TEXT NOT NULL, dirty_since TEXT NOT NULL,
  reasons TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (integration_id, patient_id)
);
CREATE TABLE IF NOT EXISTS leases (
  name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
  message_id TEXT PRIMARY KEY, integration_id TEXT NOT NULL, dead_lettered_at TEXT NOT NULL,
  body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (dead_lettered_at, message_id);
CREATE TABLE IF NOT EXISTS appointment_index (
  integration_id TEXT NOT NULL, appointment_id TEXT NOT NULL, patient_id TEXT NOT NULL,
  PRIMARY KEY (integration_id, appointment_id, patient_id)
);
CREATE INDEX IF NOT EXISTS appointment_index_by_patient
  ON appointment_index (integration_id, patient_id);
CREATE TABLE IF NOT EXISTS synced (
  integration_id TEXT NOT NULL, patient_id TEXT NOT NULL, name TEXT NOT NULL,
  digest TEXT NOT NULL, PRIMARY KEY (integration_id, patient_id, name)
);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, integration_id TEXT NOT NULL, patient_id TEXT NOT NULL,
  body TEXT NOT NULL
);
"""


class SqliteStateStore:
    """State in one SQLite file; thread-safe within a process."""

    def __init__(self, path: str | Path) -> None:
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def get_patient(self, integration_id: str, patient_id: str) -> PatientState | None:
        """The last processed state of the patient, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM patients WHERE integration_id=? AND patient_id=?",
                (integration_id, patient_id),
            ).fetchone()
        return PatientState.model_validate_json(row[0]) if row else None

    def put_patient(self, state: PatientState) -> None:
        """Replace the patient's state."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO patients VALUES (?,?,?)",
                (state.integration_id, state.patient_id, state.model_dump_json()),
            )

    def save_run(self, run: RunRecord) -> None:
        """Insert or update ``run`` in one immediate transaction: an update keeps the counts
        workers added meanwhile and a finished run stays final (``merge_run``), and a published
        run whose patients all have their outcome is stored finished (``RunRecord.settle``)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT body FROM runs WHERE run_id=?", (run.run_id,)
                ).fetchone()
                stored = (
                    merge_run(RunRecord.model_validate_json(row[0]), run)
                    if row
                    else run.model_copy(deep=True)
                )
                stored.settle(datetime.now(UTC))
                self._db.execute(
                    "INSERT OR REPLACE INTO runs VALUES (?,?,?,?)",
                    (
                        stored.run_id,
                        stored.integration_id,
                        stored.started_at.isoformat(),
                        stored.model_dump_json(),
                    ),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def list_runs(self, integration_id: str | None = None, limit: int = 20) -> list[RunRecord]:
        """Most recent first."""
        query = "SELECT body FROM runs"
        params: tuple[object, ...] = ()
        if integration_id:
            query += " WHERE integration_id=?"
            params = (integration_id,)
        query += " ORDER BY started_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*params, limit)).fetchall()
        return [RunRecord.model_validate_json(r[0]) for r in rows]

    def add_run_counts(self, integration_id: str, run_id: str, counts: Counts) -> None:
        """Read-modify-write in one immediate transaction (atomic across processes); the
        update that completes a published run marks it finished, and a finished run's counts
        no longer change (a late duplicate delivery is not counted twice)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT body FROM runs WHERE run_id=? AND integration_id=?",
                    (run_id, integration_id),
                ).fetchone()
                if row is not None:
                    run = RunRecord.model_validate_json(row[0])
                    if run.status != "finished":
                        run.counts = run.counts.add(counts)
                        run.settle(datetime.now(UTC))
                        self._db.execute(
                            "UPDATE runs SET body=? WHERE run_id=?",
                            (run.model_dump_json(), run_id),
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get_watermark(self, integration_id: str, name: str) -> datetime | None:
        """The stored mark, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM watermarks WHERE integration_id=? AND name=?",
                (integration_id, name),
            ).fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    def set_watermark(self, integration_id: str, name: str, value: datetime) -> None:
        """Store the mark."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO watermarks VALUES (?,?,?)",
                (integration_id, name, value.isoformat()),
            )

    def append_audit(self, record: AuditRecord) -> None:
        """Append one record."""
        with self._lock:
            self._db.execute(
                "INSERT INTO audit(integration_id, patient_id, body) VALUES (?,?,?)",
                (record.integration_id, record.patient_id, record.model_dump_json()),
            )

    def get_synced(self, integration_id: str, patient_id: str) -> dict[str, str]:
        """The patient's digests by name."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, digest FROM synced WHERE integration_id=? AND patient_id=?",
                (integration_id, patient_id),
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def put_synced(self, integration_id: str, patient_id: str, digests: Mapping[str, str]) -> None:
        """Upsert one row per name."""
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO synced VALUES (?,?,?,?)",
                [(integration_id, patient_id, k, v) for k, v in digests.items()],
            )

    def list_audit(self, integration_id: str, patient_id: str | None = None) -> list[AuditRecord]:
        """Audit records in the order they were written."""
        query, params = "SELECT body FROM audit WHERE integration_id=?", [integration_id]
        if patient_id:
            query += " AND patient_id=?"
            params.append(patient_id)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", params).fetchall()
        return [AuditRecord.model_validate_json(r[0]) for r in rows]

    def add_pending(self, integration_id: str, patients: Sequence[PendingPatient]) -> None:
        """Upsert staged patients in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for p in patients:
                    row = self._db.execute(
                        "SELECT dirty_since, reasons FROM pending"
                        " WHERE integration_id=? AND patient_id=?",
                        (integration_id, p.patient_id),
                    ).fetchone()
                    since, reasons = _utc(p.dirty_since), set(p.reasons)
                    if row is not None:
                        since = min(since, _utc(datetime.fromisoformat(row[0])))
                        reasons |= set(json.loads(row[1]))
                    self._db.execute(
                        "INSERT INTO pending VALUES (?,?,?,?,1)"
                        " ON CONFLICT (integration_id, patient_id) DO UPDATE SET"
                        " dirty_since=excluded.dirty_since, reasons=excluded.reasons,"
                        " version=pending.version+1",
                        (
                            integration_id,
                            p.patient_id,
                            _utc(since).isoformat(),
                            json.dumps(sorted(reasons)),
                        ),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def list_pending(
        self, integration_id: str, *, after: str | None = None, limit: int = 1000
    ) -> list[PendingPatient]:
        """One page of staged patients in patient-id order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT patient_id, dirty_since, reasons, version FROM pending"
                " WHERE integration_id=? AND patient_id > ? ORDER BY patient_id LIMIT ?",
                (integration_id, after or "", max(0, limit)),
            ).fetchall()
        return [
            PendingPatient(
                patient_id=r[0],
                dirty_since=datetime.fromisoformat(r[1]),
                reasons=json.loads(r[2]),
                version=r[3],
            )
            for r in rows
        ]

    def remove_pending(self, integration_id: str, patients: Sequence[PendingPatient]) -> None:
        """Delete the listed versions only."""
        with self._lock:
            self._db.executemany(
                "DELETE FROM pending WHERE integration_id=? AND patient_id=? AND version=?",
                [(integration_id, p.patient_id, p.version) for p in patients],
            )

    def try_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew the lease with one conditional upsert."""
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO leases VALUES (?,?,?) ON CONFLICT (name) DO UPDATE SET"
                " owner=excluded.owner, expires_at=excluded.expires_at"
                " WHERE leases.owner=excluded.owner OR leases.expires_at<=?",
                (name, owner, now + ttl_seconds, now),
            )
        return cursor.rowcount > 0

    def release_lease(self, name: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it."""
        with self._lock:
            self._db.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner))

    def put_dead_letter(self, dead: DeadLetter) -> None:
        """Insert or replace the index entry."""
        # UTC ISO text of one fixed width sorts by instant.
        at = _utc(dead.dead_lettered_at).isoformat(timespec="microseconds")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO dead_letters VALUES (?,?,?,?)",
                (dead.message_id, dead.integration_id, at, dead.model_dump_json()),
            )

    def list_dead_letters(
        self, integration_id: str | None = None, *, limit: int = 10_000
    ) -> list[DeadLetter]:
        """Oldest first; one integration's when ``integration_id`` is given."""
        query, params = "SELECT body FROM dead_letters", []
        if integration_id is not None:
            query += " WHERE integration_id=?"
            params.append(integration_id)
        query += " ORDER BY dead_lettered_at, message_id LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*params, max(0, limit))).fetchall()
        return [DeadLetter.model_validate_json(r[0]) for r in rows]

    def remove_dead_letters(self, message_ids: Sequence[str]) -> None:
        """Delete the entries; unknown ids are ignored."""
        with self._lock:
            self._db.executemany(
                "DELETE FROM dead_letters WHERE message_id=?", [(m,) for m in message_ids]
            )

    def index_appointments(
        self, integration_id: str, patient_id: str, appointment_ids: Sequence[str]
    ) -> None:
        """Replace the patient's indexed appointments in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "DELETE FROM appointment_index WHERE integration_id=? AND patient_id=?",
                    (integration_id, patient_id),
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO appointment_index VALUES (?,?,?)",
                    [(integration_id, a, patient_id) for a in dict.fromkeys(appointment_ids)],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def patients_for_appointments(
        self, integration_id: str, appointment_ids: Sequence[str]
    ) -> dict[str, list[str]]:
        """One indexed lookup per appointment."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for appointment_id in dict.fromkeys(appointment_ids):
                rows = self._db.execute(
                    "SELECT patient_id FROM appointment_index"
                    " WHERE integration_id=? AND appointment_id=? ORDER BY patient_id",
                    (integration_id, appointment_id),
                ).fetchall()
                out[appointment_id] = [r[0] for r in rows]
        return out

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
