"""Start-up check of every operation against the live schema (introspection, pinned version)."""

from __future__ import annotations

import copy
import json

import httpx2
import pytest
from graphql import introspection_from_schema

from app.core.errors import ConfigurationError
from app.healthie.client import HealthieClient
from app.healthie.schema_check import (
    check_operations_against_live_schema,
    operation_documents,
    problems_against,
)
from app.healthie.selection import schema_from_file
from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.executable import SCHEMA_PATH
from sandbox.server import create_app
from tests.healthie.test_client import make


@pytest.fixture(scope="module")
def published_introspection(healthie_schema):
    return introspection_from_schema(healthie_schema)


def serving(introspection, seen):
    def handler(request):
        seen.append(request)
        assert "__schema" in json.loads(request.content)["query"]
        return httpx2.Response(200, json={"data": introspection})

    return handler


def test_every_operation_validates_against_the_live_published_schema(published_introspection):
    seen: list[httpx2.Request] = []
    schema = check_operations_against_live_schema(make(serving(published_introspection, seen)))
    assert "User" in schema.type_map
    assert seen[0].headers["healthie-graphql-api-version"] == "2026-07-01"


def test_a_removed_field_names_the_operations_that_use_it(published_introspection):
    changed = copy.deepcopy(published_introspection)
    for named in changed["__schema"]["types"]:
        if named["name"] == "User":
            named["fields"] = [f for f in named["fields"] if f["name"] != "updated_at"]
    with pytest.raises(ConfigurationError) as caught:
        check_operations_against_live_schema(make(serving(changed, [])))
    message = str(caught.value)
    assert "entry:" in message
    assert "sweep_users:" in message
    assert "Cannot query field 'updated_at' on type 'User'" in message
    assert "webhooks:" not in message


@pytest.mark.e2e
def test_against_the_sandbox_server_over_http():
    sandbox = Sandbox(patients=50)
    with serve_in_thread(create_app(sandbox)) as url:
        client = HealthieClient(url=f"{url}/graphql", api_key=sandbox.api_key, max_attempts=2)
        try:
            # the sandbox serves a subset; whatever it lacks must be exactly what is reported
            expected = problems_against(schema_from_file(SCHEMA_PATH), operation_documents(client))
            if not expected:
                check_operations_against_live_schema(client)
            else:
                with pytest.raises(ConfigurationError) as caught:
                    check_operations_against_live_schema(client)
                for name in expected:
                    assert f"{name}:" in str(caught.value)
            assert not {"entry", "appointment_patients_batch"} & set(expected)
        finally:
            client.close()
            sandbox.close()
