"""Hooks around the consumer's batches, in the spirit of dramatiq's middleware: the steps every
work item goes through that are not the pipeline's data work.

* :class:`PatientLeases` — before a batch, lease each item's patient so no two workers (and no
  two items of one batch) process the same patient at once; busy items go back to the queue.
  After the batch, release the leases.
* :class:`AuditTrail` — after each item is settled (and before the queue hears of it), append
  the audit record of an item that has none yet: why it was skipped or why it waits (kinds,
  error texts built from ids). Items written, skipped by their plan, or gone from Healthie
  were audited by the pipeline in the same atomic step as their state (``Outcome.audited``).
* :class:`RunTally` — count outcomes per run; after the batch add them to each run's record
  (workers in many processes report into one run; the update that accounts for the run's
  last patient marks it finished, in the state store).

While a batch runs longer than its leases (a Message Batch may take hours), the consumer's
lease keeper calls ``keep_alive`` every third of the lease: :class:`PatientLeases` renews the
patient leases it holds.

A hook sees work items, outcomes and settlement kinds, never an entry's values.
"""

from __future__ import annotations

import logging
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
        """Lease each item's patient; items whose patient is busy are left out."""
        owner = uuid.uuid4().hex
        kept: list[WorkItem] = []
        seen: set[str] = set()
        for item in items:
            name = f"patient:{item.integration_id}:{item.patient_id}"
            if name in seen or not self._state.try_lease(name, owner, self._ttl):
                continue
            seen.add(name)
            self._held.append((name, owner))
            kept.append(item)
        return kept

    def keep_alive(self) -> None:
        """Renew the patient leases held (a long batch must not let another worker in)."""
        for name, owner in list(self._held):
            if not self._state.try_lease(name, owner, self._ttl):
                log.warning("patient lease %s was taken over while its batch ran", name)

    def after_batch(self) -> None:
        """Release every lease this batch took."""
        held, self._held = self._held, []
        for name, owner in held:
            self._state.release_lease(name, owner)


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


class RunTally(Middleware):
    """Counts per run, added to the run records once per batch."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._per_run: dict[tuple[str, str], Counts] = {}

    def after_item(self, outcome: Outcome, action: str, kind: str | None) -> None:
        """Count the item's outcome for its run."""
        delta = counts_of(outcome, action)
        item = outcome.item
        key = (item.integration_id, f"{item.flush_id}-{item.integration_id}")
        self._per_run[key] = self._per_run.get(key, Counts()).add(delta)

    def after_batch(self) -> None:
        """Add each run's counts to its record."""
        tallied, self._per_run = self._per_run, {}
        for (integration_id, run_id), counts in tallied.items():
            self._state.add_run_counts(integration_id, run_id, counts)
