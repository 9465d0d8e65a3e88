"""Flush one cadence: stage dirty marks durably, then publish one work item per staged patient.

1. **Stage.** Drain the cadence's dirty marks in chunks, resolve appointment marks to patients
   (aliased GraphQL batches) and applied-tag marks (one ``appliedTags`` listing), add the
   patients to each integration's pending set in the state store, and only then acknowledge
   the chunk. Memory stays bounded by the chunk: the pending
   set, not the flusher, de-duplicates (a patient marked 50 times is staged once).
2. **Sweep.** For every integration now on this cadence, ask Healthie what changed since the
   last sweep's watermark (patients, appointments, applied tags; ``app.healthie.sweep``) and
   stage those patients too: the net for lost webhooks, disabled webhooks and the recurring
   appointment events Healthie does not send. The window overlaps the previous one by a few
   minutes (clocks differ; re-staging is free); a failed sweep keeps its watermark and never
   blocks publishing.
3. **Publish.** For every integration now on this cadence, page through its pending set,
   publish a work item per patient, then unstage exactly the versions published (a mark staged
   meanwhile stays for the next flush).

Staging is also what keeps a weekly cadence safe from Pub/Sub's 7-day retention: the scheduler
stages every cadence daily (``stage_only``), so no mark waits in a subscription for a week. A
cadence change applies from the next run: marks already queued under the old cadence are
staged by that cadence's next run and published by the integration's new cadence.

One flush per cadence runs at a time: a lease in the state store (``FlushLease``), held a short
horizon ahead (``flush_lease_seconds``, 15 s by default) and renewed every third of it by a
heartbeat thread while the flush runs; a second trigger gets FlushInProgress. The same beat
keeps the chunk of dirty marks being staged leased for that horizon. A flush that finds its
lease taken over, or could not renew it for a whole horizon, stops with FlushInProgress before
it acknowledges or publishes more (two publishers could otherwise unstage each other's
versions).

Crash safety: a flusher killed after staging re-publishes harmlessly (processing is idempotent
and unchanged entries are skipped); killed before staging loses nothing (the marks were not
acknowledged). A killed flush stops heartbeating, so its cadence is free again, and its pulled
marks visible again, within one horizon (the embedded scheduler retries then:
``app.service.scheduler``); a flush that *fails* while staging a chunk gives the chunk's marks
back at once (nack, no delay).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from app.agent.freshness import parse_duration
from app.agent.plan import held_until
from app.core import faults
from app.core.config import Integration
from app.core.errors import FlushInProgress, HealthieSyncError, InvalidResponse, RetriableError
from app.core.models import Cadence, DirtyMark, RunRecord, SubjectKind, WorkItem
from app.core.settings import FLUSH_LEASE_SECONDS
from app.healthie.client import HealthieClient
from app.healthie.sweep import resolve_applied_tags, sweep_changes
from app.observability import metrics
from app.queue.base import Queue
from app.queue.topology import WORK_TOPIC, dirty_subscription
from app.service.runtime import Runtime
from app.state.base import PendingPatient, StateStore
from workers.backfill import backfill, rules_marker, was_backfilled
from workers.flush_lease import FlushLease
from workers.pipeline import MERGED_REASON
from workers.rules import decision_rules

log = logging.getLogger(__name__)


@dataclass
class FlushResult:
    """What one flush of one cadence did."""

    flush_id: str
    cadence: Cadence
    marks: int = 0
    invalid_marks: int = 0
    unresolved_marks: int = 0
    staged: int = 0
    swept: int = 0
    work_items: int = 0
    per_integration: dict[str, int] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    #: integrations whose part of the flush failed, with the error (their runs say "failed")
    failed: dict[str, HealthieSyncError] = field(default_factory=dict)
    #: what an operator should know (an integration never backfilled), one line each
    notices: list[str] = field(default_factory=list)
    #: patients marked because an integration's rules changed
    rules_backfilled: int = 0


@dataclass(frozen=True)
class Parts:
    """Exactly what a flush uses: the queue, the state store, the integrations, each
    integration's Healthie client (appointment resolution and the sweep), and the horizon of
    the flush lease."""

    queue: Queue
    state: StateStore
    integrations: Mapping[str, Integration]
    healthie: Callable[[str], HealthieClient]
    lease_seconds: float = FLUSH_LEASE_SECONDS

    @classmethod
    def of(cls, runtime: Runtime) -> Parts:
        """The parts of ``runtime``."""
        return cls(
            runtime.queue,
            runtime.state,
            runtime.integrations,
            runtime.healthie,
            runtime.settings.flush_lease_seconds,
        )


def flush(
    runtime: Runtime,
    cadence: Cadence,
    *,
    chunk_size: int = 1000,
    stage_only: bool = False,
    on_lease: Callable[[], None] | None = None,
) -> FlushResult:
    """Stage ``cadence``'s dirty marks, then (unless ``stage_only``) publish work for every
    integration on ``cadence``. Raises FlushInProgress when one is already running. Every
    hourly flush also runs the HubSpot -> Healthie direction of two-way integrations
    (``workers.reverse``): their changes never wait longer than an hour. ``on_lease`` is
    called once the cadence's lease is taken (the state store answered: ``POST /flush``
    waits for the rest without a deadline)."""
    result = flush_parts(
        Parts.of(runtime),
        cadence,
        chunk_size=chunk_size,
        stage_only=stage_only,
        on_lease=on_lease,
    )
    if (
        cadence is Cadence.HOURLY
        and not stage_only
        and any(i.reverse is not None for i in runtime.integrations.values())
    ):
        from workers.reverse import flush_reverse_runtime

        try:
            flush_reverse_runtime(runtime)
        except HealthieSyncError as exc:  # the forward flush is done; say why reverse is not
            result.notices.append(f"HubSpot -> Healthie not flushed: {exc.kind}: {exc}")
    return result


def flush_parts(
    parts: Parts,
    cadence: Cadence,
    *,
    chunk_size: int = 1000,
    stage_only: bool = False,
    on_lease: Callable[[], None] | None = None,
) -> FlushResult:
    """:func:`flush` on explicit parts."""
    flush_id = f"{cadence.value}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    lease = FlushLease(parts.state, parts.queue, cadence, flush_id, parts.lease_seconds)
    lease.acquire()
    if on_lease is not None:
        on_lease()
    result = FlushResult(flush_id=flush_id, cadence=cadence)
    started = datetime.now(UTC)
    try:
        marks_by_integration = _stage(parts, cadence, chunk_size, result, lease)
        if stage_only:
            return result
        for integration_id, integration in sorted(parts.integrations.items()):
            if integration.cadence is not cadence:
                continue
            run = RunRecord(
                run_id=f"{flush_id}-{integration_id}",
                integration_id=integration_id,
                cadence=cadence,
                started_at=started,
                marks_drained=marks_by_integration.get(integration_id, 0),
            )
            try:
                result.rules_backfilled += _rules_backfill(parts, integration, result)
                result.rules_backfilled += _refresh_backfill(parts, integration)
                result.swept += _sweep(parts, integration, result.failed)
                if integration_id in result.failed:
                    failure = result.failed[integration_id]
                    run.error = f"sweep {failure.kind}: {failure}"
                until = held_until(integration, started)
                if until is not None:
                    # the plan's run_when is closed now (e.g. only the last week of a month):
                    # its patients stay pending until a flush inside the window
                    result.notices.append(
                        f"{integration_id} is held by its plan's run_when until "
                        f"{until.isoformat(timespec='minutes')}; its patients stay pending"
                    )
                    continue
                if (
                    run.marks_drained
                    or run.error
                    or parts.state.list_pending(integration_id, limit=1)
                ):
                    # Stored before its first work item is published: workers add their counts
                    # to this record from the first item on.
                    parts.state.save_run(run)
                run.patients = _publish_pending(parts, integration_id, flush_id, chunk_size)
            except FlushInProgress:
                raise
            except Exception as exc:  # noqa: BLE001 - one integration's failure is its run's
                # One integration's failure (Healthie unreachable, a revoked key, a bug) is its
                # run's status, with the reason; the others still flush. Its staged patients
                # wait for the next flush. A bug's text may hold anything: only its type.
                reason = (
                    f"{exc.kind}: {exc}"
                    if isinstance(exc, HealthieSyncError)
                    else f"unexpected: {type(exc).__name__}"
                )
                if not isinstance(exc, HealthieSyncError):
                    log.exception("flush %s: %s failed unexpectedly", flush_id, integration_id)
                run.status, run.error = "failed", reason
                run.finished_at = datetime.now(UTC)
                parts.state.save_run(run)
                metrics.record_run(integration_id, cadence.value, "failed")
                result.runs.append(run)
                result.failed[integration_id] = (
                    exc if isinstance(exc, HealthieSyncError) else HealthieSyncError(reason)
                )
                log.warning("flush %s: %s failed (%s)", flush_id, integration_id, reason[:80])
                continue
            lease.check()
            run.counts.dirty_patients = run.patients
            # The flush's part is done; the run is finished when every patient has its outcome
            # (the state store settles it as the workers' counts arrive).
            run.status = "published"
            metrics.record_run(integration_id, cadence.value, "published")
            result.work_items += run.patients
            if run.patients or run.marks_drained or run.error:
                parts.state.save_run(run)
                result.runs.append(run)
                result.per_integration[integration_id] = run.patients
        # one line per flush (serve and work log at INFO): ids and counts only
        log.info(
            "flush %s: %d marks staged, %d swept, %d work items for %d integrations",
            flush_id,
            result.staged,
            result.swept,
            result.work_items,
            len(result.runs),
        )
        metrics.record_flush(cadence.value, "finished")
        return result  # noqa: TRY300 - the finally releases the lease on every path
    except HealthieSyncError:
        metrics.record_flush(cadence.value, "failed")
        raise
    finally:
        lease.release()


def _stage(
    parts: Parts, cadence: Cadence, chunk_size: int, result: FlushResult, lease: FlushLease
) -> dict[str, int]:
    subscription = dirty_subscription(cadence)
    per_integration: dict[str, int] = defaultdict(int)
    while True:
        messages = parts.queue.pull(subscription, chunk_size)
        if not messages:
            return per_integration
        lease.hold(subscription, [m.ack_id for m in messages])
        try:
            marks: list[DirtyMark] = []
            for message in messages:
                try:
                    marks.append(DirtyMark.model_validate_json(message.data))
                except ValidationError:
                    result.invalid_marks += 1
                    log.warning("dropping undecodable dirty mark %s", message.message_id)
            staged = 0
            for integration_id, pending in _resolve(parts, marks, result).items():
                parts.state.add_pending(integration_id, pending)
                staged += len(pending)
            faults.point("flush.staged")
        except BaseException:
            # staging again is harmless (the pending set de-duplicates): give the chunk back now
            # rather than leave it leased until its horizon
            try:
                lease.settle(give_back=True)
            except Exception as exc:  # noqa: BLE001 - the marks come back within the horizon
                log.warning("could not give back %d marks (%s)", len(messages), type(exc).__name__)
            raise
        lease.settle()
        result.marks += len(marks)
        result.staged += staged
        for mark in marks:
            per_integration[mark.integration_id] += 1
        lease.check()


def _resolve(
    parts: Parts, marks: list[DirtyMark], result: FlushResult
) -> dict[str, list[PendingPatient]]:
    """Marks -> staged patients per integration (appointments resolved through Healthie and
    the appointment index; a merge's source carries its destination as a reason)."""
    by_integration: dict[str, list[DirtyMark]] = defaultdict(list)
    for mark in marks:
        if mark.integration_id not in parts.integrations:
            result.unresolved_marks += 1
            log.error("dirty mark for unknown integration %s dropped", mark.integration_id)
            continue
        by_integration[mark.integration_id].append(mark)
    staged: dict[str, list[PendingPatient]] = {}
    for integration_id, group in by_integration.items():
        patients: dict[str, PendingPatient] = {}

        def add(
            patient_id: str, mark: DirtyMark, patients: dict[str, PendingPatient] = patients
        ) -> None:
            known = patients.get(patient_id)
            since = mark.received_at if known is None else min(known.dirty_since, mark.received_at)
            why = {mark.reason, *(known.reasons if known else [])}
            if mark.merged_into and mark.subject_id == patient_id:
                # the merge's destination travels with the source to the worker (a reason)
                why.add(f"{MERGED_REASON}{mark.merged_into}")
            reasons = sorted(why)
            patients[patient_id] = PendingPatient(
                patient_id=patient_id, dirty_since=since, reasons=reasons
            )

        appointment_marks = [m for m in group if m.subject_kind is SubjectKind.APPOINTMENT]
        if appointment_marks:
            for mark, people in _appointment_patients(parts, integration_id, appointment_marks):
                if not people:
                    result.unresolved_marks += 1
                for patient_id in people:
                    add(patient_id, mark)
        tag_marks = [m for m in group if m.subject_kind is SubjectKind.APPLIED_TAG]
        if tag_marks:
            # Healthie's events normally carry user_id (then the mark names the patient); these
            # did not. Resolved in one listing; a deleted applied tag is no longer listed.
            owners = resolve_applied_tags(
                parts.healthie(integration_id),
                [m.subject_id for m in tag_marks],
                min(m.received_at for m in tag_marks),
            )
            for mark in tag_marks:
                if mark.subject_id in owners:
                    add(owners[mark.subject_id], mark)
                else:
                    result.unresolved_marks += 1
                    log.warning(
                        "applied tag %s not found (integration=%s)", mark.subject_id, integration_id
                    )
        for mark in group:
            if mark.subject_kind is SubjectKind.PATIENT:
                add(mark.subject_id, mark)
        staged[integration_id] = list(patients.values())
    return staged


def _appointment_patients(
    parts: Parts, integration_id: str, marks: list[DirtyMark]
) -> list[tuple[DirtyMark, list[str]]]:
    """Each appointment mark's patients: those Healthie lists on the appointment now (owner
    and attendees) and those whose recorded entries contained it (the state's appointment
    index), so a patient removed from it, or holding a deleted one, is re-synced too."""
    ids = [m.subject_id for m in marks]
    listed = parts.healthie(integration_id).resolve_appointments(ids)
    held = parts.state.patients_for_appointments(integration_id, ids)
    return [
        (m, list(dict.fromkeys([*listed.get(m.subject_id, []), *held.get(m.subject_id, [])])))
        for m in marks
    ]


SWEEP_WATERMARK = "sweep"
REFRESH_WATERMARK = "refresh_after"
SWEEP_OVERLAP = timedelta(minutes=5)


def _rules_backfill(parts: Parts, integration: Integration, result: FlushResult) -> int:
    """When the integration's rules (or mode) changed since the last flush, mark every patient
    (the skip decision includes the rules, so each entry is decided again). An integration
    never backfilled is told so instead: its existing patients arrive only when they change."""
    marker = rules_marker(decision_rules(integration))
    if parts.state.get_watermark(integration.id, marker) is not None:
        return 0
    now = datetime.now(UTC)
    if not was_backfilled(parts.state, integration.id):
        notice = (
            f"{integration.id} was never backfilled: its existing patients arrive only when "
            f"they change (run: healthie-sync backfill {integration.id})"
        )
        result.notices.append(notice)
        log.warning("%s", notice)
        parts.state.set_watermark(integration.id, marker, now)
        return 0
    log.warning("rules of %s changed: marking every patient to decide again", integration.id)
    progress = backfill(
        parts.state, parts.healthie(integration.id), integration.id, reason="rules_changed"
    )
    parts.state.set_watermark(integration.id, marker, now)
    return progress.marked


def _refresh_backfill(parts: Parts, integration: Integration) -> int:
    """With ``agent.refresh_after``, mark every patient once per that period, so decisions that
    depend on the date are made again for patients whose entries never change (the skip
    decision treats an older decision as stale: ``app.agent.freshness``)."""
    refresh = integration.agent.refresh_after
    if not refresh or not was_backfilled(parts.state, integration.id):
        return 0
    now = datetime.now(UTC)
    last = parts.state.get_watermark(integration.id, REFRESH_WATERMARK)
    if last is not None and now - last < parse_duration(refresh):
        return 0
    progress = backfill(
        parts.state, parts.healthie(integration.id), integration.id, reason="refresh_after"
    )
    parts.state.set_watermark(integration.id, REFRESH_WATERMARK, now)
    return progress.marked


def _sweep(
    parts: Parts, integration: Integration, failures: dict[str, HealthieSyncError] | None = None
) -> int:
    """Stage what Healthie changed since the last sweep; returns the patients staged. A sweep
    Healthie did not answer is retried at the next flush and recorded in ``failures`` (the
    staged patients are still published: the sweep only adds to them)."""
    integration_id = integration.id
    if not integration.healthie.sweep:
        return 0
    now = datetime.now(UTC)
    last = parts.state.get_watermark(integration_id, SWEEP_WATERMARK)
    if last is None:
        # First flush: webhooks cover everything from now on; the sweep starts here.
        parts.state.set_watermark(integration_id, SWEEP_WATERMARK, now)
        return 0
    try:
        found = sweep_changes(parts.healthie(integration_id), since=last - SWEEP_OVERLAP, until=now)
    except (RetriableError, InvalidResponse) as exc:
        log.warning(
            "missed-change sweep failed for %s (%s); retried next flush", integration_id, exc.kind
        )
        if failures is not None:
            failures[integration_id] = exc
        return 0
    patients = set(found.patient_ids)
    for people in found.appointment_patients.values():
        patients.update(people)
    if patients:
        parts.state.add_pending(
            integration_id,
            [PendingPatient(patient_id=p, dirty_since=now, reasons=["sweep"]) for p in patients],
        )
    if not found.truncated:
        parts.state.set_watermark(integration_id, SWEEP_WATERMARK, now)
    return len(patients)


def _publish_pending(parts: Parts, integration_id: str, flush_id: str, page: int) -> int:
    published = 0
    after: str | None = None
    while True:
        pending = parts.state.list_pending(integration_id, after=after, limit=page)
        if not pending:
            return published
        parts.queue.publish_many(
            WORK_TOPIC,
            [
                (
                    WorkItem(
                        integration_id=integration_id,
                        patient_id=p.patient_id,
                        flush_id=flush_id,
                        dirty_since=p.dirty_since,
                        reasons=tuple(p.reasons),
                    )
                    .model_dump_json()
                    .encode(),
                    {"integration": integration_id},
                )
                for p in pending
            ],
        )
        faults.point("flush.published")
        parts.state.remove_pending(integration_id, pending)
        published += len(pending)
        after = pending[-1].patient_id
