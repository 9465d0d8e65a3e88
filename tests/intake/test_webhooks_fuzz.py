"""Property-based: random bodies, headers and paths never make the webhook endpoint answer 5xx,
and nothing unsigned is ever published."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.app import create_app
from app.core.models import Cadence
from app.queue.topology import dirty_subscription
from tests.helpers import demo_runtime
from tests.intake.test_webhooks import PATH, signed

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
payload_like = st.fixed_dictionaries(
    {},
    optional={
        "resource_id": st.one_of(st.integers(), st.text(max_size=70), st.none(), st.booleans()),
        "resource_id_type": st.text(max_size=70),
        "event_type": st.one_of(
            st.sampled_from(
                ["patient.updated", "appointment.deleted", "applied_tag.created", "patient.merged"]
            ),
            st.text(max_size=140),
        ),
        "changed_fields": st.one_of(st.lists(st.text(max_size=10)), json_values),
        "user_id": json_values,
        "source_user_id": json_values,
        "destination_user_id": json_values,
    },
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


def _client(tmp_path_factory):
    runtime = demo_runtime(tmp_path_factory.mktemp("fuzz"))
    return runtime, TestClient(create_app(runtime), raise_server_exceptions=False)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(payload_like.map(lambda p: json.dumps(p).encode()), st.binary(max_size=300)),
    sign=st.booleans(),
    extra_headers=st.dictionaries(
        st.sampled_from(["content-type", "content-digest", "signature", "content-length"]),
        header_text,
        max_size=3,
    ),
    path=st.sampled_from(
        [
            PATH,
            "/webhooks/healthie/x",
            "/webhooks/healthie/%2e%2e",
            PATH + "/extra",
            "/webhooks/healthie/" + "a" * 300,
        ]
    ),
)
def test_no_5xx_and_nothing_unsigned_is_published(
    tmp_path_factory, body, sign, extra_headers, path
):
    runtime, client = _client(tmp_path_factory)
    try:
        headers = signed(body) if sign else {"Content-Type": "application/json"}
        headers.update(extra_headers)
        try:
            response = client.post(path, content=body, headers=headers)
        except ValueError:
            return  # the HTTP client itself refused the header values; nothing was sent
        assert response.status_code < 500, response.text
        published = runtime.queue.pull(dirty_subscription(Cadence.DAILY))
        if published:
            assert response.status_code == 202
            assert sign
            assert path == PATH
    finally:
        runtime.close()
