"""The state contract: what the engine remembers between runs, per integration and patient,
the index of dead letters that lets an operator list them without touching the queue
(``workers.deadletters`` keeps it in step with the dead-letter subscription), and the index
from an appointment to the patients whose recorded entries contained it (kept by
``workers.pipeline.record``, read by the flusher for appointment events).

What a processed item leaves behind is recorded as one step, :meth:`StateStore.record_patients`:
its state, its appointment index and its audit record, atomically and for many items in one
call. So no crash can leave a patient recorded (and skipped as unchanged from then on) without
its audit record, or audited without its state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, Self
from uuid import uuid4

from pydantic import BaseModel, Field, model_validator

from app.core.errors import HealthieSyncError
from app.core.models import Counts, RunRecord, WritePlan


class PatientState(BaseModel):
    """The last processed version of one patient for one integration."""

    integration_id: str
    patient_id: str
    content_hash: str
    entry: dict[str, Any]  # canonical entry, handed to the agent as ``previous``
    plan: WritePlan | None = None
    outcome: str  # "written", "skipped", "dead_lettered", ...
    updated_at: datetime
    #: the rules and mode the decision was made under (``IntegrationClients.rules``); an entry
    #: is unchanged only when this matches too ("" for states written before it existed)
    rules: str = ""


class AuditRecord(BaseModel):
    """What was done for one work item, for operators (ids and counts only, never PHI)."""

    integration_id: str
    patient_id: str
    run_id: str
    at: datetime
    outcome: str
    operations: list[str] = []
    detail: str = ""


class PatientRecord(BaseModel):
    """What one processed item leaves in the state, recorded as one atomic step: the patient's
    new state, the appointments its entry holds (replacing the patient's indexed set, as
    :meth:`StateStore.index_appointments` does) and the item's audit record."""

    state: PatientState
    appointment_ids: list[str] = []
    audit: AuditRecord
    #: names the step: recording the same key again rewrites its audit record, never adds one
    key: str = Field(default_factory=lambda: uuid4().hex, min_length=1)

    @model_validator(mode="after")
    def _one_patient(self) -> Self:
        if (self.audit.integration_id, self.audit.patient_id) != (
            self.state.integration_id,
            self.state.patient_id,
        ):
            raise ValueError("a patient record's audit must be its own patient's")
        return self


class PendingPatient(BaseModel):
    """A patient staged for work: marks drained from the queue, durable until published.

    ``version`` grows with every staging of the patient, so removing a listed version never
    drops a mark staged after it was listed.
    """

    patient_id: str
    dirty_since: datetime
    reasons: list[str] = []
    version: int = 0


class DeadLetter(BaseModel):
    """One dead-lettered work item as the index records it: ids, kinds and the reason (built
    from ids only, see ``app.core.errors``), never a patient value. Keyed by ``message_id``,
    the message's id on the dead-letter topic, which stays the same across redeliveries."""

    message_id: str
    integration_id: str
    patient_id: str
    error_kind: str
    error: str
    delivery_attempt: int
    dead_lettered_at: datetime
    has_plan: bool = False
    #: content hash of the entry the stored plan was computed for
    plan_entry_hash: str | None = None
    #: ``workers.rules.rules_version`` of the integration when the item failed (None: unknown)
    rules_version: str | None = None
    replay_of: str | None = None


class StateStore(Protocol):
    """Durable engine state."""

    def get_patient(self, integration_id: str, patient_id: str) -> PatientState | None:
        """The last processed state of the patient, or None before the first run."""
        ...

    def put_patient(self, state: PatientState) -> None:
        """Record the patient's newly processed state (replaces the previous one)."""
        ...

    def save_run(self, run: RunRecord) -> None:
        """Insert or update a run record."""
        ...

    def list_runs(self, integration_id: str | None = None, limit: int = 20) -> list[RunRecord]:
        """Most recent runs first."""
        ...

    def add_run_counts(self, integration_id: str, run_id: str, counts: Counts) -> None:
        """Add ``counts`` to the run's totals atomically (workers of many processes report into
        one run); nothing happens when the run does not exist."""
        ...

    def add_run_outcomes(
        self,
        integration_id: str,
        run_id: str,
        outcomes: Mapping[str, Counts],
        extra: Counts | None = None,
    ) -> None:
        """Add each patient's outcome counts (``outcomes``: patient id → its counts) to the
        run, once per patient and run: a patient whose outcome the run already holds adds
        nothing (the first outcome wins, so a redelivery of the same patient is not counted
        twice); ``extra`` (counts that are not outcomes, e.g. ``retried``), when given, is always
        added.
        Atomic with the run's update, across processes; the update that gives a published
        run's last patient its outcome marks it finished (``RunRecord.settle``); a finished
        run's counts no longer change; nothing happens when the run does not exist. A call
        larger than one commit may be stored in parts, each part atomic (so a retried call
        still adds every patient once)."""
        ...

    def get_watermark(self, integration_id: str, name: str) -> datetime | None:
        """A named high-water mark (e.g. the missed-change sweep's last instant)."""
        ...

    def set_watermark(self, integration_id: str, name: str, value: datetime) -> None:
        """Advance a named high-water mark."""
        ...

    def append_audit(self, record: AuditRecord) -> None:
        """Append one audit record."""
        ...

    def list_audit(self, integration_id: str, patient_id: str | None = None) -> list[AuditRecord]:
        """The integration's audit records (of one patient, when given) in the order they were
        written."""
        ...

    def record_patients(self, records: Sequence[PatientRecord]) -> list[HealthieSyncError | None]:
        """Record each of ``records`` — its patient state (``put_patient``), its appointment
        index (``index_appointments``) and its audit record — in one atomic step: after any
        failure or crash a record is stored whole or not at all (an index larger than one
        commit may be partly replaced ahead of it; the next record of the patient replaces it
        again). Audit records list in the given order; a patient named twice keeps the later
        state and index. Recording a ``key`` again replaces its state and index and keeps one
        audit record for it.

        Returns, per record, None once it is stored, or the engine error that kept it from
        being stored (the store refused it, e.g. over a document limit, or the commit that
        held it failed); store failures are returned, not raised."""
        ...

    def get_synced(self, integration_id: str, patient_id: str) -> dict[str, str]:
        """Per name, the digest of the value the engine last synchronised for the patient
        between two systems (``workers.reverse_ledger``); empty before the first."""
        ...

    def put_synced(self, integration_id: str, patient_id: str, digests: Mapping[str, str]) -> None:
        """Record ``digests`` by name: each given name is replaced, the others are kept
        (atomic per name across processes)."""
        ...

    def add_pending(self, integration_id: str, patients: Sequence[PendingPatient]) -> None:
        """Stage patients (upsert): ``dirty_since`` keeps the earliest, ``reasons`` the sorted
        union, ``version`` increments (the given version is ignored)."""
        ...

    def list_pending(
        self, integration_id: str, *, after: str | None = None, limit: int = 1000
    ) -> list[PendingPatient]:
        """Staged patients ordered by ``patient_id`` (string order), strictly after ``after``."""
        ...

    def remove_pending(self, integration_id: str, patients: Sequence[PendingPatient]) -> None:
        """Unstage each patient whose stored version still equals the given one."""
        ...

    def try_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take the named lease if it is free, expired or already ``owner``'s (renewing it);
        False when someone else holds it. Atomic across processes sharing the store."""
        ...

    def release_lease(self, name: str, owner: str) -> None:
        """Release the lease if ``owner`` holds it."""
        ...

    def try_lease_many(self, names: Sequence[str], owner: str, ttl_seconds: float) -> set[str]:
        """``try_lease`` for each of ``names`` (a name given twice counts once): the names
        taken or renewed for ``owner``; names another owner holds unexpired are left out.
        One atomic step per commit (SQLite: the whole call; Firestore: 500 names at a time)."""
        ...

    def release_lease_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        """``release_lease`` for each ``(name, owner)`` pair, in as few commits as the
        backend allows."""
        ...

    def put_dead_letter(self, dead: DeadLetter) -> None:
        """Index one dead letter (upsert by ``message_id``)."""
        ...

    def list_dead_letters(
        self, integration_id: str | None = None, *, limit: int = 10_000
    ) -> list[DeadLetter]:
        """Indexed dead letters (of one integration, or all), oldest first: by
        ``dead_lettered_at``, then ``message_id``. Reads only."""
        ...

    def remove_dead_letters(self, message_ids: Sequence[str]) -> None:
        """Drop the index entries of ``message_ids`` (unknown ids are ignored)."""
        ...

    def index_appointments(
        self, integration_id: str, patient_id: str, appointment_ids: Sequence[str]
    ) -> None:
        """Remember that the patient's recorded entry contains exactly ``appointment_ids``
        (replaces the patient's previous set; empty: it holds none)."""
        ...

    def patients_for_appointments(
        self, integration_id: str, appointment_ids: Sequence[str]
    ) -> dict[str, list[str]]:
        """For each of ``appointment_ids``, the patients whose recorded entries contained it
        (sorted; ``[]`` when none did): how an appointment's event reaches a patient Healthie
        no longer lists on it."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
