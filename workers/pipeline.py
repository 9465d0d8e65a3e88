"""The pipeline one pulled batch of work items goes through, stage by stage, forward only::

    fetch ──▶ prepare ──▶ decide ──▶ write ──▶ record
    Healthie   canonical     agent      validate,    patient state, appointment
    (aliased   JSON, hash,   (one call  then the     index and audit record: one
    batches)   unchanged?    per inte-  target       atomic step per item, one call
               stop here     gration)   connectors   for the batch (the hash that
                                                     makes the next run skip)

:func:`run` drives the stages for the items of every integration in the batch and yields one
:class:`Outcome` per item as soon as it has one; it never acks, nacks or dead-letters (that is
``workers.consumer``'s one job) and it never reaches into a service locator: each stage is
handed exactly the clients it uses (``app.service.runtime.IntegrationClients`` holds them).

A failure belongs to its own item: it is captured in that item's outcome, with the WritePlan
when the agent had already decided, so a dead letter can keep the plan for replay. Only
exceptions that are not ``Exception`` (a dying process) escape, leaving the batch unsettled.

An item's audit record is stored with its state (:func:`record`, and :func:`gone` for patients
Healthie no longer has), so its :class:`Outcome` says ``audited`` and ``workers.middleware``
appends nothing more for it. Audit texts hold ids, kinds, operation names and the plan's
backend, and of a plan's free text (a model's rationale may quote the entry) only its length:
:func:`plan_detail`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from app.agent.base import Agent, decide_many, validate_plan
from app.agent.freshness import is_stale
from app.core import faults
from app.core.config import Integration
from app.core.errors import HealthieSyncError, PatientNotFound, PlanValidationError
from app.core.models import Entry, WorkItem, WritePlan
from app.healthie.client import HealthieClient
from app.healthie.entry import canonicalize, content_hash
from app.observability import metrics
from app.service.runtime import IntegrationClients
from app.state.base import AuditRecord, PatientRecord, PatientState, StateStore
from connectors.base import Connector, Declared, Scope, Write
from workers.backfill import RESYNC as RESYNC_WATERMARK

Status = Literal["written", "plan_skipped", "unchanged", "failed"]
Raw = dict[str, object] | None


@dataclass(frozen=True)
class Outcome:
    """What the pipeline did with one work item."""

    item: WorkItem
    status: Status
    writes: int = 0
    #: the plan, once decided (kept with a dead letter so a replay need not ask again)
    plan: WritePlan | None = None
    entry_hash: str | None = None
    error: Exception | None = None
    #: its audit record was stored with its state, in the same atomic step
    audited: bool = False


@dataclass(frozen=True)
class Prepared:
    """A changed entry waiting for its plan."""

    item: WorkItem
    entry: Entry
    previous: PatientState | None


def run(
    items: Sequence[WorkItem],
    clients_for: Callable[[str], IntegrationClients],
    state: StateStore,
) -> Iterator[tuple[int, Outcome]]:
    """Every item through the stages, yielding ``(index, outcome)`` as soon as an item has
    one: unchanged and failed items before anything is written, the rest once their batch is
    written and recorded. Writes are acknowledged only after they are recorded, so a process
    that dies mid-batch leaves written items to be redelivered, and rewritten idempotently."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.integration_id, []).append(i)
    for integration_id, indexes in groups.items():
        group = [items[i] for i in indexes]
        try:
            clients = clients_for(integration_id)
            raw = fetch(clients.healthie, group)
            faults.point("pipeline.fetched")
        except Exception as exc:  # noqa: BLE001 - Healthie down, no client: all items share it
            for i, item in zip(indexes, group, strict=True):
                yield i, Outcome(item, "failed", error=exc)
            continue
        for j, outcome in _run_integration(group, raw, clients, state):
            yield indexes[j], outcome


def _run_integration(
    items: Sequence[WorkItem],
    raw: Mapping[str, Raw],
    clients: IntegrationClients,
    state: StateStore,
) -> Iterator[tuple[int, Outcome]]:
    waiting: list[tuple[int, Prepared]] = []
    try:
        rules = clients.rules
        resync_since = state.get_watermark(clients.integration.id, RESYNC_WATERMARK)
    except Exception as exc:  # noqa: BLE001 - unreadable rules or state: every item shares it
        for i, item in enumerate(items):
            yield i, Outcome(item, "failed", error=exc)
        return
    for i, item in enumerate(items):
        try:
            prepared = prepare(
                state,
                item,
                raw.get(item.patient_id),
                rules=rules,
                resync_since=resync_since,
                refresh_after=clients.integration.agent.refresh_after,
            )
        except PatientNotFound:
            # Deleted, or merged into another patient: a defined outcome, never a dead letter.
            yield i, gone(clients, state, item)
            continue
        except Exception as exc:  # noqa: BLE001 - classified by the consumer
            yield i, Outcome(item, "failed", error=exc)
            continue
        if prepared is None:
            yield i, Outcome(item, "unchanged")
        else:
            waiting.append((i, prepared))
    if not waiting:
        return
    try:
        with metrics.stage_timer(clients.integration.id, "decide"):
            plans = decide(lambda: clients.agent, clients.integration, [p for _, p in waiting])
    except Exception as exc:  # noqa: BLE001 - the agent failed as a whole: all share it
        plans = [exc] * len(waiting)
    faults.point("pipeline.decided")
    decided: list[tuple[int, Prepared, WritePlan]] = []
    for (i, prepared), plan in zip(waiting, plans, strict=True):
        if isinstance(plan, Exception):
            yield i, Outcome(prepared.item, "failed", error=plan)
        else:
            decided.append((i, prepared, plan))
    if decided:
        yield from _write_and_record(decided, clients, state)


def _write_and_record(
    decided: Sequence[tuple[int, Prepared, WritePlan]],
    clients: IntegrationClients,
    state: StateStore,
) -> Iterator[tuple[int, Outcome]]:
    planned: list[tuple[int, Prepared, WritePlan, list[Write]]] = []
    for i, prepared, plan in decided:
        try:
            writes = validate(clients.targets, prepared, plan)
        except Exception as exc:  # noqa: BLE001 - classified by the consumer, plan kept
            yield i, _failed(prepared, plan, exc)
            continue
        planned.append((i, prepared, plan, writes))
    if not planned:
        return
    try:
        with metrics.stage_timer(clients.integration.id, "write"):
            results = write(lambda: clients.connectors, [w for *_, w in planned])
    except Exception as exc:  # noqa: BLE001 - no connector at all: every item shares it
        for i, prepared, plan, _ in planned:
            yield i, _failed(prepared, plan, exc)
        return
    faults.point("pipeline.written")
    done: list[tuple[int, Prepared, WritePlan, list[Write]]] = []
    for (i, prepared, plan, writes), errors in zip(planned, results, strict=True):
        if errors:
            yield i, _failed(prepared, plan, errors[0])
        else:
            done.append((i, prepared, plan, writes))
    if not done:
        return
    recorded: list[Exception | None]
    try:
        with metrics.stage_timer(clients.integration.id, "record"):
            recorded = list(
                record(
                    state,
                    [(prepared, plan) for _, prepared, plan, _ in done],
                    rules=clients.rules,
                )
            )
    except Exception as exc:  # noqa: BLE001 - the store failed as a whole: all share it
        recorded = [exc] * len(done)
    faults.point("pipeline.recorded")
    for (i, prepared, plan, writes), error in zip(done, recorded, strict=True):
        if error is not None:
            yield i, _failed(prepared, plan, error)  # retried: the writes are idempotent
            continue
        yield (
            i,
            Outcome(
                prepared.item,
                status_of(plan),
                writes=len(writes),
                plan=plan,
                entry_hash=prepared.entry.content_hash,
                audited=True,
            ),
        )


def _failed(prepared: Prepared, plan: WritePlan, exc: Exception) -> Outcome:
    return Outcome(
        prepared.item, "failed", plan=plan, entry_hash=prepared.entry.content_hash, error=exc
    )


# -- the stages ---------------------------------------------------------------------------


def fetch(healthie: HealthieClient, items: Sequence[WorkItem]) -> dict[str, Raw]:
    """Stage 1: every item's raw entry from Healthie, in aliased batches (None: no patient).
    A failure here (Healthie down, the key refused) is every item's failure."""
    fetched: dict[str, Raw] = dict(healthie.fetch_entries([item.patient_id for item in items]))
    return fetched


def prepare(
    state: StateStore,
    item: WorkItem,
    raw: Raw,
    *,
    rules: str = "",
    resync_since: datetime | None = None,
    refresh_after: str | None = None,
) -> Prepared | None:
    """Stage 2: the canonical entry and its hash; ``None`` when it is unchanged since the last
    success under the same ``rules``, decided after ``resync_since`` (the integration's forced
    re-sync) and not older than ``refresh_after`` (time-dependent rules). Raises
    PatientNotFound when Healthie has no such patient (``raw`` is None)."""
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
    previous = state.get_patient(item.integration_id, item.patient_id)
    if (
        previous is not None
        and previous.content_hash == entry.content_hash
        and previous.outcome in ("written", "plan_skipped")
        and previous.rules == rules
        and (resync_since is None or previous.updated_at > resync_since)
        and not is_stale(previous.updated_at, entry.fetched_at, refresh_after)
    ):
        return None
    return Prepared(item, entry, previous)


def decide(
    agent: Callable[[], Agent], integration: Integration, prepared: Sequence[Prepared]
) -> list[WritePlan | Exception]:
    """Stage 3: a plan per prepared entry, in order. A replay of an unchanged entry reuses its
    stored plan; the rest go to the agent together (one Message Batch where the backend
    batches), so a failed slot holds that item's error only. ``agent`` is called only when
    some entry needs it (a Claude backend without a key must not fail replays)."""
    plans: list[WritePlan | Exception | None] = [None] * len(prepared)
    asking: list[int] = []
    for i, p in enumerate(prepared):
        if p.item.plan is not None and p.item.plan_entry_hash == p.entry.content_hash:
            plans[i] = p.item.plan
        else:
            asking.append(i)
    if asking:
        decided = decide_many(
            agent(), integration, [(prepared[i].entry, prepared[i].previous) for i in asking]
        )
        for i, plan in zip(asking, decided, strict=True):
            plans[i] = plan
    return [p if p is not None else RuntimeError("no plan") for p in plans]


def validate(targets: Mapping[str, Declared], prepared: Prepared, plan: WritePlan) -> list[Write]:
    """Stage 4a: check ``plan`` against the targets' declarations (the security boundary:
    only this entry's patient, only declared operations, tables, columns and typed values),
    then scope each operation to the integration, patient and run. Touches no target."""
    entry, item = prepared.entry, prepared.item
    parsed = validate_plan(plan, entry, targets)
    scope = Scope(
        integration_id=item.integration_id,
        patient_id=item.patient_id,
        run_id=f"{item.flush_id}-{item.integration_id}",
        synced_at=datetime.now(UTC),
    )
    return [
        Write(scope, op.operation, args, op.target)
        for op, args in zip(plan.operations, parsed, strict=True)
    ]


def write(
    connectors: Callable[[], Mapping[str, Connector]],
    batches: Sequence[Sequence[Write]],
) -> list[list[HealthieSyncError]]:
    """Stage 4b: execute every item's writes together, one batch per target (the connector
    chunks and sizes it), and mirror-mode targets prune what the items no longer have.
    Returns each item's errors (empty: all its writes succeeded). ``connectors`` is called
    only when something is to be written."""
    errors: list[list[HealthieSyncError]] = [[] for _ in batches]
    if not any(batches):
        return errors
    built = connectors()
    by_target: dict[str, list[tuple[int, Write]]] = {}
    for n, writes in enumerate(batches):
        for w in writes:
            by_target.setdefault(w.target, []).append((n, w))
    routed: list[list[Write]] = [[] for _ in batches]
    for target, owned in by_target.items():
        connector = built[target]
        results = connector.execute_batch([w for _, w in owned])
        for (n, w), result in zip(owned, results, strict=True):
            if result.error is not None:
                errors[n].append(result.error)
                continue
            for follow in connector.follow_ups(w, result):
                try:
                    routed[n].append(_follow_up(built, w, follow))
                except HealthieSyncError as exc:
                    errors[n].append(exc)
    _write_follow_ups(built, routed, errors)
    for connector in built.values():
        if not connector.mirrors:
            continue
        for n, writes in enumerate(batches):
            if writes and not errors[n]:
                kept = kept_keys([*writes, *routed[n]], connector.name)
                error = connector.mirror(writes[0].scope, kept)
                if error is not None:
                    errors[n].append(error)
    return errors


def _follow_up(
    built: Mapping[str, Connector], source: Write, follow: tuple[str, str, dict[str, Any]]
) -> Write:
    """A connector's follow-up write (e.g. an eligibility summary for the plan's write_back
    target), validated exactly like the plan's own: declared operation, typed arguments, the
    same patient (the security boundary)."""
    target, operation, args = follow
    connector = built.get(target)
    if connector is None:
        raise PlanValidationError(
            f"{source.target}.{source.operation}: write_back names no configured target "
            f"{target!r}; known: {sorted(built)}"
        )
    parsed = connector.validate(operation, args, source.scope.patient_id)
    return Write(source.scope, operation, parsed, target)


def _write_follow_ups(
    built: Mapping[str, Connector],
    routed: Sequence[Sequence[Write]],
    errors: list[list[HealthieSyncError]],
) -> None:
    """The second round: follow-up writes, one batch per target; their failures are their
    item's, like the first round's."""
    by_target: dict[str, list[tuple[int, Write]]] = {}
    for n, writes in enumerate(routed):
        for w in writes:
            by_target.setdefault(w.target, []).append((n, w))
    for target, owned in by_target.items():
        results = built[target].execute_batch([w for _, w in owned])
        for (n, _), result in zip(owned, results, strict=True):
            if result.error is not None:
                errors[n].append(result.error)


def purge(clients: IntegrationClients, item: WorkItem) -> HealthieSyncError | None:
    """Mirror-mode targets delete every row of a patient Healthie no longer has; the first
    failure, if any (the item is then retried instead of skipped)."""
    mirrored = [n for n, s in clients.targets.items() if getattr(s.options, "mode", "") == "mirror"]
    if not mirrored:
        return None
    scope = Scope(
        item.integration_id,
        item.patient_id,
        f"{item.flush_id}-{item.integration_id}",
        datetime.now(UTC),
    )
    built = clients.connectors
    for name in mirrored:
        error = built[name].mirror(scope, {})
        if error is not None:
            return error
    return None


def kept_keys(writes: Sequence[Write], target: str) -> dict[str, set[str]]:
    """Per table, the keys one item's writes to ``target`` keep (what mirror mode keeps)."""
    keep: dict[str, set[str]] = {}
    for w in writes:
        table, key = getattr(w.args, "table", None), getattr(w.args, "key", None)
        if w.target == target and w.operation != "delete_row" and table and key:
            keep.setdefault(str(table), set()).add(str(key))
    return keep


def status_of(plan: WritePlan) -> Status:
    """The outcome of an item whose plan was carried out."""
    return "written" if plan.action == "write" else "plan_skipped"


def record(
    state: StateStore, done: Sequence[tuple[Prepared, WritePlan]], *, rules: str = ""
) -> list[HealthieSyncError | None]:
    """Stage 5: for every item whose plan was carried out, remember the entry, its hash, plan
    and rules (so the next run can skip it), index the appointments it contains and append its
    audit record — one atomic step per item, one state call for all of them
    (``StateStore.record_patients``), so no item is ever recorded unaudited (and skipped from
    then on) or audited unrecorded. Per item, None once recorded, or the error that kept it
    from being recorded (it is retried)."""
    now = datetime.now(UTC)
    records = []
    for prepared, plan in done:
        item, entry = prepared.item, prepared.entry
        status = status_of(plan)
        records.append(
            PatientRecord(
                state=PatientState(
                    integration_id=item.integration_id,
                    patient_id=item.patient_id,
                    content_hash=entry.content_hash,
                    entry=entry.data,
                    plan=plan,
                    outcome=status,
                    updated_at=now,
                    rules=rules,
                ),
                appointment_ids=appointment_ids(entry.data),
                audit=audit_record(item, status, operations_of(plan), plan_detail(item, plan)),
            )
        )
    return state.record_patients(records)


# -- what the audit says (ids, kinds, names and lengths; never a patient value) --------------

#: how much of an error text an audit record keeps (error texts carry ids only)
ERROR_DETAIL_CHARS = 300


def audit_record(
    item: WorkItem, outcome: str, operations: Sequence[str] = (), detail: str = ""
) -> AuditRecord:
    """The audit record of ``item``, stamped now."""
    return AuditRecord(
        integration_id=item.integration_id,
        patient_id=item.patient_id,
        run_id=item.flush_id,
        at=datetime.now(UTC),
        outcome=outcome,
        operations=list(operations),
        detail=detail,
    )


def operations_of(plan: WritePlan) -> list[str]:
    """``target.operation`` of each of the plan's operations, in order (never their args)."""
    return [f"{op.target}.{op.operation}" for op in plan.operations]


def plan_detail(item: WorkItem, plan: WritePlan) -> str:
    """What the audit says of a carried-out plan: the dead letter it replays, the backend that
    made it and the length of its free text. Never the text itself: a model's rationale or
    skip reason may quote the entry (a name, a birth date, a phone number)."""
    parts = [f"replay of {item.replay_of}"] if item.replay_of else []
    parts.append(f"backend {plan.backend or 'unnamed'}")
    if plan.action == "skip":
        parts.append(f"skip reason of {len(plan.skip_reason or '')} characters")
    parts.append(f"rationale of {len(plan.rationale)} characters")
    return "; ".join(parts)


def error_detail(exc: BaseException) -> str:
    """An error's kind and text for the audit, cut to :data:`ERROR_DETAIL_CHARS` (the engine's
    error texts are built from ids, kinds and field paths only: ``app.core.errors``)."""
    return f"{type(exc).__name__}: {exc}"[:ERROR_DETAIL_CHARS]


def appointment_ids(data: Mapping[str, Any]) -> list[str]:
    """The ids of the appointments an entry lists (``appointments``, ``upcoming_appointments``,
    any top-level ``*appointments`` list of a custom selection)."""
    found: dict[str, None] = {}
    for name in _appointment_lists(data):
        found.update(
            (str(a["id"]), None) for a in data[name] if isinstance(a, dict) and a.get("id")
        )
    return list(found)


def _appointment_lists(data: Mapping[str, Any]) -> list[str]:
    return [n for n, v in data.items() if n.endswith("appointments") and isinstance(v, list)]


# -- patients Healthie no longer has --------------------------------------------------------

#: ``PatientState.outcome`` of a patient Healthie no longer has
GONE = ("merged", "deleted")
#: how a ``patient.merged`` source carries its destination through staging (a reason)
MERGED_REASON = "merged_into:"


def merged_into(item: WorkItem) -> str | None:
    """The destination of the ``patient.merged`` that named this patient as its source."""
    for reason in item.reasons:
        if reason.startswith(MERGED_REASON) and len(reason) > len(MERGED_REASON):
            return reason[len(MERGED_REASON) :]
    return None


def gone_entry(last: Mapping[str, Any], patient_id: str, into: str | None) -> dict[str, Any]:
    """The entry of a patient Healthie no longer has: its last recorded entry, inactive, with
    no appointments (a merge moved them to ``into``; a deletion took them) and the reason
    (``merged_into``, or ``deleted``)."""
    data: dict[str, Any] = {**last, "id": last.get("id", patient_id), "active": False}
    for name in _appointment_lists(data):
        data[name] = []
    data["merged_into" if into else "deleted"] = into or True
    gone: dict[str, Any] = canonicalize(data)
    return gone


def gone(clients: IntegrationClients, state: StateStore, item: WorkItem) -> Outcome:
    """A patient Healthie no longer has, merged away (the item names the destination) or
    deleted. Mirror-mode targets delete every row of it (:func:`purge`); if its last recorded
    entry was written, the rules decide once more on its :func:`gone_entry`, for the other
    targets only: with the demo plan its patient row turns inactive and its appointment rows
    go (the plan's removal step), so a merged appointment is left only under the destination,
    which its own ``patient.merged`` mark re-syncs. The state records ``merged`` or
    ``deleted`` (its appointments unindexed) together with the audit record
    (``skipped:patient_not_found``, with the operations written), so a repeat does nothing.
    The outcome is PatientNotFound (acknowledged; audited already); a failed write, purge or
    record is retried instead."""
    into = merged_into(item)
    what = f"merged into {into}" if into else "deleted"
    not_found = PatientNotFound(f"patient {item.patient_id} not found in Healthie ({what})")
    previous = state.get_patient(item.integration_id, item.patient_id)
    if previous is not None and previous.outcome in GONE:
        return Outcome(item, "failed", error=not_found)  # handled when it went
    error = purge(clients, item)
    if error is not None:
        return Outcome(item, "failed", error=error)
    data = gone_entry(previous.entry if previous else {}, item.patient_id, into)
    entry = Entry(
        integration_id=item.integration_id,
        patient_id=item.patient_id,
        data=data,
        content_hash=content_hash(data),
        fetched_at=datetime.now(UTC),
    )
    mirrored = {n for n, s in clients.targets.items() if getattr(s.options, "mode", "") == "mirror"}
    plan: WritePlan | None = None
    writes: list[Write] = []
    if previous is not None and previous.outcome == "written" and set(clients.targets) - mirrored:
        prepared = Prepared(item, entry, previous)
        try:
            (decided,) = decide(lambda: clients.agent, clients.integration, [prepared])
            if isinstance(decided, Exception):
                return Outcome(item, "failed", error=decided)
            # mirror targets were purged: nothing of the patient may be written there again
            kept = tuple(op for op in decided.operations if op.target not in mirrored)
            plan = decided.model_copy(update={"operations": kept})
            if plan.action == "write" and kept:
                writes = validate(clients.targets, prepared, plan)
                errors = write(lambda: clients.connectors, [writes])[0]
                if errors:
                    return _failed(prepared, plan, errors[0])
        except Exception as exc:  # noqa: BLE001 - classified by the consumer
            return Outcome(item, "failed", plan=plan, error=exc)
    gone_state = PatientState(
        integration_id=item.integration_id,
        patient_id=item.patient_id,
        content_hash=entry.content_hash,
        entry=data,
        plan=plan,
        outcome="merged" if into else "deleted",
        updated_at=datetime.now(UTC),
        rules=clients.rules,
    )
    written = operations_of(plan) if plan is not None and writes else []
    audit = audit_record(item, f"skipped:{not_found.kind}", written, error_detail(not_found))
    try:
        (refused,) = state.record_patients(
            [PatientRecord(state=gone_state, appointment_ids=[], audit=audit)]
        )
    except Exception as exc:  # noqa: BLE001 - retried: the writes are idempotent
        return Outcome(item, "failed", plan=plan, error=exc)
    if refused is not None:
        return Outcome(item, "failed", plan=plan, error=refused)
    return Outcome(
        item,
        "failed",
        writes=len(writes),
        plan=plan,
        entry_hash=entry.content_hash,
        error=not_found,
        audited=True,
    )
