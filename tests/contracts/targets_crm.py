"""The CRM targets in the connector contract suite: Brevo and customer.io, the real connectors
(httpx2, their own auth headers) against Prism serving each vendor's published OpenAPI file
with ``--errors`` (``tests.servers.prism``), so every request is validated against it.

Prism is stateless: it answers with the definition's examples and keeps nothing. What a target
"holds" is therefore reconstructed from a record of the requests Prism accepted
(:class:`Recorder`, an httpx transport between the connector and Prism), interpreted with the
vendor's documented semantics: Brevo upserts a contact by email and merges its attributes,
an import merges without erasing, a list removal takes the contact out of the list;
customer.io merges a person's attributes ("" removes one) and keeps one event per event id.
That read-back is this module's reading of the vendor's documentation, not the vendor's, so a
request that Prism accepts but that names a field differently from the definition (Brevo's
bodies are open objects) shows up as a record missing its values.

The same transport provides what Prism cannot: HTTP faults (the definitions declare no 429 or
503 for these operations, so ``Prefer: code=429`` is refused), answered with the vendor's
headers, and "poison": the vendor's own error answer for the record keyed "poison" (Brevo: a 400
``errorModel``; customer.io: a 207 naming the item's ``batch_index``). Brevo's example answer
for ``removeContactFromList`` breaks Brevo's own schema (``success`` items are comma-joined
addresses under ``format: email``), so for that path the transport asks Prism for a generated
answer (``Prefer: dynamic=true``); the request is validated all the same.

Each test gets a fresh recorder; at its end Prism must have logged no violation since the test
began.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx2

from connectors.base import Connector, Scope, Write
from connectors.brevo import BrevoConnector
from connectors.customerio import CustomerIoConnector
from tests.contracts.targets import Rows, TargetBackend
from tests.servers import fixture_for
from tests.servers.prism import Prism

INTEGRATION = "clinic-a"  # one vendor account per integration: the suite's default one
Refusal = Callable[[str, str, Any], httpx2.Response | None]


@dataclass(frozen=True)
class Sent:
    """One request Prism accepted."""

    method: str
    path: str
    body: Any


@dataclass
class Recorder(httpx2.BaseTransport):
    """Forwards each request to Prism and records the ones it accepted; answers faults and
    poison itself (see the module docstring)."""

    prism: Prism
    sent: list[Sent] = field(default_factory=list)
    #: answer every request with this status (and the vendor's headers for it)
    status: int | None = None
    fault_headers: Callable[[int], dict[str, str]] = lambda _status: {}
    #: the vendor's refusal of a poisoned request, or None to forward it
    refuse: Refusal | None = None
    #: requests per path: what the connector sent (accepted or not)
    requests: int = 0
    inner: httpx2.HTTPTransport = field(default_factory=httpx2.HTTPTransport)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """See the class docstring."""
        self.requests += 1
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        if self.status is not None:
            return httpx2.Response(self.status, headers=self.fault_headers(self.status), json={})
        if self.refuse is not None:
            refused = self.refuse(request.method, path, body)
            if refused is not None:
                return refused
        if path.endswith("/contacts/remove"):
            request.headers["Prefer"] = "dynamic=true"
        response = self.inner.handle_request(request)
        content = response.read()
        if response.status_code < 400:
            self.sent.append(Sent(request.method, path, body))
        return httpx2.Response(response.status_code, headers=response.headers, content=content)

    def close(self) -> None:
        """Nothing: every connector built in one test shares the recorder (a closed client
        closes its transport); the backend closes ``inner`` at the end of the test."""

    def forward(self, method: str, path: str, body: Any, headers: Mapping[str, str]) -> int:
        """Send ``body`` to Prism as the connector would (for a partly refused batch)."""
        request = httpx2.Request(method, self.prism.url + path, json=body, headers=headers)
        response = self.inner.handle_request(request)
        response.read()
        if response.status_code < 400:
            self.sent.append(Sent(method, path, body))
        return response.status_code


@contextlib.contextmanager
def faulty(recorder: Recorder, status: int) -> Iterator[None]:
    """Every request answered with ``status`` while the block runs."""
    recorder.status = status
    try:
        yield
    finally:
        recorder.status = None


@contextlib.contextmanager
def refusing(recorder: Recorder, refuse: Refusal) -> Iterator[None]:
    """Poisoned requests answered with the vendor's refusal while the block runs."""
    recorder.refuse = refuse
    try:
        yield
    finally:
        recorder.refuse = None


def assert_valid_since(prism: Prism, mark: int) -> None:
    """Prism logged no contract violation after ``mark``."""
    violations = prism.violations(mark)
    assert violations == [], f"requests that break {prism.spec.name}:\n" + "\n".join(violations)


def brevo_fault_headers(status: int) -> dict[str, str]:
    """The headers Brevo sends with a 429 (https://developers.brevo.com/docs/limit-headers)."""
    if status != 429:
        return {}
    return {
        "x-sib-ratelimit-limit": "10",
        "x-sib-ratelimit-remaining": "0",
        "x-sib-ratelimit-reset": "0",
    }


# -- Brevo -------------------------------------------------------------------------------


def brevo_email(key: str) -> str:
    """The contract suite's contact address for record key ``key``."""
    return f"k{key}@example.com"


def brevo_contacts(sent: list[Sent], patient_attribute: str = "HEALTHIE_ID") -> dict[str, dict]:
    """Contacts by email as Brevo would hold them after ``sent``: attributes and lists."""
    contacts: dict[str, dict[str, Any]] = {}

    def contact(email: str) -> dict[str, Any]:
        return contacts.setdefault(email.lower(), {"attributes": {}, "lists": set()})

    for s in sent:
        body = s.body or {}
        if s.method == "POST" and s.path.endswith("/contacts"):
            c = contact(body["email"])
            c["attributes"].update(body.get("attributes") or {})
            c["lists"] |= set(body.get("listIds") or [])
        elif s.path.endswith("/contacts/import"):
            for item in body.get("jsonBody") or []:
                c = contact(item["email"])
                # emptyContactsAttributes false: empty values leave what the contact holds
                kept = {
                    k: v for k, v in (item.get("attributes") or {}).items() if v not in ("", None)
                }
                c["attributes"].update(kept)
                c["lists"] |= set(body.get("listIds") or [])
        elif s.path.endswith("/contacts/remove"):
            list_id = int(s.path.split("/")[-3])
            for email in body.get("emails") or []:
                contact(email)["lists"].discard(list_id)
    return contacts


def brevo_rows(recorder: Recorder, patient_attribute: str = "HEALTHIE_ID") -> Rows:
    """Every contact as a row: the suite's key from its address, the patient from the patient
    attribute, the other attributes lower-cased."""
    rows = []
    for email, c in brevo_contacts(recorder.sent, patient_attribute).items():
        attributes = dict(c["attributes"])
        patient = attributes.pop(patient_attribute, None)
        key = email.split("@", 1)[0].removeprefix("k")
        row = {k.lower(): v for k, v in attributes.items()}
        rows.append({**row, "integration_id": INTEGRATION, "patient_id": patient, "key": key})
    return rows


def brevo_write(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
    """upsert_contact of the key's address with the values as upper-case attributes."""
    args = connector.validate(
        "upsert_contact",
        {
            "patient_id": scope.patient_id,
            "email": brevo_email(key),
            "attributes": {k.upper(): v for k, v in values.items()},
            "lists_add": [7],
        },
        scope.patient_id,
    )
    return Write(scope, "upsert_contact", args)


def brevo_refusal(method: str, path: str, body: Any) -> httpx2.Response | None:
    """Brevo's 400 for the poisoned contact (its errorModel)."""
    emails = [body.get("email")] if path.endswith("/contacts") else []
    emails += [i.get("email") for i in (body or {}).get("jsonBody") or []]
    if brevo_email("poison") in emails:
        return httpx2.Response(
            400, json={"code": "invalid_parameter", "message": "Invalid email address"}
        )
    return None


BREVO_INVALID: tuple[tuple[str, dict[str, Any]], ...] = tuple(
    ("upsert_contact", {"patient_id": "1", "email": "a@example.com", **args})
    for args in (
        {"patient_id": "2"},  # another patient
        {"email": "mallory@"},  # not an address (and never quoted back)
        {"email": "mallory@example.com\n"},
        {"attributes": {"first_name": "Mallory"}},  # Brevo attribute names are upper case
        {"attributes": {"HEALTHIE_ID": "2"}},  # the patient attribute is the connector's
        {"attributes": {"NOTES": "x" * 70_000}},
        {"attributes": {"AGE": float("nan")}},
        {"lists_add": [3], "lists_remove": [3]},
        {"lists_add": [-1]},
        {"lists_add": ["forty"]},
        {"unknown": "x"},
    )
)


def brevo_backend(request: Any) -> Iterator[TargetBackend]:
    """The Brevo connector on Prism (Brevo's API v3 definition)."""
    prism: Prism = fixture_for(request, "tests.servers.prism", "prism_brevo")
    recorder = Recorder(prism, fault_headers=brevo_fault_headers)

    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        secrets = {"api_key": "test-key"} if credentials is None else dict(credentials)
        built = BrevoConnector.from_config("crm", {"base_url": prism.url, **options}, secrets)
        cast(BrevoConnector, built).client = httpx2.Client(
            transport=recorder, headers={"api-key": secrets["api_key"]}, timeout=30.0
        )
        return built

    mark = prism.mark()
    yield TargetBackend(
        name="brevo",
        build=build,
        read=lambda _connector, _table: brevo_rows(recorder),
        credential_names=("api_key",),
        fault=lambda status: faulty(recorder, status),
        poison=lambda _connector: refusing(recorder, brevo_refusal),
        reports_unchanged=False,
        write=brevo_write,
        tables=False,
        invalid=BREVO_INVALID,
        skips={
            "key_of_another_patient": "contacts are keyed by email, Brevo's identity: a plan "
            "naming another patient's address writes that contact (see connectors/brevo.py)",
            "two_integrations": "one Brevo account (API key) per integration; contacts carry "
            "no integration",
        },
    )
    recorder.inner.close()
    assert_valid_since(prism, mark)


# -- customer.io -------------------------------------------------------------------------


def customerio_people(sent: list[Sent]) -> dict[str, dict[str, Any]]:
    """People by id as customer.io would hold them after ``sent`` ("" removes an attribute)."""
    people: dict[str, dict[str, Any]] = {}
    for item in _items(sent):
        if item.get("action") == "identify":
            person = people.setdefault(item["identifiers"]["id"], {})
            for k, v in (item.get("attributes") or {}).items():
                if v == "":
                    person.pop(k, None)
                else:
                    person[k] = v
    return people


def customerio_events(sent: list[Sent]) -> dict[str, dict[str, Any]]:
    """Events by event id (customer.io keeps one event per id)."""
    events: dict[str, dict[str, Any]] = {}
    for item in _items(sent):
        if item.get("action") == "event":
            events.setdefault(item["id"], {"patient": item["identifiers"]["id"], **item})
    return events


def _items(sent: list[Sent]) -> Iterator[dict[str, Any]]:
    for s in sent:
        if s.path == "/api/v2/entity":
            yield s.body
        elif s.path == "/api/v2/batch":
            yield from s.body["batch"]


def identify_write(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
    """identify of the scope's patient with the values as attributes (the key is unused)."""
    args = connector.validate(
        "identify", {"patient_id": scope.patient_id, "attributes": values}, scope.patient_id
    )
    return Write(scope, "identify", args)


def event_write(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
    """track_event "record_synced" about the Healthie object ``key``, the values as data (with
    the key, as a plan would carry the appointment or tag id)."""
    args = connector.validate(
        "track_event",
        {
            "patient_id": scope.patient_id,
            "key": key,
            "name": "record_synced",
            "data": {**values, "key": key},
        },
        scope.patient_id,
    )
    return Write(scope, "track_event", args)


def people_rows(recorder: Recorder) -> Rows:
    """Every person as a row keyed by its id."""
    return [
        {**attributes, "integration_id": INTEGRATION, "patient_id": pid, "key": pid}
        for pid, attributes in customerio_people(recorder.sent).items()
    ]


def event_rows(recorder: Recorder) -> Rows:
    """Every event as a row: its patient, the key it carries, its data."""
    rows = []
    for event in customerio_events(recorder.sent).values():
        data = dict(event.get("attributes") or {})
        key = data.pop("key", None)
        rows.append(
            {**data, "integration_id": INTEGRATION, "patient_id": event["patient"], "key": key}
        )
    return rows


def customerio_refusal(recorder: Recorder) -> Refusal:
    """customer.io's answers for a poisoned item: a 400 for /v2/entity, a 207 naming the
    item's batch_index for /v2/batch (the other items forwarded to Prism, so validated)."""

    def poisoned(item: dict[str, Any]) -> bool:
        return (item.get("attributes") or {}).get("key") == "poison"

    def refuse(method: str, path: str, body: Any) -> httpx2.Response | None:
        if path == "/api/v2/entity" and poisoned(body):
            return httpx2.Response(400, json={"errors": [{"reason": "invalid"}]})
        if path != "/api/v2/batch":
            return None
        bad = [i for i, item in enumerate(body["batch"]) if poisoned(item)]
        if not bad:
            return None
        rest = [item for i, item in enumerate(body["batch"]) if i not in bad]
        auth = {"authorization": "Basic " + _basic("site", "test-key")}
        status = recorder.forward("POST", path, {"batch": rest}, auth)
        errors = [{"batch_index": i, "reason": "invalid", "field": "attributes"} for i in bad]
        return httpx2.Response(207 if status < 400 else status, json={"errors": errors})

    return refuse


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


CUSTOMERIO_INVALID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("identify", {"patient_id": "2", "attributes": {}}),  # another patient
    ("identify", {"patient_id": "1", "attributes": {"id": "2"}}),  # re-identification
    ("identify", {"patient_id": "1", "attributes": {"cio_id": "x"}}),
    ("identify", {"patient_id": "1", "attributes": {"_update": True}}),
    ("identify", {"patient_id": "1", "attributes": {"note": "Mallory" * 200}}),  # > 1,000 B
    ("identify", {"patient_id": "1", "attributes": {"n": float("inf")}}),
    ("identify", {"patient_id": "1", "attributes": {"x" * 151: 1}}),
    ("identify", {"patient_id": "1", "attrs": {}}),
    ("track_event", {"patient_id": "1", "key": "a", "name": "booked", "data": {"x": "y" * 40_000}}),
    ("track_event", {"patient_id": "1", "key": "", "name": "booked"}),
    ("track_event", {"patient_id": "1", "key": "a", "name": "Mallory\nforty"}),
    ("track_event", {"patient_id": "1", "key": "a", "name": "x" * 101}),
)


def _customerio_backend(
    request: Any, name: str, primary: str, batch_from: int
) -> Iterator[TargetBackend]:
    prism: Prism = fixture_for(request, "tests.servers.prism", "prism_customerio")
    recorder = Recorder(prism)

    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        secrets = (
            {"site_id": "site", "api_key": "test-key"} if credentials is None else dict(credentials)
        )
        built = CustomerIoConnector.from_config(
            "crm", {"base_url": prism.url, "batch_from": batch_from, **options}, secrets
        )
        cast(CustomerIoConnector, built).client = httpx2.Client(
            transport=recorder, auth=(secrets["site_id"], secrets["api_key"]), timeout=30.0
        )
        return built

    events = primary == "track_event"
    mark = prism.mark()
    skips = {
        "two_integrations": "one customer.io workspace (site id) per integration; people and "
        "events carry no integration",
    }
    if not events:
        skips["key_of_another_patient"] = (
            "people are identified by the scope's patient id itself; identify has no key"
        )
        skips["row_refused"] = (
            "identify has no key to refuse by; per-write refusals are run on "
            "customerio-events and in tests/connectors/test_customerio.py"
        )
    yield TargetBackend(
        name=name,
        build=build,
        read=lambda _c, _t: event_rows(recorder) if events else people_rows(recorder),
        credential_names=("site_id", "api_key"),
        fault=lambda status: faulty(recorder, status),
        poison=(lambda _c: refusing(recorder, customerio_refusal(recorder))) if events else None,
        reports_unchanged=False,
        write=event_write if events else identify_write,
        tables=False,
        invalid=CUSTOMERIO_INVALID,
        max_text_bytes=None if events else 1_000,
        skips=skips,
    )
    recorder.inner.close()
    assert_valid_since(prism, mark)


def customerio_backend(request: Any) -> Iterator[TargetBackend]:
    """customer.io identify on Prism, one /v2/entity request per write."""
    yield from _customerio_backend(request, "customerio", "identify", batch_from=10)


def customerio_events_backend(request: Any) -> Iterator[TargetBackend]:
    """customer.io events on Prism, chunks of 2 or more as /v2/batch requests."""
    yield from _customerio_backend(request, "customerio-events", "track_event", batch_from=2)


CRM_BACKENDS = {
    "brevo": brevo_backend,
    "customerio": customerio_backend,
    "customerio-events": customerio_events_backend,
}
