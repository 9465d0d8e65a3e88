"""Sandbox records the tests know exist: the org's lookups return None for an unknown id,
and these fail the test there instead of handing None on."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sandbox.models import Appointment, Patient
from sandbox.org import Organization


def patient_of(org: Organization, user_id: str) -> Patient:
    """The patient ``user_id`` (generated on first use, as ``org.patient`` does)."""
    found = org.patient(user_id)
    assert found is not None, f"no patient {user_id!r} in the sandbox org"
    return found


def patients_of(org: Organization, user_ids: Iterable[str]) -> Iterator[Patient]:
    """The patients ``user_ids``, generated lazily one by one (like ``map(org.patient, ...)``)."""
    return (patient_of(org, user_id) for user_id in user_ids)


def appointment_of(org: Organization, appointment_id: str) -> Appointment:
    """The appointment ``appointment_id``, deleted or not (as ``org.appointment`` does)."""
    found = org.appointment(appointment_id)
    assert found is not None, f"no appointment {appointment_id!r} in the sandbox org"
    return found
