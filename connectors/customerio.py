"""customer.io Track API: identify customers keyed by the Healthie patient id, with attributes,
and track the events a plan derives (an appointment booked, a tag applied).

::

    chunk of writes (<= 500)                   Track API v2 (track.customer.io or
    ────────────────────────                     track-eu.customer.io; basic auth
                                                 site id : API key)
    fewer than ``batch_from`` writes           POST /api/v2/entity, one per write
    otherwise                                  POST /api/v2/batch {batch: [...]}, split so each
                                                 request stays under 500 KB
    identify                                   {type: person, identifiers: {id}, action:
                                                 identify, attributes}
    track_event                                {type: person, identifiers: {id}, action: event,
                                                 name, id (ULID), timestamp, attributes: data}

Why v2 and not ``PUT /api/v1/customers/{identifier}``: in customer.io's published definition
the v1 path parameter is a ``oneOf`` of three plain strings (id, email, cio_id), so every value
matches two of them and a validator (Prism) refuses every v1 customer request; v2 carries the
identifier in the body (``identifiers: {id}``), which the definition validates exactly, and it
is the version customer.io recommends for batching.

The customer identifier is always the write's scope patient id (the plan's ``patient_id`` is
checked against it), so a plan cannot address another customer, and attribute names that would
re-identify a person (``id``, ``cio_id``, ``anonymous_id``, ``_``- and ``cio_``-prefixed ones)
are refused. Each event carries a ULID ``id`` derived from (integration, patient, name, key,
timestamp): customer.io deduplicates events by that id, so a redelivered or replayed write does
not send the same event twice.

Attribute values are sent as strings, integers or booleans (the types the definition gives
identify attributes): a float as its decimal text, None as "" (how customer.io removes an
attribute).

customer.io's published numbers (the Track API reference, "Rate Limits" and the payload tables,
https://docs.customer.io/integrations/api/track/, also the ``info.description`` of the
published definition): 1,000 requests per second for live and backfill traffic, v1 and v2
(older pages said 100; not strictly enforced); ``/v2/entity`` requests and each ``/v2/batch``
item at most 32 KB, a ``/v2/batch`` request at most 500 KB; an ID and an attribute name at most
150 bytes, an attribute value 1,000 bytes, 300 attributes per identify; an event name 100 bytes.
An item over 32 KB is refused before any I/O.

What customer.io reports per item: ``/v2/entity`` answers for its one write (a 400 fails that
write alone); ``/v2/batch`` answers 207 with ``errors[].batch_index`` for the items it refused
(the others are accepted), so a refused item fails only its own write.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal

import httpx2
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import FatalError, PlanValidationError, TargetRejected
from connectors import http
from connectors.base import Connector, OperationSpec, Write, WriteResult

Value = str | int | float | bool | None
Sent = str | int | bool

REGIONS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
BATCH_BYTES = 500_000  # /v2/batch request cap
ITEM_BYTES = 32_000  # a /v2/entity request's and each /v2/batch item's cap
VALUE_BYTES = 1_000  # an attribute value's cap
NAME_BYTES = 150  # an attribute name's (and an ID's) cap
#: names that identify a person or steer the Track API rather than describe the customer
RESERVED = {"id", "cio_id", "anonymous_id", "cio_relationships"}


class Identify(BaseModel):
    """Add or update the patient's customer.io person (identified by the patient id) with
    ``attributes``; None removes an attribute."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=150)
    attributes: dict[str, Value] = Field(default_factory=dict, max_length=300)


class TrackEvent(BaseModel):
    """Track event ``name`` for the patient, about the Healthie object ``key`` (an appointment
    id, a tag id); ``data`` is the event's merge data, ``timestamp`` when it happened."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=150)
    key: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:\- ]+$")
    timestamp: datetime | None = None
    data: dict[str, Value] = Field(default_factory=dict, max_length=300)


class CustomerIoOptions(BaseModel):
    """Where the workspace is and when writes are batched."""

    model_config = ConfigDict(extra="forbid")

    region: Literal["us", "eu"] = "us"
    #: another base URL than the region's (tests point it at Prism)
    base_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    #: chunks of at least this many writes go as /api/v2/batch requests
    batch_from: int = Field(default=10, ge=1, le=500)


class CustomerIoConnector(Connector):
    """customer.io people and events through the Track API (see the module docstring)."""

    kind: ClassVar[str] = "customerio"
    description: ClassVar[str] = (
        "customer.io Track API: people identified by the Healthie patient id, with attributes, "
        "and events derived by the plan; /api/v2/batch for volume."
    )
    operations: ClassVar[dict[str, OperationSpec]] = {
        "identify": OperationSpec(
            "identify", Identify, Identify.__doc__ or "", key_field="patient_id"
        ),
        "track_event": OperationSpec("track_event", TrackEvent, TrackEvent.__doc__ or ""),
    }
    options_model: ClassVar[type[BaseModel]] = CustomerIoOptions
    credential_names: ClassVar[tuple[str, ...]] = ("site_id", "api_key")
    max_batch: ClassVar[int] = 500
    rate_limit: ClassVar[float | None] = 1000.0  # Track API, v1 and v2 (see the docstring)

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        #: the HTTP client; None: built on first use (tests set one with their transport)
        self.client: httpx2.Client | None = None
        #: HTTP requests sent (a chunk may cost several)
        self.http_requests = 0

    @property
    def cio(self) -> CustomerIoOptions:
        """The options, typed."""
        assert isinstance(self.options, CustomerIoOptions)
        return self.options

    @property
    def base_url(self) -> str:
        """The Track API's base URL."""
        return (self.cio.base_url or REGIONS[self.cio.region]).rstrip("/")

    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """customer.io's published size limits and no identity-changing attribute names."""
        assert isinstance(args, Identify | TrackEvent)
        if len(args.patient_id.encode()) > NAME_BYTES:
            raise PlanValidationError(f"{operation}.patient_id: longer than {NAME_BYTES} bytes")
        values = args.attributes if isinstance(args, Identify) else args.data
        field = "attributes" if isinstance(args, Identify) else "data"
        for name, value in values.items():
            if not 0 < len(name.encode("utf-8", "replace")) <= NAME_BYTES:
                raise PlanValidationError(f"{operation}.{field}: a name is empty or too long")
            where = f"{operation}.{field}.{name}"
            if isinstance(args, Identify) and (name in RESERVED or name.startswith(("_", "cio_"))):
                raise PlanValidationError(f"{where}: reserved by the Track API")
            if isinstance(value, float) and not math.isfinite(value):
                raise PlanValidationError(f"{where}: not a finite number")
            if isinstance(args, Identify) and len(_text(value).encode("utf-8", "replace")) > (
                VALUE_BYTES
            ):
                raise PlanValidationError(f"{where}: longer than {VALUE_BYTES} bytes")
        # the item's envelope (type, identifiers, action, name, ids) is well under 512 bytes
        if _size(values) + 512 > ITEM_BYTES:
            raise PlanValidationError(f"{operation}.{field}: the item would exceed 32 KB")
        return args

    # -- writing ------------------------------------------------------------------------
    def write_identify(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Identify each patient (see the module docstring for v1 or batch)."""
        return self._write(batch)

    def write_track_event(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Track each event (see the module docstring for v1 or batch)."""
        return self._write(batch)

    def _write(self, batch: Sequence[Write]) -> list[WriteResult]:
        send = self._sender()
        results: dict[int, WriteResult] = {}
        single = list(range(len(batch)))
        if len(batch) >= self.cio.batch_from:
            single = []
            for part in _parts([(i, self._item(w)) for i, w in enumerate(batch)]):
                results.update(self._send_batch(batch, part, send))
        for i in single:
            try:
                send("POST", "/api/v2/entity", "POST /api/v2/entity", self._item(batch[i]))
            except FatalError as exc:  # this write only; retriable kinds fail the chunk
                results[i] = self._result(batch[i], exc)
                continue
            results[i] = self.ok(batch[i])
        return [results[i] for i in range(len(batch))]

    def _send_batch(
        self, batch: Sequence[Write], part: list[tuple[int, dict[str, Any]]], send: _Send
    ) -> dict[int, WriteResult]:
        response = send(
            "POST", "/api/v2/batch", "POST /api/v2/batch", {"batch": [item for _, item in part]}
        )
        refused: dict[int, str] = {}
        if response.status_code == 207:
            for error in _errors(response):
                index = error.get("batch_index")
                if isinstance(index, int) and 0 <= index < len(part):
                    field = error.get("field")
                    refused[index] = f" (field {field})" if isinstance(field, str) else ""
        out: dict[int, WriteResult] = {}
        for position, (i, _) in enumerate(part):
            if position in refused:
                rejected = TargetRejected(
                    f"customer.io POST /api/v2/batch: HTTP 207, item {position} refused"
                    f"{refused[position]}"
                )
                out[i] = self._result(batch[i], rejected)
            else:
                out[i] = self.ok(batch[i])
        return out

    def _result(self, write: Write, error: FatalError) -> WriteResult:
        return WriteResult(self.name, write.operation, self.key_of(write), False, error)

    def _item(self, write: Write) -> dict[str, Any]:
        args = write.args
        person: dict[str, Any] = {"type": "person", "identifiers": {"id": write.scope.patient_id}}
        if isinstance(args, Identify):
            return {**person, "action": "identify", "attributes": _sent(args.attributes)}
        assert isinstance(args, TrackEvent)
        item: dict[str, Any] = {
            **person,
            "action": "event",
            "name": args.name,
            "id": self.event_id(write),
            "attributes": args.data,
        }
        if args.timestamp is not None:
            item["timestamp"] = int(args.timestamp.timestamp())
        return item

    @staticmethod
    def event_id(write: Write) -> str:
        """The event's deduplication id: a ULID whose time is the event's (0 when it has
        none) and whose randomness is a digest of who and what it is."""
        args = write.args
        assert isinstance(args, TrackEvent)
        millis = int(args.timestamp.timestamp() * 1000) if args.timestamp else 0
        who = "\x1f".join((write.scope.integration_id, write.scope.patient_id, args.name, args.key))
        entropy = int.from_bytes(hashlib.sha256(who.encode()).digest()[:10], "big")
        return _ulid((millis & (2**48 - 1)) << 80 | entropy)

    def _sender(self) -> _Send:
        """One chunk's request function: the base's guard paced the chunk's first request,
        this paces every later one with the same bucket."""
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
                self.base_url + path,
                vendor="customer.io",
                what=what,
                json=body,
                bucket=bucket,
            )

        return send

    def _http(self) -> httpx2.Client:
        if self.client is None:
            site = self.credentials["site_id"].get_secret_value()
            key = self.credentials["api_key"].get_secret_value()
            self.client = http.client(auth=(site, key), headers={"accept": "application/json"})
        return self.client

    def close(self) -> None:
        """Close the HTTP client."""
        if self.client is not None:
            self.client.close()
            self.client = None


_Send = Callable[[str, str, str, Any], httpx2.Response]
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid(value: int) -> str:
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def _text(value: Value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _sent(values: dict[str, Value]) -> dict[str, Sent]:
    """Attribute values as the Track API types them (string, integer, boolean)."""
    out: dict[str, Sent] = {}
    for name, value in values.items():
        if value is None:
            out[name] = ""
        elif isinstance(value, float):
            out[name] = repr(value)
        else:
            out[name] = value
    return out


def _size(body: Any) -> int:
    return len(json.dumps(body, ensure_ascii=False).encode("utf-8"))


def _parts(
    items: list[tuple[int, dict[str, Any]]],
) -> list[list[tuple[int, dict[str, Any]]]]:
    """Items in /v2/batch requests each under 500 KB (with room for the envelope)."""
    parts: list[list[tuple[int, dict[str, Any]]]] = []
    size = BATCH_BYTES
    for i, item in items:
        cost = _size(item) + 1
        if size + cost > BATCH_BYTES - 64:
            parts.append([])
            size = 0
        parts[-1].append((i, item))
        size += cost
    return parts


def _errors(response: httpx2.Response) -> list[dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
