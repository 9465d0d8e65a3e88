"""The reverse flush: HubSpot contact changes back into Healthie, through the same WritePlan path
as the forward direction.

::

    queue "hubspot-changes" (app.intake.hubspot_receiver: one ContactChange per contact)
      pull ▸ decode ▸ group by integration, one contact once
        read     POST /crm/v3/objects/contacts/batch/read, 100 contacts a request, by
                 HubSpot id: the [reverse] properties and the id property (the patient id)
        link     a contact without the id property, or whose patient the engine never
                 synchronised (no ledger), is not linked: acknowledged, nothing written
        compare  the values against the ledger (workers.reverse_ledger): equal = the engine's
                 own write or no change: dropped, no Healthie request
        conflict properties Healthie wins that Healthie changed too (workers.reverse_conflict)
                 are withheld; the forward direction will carry Healthie's value
        decide   the reverse plan on entry = {id: patient, contact_id, properties: the changed
                 values that flow}; validate_plan against the [reverse] target only
        write    workers.pipeline.write: the Healthie target (connectors.healthie)
        record   the ledger takes the values written, then the messages are acknowledged
      settle     done -> ack; retriable -> nack with the queue's back-off; anything else ->
                 the dead-letter topic with error_kind (ids only), then ack

Why the patient must be known to the ledger: the id property is unique in HubSpot, so a contact
cannot take over a patient the engine already linked; a patient never written to HubSpot could
otherwise be named by anyone who edits a contact, and that contact would write into that
patient's Healthie record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from app.agent.base import decide_many, validate_plan
from app.agent.plan import PlanAgent
from app.core.errors import ConfigurationError, HealthieSyncError, RetriableError
from app.core.models import Entry
from app.core.reverse_config import ReverseConfig, check_reverse
from app.healthie.entry import content_hash
from app.intake.hubspot_receiver import (
    REVERSE_DLQ_TOPIC,
    REVERSE_SUBSCRIPTION,
    ContactChange,
    ensure_reverse_topology,
)
from app.queue.base import Message, Queue
from app.resilience.retry import redelivery_delay
from app.service.runtime import IntegrationClients, Runtime
from app.state.base import AuditRecord, StateStore
from connectors.base import Scope, Write
from connectors.hubspot import HubSpotConnector
from workers.pipeline import write
from workers.reverse_conflict import healthie_changed
from workers.reverse_ledger import changed_since, digest, ledger_key, unwrap
from workers.reverse_read import read_contacts

log = logging.getLogger(__name__)

PULL = 100


@dataclass
class ReverseResult:
    """What one reverse flush did (counts of contacts unless named otherwise)."""

    messages: int = 0
    invalid: int = 0
    contacts: int = 0
    unlinked: int = 0
    #: contacts whose values all equal the ledger's: the engine's own writes coming back
    echoes: int = 0
    #: properties withheld because Healthie changed them too and wins them
    conflicts: int = 0
    written: int = 0
    retried: int = 0
    dead_lettered: int = 0
    failed: dict[str, HealthieSyncError] = field(default_factory=dict)


def flush_reverse_runtime(runtime: Runtime, *, max_messages: int = 10_000) -> ReverseResult:
    """:func:`flush_reverse` with the runtime's queue, state and clients."""
    return flush_reverse(runtime.queue, runtime.state, runtime.clients, max_messages=max_messages)


def flush_reverse(
    queue: Queue,
    state: StateStore,
    clients_for: Callable[[str], IntegrationClients],
    *,
    max_messages: int = 10_000,
) -> ReverseResult:
    """Pull and apply contact changes until the subscription is empty (or ``max_messages``)."""
    ensure_reverse_topology(queue)
    result = ReverseResult()
    agents: dict[str, PlanAgent] = {}
    while result.messages < max_messages:
        pulled = queue.pull(REVERSE_SUBSCRIPTION, min(PULL, max_messages - result.messages))
        if not pulled:
            break
        result.messages += len(pulled)
        by_integration: dict[str, dict[str, list[Message]]] = {}
        changes: dict[str, ContactChange] = {}
        for message in pulled:
            try:
                change = ContactChange.model_validate_json(message.data)
            except ValidationError:
                result.invalid += 1
                queue.ack(REVERSE_SUBSCRIPTION, [message.ack_id])
                continue
            changes[message.ack_id] = change
            by_integration.setdefault(change.integration_id, {}).setdefault(
                change.contact_id, []
            ).append(message)
        for integration_id, contacts in by_integration.items():
            try:
                clients = clients_for(integration_id)
                outcomes = apply_changes(clients, state, sorted(contacts), agents, result)
            except HealthieSyncError as exc:  # the integration as a whole (HubSpot down, ...)
                outcomes = dict.fromkeys(contacts, exc)
                result.failed[integration_id] = exc
            for contact, error in outcomes.items():
                _settle(queue, contacts[contact], error, result)
    return result


def apply_changes(
    clients: IntegrationClients,
    state: StateStore,
    contact_ids: list[str],
    agents: dict[str, PlanAgent],
    result: ReverseResult,
) -> dict[str, HealthieSyncError | None]:
    """Read, compare, decide, write and record the changed contacts of one integration; each
    contact's error (None: done, including dropped echoes and unlinked contacts)."""
    integration = clients.integration
    reverse = check_reverse(integration)
    if reverse is None:
        raise ConfigurationError(f"integration {integration.id!r} has no [reverse] section")
    hubspot = unwrap(clients.connectors[reverse.source])
    assert isinstance(hubspot, HubSpotConnector)
    idp = hubspot.hubspot.id_property
    outcomes: dict[str, HealthieSyncError | None] = dict.fromkeys(contact_ids)
    result.contacts += len(contact_ids)
    found = read_contacts(hubspot, contact_ids, reverse.properties, by_patient=False)
    flowing: dict[str, tuple[str, dict[str, str]]] = {}  # contact -> (patient, values)
    ledgers: dict[str, dict[str, str]] = {}
    for cid in contact_ids:
        values = found.get(cid)
        pid = (values or {}).get(idp, "")
        ledger = state.get_synced(integration.id, pid) if pid.isdigit() else {}
        if values is None or not ledger:
            result.unlinked += 1
            continue
        changed = changed_since(
            ledger, reverse.source, {p: values.get(p) for p in reverse.properties}
        )
        if not changed:
            result.echoes += 1
            continue
        ledgers[pid] = ledger
        flowing[cid] = (pid, changed)
    contested = {
        pid: [
            p
            for p in changed
            if reverse.winner(p) == "healthie" and ledger_key(reverse.source, p) in ledgers[pid]
        ]
        for pid, changed in flowing.values()
    }
    contested = {pid: props for pid, props in contested.items() if props}
    also = healthie_changed(clients, state, reverse, hubspot, contested, ledgers)
    for cid, (pid, changed) in list(flowing.items()):
        for p in also.get(pid, ()):
            changed.pop(p, None)
            result.conflicts += 1
        if not changed:
            del flowing[cid]
    if not flowing:
        return outcomes
    agent = _agent(reverse, agents, integration.id)
    now = datetime.now(UTC)
    entries = [
        _entry(integration.id, pid, cid, changed, now) for cid, (pid, changed) in flowing.items()
    ]
    plans = decide_many(agent, integration, [(e, None) for e in entries])
    target = {reverse.target: clients.targets[reverse.target]}
    batches: list[tuple[str, list[Write]]] = []
    run_id = f"reverse-{now.strftime('%Y%m%dT%H%M%S')}-{integration.id}"
    for (cid, (pid, _)), entry, plan in zip(flowing.items(), entries, plans, strict=True):
        try:
            if isinstance(plan, Exception):
                raise plan
            parsed = validate_plan(plan, entry, target)
        except HealthieSyncError as exc:
            outcomes[cid] = exc
            continue
        scope = Scope(integration.id, pid, run_id, now)
        writes = [
            Write(scope, op.operation, args, op.target)
            for op, args in zip(plan.operations, parsed, strict=True)
        ]
        batches.append((cid, writes))
    errors = write(lambda: clients.connectors, [w for _, w in batches])
    for (cid, writes), errs in zip(batches, errors, strict=True):
        pid, changed = flowing[cid]
        if errs:
            outcomes[cid] = errs[0]
            continue
        state.put_synced(
            integration.id,
            pid,
            {ledger_key(reverse.source, p): digest(p, v) for p, v in changed.items()},
        )
        state.append_audit(
            AuditRecord(
                integration_id=integration.id,
                patient_id=pid,
                run_id=run_id,
                at=now,
                outcome="reverse_written" if writes else "reverse_skipped",
                operations=[w.operation for w in writes],
                detail=f"hubspot contact {cid}: {len(changed)} properties",
            )
        )
        result.written += bool(writes)
    return outcomes


def _entry(
    integration_id: str, pid: str, cid: str, values: Mapping[str, str], now: datetime
) -> Entry:
    data = {"id": pid, "contact_id": cid, "properties": dict(values)}
    return Entry(
        integration_id=integration_id,
        patient_id=pid,
        data=data,
        content_hash=content_hash(data),
        fetched_at=now,
    )


def _agent(reverse: ReverseConfig, agents: dict[str, PlanAgent], integration_id: str) -> PlanAgent:
    agent = agents.get(integration_id)
    if agent is None:
        assert reverse.plan is not None  # check_reverse refused a plan backend without one
        agent = agents[integration_id] = PlanAgent.from_file(
            Path(reverse.plan), Path(reverse.instructions)
        )
    return agent


def _settle(
    queue: Queue,
    messages: Iterable[Message],
    error: HealthieSyncError | None,
    result: ReverseResult,
) -> None:
    messages = list(messages)
    ack_ids = [m.ack_id for m in messages]
    if error is None:
        queue.ack(REVERSE_SUBSCRIPTION, ack_ids)
        return
    if isinstance(error, RetriableError):
        result.retried += 1
        attempt = max(m.delivery_attempt for m in messages)
        delay = redelivery_delay(attempt, error.retry_after)
        queue.nack(REVERSE_SUBSCRIPTION, ack_ids, delay_seconds=delay)
        return
    result.dead_lettered += 1
    attributes = {"error_kind": type(error).__name__, "error": str(error)[:500]}
    queue.publish_many(
        REVERSE_DLQ_TOPIC, [(m.data, {**m.attributes, **attributes}) for m in messages]
    )
    queue.ack(REVERSE_SUBSCRIPTION, ack_ids)
