"""Stripe in the connector contract suite: the real connector (httpx2 over real HTTP, its own
Bearer and ``Stripe-Version`` headers) against the local fake of ``tests.servers.stripe``,
which validates every request against Stripe's 2023-08-16 definition and keeps state.

Two record-shaped backends:

* ``stripe``: customers, one per patient (the record key is the patient id); the suite's values
  go into the customer's metadata (strings: Stripe's metadata holds nothing else), its key into
  the customer's email (``k<key>@example.com``) so that "poison" is a refused email;
* ``stripe-invoiceitems``: invoice items keyed by the billing item id (the record key), the
  values in the item's metadata; "poison" is a refused billing item.

Each test gets an account of its own (a fresh API key); at its end the fake must have recorded
no violation for it. Metadata values are capped at 500 characters, hence ``max_text_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from connectors.base import Connector, Scope, Write
from connectors.stripe import StripeConnector
from tests.contracts.targets import Rows, TargetBackend
from tests.servers import fixture_for
from tests.servers.stripe import Account, FakeStripe

OWN = {"healthie_patient_id", "healthie_integration_id", "healthie_billing_item_id"}


def customer_rows(account: Account) -> Rows:
    """Every customer as a row keyed by its patient (the metadata minus the connector's)."""
    rows = []
    for customer in account.customers.values():
        metadata = customer.get("metadata") or {}
        patient = metadata.get("healthie_patient_id")
        rows.append(
            {
                **{k: v for k, v in metadata.items() if k not in OWN},
                "integration_id": metadata.get("healthie_integration_id"),
                "patient_id": patient,
                "key": patient,
            }
        )
    return rows


def item_rows(account: Account) -> Rows:
    """Every invoice item as a row keyed by its billing item id."""
    return [
        {
            **{k: v for k, v in (item.get("metadata") or {}).items() if k not in OWN},
            "integration_id": item["metadata"].get("healthie_integration_id"),
            "patient_id": item["metadata"].get("healthie_patient_id"),
            "key": item["metadata"].get("healthie_billing_item_id"),
        }
        for item in account.items.values()
    ]


def customer_write(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
    """upsert_customer with the values as metadata and the key in the email."""
    args = connector.validate(
        "upsert_customer",
        {"patient_id": scope.patient_id, "email": f"k{key}@example.com", "metadata": values},
        scope.patient_id,
    )
    return Write(scope, "upsert_customer", args)


def item_write(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
    """add_invoice_item of billing item ``key`` (15.00 USD) with the values as metadata."""
    args = connector.validate(
        "add_invoice_item",
        {
            "patient_id": scope.patient_id,
            "key": key,
            "amount": 1500,
            "currency": "usd",
            "description": "Visit",
            "metadata": values,
        },
        scope.patient_id,
    )
    return Write(scope, "add_invoice_item", args)


STRIPE_INVALID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("upsert_customer", {"patient_id": "2"}),  # another patient
    ("upsert_customer", {"patient_id": "1", "email": "mallory@"}),
    ("upsert_customer", {"patient_id": "1", "email": "mallory@example.com\n"}),
    ("upsert_customer", {"patient_id": "1", "phone": "+1 555 0100 Mallory forty"}),  # > 20
    ("upsert_customer", {"patient_id": "1", "name": "Mallory" * 40}),  # > 256
    ("upsert_customer", {"patient_id": "1", "metadata": {"healthie_patient_id": "2"}}),
    ("upsert_customer", {"patient_id": "1", "metadata": {"a[b]": "Mallory"}}),
    ("upsert_customer", {"patient_id": "1", "metadata": {"note": "Mallory" * 80}}),  # > 500
    ("upsert_customer", {"patient_id": "1", "metadata": {"n": float("nan")}}),
    ("upsert_customer", {"patient_id": "1", "address": {"country": "forty"}}),
    ("upsert_customer", {"patient_id": "1", "adress": {"line1": "x"}}),  # unknown field
    ("upsert_customer", {"patient_id": "1' OR metadata['x']:'y"}),  # a search injection
    ("add_invoice_item", {"patient_id": "1", "key": "b1", "amount": 0, "currency": "usd"}),
    ("add_invoice_item", {"patient_id": "1", "key": "b1", "amount": "forty", "currency": "usd"}),
    ("add_invoice_item", {"patient_id": "1", "key": "b1", "amount": 100, "currency": "USD"}),
    ("add_invoice_item", {"patient_id": "1", "key": "", "amount": 100, "currency": "usd"}),
    ("add_invoice_item", {"patient_id": "2", "key": "b1", "amount": 100, "currency": "usd"}),
)


def _backend(request: Any, name: str, invoice_items: bool) -> Iterator[TargetBackend]:
    fake: FakeStripe = fixture_for(request, "tests.servers.stripe", "stripe_fake")
    api_key = FakeStripe.new_key()
    account = fake.account(api_key)

    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        secrets = {"api_key": api_key} if credentials is None else dict(credentials)
        merged = {"api_base": fake.base_url, "invoice_items": True, **options}
        return StripeConnector.from_config("billing", merged, secrets)

    yield TargetBackend(
        name=name,
        build=build,
        read=lambda _c, _t: item_rows(account) if invoice_items else customer_rows(account),
        credential_names=("api_key",),
        fault=account.failing,
        poison=lambda _connector: account.poisoned(),
        reports_unchanged=True,
        write=item_write if invoice_items else customer_write,
        tables=False,
        invalid=STRIPE_INVALID,
        max_text_bytes=500,
        skips={}
        if invoice_items
        else {
            "key_of_another_patient": "customers are keyed by the scope's patient id itself; "
            "upsert_customer has no key (stripe-invoiceitems runs it)",
        },
    )
    violations = account.take_violations()
    assert violations == [], "requests that break Stripe's definition:\n" + "\n".join(violations)


def stripe_backend(request: Any) -> Iterator[TargetBackend]:
    """Stripe customers on the fake."""
    yield from _backend(request, "stripe", invoice_items=False)


def stripe_items_backend(request: Any) -> Iterator[TargetBackend]:
    """Stripe invoice items on the fake."""
    yield from _backend(request, "stripe-invoiceitems", invoice_items=True)


STRIPE_BACKENDS = {"stripe": stripe_backend, "stripe-invoiceitems": stripe_items_backend}
