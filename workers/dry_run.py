"""Dry runs: what an integration would write for some patients, with nothing executed.

Fetches the patients' entries through the Healthie client, asks the integration's agent for
plans exactly as a flush would (batched where the backend batches), validates them, and returns
report items for ``app.agent.report``. Targets and engine state are not touched, so a dry run
can be repeated against live Healthie data safely (the staging mode's readable companion).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from app.agent.base import decide_many, validate_plan
from app.agent.report import ReportItem
from app.core.errors import HealthieSyncError
from app.core.models import Entry, WritePlan
from app.healthie.entry import canonicalize, content_hash
from app.service.runtime import Runtime
from connectors.base import Scope, Write
from connectors.matching import Kind


def dry_run(runtime: Runtime, integration_id: str, patient_ids: Sequence[str]) -> list[ReportItem]:
    """Report items for ``patient_ids`` (a missing patient is reported, not raised)."""
    clients = runtime.clients(integration_id)
    integration = clients.integration
    fetched = clients.healthie.fetch_entries(list(patient_ids))
    entries: list[Entry] = []
    items: list[ReportItem] = []
    missing: list[ReportItem] = []
    for patient_id in patient_ids:
        raw = fetched.get(patient_id)
        data = canonicalize(raw) if raw is not None else {"id": patient_id}
        entry = Entry(
            integration_id=integration_id,
            patient_id=patient_id,
            data=data,
            content_hash=content_hash(data),
            fetched_at=datetime.now(UTC),
        )
        if raw is None:
            missing.append(ReportItem(entry, None, None, "patient not found in Healthie"))
        else:
            entries.append(entry)
    previous = [runtime.state.get_patient(integration_id, e.patient_id) for e in entries]
    plans = decide_many(clients.agent, integration, list(zip(entries, previous, strict=True)))
    targets = clients.targets
    writes: list[Write] = []
    for entry, before, plan in zip(entries, previous, plans, strict=True):
        if not isinstance(plan, WritePlan):
            items.append(ReportItem(entry, before, None, f"{type(plan).__name__}: {plan}"))
            continue
        try:
            parsed = validate_plan(plan, entry, targets)
        except HealthieSyncError as exc:
            items.append(ReportItem(entry, before, plan, f"refused: {exc}"))
            continue
        scope = Scope(integration_id, entry.patient_id, "dry-run", datetime.now(UTC))
        writes += [
            Write(scope, op.operation, args, op.target)
            for op, args in zip(plan.operations, parsed, strict=True)
        ]
        items.append(ReportItem(entry, before, plan))
    unmatched = _matching(runtime, integration_id, writes)
    return [_with_matching(item, unmatched) for item in items] + missing


def _matching(runtime: Runtime, integration_id: str, writes: Sequence[Write]) -> dict[str, str]:
    """Patients a target's record matching would refuse (``connectors.matching``: ambiguous
    or taken), by patient id: read-only searches, for targets that link existing records."""
    refused: dict[str, str] = {}
    if not writes:
        return refused
    for name, connector in runtime.connectors(integration_id).items():
        preview = getattr(connector, "match_preview", None)
        mine = [w for w in writes if w.target == name]
        if preview is None or not mine:
            continue
        for patient_id, outcome in preview(mine).items():
            if outcome.kind in (Kind.AMBIGUOUS, Kind.TAKEN):
                what = f"{outcome.field or 'identity'} ({outcome.count} records)"
                refused[patient_id] = f"{name}: {outcome.kind.value} on {what}"
    return refused


def _with_matching(item: ReportItem, refused: dict[str, str]) -> ReportItem:
    reason = refused.get(item.entry.patient_id)
    if reason is None or item.error is not None:
        return item
    return ReportItem(item.entry, item.previous, item.plan, f"would not write: {reason}")
