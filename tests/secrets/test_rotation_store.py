"""``webhooks sync`` / ``webhooks rotate`` store the signing secret Healthie answers with through
the secrets interface themselves (``rotation.sync_and_store`` / ``rotate_and_store``), against
the real sandbox over HTTP and the engine's own receiver: no hand copy, no config edit, and the
secret in no log and nowhere on disk in plaintext. A read-only backend is refused before
Healthie expires anything."""

from __future__ import annotations

import logging

import grpc
import httpx2
import pytest

from app.api.app import create_app as engine_app
from app.core.errors import ConfigurationError, UpstreamUnavailable
from app.healthie.client import HealthieClient
from app.healthie.registration import confirm_arrival, list_webhooks, send_test
from app.healthie.registration.rotation import (
    rotate_and_store,
    rotation_steps,
    signing_ref,
    sync_and_store,
)
from app.resilience.retry import Backoff
from app.secrets.base import accepted_values
from app.secrets.file_store import FileSecretStore
from app.secrets.keys import KEY_BYTES
from app.secrets.secret_manager import SecretManagerStore
from app.secrets.stores import EnvSecretStore, env_name
from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.server import create_app as sandbox_app
from tests.contracts.test_secrets_contract import assert_nowhere
from tests.helpers import demo_runtime
from tests.secrets.fake_secret_manager import FakeSecretManager, client_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def sandbox():
    sb = Sandbox(patients=5, seed=3)
    yield sb
    sb.close()


@pytest.fixture
def healthie(sandbox):
    with serve_in_thread(sandbox_app(sandbox)) as base:
        client = HealthieClient(url=f"{base}/graphql", api_key=sandbox.api_key, rate_limit=1000)
        yield client
        client.close()


@pytest.fixture
def runtime(tmp_path, sandbox):
    rt = demo_runtime(tmp_path / "data", webhook_secret=sandbox.webhook_secret)
    integration = rt.integrations["demo-clinic"]
    store = FileSecretStore(tmp_path / "data" / "secrets", b"\x05" * KEY_BYTES)
    store.add_version(integration.healthie.api_key_secret, sandbox.api_key)
    store.add_version(signing_ref(integration), sandbox.webhook_secret)
    rt.secrets = store
    yield rt
    rt.close()


@pytest.fixture
def integration(runtime):
    return runtime.integrations["demo-clinic"]


@pytest.fixture
def production_logging():
    """The logging every entry point sets up (``build_runtime`` and ``configure`` call
    ``silence_payload_loggers``): request and response bodies are never logged."""
    from app.core.logs import PAYLOAD_LOGGERS, silence_payload_loggers

    levels = {name: logging.getLogger(name).level for name in PAYLOAD_LOGGERS}
    silence_payload_loggers()
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _check(healthie, base: str, webhook_id: str) -> str:
    test = send_test(healthie, webhook_id, receiver_url=base)
    return confirm_arrival(healthie, test, receiver_url=base, timeout=5, interval=0.05).verdict


def test_sync_and_rotate_store_the_secret_healthie_returns_and_the_receiver_takes_it(
    healthie, sandbox, runtime, integration, tmp_path, caplog, production_logging
):
    caplog.set_level(logging.DEBUG)  # everything else at DEBUG: the Google, gRPC, HTTP loggers
    store = runtime.secrets
    ref = signing_ref(integration)
    with serve_in_thread(engine_app(runtime)) as base:
        actions, stored = sync_and_store(healthie, integration, base, store)
        (created,) = actions
        wid = created.webhook_id
        assert [s.ok for s in stored] == [True]
        assert store.get(ref) == sandbox.emitter.webhooks[wid].secret
        assert _check(healthie, base, wid) == "verified"

        (rotated,) = rotate_and_store(healthie, integration, [wid], store)
        new_secret = sandbox.emitter.webhooks[wid].secret
        assert new_secret != sandbox.webhook_secret
        assert (rotated.ref, rotated.version) == (ref, 3)
        assert store.get(ref) == new_secret  # stored by the command, not by hand
        assert accepted_values(store, ref)[:2] == [new_secret, sandbox.webhook_secret]
        assert _check(healthie, base, wid) == "signature_refused"  # the receiver's cache
        runtime.reload_secrets()  # what a restart does; no integration file changed
        assert _check(healthie, base, wid) == "verified"

    printed = "\n".join(
        [str(rotated), *map(str, stored), *rotation_steps(integration, [wid], store=store)]
    )
    assert rotated.secret_fingerprint
    assert rotated.secret_fingerprint in printed
    assert_nowhere(new_secret, tmp_path / "data", [caplog.text, printed, repr(rotated)])


def test_after_a_rotation_a_retry_signed_with_the_old_secret_still_verifies(
    healthie, sandbox, runtime, integration
):
    with serve_in_thread(engine_app(runtime)) as base, httpx2.Client(timeout=5) as http:
        (_, stored) = sync_and_store(healthie, integration, base, runtime.secrets)
        wid = stored[0].webhook_id
        assert _check(healthie, base, wid) == "verified"
        signed_with_old = sandbox.emitter.deliveries[-1]
        rotate_and_store(healthie, integration, [wid], runtime.secrets)
        runtime.reload_secrets()
        replay = http.post(
            signed_with_old.url, content=signed_with_old.body, headers=signed_with_old.headers
        )
        assert replay.status_code == 202


def test_a_read_only_backend_is_refused_before_healthie_changes_anything(
    healthie, sandbox, runtime, integration
):
    env = EnvSecretStore(
        {
            env_name(integration.healthie.api_key_secret): sandbox.api_key,
            env_name(signing_ref(integration)): sandbox.webhook_secret,
        }
    )
    with pytest.raises(ConfigurationError, match="read-only"):
        sync_and_store(healthie, integration, "https://engine.example", env)
    assert list_webhooks(healthie) == []  # nothing registered whose secret would be lost

    (_, stored) = sync_and_store(healthie, integration, "https://engine.example", runtime.secrets)
    wid = stored[0].webhook_id
    before = sandbox.emitter.webhooks[wid].secret
    with pytest.raises(ConfigurationError, match="read-only"):
        rotate_and_store(healthie, integration, [wid], env)
    assert sandbox.emitter.webhooks[wid].secret == before  # not expired
    # with the webhook in place, sync fixes drift with a read-only backend as before
    actions, stored_env = sync_and_store(healthie, integration, "https://engine.example", env)
    assert (actions, stored_env) == ([], [])
    steps = rotation_steps(integration, [wid], store=env)
    assert "read-only" in steps[0]


def test_a_store_that_fails_after_the_rotation_says_to_rotate_again(
    healthie, sandbox, runtime, integration
):
    fake = FakeSecretManager()
    fake.start()
    try:
        store = SecretManagerStore(
            client_for(fake.address), fake.project, timeout=0.3, backoff=Backoff(0.01, 0.05)
        )
        (_, stored) = sync_and_store(healthie, integration, "https://engine.example", store)
        wid = stored[0].webhook_id
        fake.fail_next("AddSecretVersion", grpc.StatusCode.UNAVAILABLE, times=1000)
        with pytest.raises(UpstreamUnavailable, match=r"run `webhooks rotate --yes`") as info:
            rotate_and_store(healthie, integration, [wid], store)
        assert sandbox.emitter.webhooks[wid].secret not in str(info.value)
    finally:
        fake.stop()
