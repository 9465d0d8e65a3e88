"""Draw one synthetic patient (and their appointments) from its own random stream.

Called by :class:`sandbox.org.Organization` the first time a patient is needed. Everything a
patient owns is drawn from ``random.Random(mix(seed, index, 1))``, so a patient's data does not
depend on which other patients were generated before it.
"""

from __future__ import annotations

import json
import random
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sandbox import names
from sandbox.ids import (
    ADDRESS_BASE,
    APPLIED_TAG_BASE,
    APPT_BASE,
    APPT_STRIDE,
    BILLING_BASE,
    PATIENT_BASE,
    POLICY_BASE,
    RECURRING_BASE,
    mix,
)
from sandbox.models import Address, Appointment, BillingItem, Patient, Policy, RecurringAppointment

if TYPE_CHECKING:
    from sandbox.org import Organization

PAST_STATUSES = ("Occurred",) * 7 + ("No-Show", "Cancelled", "Re-Scheduled")
_FOLD = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "ß": "ss", "'": ""})


def iso(moment: datetime) -> str:
    """Serialize a datetime as Healthie's ISO8601DateTime (seconds precision)."""
    return moment.replace(microsecond=0).isoformat()


def ascii_fold(text: str) -> str:
    """Lower-case ASCII rendering of a name for e-mail local parts (Núñez -> nunez)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_FOLD))
    plain = "".join(c for c in decomposed if c.isascii() and (c.isalnum() or c in " -."))
    return plain.lower().replace(" ", "").replace("..", ".")


def is_group_owner(seed: int, index: int) -> bool:
    """Whether patient ``index`` hosts a group appointment with the next two patients."""
    return mix(seed, index, 3) % 25 == 0


def group_appointment_id(owner: int) -> str:
    """Id of the group appointment hosted by patient ``owner``."""
    return str(APPT_BASE + owner * APPT_STRIDE + APPT_STRIDE - 1)


def group_times(seed: int, owner: int, now: datetime) -> tuple[random.Random, datetime, str]:
    """The group appointment's stream (positioned after its dates), date and created stamp."""
    rng = random.Random(mix(seed, owner, 4))
    when = _slot(rng, now, rng.randint(-120, 45))
    return rng, when, iso(min(when, now) - timedelta(days=rng.randint(1, 20)))


def group_appointment(org: Organization, owner: int) -> Appointment:
    """Build the group class patient ``owner`` hosts; attendees are owner and next two."""
    rng, when, stamp = group_times(org.seed, owner, org.now)
    attendees = [str(PATIENT_BASE + i) for i in range(owner, min(owner + 3, org.size))]
    type_id = next(t.id for t in org.appointment_types.values() if t.name == "Group Class")
    return Appointment(
        id=group_appointment_id(owner),
        date=iso(when),
        length=60,
        contact_type="Healthie Video Call",
        pm_status=("Occurred" if when < org.now else None),
        created_at=stamp,
        updated_at=stamp,
        appointment_type_id=type_id,
        provider_id=rng.choice(sorted(org.providers)),
        user_id=None,
        attendee_ids=attendees,
    )


def _slot(rng: random.Random, now: datetime, day_offset: int) -> datetime:
    day = (now + timedelta(days=day_offset)).replace(minute=0, second=0, microsecond=0)
    return day.replace(hour=rng.randint(13, 23)) + timedelta(minutes=rng.choice((0, 15, 30)))


def _phone(rng: random.Random) -> str | None:
    area, mid, last = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    formats = (
        f"({area}) {mid}-{last:04d}",
        f"{area}-{mid}-{last:04d}",
        f"+1 {area} {mid} {last:04d}",
        f"{area}{mid}{last:04d}",
        f"{area}.{mid}.{last:04d}",
        f"1-{area}-{mid}-{last:04d}",
    )
    return None if rng.random() < 0.04 else rng.choice(formats)


def _email(rng: random.Random, first: str, last: str, index: int) -> str | None:
    if rng.random() < 0.03:
        return None
    f, lst = ascii_fold(first), ascii_fold(last)
    local = rng.choice((f"{f}.{lst}", f"{f[:1]}{lst}", f"{f}_{lst}", f"{f}+health"))
    if rng.random() < 0.1:
        local = local.capitalize()  # mixed case exists in the wild
    return f"{local}{index}@{rng.choice(names.EMAIL_DOMAINS)}"


def patient_stream(seed: int, index: int) -> random.Random:
    """The random stream patient ``index`` is drawn from."""
    return random.Random(mix(seed, index, 1))


def patient_head(rng: random.Random, now: datetime) -> tuple[str, str, datetime, datetime, bool]:
    """The first draws of a patient's stream: names, created, updated and archived.

    Shared by :func:`build_patient` and the organization's timeline (which sorts every patient
    by ``updated_at`` without generating them), so the two cannot disagree. Both datetimes
    fall before ``now``.
    """
    first, last = rng.choice(names.FIRST_NAMES), rng.choice(names.LAST_NAMES)
    created = now - timedelta(days=rng.randint(20, 2000), seconds=rng.randint(0, 86399))
    updated = created + (now - created) * rng.random()
    return first, last, created, updated, rng.random() < 0.04


def build_patient(org: Organization, index: int) -> tuple[Patient, list[Appointment]]:
    """Generate patient ``index`` of ``org`` with its own (non-group) appointments."""
    rng = patient_stream(org.seed, index)
    now, pid = org.now, str(PATIENT_BASE + index)
    first, last, created, updated, archived = patient_head(rng, now)
    sex = rng.choice(("Female", "Male", "Female", "Male", "Intersex", None))
    city, state, zip_prefix = rng.choice(names.CITIES)
    location = None
    if rng.random() < 0.92:
        location = Address(
            id=str(ADDRESS_BASE + index),
            line1=f"{rng.randint(1, 9999)} {rng.choice(names.STREETS)}",
            line2=rng.choice((None, None, f"Apt {rng.randint(1, 40)}", "Suite 2B")),
            city=city,
            state=state,
            zip=f"{zip_prefix}{rng.randint(0, 99):02d}",
            country="US",
        )
    provider_ids = sorted(org.providers)
    dietitian = rng.choice(provider_ids)
    others = [p for p in rng.sample(provider_ids, 2) if p != dietitian][: rng.randint(0, 2)]
    tag_ids = rng.sample(sorted(org.tags), rng.choice((0, 0, 1, 1, 2, 3)))
    metadata = None
    if rng.random() < 0.7:
        metadata = json.dumps(
            {
                "preferred_contact": rng.choice(("sms", "email", "phone")),
                "referral_source": rng.choice(
                    ("Instagram", "Physician referral", "Employer", "Google")
                ),
                "employer_id": f"EMP-{rng.randint(100, 999)}",
                "language": rng.choice(("en", "es", "vi", "pl", "fr")),
            },
            ensure_ascii=False,
            sort_keys=True,
        )
    patient = Patient(
        id=pid,
        first_name=first,
        last_name=last,
        legal_name=(f"{first} {last}" if rng.random() < 0.3 else None),
        pronouns=rng.choice(("she/her", "he/him", "they/them", None)),
        email=_email(rng, first, last, index),
        phone_number=_phone(rng),
        dob=(now - timedelta(days=rng.randint(365 * 2, 365 * 95))).date().isoformat(),
        gender=rng.choice(("Female", "Male", "Non-binary", "Other", None)),
        sex=sex,
        timezone=rng.choice(names.TIMEZONES),
        active=not archived,
        archived_at=(iso(updated) if archived else None),
        created_at=iso(created),
        updated_at=iso(updated),
        record_identifier=(f"MRN-{rng.randint(0, 9_999_999):07d}" if rng.random() < 0.6 else None),
        additional_record_identifier=(f"EXT{index:06d}" if rng.random() < 0.2 else None),
        metadata=metadata,
        user_group_id=rng.choice((None, *sorted(org.user_groups))),
        location=location,
        dietitian_id=dietitian,
        provider_ids=others,
        applied_tags={t: str(APPLIED_TAG_BASE + index * 8 + k) for k, t in enumerate(tag_ids)},
        policies=_policies(org, rng, index, created),
        appointment_ids=[],
        billing_items=_billing(org, rng, index, created),
    )
    appointments = _appointments(org, index, patient)
    patient.appointment_ids.extend(a.id for a in appointments)
    return patient, appointments


def _policies(org: Organization, rng: random.Random, index: int, created: datetime) -> list[Policy]:
    out = []
    for k, priority in enumerate(("primary", "secondary")[: rng.choice((0, 1, 1, 1, 2))]):
        start = created - timedelta(days=rng.randint(0, 400))
        plan = rng.choice(org.insurance_plans)
        out.append(
            Policy(
                id=str(POLICY_BASE + index * 4 + k),
                name=plan.payer_name,
                num=f"{rng.choice('ABCDWXYZ')}{rng.randint(10**8, 10**9 - 1)}",
                group_num=(f"G{rng.randint(1000, 99999)}" if rng.random() < 0.8 else None),
                priority_type=priority,
                holder_relationship=rng.choice(
                    ("Self", "Self", "Self", "Spouse", "Child", "Other")
                ),
                effective_start=iso(start),
                effective_end=(iso(start + timedelta(days=365)) if rng.random() < 0.3 else None),
                updated_at=iso(created),
                insurance_plan=plan,
            )
        )
    return out


def _billing(
    org: Organization, rng: random.Random, index: int, created: datetime
) -> list[BillingItem]:
    out = []
    for k in range(rng.choice((0, 0, 1, 2, 3))):
        name, price = rng.choice(names.OFFERINGS)
        offering = next(o for o in org.offerings if o.name == name)
        state = rng.choice(("SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED", "SCHEDULED"))
        when = iso(created + (org.now - created) * rng.random())
        paid = price if state == "SUCCEEDED" else "0.0"
        out.append(
            BillingItem(str(BILLING_BASE + index * 8 + k), paid, "usd", state, when, when, offering)
        )
    return out


DAY = 86_400


@dataclass(frozen=True, slots=True)
class Slot:
    """When one generated appointment happens and was last touched, in epoch seconds."""

    id: str
    date: int
    created: int
    updated: int
    deleted: bool


def appointment_stream(seed: int, index: int) -> random.Random:
    """The random stream of patient ``index``'s own appointments (apart from the patient's,
    so the timeline can list appointments by ``updated_at`` without generating patients)."""
    return random.Random(mix(seed, index, 6))


def appointment_slots(
    rng: random.Random, now: datetime, index: int
) -> tuple[list[Slot], RecurringAppointment | None, list[int]]:
    """Draw the dates of patient ``index``'s appointments; each slot's remaining attributes
    come from a stream seeded by the seed returned alongside, so reading dates stays cheap.

    Integer arithmetic in ``now``'s UTC offset (about 3 µs a slot): the timeline draws this
    for every patient to order 100,000 patients' appointments without generating them.
    """
    shift = _offset_seconds(now)
    local_now = int(now.timestamp()) + shift
    now_s = local_now - shift
    count = rng.choice((0, 1, 2, 3, 4, 5, 6, 8))
    recurring = None
    if count >= 4 and rng.random() < 0.2:
        recurring = RecurringAppointment(str(RECURRING_BASE + index), "Weekly", str(count))
    slots, rest = [], []
    for k in range(count):
        offset = rng.randint(-365, 60) if recurring is None else 7 * (k - count // 2)
        day = local_now + offset * DAY
        when = day - day % DAY + rng.randint(13, 23) * 3600 + rng.choice((0, 15, 30)) * 60 - shift
        until = min(when, now_s)
        created = until - rng.randint(1, 60) * DAY
        updated = created + int((until - created) * rng.random())
        deleted = rng.random() < 0.05
        ident = str(APPT_BASE + index * APPT_STRIDE + k)
        slots.append(Slot(ident, when, created, updated, deleted))
        rest.append(rng.getrandbits(64))
    return slots, recurring, rest


def _offset_seconds(now: datetime) -> int:
    offset = now.utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _at(now: datetime, seconds: int) -> str:
    return iso(datetime.fromtimestamp(seconds, tz=now.tzinfo))


def _appointments(org: Organization, index: int, patient: Patient) -> list[Appointment]:
    out = []
    types = [t for t in org.appointment_types.values() if t.name != "Group Class"]
    slots, recurring, seeds = appointment_slots(appointment_stream(org.seed, index), org.now, index)
    for slot, seed in zip(slots, seeds, strict=True):
        rng = random.Random(seed)
        kind = rng.choice(types)
        contact = rng.choice(names.CONTACT_TYPES)
        past = slot.date < int(org.now.timestamp())
        status = rng.choice(PAST_STATUSES) if past else rng.choice((None, None, None, "Cancelled"))
        office_id, office = rng.choice(names.OFFICES)
        out.append(
            Appointment(
                id=slot.id,
                date=_at(org.now, slot.date),
                length=kind.length,
                contact_type=contact,
                pm_status=status,
                created_at=_at(org.now, slot.created),
                updated_at=_at(org.now, slot.updated),
                appointment_type_id=kind.id,
                provider_id=(patient.dietitian_id or rng.choice(sorted(org.providers))),
                user_id=patient.id,
                attendee_ids=[patient.id],
                location=(office if contact == "In Person" else None),
                appointment_location_id=(office_id if contact == "In Person" else None),
                deleted_at=(_at(org.now, slot.updated) if slot.deleted else None),
                recurring_appointment=recurring,
            )
        )
    return out
