"""Both directions end to end, against HubSpot (the router in front of Prism validating every
request against HubSpot's contacts and properties definitions) and Healthie (the sandbox over
HTTP): a HubSpot property change produces exactly one Healthie mutation and no echo back to
HubSpot; the engine's own HubSpot write coming back as a webhook produces no Healthie mutation;
the conflict rule decides when both sides changed one property.

Mutations are counted on the sandbox side (operations of ``mutation`` documents it executed),
HubSpot writes on the router's side (``batch/upsert`` and ``batch/update`` requests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette

from app.core.models import WorkItem
from app.intake import hubspot_receiver
from app.intake.hubspot_signature import sign
from app.service.runtime import IntegrationClients, Runtime
from app.service.serving import serve_in_thread
from connectors.base import Connector
from sandbox.core import Sandbox
from sandbox.server import create_app
from tests.servers.hubspot import assert_valid_since, marks
from tests.servers.prism import (  # noqa: F401 - fixtures
    Prism,
    prism_hubspot_contacts,
    prism_hubspot_properties,
)
from tests.workers.test_reverse_fixtures import (
    CLIENT_SECRET,
    ReadingRouter,
    example_integration,
    example_runtime,
)
from workers import pipeline
from workers.reverse import ReverseResult, flush_reverse
from workers.reverse_ledger import EchoGuard, guard_connectors

P1, P2 = "1000001", "1000002"
WRITES = ("/contacts/batch/upsert", "/contacts/batch/update")


@pytest.fixture(scope="session")
def hubspot_reading(
    prism_hubspot_contacts: Prism,  # noqa: F811
    prism_hubspot_properties: Prism,  # noqa: F811
) -> Iterator[ReadingRouter]:
    router = ReadingRouter(prism_hubspot_contacts, prism_hubspot_properties)
    with serve_in_thread(router.app()) as url:
        router.url = url
        yield router
    router._client.close()


class GuardedClients(IntegrationClients):
    """The integration's clients with the HubSpot target wrapped as the reported runtime
    hookup wraps it (``workers.reverse_ledger.guard_connectors``)."""

    @property
    def connectors(self) -> dict[str, Connector]:
        with self._lock:
            built = super().connectors
            if not any(isinstance(c, EchoGuard) for c in built.values()):
                self._connectors = guard_connectors(built, self._runtime.state, self.integration)
            return self._connectors  # type: ignore[return-value]


class TwoWay:
    """The sandbox, the HubSpot router, the engine's runtime and its webhook route."""

    def __init__(self, sb: Sandbox, router: ReadingRouter, runtime: Runtime, url: str) -> None:
        self.sb, self.router, self.runtime, self.url = sb, router, runtime, url
        self.clients = GuardedClients(runtime, next(iter(runtime.integrations.values())))
        self.mutation_names = _mutation_names()

    # -- counting -----------------------------------------------------------------------------
    def mutations(self) -> int:
        return sum(n for name, n in self.sb.counters.items() if name in self.mutation_names)

    def hubspot_writes(self) -> int:
        return sum(self.router.count(p) for p in WRITES)

    # -- the two directions -------------------------------------------------------------------
    def forward(self, *patients: str) -> list[pipeline.Outcome]:
        """What a Healthie webhook and a flush do for ``patients``: the forward pipeline."""
        items = [
            WorkItem(
                integration_id="hubspot-clinic",
                patient_id=p,
                flush_id=f"f{time.monotonic_ns()}",
                dirty_since=datetime.now(UTC),
            )
            for p in patients
        ]
        outcomes = [o for _, o in pipeline.run(items, lambda _: self.clients, self.runtime.state)]
        assert [o.error for o in outcomes] == [None] * len(items)
        return outcomes

    def hubspot_edit(self, patient: str, **props: str) -> str:
        """A person edits the patient's contact in HubSpot; HubSpot sends its signed webhook."""
        (cid,) = [
            c for c, p in self.router.records.items() if p.get("healthie_patient_id") == patient
        ]
        self.router.records[cid].update(props)
        self.webhook(cid, *props)
        return cid

    def webhook(self, cid: str, *props: str) -> None:
        events = [
            {
                "eventId": n,
                "subscriptionId": 7,
                "portalId": 62515,
                "occurredAt": int(time.time() * 1000),
                "subscriptionType": "contact.propertyChange",
                "attemptNumber": 0,
                "objectId": int(cid),
                "propertyName": p,
                "changeSource": "CRM",
            }
            for n, p in enumerate(props)
        ]
        body = json.dumps(events).encode()
        ts = str(int(time.time() * 1000))
        uri = "https://sync.example.com/webhooks/hubspot/hubspot-clinic"
        response = httpx2.post(
            self.url + "/webhooks/hubspot/hubspot-clinic",
            content=body,
            headers={
                "content-type": "application/json",
                "X-HubSpot-Request-Timestamp": ts,
                "X-HubSpot-Signature-v3": sign(
                    CLIENT_SECRET, method="POST", uri=uri, body=body, timestamp=ts
                ),
            },
        )
        assert response.status_code == 202, response.text

    def reverse(self) -> ReverseResult:
        result = flush_reverse(self.runtime.queue, self.runtime.state, lambda _: self.clients)
        assert result.failed == {}, result
        assert result.dead_lettered == 0, result
        return result

    def patient(self, pid: str) -> Any:
        return self.sb.org.patient(pid)


def _mutation_names() -> set[str]:
    from app.healthie import operations

    names = set()
    for name in operations.names():
        for line in operations.load(name).splitlines():
            if line.startswith("mutation "):
                names.add(line.split()[1].split("(")[0])
    assert "WriteUpdateClient" in names
    return names


@pytest.fixture
def two_way(tmp_path, hubspot_reading: ReadingRouter) -> Iterator[TwoWay]:
    hubspot_reading.reset()
    before = marks(hubspot_reading)
    sb = Sandbox(patients=4, seed=3)
    with serve_in_thread(create_app(sb)) as healthie:
        integration = example_integration(
            healthie_url=f"{healthie}/graphql", hubspot_url=hubspot_reading.url
        )
        runtime = example_runtime(tmp_path, integration, api_key=sb.api_key)
        app = Starlette(routes=hubspot_receiver.build_router(runtime).routes)
        with serve_in_thread(app) as url:
            world = TwoWay(sb, hubspot_reading, runtime, url)
            yield world
            world.clients.close()
        runtime.close()
    sb.close()
    assert_valid_since(hubspot_reading, before)


def test_a_hubspot_change_makes_one_healthie_mutation_and_no_echo_back(two_way):
    w = two_way
    w.forward(P1, P2)  # the contacts exist, written by the engine
    assert w.hubspot_writes() == 1
    assert w.mutations() == 0
    hubspot_before, sent_before = w.hubspot_writes(), len(w.router.sent)

    w.hubspot_edit(P1, phone="+15557654321")
    result = w.reverse()
    assert (result.contacts, result.written, result.echoes) == (1, 1, 0)
    assert w.mutations() == 1  # exactly one Healthie mutation
    assert w.sb.counters["WriteUpdateClient"] == 1
    assert w.patient(P1).phone_number == "+15557654321"
    assert w.router.count("/objects/contacts/batch/read") == 1  # one batch read, no write
    assert w.hubspot_writes() == hubspot_before

    # Healthie's patient.updated for the engine's own write: the forward pipeline runs on the
    # changed entry and sends HubSpot nothing (every value is what HubSpot holds).
    (outcome,) = w.forward(P1)
    assert outcome.status == "written"
    assert w.hubspot_writes() == hubspot_before
    assert not [s for s in w.router.sent[sent_before:] if s.path.endswith(WRITES)]

    # HubSpot redelivers the same webhook: the contact equals the ledger, nothing is written.
    w.webhook(w.hubspot_edit(P1), "phone")
    again = w.reverse()
    assert (again.echoes, again.written) == (1, 0)
    assert w.mutations() == 1


def test_the_engines_own_hubspot_write_coming_back_is_dropped(two_way):
    w = two_way
    w.forward(P1)
    (cid,) = w.router.records
    w.webhook(cid, "email", "phone", "firstname", "lastname")  # HubSpot reports our upsert
    result = w.reverse()
    assert (result.echoes, result.written) == (1, 0)
    assert w.mutations() == 0
    # a Healthie change goes forward once, and its webhook from HubSpot is again dropped
    w.sb.update_client(P1, first_name="Renamed")
    w.forward(P1)
    assert w.hubspot_writes() == 2
    assert w.router.records[cid]["firstname"] == "Renamed"
    w.webhook(cid, "firstname")
    assert w.reverse().echoes == 1
    assert w.mutations() == 0


def test_a_contact_the_engine_never_linked_writes_nothing(two_way):
    w = two_way
    cid = w.router.add_contact(email="stranger@example.com", healthie_patient_id=P2)
    w.webhook(cid, "email")
    result = w.reverse()
    assert (result.unlinked, result.written) == (1, 0)
    assert w.mutations() == 0


def test_conflict_healthie_wins_email_hubspot_wins_phone(two_way):
    w = two_way
    w.forward(P1)
    hubspot_before = w.hubspot_writes()
    # both sides change email and phone before either direction runs
    w.sb.update_client(P1, email="healthie-side@example.com", phone_number="+15550001111")
    cid = w.hubspot_edit(P1, email="hubspot-side@example.com", phone="+15552223333")

    result = w.reverse()
    assert result.conflicts == 1  # email withheld: Healthie wins it
    assert w.mutations() == 1
    patient = w.patient(P1)
    assert patient.email == "healthie-side@example.com"  # kept
    assert patient.phone_number == "+15552223333"  # HubSpot's phone won

    w.forward(P1)
    assert w.hubspot_writes() == hubspot_before + 1
    assert w.router.records[cid]["email"] == "healthie-side@example.com"  # Healthie's email won
    assert w.router.records[cid]["phone"] == "+15552223333"
    # and the engine's write of the email comes back as a webhook: dropped
    w.webhook(cid, "email")
    assert w.reverse().echoes == 1
    assert w.mutations() == 1


def test_conflict_forward_first_withholds_the_phone_hubspot_wins(two_way):
    w = two_way
    w.forward(P1)
    hubspot_before = w.hubspot_writes()
    w.sb.update_client(P1, phone_number="+15550001111")
    (cid,) = w.router.records
    w.router.records[cid]["phone"] = "+15552223333"  # edited; HubSpot's webhook not yet in
    w.forward(P1)  # the forward direction runs first
    assert w.router.records[cid]["phone"] == "+15552223333"  # not overwritten
    assert w.hubspot_writes() == hubspot_before  # nothing else changed: no write at all
    w.webhook(cid, "phone")
    assert w.reverse().written == 1
    assert w.patient(P1).phone_number == "+15552223333"
    w.forward(P1)
    assert w.hubspot_writes() == hubspot_before
