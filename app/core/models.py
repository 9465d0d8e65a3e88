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
    """The demo's and a run's summary counts, in the order the README documents."""

    webhooks_received: int = 0
    webhooks_rejected: int = 0
    dirty_patients: int = 0
    processed: int = 0
    skipped_unchanged: int = 0
    writes: int = 0
    dead_lettered: int = 0
    #: deliveries given back for a retry (a service did not answer): the work stays queued
    retried: int = 0

    def add(self, other: Counts) -> Counts:
        """Field-wise sum."""
        return Counts(**{k: getattr(self, k) + getattr(other, k) for k in type(self).model_fields})


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
    status: Literal["running", "finished", "failed"] = "running"
    error: str | None = None
