"""HubSpot's HTTP edge for the contacts connector (``connectors.hubspot``): one paced request
with HubSpot's answers turned into engine errors, the custom properties ensured once, the contact
search in pages, and a batch answer (200 or 207 multi-status) read per input.

::

    send(method, path, what, body)        the credential's bucket (and the search bucket for
                                          /search) acquired once per request; timeouts and
                                          connection failures -> UpstreamUnavailable
      429                                 RateLimited; ``policyName`` from the body picks the
                                          wait when Retry-After is absent: TEN_SECONDLY_ROLLING
                                          10 s, SECONDLY 1 s, DAILY 1 h (longer than any
                                          in-process retry waits, so the queue redelivers); the
                                          secondly policies also throttle the bucket
      other >= 400                        app.resilience.status (401/403 configuration, 409
                                          TargetRejected, other 4xx FatalError, 5xx upstream);
                                          HubSpot's ``category`` (an upper-case code) is named
    batch_outcome(response, ids)          per input id: None (done) or the TargetRejected for
                                          it, from ``results`` and ``errors[].context.ids``

Errors name the method and path template, the status, the policy or category, never a body
value or a header (request bodies carry patient values).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx2

from app.core.errors import (
    ConfigurationError,
    HealthieSyncError,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from app.resilience.ratelimit import TokenBucket
from app.resilience.status import error_for_status
from connectors import http

#: seconds to wait for each 429 policy when HubSpot sends no Retry-After
POLICY_WAIT = {"TEN_SECONDLY_ROLLING": 10.0, "SECONDLY": 1.0, "DAILY": 3600.0}
CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
SEARCH_PAGE = 200  # ``limit`` maximum of PublicObjectSearchRequest
MAX_PAGES = 50  # HubSpot's search returns at most 10,000 results (50 pages of 200)
PROPERTIES = "/crm/v3/properties/contacts"


class HubSpotApi:
    """The requests the connector makes, over one client (see the module docstring)."""

    def __init__(
        self,
        client: httpx2.Client,
        base_url: str,
        *,
        bucket: TokenBucket | None,
        search_bucket: TokenBucket | None,
        count: Callable[[str], None],
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.bucket = bucket
        self.search_bucket = search_bucket
        self._count = count

    def send(self, method: str, path: str, what: str, body: Any = None) -> httpx2.Response:
        """One request; the response when its status is below 400, else the engine error."""
        search = path.endswith("/search")
        if self.bucket is not None:
            self.bucket.acquire()
        if search and self.search_bucket is not None:
            self.search_bucket.acquire()
        self._count(what)
        try:
            response = self.client.request(method, self.base_url + path, json=body)
        except httpx2.TimeoutException:
            raise UpstreamUnavailable(f"HubSpot {what}: timed out") from None
        except httpx2.TransportError as exc:
            raise UpstreamUnavailable(f"HubSpot {what}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise self.failure(response, what, search=search)
        return response

    def failure(self, response: httpx2.Response, what: str, *, search: bool) -> HealthieSyncError:
        """The engine error for an error answer (see the module docstring)."""
        status = response.status_code
        body = json_body(response)
        if status == 429:
            policy = body.get("policyName")
            policy = policy if isinstance(policy, str) and CODE.match(policy) else None
            wait = http.retry_after(response.headers)
            if wait is None:
                wait = POLICY_WAIT.get(policy or "", 10.0)
            if policy == "DAILY":
                wait = max(wait, POLICY_WAIT["DAILY"])
            else:
                for bucket in (self.bucket, self.search_bucket if search else None):
                    if bucket is not None:
                        bucket.throttle(wait)
            return RateLimited(
                f"HubSpot {what}: HTTP 429 ({policy or 'no policyName'})", retry_after=wait
            )
        category = body.get("category")
        named = f" ({category})" if isinstance(category, str) and CODE.match(category) else ""
        wait = http.retry_after(response.headers) if status == 503 else None
        return error_for_status(status, f"HubSpot {what}: HTTP {status}{named}", retry_after=wait)

    # -- properties -----------------------------------------------------------------------
    def existing_properties(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The named contact properties that exist, by name (batch read; unknown names are
        simply absent from the answer, 200 or 207)."""
        response = self.send(
            "POST",
            f"{PROPERTIES}/batch/read",
            "POST /crm/v3/properties/contacts/batch/read",
            {
                "inputs": [{"name": n} for n in names],
                "archived": False,
                "dataSensitivity": "non_sensitive",
            },
        )
        found: dict[str, dict[str, Any]] = {}
        for item in json_body(response).get("results") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                found[item["name"]] = item
        return found

    def create_properties(self, inputs: Sequence[Mapping[str, Any]]) -> None:
        """Create contact properties (one batch request); a 207 whose errors are not "already
        exists" fails with the count of properties HubSpot refused."""
        response = self.send(
            "POST",
            f"{PROPERTIES}/batch/create",
            "POST /crm/v3/properties/contacts/batch/create",
            {"inputs": list(inputs)},
        )
        errors = [
            e
            for e in _errors(response)
            if e.get("category") not in ("OBJECT_ALREADY_EXISTS", "CONFLICT")
        ]
        if response.status_code == 207 and errors:
            raise ConfigurationError(
                f"HubSpot POST /crm/v3/properties/contacts/batch/create: HTTP 207, "
                f"{len(errors)} of {len(inputs)} properties refused; check the app's "
                "crm.schemas.contacts.write scope and the declared types"
            )

    # -- contacts -------------------------------------------------------------------------
    def search(
        self, groups: Sequence[Sequence[Mapping[str, Any]]], properties: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Every contact matching any filter group (groups are ORed, filters in a group
        ANDed), with ``properties``, page after page."""
        found: list[dict[str, Any]] = []
        after = "0"
        for _ in range(MAX_PAGES):
            response = self.send(
                "POST",
                "/crm/v3/objects/contacts/search",
                "POST /crm/v3/objects/contacts/search",
                {
                    "filterGroups": [{"filters": list(g)} for g in groups],
                    "properties": list(properties),
                    "limit": SEARCH_PAGE,
                    "after": after,
                    "sorts": [],
                },
            )
            body = json_body(response)
            found.extend(r for r in body.get("results") or [] if isinstance(r, dict))
            following = ((body.get("paging") or {}).get("next") or {}).get("after")
            if not isinstance(following, str) or not following:
                return found
            after = following
        return found

    def batch(self, path: str, inputs: Sequence[Mapping[str, Any]]) -> httpx2.Response:
        """One contacts batch request (``batch/upsert`` or ``batch/update``)."""
        return self.send("POST", path, f"POST {path}", {"inputs": list(inputs)})


def batch_outcome(
    response: httpx2.Response,
    ids: Iterable[str],
    result_id: Callable[[Mapping[str, Any]], str | None],
    what: str,
) -> dict[str, TargetRejected | None]:
    """Per input id: None when HubSpot reports it done, else its refusal.

    200: every input is done. 207: an error naming an id (``context.ids``) fails that input;
    an input neither in ``results`` (``result_id`` reads a result's input id) nor named fails
    only when some error named no input (HubSpot did not say which it refused)."""
    wanted = list(ids)
    if response.status_code != 207:
        return dict.fromkeys(wanted)
    body = json_body(response)
    done = {
        rid
        for r in body.get("results") or []
        if isinstance(r, dict) and (rid := result_id(r)) is not None
    }
    refused: dict[str, TargetRejected] = {}
    unnamed = 0
    for error in _errors(response):
        category = error.get("category")
        named = f" ({category})" if isinstance(category, str) and CODE.match(category) else ""
        context = error.get("context")
        context = context if isinstance(context, dict) else {}
        hit = [i for i in wanted if any(isinstance(v, list) and i in v for v in context.values())]
        for i in hit:
            refused[i] = TargetRejected(f"HubSpot {what}: HTTP 207, input refused{named}")
        unnamed += not hit
    out: dict[str, TargetRejected | None] = {}
    for i in wanted:
        if i in refused:
            out[i] = refused[i]
        elif i in done or not unnamed:
            out[i] = None
        else:
            out[i] = TargetRejected(f"HubSpot {what}: HTTP 207, input not confirmed")
    return out


def json_body(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _errors(response: httpx2.Response) -> list[dict[str, Any]]:
    errors = json_body(response).get("errors")
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
