"""Process work items end to end: fetch entry, skip unchanged, decide, validate, write, record.

Entries of one pulled batch are fetched together (aliased GraphQL), so a batch of N patients
costs about N / batch_size Healthie requests. Each item's failure is its own: it is classified
by ``app.errors`` kind in ``workers.subscriber``, the one place that acks, nacks or dead-letters.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from app.agent.base import validate_plan
from app.errors import PatientNotFound
from app.healthie.entry import canonicalize, content_hash
from app.models import Entry, WorkItem, WritePlan
from app.runtime import Runtime
from app.state.base import AuditRecord, PatientState
from connectors.base import Connector

log = logging.getLogger(__name__)

Outcome = Literal["written", "plan_skipped", "unchanged"]


class ItemFailed(Exception):  # noqa: N818 - a wrapper, the cause is the error
    """A work item failed after its WritePlan was computed: the plan travels with the failure
    into the dead-letter queue, so a replay can re-execute it without another agent call."""

    def __init__(self, cause: Exception, plan: WritePlan, entry_hash: str) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.plan = plan
        self.entry_hash = entry_hash


@dataclass(frozen=True)
class ItemResult:
    """What processing one work item did."""

    outcome: Outcome
    writes: int = 0
    changed_writes: int = 0


def fetch_entries(
    runtime: Runtime, items: Sequence[WorkItem]
) -> dict[tuple[str, str], dict[str, object] | None]:
    """Raw entries for every item, fetched in batches per integration."""
    out: dict[tuple[str, str], dict[str, object] | None] = {}
    by_integration: dict[str, list[str]] = {}
    for item in items:
        by_integration.setdefault(item.integration_id, []).append(item.patient_id)
    for integration_id, patient_ids in by_integration.items():
        fetched = runtime.healthie(integration_id).fetch_entries(patient_ids)
        for patient_id, raw in fetched.items():
            out[(integration_id, patient_id)] = raw
    return out


def process_item(runtime: Runtime, item: WorkItem, raw: dict[str, object] | None) -> ItemResult:
    """Handle one work item whose raw entry was already fetched (``None``: patient gone)."""
    if raw is None:
        raise PatientNotFound(f"patient {item.patient_id} not found in Healthie")
    integration = runtime.integration(item.integration_id)
    data = canonicalize(raw)
    entry = Entry(
        integration_id=item.integration_id,
        patient_id=item.patient_id,
        data=data,
        content_hash=content_hash(data),
        fetched_at=datetime.now(UTC),
    )
    previous = runtime.state.get_patient(item.integration_id, item.patient_id)
    if previous is not None and previous.content_hash == entry.content_hash and (
        previous.outcome in ("written", "plan_skipped")
    ):
        return ItemResult("unchanged")
    connectors = runtime.connectors(item.integration_id)
    if item.plan is not None and item.plan_entry_hash == entry.content_hash:
        plan = item.plan  # a replay of an unchanged entry: the stored plan, no agent call
    else:
        plan = runtime.agent(item.integration_id).decide(integration, entry, previous)
    try:
        validate_plan(plan, entry, connectors)
        writes, changed = _execute(plan, connectors, integration.mode)
    except Exception as exc:
        raise ItemFailed(exc, plan, entry.content_hash) from exc
    outcome: Outcome = "written" if plan.action == "write" else "plan_skipped"
    runtime.state.put_patient(
        PatientState(
            integration_id=item.integration_id,
            patient_id=item.patient_id,
            content_hash=entry.content_hash,
            entry=entry.data,
            plan=plan,
            outcome=outcome,
            updated_at=datetime.now(UTC),
        )
    )
    runtime.state.append_audit(
        AuditRecord(
            integration_id=item.integration_id,
            patient_id=item.patient_id,
            run_id=item.flush_id,
            at=datetime.now(UTC),
            outcome=outcome,
            operations=[f"{op.target}.{op.operation}" for op in plan.operations],
            detail=(f"replay of {item.replay_of}; " if item.replay_of else "")
            + (plan.skip_reason or plan.rationale),
        )
    )
    return ItemResult(outcome, writes=writes, changed_writes=changed)


def _execute(
    plan: WritePlan, connectors: Mapping[str, Connector], mode: str
) -> tuple[int, int]:
    """Run the plan's operations in order; returns (operations run, rows actually changed)."""
    if plan.action == "skip" or mode == "staging":
        # Staging captures the plan (stored with the state) without touching any target.
        return 0, 0
    writes = changed = 0
    for op in plan.operations:
        connector = connectors[op.target]
        result = connector.execute(op.operation, connector.validate(op.operation, op.args,
                                                                    plan.patient_id))
        writes += 1
        changed += int(result.changed)
    return writes, changed
