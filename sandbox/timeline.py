"""Whole-organization orderings (by ``updated_at``, ``created_at``, ``date``) without
generating the organization.

Healthie's sweep-style queries (``users(order_by: UPDATED_AT_DESC)``,
``appointments(order_by: UPDATED_AT_DESC)``) page through *every* record in a global order.
Generating 100,000 patients to sort them would take seconds, so the organization keeps a
:class:`KeyIndex` per ordering, built lazily from the cheap first draws of each record's
random stream (:func:`sandbox.generate.patient_head`, :func:`~sandbox.generate.appointment_slots`)
and maintained by :class:`~sandbox.org.Organization` on every change afterwards.

Every generated timestamp falls before the sandbox's start clock and every change takes the
clock's next second, so changed records always sort above generated ones.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sandbox.generate import (
    appointment_slots,
    appointment_stream,
    group_appointment_id,
    group_times,
    is_group_owner,
    patient_head,
    patient_stream,
)
from sandbox.ids import PATIENT_BASE

if TYPE_CHECKING:
    from sandbox.org import Organization

Key = tuple[int, int]  # (epoch seconds, numeric id): ties broken by id


def epoch(moment: datetime | str) -> int:
    """Whole epoch seconds of a datetime or an ISO 8601 string (as the API serializes it)."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return (moment - _EPOCH) // _SECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


class KeyIndex:
    """Record ids kept sorted by ``(timestamp, id)``; keyset walks in either direction."""

    def __init__(self, pairs: Iterable[Key]) -> None:
        self._keys: list[Key] = sorted(pairs)
        self._at: dict[int, int] = {ident: ts for ts, ident in self._keys}

    def __len__(self) -> int:
        return len(self._keys)

    def upsert(self, ident: int, ts: int) -> None:
        """Insert ``ident`` at ``ts``, moving it if it was already indexed."""
        self.discard(ident)
        insort(self._keys, (ts, ident))
        self._at[ident] = ts

    def discard(self, ident: int) -> None:
        """Remove ``ident`` if present."""
        old = self._at.pop(ident, None)
        if old is not None:
            del self._keys[bisect_left(self._keys, (old, ident))]

    def walk(self, *, descending: bool, after: Key | None = None) -> Iterator[Key]:
        """Yield keys in order, starting strictly after ``after`` (a keyset cursor).

        Callers hold the sandbox lock while walking, so the list cannot change underneath.
        """
        keys = self._keys
        if descending:
            pos = len(keys) if after is None else bisect_left(keys, after)
            for j in range(pos - 1, -1, -1):
                yield keys[j]
        else:
            pos = 0 if after is None else bisect_right(keys, after)
            for j in range(pos, len(keys)):
                yield keys[j]


@dataclass(slots=True)
class PatientTimeline:
    """Generated ``created_at``/``updated_at`` (epoch seconds) and archived flags, per index."""

    created: array[int]
    updated: array[int]
    archived: bytearray


def patient_timeline(org: Organization) -> PatientTimeline:
    """Draw every patient's head (about 8 µs each; patients are not generated)."""
    created, updated, archived = array("q"), array("q"), bytearray(org.size)
    for index in range(org.size):
        _, _, made, touched, gone = patient_head(patient_stream(org.seed, index), org.now)
        created.append(epoch(made))
        updated.append(epoch(touched))
        archived[index] = gone
    return PatientTimeline(created, updated, archived)


def patient_keys(org: Organization, timeline: PatientTimeline, field: str) -> Iterator[Key]:
    """``(field, id)`` keys of every patient: generated values, or the live record's."""
    column = timeline.updated if field == "updated_at" else timeline.created
    for index in range(org.size):
        live = org.materialized(index)
        ts = column[index] if live is None else epoch(getattr(live, field))
        yield ts, PATIENT_BASE + index


def appointment_keys(org: Organization, field: str) -> Iterator[Key]:
    """``(field, id)`` keys of every appointment the ``appointments`` query can show (not
    deleted): generated ones of unmaterialized patients, plus every live record."""
    for index in range(org.size):
        if org.materialized(index) is None:
            slots, _, _ = appointment_slots(appointment_stream(org.seed, index), org.now, index)
            for slot in slots:
                if not slot.deleted:
                    yield getattr(slot, _SLOT_FIELDS[field]), int(slot.id)
        if is_group_owner(org.seed, index) and group_appointment_id(index) not in org.appointments:
            _, when, stamp = group_times(org.seed, index, org.now)
            ts = epoch(when) if field == "date" else epoch(stamp)
            yield ts, int(group_appointment_id(index))
    for appt in org.appointments.values():
        if appt.deleted_at is None:
            yield epoch(getattr(appt, field)), int(appt.id)


_SLOT_FIELDS = {"date": "date", "created_at": "created", "updated_at": "updated"}
