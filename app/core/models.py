"""The engine's core value types: what flows between intake, flush, workers and connectors."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Cadence(StrEnum):
    """How often an integration's dirty patients are flushed. Monthly is refused on purpose:
    Healthie disables webhooks after three days of failures, and a month-old mark is stale."""

    HOURLY = "hourly"
    EVERY_6_HOURS = "every_6_hours"
    DAILY = "daily"
    WEEKLY = "weekly"


class SubjectKind(StrEnum):
    """What a dirty mark points at; non-patient subjects are resolved to patients at flush."""

    PATIENT = "patient"
    APPOINTMENT = "appointment"
    APPLIED_TAG = "applied_tag"


class DirtyMark(BaseModel):
    """Something changed that may affect a patient's entry."""

    model_config = ConfigDict(frozen=True)

    integration_id: str
    subject_kind: SubjectKind
    subject_id: str
    reason: str  # the webhook event type, or "sweep", "replay", ...
    received_at: datetime
    merged_into: str | None = None  # set on the source of patient.merged


class WriteOperation(BaseModel):
    """One typed connector call: ``target`` names a configured target of the integration."""

    model_config = ConfigDict(frozen=True)

    target: str
    operation: str
    args: dict[str, Any]


class WritePlan(BaseModel):
    """What the agent decided for one entry: ordered writes, or an explicit skip."""

    model_config = ConfigDict(frozen=True)

    patient_id: str
    action: Literal["write", "skip"] = "write"
    operations: tuple[WriteOperation, ...] = ()
    skip_reason: str | None = None
    rationale: str = ""
    backend: str = ""

    @classmethod
    def skip(cls, patient_id: str, reason: str, *, backend: str = "") -> WritePlan:
        """A plan that writes nothing, with the reason recorded."""
        return cls(patient_id=patient_id, action="skip", skip_reason=reason, backend=backend)


class WorkItem(BaseModel):
    """One patient of one integration to process end to end."""

    model_config = ConfigDict(frozen=True)

    integration_id: str
    patient_id: str
    flush_id: str
    dirty_since: datetime
    reasons: tuple[str, ...] = ()
    replay_of: str | None = None  # dead-letter message id this item replays, if any
    replayed_at: datetime | None = None
    # A replay carries the plan computed before the failure, and the content hash of the entry
    # it was computed for: if the entry is unchanged, the plan is re-executed without the agent.
    plan: WritePlan | None = None
    plan_entry_hash: str | None = None


class Entry(BaseModel):
    """A patient's entry as fetched, with its canonical content hash."""

    model_config = ConfigDict(frozen=True)

    integration_id: str
    patient_id: str
    data: dict[str, Any]
    content_hash: str
    fetched_at: datetime


class Counts(BaseModel):
    """The demo's and a run's summary counts, in the order the README documents.

    Every patient of a run ends in exactly one *outcome*: ``processed`` (written, or skipped by
    its plan), ``skipped_unchanged``, ``not_found`` (deleted or merged away in Healthie),
    ``dead_lettered`` or ``waiting`` (its integration could not work: a missing secret, a bad
    plan, a target whose breaker is open; the patient is staged again for the next flush).
    ``writes`` and ``retried`` are not outcomes."""

    webhooks_received: int = 0
    webhooks_rejected: int = 0
    dirty_patients: int = 0
    processed: int = 0
    skipped_unchanged: int = 0
    writes: int = 0
    dead_lettered: int = 0
    #: deliveries given back for a retry (a service did not answer): the work stays queued
    retried: int = 0
    #: patients Healthie no longer has (deleted, or merged into another)
    not_found: int = 0
    #: patients handed back to their integration's pending set because the integration could
    #: not work (its next flush publishes them again)
    waiting: int = 0

    def add(self, other: Counts) -> Counts:
        """Field-wise sum."""
        return Counts(**{k: getattr(self, k) + getattr(other, k) for k in type(self).model_fields})

    def outcomes(self) -> int:
        """Patients that reached their one outcome (what a run's ``patients`` must add up to)."""
        return (
            self.processed
            + self.skipped_unchanged
            + self.not_found
            + self.dead_lettered
            + self.waiting
        )


#: ``running``: the flush is staging and publishing; ``published``: its work items are queued
#: and workers are settling them; ``finished``: every patient reached its outcome (the counts
#: no longer change); ``failed``: the flush's part failed (``error`` says why).
RunStatus = Literal["running", "published", "finished", "failed"]


class RunRecord(BaseModel):
    """One flush of one integration, with counts and timings."""

    run_id: str
    integration_id: str
    cadence: Cadence
    started_at: datetime
    finished_at: datetime | None = None
    marks_drained: int = 0
    patients: int = 0
    counts: Counts = Field(default_factory=Counts)
    status: RunStatus = "running"
    error: str | None = None

    @property
    def in_flight(self) -> int:
        """Patients published and not yet settled (0 unless the run is ``published``)."""
        return max(0, self.patients - self.counts.outcomes()) if self.status == "published" else 0

    def settle(self, now: datetime) -> bool:
        """Mark a published run ``finished`` when every patient has its outcome; True when it
        did (the stores call this inside the update that added the counts, so it is atomic)."""
        if self.status != "published" or self.counts.outcomes() < self.patients:
            return False
        self.status = "finished"
        self.finished_at = now
        return True


def merge_run(stored: RunRecord, update: RunRecord) -> RunRecord:
    """What a store keeps when ``update`` is saved over ``stored`` (the same run): counts never
    go down (workers add theirs while the flusher saves the run's progress), and a finished run
    is final: its status, end and counts stay. A copy; neither argument changes."""
    merged = update.model_copy(deep=True)
    if stored.status == "finished":
        merged.status, merged.finished_at = "finished", stored.finished_at
        merged.counts = stored.counts.model_copy()
        return merged
    merged.counts = Counts(
        **{
            name: max(getattr(stored.counts, name), getattr(update.counts, name))
            for name in Counts.model_fields
        }
    )
    return merged
