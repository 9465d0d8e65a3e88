"""The Healthie target against the sandbox over HTTP: each operation writes what it says (read
back through the sandbox's GraphQL endpoint or its organization), Healthie's ``messages``
become TargetRejected without the value, the patient boundary holds for appointments and tags,
nothing can reach clinical documentation, and every request counts in the API key's bucket
shared with the reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
from graphql import FieldNode, GraphQLSchema, OperationDefinitionNode, parse

from app.core.errors import (
    ConfigurationError,
    InvalidResponse,
    PatientNotFound,
    PlanValidationError,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from app.healthie import operations
from app.healthie.client import HealthieClient
from app.healthie.selection import forbidden_selections, reached_types
from app.resilience.guard import Guard, Guards, credential_id
from app.resilience.ratelimit import TokenBucket
from app.service.serving import serve_in_thread
from connectors.base import Scope, Write, WriteResult
from connectors.healthie import HealthieConnector
from connectors.healthie_api import check_declarations, document_problems, is_clinical, run
from connectors.healthie_args import TagArgs, UpdateClientArgs
from sandbox.core import Sandbox
from sandbox.faults import FaultConfig
from sandbox.server import create_app

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


@dataclass
class Served:
    sb: Sandbox
    url: str
    built: list[Any] = field(default_factory=list)

    def read(self, query: str, **variables: Any) -> dict[str, Any]:
        """A read through the sandbox's GraphQL endpoint, as Healthie would answer it."""
        response = httpx2.post(
            self.url,
            json={"query": query, "variables": variables},
            headers={
                "Authorization": f"Basic {self.sb.api_key}",
                "AuthorizationSource": "API",
                "Healthie-GraphQL-API-Version": "2026-01-01",
            },
        )
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    def user(self, pid: str) -> dict[str, Any]:
        return self.read(
            "query($id: ID) { user(id: $id) { id first_name dob metadata "
            "active_tags { id name } } }",
            id=pid,
        )["user"]

    def connector(self, **options: Any) -> HealthieConnector:
        built = HealthieConnector.from_config(
            "healthie",
            {"use_integration_key": False, "api_url": self.url, **options},
            {"api_key": self.sb.api_key},
        )
        assert isinstance(built, HealthieConnector)
        self.built.append(built)
        return built

    def sent(self, name: str) -> int:
        return self.sb.counters[name]


@pytest.fixture
def served() -> Iterator[Served]:
    sb = Sandbox(patients=6, seed=3)
    with serve_in_thread(create_app(sb)) as url:
        served = Served(sb, f"{url}/graphql")
        yield served
        for built in served.built:
            built.close()
    sb.close()


P1, P2 = "1000001", "1000002"


def write(connector: HealthieConnector, operation: str, patient: str, **args: Any) -> Write:
    """A write validated as the pipeline validates one, for ``patient``'s entry."""
    parsed = connector.validate(operation, {"patient_id": patient, **args}, patient)
    return Write(Scope("clinic-a", patient, "run-1", AT), operation, parsed, "healthie")


def one(connector: HealthieConnector, operation: str, patient: str, **args: Any) -> WriteResult:
    (result,) = connector.execute_batch([write(connector, operation, patient, **args)])
    return result


# -- each operation writes what it says -------------------------------------------------------
def test_update_client_writes_the_given_fields_only(served: Served) -> None:
    before = served.user(P1)
    c = served.connector()
    result = one(c, "update_client", P1, first_name="Zoë", dob="1990-02-28")
    assert result.error is None
    after = served.user(P1)
    assert (after["first_name"], after["dob"]) == ("Zoë", "1990-02-28")
    assert after["metadata"] == before["metadata"]  # untouched
    assert served.sent("WriteUpdateClient") == 1


def test_metadata_keys_are_merged_and_no_other_key_is_dropped(served: Served) -> None:
    before = json.loads(served.user(P1)["metadata"])
    assert len(before) >= 2, "the generated patient has metadata keys to keep"
    dropped = sorted(before)[0]
    c = served.connector()
    result = one(c, "update_metadata", P1, set={"hubspot_id": "42", "score": 3}, remove=[dropped])
    assert result.error is None
    assert result.changed
    after = json.loads(served.user(P1)["metadata"])
    expected = {k: v for k, v in before.items() if k != dropped} | {"hubspot_id": "42", "score": 3}
    assert after == expected
    # The same write again reads, finds nothing to change, and sends no mutation.
    again = one(c, "update_metadata", P1, set={"hubspot_id": "42"})
    assert (again.error, again.changed) == (None, False)
    assert served.sent("WriteUpdateClient") == 1


def test_metadata_that_is_not_an_object_is_left_alone(served: Served) -> None:
    patient = served.sb.org.patient(P1)
    assert patient is not None
    patient.metadata = '["a list"]'
    result = one(served.connector(), "update_metadata", P1, set={"k": "v"})
    assert isinstance(result.error, TargetRejected)
    assert served.user(P1)["metadata"] == '["a list"]'
    assert served.sent("WriteUpdateClient") == 0


def test_apply_tag_creates_a_missing_tag_once_then_applies_the_existing_one(
    served: Served,
) -> None:
    c = served.connector()
    tags_before = len(served.sb.org.tags)
    assert one(c, "apply_tag", P1, name="HubSpot lead").error is None
    assert one(c, "apply_tag", P2, name="hubspot LEAD").error is None  # same tag, any case
    assert len(served.sb.org.tags) == tags_before + 1
    names = {t["name"] for t in served.user(P1)["active_tags"]}
    assert "HubSpot lead" in names
    assert "HubSpot lead" in {t["name"] for t in served.user(P2)["active_tags"]}
    assert (served.sent("WriteCreateTag"), served.sent("WriteApplyTags")) == (1, 1)
    again = one(c, "apply_tag", P1, name="HubSpot lead")
    assert (again.error, again.changed) == (None, False)
    assert served.sent("WriteApplyTags") == 1


def test_apply_tag_by_id_and_the_refusals(served: Served) -> None:
    c = served.connector()
    org_tag = next(t for t in served.sb.org.tags.values() if t.id not in _applied(served, P1))
    assert one(c, "apply_tag", P1, tag_id=org_tag.id).error is None
    assert org_tag.id in _applied(served, P1)
    unknown = one(c, "apply_tag", P1, tag_id="999999")
    assert isinstance(unknown.error, TargetRejected)
    strict = served.connector(create_missing_tags=False)
    refused = one(strict, "apply_tag", P1, name="Never created")
    assert isinstance(refused.error, TargetRejected)
    assert "Never created" not in str(refused.error)
    assert served.sent("WriteCreateTag") == 0


def test_remove_tag_removes_only_that_tag_from_only_that_patient(served: Served) -> None:
    c = served.connector()
    for name in ("A-tag", "B-tag"):
        assert one(c, "apply_tag", P1, name=name).error is None
    assert one(c, "apply_tag", P2, name="A-tag").error is None
    assert one(c, "remove_tag", P1, name="A-tag").error is None
    assert {t["name"] for t in served.user(P1)["active_tags"]} >= {"B-tag"}
    assert "A-tag" not in {t["name"] for t in served.user(P1)["active_tags"]}
    assert "A-tag" in {t["name"] for t in served.user(P2)["active_tags"]}
    absent = one(c, "remove_tag", P1, name="A-tag")
    assert (absent.error, absent.changed) == (None, False)
    assert served.sent("WriteRemoveTag") == 1


def test_create_task_is_about_the_entrys_patient(served: Served) -> None:
    c = served.connector()
    result = one(c, "create_task", P1, key="t1", content="Call back", due_date="2026-12-05")
    assert result.error is None
    assert result.key == "t1"
    (task,) = served.sb.org.tasks.values()
    assert (task.client_id, task.content, task.due_date) == (P1, "Call back", "2026-12-05")


def test_update_appointment_sets_the_safe_fields(served: Served) -> None:
    appt = _own_appointment(served, P1)
    c = served.connector()
    result = one(
        c, "update_appointment", P1, appointment_id=appt, pm_status="No-Show", location="Room 2"
    )
    assert result.error is None
    assert result.key == appt
    got = served.read("query($id: ID) { appointment(id: $id) { pm_status location } }", id=appt)[
        "appointment"
    ]
    assert got == {"pm_status": "No-Show", "location": "Room 2"}


# -- the patient boundary -----------------------------------------------------------------
def test_another_patients_appointment_is_refused_without_writing(served: Served) -> None:
    theirs = _own_appointment(served, P2)
    before = served.read("query($id: ID) { appointment(id: $id) { pm_status } }", id=theirs)
    c = served.connector()
    result = one(c, "update_appointment", P1, appointment_id=theirs, pm_status="Cancelled")
    assert isinstance(result.error, PlanValidationError)
    assert served.sent("WriteUpdateAppointment") == 0
    assert served.read("query($id: ID) { appointment(id: $id) { pm_status } }", id=theirs) == before


def test_a_group_appointment_with_other_patients_is_refused(served: Served) -> None:
    mine = _own_appointment(served, P1)
    served.sb.org.appointments[mine].attendee_ids.append(P2)
    result = one(
        served.connector(), "update_appointment", P1, appointment_id=mine, pm_status="Occurred"
    )
    assert isinstance(result.error, PlanValidationError)
    assert served.sent("WriteUpdateAppointment") == 0


def test_a_plan_naming_another_patient_is_refused_before_any_io(served: Served) -> None:
    c = served.connector()
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("update_client", {"first_name": "Mallory"}),
        ("update_metadata", {"set": {"k": 1}}),
        ("apply_tag", {"name": "x"}),
        ("create_task", {"key": "k", "content": "x"}),
        ("update_appointment", {"appointment_id": "1", "pm_status": "Occurred"}),
    ]
    for operation, args in attempts:
        with pytest.raises(PlanValidationError, match="another patient"):
            c.validate(operation, {"patient_id": P2, **args}, P1)
    assert sum(served.sb.counters.values()) == 0


def test_tags_are_written_for_the_scope_patient(served: Served) -> None:
    """The patient sent is the scope's: the validated arguments' patient must equal it, and
    tags reach only that patient (P2's tags stay as they were)."""
    before = _applied(served, P2)
    c = served.connector()
    assert one(c, "apply_tag", P1, name="Scoped").error is None  # created and applied
    existing = next(t for t in served.sb.org.tags.values() if t.id not in before)
    assert one(c, "apply_tag", P1, tag_id=existing.id).error is None  # applied
    assert existing.id in _applied(served, P1)
    assert _applied(served, P2) == before


# -- Healthie's answers become kinds --------------------------------------------------------
def test_messages_are_target_rejected_naming_fields_never_values(served: Served) -> None:
    c = served.connector()
    result = one(c, "update_client", P1, email="mallory@example.com", phone_number="1234567")
    assert isinstance(result.error, TargetRejected)
    assert "phone_number" in str(result.error)
    assert "1234567" not in str(result.error)
    assert "mallory" not in str(result.error)
    missing = one(c, "update_client", "1999999", first_name="Ann")
    assert isinstance(missing.error, TargetRejected)


def test_a_patient_healthie_does_not_have_is_patient_not_found(served: Served) -> None:
    result = one(served.connector(), "update_metadata", "1999999", set={"k": "v"})
    assert isinstance(result.error, PatientNotFound)


def test_refusals_before_io_never_quote_the_value(served: Served) -> None:
    c = served.connector()
    cases: list[tuple[str, dict[str, Any]]] = [
        ("update_client", {}),  # nothing to update
        ("update_client", {"first_name": "Mallory\nforty"}),
        ("update_client", {"email": "mallory@"}),
        ("update_client", {"quick_notes": "Mallory"}),  # not offered: never clinical
        ("update_metadata", {"set": {"k": float("nan")}}),
        ("update_metadata", {"set": {"k": "x" * 130_000}}),
        ("update_metadata", {"set": {"k": 1}, "remove": ["k"]}),
        ("apply_tag", {"name": "a", "tag_id": "1"}),
        ("apply_tag", {}),
        ("create_task", {"key": "k", "content": ""}),
        ("update_appointment", {"appointment_id": "1", "pm_status": "Mallory"}),
        ("update_appointment", {"appointment_id": "1", "notes": "Mallory"}),
        ("update_appointment", {"appointment_id": "1"}),
    ]
    for n, (operation, args) in enumerate(cases):
        with pytest.raises(PlanValidationError) as refused:
            c.validate(operation, {"patient_id": P1, **args}, P1)
        assert "mallory" not in str(refused.value).lower(), n
    assert sum(served.sb.counters.values()) == 0


def test_graphql_errors_never_quote_the_value() -> None:
    def handler(_: httpx2.Request) -> httpx2.Response:
        message = "Variable '$input' got invalid value 'mallory@example.com'"
        return httpx2.Response(200, json={"errors": [{"message": message}]})

    client = HealthieClient(
        url="http://healthie.test/graphql",
        api_key="k",
        http_transport=httpx2.MockTransport(handler),
    )
    with pytest.raises(InvalidResponse) as refused:
        run(client, "write_update_client", {"input": {"id": P1}}, P1)
    assert "mallory" not in str(refused.value)
    assert refused.value.__cause__ is None
    assert refused.value.__suppress_context__
    client.close()


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (FaultConfig(http_5xx_probability=1.0), UpstreamUnavailable),
        (FaultConfig(rate_limit_per_second=0.001), RateLimited),
    ],
)
def test_transport_failures_are_the_clients_kinds(served: Served, fault, kind) -> None:
    c = served.connector()
    c.client.retry = type(c.client.retry)(max_attempts=1)
    if kind is RateLimited:
        served.sb.faults.configure(fault)
        served.read("{ currentUser { id } }")  # the sandbox's one request of the window
    else:
        served.sb.faults.configure(fault)
    result = one(c, "update_client", P1, first_name="Ann")
    assert isinstance(result.error, kind)


def test_a_wrong_key_is_a_configuration_error(served: Served) -> None:
    c = HealthieConnector.from_config(
        "healthie", {"use_integration_key": False, "api_url": served.url}, {"api_key": "wrong"}
    )
    assert isinstance(c, HealthieConnector)
    served.built.append(c)
    assert isinstance(one(c, "update_client", P1, first_name="Ann").error, ConfigurationError)


# -- never clinical documentation ---------------------------------------------------------------
def test_no_document_reaches_notes_forms_or_charting(healthie_schema: GraphQLSchema) -> None:
    for name in HealthieConnector.documents:
        text = operations.load(name)
        assert reached_types(healthie_schema, text), name  # the walk visited the selection
        assert forbidden_selections(healthie_schema, text) == [], name
        assert document_problems(name) == [], name


def test_every_input_field_sent_is_a_declared_non_clinical_one(served: Served) -> None:
    """Every operation run with every argument set: the input keys that reach Healthie are
    exactly the declared ones, and none names clinical documentation."""
    sent: list[dict[str, Any]] = []
    real = httpx2.HTTPTransport()

    class Recording(httpx2.BaseTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            sent.append(json.loads(request.content))
            return real.handle_request(request)

    c = HealthieConnector.from_config(
        "healthie",
        {"use_integration_key": False, "api_url": served.url},
        {"api_key": served.sb.api_key},
    )
    assert isinstance(c, HealthieConnector)
    c.client.close()
    c.client = HealthieClient(url=served.url, api_key=served.sb.api_key, http_transport=Recording())
    served.built.append(c)
    every = {f: "x" for f in UpdateClientArgs.model_fields if f != "patient_id"}
    every |= {
        "first_name": "Ann",
        "email": "ann@example.com",
        "phone_number": "+1 555 010 0000",
        "dob": "1990-01-01",
        "user_group_id": next(iter(served.sb.org.user_groups)),
        "dietitian_id": next(iter(served.sb.org.providers)),
    }
    writes: list[tuple[str, dict[str, Any]]] = [
        ("update_client", every),
        ("update_metadata", {"set": {"k": 1}}),
        ("apply_tag", {"name": "New one"}),
        ("apply_tag", {"tag_id": next(iter(served.sb.org.tags))}),
        ("remove_tag", {"name": "New one"}),
        ("create_task", {"key": "k", "content": "x", "due_date": "2026-12-01", "priority": 1}),
        (
            "update_appointment",
            {
                "appointment_id": _own_appointment(served, P1),
                "pm_status": "Occurred",
                "contact_type": "In Person",
                "location": "Room 1",
            },
        ),
    ]
    for operation, args in writes:
        one(c, operation, P1, **args)
    keys: dict[str, set[str]] = {}
    for body in sent:
        name = str(getattr(_operation(body["query"]).name, "value", ""))
        for value in (body.get("variables") or {}).values():
            if isinstance(value, dict):
                keys.setdefault(name, set()).update(value)
    assert keys == {
        "WriteUpdateClient": {"id", "metadata", *every},
        "WriteCreateTag": {"name", "taggable_user_id"},
        "WriteApplyTags": {"ids", "taggable_user_id"},
        "WriteRemoveTag": {"id", "taggable_user_id"},
        "WriteCreateTask": {"client_id", "content", "due_date", "priority"},
        "WriteUpdateAppointment": {"id", "pm_status", "contact_type", "location"},
    }
    assert not [k for ks in keys.values() for k in ks if is_clinical(k)]
    roots = {
        r.name.value
        for b in sent
        for r in _operation(b["query"]).selection_set.selections
        if isinstance(r, FieldNode)
    }
    assert not [r for r in roots if is_clinical(r)]
    real.close()


def test_a_declaration_reaching_clinical_documentation_fails_at_definition() -> None:
    class Notes(TagArgs):
        quick_notes: str | None = None

    with pytest.raises(TypeError, match="clinical"):
        check_declarations("Bad", (), [Notes])
    with pytest.raises(TypeError, match="write_"):

        class ReadsEntries(HealthieConnector):
            kind = "healthie-entries"
            documents = ("entry",)

    bad = "mutation WriteNote { createFormAnswerGroup(input: {}) { form_answer_group { id } } }"
    assert document_problems("write_note", bad)  # root field and selection both refused
    chart = 'query WriteChart { user(id: "1") { id charting_notes { id } } }'
    assert document_problems("write_chart", chart) == ["write_chart: selects charting_notes"]


# -- the client and its rate limit ------------------------------------------------------------
class CountingBucket(TokenBucket):
    """A token bucket that counts its acquisitions (one per request sent with its key)."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate)
        self.acquired = 0

    def acquire(self) -> None:
        self.acquired += 1
        super().acquire()


def test_the_connectors_requests_count_in_the_keys_bucket_shared_with_reads(
    served: Served,
) -> None:
    guards = Guards()
    shared = guards.for_credential(credential_id(served.sb.api_key), rate=250, name="Healthie")
    shared.bucket = CountingBucket(250)
    reads = HealthieClient(url=served.url, api_key=served.sb.api_key, guard=shared)
    reads.fetch_entries([P1])
    c = HealthieConnector.for_runtime(
        "healthie",
        {"use_integration_key": False, "api_url": served.url},
        {"api_key": served.sb.api_key},
        integration_client=lambda: pytest.fail("the integration's client is not used"),
        guards=guards,
    )
    assert one(c, "apply_tag", P1, name="Counted").error is None
    assert one(c, "update_metadata", P1, set={"k": "v"}).error is None
    assert c.client.guard is shared
    # Every HTTP request, reads and writes, took exactly one token of the key's bucket.
    assert shared.bucket.acquired == sum(served.sb.counters.values()) == reads.requests_sent + 5
    reads.close()
    c.close()


def test_use_integration_key_writes_with_the_integrations_own_client(served: Served) -> None:
    integration = HealthieClient(url=served.url, api_key=served.sb.api_key, guard=Guard())
    c = HealthieConnector.for_runtime(
        "healthie", {}, {}, integration_client=lambda: integration, guards=Guards()
    )
    assert c.client is integration
    assert one(c, "update_client", P1, first_name="Own").error is None
    assert integration.requests_sent == 1
    c.close()  # the integration's client stays open
    assert one(c, "update_client", P1, first_name="Again").error is None
    integration.close()


def test_configuration_is_refused_clearly() -> None:
    with pytest.raises(ConfigurationError, match="use_integration_key"):
        HealthieConnector.from_config("healthie", {}, {})  # no client handed over
    with pytest.raises(ConfigurationError, match="api_url"):
        HealthieConnector.parse_options("healthie", {"use_integration_key": False})
    with pytest.raises(ConfigurationError, match="api_key"):
        HealthieConnector.from_config(
            "healthie", {"use_integration_key": False, "api_url": "http://h.test/graphql"}, {}
        )
    with pytest.raises(ConfigurationError, match="staging"):
        HealthieConnector.for_runtime(
            "healthie",
            {},
            {},
            integration_client=lambda: pytest.fail("not used"),
            guards=Guards(),
            staging=True,
        )
    with pytest.raises(ConfigurationError, match="staging"):
        HealthieConnector.for_runtime(
            "healthie",
            None,
            {},
            integration_client=lambda: pytest.fail("not used"),
            guards=Guards(),
        )


# -- helpers ------------------------------------------------------------------------------------
def _operation(query: str) -> OperationDefinitionNode:
    (definition,) = parse(query).definitions
    assert isinstance(definition, OperationDefinitionNode)
    assert definition.name is not None
    return definition


def _applied(served: Served, pid: str) -> set[str]:
    return {t["id"] for t in served.user(pid)["active_tags"]}


def _own_appointment(served: Served, pid: str) -> str:
    org = served.sb.org
    for appt in org.appointments.values():
        if appt.deleted_at is None and appt.user_id == pid and appt.attendee_ids == [pid]:
            return appt.id
    patient = org.patient(pid)
    assert patient is not None
    change = served.sb.create_appointment(pid, date="2026-12-03T10:00:00-05:00")
    return change.subject_id


def test_the_runtime_builds_the_target_on_the_integrations_own_client(tmp_path):
    """Built by the runtime (not by hand), a Healthie target with use_integration_key writes
    through the integration's own client: one key, one guard, reads and writes together."""
    from app.core.config import TargetConfig
    from tests.helpers import demo_runtime

    rt = demo_runtime(tmp_path, target="sqlite")
    integration = rt.integrations["demo-clinic"]
    healthie_target = TargetConfig(
        name="healthie", connector="healthie", options={"use_integration_key": True}
    )
    rt.integrations["demo-clinic"] = integration.model_copy(
        update={"targets": [*integration.targets, healthie_target]}
    )
    try:
        built = rt.connectors("demo-clinic")["healthie"]
        assert isinstance(built, HealthieConnector)
        assert built.client is rt.healthie("demo-clinic")
    finally:
        rt.close()
