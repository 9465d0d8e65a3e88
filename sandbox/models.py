"""Records of the synthetic organization.

Attribute names match the GraphQL field names of the schema subset, and values are stored
already serialized (ISO 8601 strings, ids as strings), so graphql-core's default resolver can
read most fields straight off these objects; relations (providers, tags, appointments…) are
stored as ids and resolved in :mod:`sandbox.resolvers`.

Chart notes and chat messages are :class:`ClinicalRecord`s held apart from patients, in
:class:`~sandbox.org.Organization`; no type in the subset can reach them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class UserGroup:
    """A patient group (``UserGroup``)."""

    id: str
    name: str


@dataclass(slots=True)
class Tag:
    """An organization tag (``Tag``)."""

    id: str
    name: str
    created_at: str
    updated_at: str


@dataclass(slots=True)
class AppliedTag:
    """A tag applied to a patient (``AppliedTag``); never updated, so ``updated_at`` is when
    it was applied."""

    id: str
    tag_id: str
    user_id: str
    created_at: str
    updated_at: str


@dataclass(slots=True)
class Provider:
    """An organization member who treats patients; served as a ``User``."""

    id: str
    first_name: str
    last_name: str
    email: str
    created_at: str
    updated_at: str
    active: bool = True

    @property
    def full_name(self) -> str:
        """First and last name, as Healthie formats ``User.full_name``."""
        return f"{self.first_name} {self.last_name}"


@dataclass(slots=True)
class Address:
    """A patient's address (``Location``)."""

    id: str
    line1: str
    line2: str | None
    city: str
    state: str
    zip: str
    country: str


@dataclass(slots=True)
class InsurancePlan:
    """A payer's plan (``InsurancePlan``)."""

    id: str
    payer_name: str
    payer_id: str


@dataclass(slots=True)
class Policy:
    """A patient's insurance policy (``Policy``)."""

    id: str
    name: str
    num: str
    group_num: str | None
    priority_type: str
    holder_relationship: str
    effective_start: str
    effective_end: str | None
    updated_at: str
    insurance_plan: InsurancePlan


@dataclass(slots=True)
class Offering:
    """A billable service or package (``Offering``)."""

    id: str
    name: str


@dataclass(slots=True)
class BillingItem:
    """A charge against a patient (``BillingItem``); ``state`` is a BillingItemState name."""

    id: str
    amount_paid: str
    currency: str
    state: str
    created_at: str
    updated_at: str
    offering: Offering


@dataclass(slots=True)
class AppointmentType:
    """An appointment type (``AppointmentType``)."""

    id: str
    name: str
    length: int


@dataclass(slots=True)
class RecurringAppointment:
    """The series a recurring appointment belongs to (``RecurringAppointment``)."""

    id: str
    repeat_interval: str
    repeat_times: str


@dataclass(slots=True)
class Appointment:
    """An appointment (``Appointment``); ``user_id`` is None for group appointments."""

    id: str
    date: str
    length: int
    contact_type: str
    pm_status: str | None
    created_at: str
    updated_at: str
    appointment_type_id: str
    provider_id: str
    user_id: str | None
    attendee_ids: list[str]
    location: str | None = None
    appointment_location_id: str | None = None
    deleted_at: str | None = None
    recurring_appointment: RecurringAppointment | None = None


@dataclass(slots=True)
class Patient:
    """A patient (``User`` with the client role)."""

    id: str
    first_name: str
    last_name: str
    legal_name: str | None
    pronouns: str | None
    email: str | None
    phone_number: str | None
    dob: str | None
    gender: str | None
    sex: str | None
    timezone: str | None
    active: bool
    archived_at: str | None
    created_at: str
    updated_at: str
    record_identifier: str | None
    additional_record_identifier: str | None
    metadata: str | None
    user_group_id: str | None
    location: Address | None
    dietitian_id: str | None
    provider_ids: list[str]
    applied_tags: dict[str, str]  # tag id -> applied tag id, in application order
    policies: list[Policy]
    appointment_ids: list[str]
    billing_items: list[BillingItem]

    @property
    def full_name(self) -> str:
        """First and last name, as Healthie formats ``User.full_name``."""
        return f"{self.first_name} {self.last_name}"


@dataclass(slots=True)
class ClinicalRecord:
    """A chart note or chat message. Exists only to prove it never reaches an entry."""

    id: str
    kind: str  # "chart_note" | "chat_message"
    user_id: str
    text: str


@dataclass(slots=True)
class Task:
    """A task created through ``createTask``."""

    id: str
    content: str | None
    client_id: str | None
    user_id: str | None
    due_date: str | None
    priority: int
    complete: bool
    created_at: str
    extra: dict[str, str] = field(default_factory=dict)
