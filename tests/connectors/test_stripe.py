"""The Stripe connector against the local fake (``tests.servers.stripe``), which validates every
request against Stripe's 2023-08-16 definition (each test ends with no violation recorded):
retried writes create no second customer and no second invoice item (through the idempotency
keys), search then create, Stripe's 429 and ``Stripe-Should-Retry`` honoured, errors of the
right kind and never with a patient value. The contract suite runs it too
(``tests/contracts/targets_stripe.py``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest

from app.core.errors import (
    ConfigurationError,
    FatalError,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from connectors.base import Scope, Write
from connectors.stripe import StripeConnector, headers
from connectors.stripe_api import LIVE_RATE, SEARCH_RATE, TEST_RATE, idempotency_key
from tests.servers.stripe import Account, FakeStripe, stripe_fake  # noqa: F401 - fixture

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
CREATE, UPDATE = ("POST", "/v1/customers"), ("POST", "/v1/customers/{customer}")
SEARCH, ITEMS = ("GET", "/v1/customers/search"), ("POST", "/v1/invoiceitems")


OPEN: list[StripeConnector] = []


@pytest.fixture
def account(request: Any) -> Iterator[tuple[FakeStripe, str, Account]]:
    """A fresh account (API key) on the session's fake; no violation at the end."""
    fake: FakeStripe = request.getfixturevalue("stripe_fake")
    key = FakeStripe.new_key()
    account = fake.account(key)
    yield fake, key, account
    while OPEN:
        OPEN.pop().close()
    assert account.take_violations() == []


def build(fake: FakeStripe, api_key: str, **options: Any) -> StripeConnector:
    merged = {"api_base": fake.base_url, "invoice_items": True, **options}
    built = StripeConnector.from_config("billing", merged, {"api_key": api_key})
    assert isinstance(built, StripeConnector)
    OPEN.append(built)
    return built


def connect(account: tuple[FakeStripe, str, Account], **options: Any) -> StripeConnector:
    fake, key, _ = account
    return build(fake, key, **options)


def customer(c: StripeConnector, patient: str = "1", **fields: Any) -> Write:
    args = {"patient_id": patient, "name": "Ann Patient", "email": "ann@example.com", **fields}
    return Write(
        Scope("clinic-a", patient, "run-1", AT),
        "upsert_customer",
        c.validate("upsert_customer", args, patient),
    )


def item(c: StripeConnector, key: str = "bill-1", amount: int = 1500, patient: str = "1") -> Write:
    args = {"patient_id": patient, "key": key, "amount": amount, "currency": "usd"}
    return Write(
        Scope("clinic-a", patient, "run-1", AT),
        "add_invoice_item",
        c.validate("add_invoice_item", {**args, "description": "Visit"}, patient),
    )


def test_search_then_create_then_only_the_changed_fields(account):
    _, _, stripe = account
    first = connect(account)
    (r,) = first.execute_batch([customer(first, address={"line1": "1 Main St", "country": "US"})])
    assert r.error is None
    assert r.changed
    assert [(m, t) for m, t, _ in stripe.log] == [SEARCH, CREATE, UPDATE]
    (held,) = stripe.customers.values()
    assert held["metadata"] == {"healthie_patient_id": "1", "healthie_integration_id": "clinic-a"}
    assert (held["name"], held["address"]["line1"]) == ("Ann Patient", "1 Main St")
    # Another process (no remembered id): search finds the customer, only the phone is sent.
    later = connect(account)
    (r,) = later.execute_batch([customer(later, phone="+15550100")])
    assert r.error is None
    assert r.changed
    assert [(m, t) for m, t, _ in stripe.log][3:] == [SEARCH, UPDATE]
    assert len(stripe.customers) == 1
    assert held["phone"] == "+15550100"
    (r,) = later.execute_batch([customer(later, phone="+15550100")])
    assert r.error is None
    assert not r.changed


def test_a_retried_stripe_write_creates_no_second_customer(account):
    """A retry inside search's lag finds no customer and creates again: the create's key is the
    same, Stripe replays the first answer. A changed entry inside the lag does not either."""
    _, _, stripe = account
    with stripe.lagging():
        for name in ("Ann Patient", "Ann Patient", "Ann Changed"):
            worker = connect(account)  # a redelivery elsewhere: nothing remembered
            (r,) = worker.execute_batch([customer(worker, name=name)])
            assert r.error is None
    creates = stripe.calls(*CREATE)
    assert len(creates) == 3
    assert len(set(creates)) == 1
    assert creates[0]
    assert stripe.replayed >= 2
    (held,) = stripe.customers.values()
    assert held["name"] == "Ann Changed"
    # The update's key is the version's: the same entry twice is one key, a change another.
    updates = stripe.calls(*UPDATE)
    assert updates[0] == updates[1] != updates[2]


def test_a_retried_chunk_after_a_lost_answer_is_replayed_not_repeated(account):
    _, _, stripe = account
    c = connect(account)
    with stripe.lagging(), stripe.failing(503, times=1):
        (r,) = c.execute_batch([customer(c, patient="2")])
    assert r.error is None
    assert len(stripe.customers) == 1


def test_a_retried_billing_item_creates_no_second_invoice_item(account):
    """Two workers bill the same item at once: both list (no item yet), both create, with the
    same key: Stripe replays the first, so one invoice item."""
    _, _, stripe = account
    first = connect(account)
    first.execute_batch([customer(first)])
    stripe.race = threading.Barrier(2)
    workers = [connect(account), connect(account)]
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda w=w: results.extend(w.execute_batch([item(w)])))
        for w in workers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stripe.race = None
    assert [r.error for r in results] == [None, None]
    keys = stripe.calls(*ITEMS)
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert keys[0] == idempotency_key("invoiceitem", "clinic-a", "1", "bill-1")
    assert len(stripe.items) == 1
    assert stripe.replayed >= 1


def test_a_billed_item_is_never_billed_again_nor_changed(account):
    _, _, stripe = account
    c = connect(account)
    assert [r.error for r in c.execute_batch([item(c), item(c, "bill-2")])] == [None, None]
    (again, changed) = connect(account).execute_batch([item(c), item(c, "bill-2", amount=99)])
    assert again.error is None
    assert not again.changed
    assert isinstance(changed.error, TargetRejected)
    assert "bill-2" in str(changed.error)
    assert len(stripe.items) == 2
    assert sorted(i["amount"] for i in stripe.items.values()) == [1500, 1500]


def test_invoice_items_are_refused_unless_enabled(account):
    c = connect(account, invoice_items=False)
    with pytest.raises(Exception, match="invoice_items"):
        item(c)


def test_429_is_honoured_and_slows_the_bucket(account):
    _, _, stripe = account
    c = connect(account)
    with stripe.failing(429, times=1, headers={"Retry-After": "0.05"}):
        (r,) = c.execute_batch([customer(c)])
    assert r.error is None
    assert c.api.pacer.buckets["search"].throttles == 1
    with stripe.failing(429):
        (r,) = c.execute_batch([customer(c, patient="3")])
    assert isinstance(r.error, RateLimited)


def test_stripe_should_retry_decides_over_the_status(account):
    _, _, stripe = account
    c = connect(account)
    sent = c.http_requests
    with stripe.failing(503, headers={"Stripe-Should-Retry": "false"}):
        (r,) = c.execute_batch([customer(c)])
    assert isinstance(r.error, FatalError)
    assert not isinstance(r.error, UpstreamUnavailable)
    assert c.http_requests == sent + 1  # not retried
    with stripe.failing(409, times=1, headers={"Stripe-Should-Retry": "true"}):
        (r,) = c.execute_batch([customer(c)])
    assert r.error is None


def test_a_wrong_key_is_a_configuration_error(account):
    fake, _, _ = account
    c = build(fake, "not-a-stripe-key")
    (r,) = c.execute_batch([customer(c)])
    assert isinstance(r.error, ConfigurationError)


def test_no_patient_value_in_errors(account):
    _, _, stripe = account
    c = connect(account)
    writes = [customer(c, email="kpoison@example.com", name="Mallory Forty"), item(c, "poison")]
    with stripe.poisoned():
        results = c.execute_batch(writes)
    for r in results:
        assert isinstance(r.error, TargetRejected)
        text = str(r.error)
        assert "HTTP 400 invalid_request_error" in text
        for value in ("kpoison", "example.com", "Mallory", "Forty", "Invalid"):
            assert value not in text


def test_pacing_follows_the_keys_mode(account):
    fake, _, _ = account
    live, test = build(fake, "sk_live_x"), build(fake, "k")
    assert {k: b.rate for k, b in live.api.pacer.buckets.items()} == {
        "read": LIVE_RATE,
        "write": LIVE_RATE,
        "search": SEARCH_RATE,
    }
    assert test.api.pacer.buckets["write"].rate == TEST_RATE


def test_the_fake_refuses_and_records_a_wrong_field_name(account):
    """What makes every test above fail when the connector misnames a field."""
    fake, key, stripe = account
    with httpx2.Client(base_url=fake.base_url, headers=headers(key)) as client:
        answer = client.post("/v1/customers", data={"adress[line1]": "1 Main St"})
        assert answer.status_code == 400
        unversioned = client.get("/v1/customers", headers={"Stripe-Version": "2020-08-27"})
        assert unversioned.status_code == 200
    found = stripe.take_violations()
    assert any("additionalProperties ['adress']" in v for v in found), found
    assert any("Stripe-Version" in v for v in found), found
