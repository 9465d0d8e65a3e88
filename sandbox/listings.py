"""Organization-wide listings: ``users``, ``appointments`` and ``appliedTags``.

These are what a missed-change sweep pages through, so they are served from the keyset
indexes of :mod:`sandbox.timeline` rather than by generating and sorting the organization:
a page of 100 costs about 100 record look-ups whatever the organization's size.

Pagination is Relay-style (``first``/``after``, ``nodes``/``edges``/``page_info``). Ordered
listings use keyset cursors shaped like Healthie's (base64 of ``{"k":[<timestamp>, <id>]}``),
so a record that changes while a sweep pages moves to the top instead of shifting the pages
after it. ``total_count`` is computed only when selected (graphql-core calls a callable).

Semantics follow the guides where they say something (``guides/patient.md``,
``guides/scheduling_appointments.md``):

* ``users``: ``active_status`` is "active" or "archived"; ``keywords`` matches every
  whitespace-separated term against id, names, record identifier, e-mail and dob (this filter
  generates the patients it inspects, so it costs one patient per candidate).
* ``appointments``: ``filter`` defaults to future appointments ("future"/"upcoming", "past"/
  "ended", "didnt-occur", "all"); without ``user_id`` or ``is_org: true`` only the current
  user's appointments are listed; ``is_active`` drops cancelled, re-scheduled and no-show
  ones unless ``with_all_statuses``. The query has no argument to show deleted appointments,
  and deleted appointments "are no longer visible", so they are never listed.
* ``appliedTags``: newest first (by id); removed tags are gone.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from graphql import GraphQLError

from sandbox.generate import iso
from sandbox.ids import APPLIED_TAG_BASE, CREATED_BASE, PATIENT_BASE
from sandbox.models import AppliedTag, Appointment, Patient
from sandbox.timeline import Key, KeyIndex, epoch

if TYPE_CHECKING:
    from sandbox.core import Sandbox
    from sandbox.org import Organization

MAX_PAGE = 100
T = TypeVar("T")
INACTIVE_STATUSES = ("Cancelled", "Re-Scheduled", "No-Show")


def encode_cursor(*parts: str) -> str:
    """An opaque cursor shaped like Healthie's (base64 of ``{"k":[...]}``)."""
    return base64.b64encode(json.dumps({"k": list(parts)}, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str, size: int = 1) -> list[str]:
    """Inverse of :func:`encode_cursor` for ``size`` parts; a GraphQL error otherwise."""
    try:
        parts = json.loads(base64.b64decode(cursor, validate=True))["k"]
    except (ValueError, KeyError, TypeError) as exc:
        raise GraphQLError(f"Invalid cursor: {cursor}") from exc
    if not isinstance(parts, list) or len(parts) != size:
        raise GraphQLError(f"Invalid cursor: {cursor}")
    return [str(p) for p in parts]


def _key_cursor(cursor: str) -> Key:
    stamp, ident = decode_cursor(cursor, 2)
    try:
        return epoch(stamp), int(ident)
    except ValueError as exc:
        raise GraphQLError(f"Invalid cursor: {cursor}") from exc


def page_size(first: int | None) -> int:
    """``first`` capped at the page maximum (100 when absent, as the complexity rules assume)."""
    if first is not None and first < 0:
        raise GraphQLError("Argument 'first' on Field must be a non-negative integer")
    return min(first if first is not None else MAX_PAGE, MAX_PAGE)


def connection(
    items: Sequence[Any],
    cursors: Sequence[str],
    total: int | Callable[[Any], int],
    has_next: bool,
    has_previous: bool,
) -> dict[str, Any]:
    """A Relay-style connection; ``total`` may be a callable, evaluated only if selected."""
    return {
        "nodes": list(items),
        "edges": [{"cursor": c, "node": n} for c, n in zip(cursors, items, strict=True)],
        "total_count": total,
        "page_info": {
            "has_next_page": has_next,
            "has_previous_page": has_previous,
            "start_cursor": cursors[0] if cursors else None,
            "end_cursor": cursors[-1] if cursors else None,
        },
    }


def _take(
    candidates: Iterator[tuple[str, Callable[[], T | None]]], size: int, *, filtered: bool
) -> tuple[list[T], list[str], bool]:
    """The first ``size`` candidates that resolve to a record, with their cursors, and whether
    more follow. Unfiltered listings answer that without resolving (generating) the next."""
    items: list[T] = []
    cursors: list[str] = []
    for cursor, resolve in candidates:
        if len(items) == size and not filtered:
            return items, cursors, True
        item = resolve()
        if item is None:
            continue
        if len(items) == size:
            return items, cursors, True
        items.append(item)
        cursors.append(cursor)
    return items, cursors, False


def _order(order_by: str) -> tuple[str, bool]:
    field, _, direction = order_by.lower().rpartition("_")
    return field, direction == "desc"


def _stamp(org: Organization, ts: int) -> str:
    return iso(datetime.fromtimestamp(ts, tz=org.now.tzinfo))


# -- users ---------------------------------------------------------------------------------
def _keyword_match(patient: Patient, terms: list[str]) -> bool:
    values = (
        patient.id,
        patient.first_name,
        patient.last_name,
        patient.legal_name,
        patient.record_identifier,
        patient.email,
        patient.dob,
    )
    haystack = [v.lower() for v in values if v]
    return all(any(term in v for v in haystack) for term in terms)


def users(
    sb: Sandbox,
    *,
    first: int | None,
    after: str | None,
    order_by: str | None,
    keywords: str | None,
    active_status: str | None,
) -> dict[str, Any] | None:
    """``users`` ordered by ``updated_at``/``created_at``, or filtered; None when the plain
    id-ordered listing applies (the caller serves it)."""
    org = sb.org
    field, descending = _order(order_by) if order_by else ("id", False)
    if field not in ("id", "updated_at", "created_at"):
        return None
    if field == "id" and keywords is None and active_status is None:
        return None
    archived = {"active": False, "archived": True}.get((active_status or "").lower())
    terms = (keywords or "").lower().split()

    def accept(index: int) -> Patient | None:
        if archived is not None and org.is_archived(index) != archived:
            return None
        patient = org.patient(str(PATIENT_BASE + index))
        if patient is None or (terms and not _keyword_match(patient, terms)):
            return None
        return patient

    size = page_size(first)
    if field == "id":
        start = 0 if after is None else int(decode_cursor(after)[0]) - PATIENT_BASE + 1
        candidates: Iterator[tuple[str, Callable[[], Patient | None]]] = (
            (encode_cursor(str(PATIENT_BASE + i)), partial(accept, i))
            for i in range(max(0, start), org.size)
        )
    else:
        index = org.patient_index(field)
        keys = index.walk(descending=descending, after=_key_cursor(after) if after else None)
        candidates = (
            (encode_cursor(_stamp(org, ts), str(ident)), partial(accept, ident - PATIENT_BASE))
            for ts, ident in keys
        )

    def total(_info: Any = None) -> int:
        if archived is None and not terms:
            return org.size
        return sum(1 for i in range(org.size) if accept(i) is not None)

    filtered = archived is not None or bool(terms)
    items, cursors, more = _take(candidates, size, filtered=filtered)
    return connection(items, cursors, total, more, after is not None)


# -- appointments ----------------------------------------------------------------------------
APPOINTMENT_FILTERS = ("future", "upcoming", "past", "ended", "didnt-occur", "all")


def appointments(
    sb: Sandbox,
    current_user_id: str,
    *,
    first: int | None,
    after: str | None,
    order_by: str | None,
    filter: str | None,  # noqa: A002 - Healthie's argument name
    is_org: bool | None,
    user_id: str | None,
    provider_id: str | None,
    is_active: bool | None,
    with_all_statuses: bool | None,
) -> dict[str, Any]:
    """The ``appointments`` query (see the module docstring for its rules)."""
    org = sb.org
    if order_by in (None, "UNSORTED"):
        order_by = "DATE_ASC"
    field, descending = _order(order_by)
    which = (filter or "future").lower()
    if which not in APPOINTMENT_FILTERS:
        options = ", ".join(APPOINTMENT_FILTERS)
        raise GraphQLError(f"Invalid filter: {filter}. Options are {options}")
    now = iso(sb.clock)

    def accept(appt: Appointment | None) -> Appointment | None:
        if appt is None or appt.deleted_at is not None:
            return None
        if user_id is not None:
            if appt.user_id != user_id and user_id not in appt.attendee_ids:
                if appt.provider_id != user_id:
                    return None
        elif not is_org and appt.provider_id != current_user_id:
            return None
        if provider_id is not None and appt.provider_id != provider_id:
            return None
        if which in ("future", "upcoming") and appt.date < now:
            return None
        if which in ("past", "ended") and appt.date >= now:
            return None
        if not with_all_statuses:
            inactive = appt.pm_status in INACTIVE_STATUSES
            if which == "didnt-occur" and not inactive:
                return None
            if is_active and inactive:
                return None
        return appt

    patient = org.patient(user_id) if user_id is not None else None
    if patient is not None:
        own = [a for a in map(org.appointment, patient.appointment_ids) if a is not None]
        index = KeyIndex((epoch(getattr(a, field)), int(a.id)) for a in own if not a.deleted_at)
    else:
        index = org.appointment_index(field)
    start = _key_cursor(after) if after else None
    candidates = (
        (encode_cursor(_stamp(org, ts), str(ident)), partial(_visible, org, accept, ident))
        for ts, ident in index.walk(descending=descending, after=start)
    )
    unfiltered = (patient is not None or is_org) and provider_id is None
    everything = unfiltered and which == "all" and (with_all_statuses or not is_active)
    items, cursors, more = _take(candidates, page_size(first), filtered=not everything)

    def total(_info: Any = None) -> int:
        if everything:
            return len(index)
        return sum(  # generates the patients behind every candidate
            1
            for _, ident in index.walk(descending=False)
            if accept(org.appointment(str(ident))) is not None
        )

    return connection(items, cursors, total, more, after is not None)


def _visible(
    org: Organization, accept: Callable[[Appointment | None], Appointment | None], ident: int
) -> Appointment | None:
    return accept(org.appointment(str(ident)))


# -- applied tags ----------------------------------------------------------------------------
def applied_tags(
    sb: Sandbox,
    *,
    first: int | None,
    after: str | None,
    tag_id: str | None,
    updated_after: str | None,
    updated_before: str | None,
) -> dict[str, Any]:
    """``appliedTags``, newest first. Tags applied through the sandbox come from a small
    log; generated ones are read patient by patient (highest index first), skipping patients
    whose creation falls outside the ``updated_*`` window without generating them."""
    org = sb.org
    lower = epoch(updated_after) if updated_after else None
    upper = epoch(updated_before) if updated_before else None
    cursor = int(decode_cursor(after)[0]) if after else None

    def in_window(stamp: str | int) -> bool:
        ts = stamp if isinstance(stamp, int) else epoch(stamp)
        return (lower is None or ts > lower) and (upper is None or ts < upper)

    def wanted(tag: AppliedTag) -> AppliedTag | None:
        if tag_id is not None and tag.tag_id != tag_id:
            return None
        return tag if in_window(tag.updated_at) else None

    def logged() -> Iterator[AppliedTag]:
        for ident in sorted(map(int, org.applied), reverse=True):
            if cursor is None or ident < cursor:
                yield org.applied[str(ident)]

    def generated() -> Iterator[AppliedTag]:
        # Generated tags all predate the sandbox's start: skip them for a later window.
        if lower is not None and lower >= epoch(org.now):
            return
        timeline = org.timeline() if lower is not None or upper is not None else None
        top = org.size - 1
        if cursor is not None and cursor < CREATED_BASE:
            top = min(top, (cursor - APPLIED_TAG_BASE) // 8)
        for index in range(top, -1, -1):
            if timeline is not None and org.materialized(index) is None:
                if not in_window(timeline.created[index]):
                    continue
            patient = org.patient(str(PATIENT_BASE + index))
            assert patient is not None
            own = sorted(
                ((int(a), t) for t, a in patient.applied_tags.items() if int(a) < CREATED_BASE),
                reverse=True,
            )
            for ident, tag in own:
                if cursor is None or ident < cursor:
                    stamp = patient.created_at
                    yield AppliedTag(str(ident), tag, patient.id, stamp, stamp)

    def candidates() -> Iterator[tuple[str, Callable[[], AppliedTag | None]]]:
        for tag in logged():
            yield encode_cursor(tag.id), partial(wanted, tag)
        for tag in generated():
            yield encode_cursor(tag.id), partial(wanted, tag)

    items, cursors, more = _take(candidates(), page_size(first), filtered=True)

    def total(_info: Any = None) -> int:
        nonlocal cursor
        cursor = None
        return sum(1 for _, resolve in candidates() if resolve() is not None)

    return connection(items, cursors, total, more, after is not None)
