"""Hooks around the consumer's batches, in the spirit of dramatiq's middleware: the steps every
work item goes through that are not the pipeline's data work.

* :class:`PatientLeases` — before a batch, lease each item's patient so no two workers (and no
  two items of one batch) process the same patient at once; busy items go back to the queue.
  After the batch, release the leases. One state call (one commit) per batch for each.
* :class:`AuditTrail` — after each item is settled (and before the queue hears of it), append
  the audit record of an item that has none yet: why it was skipped or why it waits (kinds,
  error texts built from ids). Items written, skipped by their plan, or gone from Healthie
  were audited by the pipeline in the same atomic step as their state (``Outcome.audited``).
* :class:`RunTally` — collect each item's outcome per run and patient; ``before_settle``
  (before the queue hears of the items) adds them to each run's record with
  ``StateStore.add_run_outcomes``, which counts a patient once per run: the counts of items
  acked before a crash are stored, and an item redelivered after it adds nothing again.
  Workers in many processes report into one run; the update that accounts for the run's last
  patient marks it finished, in the state store.

While a batch runs longer than its leases (a Message Batch may take hours), the consumer's
lease keeper calls ``keep_alive`` every third of the lease: :class:`PatientLeases` renews the
patient leases it holds.

A hook sees work items, outcomes and settlement kinds, never an entry's values.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence

from app.core.errors import PatientNotFound, SkippableError
from app.core.models import Counts, WorkItem
from app.state.base import StateStore
from workers.pipeline import Outcome, audit_record, error_detail

log = logging.getLogger(__name__)


def counts_of(outcome: Outcome, action: str) -> Counts:
    """What one settled item adds to the counts: its one outcome (processed, skipped
    unchanged, not found, dead-lettered, waiting), or a retry for a nacked delivery (not an
    outcome: the item comes back)."""
    if action == "dead_letter":
        return Counts(dead_lettered=1)
    if action == "nack":
        return Counts(retried=1)
    if action == "wait":
        return Counts(waiting=1)
    if outcome.status == "unchanged":
        return Counts(skipped_unchanged=1)
    if outcome.status in ("written", "plan_skipped"):
        return Counts(processed=1, writes=outcome.writes)
    if isinstance(outcome.error, PatientNotFound):
        return Counts(not_found=1)
    if isinstance(outcome.error, SkippableError):
        return Counts(processed=1)  # nothing to do for it: done, with the reason audited
    return Counts()


class Middleware:
    """No-op hooks; a middleware overrides the ones it needs."""

    def before_batch(self, items: Sequence[WorkItem]) -> Sequence[WorkItem]:
        """The items to process now (the rest are deferred: nacked for a short while)."""
        return items

    def after_item(self, outcome: Outcome, action: str, kind: str | None) -> None:
        """Called once per processed item, after it is settled and before the queue action
        (``action``: ack, nack, dead_letter or wait; ``kind``: the error kind, if it failed).
        Calls are serialized (the consumer's lanes settle one item at a time)."""

    def before_settle(self) -> None:
        """Called after ``after_item`` of one or more items and before the queue hears of any
        of them (ack, nack, dead letter, wait): store what must outlive a crash right after
        the queue action. Never concurrently with ``after_item``."""

    def keep_alive(self) -> None:
        """Called every third of the lease while a batch is still running (from the lease
        keeper's thread): renew what would expire."""

    def after_batch(self) -> None:
        """Called once per batch, whatever happened (also when a process is dying)."""


class PatientLeases(Middleware):
    """One worker per patient at a time, through leases in the state store."""

    def __init__(self, state: StateStore, ttl: float) -> None:
        self._state = state
        self._ttl = ttl
        self._held: list[tuple[str, str]] = []

    def before_batch(self, items: Sequence[WorkItem]) -> Sequence[WorkItem]:
        """Lease the items' patients in one call; items whose patient is busy are left out,
        and so is every later item of a patient already in the batch (it comes back)."""
        owner = uuid.uuid4().hex
        names = [f"patient:{item.integration_id}:{item.patient_id}" for item in items]
        taken = self._state.try_lease_many(names, owner, self._ttl)
        kept: list[WorkItem] = []
        seen: set[str] = set()
        for item, name in zip(items, names, strict=True):
            if name in seen or name not in taken:
                continue
            seen.add(name)
            self._held.append((name, owner))
            kept.append(item)
        return kept

    def keep_alive(self) -> None:
        """Renew the patient leases held (a long batch must not let another worker in), one
        call per owner (one per batch)."""
        by_owner: dict[str, list[str]] = {}
        for name, owner in list(self._held):
            by_owner.setdefault(owner, []).append(name)
        for owner, names in by_owner.items():
            renewed = self._state.try_lease_many(names, owner, self._ttl)
            for name in names:
                if name not in renewed:
                    log.warning("patient lease %s was taken over while its batch ran", name)

    def after_batch(self) -> None:
        """Release every lease this batch took, in one call."""
        held, self._held = self._held, []
        if held:
            self._state.release_lease_many(held)


class AuditTrail(Middleware):
    """The audit records the pipeline could not store with a state: items skipped by kind
    (acknowledged failures) and items waiting for their integration. Exactly one record per
    written item comes from the pipeline itself; none is added here."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    def after_item(self, outcome: Outcome, action: str, kind: str | None) -> None:
        """Record why nothing was done for a skipped or waiting item; nothing for an item
        audited with its state, or retried (nacked) or dead-lettered (the dead letter says)."""
        if outcome.audited or outcome.error is None:
            return
        if outcome.status == "failed" and action == "ack":
            self._append(outcome.item, f"skipped:{kind}", error_detail(outcome.error))
        elif action == "wait":
            self._append(outcome.item, f"waiting:{kind}", error_detail(outcome.error))

    def _append(self, item: WorkItem, outcome: str, detail: str) -> None:
        self._state.append_audit(audit_record(item, outcome, (), detail))


class _RunShare:
    """What this worker has to add to one run: each patient's outcome, and the counts that
    are not outcomes (retries)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Counts] = {}
        self.extra = Counts()

    def merge(self, later: _RunShare) -> None:
        """Take in ``later``'s share (a patient's first outcome stays)."""
        for patient_id, counts in later.outcomes.items():
            self.outcomes.setdefault(patient_id, counts)
        self.extra = self.extra.add(later.extra)


class RunTally(Middleware):
    """Outcomes per run and patient, stored before the queue settles their items.

    ``flush`` (also ``before_settle`` and ``after_batch``) writes what was collected with
    ``StateStore.add_run_outcomes``: a patient's outcome counts once per run whatever the
    number of deliveries, so storing the counts before the ack loses none to a crash after
    it, and a redelivery after a crash before it adds nothing twice. A nacked item's
    ``retried`` is no outcome (the item comes back): it is added as it is."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._per_run: dict[tuple[str, str], _RunShare] = {}

    def after_item(self, outcome: Outcome, action: str, kind: str | None) -> None:
        """Collect the item's outcome (or its retry) for its run."""
        delta = counts_of(outcome, action)
        item = outcome.item
        key = (item.integration_id, f"{item.flush_id}-{item.integration_id}")
        with self._lock:
            share = self._per_run.setdefault(key, _RunShare())
            if delta.outcomes():
                # a patient settled twice before a flush keeps its first outcome, as the
                # store would
                share.outcomes.setdefault(item.patient_id, delta)
            else:
                share.extra = share.extra.add(delta)

    def flush(self) -> None:
        """Add what was collected to each run's record and forget it. When the store fails,
        the runs not yet written are kept for the next flush (adding them again is harmless)
        and the error is raised."""
        with self._lock:
            tallied, self._per_run = self._per_run, {}
        pending = list(tallied.items())
        try:
            while pending:
                (integration_id, run_id), share = pending[0]
                self._state.add_run_outcomes(integration_id, run_id, share.outcomes, share.extra)
                pending.pop(0)
        except BaseException:
            with self._lock:
                for key, share in pending:
                    share.merge(self._per_run.pop(key, _RunShare()))
                    self._per_run[key] = share
            raise

    def before_settle(self) -> None:
        """Store the collected outcomes before the queue acks their items."""
        self.flush()

    def after_batch(self) -> None:
        """Store whatever is still collected (nothing when ``before_settle`` ran)."""
        self.flush()
