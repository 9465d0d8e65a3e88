"""A deterministic mix of plausible changes, for the demo and load tests.

:func:`random_changes` picks patients and changes from the random stream it is given, and
applies them through the sandbox's public methods, so they emit the same webhooks as any
other change. With the same sandbox state and seed, the changes are the same.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import TYPE_CHECKING

from sandbox import names
from sandbox.changes import PM_STATUSES
from sandbox.generate import ascii_fold, iso
from sandbox.ids import PATIENT_BASE

if TYPE_CHECKING:
    from sandbox.core import Change, Sandbox

KINDS = (
    ("update_client", 35),
    ("apply_tag", 15),
    ("remove_applied_tag", 10),
    ("update_appointment", 20),
    ("create_appointment", 12),
    ("delete_appointment", 8),
)


def random_changes(sb: Sandbox, count: int, rng: random.Random) -> list[Change]:
    """Apply ``count`` changes drawn from ``rng`` to ``sb`` and return them in order."""
    kinds, weights = zip(*KINDS, strict=True)
    out = []
    for _ in range(count):
        user_id = str(PATIENT_BASE + rng.randrange(sb.org.size))
        kind = rng.choices(kinds, weights)[0]
        out.append(_one(sb, kind, user_id, rng))
    return out


def _one(sb: Sandbox, kind: str, user_id: str, rng: random.Random) -> Change:
    patient = sb.org.patient(user_id)
    assert patient is not None
    live = [
        a
        for a in (sb.org.appointment(i) for i in patient.appointment_ids)
        if a is not None and a.deleted_at is None and a.user_id == user_id
    ]
    if kind == "apply_tag" or (kind == "remove_applied_tag" and not patient.applied_tags):
        free = sorted(set(sb.org.tags) - set(patient.applied_tags))
        if free:
            return sb.apply_tag(user_id, rng.choice(free))
        kind = "update_client"
    if kind == "remove_applied_tag":
        return sb.remove_applied_tag(user_id, rng.choice(sorted(patient.applied_tags)))
    if kind in ("update_appointment", "delete_appointment") and live:
        appt = rng.choice(live)
        if kind == "delete_appointment":
            return sb.delete_appointment(appt.id)
        choices = [s for s in PM_STATUSES if s != appt.pm_status]
        return sb.update_appointment(appt.id, pm_status=rng.choice(choices))
    if kind in ("update_appointment", "delete_appointment", "create_appointment"):
        day = sb.clock + timedelta(days=rng.randint(1, 30))
        when = day.replace(hour=rng.randint(13, 22), minute=0, second=0)
        return sb.create_appointment(user_id, date=iso(when), contact_type="Healthie Video Call")
    return sb.update_client(user_id, **_client_fields(patient.first_name, patient.id, rng))


def _client_fields(first: str, user_id: str, rng: random.Random) -> dict[str, object]:
    pick = rng.randrange(5)
    if pick == 0:
        return {"email": f"{ascii_fold(first)}.{rng.randrange(10_000)}@example.com"}
    if pick == 1:
        return {
            "phone_number": f"({rng.randint(201, 989)}) {rng.randint(200, 999)}-"
            f"{rng.randint(0, 9999):04d}"
        }
    if pick == 2:
        return {"last_name": rng.choice(names.LAST_NAMES)}
    if pick == 3:
        return {
            "metadata": json.dumps(
                {"preferred_contact": rng.choice(("sms", "email")), "nps": rng.randint(0, 10)},
                sort_keys=True,
            )
        }
    return {
        "timezone": rng.choice(names.TIMEZONES),
        "pronouns": rng.choice(("she/her", "he/him", "they/them")),
    }
