"""A deterministic synthetic Healthie organization.

:func:`generate_org` builds the organization-wide records (providers, groups, tags, plans,
appointment types, offerings) at once and each patient lazily, the first time anything asks
for it. Every patient is drawn from its own random streams (one for the patient, one for
its appointments), seeded from ``(seed, index)``, so
the same ``seed``, ``patients`` and ``now`` always give the same data whatever order patients
are read in, and 100,000 patients cost nothing until they are touched.

Ids are numeric strings in disjoint ranges, and the ids of a patient's generated records
encode the patient's index, so ``appointment(id)`` can find (and generate) its owner without
scanning. Records created later through the sandbox take ids from :data:`CREATED_BASE` up.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from sandbox import names
from sandbox.generate import (
    build_patient,
    group_appointment,
    group_appointment_id,
    is_group_owner,
    iso,
)
from sandbox.ids import APPT_BASE, APPT_STRIDE, CREATED_BASE, PATIENT_BASE, mix
from sandbox.models import (
    AppliedTag,
    Appointment,
    AppointmentType,
    ClinicalRecord,
    InsurancePlan,
    Offering,
    Patient,
    Provider,
    Tag,
    Task,
    UserGroup,
)
from sandbox.timeline import (
    KeyIndex,
    PatientTimeline,
    appointment_keys,
    epoch,
    patient_keys,
    patient_timeline,
)


@dataclass
class Organization:
    """The sandbox's data: static records plus lazily generated, then mutable, patients."""

    seed: int
    size: int
    now: datetime
    providers: dict[str, Provider]
    user_groups: dict[str, UserGroup]
    tags: dict[str, Tag]
    appointment_types: dict[str, AppointmentType]
    insurance_plans: list[InsurancePlan]
    offerings: list[Offering]
    organization_id: str
    appointments: dict[str, Appointment] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    # Tags applied through the sandbox, by applied tag id (the patient's ``applied_tags`` maps
    # tag id -> applied tag id; generated applied tags date from their patient's creation).
    applied: dict[str, AppliedTag] = field(default_factory=dict)
    _patients: dict[int, Patient] = field(default_factory=dict)
    _next_id: int = CREATED_BASE
    _timeline: PatientTimeline | None = None
    _indexes: dict[str, KeyIndex] = field(default_factory=dict)

    def new_id(self) -> str:
        """Return a fresh id for a record created after generation."""
        self._next_id += 1
        return str(self._next_id)

    def patient_ids(self) -> Iterator[str]:
        """Yield every patient id in ascending order."""
        return (str(PATIENT_BASE + i) for i in range(self.size))

    def index_of(self, user_id: str | None) -> int | None:
        """Return the patient index behind ``user_id``, or None when it is not a patient."""
        if user_id is None or not user_id.isdigit():
            return None
        index = int(user_id) - PATIENT_BASE
        return index if 0 <= index < self.size else None

    def patient(self, user_id: str | None) -> Patient | None:
        """Return the patient with ``user_id`` (generating it on first use), or None."""
        index = self.index_of(user_id)
        if index is None:
            return None
        found = self._patients.get(index)
        if found is None:
            found = self._materialize(index)
        return found

    def materialized(self, index: int) -> Patient | None:
        """The patient at ``index`` if it has been generated, without generating it."""
        return self._patients.get(index)

    # -- orderings (see sandbox.timeline) ------------------------------------------------
    def timeline(self) -> PatientTimeline:
        """Every patient's generated timestamps and archived flag (drawn once, lazily)."""
        if self._timeline is None:
            self._timeline = patient_timeline(self)
        return self._timeline

    def patient_index(self, field: str) -> KeyIndex:
        """Patients ordered by ``field`` ("updated_at" or "created_at"), kept up to date."""
        name = f"users.{field}"
        if name not in self._indexes:
            self._indexes[name] = KeyIndex(patient_keys(self, self.timeline(), field))
        return self._indexes[name]

    def appointment_index(self, field: str) -> KeyIndex:
        """Visible appointments ordered by ``field`` ("updated_at", "created_at", "date")."""
        name = f"appointments.{field}"
        if name not in self._indexes:
            self._indexes[name] = KeyIndex(appointment_keys(self, field))
        return self._indexes[name]

    def is_archived(self, index: int) -> bool:
        """Whether patient ``index`` is archived (live record, else generated flag)."""
        live = self._patients.get(index)
        return (not live.active) if live is not None else bool(self.timeline().archived[index])

    def touch_patient(self, patient: Patient, stamp: str) -> None:
        """Record that ``patient`` changed at ``stamp`` (its ``updated_at``)."""
        patient.updated_at = stamp
        built = self._indexes.get("users.updated_at")
        if built is not None:
            built.upsert(int(patient.id), epoch(stamp))

    def touch_appointment(self, appt: Appointment) -> None:
        """Re-index ``appt`` after it was created, changed or deleted (deleted ones vanish
        from the ``appointments`` query, as at Healthie)."""
        for name, index in self._indexes.items():
            kind, _, field_name = name.partition(".")
            if kind != "appointments":
                continue
            if appt.deleted_at is not None:
                index.discard(int(appt.id))
            else:
                index.upsert(int(appt.id), epoch(getattr(appt, field_name)))

    def is_materialized(self, user_id: str) -> bool:
        """Whether the patient has been generated (and so may carry changes)."""
        index = self.index_of(user_id)
        return index is not None and index in self._patients

    def appointment(self, appointment_id: str | None) -> Appointment | None:
        """Return the appointment with this id, deleted or not, or None."""
        if appointment_id is None:
            return None
        found = self.appointments.get(appointment_id)
        if found is None and appointment_id.isdigit():
            owner = (int(appointment_id) - APPT_BASE) // APPT_STRIDE
            if 0 <= owner < self.size and owner not in self._patients:
                self._materialize(owner)
                found = self.appointments.get(appointment_id)
        return found

    def clinical_records(self, user_id: str) -> list[ClinicalRecord]:
        """Return the patient's chart notes and chat messages (never served by the API)."""
        index = self.index_of(user_id)
        if index is None:
            return []
        rng = random.Random(mix(self.seed, index, 2))
        token = f"{rng.getrandbits(48):012x}"
        note = (
            f"CHART-NOTE-{token}: Patient {rng.choice(names.CHART_NOTE_PHRASES)}; "
            "plan reviewed with clinician."
        )
        chat = f"CHAT-MESSAGE-{token}: {rng.choice(names.CHAT_PHRASES)}"
        return [
            ClinicalRecord(str(70_000_000 + index * 2), "chart_note", user_id, note),
            ClinicalRecord(str(70_000_001 + index * 2), "chat_message", user_id, chat),
        ]

    def _materialize(self, index: int) -> Patient:
        patient, appointments = build_patient(self, index)
        for appt in appointments:
            self.appointments.setdefault(appt.id, appt)
        for owner in (index - 2, index - 1, index):
            if owner >= 0 and is_group_owner(self.seed, owner):
                group = self.appointments.get(group_appointment_id(owner))
                if group is None:
                    group = group_appointment(self, owner)
                    self.appointments[group.id] = group
                if patient.id in group.attendee_ids:
                    patient.appointment_ids.append(group.id)
        self._patients[index] = patient
        return patient


def generate_org(seed: int, patients: int, now: datetime) -> Organization:
    """Return the organization for ``seed`` with ``patients`` patients, dated around ``now``.

    Same arguments, same organization: every value is drawn from streams seeded by ``seed``.
    ``now`` must be timezone-aware; past appointments fall before it, upcoming ones after.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    rng = random.Random(mix(seed, 0, 1))
    stamp = iso(now.replace(year=now.year - 3))
    provider_count = max(4, min(60, patients // 100 + 4))
    providers: dict[str, Provider] = {}
    for k in range(provider_count):
        pid = str(10_000 + k)
        first, last = rng.choice(names.FIRST_NAMES), rng.choice(names.LAST_NAMES)
        title = rng.choice(names.PROVIDER_TITLES)
        email = f"provider{k}@clinic.example"
        providers[pid] = Provider(pid, first, f"{last}, {title}", email, stamp, stamp)
    groups = {str(6000 + k): UserGroup(str(6000 + k), n) for k, n in enumerate(names.USER_GROUPS)}
    tags = {str(5000 + k): Tag(str(5000 + k), n, stamp, stamp) for k, n in enumerate(names.TAGS)}
    types = {
        str(7000 + k): AppointmentType(str(7000 + k), n, length)
        for k, (n, length) in enumerate(names.APPOINTMENT_TYPES)
    }
    plans = [InsurancePlan(str(8000 + k), n, pid) for k, (n, pid) in enumerate(names.PAYERS)]
    offerings = [Offering(str(9100 + k), n) for k, (n, _) in enumerate(names.OFFERINGS)]
    return Organization(
        seed=seed,
        size=patients,
        now=now,
        providers=providers,
        user_groups=groups,
        tags=tags,
        appointment_types=types,
        insurance_plans=plans,
        offerings=offerings,
        organization_id=str(mix(seed, 0, 5) % 90_000 + 10_000),
    )
