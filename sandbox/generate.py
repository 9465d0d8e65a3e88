"""Draw one synthetic patient (and their appointments) from its own random stream.

Called by :class:`sandbox.org.Organization` the first time a patient is needed. Everything a
patient owns is drawn from ``random.Random(mix(seed, index, 1))``, so a patient's data does not
depend on which other patients were generated before it.
"""

from __future__ import annotations

import json
import random
import unicodedata
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


def group_appointment(org: Organization, owner: int) -> Appointment:
    """Build the group class patient ``owner`` hosts; attendees are owner and next two."""
    rng = random.Random(mix(org.seed, owner, 4))
    when = _slot(rng, org.now, rng.randint(-120, 45))
    stamp = iso(min(when, org.now) - timedelta(days=rng.randint(1, 20)))
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


def build_patient(org: Organization, index: int) -> tuple[Patient, list[Appointment]]:
    """Generate patient ``index`` of ``org`` with its own (non-group) appointments."""
    rng = random.Random(mix(org.seed, index, 1))
    now, pid = org.now, str(PATIENT_BASE + index)
    first, last = rng.choice(names.FIRST_NAMES), rng.choice(names.LAST_NAMES)
    created = now - timedelta(days=rng.randint(20, 2000), seconds=rng.randint(0, 86399))
    updated = created + (now - created) * rng.random()
    archived = rng.random() < 0.04
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
    appointments = _appointments(org, rng, index, patient)
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


def _appointments(
    org: Organization, rng: random.Random, index: int, patient: Patient
) -> list[Appointment]:
    out = []
    types = [t for t in org.appointment_types.values() if t.name != "Group Class"]
    count = rng.choice((0, 1, 2, 3, 4, 5, 6, 8))
    recurring = None
    if count >= 4 and rng.random() < 0.2:
        recurring = RecurringAppointment(str(RECURRING_BASE + index), "Weekly", str(count))
    for k in range(count):
        offset = rng.randint(-365, 60) if recurring is None else 7 * (k - count // 2)
        when = _slot(rng, org.now, offset)
        kind = rng.choice(types)
        contact = rng.choice(names.CONTACT_TYPES)
        past = when < org.now
        status = rng.choice(PAST_STATUSES) if past else rng.choice((None, None, None, "Cancelled"))
        created = min(when, org.now) - timedelta(days=rng.randint(1, 60))
        updated = created + (min(when, org.now) - created) * rng.random()
        office_id, office = rng.choice(names.OFFICES)
        out.append(
            Appointment(
                id=str(APPT_BASE + index * APPT_STRIDE + k),
                date=iso(when),
                length=kind.length,
                contact_type=contact,
                pm_status=status,
                created_at=iso(created),
                updated_at=iso(updated),
                appointment_type_id=kind.id,
                provider_id=(patient.dietitian_id or rng.choice(sorted(org.providers))),
                user_id=patient.id,
                attendee_ids=[patient.id],
                location=(office if contact == "In Person" else None),
                appointment_location_id=(office_id if contact == "In Person" else None),
                deleted_at=(iso(updated) if rng.random() < 0.05 else None),
                recurring_appointment=recurring,
            )
        )
    return out
