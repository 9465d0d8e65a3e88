"""Secret Manager beyond the contract, through the real client library over gRPC to the local
fake: transient faults retried within the deadline and then retriable (not configuration)
errors, permission and absence as ConfigurationError naming the reference, checksums both
ways, and secrets created on first write."""

from __future__ import annotations

import grpc
import pytest

from app.core.errors import ConfigurationError, RateLimited, RetriableError, UpstreamUnavailable
from app.resilience.retry import Backoff
from app.secrets.secret_manager import SecretManagerStore
from tests.secrets.fake_secret_manager import FakeSecretManager, client_for

VALUE = "sm-Pl41ntext-value"


@pytest.fixture
def fake():
    server = FakeSecretManager()
    server.start()
    yield server
    server.stop()


def make(fake: FakeSecretManager, timeout: float = 5.0) -> SecretManagerStore:
    return SecretManagerStore(
        client_for(fake.address),
        fake.project,
        timeout=timeout,
        backoff=Backoff(initial=0.01, cap=0.05),
    )


@pytest.fixture
def store(fake):
    return make(fake)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
def test_transient_faults_are_retried(fake, store, code):
    store.add_version("clinic/key", VALUE)
    fake.fail_next("AccessSecretVersion", code, times=2)
    assert store.get("clinic/key") == VALUE
    assert fake.count("AccessSecretVersion") == 3
    fake.fail_next("AddSecretVersion", code, times=1)
    assert store.add_version("clinic/key", "next").version == 2


def test_a_fault_that_outlasts_the_deadline_is_retriable_not_configuration(fake):
    store = make(fake, timeout=0.5)
    store.add_version("clinic/key", VALUE)
    fake.fail_next("AccessSecretVersion", grpc.StatusCode.UNAVAILABLE, times=1000)
    with pytest.raises(UpstreamUnavailable, match="'clinic/key'") as info:
        store.get("clinic/key")
    assert not isinstance(info.value, ConfigurationError)
    assert fake.count("AccessSecretVersion") > 2
    fake.fail_next("ListSecretVersions", grpc.StatusCode.RESOURCE_EXHAUSTED, times=1000)
    with pytest.raises(RateLimited):
        store.versions("clinic/key")


def test_no_permission_is_a_configuration_error_naming_the_reference(fake, store):
    store.add_version("clinic/key", VALUE)
    fake.deny.add("clinic--key")
    with pytest.raises(ConfigurationError, match="no permission") as info:
        store.get("clinic/key")
    message = str(info.value)
    assert "'clinic/key'" in message
    assert "projects/demo-project/secrets/clinic--key" in message
    assert VALUE not in message
    assert fake.count("AccessSecretVersion") == 1  # not retried: a person must act
    with pytest.raises(ConfigurationError, match="no permission"):
        store.add_version("clinic/key", "x")


def test_a_missing_secret_is_a_configuration_error_and_has_no_versions(fake, store):
    with pytest.raises(ConfigurationError, match="'clinic/absent'.*does not exist"):
        store.get("clinic/absent")
    assert store.versions("clinic/absent") == []
    assert fake.count("AccessSecretVersion") == 1


def test_first_write_creates_the_secret_labelled_with_automatic_replication(fake, store):
    assert store.add_version("clinic/key", VALUE).version == 1
    created = fake.secrets["clinic--key"]
    assert created.labels == {"managed-by": "healthie-sync"}
    assert fake.calls == ["AddSecretVersion", "CreateSecret", "AddSecretVersion"]
    store.add_version("clinic/key", "two")
    assert fake.count("CreateSecret") == 1


def test_a_payload_damaged_in_transit_is_asked_again(fake, store):
    store.add_version("clinic/key", VALUE)
    fake.corrupt_next = 1
    assert store.get("clinic/key") == VALUE
    assert fake.count("AccessSecretVersion") == 2
    fake.corrupt_next = 10_000
    with pytest.raises(RetriableError):
        make(fake, timeout=0.3).get("clinic/key")


def test_listing_follows_pages_and_skips_ids_that_are_no_engine_reference(fake, store):
    for ref in ["a", "b/c", "d", "e-f/g"]:
        store.add_version(ref, VALUE)
    fake.secrets["x-"] = fake.secrets["a"]  # made by hand, outside the engine's grammar
    assert store.refs() == ["a", "b/c", "d", "e-f/g"]
    for _ in range(4):
        store.add_version("a", VALUE)
    assert [v.version for v in store.versions("a")] == [5, 4, 3, 2, 1]
