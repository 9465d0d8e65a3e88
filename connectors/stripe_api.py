"""The Stripe HTTP edge of :mod:`connectors.stripe`: form encoding, pacing per request kind,
idempotency keys, and Stripe's error answers turned into engine errors.

::

    StripeApi.call(method, path, what, kind, params, key)
      pacer.acquire(kind)           search: the search bucket (20/s) and the read bucket;
                                    read / write: their own bucket (100/s live, 25/s test)
      POST  form body               Stripe's encoding: ``metadata[k]=v``, ``address[line1]=``;
            Idempotency-Key: key    (see :func:`idempotency_key`)
      every request                 ``Authorization: Bearer <api_key>``,
                                    ``Stripe-Version: 2023-08-16`` (set on the client)
      status >= 400                 :func:`stripe_error` (below); 429 also throttles the bucket

Error answers (https://docs.stripe.com/api/errors, https://docs.stripe.com/error-low-level):

=====================================  ==================================================
Stripe answer                          engine error
=====================================  ==================================================
``Stripe-Should-Retry: false`` on an   FatalError: Stripe says the same request cannot
answer that would be retried           succeed (a 5xx replayed under its idempotency key)
``Stripe-Should-Retry: true`` on a     UpstreamUnavailable (a lock timeout, say)
refusal (a 4xx but 401/403)
429                                    RateLimited, Retry-After honoured when sent
409 (a request with the same key is    UpstreamUnavailable: retry once it has finished
in flight), 424, 5xx (``api_error``)
400 ``idempotency_error``              TargetRejected: the key was used within 24 h with
                                       other parameters (see :func:`idempotency_key`)
400/404 ``invalid_request_error``,     TargetRejected: this write cannot succeed as is
402 ``card_error``
401 (authentication), 403              ConfigurationError: the API key is wrong, or a
(a restricted key lacks a permission)  restricted key lacks the permission
=====================================  ==================================================

Stripe's error ``message`` can quote the request (an email it refused), so it never reaches an
engine error: errors carry the method and path template, the status, Stripe's error ``type``,
``code`` and ``param`` (a parameter *name*), and the ``Request-Id`` (``req_…``), which Stripe
support can look up.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx2

from app.core.errors import (
    ConfigurationError,
    FatalError,
    HealthieSyncError,
    InvalidResponse,
    RetriableError,
    TargetRejected,
    UpstreamUnavailable,
)
from app.resilience.ratelimit import TokenBucket
from app.resilience.status import ErrorClass, error_for_status
from connectors import http

API_VERSION = "2023-08-16"
Kind = Literal["read", "write", "search"]
#: https://stripe.com/docs/rate-limits: per second, reads and writes counted separately
LIVE_RATE, TEST_RATE, SEARCH_RATE = 100.0, 25.0, 20.0
#: 409: "the request conflicts with another request (perhaps due to using the same idempotent
#: key)"; 424: "a failure in a dependency external to Stripe": both pass; 400/402/404 do not
OVERRIDES: Mapping[int, ErrorClass] = {
    409: UpstreamUnavailable,
    424: UpstreamUnavailable,
    400: TargetRejected,
    402: TargetRejected,
    404: TargetRejected,
}
_NAME = re.compile(r"^[A-Za-z0-9_.\[\]-]{1,80}$")  # a type, code or param name Stripe sent


def idempotency_key(kind: str, *parts: str, params: Any = None) -> str:
    """The ``Idempotency-Key`` of a write: a digest of its kind, its scope parts (integration,
    patient, Stripe object) and the parameters it sends, so the same write always carries the
    same key (a retry is replayed by Stripe for 24 h) and a key never meets other parameters.
    No identifier is readable in it (Stripe shows keys in its request logs)."""
    material = json.dumps([kind, list(parts), params], sort_keys=True, separators=(",", ":"))
    return f"healthie-sync-{kind}-{hashlib.sha256(material.encode()).hexdigest()}"


def encode(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Stripe's form encoding: nested objects as ``a[b]``, lists as ``a[0]``, booleans as
    ``true``/``false``, None as "" (how Stripe unsets a field)."""
    out: list[tuple[str, str]] = []

    def put(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                put(f"{name}[{k}]", v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                put(f"{name}[{i}]", v)
        elif isinstance(value, bool):
            out.append((name, "true" if value else "false"))
        else:
            out.append((name, "" if value is None else str(value)))

    for key, value in params.items():
        put(key, value)
    return out


class Pacer:
    """Token buckets per request kind at Stripe's published rates (module docstring)."""

    def __init__(self, live: bool, write: TokenBucket | None = None) -> None:
        rate = LIVE_RATE if live else TEST_RATE
        self.buckets: dict[str, TokenBucket] = {
            "read": TokenBucket(rate),
            "write": write if write is not None else TokenBucket(rate),
            "search": TokenBucket(SEARCH_RATE),
        }

    def acquire(self, kind: Kind) -> None:
        """Wait until one request of ``kind`` may be sent (a search also counts as a read)."""
        self.buckets[kind].acquire()
        if kind == "search":
            self.buckets["read"].acquire()

    def throttle(self, kind: Kind, seconds: float) -> None:
        """Stripe answered 429: slow this kind down and hold its callers."""
        self.buckets[kind].throttle(seconds)


@dataclass
class StripeApi:
    """One connector's requests to Stripe (the client carries auth and Stripe-Version)."""

    client: httpx2.Client
    base: str
    pacer: Pacer
    count: Callable[[], None] = lambda: None

    def call(
        self,
        method: str,
        path: str,
        what: str,
        kind: Kind,
        *,
        params: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """One request; its JSON object, or the engine error for Stripe's answer (raised).
        ``what`` names it in errors (method and path template, never an id or a value)."""
        self.pacer.acquire(kind)
        self.count()
        fields = encode(params or {})
        headers = {"Idempotency-Key": key} if key else {}
        url = self.base + path
        try:
            if method == "GET":
                response = self.client.request(method, url, params=tuple(fields), headers=headers)
            else:
                response = self.client.request(method, url, data=dict(fields), headers=headers)
        except httpx2.TimeoutException:
            raise UpstreamUnavailable(f"Stripe {what}: timed out") from None
        except httpx2.TransportError as exc:
            raise UpstreamUnavailable(f"Stripe {what}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            error = stripe_error(response, what)
            if response.status_code == 429:
                self.pacer.throttle(kind, getattr(error, "retry_after", None) or 1.0)
            raise error
        try:
            body = response.json()
        except ValueError:
            raise InvalidResponse(f"Stripe {what}: HTTP {response.status_code}, not JSON") from None
        if not isinstance(body, dict):
            raise InvalidResponse(f"Stripe {what}: HTTP {response.status_code}, not an object")
        return body


def stripe_error(response: httpx2.Response, what: str) -> HealthieSyncError:
    """The engine error for one of Stripe's error answers (the table in the module docstring);
    its message holds no part of Stripe's ``message``."""
    status = response.status_code
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    kind = _name(error.get("type"))
    detail = f"Stripe {what}: HTTP {status}"
    if kind:
        detail += f" {kind}"
    extras = [f"{n} {v}" for n in ("code", "param") if (v := _name(error.get(n)))]
    if request_id := _name(response.headers.get("request-id")):
        extras.append(f"request {request_id}")
    if extras:
        detail += f" ({', '.join(extras)})"
    wait = http.retry_after(response.headers) if status in (409, 429, 503) else None
    should_retry = response.headers.get("stripe-should-retry")
    if kind == "idempotency_error":
        return TargetRejected(
            f"{detail}: this write's Idempotency-Key was used in the last 24 h with other "
            "parameters, so Stripe refused to run it again"
        )
    mapped = error_for_status(status, detail, retry_after=wait, overrides=OVERRIDES)
    if should_retry == "false" and isinstance(mapped, RetriableError):
        return FatalError(f"{detail}: Stripe says retrying this request cannot succeed")
    if should_retry == "true" and not isinstance(mapped, RetriableError | ConfigurationError):
        return UpstreamUnavailable(detail, retry_after=wait)
    return mapped


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and _NAME.fullmatch(value) else None
