"""Did Healthie change a HubSpot property too? The reverse direction's half of the conflict rule
(``[reverse] conflict``; the forward half is ``workers.reverse_ledger.EchoGuard``).

For the patients whose changed contact properties Healthie wins, the current Healthie entries
are fetched (the integration's client: aliased batches, the key's rate limit) and the forward
rules are applied to them as the forward pipeline would: a property Healthie changed is one
whose forward value differs from the ledger's. A compiled forward plan is evaluated (no model
call). With the Claude backend that evaluation would cost a model call per patient, so the
answer is conservative instead: a patient whose entry changed since the forward direction last
processed it (content hash) counts as having changed every property Healthie wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from app.agent.base import decide_many
from app.core.models import Entry
from app.core.reverse_config import ReverseConfig
from app.healthie.entry import canonicalize, content_hash
from app.service.runtime import IntegrationClients
from app.state.base import StateStore
from connectors.hubspot import HubSpotConnector, UpsertContact
from workers.reverse_ledger import digest, hubspot_text, ledger_key


def healthie_changed(
    clients: IntegrationClients,
    state: StateStore,
    reverse: ReverseConfig,
    hubspot: HubSpotConnector,
    contested: Mapping[str, Sequence[str]],
    ledgers: Mapping[str, Mapping[str, str]],
) -> dict[str, set[str]]:
    """Per patient of ``contested`` (patient -> properties Healthie wins), the properties
    Healthie changed since they were last synchronised."""
    if not contested:
        return {}
    integration = clients.integration
    raw = clients.healthie.fetch_entries(sorted(contested))
    now = datetime.now(UTC)
    entries: dict[str, Entry] = {}
    for pid in contested:
        found = raw.get(pid)
        if found is not None:
            data = canonicalize(found)
            entries[pid] = Entry(
                integration_id=integration.id,
                patient_id=pid,
                data=data,
                content_hash=content_hash(data),
                fetched_at=now,
            )
    out: dict[str, set[str]] = {pid: set() for pid in contested}
    previous = {pid: state.get_patient(integration.id, pid) for pid in entries}
    if integration.agent.backend != "plan":
        for pid, entry in entries.items():
            before = previous[pid]
            if before is None or before.content_hash != entry.content_hash:
                out[pid] = set(contested[pid])
        return out
    pids = list(entries)
    plans = decide_many(clients.agent, integration, [(entries[p], previous[p]) for p in pids])
    for pid, plan in zip(pids, plans, strict=True):
        if isinstance(plan, Exception):
            out[pid] = set(contested[pid])  # undecidable now: Healthie's side is unknown
            continue
        forward: dict[str, str] = {}
        for op in plan.operations:
            if op.target != reverse.source or op.operation != "upsert_contact":
                continue
            args = UpsertContact.model_validate(op.args)
            forward.update({p: hubspot_text(hubspot, p, v) for p, v in args.properties.items()})
        ledger = ledgers[pid]
        out[pid] = {
            p
            for p in contested[pid]
            if p in forward and ledger.get(ledger_key(reverse.source, p)) != digest(p, forward[p])
        }
    return out
