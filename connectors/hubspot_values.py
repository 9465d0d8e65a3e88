"""What a HubSpot contact property may hold: the declared custom properties (name, type,
options), HubSpot's default contact properties a plan may write without declaring them, each
value checked against its type before any I/O, and values written as the API's strings.

HubSpot's property rules applied (https://developers.hubspot.com/docs/api-reference/
crm-properties-v3/guide): internal names are lower case letters, digits and underscores
(``hs_`` names are HubSpot's own); types ``string``, ``number``, ``date`` (YYYY-MM-DD),
``datetime`` (ISO 8601), ``bool`` (a checkbox with options true/false), ``enumeration`` (a
select of declared options), ``phone_number``; "" clears a value; a text value holds at most
65,536 characters.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.brevo import EMAIL

Value = str | int | float | bool | None
PropertyType = Literal[
    "string", "number", "date", "datetime", "bool", "enumeration", "phone_number"
]
#: HubSpot internal names: lower case letters, digits, underscores; ``hs_`` is HubSpot's own
NAME = r"^[a-z][a-z0-9_]{0,99}$"
FIELD_TYPES = {
    "string": "text",
    "number": "number",
    "date": "date",
    "datetime": "date",
    "bool": "booleancheckbox",
    "enumeration": "select",
    "phone_number": "phonenumber",
}
#: HubSpot's default contact properties a plan may write without declaring them (text)
STANDARD = frozenset(
    {"email", "firstname", "lastname", "phone", "mobilephone", "address", "city", "state"}
    | {"zip", "country", "company", "jobtitle"}
)
VALUE_CHARS = 65_536  # HubSpot's cap on a single-line or multi-line text value


class PropertyDecl(BaseModel):
    """A custom contact property the connector creates when missing."""

    model_config = ConfigDict(extra="forbid")

    type: PropertyType = "string"
    label: str | None = Field(default=None, min_length=1, max_length=100)
    #: the values of an ``enumeration``
    options: list[str] = Field(default_factory=list, max_length=500)

    @model_validator(mode="after")
    def _enumerated(self) -> PropertyDecl:
        if (self.type == "enumeration") != bool(self.options):
            raise ValueError("options are required for type enumeration, and only for it")
        return self


def property_create(name: str, decl: PropertyDecl, unique: bool, group: str) -> dict[str, Any]:
    """The PropertyCreate body for a declared property (HubSpot's booleans take two options)."""
    body: dict[str, Any] = {
        "name": name,
        "label": decl.label or name.replace("_", " ").capitalize(),
        "type": decl.type,
        "fieldType": FIELD_TYPES[decl.type],
        "groupName": group,
    }
    if unique:
        body["hasUniqueValue"] = True
    if decl.type == "bool":
        values = [("Yes", "true"), ("No", "false")]
        body["options"] = [
            {"label": label, "value": v, "hidden": False, "displayOrder": i}
            for i, (label, v) in enumerate(values)
        ]
    elif decl.type == "enumeration":
        body["options"] = [
            {"label": v, "value": v, "hidden": False, "displayOrder": i}
            for i, v in enumerate(decl.options)
        ]
    return body


def is_name(name: str) -> bool:
    """A HubSpot internal property name (not one of HubSpot's ``hs_`` names)."""
    return re.fullmatch(NAME, name) is not None and not name.startswith("hs_")


def is_email(value: str) -> bool:
    """A conservative address shape (HubSpot refuses what it cannot parse)."""
    return len(value) <= 254 and re.fullmatch(EMAIL, value) is not None


def problem(kind: str, decl: PropertyDecl | None, value: Value) -> str | None:
    """Why ``value`` cannot be a ``kind`` property value (None when it can)."""
    if value is None:
        return None  # sent as "", which clears the property
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    if kind in ("string", "phone_number"):
        if isinstance(value, bool) or len(str(value)) > VALUE_CHARS:
            return f"not text of at most {VALUE_CHARS} characters"
        return None
    if kind == "number":
        return (
            None
            if isinstance(value, int | float) and not isinstance(value, bool)
            else "not a number"
        )
    if kind == "bool":
        return None if isinstance(value, bool) else "not a boolean"
    if kind == "enumeration":
        return (
            None
            if decl is not None and value in decl.options
            else "not one of the declared options"
        )
    if not isinstance(value, str):
        return f"not an ISO 8601 {kind}"
    try:
        if kind == "date":
            date.fromisoformat(value)
        elif datetime.fromisoformat(value).tzinfo is None:
            return "a datetime without a time zone"
    except ValueError:
        return f"not an ISO 8601 {kind}"
    return None


def text(kind: str, value: Value) -> str:
    """A value as the API's string (``""`` clears; booleans as "true"/"false")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind == "datetime" and isinstance(value, str):
        return datetime.fromisoformat(value).isoformat().replace("+00:00", "Z")
    return str(value)
