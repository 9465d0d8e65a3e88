"""Brevo contacts: create or update a contact keyed by its email, with attributes (the Healthie
patient id in a configurable attribute, ``HEALTHIE_ID`` by default) and list membership.

::

    write_upsert_contact (chunk of <= 150)     Brevo API v3 (api.brevo.com/v3, ``api-key``)
    ──────────────────────────────────────     ──────────────────────────────────────────────
    bulk = "contacts" (default), per contact   POST /contacts {email, attributes, listIds,
                                                 updateEnabled: true}: create or update
    bulk = "import", contacts with the same    POST /contacts/import {jsonBody, listIds,
      non-empty lists_add (2 or more)            updateExistingContacts: true}: one request
                                                 per group, bodies kept under 8 MB
    lists_remove, per list                     POST /contacts/lists/{listId}/contacts/remove
                                                 {emails: <= 150}

Emails travel in request bodies only, never in a URL (``PUT /contacts/{identifier}`` would put
one in a path that HTTP logs and proxies record). The patient attribute is set from the write's
scope, never from the plan, and a plan may not write it itself.

Brevo's published numbers (https://developers.brevo.com/docs/api-limits, "General rate
limits"): every endpoint under ``/v3/contacts`` allows 10 requests per second and 36,000 per
hour on every plan (20 and 60 RPS on the Advanced and Extended tiers). 429 answers carry
``x-sib-ratelimit-reset``, the seconds until the window resets
(https://developers.brevo.com/docs/limit-headers); it is honoured as Retry-After. The list
endpoints take at most 150 emails per request (``maxItems: 150`` in the API definition,
``addContactToList``/``removeContactFromList``), hence ``max_batch``; an import body is capped
at 10 MB with 8 MB recommended (``requestContactImport.jsonBody``).

What Brevo reports per contact: ``POST /contacts`` answers for its one contact (a 400 fails that
contact alone). An import is asynchronous: Brevo answers 202 with a process id and reports
per-contact problems only in the import's own report, so ``bulk = "import"`` trades per-contact
errors for one request per group. ``/contacts/batch`` is not used: it only updates contacts that
already exist (an unknown email fails the whole request). The list endpoints' ``failure`` lists
mean "already in/out of the list or unknown", which after an upsert is the no-op case.

Brevo keys contacts by email: two patients who share an address share one contact, and the
patient attribute holds the last writer's id. Attributes must exist in the Brevo account (values
Brevo cannot match to an attribute are ignored by Brevo, not refused).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import httpx2
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import FatalError, PlanValidationError
from connectors import http
from connectors.base import Connector, OperationSpec, Write, WriteResult

Value = str | int | float | bool | None

# A conservative address shape (RFC 5321 lengths, a dotted domain): the API definition declares
# ``format: email`` and Brevo refuses what it cannot parse, so refuse it before any I/O.
EMAIL = (
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
#: Brevo attribute names are upper case ("passed in capital letter", createContact)
ATTRIBUTE = r"^[A-Z][A-Z0-9_]{0,49}$"
LIST_BATCH = 150  # emails per list add/remove request (maxItems in the API definition)
IMPORT_BYTES = 8_000_000  # Brevo's recommended safe import body size
RESET_HEADERS = ("x-sib-ratelimit-reset",)


class UpsertContact(BaseModel):
    """Create or update the Brevo contact ``email`` of the patient: ``attributes`` set (upper
    case Brevo attribute names), added to ``lists_add`` and removed from ``lists_remove``."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=64)
    email: str = Field(max_length=254, pattern=EMAIL)
    attributes: dict[str, Value] = Field(default_factory=dict, max_length=200)
    lists_add: list[int] = Field(default_factory=list, max_length=50)
    lists_remove: list[int] = Field(default_factory=list, max_length=50)


class BrevoOptions(BaseModel):
    """Where Brevo is and how contacts are written."""

    model_config = ConfigDict(extra="forbid")

    #: the API's base URL (tests point it at Prism, which serves the paths without ``/v3``)
    base_url: str = Field(default="https://api.brevo.com/v3", pattern=r"^https?://[^\s]+$")
    #: the contact attribute that holds the Healthie patient id
    patient_attribute: str = Field(default="HEALTHIE_ID", pattern=ATTRIBUTE)
    #: "contacts": one POST /contacts per contact (per-contact errors); "import": contacts
    #: sharing their lists go as one asynchronous /contacts/import (fewer requests)
    bulk: Literal["contacts", "import"] = "contacts"
    #: largest text attribute value accepted, in UTF-8 bytes
    max_value_bytes: int = Field(default=65_536, ge=1, le=1_000_000)


class BrevoConnector(Connector):
    """Brevo contacts keyed by email (see the module docstring)."""

    kind: ClassVar[str] = "brevo"
    description: ClassVar[str] = (
        "Brevo contacts keyed by email, the Healthie patient id in an attribute; list "
        "membership added and removed; optional bulk import."
    )
    operations: ClassVar[dict[str, OperationSpec]] = {
        "upsert_contact": OperationSpec(
            "upsert_contact", UpsertContact, UpsertContact.__doc__ or "", key_field="patient_id"
        ),
    }
    options_model: ClassVar[type[BaseModel]] = BrevoOptions
    credential_names: ClassVar[tuple[str, ...]] = ("api_key",)
    max_batch: ClassVar[int] = LIST_BATCH
    rate_limit: ClassVar[float | None] = 10.0  # /v3/contacts/{...}: 10 RPS (General tier)

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        #: the HTTP client; None: built on first use (tests set one with their transport)
        self.client: httpx2.Client | None = None
        #: HTTP requests sent (a chunk may cost several)
        self.http_requests = 0

    @property
    def brevo(self) -> BrevoOptions:
        """The options, typed."""
        assert isinstance(self.options, BrevoOptions)
        return self.options

    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """Attribute names Brevo's shape, the patient attribute not written by the plan,
        values within the size cap, no list both added and removed."""
        assert isinstance(options, BrevoOptions)
        assert isinstance(args, UpsertContact)
        for name, value in args.attributes.items():
            where = f"upsert_contact.attributes.{name}"
            if not _is_attribute(name):
                where = "upsert_contact.attributes"
                raise PlanValidationError(f"{where}: attribute names are upper case A-Z, 0-9, _")
            if name == options.patient_attribute:
                raise PlanValidationError(f"{where}: set by the connector from the scope")
            if isinstance(value, float) and not math.isfinite(value):
                raise PlanValidationError(f"{where}: not a finite number")
            if isinstance(value, str) and len(value.encode("utf-8", "replace")) > (
                options.max_value_bytes
            ):
                raise PlanValidationError(f"{where}: longer than {options.max_value_bytes} bytes")
        if set(args.lists_add) & set(args.lists_remove):
            raise PlanValidationError("upsert_contact: a list is both added and removed")
        if any(n <= 0 for n in (*args.lists_add, *args.lists_remove)):
            raise PlanValidationError("upsert_contact: list ids are positive integers")
        return args

    # -- writing ------------------------------------------------------------------------
    def write_upsert_contact(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Upsert each contact (one request each, or one import per group of shared lists),
        then remove the chunk's contacts from the lists they leave."""
        send = self._sender()
        results: dict[int, WriteResult] = {}
        per_contact = list(range(len(batch)))
        if self.brevo.bulk == "import":
            per_contact = []
            for indexes in _groups(batch):
                if len(indexes) < 2:
                    per_contact.extend(indexes)
                    continue
                for part in _by_size([self._contact(batch[i]) for i in indexes], indexes):
                    items, chosen = part
                    lists = _args(batch[chosen[0]]).lists_add
                    send("POST", "/contacts/import", "POST /contacts/import", _import(items, lists))
                    results.update({i: self.ok(batch[i]) for i in chosen})
        for i in sorted(per_contact):
            body = {**self._contact(batch[i]), "updateEnabled": True}
            if _args(batch[i]).lists_add:
                body["listIds"] = _args(batch[i]).lists_add
            try:
                send("POST", "/contacts", "POST /contacts", body)
            except FatalError as exc:  # this contact only; retriable kinds fail the chunk
                results[i] = WriteResult(
                    self.name, batch[i].operation, self.key_of(batch[i]), False, exc
                )
                continue
            results[i] = self.ok(batch[i])
        self._remove_from_lists(batch, results, send)
        return [results[i] for i in range(len(batch))]

    def _remove_from_lists(
        self, batch: Sequence[Write], results: dict[int, WriteResult], send: _Send
    ) -> None:
        leaving: dict[int, list[str]] = {}
        for i, write in enumerate(batch):
            if results[i].error is None:
                for list_id in _args(write).lists_remove:
                    leaving.setdefault(list_id, []).append(_args(write).email)
        for list_id, emails in sorted(leaving.items()):
            path = f"/contacts/lists/{list_id}/contacts/remove"
            what = "POST /contacts/lists/{listId}/contacts/remove"
            for start in range(0, len(emails), LIST_BATCH):
                send("POST", path, what, {"emails": emails[start : start + LIST_BATCH]})

    def _contact(self, write: Write) -> dict[str, Any]:
        args = _args(write)
        attributes = {**args.attributes, self.brevo.patient_attribute: write.scope.patient_id}
        return {"email": args.email, "attributes": attributes}

    def _sender(self) -> _Send:
        """One chunk's request function: the base's guard paced the chunk's first request,
        this paces every later one with the same bucket (10 RPS for the whole key)."""
        http_client = self._http()
        sent = 0

        def send(method: str, path: str, what: str, body: Any) -> httpx2.Response:
            nonlocal sent
            bucket = self.guard.bucket if sent else None
            sent += 1
            self.http_requests += 1
            return http.send(
                http_client,
                method,
                self.brevo.base_url.rstrip("/") + path,
                vendor="Brevo",
                what=what,
                json=body,
                bucket=bucket,
                reset_headers=RESET_HEADERS,
            )

        return send

    def _http(self) -> httpx2.Client:
        if self.client is None:
            key = self.credentials["api_key"].get_secret_value()
            self.client = http.client(headers={"api-key": key, "accept": "application/json"})
        return self.client

    def close(self) -> None:
        """Close the HTTP client."""
        if self.client is not None:
            self.client.close()
            self.client = None


_Send = Callable[[str, str, str, Any], httpx2.Response]


def _args(write: Write) -> UpsertContact:
    assert isinstance(write.args, UpsertContact)
    return write.args


def _is_attribute(name: str) -> bool:
    return re.fullmatch(ATTRIBUTE, name) is not None


def _groups(batch: Sequence[Write]) -> Iterator[list[int]]:
    """Indexes of writes grouped by their lists to add (an import takes one set of lists; a
    contact joining no list cannot be imported)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    alone: list[int] = []
    for i, write in enumerate(batch):
        lists = tuple(sorted(set(_args(write).lists_add)))
        (groups.setdefault(lists, []) if lists else alone).append(i)
    yield from groups.values()
    for i in alone:
        yield [i]


def _by_size(
    items: list[dict[str, Any]], indexes: list[int]
) -> Iterator[tuple[list[dict[str, Any]], list[int]]]:
    """``items`` in parts whose JSON stays under Brevo's recommended import body size."""
    part: list[dict[str, Any]] = []
    chosen: list[int] = []
    size = 0
    for item, index in zip(items, indexes, strict=True):
        cost = len(json.dumps(item, ensure_ascii=False).encode("utf-8")) + 1
        if part and size + cost > IMPORT_BYTES - 4_096:
            yield part, chosen
            part, chosen, size = [], [], 0
        part.append(item)
        chosen.append(index)
        size += cost
    if part:
        yield part, chosen


def _import(items: list[dict[str, Any]], lists: list[int]) -> dict[str, Any]:
    return {
        "jsonBody": items,
        "listIds": sorted(set(lists)),
        "updateExistingContacts": True,
        "emptyContactsAttributes": False,
        "disableNotification": True,
    }
