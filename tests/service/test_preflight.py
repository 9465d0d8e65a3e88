"""serve's start-up checks: validate's offline checks hold (secrets resolve, plan paths exist),
every operation validates against each integration's live schema, and the plan's paths typed
against it read what they mean (refusing to start when any does not)."""

from __future__ import annotations

import copy
import json
from typing import cast

import httpx2
import pytest
from graphql import introspection_from_schema

from app.core.errors import ConfigurationError
from app.healthie.selection import schema_from_file
from app.secrets.stores import MemorySecretStore
from app.service.preflight import preflight
from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.executable import SCHEMA_PATH
from sandbox.server import create_app as sandbox_app
from tests.helpers import REPO, demo_runtime
from tests.servers import silent

DEMO_PLAN = REPO / "prompts" / "plans" / "demo-clinic.plan.json"

silent_healthie = silent.silent_healthie  # the fixture, for the tests below


def introspection_without(field: str) -> dict:
    live = cast(dict, copy.deepcopy(introspection_from_schema(schema_from_file(SCHEMA_PATH))))
    for named in live["__schema"]["types"]:
        if named["name"] == "User":
            named["fields"] = [f for f in named["fields"] if f["name"] != field]
    return live


def test_passes_against_the_sandbox(tmp_path):
    sb = Sandbox(patients=20, seed=2)
    with serve_in_thread(sandbox_app(sb)) as url:
        rt = demo_runtime(tmp_path, api_url=f"{url}/graphql", api_key=sb.api_key)
        assert preflight(rt) == []
        rt.close()


def test_refuses_to_start_when_an_operation_no_longer_validates(tmp_path):
    live = introspection_without("updated_at")

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert "__schema" in json.loads(request.content)["query"]
        return httpx2.Response(200, json={"data": live})

    rt = demo_runtime(tmp_path, http_transport=httpx2.MockTransport(handler))
    with pytest.raises(ConfigurationError, match="demo-clinic: .*updated_at"):
        preflight(rt)
    assert preflight(rt, check_schema=False) == []
    rt.close()


def recording_runtime(tmp_path, calls: list, live: dict | None = None):
    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        if live is None:
            return httpx2.Response(500)
        return httpx2.Response(200, json={"data": live})

    return demo_runtime(tmp_path, http_transport=httpx2.MockTransport(handler))


def with_plan(rt, tmp_path, edit) -> None:
    """Point the runtime's demo integration at an edited copy of its plan."""
    plan = tmp_path / "edited.plan.json"
    plan.write_text(edit(DEMO_PLAN.read_text(encoding="utf-8")), encoding="utf-8")
    integration = rt.integrations["demo-clinic"]
    agent = integration.agent.model_copy(update={"plan": plan})
    rt.integrations["demo-clinic"] = integration.model_copy(update={"agent": agent})


def test_missing_secrets_refuse_start_up_before_calling_healthie(tmp_path):
    calls: list[httpx2.Request] = []
    rt = recording_runtime(tmp_path, calls)
    rt.secrets = MemorySecretStore({})
    with pytest.raises(ConfigurationError) as refused:
        preflight(rt)
    lines = str(refused.value).splitlines()
    assert lines[0].startswith("serve refused to start: 2 configuration error(s)")
    assert all(line.startswith("  demo-clinic: secret ") for line in lines[1:])
    assert len(lines) == 3
    assert calls == []
    rt.close()


def test_a_misspelt_plan_field_refuses_start_up_offline(tmp_path):
    calls: list[httpx2.Request] = []
    rt = recording_runtime(tmp_path, calls)
    with_plan(rt, tmp_path, lambda s: s.replace("entry.user_group.name", "entry.user_grop.name"))
    with pytest.raises(ConfigurationError, match=r"(?m)^  demo-clinic: step 1 .*entry\.user_grop"):
        preflight(rt, check_schema=False)
    assert calls == []
    rt.close()


def test_a_path_the_live_schema_types_as_null_refuses_start_up(tmp_path):
    live = introspection_from_schema(schema_from_file(SCHEMA_PATH))
    calls: list[httpx2.Request] = []
    rt = recording_runtime(tmp_path, calls, cast(dict, live))
    with_plan(
        rt,
        tmp_path,
        lambda s: s.replace("entry.policies[0].insurance_plan", "entry.policies.insurance_plan"),
    )
    assert preflight(rt, check_schema=False) == []  # the selection alone cannot tell a list
    with pytest.raises(ConfigurationError, match="list of Policy"):
        preflight(rt)
    assert len(calls) == 1  # one introspection
    rt.close()


def test_a_silent_healthie_is_a_warning_within_seconds_not_a_hung_start(tmp_path, silent_healthie):
    import time

    rt = demo_runtime(tmp_path, api_url=silent_healthie, interactive_timeout_seconds=1.0)
    started = time.monotonic()
    try:
        warnings = preflight(rt)
    finally:
        rt.close()
    elapsed = time.monotonic() - started
    assert len(warnings) == 1
    assert "live schema not checked" in warnings[0]
    assert silent_healthie in warnings[0]
    # two attempts of 1 s (the workers' defaults, 5 x 30 s, kept serve from listening)
    assert elapsed < 20
