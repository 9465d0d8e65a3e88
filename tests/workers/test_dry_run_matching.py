"""The dry-run report shows what record matching would refuse: a patient whose phone two
existing HubSpot contacts share is reported as ``ambiguous_match`` (never guessed), over HTTP
against the HubSpot router in front of Prism and the sandbox; nothing is written."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.server import create_app
from tests.servers.hubspot import assert_valid_since, marks
from tests.servers.prism import (  # noqa: F401 - fixtures
    Prism,
    prism_hubspot_contacts,
    prism_hubspot_properties,
)
from tests.workers.test_reverse_fixtures import ReadingRouter, example_integration, example_runtime
from workers.dry_run import dry_run


@pytest.fixture
def router(
    prism_hubspot_contacts: Prism,  # noqa: F811
    prism_hubspot_properties: Prism,  # noqa: F811
) -> Iterator[ReadingRouter]:
    hub = ReadingRouter(prism_hubspot_contacts, prism_hubspot_properties)
    with serve_in_thread(hub.app()) as url:
        hub.url = url
        before = marks(hub)
        yield hub
        assert_valid_since(hub, before)
    hub._client.close()


def test_the_dry_run_reports_an_ambiguous_match_and_writes_nothing(tmp_path, router):
    sb = Sandbox(patients=4, seed=3)
    ids = list(sb.org.patient_ids())[2:4]  # two the example plan writes, with valid phones
    twin = sb.org.patient(ids[0])
    assert twin is not None
    assert twin.phone_number
    from connectors.matching import normalize_phone

    e164 = normalize_phone(twin.phone_number, "US")
    assert e164
    router.add_contact(phone=e164, firstname="One")
    router.add_contact(phone=e164, firstname="Two")
    with serve_in_thread(create_app(sb)) as healthie:
        integration = example_integration(
            healthie_url=f"{healthie}/graphql", hubspot_url=router.url
        )
        runtime = example_runtime(tmp_path, integration, api_key=sb.api_key)
        try:
            items = dry_run(runtime, integration.id, ids)
        finally:
            runtime.close()
    sb.close()
    by_patient = {item.entry.patient_id: item for item in items}
    refused = by_patient[ids[0]].error or ""
    assert "ambiguous_match on phone (2 records)" in refused
    assert by_patient[ids[1]].error is None  # the other patient would be written
    assert e164 not in refused
    assert twin.phone_number not in refused
    writes = [s for s in router.sent if s.path.endswith(("/batch/upsert", "/batch/update"))]
    assert writes == []  # a dry run only searched
