"""Loop prevention between Healthie and HubSpot: the engine recognises its own writes by what it
last synchronised, never by timing.

**The ledger.** Per integration, patient and HubSpot property, the state store keeps the digest
of the value both sides last agreed on (``StateStore.get_synced`` / ``put_synced``; name
``"<hubspot target>:<property>"``, value a SHA-256 of HubSpot's text of the value, an email
lower-cased as HubSpot stores it). Two writers keep it:

* the forward direction, after HubSpot accepted an ``upsert_contact``: the properties it sent;
* the reverse direction (``workers.reverse``), after Healthie accepted the mutation: the
  HubSpot values it carried into Healthie.

**Both directions compare with it.** Forward (this module's :class:`EchoGuard`, wrapped around
the reverse direction's HubSpot target): a planned property whose value equals the ledger's is
already in HubSpot and is not sent; a write left with nothing is not sent at all. So a Healthie
change the reverse direction made (HubSpot -> Healthie) re-enters the forward pipeline as a new
entry and produces no HubSpot request: no echo. Reverse: a contact property equal to the
ledger's did not change outside the engine (it is the engine's own write coming back as a
webhook) and is dropped before any Healthie mutation.

**Conflicts** (both sides changed a property since it was last synchronised) are decided by
``[reverse] conflict``: forward, a changed property whose winner is ``hubspot`` is read from
HubSpot first (one ``batch/read`` per chunk, only when such a property is about to be sent) and
withheld when HubSpot's value also moved away from the ledger (the reverse direction then
carries HubSpot's value into Healthie); the reverse direction withholds ``healthie``-won
properties the same way. A value one side normalises (a phone reformatted by the forward plan)
costs at most one extra write before the ledger holds the normalised value: a loop cannot form,
because every write records what it wrote.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from app.core.reverse_config import ReverseConfig, reverse_of
from app.state.base import StateStore
from connectors.base import Connector, Write, WriteResult
from connectors.hubspot import HubSpotConnector, UpsertContact
from connectors.hubspot_values import Value, text
from workers.reverse_read import read_contacts


def digest(prop: str, value: str | None) -> str:
    """The ledger's digest of HubSpot's text ``value`` of ``prop`` ("" and None alike)."""
    normal = (value or "").strip()
    if prop == "email":
        normal = normal.lower()  # HubSpot stores addresses lower-cased
    return hashlib.sha256(normal.encode()).hexdigest()[:32]


def ledger_key(source: str, prop: str) -> str:
    """The ledger name of ``prop`` of the HubSpot target ``source``."""
    return f"{source}:{prop}"


def hubspot_text(connector: HubSpotConnector, prop: str, value: Value) -> str:
    """The text HubSpot stores for ``value`` of ``prop`` (what the connector sends)."""
    decl = connector.hubspot.properties.get(prop)
    return text(decl.type if decl else "string", value)


def changed_since(
    ledger: Mapping[str, str], source: str, values: Mapping[str, str | None]
) -> dict[str, str]:
    """The ``values`` whose digest differs from the ledger's (a value never synchronised
    counts as changed unless it is empty)."""
    out: dict[str, str] = {}
    for prop, value in values.items():
        known = ledger.get(ledger_key(source, prop))
        if known is None and not (value or "").strip():
            continue
        if known != digest(prop, value):
            out[prop] = value or ""
    return out


def unwrap(connector: Connector | EchoGuard) -> Connector:
    """The connector itself, without an :class:`EchoGuard` around it."""
    return connector.inner if isinstance(connector, EchoGuard) else connector


class EchoGuard:
    """The reverse direction's HubSpot target in the forward pipeline: sends only what the
    ledger does not hold and what no HubSpot-won conflict withholds, and records what HubSpot
    accepted (see the module docstring). Everything else is the wrapped connector's."""

    def __init__(self, inner: HubSpotConnector, state: StateStore, reverse: ReverseConfig) -> None:
        self.inner = inner
        self.state = state
        self.reverse = reverse
        #: properties withheld because HubSpot already held them (echoes) or won a conflict
        self.withheld: dict[str, int] = {"echo": 0, "conflict": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def execute_batch(self, writes: Sequence[Write]) -> list[WriteResult]:
        """The writes, trimmed against the ledger, through the wrapped connector; a write
        left with nothing to send succeeds without a request."""
        source = self.inner.name
        ledgers: dict[tuple[str, str], dict[str, str]] = {}
        planned: list[tuple[Write, dict[str, str]]] = []
        for w in writes:
            if not isinstance(w.args, UpsertContact):
                planned.append((w, {}))
                continue
            scope = (w.scope.integration_id, w.scope.patient_id)
            if scope not in ledgers:
                ledgers[scope] = self.state.get_synced(*scope)
            texts = {p: hubspot_text(self.inner, p, v) for p, v in w.args.properties.items()}
            changed = changed_since(ledgers[scope], source, texts)
            self.withheld["echo"] += len(texts) - len(changed)
            planned.append((w, changed))
        self._withhold_conflicts(planned, ledgers)
        sending: list[Write] = []
        results: dict[int, WriteResult] = {}
        for n, (w, changed) in enumerate(planned):
            if isinstance(w.args, UpsertContact):
                linked = bool(ledgers[(w.scope.integration_id, w.scope.patient_id)])
                if not changed and linked:
                    results[n] = self.inner.ok(w)  # HubSpot holds every value already
                    continue
                kept = {p: v for p, v in w.args.properties.items() if p in changed}
                w = Write(
                    w.scope, w.operation, w.args.model_copy(update={"properties": kept}), w.target
                )
            sending.append(w)
        sent = iter(self.inner.execute_batch(sending)) if sending else iter(())
        out: list[WriteResult] = []
        for n, (w, changed) in enumerate(planned):
            result = results.get(n) or next(sent)
            if n not in results and result.error is None and isinstance(w.args, UpsertContact):
                self.state.put_synced(
                    w.scope.integration_id,
                    w.scope.patient_id,
                    {ledger_key(source, p): digest(p, v) for p, v in changed.items()},
                )
            out.append(result)
        return out

    def _withhold_conflicts(
        self,
        planned: list[tuple[Write, dict[str, str]]],
        ledgers: Mapping[tuple[str, str], dict[str, str]],
    ) -> None:
        """Drop the changed properties HubSpot wins whose HubSpot value also changed."""
        source = self.inner.name
        contested = {
            w.scope.patient_id: [
                p
                for p in changed
                if self.reverse.winner(p) == "hubspot"
                and ledger_key(source, p) in ledgers[(w.scope.integration_id, w.scope.patient_id)]
            ]
            for w, changed in planned
            if changed
        }
        contested = {pid: props for pid, props in contested.items() if props}
        if not contested:
            return
        wanted = sorted({p for props in contested.values() for p in props})
        current = read_contacts(self.inner, sorted(contested), wanted, by_patient=True)
        for w, changed in planned:
            pid = w.scope.patient_id
            found = current.get(pid)
            if found is None:
                continue
            ledger = ledgers[(w.scope.integration_id, pid)]
            for p in contested.get(pid, ()):
                if ledger.get(ledger_key(source, p)) != digest(p, found.get(p)):
                    changed.pop(p, None)
                    self.withheld["conflict"] += 1


def guard_connectors(
    connectors: Mapping[str, Connector], state: StateStore, integration: Any
) -> dict[str, Connector]:
    """``connectors`` with the integration's reverse source wrapped in an :class:`EchoGuard`
    (unchanged when the integration has no ``[reverse]`` section)."""
    reverse = reverse_of(integration)
    out = dict(connectors)
    if reverse is not None:
        source = out.get(reverse.source)
        if isinstance(source, HubSpotConnector):
            out[reverse.source] = EchoGuard(source, state, reverse)  # type: ignore[assignment]
    return out
