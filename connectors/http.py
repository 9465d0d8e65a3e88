"""One HTTP request for the JSON-over-HTTP connectors (Brevo, customer.io): bounded timeouts,
pacing per request, and the vendor's answer turned into an engine error at this edge.

::

    send(client, method, url, json=..., what="POST /contacts")
      bucket.acquire()            the credential's token bucket (app.resilience), once per
                                  request: a chunk that costs several requests is paced per
                                  request, not per chunk
      client.request(...)         timeouts from ``client`` (see :func:`client`); a timeout or a
                                  connection failure -> UpstreamUnavailable
      status >= 400               app.resilience.status.error_for_status: 429 RateLimited with
                                  Retry-After (or the vendor's reset header) as retry_after,
                                  5xx UpstreamUnavailable, 401/403 ConfigurationError, 409/422
                                  TargetRejected, other 4xx FatalError (``overrides`` per vendor)

Errors name the vendor, the method and path template (``what``) and the status, never a body,
a header or a URL (a URL may hold an identifier): request bodies carry patient values.
The engine uses ``httpx2`` (httpx's successor, the same API; see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx2

from app.core.errors import HealthieSyncError, UpstreamUnavailable
from app.resilience.ratelimit import TokenBucket
from app.resilience.retry import parse_retry_after
from app.resilience.status import ErrorClass, error_for_status

#: connect, read, write and pool timeouts, seconds: a stuck vendor fails the request, and the
#: retry policy decides what happens next
TIMEOUT = httpx2.Timeout(30.0, connect=10.0)


def client(
    *,
    transport: httpx2.BaseTransport | None = None,
    headers: Mapping[str, str] | None = None,
    auth: httpx2.Auth | tuple[str, str] | None = None,
) -> httpx2.Client:
    """A client with bounded timeouts that never follows redirects (a redirect is an answer
    the connector did not expect, not something to chase with a credential attached)."""
    return httpx2.Client(
        timeout=TIMEOUT,
        follow_redirects=False,
        transport=transport,
        headers=dict(headers or {}),
        auth=auth,
    )


def retry_after(headers: Mapping[str, str], reset_headers: Sequence[str] = ()) -> float | None:
    """Seconds the vendor asked us to wait: Retry-After (the resilience layer's parser), else
    the first of ``reset_headers`` holding seconds until the window resets."""
    waited = parse_retry_after(headers)
    if waited is not None:
        return waited
    for name in reset_headers:
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            continue
    return None


def send(
    http: httpx2.Client,
    method: str,
    url: str,
    *,
    vendor: str,
    what: str,
    json: Any = None,
    bucket: TokenBucket | None = None,
    reset_headers: Sequence[str] = (),
    overrides: Mapping[int, ErrorClass] | None = None,
    count: Callable[[], None] | None = None,
) -> httpx2.Response:
    """Send one request; the response when its status is below 400, else the engine error
    for it (raised). ``what`` names the request in errors (a method and path template)."""
    if bucket is not None:
        bucket.acquire()
    if count is not None:
        count()
    try:
        response = http.request(method, url, json=json)
    except httpx2.TimeoutException:
        raise UpstreamUnavailable(f"{vendor} {what}: timed out") from None
    except httpx2.TransportError as exc:
        raise UpstreamUnavailable(f"{vendor} {what}: {type(exc).__name__}") from None
    if response.status_code >= 400:
        raise failure(
            response, vendor=vendor, what=what, reset_headers=reset_headers, overrides=overrides
        )
    return response


def failure(
    response: httpx2.Response,
    *,
    vendor: str,
    what: str,
    reset_headers: Sequence[str] = (),
    overrides: Mapping[int, ErrorClass] | None = None,
) -> HealthieSyncError:
    """The engine error for an error answer (status and, for 429, the wait it asked for)."""
    status = response.status_code
    wait = retry_after(response.headers, reset_headers) if status in (429, 503) else None
    return error_for_status(
        status, f"{vendor} {what}: HTTP {status}", retry_after=wait, overrides=overrides
    )
