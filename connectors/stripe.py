"""Stripe: customers upserted by the Healthie patient id held in their metadata, with contact and
address fields, and (optionally) invoice items for Healthie billing items, each billed once.

::

    upsert_customer                          Stripe API v1 (api.stripe.com, Bearer api_key,
    ───────────────                            Stripe-Version 2023-08-16 on every request)
    find the patient's customer              known id (this process): GET /v1/customers/{id}
                                             else GET /v1/customers/search?query=
                                               metadata['healthie_patient_id']:'<patient>' AND
                                               metadata['healthie_integration_id']:'<integration>'
    none: create it, identity only           POST /v1/customers {metadata: the two ids},
                                               Idempotency-Key from (integration, patient)
    fields that differ from the customer's   POST /v1/customers/{id} {the changed fields},
                                               Idempotency-Key from (integration, patient,
                                               customer, those fields): the entry's version
    nothing differs                          no write; reported unchanged

    add_invoice_item (options.invoice_items)
    the customer, as above; its invoice      GET /v1/invoiceitems?customer=&limit=100 (pages)
      items (once per chunk)
    one carries this billing item's id       same amount and currency: unchanged; else refused
      in metadata                              (never billed twice, never silently changed)
    none                                     POST /v1/invoiceitems {customer, amount, currency,
                                               description, metadata}, Idempotency-Key from
                                               (integration, patient, billing item id)

**Why the create carries only the identity, and what search's lag does.** Stripe's search is
eventually consistent: "data is searchable in less than a minute", "up to an hour behind
during outages" (https://docs.stripe.com/api/customers/search). A customer created a moment
ago is not found by the next search, so a retried write (after a lost response, a 429 later in
its chunk, a redelivery) searches, finds nothing and creates again. The idempotency key is what
makes that second create harmless: Stripe saves the first answer for at least 24 h and replays
it for the same key and parameters, "without risk of creating a second object"
(https://docs.stripe.com/api/idempotent_requests). If the create carried the patient's fields,
a *changed* entry inside the lag would send other parameters: under a key with the version in
it that is a second customer, under a key without it a 400 ``idempotency_error``. So the create
sends the same identity-only parameters for a patient forever (its key is constant: any create
within 24 h replays the same customer, far longer than search lags), and the fields follow as
an update whose key carries the version (a digest of exactly the fields it sends: same key if
and only if same parameters, so an ``idempotency_error`` never comes from this connector's own
keys). A new customer costs one more request; no entry version can create a second one.
After 24 h a create happens only when search finds no customer, by then long indexed. Limits:
a customer deleted in Stripe within 24 h of its creation is replayed, and its update fails
(404) until the key expires; two customers already holding the same ids (made by hand) are
reconciled by using the oldest.

Invoice items are found with the list API, which is strongly consistent, so a billing item is
looked up before it is billed; the create's key is constant per billing item, so even a lost
answer followed by a changed amount meets Stripe's ``idempotency_error`` instead of a second
charge. An item already in Stripe is never changed by this connector (amount or currency
differing: the write is refused, naming the billing item, for a person to reconcile).

Stripe's published limits (https://stripe.com/docs/rate-limits, "Rate limiter"): 100 read and
100 write operations per second in live mode, 25 and 25 in test mode; the Search API 20 read
operations per second, counted against the basic limits too. Each request is paced by its kind
(``connectors.stripe_api.Pacer``); the mode is the API key's (``sk_live_``/``rk_live_``: live,
anything else: test), or ``options.rate_mode``. 429 answers throttle the bucket and honour
``Retry-After``; ``Stripe-Should-Retry`` decides over the status (``connectors.stripe_api``).
Stripe has no batch endpoint: every customer costs 1 request unchanged, 2 changed, 3 new.

HTTP: httpx2 (the engine's client, ``connectors.http.client``) rather than the ``stripe``
package: the engine owns retries, pacing and error mapping, the fake answers over real HTTP,
and no second HTTP stack or exception tree needs converting.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import httpx2
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import FatalError, PlanValidationError, TargetRejected
from app.resilience.guard import Guard
from connectors import http
from connectors.base import Connector, OperationSpec, Scope, Write, WriteResult
from connectors.stripe_api import API_VERSION, Kind, Pacer, StripeApi, idempotency_key
from connectors.stripe_fields import (
    BILLING_KEY,
    INTEGRATION_KEY,
    AddInvoiceItem,
    UpsertCustomer,
    changes,
    check_metadata,
    customer_fields,
    metadata_params,
)

KNOWN = 10_000  # customer ids remembered per connector
#: seconds a customer just seen is billed by id without being read again
FRESH = 60.0


class StripeOptions(BaseModel):
    """Where Stripe is and what the connector writes."""

    model_config = ConfigDict(extra="forbid")

    #: the API's base URL (tests point it at the local fake)
    api_base: str = Field(default="https://api.stripe.com", pattern=r"^https?://[^\s]+$")
    #: the metadata key holding the Healthie patient id (the customer's identity)
    patient_metadata_key: str = Field(
        default="healthie_patient_id", pattern=r"^[a-z][a-z0-9_]{0,39}$"
    )
    #: "auto": the key's mode (sk_live_/rk_live_ keys live, others test); sets the pacing
    rate_mode: Literal["auto", "live", "test"] = "auto"
    #: whether plans may bill invoice items (off: add_invoice_item is refused)
    invoice_items: bool = False


class StripeConnector(Connector):
    """Stripe customers and invoice items (see the module docstring)."""

    kind: ClassVar[str] = "stripe"
    description: ClassVar[str] = (
        "Stripe customers keyed by the Healthie patient id in metadata (search, idempotent "
        "create, update of changed fields); optional invoice items, each billing item once."
    )
    operations: ClassVar[dict[str, OperationSpec]] = {
        "upsert_customer": OperationSpec(
            "upsert_customer", UpsertCustomer, UpsertCustomer.__doc__ or "", key_field="patient_id"
        ),
        "add_invoice_item": OperationSpec(
            "add_invoice_item", AddInvoiceItem, AddInvoiceItem.__doc__ or ""
        ),
    }
    options_model: ClassVar[type[BaseModel]] = StripeOptions
    credential_names: ClassVar[tuple[str, ...]] = ("api_key",)
    #: Stripe has no batch endpoint; a retried chunk redoes its writes (replayed by key)
    max_batch: ClassVar[int] = 10
    rate_limit: ClassVar[float | None] = 100.0  # live-mode writes/s; see the module docstring

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        # Pacing moves from the chunk to each request, by kind; the breaker stays on the guard.
        self._shared_bucket = self.guard.bucket
        self.guard = Guard(breaker=self.guard.breaker)
        #: the HTTP client; None: built on first use (tests may set one)
        self.client: httpx2.Client | None = None
        self._api: StripeApi | None = None
        #: (integration, patient) -> (customer id, when last seen), for later writes
        self._known: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        #: HTTP requests sent (a write costs 1 to 3)
        self.http_requests = 0

    @property
    def stripe(self) -> StripeOptions:
        """The options, typed."""
        assert isinstance(self.options, StripeOptions)
        return self.options

    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """Metadata within Stripe's limits and free of the connector's own keys; invoice items
        only when the target enables them, and never of amount 0."""
        assert isinstance(options, StripeOptions)
        reserved = {options.patient_metadata_key, INTEGRATION_KEY, BILLING_KEY}
        check_metadata(operation, getattr(args, "metadata", {}), reserved)
        if isinstance(args, AddInvoiceItem):
            if not options.invoice_items:
                raise PlanValidationError(
                    "add_invoice_item: invoice items are off for this target "
                    "(set options.invoice_items = true)"
                )
            if args.amount == 0:
                raise PlanValidationError("add_invoice_item.amount: must not be 0")
        return args

    # -- writing ------------------------------------------------------------------------
    def write_upsert_customer(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Upsert each patient's customer; a refusal fails its own write, a retriable error
        the chunk (retried whole: every write is replayed by its keys)."""
        return [self._each(w, partial(self._upsert, w)) for w in batch]

    def write_add_invoice_item(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Bill each billing item not yet in Stripe (see the module docstring)."""
        listed: dict[str, list[dict[str, Any]]] = {}
        return [self._each(w, partial(self._bill, w, listed)) for w in batch]

    def _each(self, write: Write, run: Callable[[], WriteResult]) -> WriteResult:
        try:
            return run()
        except FatalError as exc:  # this write only; retriable kinds fail (and retry) the chunk
            return WriteResult(self.name, write.operation, self.key_of(write), False, exc)

    def _upsert(self, write: Write) -> WriteResult:
        args = write.args
        assert isinstance(args, UpsertCustomer)
        customer, created = self._customer(write.scope)
        diff = changes(customer_fields(args), customer)
        if not diff:
            return self.ok(write, changed=created)
        key = idempotency_key(
            "customer-update",
            write.scope.integration_id,
            write.scope.patient_id,
            customer["id"],
            params=diff,
        )
        self._call(
            "POST",
            f"/v1/customers/{customer['id']}",
            "POST /v1/customers/{customer}",
            "write",
            params=diff,
            key=key,
        )
        return self.ok(write)

    def _bill(self, write: Write, listed: dict[str, list[dict[str, Any]]]) -> WriteResult:
        args = write.args
        assert isinstance(args, AddInvoiceItem)
        scope = write.scope
        customer, _ = self._customer(scope, fresh=FRESH)
        if customer["id"] not in listed:
            listed[customer["id"]] = self._invoice_items(customer["id"])
        items = listed[customer["id"]]
        for item in items:
            metadata = item.get("metadata") or {}
            if metadata.get(BILLING_KEY) == args.key and (
                metadata.get(INTEGRATION_KEY) == scope.integration_id
            ):
                if item.get("amount") == args.amount and item.get("currency") == args.currency:
                    return self.ok(write, changed=False)
                raise TargetRejected(
                    f"Stripe invoice item {item.get('id')} already bills billing item "
                    f"{args.key} with another amount or currency: not billed again"
                )
        params: dict[str, Any] = {
            "customer": customer["id"],
            "amount": args.amount,
            "currency": args.currency,
            "metadata": {
                **metadata_params(args.metadata, drop_nulls=True),
                INTEGRATION_KEY: scope.integration_id,
                self.stripe.patient_metadata_key: scope.patient_id,
                BILLING_KEY: args.key,
            },
        }
        if args.description is not None:
            params["description"] = args.description
        key = idempotency_key("invoiceitem", scope.integration_id, scope.patient_id, args.key)
        items.append(
            self._call(
                "POST", "/v1/invoiceitems", "POST /v1/invoiceitems", "write", params=params, key=key
            )
        )
        return self.ok(write)

    def _customer(self, scope: Scope, *, fresh: float = 0.0) -> tuple[dict[str, Any], bool]:
        """The scope's customer and whether it was created now (module docstring). With
        ``fresh``, a customer this process saw less than that many seconds ago is taken by
        its id alone (an invoice item needs no more; an upsert compares the whole object)."""
        known = (scope.integration_id, scope.patient_id)
        customer_id, seen = self._known.get(known, (None, 0.0))
        if customer_id is not None and time.monotonic() - seen < fresh:
            return {"id": customer_id}, False
        if customer_id is not None:
            try:
                found = self._call(
                    "GET", f"/v1/customers/{customer_id}", "GET /v1/customers/{customer}", "read"
                )
            except TargetRejected:  # gone (404): look it up again
                found = {"deleted": True}
            if not found.get("deleted"):
                return found, False
            self._known.pop(known, None)
        pkey = self.stripe.patient_metadata_key
        query = (
            f"metadata['{pkey}']:'{_quoted(scope.patient_id)}' AND "
            f"metadata['{INTEGRATION_KEY}']:'{_quoted(scope.integration_id)}'"
        )
        answer = self._call(
            "GET",
            "/v1/customers/search",
            "GET /v1/customers/search",
            "search",
            params={"query": query},
        )
        mine = [
            c
            for c in answer.get("data") or []
            if isinstance(c, dict)
            and (c.get("metadata") or {}).get(pkey) == scope.patient_id
            and (c.get("metadata") or {}).get(INTEGRATION_KEY) == scope.integration_id
        ]
        created = not mine
        if mine:
            customer = min(mine, key=lambda c: (c.get("created") or 0, str(c.get("id"))))
        else:
            identity = {"metadata": {pkey: scope.patient_id, INTEGRATION_KEY: scope.integration_id}}
            key = idempotency_key("customer-create", *known, params=identity)
            customer = self._call(
                "POST", "/v1/customers", "POST /v1/customers", "write", params=identity, key=key
            )
        self._remember(known, str(customer["id"]))
        return customer, created

    def _invoice_items(self, customer_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"customer": customer_id, "limit": 100}
        while True:
            page = self._call(
                "GET", "/v1/invoiceitems", "GET /v1/invoiceitems", "read", params=params
            )
            data = [i for i in page.get("data") or [] if isinstance(i, dict)]
            items.extend(data)
            if not page.get("has_more") or not data:
                return items
            params = {**params, "starting_after": data[-1]["id"]}

    def _remember(self, known: tuple[str, str], customer_id: str) -> None:
        self._known[known] = (customer_id, time.monotonic())
        self._known.move_to_end(known)
        while len(self._known) > KNOWN:
            self._known.popitem(last=False)

    # -- HTTP ---------------------------------------------------------------------------
    def _call(self, method: str, path: str, what: str, kind: Kind, **kw: Any) -> dict[str, Any]:
        return self.api.call(method, path, what, kind, **kw)

    @property
    def api(self) -> StripeApi:
        """The request edge, built on first use (the key is read then, not at import)."""
        if self._api is None:
            secret = self.credentials["api_key"].get_secret_value()
            live = self.stripe.rate_mode == "live" or (
                self.stripe.rate_mode == "auto" and secret.startswith(("sk_live_", "rk_live_"))
            )
            if self.client is None:
                self.client = http.client(headers=headers(secret))
            shared = self._shared_bucket if live else None

            def count() -> None:
                self.http_requests += 1

            self._api = StripeApi(
                self.client, self.stripe.api_base.rstrip("/"), Pacer(live, shared), count
            )
        return self._api

    def probe(self) -> str | None:
        """List one customer: the key reads customers at this base and API version."""
        self.api.call("GET", "/v1/customers", "GET /v1/customers", "read", params={"limit": 1})
        return "Stripe customers readable (API version 2023-08-16)"

    def close(self) -> None:
        """Close the HTTP client."""
        if self.client is not None:
            self.client.close()
            self.client = None
        self._api = None


def headers(secret: str) -> dict[str, str]:
    """Auth and the pinned API version, sent on every request."""
    return {"Authorization": f"Bearer {secret}", "Stripe-Version": API_VERSION}


def _quoted(value: str) -> str:
    # Ids are validated to [A-Za-z0-9_-]; escaping is a second line of defence.
    return value.replace("\\", "\\\\").replace("'", "\\'")
