"""serve's start-up checks: secrets resolve, and every operation validates against each
integration's live schema (refusing to start when one no longer does)."""

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
from tests.helpers import demo_runtime


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


def test_missing_secrets_are_reported_and_skip_the_schema_check(tmp_path):
    calls: list[httpx2.Request] = []

    def record(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        return httpx2.Response(500)

    rt = demo_runtime(
        tmp_path,
        http_transport=httpx2.MockTransport(record),
    )
    rt.secrets = MemorySecretStore({})
    warnings = preflight(rt)
    assert warnings
    assert all(w.startswith("demo-clinic:") for w in warnings)
    assert calls == []
    rt.close()
