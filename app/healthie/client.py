"""The one Healthie GraphQL client (gql over httpx2): auth and version headers, rate limiting,
retries, error mapping, and aliased batching of entries and appointment resolution.

Every Healthie failure leaves this module as one of ``app.errors``' kinds:
``TOO_MANY_REQUESTS`` (a GraphQL error in a 200) and HTTP 429 -> RateLimited; 5xx, timeouts and
connection errors -> UpstreamUnavailable; 401/403 and unknown API versions -> ConfigurationError;
anything else that does not match the contract -> InvalidResponse.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

import httpx2
from gql import Client, GraphQLRequest
from gql.transport.exceptions import (
    TransportConnectionFailed,
    TransportProtocolError,
    TransportQueryError,
    TransportServerError,
)
from gql.transport.httpx import HTTPXTransport
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from app.config import DEFAULT_API_VERSION
from app.errors import (
    ConfigurationError,
    InvalidResponse,
    RateLimited,
    RetriableError,
    UpstreamUnavailable,
)
from app.healthie import operations
from app.healthie.ratelimit import TokenBucket, bucket_for

log = logging.getLogger(__name__)


class _HonourRetryAfter(wait_base):
    """Exponential jitter, but never shorter than the server's Retry-After."""

    def __init__(self) -> None:
        self._fallback = wait_exponential_jitter(multiplier=0.2, max=10)

    def __call__(self, retry_state: Any) -> float:
        base: float = self._fallback(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RetriableError) and exc.retry_after:
            return max(base, exc.retry_after)
        return base


@cache
def _entries_document(count: int) -> GraphQLRequest:
    variables = ", ".join(f"$id{i}: ID" for i in range(count))
    fields = "\n".join(f"  p{i}: user(id: $id{i}) {{ ...PatientEntry }}" for i in range(count))
    return GraphQLRequest(
        f"query Entries({variables}) {{\n{fields}\n}}\n" + operations.load("entry")
    )


@cache
def _appointments_document(count: int) -> GraphQLRequest:
    variables = ", ".join(f"$id{i}: ID" for i in range(count))
    fields = "\n".join(
        f"  a{i}: appointment(id: $id{i}, include_deleted: true) "
        "{ id user { id } attendees { id } }"
        for i in range(count)
    )
    return GraphQLRequest(f"query AppointmentPatients({variables}) {{\n{fields}\n}}")


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class HealthieClient:
    """A Healthie API client bound to one API key.

    ``http_transport`` lets tests pass ``httpx2.MockTransport`` and lets the engine share
    connection pools; the rate limit is shared by every client of the same key in the process.
    """

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        api_version: str = DEFAULT_API_VERSION,
        shard_id: str | None = None,
        http_transport: httpx2.BaseTransport | None = None,
        timeout: float = 30.0,
        rate_limit: float = 250.0,
        max_attempts: int = 5,
        batch_size: int = 15,
    ) -> None:
        headers = {
            "Authorization": f"Basic {api_key}",
            "AuthorizationSource": "API",
            "Healthie-GraphQL-API-Version": api_version,
        }
        if shard_id:
            headers["AuthorizationShard"] = shard_id
        kwargs: dict[str, Any] = {"headers": headers, "timeout": timeout}
        if http_transport is not None:
            kwargs["transport"] = http_transport
        self._transport = HTTPXTransport(url=url, **kwargs)
        self._client = Client(transport=self._transport, fetch_schema_from_transport=False)
        self._session = self._client.connect_sync()  # type: ignore[no-untyped-call]
        key_id = hashlib.sha256(api_key.encode()).hexdigest()[:16]  # never the key itself
        self.bucket: TokenBucket = bucket_for(key_id, rate_limit)
        self.batch_size = batch_size
        self.requests_sent = 0
        self.warnings_seen: set[str] = set()
        self._retrying = Retrying(
            retry=retry_if_exception_type(RetriableError),
            stop=stop_after_attempt(max_attempts),
            wait=_HonourRetryAfter(),
            reraise=True,
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close_sync()  # type: ignore[no-untyped-call]

    # -- raw execution -------------------------------------------------------------------
    def execute(self, request: GraphQLRequest, variables: dict[str, Any]) -> dict[str, Any]:
        """Run one operation with retries; returns ``data`` (possibly partial, see below).

        Errors that name a path (one alias of a batch) are returned under ``data["__errors__"]``
        so one bad patient does not fail its whole batch.
        """
        result: dict[str, Any] = self._retrying(self._execute_once, request, variables)
        return result

    def _execute_once(self, request: GraphQLRequest, variables: dict[str, Any]) -> dict[str, Any]:
        self.bucket.acquire()
        self.requests_sent += 1
        req = GraphQLRequest(
            request.document, variable_values=variables, operation_name=request.operation_name
        )
        try:
            result = self._session.execute(req, get_execution_result=True)
        except TransportQueryError as exc:
            return self._partial_or_raise(exc)
        except TransportServerError as exc:
            raise self._map_status(exc.code, str(exc)) from exc
        except TransportConnectionFailed as exc:
            raise UpstreamUnavailable(f"Healthie unreachable: {exc}") from exc
        except TransportProtocolError as exc:
            raise InvalidResponse("Healthie answered something that is not GraphQL") from exc
        self._log_warnings(result.extensions)
        return dict(result.data or {})

    def _retry_after(self) -> float | None:
        headers = self._transport.response_headers
        value = headers.get("retry-after") if headers is not None else None
        try:
            return float(value) if value else None
        except ValueError:
            return None

    def _map_status(self, code: int | None, message: str) -> Exception:
        if code == 429:
            self.bucket.pause(self._retry_after() or 1.0)
            return RateLimited("Healthie HTTP 429", retry_after=self._retry_after())
        if code in (401, 403):
            return ConfigurationError(f"Healthie refused the API key (HTTP {code})")
        if code is not None and code >= 500:
            return UpstreamUnavailable(f"Healthie HTTP {code}")
        return InvalidResponse(f"Healthie HTTP {code}: {message[:200]}")

    def _partial_or_raise(self, exc: TransportQueryError) -> dict[str, Any]:
        errors = exc.errors or []
        codes = {str((e.get("extensions") or {}).get("code", "")) for e in errors}
        if "TOO_MANY_REQUESTS" in codes:
            self.bucket.pause(1.0)
            raise RateLimited("Healthie TOO_MANY_REQUESTS", retry_after=1.0) from exc
        if "UNSUPPORTED_API_VERSION" in codes:
            raise ConfigurationError("Healthie does not support the pinned API version") from exc
        if codes & {"UNAUTHENTICATED", "UNAUTHORIZED", "FORBIDDEN"}:
            raise ConfigurationError("Healthie refused the API key") from exc
        self._log_warnings(exc.extensions)
        if exc.data and errors and all(e.get("path") for e in errors):
            data = dict(exc.data)
            data["__errors__"] = {
                str(e["path"][0]): str(e.get("message", ""))[:200] for e in errors
            }
            return data
        first = str(errors[0].get("message", "")) if errors else str(exc)
        raise InvalidResponse(f"Healthie GraphQL error: {first[:200]}") from exc

    def _log_warnings(self, extensions: Any) -> None:
        # Healthie repeats deprecation warnings on every response; say each one once.
        if not isinstance(extensions, dict) or not isinstance(extensions.get("warnings"), list):
            return
        for warning in extensions["warnings"]:
            code = warning.get("code") if isinstance(warning, dict) else None
            key = str(code or warning)[:300]
            if key in self.warnings_seen:
                continue
            self.warnings_seen.add(key)
            message = warning.get("message", "") if isinstance(warning, dict) else warning
            log.warning("Healthie API warning %s: %s", code or "", str(message)[:300])

    # -- batched reads ---------------------------------------------------------------------
    def fetch_entries(self, patient_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Each patient's raw entry (``None`` when Healthie has no such patient)."""
        out: dict[str, dict[str, Any] | None] = {}
        for chunk in _chunks(list(dict.fromkeys(patient_ids)), self.batch_size):
            data = self.execute(
                _entries_document(len(chunk)), {f"id{i}": pid for i, pid in enumerate(chunk)}
            )
            failures = data.get("__errors__", {})
            for i, pid in enumerate(chunk):
                value = data.get(f"p{i}")
                if value is not None and not isinstance(value, dict):
                    raise InvalidResponse(f"entry for patient {pid} is not an object")
                if value is None and f"p{i}" in failures and "not found" not in failures[
                    f"p{i}"
                ].lower():
                    raise InvalidResponse(f"patient {pid}: {failures[f'p{i}']}")
                out[pid] = value
        return out

    def resolve_appointments(self, appointment_ids: Sequence[str]) -> dict[str, list[str]]:
        """Each appointment's patients (owner and attendees); unknown appointments map to []."""
        out: dict[str, list[str]] = {}
        for chunk in _chunks(list(dict.fromkeys(appointment_ids)), self.batch_size * 4):
            data = self.execute(
                _appointments_document(len(chunk)), {f"id{i}": a for i, a in enumerate(chunk)}
            )
            for i, appointment_id in enumerate(chunk):
                appt = data.get(f"a{i}") or {}
                people = [appt.get("user")] + list(appt.get("attendees") or [])
                ids = [str(p["id"]) for p in people if isinstance(p, dict) and p.get("id")]
                out[appointment_id] = list(dict.fromkeys(ids))
        return out
