"""Read resolvers: the subset schema wired to the organization.

Most fields need no resolver: records carry attributes named like the GraphQL fields, and
graphql-core's default resolver reads them. Resolvers here follow relations (ids to
records), apply the sandbox's visibility rules (deleted appointments only with
``include_deleted``), and paginate connections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from graphql import GraphQLError, GraphQLResolveInfo

from sandbox import listings
from sandbox.ids import PATIENT_BASE
from sandbox.listings import connection, decode_cursor, encode_cursor
from sandbox.models import Appointment, Patient, Provider
from sandbox.timeline import epoch

if TYPE_CHECKING:
    from sandbox.core import Sandbox

Resolver = Callable[..., Any]


def sandbox_of(info: GraphQLResolveInfo[Sandbox]) -> Sandbox:
    """The :class:`~sandbox.core.Sandbox` serving this request (the execution context)."""
    return info.context


def paginate(records: Sequence[Any], first: int | None, after: str | None) -> dict[str, Any]:
    """Page a list of records that have an ``id``, in the given order."""
    start = 0
    if after is not None:
        key = decode_cursor(after)[0]
        ids = [r.id for r in records]
        start = ids.index(key) + 1 if key in ids else len(records)
    size = listings.page_size(first)
    page = records[start : start + size]
    return connection(
        page,
        [encode_cursor(r.id) for r in page],
        len(records),
        start + size < len(records),
        start > 0,
    )


# -- Query ---------------------------------------------------------------------------------
def q_user(
    _: None, info: GraphQLResolveInfo[Sandbox], id: str | None = None
) -> Patient | Provider | None:  # noqa: A002
    org = sandbox_of(info).org
    return org.patient(id) or (org.providers.get(id) if id else None)


def q_current_user(_: None, info: GraphQLResolveInfo[Sandbox]) -> Provider:
    org = sandbox_of(info).org
    return org.providers[min(org.providers)]  # the API key belongs to the first provider


def q_users(
    _: None,
    info: GraphQLResolveInfo[Sandbox],
    first: int | None = None,
    after: str | None = None,
    ids: list[str] | None = None,
    order_by: str | None = None,
    keywords: str | None = None,
    active_status: str | None = None,
) -> dict[str, Any]:
    sb = sandbox_of(info)
    org = sb.org
    if ids is not None:
        found = [p for p in (org.patient(i) for i in ids) if p is not None]
        return paginate(found, first, after)
    served = listings.users(
        sb,
        first=first,
        after=after,
        order_by=order_by,
        keywords=keywords,
        active_status=active_status,
    )
    if served is not None:
        return served
    if order_by is not None:
        return paginate(sorted_patients(sb, order_by), first, after)
    start = 0 if after is None else int(decode_cursor(after)[0]) - PATIENT_BASE + 1
    start = max(0, min(start, org.size))
    size = listings.page_size(first)
    keys = [str(PATIENT_BASE + i) for i in range(start, min(start + size, org.size))]
    patients = [org.patient(k) for k in keys]
    return connection(
        patients,
        [encode_cursor(k) for k in keys],
        org.size,
        start + size < org.size,
        start > 0,
    )


def sorted_patients(sb: Sandbox, order_by: str) -> list[Patient]:
    """Every patient ordered by a name or e-mail key (generates all patients: the timestamp
    orders are served from indexes by :func:`sandbox.listings.users`)."""
    field, _, direction = order_by.lower().rpartition("_")
    if field not in ("email", "first_name", "last_name"):
        raise GraphQLError(f"The sandbox does not support order_by: {order_by}")
    patients = [p for p in (sb.org.patient(i) for i in sb.org.patient_ids()) if p is not None]
    return sorted(
        patients, key=lambda p: (getattr(p, field) or "", p.id), reverse=direction == "desc"
    )


def q_appointments(
    _: None,
    info: GraphQLResolveInfo[Sandbox],
    first: int | None = None,
    after: str | None = None,
    order_by: str | None = None,
    filter: str | None = None,  # noqa: A002 - Healthie's argument name
    is_org: bool | None = None,
    user_id: str | None = None,
    provider_id: str | None = None,
    is_active: bool | None = None,
    with_all_statuses: bool | None = None,
) -> dict[str, Any]:
    return listings.appointments(
        sandbox_of(info),
        q_current_user(None, info).id,
        first=first,
        after=after,
        order_by=order_by,
        filter=filter,
        is_org=is_org,
        user_id=user_id,
        provider_id=provider_id,
        is_active=is_active,
        with_all_statuses=with_all_statuses,
    )


def q_applied_tags(
    _: None,
    info: GraphQLResolveInfo[Sandbox],
    first: int | None = None,
    after: str | None = None,
    tag_id: str | None = None,
    updated_after: str | None = None,
    updated_before: str | None = None,
) -> dict[str, Any]:
    return listings.applied_tags(
        sandbox_of(info),
        first=first,
        after=after,
        tag_id=tag_id,
        updated_after=updated_after,
        updated_before=updated_before,
    )


def q_appointment(
    _: None,
    info: GraphQLResolveInfo[Sandbox],
    id: str | None = None,  # noqa: A002
    include_deleted: bool | None = None,
) -> Appointment | None:
    appt = sandbox_of(info).org.appointment(id)
    if appt is None or (appt.deleted_at is not None and not include_deleted):
        return None
    return appt


def q_tags(_: None, info: GraphQLResolveInfo[Sandbox], ids: list[str] | None = None) -> list[Any]:
    tags = sandbox_of(info).org.tags
    return [tags[i] for i in ids if i in tags] if ids is not None else list(tags.values())


def q_webhooks(
    _: None, info: GraphQLResolveInfo[Sandbox], first: int | None = None, after: str | None = None
) -> dict[str, Any]:
    return paginate(list(sandbox_of(info).emitter.webhooks.values()), first, after)


def q_sent_webhooks(
    _: None,
    info: GraphQLResolveInfo[Sandbox],
    first: int | None = None,
    after: str | None = None,
    failed: bool | None = None,
    resource_id: str | None = None,
    resource_type: str | None = None,
    sent_after: str | None = None,
    sent_before: str | None = None,
) -> dict[str, Any]:
    sent = list(reversed(sandbox_of(info).emitter.deliveries))  # newest first
    if failed is not None:
        sent = [d for d in sent if d.failed == failed]
    if resource_id is not None:
        sent = [d for d in sent if d.event.resource_id == resource_id]
    if resource_type is not None:
        sent = [d for d in sent if _snake_upper(d.event.resource_id_type) == resource_type]
    if sent_after is not None:
        after_ts = epoch(sent_after)
        sent = [d for d in sent if epoch(d.created_at) > after_ts]
    if sent_before is not None:
        before_ts = epoch(sent_before)
        sent = [d for d in sent if epoch(d.created_at) < before_ts]
    return paginate(sent, first, after)


def _snake_upper(name: str) -> str:
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()


# -- User ------------------------------------------------------------------------------------
def _appointments(obj: Any, info: GraphQLResolveInfo[Sandbox]) -> list[Appointment]:
    if not isinstance(obj, Patient):
        return []
    org = sandbox_of(info).org
    appts = [org.appointments[a] for a in obj.appointment_ids if a in org.appointments]
    return sorted((a for a in appts if a.deleted_at is None), key=lambda a: (a.date, a.id))


def u_appointments(obj: Any, info: GraphQLResolveInfo[Sandbox]) -> list[Appointment]:
    return _appointments(obj, info)


def u_upcoming(obj: Any, info: GraphQLResolveInfo[Sandbox]) -> list[Appointment]:
    now = sandbox_of(info).clock.isoformat()
    return [a for a in _appointments(obj, info) if a.date >= now and a.pm_status != "Cancelled"]


def u_user_group(obj: Any, info: GraphQLResolveInfo[Sandbox]) -> Any:
    gid = getattr(obj, "user_group_id", None)
    return sandbox_of(info).org.user_groups.get(gid) if gid else None


def u_dietitian(obj: Any, info: GraphQLResolveInfo[Sandbox]) -> Provider | None:
    pid = getattr(obj, "dietitian_id", None)
    return sandbox_of(info).org.providers.get(pid) if pid else None


def u_providers(obj: Any, info: GraphQLResolveInfo[Sandbox]) -> list[Provider]:
    if not isinstance(obj, Patient):
        return []
    providers = sandbox_of(info).org.providers
    ids = ([obj.dietitian_id] if obj.dietitian_id else []) + obj.provider_ids
    return [providers[p] for p in dict.fromkeys(ids) if p in providers]


def u_active_tags(obj: Any, info: GraphQLResolveInfo[Sandbox]) -> list[Any]:
    tags = sandbox_of(info).org.tags
    return [tags[t] for t in getattr(obj, "applied_tags", {}) if t in tags]


def u_list(name: str) -> Resolver:
    """Resolve a list attribute that providers lack (served as an empty list)."""
    return lambda obj, _info: getattr(obj, name, [])


# -- Appointment -------------------------------------------------------------------------------
def a_user(obj: Appointment, info: GraphQLResolveInfo[Sandbox]) -> Patient | None:
    return sandbox_of(info).org.patient(obj.user_id) if obj.user_id else None


def a_attendees(obj: Appointment, info: GraphQLResolveInfo[Sandbox]) -> list[Patient]:
    org = sandbox_of(info).org
    return [p for p in (org.patient(i) for i in obj.attendee_ids) if p is not None]


def a_provider(obj: Appointment, info: GraphQLResolveInfo[Sandbox]) -> Provider | None:
    return sandbox_of(info).org.providers.get(obj.provider_id)


def a_type(obj: Appointment, info: GraphQLResolveInfo[Sandbox]) -> Any:
    return sandbox_of(info).org.appointment_types.get(obj.appointment_type_id)


READ_RESOLVERS: dict[tuple[str, str], Resolver] = {
    ("Query", "user"): q_user,
    ("Query", "currentUser"): q_current_user,
    ("Query", "users"): q_users,
    ("Query", "appointment"): q_appointment,
    ("Query", "appointments"): q_appointments,
    ("Query", "appliedTags"): q_applied_tags,
    ("Query", "tags"): q_tags,
    ("Query", "webhooks"): q_webhooks,
    ("Query", "sentWebhooks"): q_sent_webhooks,
    ("User", "appointments"): u_appointments,
    ("User", "upcoming_appointments"): u_upcoming,
    ("User", "user_group"): u_user_group,
    ("User", "dietitian"): u_dietitian,
    ("User", "providers"): u_providers,
    ("User", "active_tags"): u_active_tags,
    ("User", "policies"): u_list("policies"),
    ("User", "billing_items"): u_list("billing_items"),
    ("AppliedTag", "tag"): lambda t, i: sandbox_of(i).org.tags.get(t.tag_id),
    ("AppliedTag", "user"): lambda t, i: sandbox_of(i).org.patient(t.user_id),
    ("Appointment", "user"): a_user,
    ("Appointment", "attendees"): a_attendees,
    ("Appointment", "provider"): a_provider,
    ("Appointment", "appointment_type"): a_type,
    ("Webhook", "signature_secret"): lambda w, _i: w.secret,
    ("Webhook", "event_type"): lambda w, _i: (
        next(iter(w.event_types)) if w.event_types and len(w.event_types) == 1 else None
    ),
    ("Webhook", "webhook_events"): lambda w, _i: [
        {
            "id": f"{w.id}-{n}",
            "event_type": n,
            "created_at": w.created_at,
            "updated_at": w.last_failed_at or w.created_at,
            "retry_count": w.retry_count,
            "first_failed_at": w.first_failed_at,
            "last_failed_at": w.last_failed_at,
        }
        for n in sorted(w.event_types or ())
    ],
    ("SentWebhook", "event_type"): lambda d, _i: d.event.enum_name,
    ("SentWebhook", "resource_id"): lambda d, _i: d.event.resource_id,
    ("SentWebhook", "resource_id_type"): lambda d, _i: d.event.resource_id_type,
    ("SentWebhook", "http_response_status"): lambda d, _i: (
        None if d.status_code is None else str(d.status_code)
    ),
}
