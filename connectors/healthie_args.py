"""The Healthie target's declarations: the arguments of each operation (closed models: an
unknown field is refused, so no argument can name a note, a chart or a form) and the target's
options. No I/O here: the agent and the plan validator read these without opening Healthie."""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.core.config import DEFAULT_API_VERSION

# No control characters (a newline in a name is never a value a plan meant).
Text = Annotated[str, StringConstraints(max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")]
Id = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[0-9]+$")]
TagName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$"
    ),
]
MetadataKey = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")
]
_KEY = re.compile(r"[^\x00-\x1f\x7f]{1,100}")
#: Healthie caps ``metadata`` at 128,000 characters (updateClientInput.metadata).
METADATA_MAX = 128_000


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: Id


class UpdateClientArgs(_Args):
    """Profile fields of the entry's patient; only the fields given are sent."""

    first_name: Annotated[Text, Field(min_length=1)] | None = None
    last_name: Annotated[Text, Field(min_length=1)] | None = None
    legal_name: Text | None = None
    pronouns: Text | None = None
    email: Annotated[Text, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None
    phone_number: Annotated[Text, Field(pattern=r"^[0-9+() .\-]{7,20}$")] | None = None
    dob: date | None = None
    gender: Text | None = None
    sex: Text | None = None
    timezone: Text | None = None
    record_identifier: Text | None = None
    additional_record_identifier: Text | None = None
    user_group_id: Id | None = None
    dietitian_id: Id | None = None

    @model_validator(mode="after")
    def _some(self) -> UpdateClientArgs:
        if not self.fields():
            raise ValueError("name at least one field to update")
        return self

    def fields(self) -> dict[str, Any]:
        """The fields to send, as Healthie takes them."""
        out = self.model_dump(exclude_none=True, exclude={"patient_id"})
        if "dob" in out:
            out["dob"] = out["dob"].isoformat()
        return out

    @property
    def key(self) -> str:
        """The record key: the patient."""
        return self.patient_id


class UpdateMetadataArgs(_Args):
    """Keys to set (JSON values) and keys to remove in the patient's metadata object."""

    set: dict[str, JsonValue] = Field(default_factory=dict)
    remove: list[MetadataKey] = Field(default_factory=list)

    @field_validator("set")
    @classmethod
    def _keys(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        # Checked here, not by the key type: a refused dict key would appear in the error's
        # field path, and a key is the plan's text.
        if not all(_KEY.fullmatch(k) for k in value):
            raise ValueError("metadata keys are 1-100 characters without control characters")
        return value

    @model_validator(mode="after")
    def _sane(self) -> UpdateMetadataArgs:
        if not self.set and not self.remove:
            raise ValueError("name keys to set or remove")
        if set(self.set) & set(self.remove):
            raise ValueError("a key is both set and removed")
        try:
            size = len(json.dumps(self.set, ensure_ascii=False, allow_nan=False))
        except ValueError:
            raise ValueError("values must be finite JSON") from None
        if size > METADATA_MAX:
            raise ValueError(f"more than Healthie's {METADATA_MAX} metadata characters")
        return self

    @property
    def key(self) -> str:
        """The record key: the patient."""
        return self.patient_id


class TagArgs(_Args):
    """One tag, by its Healthie id or by name (exactly one)."""

    tag_id: Id | None = None
    name: TagName | None = None

    @model_validator(mode="after")
    def _one(self) -> TagArgs:
        if (self.tag_id is None) == (self.name is None):
            raise ValueError("name the tag by tag_id or by name (exactly one)")
        return self

    @property
    def key(self) -> str:
        """The record key: the tag."""
        return self.tag_id or f"name:{self.name}"


class CreateTaskArgs(_Args):
    """A task about the entry's patient (its client is always that patient)."""

    key: Annotated[Text, Field(min_length=1, max_length=100)]
    content: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    due_date: date | None = None
    priority: Literal[0, 1] = 0


class UpdateAppointmentArgs(_Args):
    """The safe subset of an appointment's fields (no date, time, attendees, notes or fees)."""

    appointment_id: Id
    pm_status: Literal["Occurred", "No-Show", "Re-Scheduled", "Cancelled"] | None = None
    contact_type: (
        Literal["Healthie Video Call", "In Person", "Phone Call", "Secure Videochat"] | None
    ) = None
    location: Text | None = None

    @model_validator(mode="after")
    def _some(self) -> UpdateAppointmentArgs:
        if not self.fields():
            raise ValueError("name at least one field to update")
        return self

    def fields(self) -> dict[str, Any]:
        """The fields to send."""
        return self.model_dump(exclude_none=True, exclude={"patient_id", "appointment_id"})


class HealthieOptions(BaseModel):
    """Where the writes go (see the module docstring, "Which client")."""

    model_config = ConfigDict(extra="forbid")

    use_integration_key: bool = True
    #: the GraphQL endpoint when ``use_integration_key`` is false
    api_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    api_version: str = DEFAULT_API_VERSION
    #: requests/s for this connector's own key (the integration's key has its own setting)
    rate_limit: float = Field(default=250.0, gt=0, le=1000)
    #: apply_tag by name creates the organization tag when none has that name
    create_missing_tags: bool = True

    @model_validator(mode="after")
    def _where(self) -> HealthieOptions:
        if self.use_integration_key and self.api_url is not None:
            raise ValueError("api_url is only for use_integration_key = false")
        if not self.use_integration_key and self.api_url is None:
            raise ValueError("use_integration_key = false needs api_url")
        return self
