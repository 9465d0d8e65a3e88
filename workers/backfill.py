"""Backfill: mark every patient of an organization (or a chosen set) dirty, so the next flush
of the integration's cadence processes its whole roster, not only what changes from now on.

::

    backfill(state, healthie, integration_id)
    ─────────────────────────────────────────
    resume point ◀── watermark "backfill_checkpoint" (created_at of the last marked page)
    BackfillUsers pages, oldest first (users(order_by: CREATED_AT_ASC), ids only, 100 a page)
      skip nodes created before the resume point (pages already marked are listed, not marked)
      add_pending(chunk)  ──▶ the pending set the flusher publishes from (idempotent per patient)
      checkpoint after each chunk, progress (listed, marked, rate, time left when known)
    watermark "backfill_done" = the start of the backfill; checkpoint cleared

* **Bounded**: one page in memory, chunks of ``chunk_size`` marks; memory stays flat whatever the
  roster's size.
* **Resumable**: a crash keeps every chunk marked before it; the next backfill resumes from the
  checkpoint. Marks are idempotent (the pending set holds a patient once), so the overlap of
  one chunk is harmless.
* **Within the rate share**: pages go through the integration's Healthie client, paced by its
  key's guard like every other request of that key.

``rules_changed_backfill`` is what the flusher runs when an integration's rules changed (the
rules version is part of the skip decision: ``IntegrationClients.rules``): every patient is
marked, so every entry is decided again under the new rules, changed or not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gql import GraphQLRequest

from app.healthie import operations
from app.healthie.client import HealthieClient
from app.healthie.entry import parse_timestamp
from app.healthie.pagination import Pages
from app.state.base import PendingPatient, StateStore

log = logging.getLogger(__name__)

CHECKPOINT = "backfill_checkpoint"
DONE = "backfill_done"
RESYNC = "resync"
PAGE_SIZE = 100  # Healthie's page maximum for users
#: pages at most: 100,000 patients a page of 100 is 1,000 pages; a runaway cursor stops here
MAX_PAGES = 50_000


@dataclass
class BackfillProgress:
    """Where a backfill is: what it listed and marked, and how fast."""

    integration_id: str
    listed: int = 0
    marked: int = 0
    skipped_before_checkpoint: int = 0
    pages: int = 0
    started: float = field(default_factory=time.monotonic)
    total: int | None = None  # known when the set was chosen (--patients)

    @property
    def rate(self) -> float:
        """Patients listed per second so far."""
        elapsed = time.monotonic() - self.started
        return self.listed / elapsed if elapsed > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        """Time left at the current rate, when the total is known."""
        if self.total is None or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.listed) / self.rate)


Progress = Callable[[BackfillProgress], None]


def backfill(
    state: StateStore,
    healthie: HealthieClient,
    integration_id: str,
    *,
    patients: Sequence[str] | None = None,
    chunk_size: int = 1000,
    on_progress: Progress | None = None,
    reason: str = "backfill",
) -> BackfillProgress:
    """Mark every patient of the organization (or ``patients``) dirty for ``integration_id``;
    see the module docstring. Returns the final progress."""
    now = datetime.now(UTC)
    progress = BackfillProgress(integration_id)
    if patients is not None:
        chosen = list(dict.fromkeys(p.strip() for p in patients if p.strip()))
        progress.total = len(chosen)
        for start in range(0, len(chosen), chunk_size):
            part = chosen[start : start + chunk_size]
            _mark(state, integration_id, part, now, reason)
            progress.listed += len(part)
            progress.marked += len(part)
            if on_progress is not None:
                on_progress(progress)
        return progress
    resume = state.get_watermark(integration_id, CHECKPOINT)
    pending: list[str] = []
    newest: datetime | None = resume
    pages = Pages(
        healthie,
        GraphQLRequest(operations.load("backfill_users")),
        "users",
        page_size=PAGE_SIZE,
        max_pages=MAX_PAGES,
    )
    for nodes in pages:
        progress.pages = pages.pages
        progress.total = pages.total  # the organization's patients, for the time left
        for node in nodes:
            patient_id = str(node.get("id") or "")
            if not patient_id:
                continue
            progress.listed += 1
            created = parse_timestamp(node.get("created_at"))
            # ">=": patients created in the checkpoint's second are marked again (idempotent)
            if resume is not None and created is not None and created < resume:
                progress.skipped_before_checkpoint += 1
                continue
            pending.append(patient_id)
            if created is not None and (newest is None or created > newest):
                newest = created
        if len(pending) >= chunk_size:
            _flush_chunk(state, integration_id, pending, now, reason, newest, progress)
            pending = []
        if on_progress is not None:
            on_progress(progress)
    if pending:
        _flush_chunk(state, integration_id, pending, now, reason, newest, progress)
    if pages.truncated:
        log.warning(
            "backfill of %s stopped after %d pages; run it again to continue",
            integration_id,
            pages.pages,
        )
    else:
        state.set_watermark(integration_id, DONE, now)
        # the next backfill starts from the beginning again (a checkpoint far in the past)
        state.set_watermark(integration_id, CHECKPOINT, datetime(1970, 1, 1, tzinfo=UTC))
    if on_progress is not None:
        on_progress(progress)
    return progress


def _flush_chunk(
    state: StateStore,
    integration_id: str,
    ids: list[str],
    now: datetime,
    reason: str,
    newest: datetime | None,
    progress: BackfillProgress,
) -> None:
    _mark(state, integration_id, ids, now, reason)
    progress.marked += len(ids)
    if newest is not None:
        # a second earlier: the next resume re-marks this second's patients rather than
        # miss one created in the same second after the page boundary
        state.set_watermark(integration_id, CHECKPOINT, newest - timedelta(seconds=1))


def _mark(
    state: StateStore, integration_id: str, ids: Iterable[str], now: datetime, reason: str
) -> None:
    state.add_pending(
        integration_id,
        [PendingPatient(patient_id=p, dirty_since=now, reasons=[reason]) for p in ids],
    )


def force_resync(state: StateStore, integration_id: str) -> datetime:
    """Every patient decided before now is decided again when next fetched, whatever its
    entry (the skip decision compares the decision's time with this watermark)."""
    now = datetime.now(UTC)
    state.set_watermark(integration_id, RESYNC, now)
    return now


def was_backfilled(state: StateStore, integration_id: str) -> bool:
    """Whether a backfill of ``integration_id`` ever finished."""
    return state.get_watermark(integration_id, DONE) is not None


def rules_marker(rules: str) -> str:
    """The watermark naming one rules version (set once its backfill has been started)."""
    return f"rules:{rules}"
