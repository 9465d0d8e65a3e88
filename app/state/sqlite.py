"""SQLite state store: the embedded default, and with ``":memory:"`` the unit-test fake.

Every call runs under one lock on one connection (``_using``); a write of several statements
runs in one ``BEGIN IMMEDIATE`` transaction (``_transaction``), so other processes sharing the
file see all of it or none. A writer waits at most ``busy_timeout`` seconds for another's
lock; then, and when the disk is full, the call raises ``StoreUnavailable`` (retriable: a
worker retries the item, a request path answers 503), converted in ``_using`` only.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from app.core.errors import HealthieSyncError, StoreUnavailable
from app.core.models import Counts, RunRecord, merge_run
from app.state.base import AuditRecord, DeadLetter, PatientRecord, PatientState, PendingPatient

#: SQLite's primary result codes that mean "not now" rather than "never": another writer
#: holds the lock (busy, locked) or the disk is full.
_UNAVAILABLE = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL})


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
CREATE TABLE IF NOT EXISTS run_outcomes (
  run_id TEXT NOT NULL, patient_id TEXT NOT NULL, PRIMARY KEY (run_id, patient_id)
) WITHOUT ROWID;
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
  body TEXT NOT NULL, record_key TEXT
);
"""
#: take the lease when it is free, expired or already the owner's (renewing it): one upsert
_TAKE_LEASE = (
    "INSERT INTO leases VALUES (?,?,?) ON CONFLICT (name) DO UPDATE SET"
    " owner=excluded.owner, expires_at=excluded.expires_at"
    " WHERE leases.owner=excluded.owner OR leases.expires_at<=?"
)
#: after the migration that adds ``record_key`` to audit tables created before it existed
_AUDIT_KEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS audit_by_key ON audit (record_key)"


def convert_error(exc: sqlite3.OperationalError, action: str) -> StoreUnavailable | None:
    """``StoreUnavailable`` for a locked, busy or full database; None for anything else (a
    bug or a damaged file, raised as it is). SQLite's messages carry no values."""
    code = getattr(exc, "sqlite_errorcode", None)  # absent on errors the module raises itself
    if code is None or code & 0xFF not in _UNAVAILABLE:
        return None
    return StoreUnavailable(f"SQLite state store: {action} failed: {exc}")


class SqliteStateStore:
    """State in one SQLite file; thread-safe within a process."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        """``busy_timeout``: seconds a call waits for another writer's lock before it raises
        ``StoreUnavailable``."""
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=busy_timeout
        )
        with self._using("open the state store") as db:
            db.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a committed
            # transaction survives any crash of this or another process (it is in the WAL),
            # and only an OS crash or power loss can lose the last few commits (never corrupt
            # the file). The default (FULL) costs an fsync per commit, a third of an
            # end-to-end run's time in patient leases alone (issue 19).
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(audit)")}
            if "record_key" not in columns:
                db.execute("ALTER TABLE audit ADD COLUMN record_key TEXT")
            db.execute(_AUDIT_KEY_INDEX)

    @contextmanager
    def _using(self, action: str) -> Iterator[sqlite3.Connection]:
        """The connection, held under the lock; the one place SQLite's errors are converted."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.OperationalError as exc:
                converted = convert_error(exc, action)
                if converted is None:
                    raise
                raise converted from exc

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """``_using`` inside one immediate transaction: committed if the block returns, rolled
        back otherwise (unless SQLite already rolled it back, as it may on a full disk)."""
        with self._using(action) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def get_patient(self, integration_id: str, patient_id: str) -> PatientState | None:
        """The last processed state of the patient, or None."""
        with self._using("read patient state") as db:
            row = db.execute(
                "SELECT body FROM patients WHERE integration_id=? AND patient_id=?",
                (integration_id, patient_id),
            ).fetchone()
        return PatientState.model_validate_json(row[0]) if row else None

    def put_patient(self, state: PatientState) -> None:
        """Replace the patient's state."""
        with self._using("write patient state") as db:
            db.execute(
                "INSERT OR REPLACE INTO patients VALUES (?,?,?)",
                (state.integration_id, state.patient_id, state.model_dump_json()),
            )

    def record_patients(self, records: Sequence[PatientRecord]) -> list[HealthieSyncError | None]:
        """Every record in one immediate transaction, a few ``executemany`` statements for
        the whole call: all of them are stored, or (the error in every slot) none."""
        if not records:
            return []
        # A patient named twice keeps its last record's index, as sequential calls would.
        indexed = {(r.state.integration_id, r.state.patient_id): r.appointment_ids for r in records}
        pairs = [
            (iid, appointment_id, pid)
            for (iid, pid), ids in indexed.items()
            for appointment_id in dict.fromkeys(ids)
        ]
        states = [
            (r.state.integration_id, r.state.patient_id, r.state.model_dump_json()) for r in records
        ]
        audits = [
            (r.audit.integration_id, r.audit.patient_id, r.audit.model_dump_json(), r.key)
            for r in records
        ]
        try:
            with self._transaction("record patients") as db:
                db.executemany(
                    "DELETE FROM appointment_index WHERE integration_id=? AND patient_id=?",
                    list(indexed),
                )
                db.executemany("INSERT OR IGNORE INTO appointment_index VALUES (?,?,?)", pairs)
                db.executemany("INSERT OR REPLACE INTO patients VALUES (?,?,?)", states)
                db.executemany(
                    "INSERT INTO audit(integration_id, patient_id, body, record_key)"
                    " VALUES (?,?,?,?) ON CONFLICT (record_key) DO UPDATE SET body=excluded.body",
                    audits,
                )
        except StoreUnavailable as exc:
            return [exc] * len(records)
        return [None] * len(records)

    def save_run(self, run: RunRecord) -> None:
        """Insert or update ``run`` in one immediate transaction: an update keeps the counts
        workers added meanwhile and a finished run stays final (``merge_run``), and a published
        run whose patients all have their outcome is stored finished (``RunRecord.settle``;
        its recorded patient outcomes are dropped then, see ``add_run_outcomes``)."""
        with self._transaction("save run") as db:
            row = db.execute("SELECT body FROM runs WHERE run_id=?", (run.run_id,)).fetchone()
            stored = (
                merge_run(RunRecord.model_validate_json(row[0]), run)
                if row
                else run.model_copy(deep=True)
            )
            if stored.settle(datetime.now(UTC)):
                db.execute("DELETE FROM run_outcomes WHERE run_id=?", (stored.run_id,))
            db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?,?,?,?)",
                (
                    stored.run_id,
                    stored.integration_id,
                    stored.started_at.isoformat(),
                    stored.model_dump_json(),
                ),
            )

    def list_runs(self, integration_id: str | None = None, limit: int = 20) -> list[RunRecord]:
        """Most recent first."""
        query = "SELECT body FROM runs"
        params: tuple[object, ...] = ()
        if integration_id:
            query += " WHERE integration_id=?"
            params = (integration_id,)
        query += " ORDER BY started_at DESC LIMIT ?"
        with self._using("list runs") as db:
            rows = db.execute(query, (*params, limit)).fetchall()
        return [RunRecord.model_validate_json(r[0]) for r in rows]

    def add_run_counts(self, integration_id: str, run_id: str, counts: Counts) -> None:
        """Read-modify-write in one immediate transaction (atomic across processes); the
        update that completes a published run marks it finished, and a finished run's counts
        no longer change (a late duplicate delivery is not counted twice)."""
        with self._transaction("add run counts") as db:
            row = db.execute(
                "SELECT body FROM runs WHERE run_id=? AND integration_id=?",
                (run_id, integration_id),
            ).fetchone()
            if row is not None:
                run = RunRecord.model_validate_json(row[0])
                if run.status != "finished":
                    run.counts = run.counts.add(counts)
                    self._store_run(db, run)

    def add_run_outcomes(
        self,
        integration_id: str,
        run_id: str,
        outcomes: Mapping[str, Counts],
        extra: Counts | None = None,
    ) -> None:
        """One immediate transaction: each patient's ``INSERT OR IGNORE`` into
        ``run_outcomes`` tells whether it is the run's first outcome of that patient (only
        then are its counts added), and the run's read-modify-write commits with those rows.
        A run that finishes drops its outcome rows (a finished run's counts never change, so
        they are no longer needed): the table holds the patients of unfinished runs only."""
        with self._transaction("add run outcomes") as db:
            row = db.execute(
                "SELECT body FROM runs WHERE run_id=? AND integration_id=?",
                (run_id, integration_id),
            ).fetchone()
            if row is None:
                return
            run = RunRecord.model_validate_json(row[0])
            if run.status == "finished":
                return
            added = extra if extra is not None else Counts()
            for patient_id, counts in outcomes.items():
                first = db.execute(
                    "INSERT OR IGNORE INTO run_outcomes VALUES (?,?)", (run_id, patient_id)
                ).rowcount
                if first:
                    added = added.add(counts)
            if added == Counts():
                return  # no new outcome: the run (and its rows) stay as they are
            run.counts = run.counts.add(added)
            self._store_run(db, run)

    @staticmethod
    def _store_run(db: sqlite3.Connection, run: RunRecord) -> None:
        """Write the updated ``run`` (inside the caller's transaction), finishing it when its
        last patient has an outcome; a run that finishes forgets its recorded outcomes."""
        if run.settle(datetime.now(UTC)):
            db.execute("DELETE FROM run_outcomes WHERE run_id=?", (run.run_id,))
        db.execute("UPDATE runs SET body=? WHERE run_id=?", (run.model_dump_json(), run.run_id))

    def get_watermark(self, integration_id: str, name: str) -> datetime | None:
        """The stored mark, or None."""
        with self._using("read watermark") as db:
            row = db.execute(
                "SELECT value FROM watermarks WHERE integration_id=? AND name=?",
                (integration_id, name),
            ).fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    def set_watermark(self, integration_id: str, name: str, value: datetime) -> None:
        """Store the mark."""
        with self._using("write watermark") as db:
            db.execute(
                "INSERT OR REPLACE INTO watermarks VALUES (?,?,?)",
                (integration_id, name, value.isoformat()),
            )

    def append_audit(self, record: AuditRecord) -> None:
        """Append one record."""
        with self._using("append audit record") as db:
            db.execute(
                "INSERT INTO audit(integration_id, patient_id, body) VALUES (?,?,?)",
                (record.integration_id, record.patient_id, record.model_dump_json()),
            )

    def get_synced(self, integration_id: str, patient_id: str) -> dict[str, str]:
        """The patient's digests by name."""
        with self._using("read synced digests") as db:
            rows = db.execute(
                "SELECT name, digest FROM synced WHERE integration_id=? AND patient_id=?",
                (integration_id, patient_id),
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def put_synced(self, integration_id: str, patient_id: str, digests: Mapping[str, str]) -> None:
        """Upsert one row per name, in one transaction (one commit, not one per name)."""
        with self._transaction("write synced digests") as db:
            db.executemany(
                "INSERT OR REPLACE INTO synced VALUES (?,?,?,?)",
                [(integration_id, patient_id, k, v) for k, v in digests.items()],
            )

    def list_audit(self, integration_id: str, patient_id: str | None = None) -> list[AuditRecord]:
        """Audit records in the order they were written."""
        query, params = "SELECT body FROM audit WHERE integration_id=?", [integration_id]
        if patient_id:
            query += " AND patient_id=?"
            params.append(patient_id)
        with self._using("list audit records") as db:
            rows = db.execute(query + " ORDER BY seq", params).fetchall()
        return [AuditRecord.model_validate_json(r[0]) for r in rows]

    def add_pending(self, integration_id: str, patients: Sequence[PendingPatient]) -> None:
        """Upsert staged patients in one transaction."""
        with self._transaction("stage pending patients") as db:
            for p in patients:
                row = db.execute(
                    "SELECT dirty_since, reasons FROM pending"
                    " WHERE integration_id=? AND patient_id=?",
                    (integration_id, p.patient_id),
                ).fetchone()
                since, reasons = _utc(p.dirty_since), set(p.reasons)
                if row is not None:
                    since = min(since, _utc(datetime.fromisoformat(row[0])))
                    reasons |= set(json.loads(row[1]))
                db.execute(
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

    def list_pending(
        self, integration_id: str, *, after: str | None = None, limit: int = 1000
    ) -> list[PendingPatient]:
        """One page of staged patients in patient-id order."""
        with self._using("list pending patients") as db:
            rows = db.execute(
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
        """Delete the listed versions only, in one transaction (one commit, not one per row)."""
        with self._transaction("remove pending patients") as db:
            db.executemany(
                "DELETE FROM pending WHERE integration_id=? AND patient_id=? AND version=?",
                [(integration_id, p.patient_id, p.version) for p in patients],
            )

    def try_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew the lease with one conditional upsert."""
        now = time.time()
        with self._using("take lease") as db:
            cursor = db.execute(_TAKE_LEASE, (name, owner, now + ttl_seconds, now))
        return cursor.rowcount > 0

    def try_lease_many(self, names: Sequence[str], owner: str, ttl_seconds: float) -> set[str]:
        """The conditional upsert of ``try_lease`` per name, all in one immediate transaction
        (one commit for the batch)."""
        unique = list(dict.fromkeys(names))
        if not unique:
            return set()
        taken: set[str] = set()
        now = time.time()
        with self._transaction("take leases") as db:
            for name in unique:
                if db.execute(_TAKE_LEASE, (name, owner, now + ttl_seconds, now)).rowcount > 0:
                    taken.add(name)
        return taken

    def release_lease(self, name: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it."""
        with self._using("release lease") as db:
            db.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner))

    def release_lease_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Drop each lease its owner holds, in one immediate transaction."""
        if not pairs:
            return
        with self._transaction("release leases") as db:
            db.executemany("DELETE FROM leases WHERE name=? AND owner=?", list(pairs))

    def put_dead_letter(self, dead: DeadLetter) -> None:
        """Insert or replace the index entry."""
        # UTC ISO text of one fixed width sorts by instant.
        at = _utc(dead.dead_lettered_at).isoformat(timespec="microseconds")
        with self._using("index dead letter") as db:
            db.execute(
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
        with self._using("list dead letters") as db:
            rows = db.execute(query, (*params, max(0, limit))).fetchall()
        return [DeadLetter.model_validate_json(r[0]) for r in rows]

    def remove_dead_letters(self, message_ids: Sequence[str]) -> None:
        """Delete the entries in one transaction; unknown ids are ignored."""
        with self._transaction("remove dead letters") as db:
            db.executemany(
                "DELETE FROM dead_letters WHERE message_id=?", [(m,) for m in message_ids]
            )

    def index_appointments(
        self, integration_id: str, patient_id: str, appointment_ids: Sequence[str]
    ) -> None:
        """Replace the patient's indexed appointments in one transaction."""
        with self._transaction("write appointment index") as db:
            db.execute(
                "DELETE FROM appointment_index WHERE integration_id=? AND patient_id=?",
                (integration_id, patient_id),
            )
            db.executemany(
                "INSERT OR IGNORE INTO appointment_index VALUES (?,?,?)",
                [(integration_id, a, patient_id) for a in dict.fromkeys(appointment_ids)],
            )

    def patients_for_appointments(
        self, integration_id: str, appointment_ids: Sequence[str]
    ) -> dict[str, list[str]]:
        """One indexed lookup per appointment."""
        out: dict[str, list[str]] = {}
        with self._using("read appointment index") as db:
            for appointment_id in dict.fromkeys(appointment_ids):
                rows = db.execute(
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
