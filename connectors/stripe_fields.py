"""The arguments of :mod:`connectors.stripe`'s operations and how they become Stripe
parameters: the plan's fields checked against Stripe's limits before any I/O, and compared with
the customer Stripe holds so that only the fields that differ are sent (none: no write).

Stripe's limits used here (the 2023-08-16 API definition and https://docs.stripe.com/api/metadata):
``name`` 256 characters, ``email`` 512, ``phone`` 20; metadata up to 50 keys of at most 40
characters (no square brackets) with values of at most 500 characters; an empty string clears
a field, ``metadata[key]=""`` removes a key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import PlanValidationError

Value = str | int | float | bool | None

ID = r"^[A-Za-z0-9_-]{1,64}$"  # Healthie ids (digits); safe inside a search query's quotes
EMAIL = r"^[^@\s]{1,64}@[^@\s]+\.[A-Za-z]{2,63}$"
METADATA_KEY = r"^[A-Za-z0-9_.-]{1,40}$"  # Stripe: keys up to 40 characters, no brackets
INTEGRATION_KEY = "healthie_integration_id"
BILLING_KEY = "healthie_billing_item_id"
METADATA_VALUE_CHARS = 500  # Stripe: values up to 500 characters, 50 keys per object
CONTACT = ("name", "email", "phone", "description")


class Address(BaseModel):
    """A postal address (Stripe's ``address`` fields)."""

    model_config = ConfigDict(extra="forbid")

    line1: str | None = Field(default=None, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    city: str | None = Field(default=None, max_length=200)
    state: str | None = Field(default=None, max_length=200)
    postal_code: str | None = Field(default=None, max_length=20)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")  # ISO 3166-1 alpha-2


class UpsertCustomer(BaseModel):
    """Create or update the patient's Stripe customer. Only the fields given are written; a
    field given as null is cleared in Stripe. ``metadata`` values null remove the key."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(pattern=ID)
    name: str | None = Field(default=None, max_length=256)
    email: str | None = Field(default=None, max_length=512, pattern=EMAIL)
    phone: str | None = Field(default=None, max_length=20)
    description: str | None = Field(default=None, max_length=5000)
    address: Address | None = None
    metadata: dict[str, Value] = Field(default_factory=dict, max_length=47)


class AddInvoiceItem(BaseModel):
    """Bill the Healthie billing item ``key`` to the patient's customer once: ``amount`` in the
    currency's smallest unit (cents), added to the customer's next invoice."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(pattern=ID)
    key: str = Field(pattern=ID)
    amount: int = Field(ge=-99_999_999, le=99_999_999)
    currency: str = Field(pattern=r"^[a-z]{3}$")
    description: str | None = Field(default=None, max_length=500)
    metadata: dict[str, Value] = Field(default_factory=dict, max_length=46)


def check_metadata(operation: str, metadata: Mapping[str, Value], reserved: set[str]) -> None:
    """PlanValidationError unless ``metadata`` fits Stripe's limits and leaves the
    connector's own keys alone (messages name keys, never values)."""
    where = f"{operation}.metadata"
    for key, value in metadata.items():
        if not re.fullmatch(METADATA_KEY, key):
            raise PlanValidationError(f"{where}: keys are 1-40 of A-Z a-z 0-9 _ . -")
        if key in reserved:
            raise PlanValidationError(f"{where}.{key}: set by the connector from the scope")
        if isinstance(value, float) and not math.isfinite(value):
            raise PlanValidationError(f"{where}.{key}: not a finite number")
        if isinstance(value, str) and len(value) > METADATA_VALUE_CHARS:
            raise PlanValidationError(f"{where}.{key}: longer than 500 characters")


def text(value: Value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def metadata_params(
    values: Mapping[str, Value], *, drop_nulls: bool = False
) -> dict[str, str | None]:
    out = {k: text(v) for k, v in values.items()}
    return {k: v for k, v in out.items() if v is not None} if drop_nulls else out


def customer_fields(args: UpsertCustomer) -> dict[str, Any]:
    """The fields the plan set (null: clear), in Stripe's shapes."""
    given = args.model_fields_set
    fields: dict[str, Any] = {f: getattr(args, f) for f in CONTACT if f in given}
    if "address" in given:
        address = args.address
        fields["address"] = None if address is None else address.model_dump()
    fields["metadata"] = metadata_params(args.metadata)
    return fields


def changes(fields: Mapping[str, Any], customer: Mapping[str, Any]) -> dict[str, Any]:
    """The update parameters for the fields that differ from ``customer`` ("" clears)."""
    changes: dict[str, Any] = {}
    for name in CONTACT:
        if name in fields and (fields[name] or None) != (customer.get(name) or None):
            changes[name] = fields[name] if fields[name] is not None else ""
    if "address" in fields:
        want = fields["address"]
        if _address(want) != _address(customer.get("address")):
            changes["address"] = "" if want is None else {k: v or "" for k, v in want.items()}
    held = customer.get("metadata") or {}
    metadata = {
        k: ("" if v is None else v)
        for k, v in fields["metadata"].items()
        if held.get(k) != v and not (v is None and k not in held)
    }
    if metadata:
        changes["metadata"] = metadata
    return changes


def _address(value: Any) -> dict[str, Any] | None:
    """An address as compared: its six fields, "" read as null, all null read as none."""
    if not isinstance(value, Mapping):
        return None
    fields = {k: value.get(k) or None for k in Address.model_fields}
    return fields if any(fields.values()) else None
