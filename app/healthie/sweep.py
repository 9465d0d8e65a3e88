"""The safety net for lost webhooks: a sweep of recently changed records, and webhook health.

Healthie disables a webhook after 3 days of failed retries, sends no events for recurring
appointments unless asked, and a receiver can be down. So each flush can also ask Healthie
what changed in a time window and mark those patients dirty; marking twice costs nothing.

:func:`sweep_changes` pages three collections (newest first where Healthie can sort):

* ``users(order_by: UPDATED_AT_DESC)`` until a patient was updated before ``since``;
* ``appointments(is_org: true, filter: "all", order_by: UPDATED_AT_DESC)`` likewise,
  keeping each appointment's owner and attendees;
* ``appliedTags(updated_after: since)`` for the patients a tag was applied to.

Known gaps: a removed tag or a deleted appointment changes no ``updated_at`` the sweep can list;
those still rely on their webhooks (``applied_tag.deleted``, ``appointment.deleted``).

:func:`webhook_health` lists the organization's webhooks with what is wrong with each: disabled,
warned by Healthie, or with failed deliveries recently (``sentWebhooks(failed: true)``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gql import GraphQLRequest

from app.healthie import operations
from app.healthie.entry import parse_timestamp
from app.healthie.pagination import DEFAULT_MAX_PAGES, DEFAULT_PAGE_SIZE, Pages

if TYPE_CHECKING:
    from app.healthie.client import HealthieClient

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What changed in a window, per :func:`sweep_changes`.

    ``patient_ids``: patients updated in the window or given a tag in it.
    ``appointment_ids``: appointments updated in the window; ``appointment_patients`` maps each
    to its owner and attendees (so no second lookup is needed; their union is *not* folded into
    ``patient_ids``). ``newest``: the latest ``updated_at`` seen inside the window (None when
    nothing changed). ``pages``: Healthie requests made. ``truncated``: a page cap stopped a
    collection early, so the next sweep should start from the same ``since`` again.
    """

    patient_ids: set[str] = field(default_factory=set)
    appointment_ids: set[str] = field(default_factory=set)
    newest: datetime | None = None
    pages: int = 0
    appointment_patients: dict[str, list[str]] = field(default_factory=dict)
    truncated: bool = False

    def _saw(self, at: datetime | None) -> None:
        if at is not None and (self.newest is None or at > self.newest):
            self.newest = at


def _request(name: str) -> GraphQLRequest:
    return GraphQLRequest(operations.load(name))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _newest_first(
    client: HealthieClient,
    name: str,
    root: str,
    since: datetime,
    until: datetime,
    result: SweepResult,
    page_size: int,
    max_pages: int,
) -> list[dict[str, Any]]:
    """Nodes of ``root`` updated within [since, until], paging newest first until older."""
    pages = Pages(client, _request(name), root, page_size=page_size, max_pages=max_pages)
    kept: list[dict[str, Any]] = []
    try:
        for nodes in pages:
            older = False
            for node in nodes:
                at = parse_timestamp(node.get("updated_at"))
                if at is not None and at < since:
                    older = True
                    break
                if at is not None and at > until:
                    continue  # the next sweep's window covers it
                # An unreadable timestamp is kept: a spurious dirty mark costs one refetch.
                kept.append(node)
                result._saw(at)
            if older:
                break
    finally:
        result.pages += pages.pages
        result.truncated |= pages.truncated
    return kept


def sweep_changes(
    client: HealthieClient,
    since: datetime,
    until: datetime,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_pages: int = DEFAULT_MAX_PAGES,
) -> SweepResult:
    """Patients and appointments Healthie changed between ``since`` and ``until`` (inclusive).

    Both bounds must be timezone-aware. Use overlapping windows (``since`` a little before the
    previous ``until``): Healthie's clock and ours differ, and re-marking a patient is free.
    Each collection reads at most ``max_pages`` pages of ``page_size``; raises the client's
    error kinds (RateLimited, UpstreamUnavailable, InvalidResponse, ...) unchanged.
    """
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("sweep_changes needs timezone-aware datetimes")
    result = SweepResult()
    for node in _newest_first(
        client, "sweep_users", "users", since, until, result, page_size, max_pages
    ):
        if node.get("id"):
            result.patient_ids.add(str(node["id"]))
    for node in _newest_first(
        client, "sweep_appointments", "appointments", since, until, result, page_size, max_pages
    ):
        if not node.get("id"):
            continue
        appointment_id = str(node["id"])
        result.appointment_ids.add(appointment_id)
        people = [node.get("user"), *(node.get("attendees") or [])]
        result.appointment_patients[appointment_id] = list(
            dict.fromkeys(str(p["id"]) for p in people if isinstance(p, dict) and p.get("id"))
        )
    tags = Pages(
        client,
        _request("sweep_applied_tags"),
        "appliedTags",
        {"since": _iso(since)},
        page_size=page_size,
        max_pages=max_pages,
    )
    try:
        for nodes in tags:
            for node in nodes:
                at = parse_timestamp(node.get("updated_at"))
                if at is not None and not since <= at <= until:
                    continue
                if node.get("user_id"):
                    result.patient_ids.add(str(node["user_id"]))
                    result._saw(at)
    finally:
        result.pages += tags.pages
        result.truncated |= tags.truncated
    if result.truncated:
        log.warning("sweep %s..%s hit the page cap; it is incomplete", since, until)
    return result


@dataclass
class WebhookStatus:
    """One registered webhook and what is wrong with it (``problems`` empty when healthy)."""

    webhook_id: str
    url: str | None
    enabled: bool
    event_types: list[str] = field(default_factory=list)
    failed_deliveries: int = 0
    last_failure_at: datetime | None = None
    last_failure_status: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the webhook is enabled and nothing failed in the window."""
        return not self.problems


def webhook_health(
    client: HealthieClient,
    *,
    since: datetime | None = None,
    max_pages: int = 20,
) -> list[WebhookStatus]:
    """Every webhook of the organization with its problems, most troubled first.

    A webhook has a problem when it is disabled (Healthie disables one after 3 days of failed
    retries), Healthie has warned about it (``warned_at``), or deliveries to it failed since
    ``since`` (default: the last 24 hours). Failed deliveries whose webhook is no longer
    registered are reported under a status with ``webhook_id`` ``"?"`` per URL.
    """
    since = since or datetime.now(UTC) - timedelta(days=1)
    statuses: dict[str, WebhookStatus] = {}
    for nodes in Pages(client, _request("webhooks"), "webhooks", max_pages=max_pages):
        for node in nodes:
            status = _status_of(node)
            statuses[status.webhook_id] = status
    failures = Pages(
        client,
        _request("failed_webhooks"),
        "sentWebhooks",
        {"since": _iso(since)},
        max_pages=max_pages,
    )
    for nodes in failures:
        for node in nodes:
            _count_failure(statuses, node)
    for status in statuses.values():
        if status.failed_deliveries:
            status.problems.append(
                f"{status.failed_deliveries} failed deliveries since {_iso(since)}"
                + (
                    f" (last HTTP {status.last_failure_status})"
                    if status.last_failure_status
                    else ""
                )
            )
    if failures.truncated:
        log.warning("webhook health: more failed deliveries than %d pages", max_pages)
    return sorted(statuses.values(), key=lambda s: (s.ok, -s.failed_deliveries, s.webhook_id))


def _status_of(node: dict[str, Any]) -> WebhookStatus:
    events = node.get("webhook_events") or []
    types: Iterable[Any] = [e.get("event_type") for e in events if isinstance(e, dict)]
    if not events and node.get("event_type"):
        types = [node["event_type"]]
    status = WebhookStatus(
        webhook_id=str(node.get("id")),
        url=node.get("url"),
        enabled=bool(node.get("is_enabled")),
        event_types=sorted(str(t) for t in types if t),
    )
    if not status.enabled:
        status.problems.append("disabled")
    if node.get("warned_at"):
        status.problems.append(f"warned by Healthie at {node['warned_at']}")
    return status


def _count_failure(statuses: dict[str, WebhookStatus], node: dict[str, Any]) -> None:
    webhook_id = str(node.get("webhook_id") or "?")
    status = statuses.get(webhook_id)
    if status is None:
        key = f"?{node.get('url')}"
        status = statuses.setdefault(
            key, WebhookStatus(webhook_id="?", url=node.get("url"), enabled=False)
        )
    status.failed_deliveries += 1
    at = parse_timestamp(node.get("created_at"))
    if at is not None and (status.last_failure_at is None or at > status.last_failure_at):
        status.last_failure_at = at
        status.last_failure_status = node.get("http_response_status")


#: Healthie retries a webhook for up to three days, so an applied tag may be that much older
#: than the mark its (late) webhook produced.
APPLIED_TAG_LOOKBACK = timedelta(days=3)


def resolve_applied_tags(
    client: HealthieClient,
    applied_tag_ids: Iterable[str],
    earliest_mark: datetime,
    *,
    page_size: int = 100,
    max_pages: int = 200,
) -> dict[str, str]:
    """Patient id of each applied tag still listed by Healthie (``appliedTag`` takes no id, so
    this pages ``appliedTags`` updated since ``earliest_mark - APPLIED_TAG_LOOKBACK`` and
    matches ids, stopping once all are found). Deleted applied tags are no longer listed and
    are absent from the result."""
    wanted = {str(i) for i in applied_tag_ids}
    found: dict[str, str] = {}
    if not wanted:
        return found
    since = earliest_mark - APPLIED_TAG_LOOKBACK
    for nodes in Pages(
        client,
        _request("sweep_applied_tags"),
        "appliedTags",
        {"since": _iso(since)},
        page_size=page_size,
        max_pages=max_pages,
    ):
        for node in nodes:
            ident = str(node.get("id"))
            if ident in wanted and node.get("user_id"):
                found[ident] = str(node["user_id"])
        if len(found) == len(wanted):
            break
    return found
