"""Process work items end to end: fetch entry, skip unchanged, decide, validate, write, record.

Entries of one pulled batch are fetched together (aliased GraphQL), so a batch of N patients
costs about N / batch_size Healthie requests. Each item's failure is its own: it is classified
by ``app.errors`` kind in ``workers.subscriber``, the one place that acks, nacks or dead-letters.
The batch path is ``prepare`` (skip unchanged) -> ``decide_all`` (one agent call per integration,
a Message Batch where the backend batches) -> ``finish`` (validate, write, record).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from app.agent.base import decide_many, validate_plan
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


@dataclass(frozen=True)
class Prepared:
    """A changed entry waiting for its plan."""

    item: WorkItem
    entry: Entry
    previous: PatientState | None


def prepare(runtime: Runtime, item: WorkItem, raw: dict[str, object] | None) -> Prepared | None:
    """Canonicalize the fetched entry; ``None`` when it is unchanged since the last success.

    Raises PatientNotFound when Healthie has no such patient (``raw`` is None).
    """
    if raw is None:
        raise PatientNotFound(f"patient {item.patient_id} not found in Healthie")
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
        return None
    return Prepared(item, entry, previous)


def decide_all(runtime: Runtime, prepared: Sequence[Prepared]) -> list[WritePlan | Exception]:
    """Plans for every prepared item, in order: a replay of an unchanged entry reuses its stored
    plan; the rest go to each integration's agent together (one Message Batch where the backend
    batches), so a failed slot holds that item's error only."""
    plans: list[WritePlan | Exception | None] = [None] * len(prepared)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prepared):
        if p.item.plan is not None and p.item.plan_entry_hash == p.entry.content_hash:
            plans[i] = p.item.plan
        else:
            groups.setdefault(p.item.integration_id, []).append(i)
    for integration_id, indexes in groups.items():
        integration = runtime.integration(integration_id)
        agent = runtime.agent(integration_id)
        decided = decide_many(
            agent, integration, [(prepared[i].entry, prepared[i].previous) for i in indexes]
        )
        for i, plan in zip(indexes, decided, strict=True):
            plans[i] = plan
    return [p if p is not None else RuntimeError("no plan") for p in plans]


def finish(runtime: Runtime, prepared: Prepared, plan: WritePlan) -> ItemResult:
    """Validate and execute ``plan`` for the entry, then record state and audit.

    Failures leave as ItemFailed carrying the plan, so a dead letter keeps it for replay.
    """
    item, entry = prepared.item, prepared.entry
    integration = runtime.integration(item.integration_id)
    connectors = runtime.connectors(item.integration_id)
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
