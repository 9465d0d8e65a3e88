"""Firestore state store: the production backend behind the same contract as ``sqlite``.

Layout (``{prefix}`` lets several deployments, or test runs, share one project)::

    {prefix}-integrations/{integration_id}            parent path only; never written
        patients/{patient_id}         PatientState: ids, content_hash, outcome, updated_at,
                                      entry and plan as canonical JSON text
        {prefix}-runs/{run_id}        RunRecord fields; started_at / finished_at as timestamps
            outcomes/{patient_id}     {patient_id, expires_at}: the patient's outcome is in
                                      the run's counts (``add_run_outcomes``)
        watermarks/{name}             {"value": timestamp}
        audit/{random id | key}       AuditRecord fields, ``at`` as a timestamp, plus ``seq``;
                                      named by the record's key when recorded with its state
        pending/{patient_id}          PendingPatient: patient_id, dirty_since (timestamp),
                                      reasons (sorted array), version
        synced/{patient_id}           {"digests": {name: digest}}, merged per name
        appointment-index/{appointment_id}~{patient_id}
                                      {appointment_id, patient_id}: one pair per appointment a
                                      patient's recorded entry contained
    {prefix}-leases/{name}                            name, owner, expires_at (timestamp)
    {prefix}-dead-letters/{message_id}                DeadLetter fields, dead_lettered_at as a
                                                      timestamp (the dead-letter index)

Ids become document ids through an injective escape (``_doc_id``): ASCII letters, digits,
``-`` and a non-leading ``_`` stay as they are, every other UTF-8 byte becomes ``%XX``. So no
id can contain ``/`` and reach another integration's documents. Documents also store the ids
verbatim; reads never decode a path.

The run collection carries the prefix because ``list_runs()`` without an integration is a
collection-group query, which matches a collection id anywhere in the database.

Choices that differ from a naive ``model_dump`` and why:

* ``entry`` and ``plan`` are stored as JSON text, not maps. Firestore refuses arrays nested
  directly in arrays, which JSON (and an agent's operation args) may contain; and every map
  field is indexed by default, so a large entry would cost thousands of index entries (40,000
  is the per-document cap) and would index patient data no query needs.
* Datetimes are stored as Firestore timestamps, so runs sort by instant; they come back as
  aware UTC (a naive datetime is read as UTC, as the client library does).
* ``seq`` orders the audit: the writer's wall clock in nanoseconds, forced strictly
  increasing within the process, then the document's id as a tie-breaker. Appends
  from one process list in write order; across processes the order is as good as the clocks
  (NTP, milliseconds). The document id is chosen before the write (random, or the
  ``PatientRecord.key``), so a retried commit rewrites the same record instead of duplicating
  it; a record recorded again under its key moves to the position of the later write.
* ``record_patients`` writes each record's stale index pairs (deleted), new pairs, state and
  audit record in one atomic batch, and packs whole records into batches of at most 500
  writes, so a patient's state never commits without its audit record or the reverse. Only an
  index of more than 498 changed pairs spills: its first pairs commit in batches of their own
  ahead of the record's batch (a re-record replaces them). The stored pairs are read first,
  30 patients per ``in`` query; callers hold the patients' leases, so nobody indexes them
  meanwhile.

Limits: a document is at most 1 MiB (1,048,576 bytes, counted as Firestore does: UTF-8 bytes
of strings plus one, eight bytes per number or timestamp, the path, 32 bytes overhead). A
patient's state holds its whole canonical entry, so ``put_patient`` measures the document
first and raises ``FatalError`` (dead-letter: the same entry will never fit) without writing;
the previous state stays. ``add_pending`` measures each merged pending document the same
way (only thousands of reasons could reach the limit). SQLite has no such limit.

Staging and leases are read-check-write cycles made atomic with document preconditions
(optimistic concurrency): a cycle reads the documents, computes the new values, then commits
its writes in one atomic batch where every write carries a precondition on what was read
(``create`` for "still absent", ``last_update_time`` for "unchanged since read"). A concurrent
change fails the whole batch (``AlreadyExists`` / ``FailedPrecondition``), nothing is written,
and the cycle runs again from a fresh read after a short jittered pause, until it commits or
``timeout`` has passed (then ``StoreUnavailable``: contention, try later). Each read and
commit keeps its own ``timeout``, so a contended call may take a few times ``timeout``. A
batch holds at most 500 writes, so ``add_pending`` and ``remove_pending`` commit 500 patients
at a time: each batch is atomic, a whole larger call is not (SQLite's is), which is harmless
because a retried call re-stages or re-removes idempotently (``version`` aside).

Why not the client library's ``@transactional``, which gives the same isolation: its begin
and commit calls take no retry or timeout, so they run the library's own 60 s retry budget
(measured: against an unreachable server a transaction fails after ~56 s, and then as a
``ValueError`` from its rollback, which hides the vendor error this module converts).

* ``add_pending`` merges duplicates in the call first (as SQLite's row-by-row upsert does:
  each occurrence adds one to ``version``), then per batch: earliest ``dirty_since``, sorted
  union of ``reasons``, ``version`` + occurrences; a new patient starts at the occurrences.
* ``list_pending`` orders by the stored ``patient_id`` field, not the document id: escaped ids
  sort differently (``%`` < digits). Firestore orders strings by UTF-8 bytes, as SQLite's
  BINARY collation and Python's ``str`` comparison do.
* ``remove_pending`` deletes a document only under ``last_update_time`` of a read that showed
  the listed ``version``: a staging committed after that read fails the batch, and the re-read
  keeps the patient.
* ``add_run_outcomes`` reads the run and the outcome documents of up to 499 patients, then
  commits one batch: ``create`` for each patient without one (a concurrent writer's outcome
  fails the batch, and the re-read skips that patient) and the run's update under
  ``last_update_time``; so the counts and the outcomes that justify them commit together, and
  a larger call commits 499 patients at a time, each part once. Outcome documents carry
  ``expires_at`` (30 days on): a TTL policy on ``outcomes.expires_at`` may sweep them once
  their runs are long finished (a finished run's counts never change).
* ``try_lease_many`` and ``release_lease_many`` run the same cycle as their single versions
  over up to 500 leases at once: one ``get_all``, one batch of conditional writes.
* Leases expire by the caller's wall clock (as in SQLite): hosts need NTP-synchronised clocks,
  and a lease should outlive the clock skew by far. Expired leases stay until taken over or
  released; a TTL policy on ``{prefix}-leases.expires_at`` may sweep them.

Indexes: every query uses one field, so single-field indexes suffice, except that
``list_runs()`` for all integrations needs a collection-group index on
``{prefix}-runs.started_at`` (descending), declared with the deployment. ``list_audit`` for one
patient filters by equality and sorts in memory, so it needs no composite index; so does
``list_dead_letters`` for one integration (the index is one top-level collection, so listing
every integration's dead letters is a plain ordered query, not a collection-group one).

Errors are converted here: unavailable, deadline, internal, aborted, transport errors and
lasting contention → ``StoreUnavailable`` (after the store's own retries, bounded by
``timeout``: retriable, and a 503 on request paths); quota → ``RateLimited``; permission,
authentication, invalid argument, missing database or index → ``ConfigurationError``; any
other refusal → ``FatalError``. A precondition failure on commit is not an error but a lost
race: the cycle above retries it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.cloud import firestore

from app.core.errors import (
    ConfigurationError,
    ConflictingWrite,
    FatalError,
    HealthieSyncError,
    RateLimited,
    StoreUnavailable,
)
from app.core.models import Counts, RunRecord, WritePlan
from app.resilience.retry import Backoff, RetryPolicy, google_rpc_retry
from app.state.base import AuditRecord, DeadLetter, PatientRecord, PatientState, PendingPatient

#: Firestore's maximum document size, in its own accounting.
MAX_DOCUMENT_BYTES = 1_048_576
_MAX_ID_BYTES = 1500
_MAX_BATCH_WRITES = 500
#: how long a run's outcome document is kept at least (see ``add_run_outcomes``)
_OUTCOME_TTL = timedelta(days=30)
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

_RETRIABLE = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Aborted,
    gexc.ResourceExhausted,
)
_CONFIGURATION = (
    gexc.PermissionDenied,
    gexc.Unauthenticated,
    gexc.InvalidArgument,
    gexc.NotFound,
    gexc.FailedPrecondition,
    auth_exc.RefreshError,
    auth_exc.DefaultCredentialsError,
)
#: What a commit raises when a write's precondition no longer holds: another writer won.
_CONFLICTS = (gexc.AlreadyExists, gexc.FailedPrecondition)

_T = TypeVar("_T")
_Snapshot = firestore.DocumentSnapshot[firestore.DocumentReference]
#: one write of a batch: set the document to the map, or delete it (None)
_Write = tuple[firestore.DocumentReference, dict[str, Any] | None]


class FirestoreStateStore:
    """Engine state in Firestore; takes ownership of ``client`` (``close`` closes it)."""

    def __init__(
        self, client: firestore.Client, *, prefix: str = "healthie-sync", timeout: float = 30.0
    ) -> None:
        """``timeout`` bounds each call, retries of transient errors included, in seconds."""
        if not _PREFIX.match(prefix):
            raise ConfigurationError(
                f"Firestore prefix {prefix!r} must be letters, digits, '-' or '_' (at most 100)"
            )
        self._client = client
        self._prefix = prefix
        self._runs = f"{prefix}-runs"
        self._timeout = timeout
        self._retry = google_rpc_retry(
            _RETRIABLE, backoff=Backoff(initial=0.1, cap=5.0), deadline=timeout
        )

    def get_patient(self, integration_id: str, patient_id: str) -> PatientState | None:
        """The last processed state of the patient, or None."""
        ref = self._doc(integration_id, "patients", patient_id)
        with _vendor_errors("read patient state"):
            snapshot = ref.get(retry=self._retry, timeout=self._timeout)
        data = snapshot.to_dict()
        if data is None:
            return None
        plan = data["plan"]
        return PatientState(
            integration_id=data["integration_id"],
            patient_id=data["patient_id"],
            content_hash=data["content_hash"],
            entry=json.loads(data["entry"]),
            plan=WritePlan.model_validate_json(plan) if plan is not None else None,
            outcome=data["outcome"],
            updated_at=_from_firestore(data["updated_at"]),
            rules=str(data.get("rules") or ""),
        )

    def put_patient(self, state: PatientState) -> None:
        """Replace the patient's state; ``FatalError`` if it exceeds Firestore's 1 MiB limit."""
        ref, doc = self._patient_doc(state)
        self._set(ref, doc, "write patient state")

    def record_patients(self, records: Sequence[PatientRecord]) -> list[HealthieSyncError | None]:
        """Each record's index changes, state and audit record in one atomic batch, whole
        records packed up to 500 writes a batch (see the module docstring). A state over
        1 MiB is refused (``FatalError``) before anything of its record is written; the first
        commit that fails fails its records and every later one, which stay unwritten."""
        results: list[HealthieSyncError | None] = [None] * len(records)
        docs: dict[int, tuple[firestore.DocumentReference, dict[str, Any]]] = {}
        for n, record in enumerate(records):
            try:
                docs[n] = self._patient_doc(record.state)
            except FatalError as exc:
                results[n] = exc
        try:
            held = self._indexed(
                {(records[n].state.integration_id, records[n].state.patient_id) for n in docs}
            )
        except HealthieSyncError as exc:
            return [exc if n in docs else error for n, error in enumerate(results)]
        units: list[tuple[int | None, list[_Write]]] = []
        for n, (state_ref, state_doc) in docs.items():
            record = records[n]
            patient = (record.state.integration_id, record.state.patient_id)
            writes = self._index_writes(*patient, held.get(patient, set()), record.appointment_ids)
            held[patient] = set(record.appointment_ids)
            writes += [(state_ref, state_doc), self._audit_write(record.audit, record.key)]
            spill = len(writes) - _MAX_BATCH_WRITES
            if spill > 0:  # only index pairs spill: state and audit stay together
                for start in range(0, spill, _MAX_BATCH_WRITES):
                    units.append((None, writes[start : min(start + _MAX_BATCH_WRITES, spill)]))
                writes = writes[spill:]
            units.append((n, writes))
        batches = _pack(units)
        for k, (_, writes) in enumerate(batches):
            try:
                self._write_batch(writes, "record patients")
            except HealthieSyncError as exc:
                for owners, _ in batches[k:]:
                    for n in owners:
                        results[n] = exc
                break
        return results

    def save_run(self, run: RunRecord) -> None:
        """Insert or update ``run`` as SQLite does: an update keeps the counts workers added
        meanwhile and a finished run stays final (``merge_run``), and a published run whose
        patients all have their outcome is stored finished (``RunRecord.settle``). A
        read-check-write cycle: the write is conditional on the document as read."""
        from app.core.models import merge_run

        ref = self._doc(run.integration_id, self._runs, run.run_id)

        def attempt() -> None:
            snapshot = self._get(ref, "read run")
            held = snapshot.to_dict()
            stored = (
                run.model_copy(deep=True)
                if held is None
                else merge_run(RunRecord.model_validate(_plain_datetimes(held)), run)
            )
            stored.settle(datetime.now(UTC))
            doc = stored.model_dump(mode="json")
            doc["started_at"] = _to_firestore(stored.started_at)
            doc["finished_at"] = _to_firestore(stored.finished_at) if stored.finished_at else None
            if held is None:
                self._commit(
                    lambda: ref.create(doc, retry=self._retry, timeout=self._timeout), "save run"
                )
                return
            option = self._client.write_option(last_update_time=snapshot.update_time)
            self._commit(
                lambda: ref.update(doc, option=option, retry=self._retry, timeout=self._timeout),
                "save run",
            )

        self._until_unchanged("save run", attempt)

    def add_run_counts(self, integration_id: str, run_id: str, counts: Counts) -> None:
        """Add ``counts`` in a read-check-write cycle conditional on the run as read (atomic
        across writers); the update that completes a published run marks it finished, and a
        finished run's counts no longer change."""
        if not any(counts.model_dump().values()):
            return
        ref = self._doc(integration_id, self._runs, run_id)

        def attempt() -> None:
            snapshot = self._get(ref, "read run")
            held = snapshot.to_dict()
            if held is None:
                return  # no such run (e.g. a replayed item whose run was pruned)
            run = RunRecord.model_validate(_plain_datetimes(held))
            if run.status == "finished":
                return
            run.counts = run.counts.add(counts)
            change: dict[str, Any] = {"counts": run.counts.model_dump(mode="json")}
            if run.settle(datetime.now(UTC)) and run.finished_at is not None:
                change["status"] = run.status
                change["finished_at"] = _to_firestore(run.finished_at)
            option = self._client.write_option(last_update_time=snapshot.update_time)
            self._commit(
                lambda: ref.update(change, option=option, retry=self._retry, timeout=self._timeout),
                "add run counts",
            )

        self._until_unchanged("add run counts", attempt)

    def add_run_outcomes(
        self,
        integration_id: str,
        run_id: str,
        outcomes: Mapping[str, Counts],
        extra: Counts | None = None,
    ) -> None:
        """Read-check-write cycles of at most 499 patients (plus the run: 500 writes), each
        one atomic batch (see the module docstring); ``extra`` goes with the first."""
        if not outcomes and (extra is None or extra == Counts()):
            return
        run_ref = self._doc(integration_id, self._runs, run_id)
        ids = list(outcomes)
        step = _MAX_BATCH_WRITES - 1
        chunks = [ids[start : start + step] for start in range(0, len(ids), step)] or [[]]
        for n, chunk in enumerate(chunks):
            self._until_unchanged(
                "add run outcomes",
                partial(
                    self._add_outcomes,
                    run_ref,
                    {pid: outcomes[pid] for pid in chunk},
                    extra if n == 0 else None,
                ),
            )

    def _add_outcomes(
        self,
        run_ref: firestore.DocumentReference,
        outcomes: Mapping[str, Counts],
        extra: Counts | None,
    ) -> None:
        """One cycle: the patients without an outcome get one and add their counts."""
        refs = {pid: run_ref.collection("outcomes").document(_doc_id(pid)) for pid in outcomes}
        snapshots = self._get_all([run_ref, *refs.values()], "read run outcomes")
        run_snapshot = snapshots[run_ref.path]
        held = run_snapshot.to_dict()
        if held is None:
            return  # no such run (e.g. a replayed item whose run was pruned)
        run = RunRecord.model_validate(_plain_datetimes(held))
        if run.status == "finished":
            return
        now = datetime.now(UTC)
        added = extra if extra is not None else Counts()
        batch = self._client.batch()
        for pid, ref in refs.items():
            if snapshots[ref.path].exists:
                continue  # the run counted this patient's first outcome already
            batch.create(ref, {"patient_id": pid, "expires_at": now + _OUTCOME_TTL})
            added = added.add(outcomes[pid])
        if len(batch) == 0 and added == Counts():
            return
        run.counts = run.counts.add(added)
        change: dict[str, Any] = {"counts": run.counts.model_dump(mode="json")}
        if run.settle(now) and run.finished_at is not None:
            change["status"] = run.status
            change["finished_at"] = _to_firestore(run.finished_at)
        batch.update(
            run_ref,
            change,
            option=self._client.write_option(last_update_time=run_snapshot.update_time),
        )
        self._commit(
            lambda: batch.commit(retry=self._retry, timeout=self._timeout), "add run outcomes"
        )

    def list_runs(self, integration_id: str | None = None, limit: int = 20) -> list[RunRecord]:
        """Most recent first (by ``started_at``); all integrations when ``integration_id`` is
        None, through the ``{prefix}-runs`` collection-group index."""
        if limit <= 0:
            return []
        source = (
            self._integration(integration_id).collection(self._runs)
            if integration_id
            else self._client.collection_group(self._runs)
        )
        query = source.order_by("started_at", direction=firestore.Query.DESCENDING).limit(limit)
        docs = self._stream(query, "list runs")
        return [RunRecord.model_validate(_plain_datetimes(d)) for d in docs]

    def get_watermark(self, integration_id: str, name: str) -> datetime | None:
        """The stored mark (aware UTC), or None."""
        ref = self._doc(integration_id, "watermarks", name)
        with _vendor_errors("read watermark"):
            data = ref.get(retry=self._retry, timeout=self._timeout).to_dict()
        return _from_firestore(data["value"]) if data else None

    def set_watermark(self, integration_id: str, name: str, value: datetime) -> None:
        """Store the mark (last write wins, as in SQLite; callers keep it monotonic)."""
        ref = self._doc(integration_id, "watermarks", name)
        self._set(ref, {"value": _to_firestore(value)}, "write watermark")

    def append_audit(self, record: AuditRecord) -> None:
        """Append one record."""
        ref, doc = self._audit_write(record, None)
        self._set(ref, doc, "append audit record")

    def get_synced(self, integration_id: str, patient_id: str) -> dict[str, str]:
        """The patient's digests by name."""
        ref = self._doc(integration_id, "synced", patient_id)
        with _vendor_errors("read synced digests"):
            data = ref.get(retry=self._retry, timeout=self._timeout).to_dict()
        digests = (data or {}).get("digests") or {}
        return {str(k): str(v) for k, v in digests.items()}

    def put_synced(self, integration_id: str, patient_id: str, digests: Mapping[str, str]) -> None:
        """A merge write: the server replaces each given name's field and keeps the others
        (names are quoted as field paths by the client, so any text is one field)."""
        if not digests:
            return
        ref = self._doc(integration_id, "synced", patient_id)
        with _vendor_errors("write synced digests"):
            ref.set(
                {"digests": dict(digests)}, merge=True, retry=self._retry, timeout=self._timeout
            )

    def list_audit(self, integration_id: str, patient_id: str | None = None) -> list[AuditRecord]:
        """Audit records in the order they were written (see ``seq`` above)."""
        audit = self._integration(integration_id).collection("audit")
        query = (
            audit.where(filter=firestore.FieldFilter("patient_id", "==", patient_id))
            if patient_id
            else audit.order_by("seq")
        )
        docs = self._stream(query, "list audit records")
        docs.sort(key=lambda d: str(d["seq"]))
        return [
            AuditRecord.model_validate(_plain_datetimes({k: v for k, v in d.items() if k != "seq"}))
            for d in docs
        ]

    def add_pending(self, integration_id: str, patients: Sequence[PendingPatient]) -> None:
        """Stage patients: earliest ``dirty_since``, sorted union of ``reasons``, ``version``
        incremented; atomic per batch of 500 (see the module docstring)."""
        merged: dict[str, tuple[datetime, set[str], int]] = {}
        for p in patients:
            since, reasons, count = merged.get(p.patient_id, (p.dirty_since, set(), 0))
            merged[p.patient_id] = (
                min(_to_firestore(since), _to_firestore(p.dirty_since)),
                reasons | set(p.reasons),
                count + 1,
            )
        ids = list(merged)
        for start in range(0, len(ids), _MAX_BATCH_WRITES):
            chunk = {pid: merged[pid] for pid in ids[start : start + _MAX_BATCH_WRITES]}
            self._until_unchanged(
                "stage pending patients", partial(self._stage, integration_id, chunk)
            )

    def list_pending(
        self, integration_id: str, *, after: str | None = None, limit: int = 1000
    ) -> list[PendingPatient]:
        """One page of staged patients in ``patient_id`` order, strictly after ``after``."""
        if limit <= 0:
            return []
        query = self._integration(integration_id).collection("pending").order_by("patient_id")
        if after is not None:
            query = query.where(filter=firestore.FieldFilter("patient_id", ">", after))
        docs = self._stream(query.limit(limit), "list pending patients")
        return [
            PendingPatient(
                patient_id=d["patient_id"],
                dirty_since=_from_firestore(d["dirty_since"]),
                reasons=list(d["reasons"]),
                version=d["version"],
            )
            for d in docs
        ]

    def remove_pending(self, integration_id: str, patients: Sequence[PendingPatient]) -> None:
        """Unstage each patient whose stored version still equals the given one."""
        versions: dict[str, set[int]] = {}
        for p in patients:
            versions.setdefault(p.patient_id, set()).add(p.version)
        ids = list(versions)
        for start in range(0, len(ids), _MAX_BATCH_WRITES):
            chunk = {pid: versions[pid] for pid in ids[start : start + _MAX_BATCH_WRITES]}
            self._until_unchanged(
                "remove pending patients", partial(self._unstage, integration_id, chunk)
            )

    def try_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew the lease; False while another owner holds it unexpired."""
        ref = self._lease(name)

        def attempt() -> bool:
            snapshot = self._get(ref, "read lease")
            held, now = snapshot.to_dict(), datetime.now(UTC)
            lease = {
                "name": name,
                "owner": owner,
                "expires_at": now + timedelta(seconds=ttl_seconds),
            }
            if held is None:
                self._commit(
                    lambda: ref.create(lease, retry=self._retry, timeout=self._timeout),
                    "take lease",
                )
            elif held["owner"] == owner or _from_firestore(held["expires_at"]) <= now:
                option = self._client.write_option(last_update_time=snapshot.update_time)
                self._commit(
                    lambda: ref.update(
                        lease, option=option, retry=self._retry, timeout=self._timeout
                    ),
                    "take lease",
                )
            else:
                return False
            return True

        return self._until_unchanged("take lease", attempt)

    def try_lease_many(self, names: Sequence[str], owner: str, ttl_seconds: float) -> set[str]:
        """``try_lease`` for 500 names per read-check-write cycle (one atomic batch each)."""
        unique = list(dict.fromkeys(names))
        taken: set[str] = set()
        for start in range(0, len(unique), _MAX_BATCH_WRITES):
            chunk = unique[start : start + _MAX_BATCH_WRITES]
            taken |= self._until_unchanged(
                "take leases", partial(self._take_leases, chunk, owner, ttl_seconds)
            )
        return taken

    def _take_leases(self, names: Sequence[str], owner: str, ttl_seconds: float) -> set[str]:
        """One cycle: create the absent leases, update the expired and the owner's own."""
        refs = {name: self._lease(name) for name in names}
        snapshots = self._get_all(list(refs.values()), "read leases")
        now = datetime.now(UTC)
        batch = self._client.batch()
        taken: set[str] = set()
        for name, ref in refs.items():
            snapshot = snapshots[ref.path]
            held = snapshot.to_dict()
            lease = {
                "name": name,
                "owner": owner,
                "expires_at": now + timedelta(seconds=ttl_seconds),
            }
            if held is None:
                batch.create(ref, lease)
            elif held["owner"] == owner or _from_firestore(held["expires_at"]) <= now:
                option = self._client.write_option(last_update_time=snapshot.update_time)
                batch.update(ref, lease, option=option)
            else:
                continue  # another owner's live lease
            taken.add(name)
        if taken:
            self._commit(
                lambda: batch.commit(retry=self._retry, timeout=self._timeout), "take leases"
            )
        return taken

    def release_lease_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        """``release_lease`` for 500 names per read-check-delete cycle."""
        owners: dict[str, set[str]] = {}
        for name, owner in pairs:
            owners.setdefault(name, set()).add(owner)
        names = list(owners)
        for start in range(0, len(names), _MAX_BATCH_WRITES):
            chunk = {name: owners[name] for name in names[start : start + _MAX_BATCH_WRITES]}
            self._until_unchanged("release leases", partial(self._release_leases, chunk))

    def _release_leases(self, owners: Mapping[str, set[str]]) -> None:
        """One cycle: delete each lease held by one of its given owners, as read."""
        refs = {name: self._lease(name) for name in owners}
        snapshots = self._get_all(list(refs.values()), "read leases")
        batch = self._client.batch()
        for name, ref in refs.items():
            snapshot = snapshots[ref.path]
            held = snapshot.to_dict()
            if held is not None and held["owner"] in owners[name]:
                option = self._client.write_option(last_update_time=snapshot.update_time)
                batch.delete(ref, option=option)
        if len(batch) == 0:
            return
        self._commit(
            lambda: batch.commit(retry=self._retry, timeout=self._timeout), "release leases"
        )

    def release_lease(self, name: str, owner: str) -> None:
        """Delete the lease if ``owner`` holds it (expired or not)."""
        ref = self._lease(name)

        def attempt() -> None:
            snapshot = self._get(ref, "read lease")
            held = snapshot.to_dict()
            if held is None or held["owner"] != owner:
                return
            option = self._client.write_option(last_update_time=snapshot.update_time)
            self._commit(
                lambda: ref.delete(option=option, retry=self._retry, timeout=self._timeout),
                "release lease",
            )

        self._until_unchanged("release lease", attempt)

    def put_dead_letter(self, dead: DeadLetter) -> None:
        """Index one dead letter (last write wins)."""
        doc = dead.model_dump(mode="json")
        doc["dead_lettered_at"] = _to_firestore(dead.dead_lettered_at)
        self._set(self._dead_letter(dead.message_id), doc, "index dead letter")

    def list_dead_letters(
        self, integration_id: str | None = None, *, limit: int = 10_000
    ) -> list[DeadLetter]:
        """Oldest first; one integration's by an equality filter, sorted in memory."""
        if limit <= 0:
            return []
        collection = self._client.collection(f"{self._prefix}-dead-letters")
        query = (
            collection.where(filter=firestore.FieldFilter("integration_id", "==", integration_id))
            if integration_id is not None
            else collection.order_by("dead_lettered_at").limit(limit)
        )
        found = [
            DeadLetter.model_validate(_plain_datetimes(d))
            for d in self._stream(query, "list dead letters")
        ]
        found.sort(key=lambda d: (d.dead_lettered_at, d.message_id))
        return found[:limit]

    def remove_dead_letters(self, message_ids: Sequence[str]) -> None:
        """Delete the entries, 500 per atomic batch; unknown ids are ignored."""
        ids = list(dict.fromkeys(message_ids))
        for start in range(0, len(ids), _MAX_BATCH_WRITES):
            batch = self._client.batch()
            for message_id in ids[start : start + _MAX_BATCH_WRITES]:
                batch.delete(self._dead_letter(message_id))
            with _vendor_errors("remove dead letters"):
                batch.commit(retry=self._retry, timeout=self._timeout)

    def index_appointments(
        self, integration_id: str, patient_id: str, appointment_ids: Sequence[str]
    ) -> None:
        """Replace the patient's pairs: stale ones deleted, new ones set, 500 writes per
        atomic batch (a larger set is not atomic as a whole; a retried call converges).
        Callers hold the patient's lease, so no two writers index one patient at once."""
        index = self._integration(integration_id).collection("appointment-index")
        query = index.where(filter=firestore.FieldFilter("patient_id", "==", patient_id))
        stored = {str(d["appointment_id"]) for d in self._stream(query, "read appointment index")}
        wanted = set(appointment_ids)
        writes = [(a, False) for a in sorted(stored - wanted)]
        writes += [(a, True) for a in sorted(wanted - stored)]
        for start in range(0, len(writes), _MAX_BATCH_WRITES):
            batch = self._client.batch()
            for appointment_id, add in writes[start : start + _MAX_BATCH_WRITES]:
                ref = index.document(_pair_id(appointment_id, patient_id))
                if add:
                    batch.set(ref, {"appointment_id": appointment_id, "patient_id": patient_id})
                else:
                    batch.delete(ref)
            with _vendor_errors("write appointment index"):
                batch.commit(retry=self._retry, timeout=self._timeout)

    def patients_for_appointments(
        self, integration_id: str, appointment_ids: Sequence[str]
    ) -> dict[str, list[str]]:
        """``in`` queries of 30 appointment ids (Firestore's cap on ``in`` values)."""
        index = self._integration(integration_id).collection("appointment-index")
        ids = list(dict.fromkeys(appointment_ids))
        out: dict[str, list[str]] = {a: [] for a in ids}
        for start in range(0, len(ids), 30):
            chunk = ids[start : start + 30]
            query = index.where(filter=firestore.FieldFilter("appointment_id", "in", chunk))
            for doc in self._stream(query, "read appointment index"):
                out[str(doc["appointment_id"])].append(str(doc["patient_id"]))
        return {a: sorted(patients) for a, patients in out.items()}

    def close(self) -> None:
        """Close the client."""
        self._client.close()  # type: ignore[no-untyped-call]

    def _integration(self, integration_id: str) -> firestore.DocumentReference:
        return self._client.collection(f"{self._prefix}-integrations").document(
            _doc_id(integration_id)
        )

    def _doc(self, integration_id: str, collection: str, key: str) -> firestore.DocumentReference:
        parent = self._integration(integration_id)
        ref: firestore.DocumentReference = parent.collection(collection).document(_doc_id(key))
        return ref

    def _dead_letter(self, message_id: str) -> firestore.DocumentReference:
        return self._client.collection(f"{self._prefix}-dead-letters").document(_doc_id(message_id))

    def _lease(self, name: str) -> firestore.DocumentReference:
        return self._client.collection(f"{self._prefix}-leases").document(_doc_id(name))

    def _patient_doc(
        self, state: PatientState
    ) -> tuple[firestore.DocumentReference, dict[str, Any]]:
        """The state's document; ``FatalError`` if it exceeds Firestore's 1 MiB limit."""
        ref = self._doc(state.integration_id, "patients", state.patient_id)
        doc = state.model_dump(mode="json", exclude={"entry", "plan", "updated_at"})
        doc["updated_at"] = _to_firestore(state.updated_at)
        doc["entry"] = _json_text(state.model_dump(mode="json", include={"entry"})["entry"])
        doc["plan"] = state.plan.model_dump_json() if state.plan is not None else None
        size = _document_size(ref.path, doc)
        if size > MAX_DOCUMENT_BYTES:
            raise FatalError(
                f"state of patient {state.patient_id!r} in integration {state.integration_id!r} "
                f"is {size} bytes, over Firestore's {MAX_DOCUMENT_BYTES}-byte (1 MiB) document "
                "limit; the entry is too large to remember, so it was not stored"
            )
        return ref, doc

    def _audit_write(
        self, record: AuditRecord, key: str | None
    ) -> tuple[firestore.DocumentReference, dict[str, Any]]:
        """The audit record's document: named by ``key``, or a random id; ``seq`` taken now."""
        audit = self._integration(record.integration_id).collection("audit")
        ref = audit.document(_doc_id(key)) if key is not None else audit.document()
        doc = record.model_dump(mode="json")
        doc["at"] = _to_firestore(record.at)
        doc["seq"] = f"{_CLOCK.next():020d}-{ref.id}"
        return ref, doc

    def _indexed(self, patients: set[tuple[str, str]]) -> dict[tuple[str, str], set[str]]:
        """The stored appointment pairs of ``patients`` ((integration, patient) pairs), read
        with ``in`` queries of 30 patients (Firestore's cap on ``in`` values)."""
        by_integration: dict[str, list[str]] = {}
        for integration_id, patient_id in sorted(patients):
            by_integration.setdefault(integration_id, []).append(patient_id)
        held: dict[tuple[str, str], set[str]] = {}
        for integration_id, ids in by_integration.items():
            index = self._integration(integration_id).collection("appointment-index")
            for start in range(0, len(ids), 30):
                chunk = ids[start : start + 30]
                query = index.where(filter=firestore.FieldFilter("patient_id", "in", chunk))
                for doc in self._stream(query, "read appointment index"):
                    key = (integration_id, str(doc["patient_id"]))
                    held.setdefault(key, set()).add(str(doc["appointment_id"]))
        return held

    def _index_writes(
        self, integration_id: str, patient_id: str, stored: set[str], wanted: Sequence[str]
    ) -> list[_Write]:
        """What turns the patient's ``stored`` pairs into ``wanted``: stale ones deleted first,
        then the new ones set."""
        index = self._integration(integration_id).collection("appointment-index")
        keep = set(wanted)
        writes: list[_Write] = []
        for appointment_id in sorted(stored - keep):
            writes.append((index.document(_pair_id(appointment_id, patient_id)), None))
        for appointment_id in sorted(keep - stored):
            pair = {"appointment_id": appointment_id, "patient_id": patient_id}
            writes.append((index.document(_pair_id(appointment_id, patient_id)), pair))
        return writes

    def _write_batch(self, writes: Sequence[_Write], action: str) -> None:
        """Commit ``writes`` as one atomic batch (sets and deletes: a retried commit rewrites
        the same documents, so the client's retries are safe)."""
        batch = self._client.batch()
        for ref, doc in writes:
            if doc is None:
                batch.delete(ref)
            else:
                batch.set(ref, doc)
        with _vendor_errors(action):
            batch.commit(retry=self._retry, timeout=self._timeout)

    def _stage(
        self, integration_id: str, chunk: Mapping[str, tuple[datetime, set[str], int]]
    ) -> None:
        """One read-merge-write cycle over at most 500 patients."""
        refs = {pid: self._doc(integration_id, "pending", pid) for pid in chunk}
        snapshots = self._get_all(list(refs.values()), "read pending patients")
        batch = self._client.batch()
        for pid, (since, reasons, count) in chunk.items():
            ref, snapshot = refs[pid], snapshots[refs[pid].path]
            stored = snapshot.to_dict()
            doc = {
                "patient_id": pid,
                "dirty_since": since,
                "reasons": sorted(reasons),
                "version": count,
            }
            if stored is not None:
                doc["dirty_since"] = min(since, _from_firestore(stored["dirty_since"]))
                doc["reasons"] = sorted(reasons | set(stored["reasons"]))
                doc["version"] = int(stored["version"]) + count
            size = _document_size(ref.path, doc)
            if size > MAX_DOCUMENT_BYTES:
                raise FatalError(
                    f"staging patient {pid!r} in integration {integration_id!r} needs {size} "
                    f"bytes, over Firestore's {MAX_DOCUMENT_BYTES}-byte (1 MiB) document limit"
                )
            if stored is None:
                batch.create(ref, doc)
            else:
                batch.update(
                    ref,
                    doc,
                    option=self._client.write_option(last_update_time=snapshot.update_time),
                )
        self._commit(
            lambda: batch.commit(retry=self._retry, timeout=self._timeout), "stage pending patients"
        )

    def _unstage(self, integration_id: str, chunk: Mapping[str, set[int]]) -> None:
        """One read-check-delete cycle over at most 500 patients."""
        refs = {pid: self._doc(integration_id, "pending", pid) for pid in chunk}
        snapshots = self._get_all(list(refs.values()), "read pending patients")
        batch = self._client.batch()
        for pid, ref in refs.items():
            snapshot = snapshots[ref.path]
            stored = snapshot.to_dict()
            if stored is not None and stored["version"] in chunk[pid]:
                batch.delete(
                    ref, option=self._client.write_option(last_update_time=snapshot.update_time)
                )
        if len(batch) == 0:
            return
        self._commit(
            lambda: batch.commit(retry=self._retry, timeout=self._timeout),
            "remove pending patients",
        )

    def _until_unchanged(self, action: str, cycle: Callable[[], _T]) -> _T:
        """Run ``cycle`` (reads, then writes conditional on them) until its commit finds the
        documents as it read them, or ``UpstreamUnavailable`` once ``timeout`` has passed."""
        # Full jitter: racing writers must not retry in lockstep.
        policy = RetryPolicy(
            max_attempts=1_000_000,
            backoff=Backoff(initial=0.01, cap=0.5, jitter=1.0),
            deadline=self._timeout,
        )
        try:
            return policy.call(cycle)
        except ConflictingWrite as changed:
            raise StoreUnavailable(
                f"Firestore: {action} failed: the documents kept changing under it for "
                f"{self._timeout:g}s (contention)"
            ) from changed.__cause__

    def _commit(self, write: Callable[[], object], action: str) -> None:
        """Run a conditional ``write``; a failed precondition raises ``ConflictingWrite``."""
        try:
            write()
        except _CONFLICTS as exc:
            raise ConflictingWrite(f"Firestore: {action}: documents changed since read") from exc
        except (gexc.GoogleAPIError, auth_exc.GoogleAuthError) as exc:
            raise convert_error(exc, action) from exc

    def _get(self, ref: firestore.DocumentReference, action: str) -> _Snapshot:
        with _vendor_errors(action):
            return ref.get(retry=self._retry, timeout=self._timeout)

    def _get_all(
        self, refs: list[firestore.DocumentReference], action: str
    ) -> dict[str, _Snapshot]:
        """Snapshots (missing documents included) by document path."""
        with _vendor_errors(action):
            snapshots = self._client.get_all(refs, retry=self._retry, timeout=self._timeout)
            return {s.reference.path: s for s in snapshots}

    def _stream(self, query: firestore.Query, action: str) -> list[dict[str, Any]]:
        with _vendor_errors(action):
            return [
                s.to_dict() or {} for s in query.stream(retry=self._retry, timeout=self._timeout)
            ]

    def _set(self, ref: firestore.DocumentReference, doc: dict[str, Any], action: str) -> None:
        with _vendor_errors(action):
            ref.set(doc, retry=self._retry, timeout=self._timeout)


def convert_error(exc: Exception, action: str) -> HealthieSyncError:
    """The engine error for a Google client exception met while doing ``action``."""
    if isinstance(exc, gexc.RetryError) and isinstance(exc.cause, Exception):
        exc = exc.cause  # our retries ran out: classify what kept failing
    message = f"Firestore: {action} failed: {exc}"
    if isinstance(exc, gexc.ResourceExhausted | gexc.TooManyRequests):
        return RateLimited(message)
    if isinstance(exc, _RETRIABLE):  # Aborted is a 409, yet a retry resolves the contention
        return StoreUnavailable(message)
    if isinstance(exc, _CONFIGURATION):
        return ConfigurationError(message)
    if isinstance(exc, gexc.ClientError):
        return FatalError(message)
    # 5xx and transport errors: the same call may work later.
    return StoreUnavailable(message)


@contextmanager
def _vendor_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (gexc.GoogleAPIError, auth_exc.GoogleAuthError) as exc:
        raise convert_error(exc, action) from exc


class _MonotonicClock:
    """Wall-clock nanoseconds, strictly increasing within the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


_CLOCK = _MonotonicClock()


def _pack(units: Sequence[tuple[int | None, list[_Write]]]) -> list[tuple[list[int], list[_Write]]]:
    """Whole units into batches of at most 500 writes, in order; per batch, the records whose
    last unit it holds (a unit of None owns no record: the spill of a large index)."""
    batches: list[tuple[list[int], list[_Write]]] = []
    for owner, writes in units:
        if not batches or len(batches[-1][1]) + len(writes) > _MAX_BATCH_WRITES:
            batches.append(([], []))
        owners, held = batches[-1]
        held.extend(writes)
        if owner is not None:
            owners.append(owner)
    return batches


def _pair_id(appointment_id: str, patient_id: str) -> str:
    return f"{_doc_id(appointment_id)}~{_doc_id(patient_id)}"


def _doc_id(value: str) -> str:
    """An injective escape of ``value`` into a valid Firestore document id."""
    if not value:
        raise FatalError("an empty id cannot name a Firestore document")
    parts: list[str] = []
    for i, char in enumerate(value):
        if char in _PLAIN and not (i == 0 and char == "_"):  # "__x__" ids are reserved
            parts.append(char)
        else:
            parts.extend(f"%{byte:02X}" for byte in char.encode())
    escaped = "".join(parts)
    if len(escaped) > _MAX_ID_BYTES:
        raise FatalError(f"id {value[:40]!r}... is too long for a Firestore document id")
    return escaped


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _to_firestore(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _from_firestore(value: datetime) -> datetime:
    """A plain aware-UTC datetime from the client's ``DatetimeWithNanoseconds``."""
    value = value.astimezone(UTC)
    return datetime.combine(value.date(), value.time(), tzinfo=UTC)


def _plain_datetimes(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _from_firestore(v) if isinstance(v, datetime) else v for k, v in doc.items()}


def _document_size(path: str, doc: Mapping[str, Any]) -> int:
    """Firestore's size of the document at ``path`` holding ``doc`` (its storage-size rules)."""
    name = sum(len(part.encode()) + 1 for part in path.split("/")) + 16
    return name + _value_size(doc) + 32


def _value_size(value: object) -> int:
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, int | float | datetime):
        return 8
    if isinstance(value, str):
        return len(value.encode()) + 1
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, Mapping):
        return sum(len(str(k).encode()) + 1 + _value_size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_value_size(v) for v in value)
    raise TypeError(f"no Firestore size for {type(value).__name__}")
