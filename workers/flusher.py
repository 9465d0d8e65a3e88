"""Flush one cadence: drain dirty marks, resolve them to patients, publish work, then ack.

Marks are drained in chunks so memory stays bounded by the chunk plus the set of patients
already published in this flush (which de-duplicates across chunks). A chunk's marks are
acknowledged only after the work items they produced are durably published: a crash in between
re-delivers the marks, and the re-published work items are harmless (processing is idempotent).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from app.models import Cadence, DirtyMark, RunRecord, SubjectKind, WorkItem
from app.queue.topology import WORK_TOPIC, dirty_subscription
from app.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class FlushResult:
    """What one flush of one cadence did."""

    flush_id: str
    cadence: Cadence
    marks: int = 0
    invalid_marks: int = 0
    unresolved_marks: int = 0
    work_items: int = 0
    per_integration: dict[str, int] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)


def flush(runtime: Runtime, cadence: Cadence, *, chunk_size: int = 1000) -> FlushResult:
    """Drain ``cadence``'s dirty marks into work items; returns counts and run records."""
    flush_id = f"{cadence.value}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    result = FlushResult(flush_id=flush_id, cadence=cadence)
    subscription = dirty_subscription(cadence)
    published: dict[str, set[str]] = defaultdict(set)
    runs: dict[str, RunRecord] = {}
    while True:
        messages = runtime.queue.pull(subscription, chunk_size)
        if not messages:
            break
        marks: list[DirtyMark] = []
        for message in messages:
            try:
                marks.append(DirtyMark.model_validate_json(message.data))
            except ValidationError:
                result.invalid_marks += 1
                log.warning("dropping undecodable dirty mark %s", message.message_id)
        result.marks += len(marks)
        items = _resolve(runtime, marks, flush_id, published, result)
        for integration_id in {m.integration_id for m in marks}:
            if integration_id not in runs and integration_id in runtime.integrations:
                runs[integration_id] = RunRecord(
                    run_id=f"{flush_id}-{integration_id}",
                    integration_id=integration_id,
                    cadence=cadence,
                    started_at=datetime.now(UTC),
                )
            if integration_id in runs:
                runs[integration_id].marks_drained += sum(
                    1 for m in marks if m.integration_id == integration_id
                )
        if items:
            runtime.queue.publish_many(
                WORK_TOPIC,
                [
                    (i.model_dump_json().encode(), {"integration": i.integration_id})
                    for i in items
                ],
            )
        runtime.queue.ack(subscription, [m.ack_id for m in messages])
        result.work_items += len(items)
    for integration_id, run in runs.items():
        run.patients = len(published[integration_id])
        run.counts.dirty_patients = run.patients
        runtime.state.save_run(run)
        result.per_integration[integration_id] = run.patients
        result.runs.append(run)
    return result


def _resolve(
    runtime: Runtime,
    marks: list[DirtyMark],
    flush_id: str,
    published: dict[str, set[str]],
    result: FlushResult,
) -> list[WorkItem]:
    by_integration: dict[str, list[DirtyMark]] = defaultdict(list)
    for mark in marks:
        if mark.integration_id not in runtime.integrations:
            result.unresolved_marks += 1
            log.error("dirty mark for unknown integration %s dropped", mark.integration_id)
            continue
        by_integration[mark.integration_id].append(mark)
    items: list[WorkItem] = []
    for integration_id, group in by_integration.items():
        patients: dict[str, tuple[datetime, set[str]]] = {}

        def add(patient_id: str, mark: DirtyMark, patients: dict[str, tuple[datetime, set[str]]]
                = patients) -> None:
            since, reasons = patients.get(patient_id, (mark.received_at, set()))
            patients[patient_id] = (min(since, mark.received_at), reasons | {mark.reason})

        appointment_marks = [m for m in group if m.subject_kind is SubjectKind.APPOINTMENT]
        if appointment_marks:
            client = runtime.healthie(integration_id)
            resolved = client.resolve_appointments([m.subject_id for m in appointment_marks])
            for mark in appointment_marks:
                people = resolved.get(mark.subject_id, [])
                if not people:
                    result.unresolved_marks += 1
                for patient_id in people:
                    add(patient_id, mark)
        for mark in group:
            if mark.subject_kind is SubjectKind.PATIENT:
                add(mark.subject_id, mark)
            elif mark.subject_kind is SubjectKind.APPLIED_TAG:
                # Healthie includes user_id on applied-tag events; a mark without it cannot be
                # resolved until the applied-tag lookup lands (issue 5). Counted, never silent.
                result.unresolved_marks += 1
                log.warning("applied-tag mark without user_id not resolved (integration=%s)",
                            integration_id)
        seen = published[integration_id]
        for patient_id, (since, reasons) in sorted(patients.items()):
            if patient_id in seen:
                continue
            seen.add(patient_id)
            items.append(
                WorkItem(
                    integration_id=integration_id,
                    patient_id=patient_id,
                    flush_id=flush_id,
                    dirty_since=since,
                    reasons=tuple(sorted(reasons)),
                )
            )
    return items
