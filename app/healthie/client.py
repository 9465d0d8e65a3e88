"""The one Healthie GraphQL client (gql over httpx2): auth and version headers, pacing,
retries, a circuit breaker, error mapping, and complexity-aware aliased batching.

Every Healthie failure leaves this module as one of ``app.core.errors``' kinds:
``TOO_MANY_REQUESTS`` (a GraphQL error in a 200) and HTTP 429 -> RateLimited; 5xx, timeouts and
connection errors -> UpstreamUnavailable (CircuitOpen while the breaker is open); 401/403 and
unknown API versions -> ConfigurationError; anything else that does not match the contract,
including a single patient whose entry alone exceeds the complexity cap -> InvalidResponse.

A request's journey (``execute``), all of it from ``app.resilience`` but the POST and the
classification::

    guard.call: breaker.before_call ─▶ bucket.acquire ─▶ POST ─▶ classify ─▶ breaker.record_*
          ▲                                                     │ RetriableError
          └──── RetryPolicy (exponential jitter, ≥ Retry-After) ◀─┘  (not CircuitOpen)

Batching (``fetch_entries``): patients are aliased ``p0: user(id: $id0) { ...PatientEntry }``,
as many per request as the complexity estimate allows under Healthie's cap of 2000 (config
``batch_size`` is an upper bound; 20 committed entries fit). Concurrent calls (one per worker
thread) are merged by ``app.healthie.coalesce`` before they are cut into requests, so every
request but a caller's last is full whatever the number of threads, and the last waits at most
``fetch_linger`` seconds for company. A call's requests go out in parallel, up to
``concurrency`` in flight per client, each through the guard (so still paced). Each batch
size's document is parsed and printed once (``PrintedRequest``), not on every send. If
Healthie still refuses a batch as too complex, the batch is split in half (or smaller, when the
refusal's real score says halves cannot fit) and each part retried, recursively down to one
patient; the score also corrects the per-entry estimate so later batches are sized right the
first time.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
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
from graphql import DocumentNode, print_ast

from app.core.config import DEFAULT_API_VERSION
from app.core.errors import (
    ComplexityExceeded,
    ConfigurationError,
    HealthieSyncError,
    InvalidResponse,
    RateLimited,
)
from app.healthie import operations
from app.healthie.coalesce import FetchCoalescer
from app.healthie.complexity import MAX_COMPLEXITY, estimate, parse_complexity_error
from app.healthie.versions import version_notice
from app.observability import metrics
from app.resilience.breaker import CircuitBreaker
from app.resilience.guard import Guard, credential_id
from app.resilience.ratelimit import TokenBucket
from app.resilience.retry import Backoff, RetryPolicy, parse_retry_after
from app.resilience.status import error_for_status

log = logging.getLogger(__name__)


def _entries_text(count: int, fragment: str) -> str:
    variables = ", ".join(f"$id{i}: ID" for i in range(count))
    fields = "\n".join(f"  p{i}: user(id: $id{i}) {{ ...PatientEntry }}" for i in range(count))
    return f"query Entries({variables}) {{\n{fields}\n}}\n" + fragment


class PrintedRequest(GraphQLRequest):
    """A GraphQL request whose query text is printed once, when it is built.

    gql prints the document (graphql-core's ``print_ast``) on every send, about 3.6 ms for a
    20-patient entries batch, on the hot path of every fetch. The document and its text are
    built together and cached (``_entries_document_for``); each send only adds its variables
    (``with_variables``) and reuses the text.
    """

    def __init__(
        self,
        document: DocumentNode,
        text: str,
        *,
        variable_values: dict[str, Any] | None = None,
        operation_name: str | None = None,
    ) -> None:
        super().__init__(document, variable_values=variable_values, operation_name=operation_name)
        self.text = text

    @classmethod
    def parsed(cls, source: str) -> PrintedRequest:
        """Parse ``source`` and print it once (the printed form is what gql always sent)."""
        document = GraphQLRequest(source).document
        return cls(document, print_ast(document))

    @classmethod
    def of(cls, request: GraphQLRequest) -> PrintedRequest:
        """``request`` with its text printed now (itself when it already is one): for an
        operation sent many times, such as a connection's pages."""
        if isinstance(request, PrintedRequest):
            return request
        return cls(
            request.document, print_ast(request.document), operation_name=request.operation_name
        )

    def with_variables(self, variables: dict[str, Any]) -> PrintedRequest:
        """The same operation with ``variables``, sharing the document and its text."""
        return PrintedRequest(
            self.document,
            self.text,
            variable_values=variables,
            operation_name=self.operation_name,
        )

    @property
    def payload(self) -> dict[str, Any]:
        # gql's payload (GraphQL over HTTP: query, operationName, variables), less the print
        payload: dict[str, Any] = {"query": self.text}
        if self.operation_name:
            payload["operationName"] = self.operation_name
        if self.variable_values:
            payload["variables"] = self.variable_values
        if self.extensions:
            payload["extensions"] = self.extensions
        return payload


#: Documents kept: every batch size up to ``batch_size`` for each entry fragment in use (one per
#: integration's selection); bounded so a process with many selections cannot grow it forever.
#: The API version is a header, not part of the text, so it needs no entry of its own.
DOCUMENT_CACHE = 256
#: Parallel requests of a new size would each miss the cache and build it; one builds.
_documents_lock = threading.Lock()


@lru_cache(maxsize=DOCUMENT_CACHE)
def _build_entries_document(count: int, fragment: str) -> PrintedRequest:
    return PrintedRequest.parsed(_entries_text(count, fragment))


def _entries_document_for(count: int, fragment: str) -> PrintedRequest:
    """The batched entries query for ``count`` patients using ``fragment`` (PatientEntry),
    parsed and printed once per (count, fragment) while it stays among the cached ones."""
    with _documents_lock:
        return _build_entries_document(count, fragment)


def _entries_document(count: int) -> PrintedRequest:
    """The batched entries query for ``count`` patients with the committed fragment."""
    return _entries_document_for(count, operations.load("entry"))


@lru_cache(maxsize=DOCUMENT_CACHE)
def _appointments_document(count: int) -> PrintedRequest:
    variables = ", ".join(f"$id{i}: ID" for i in range(count))
    fields = "\n".join(
        f"  a{i}: appointment(id: $id{i}, include_deleted: true) "
        "{ id user { id } attendees { id } }"
        for i in range(count)
    )
    return PrintedRequest.parsed(f"query AppointmentPatients({variables}) {{\n{fields}\n}}")


def _per_request(cost: int, cap: int, upper: int) -> int:
    """How many items of ``cost`` points fit one request under ``cap`` (at most ``upper``)."""
    return max(1, min(upper, cap // max(cost, 1)))


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: Entries requests one client keeps in flight (all its callers together): a pulled batch of
#: 100 patients is 5 requests, and 8 leave room for a second worker thread's batch.
DEFAULT_CONCURRENCY = 8

#: Healthie's own pause after repeated TOO_MANY_REQUESTS (it sends no Retry-After).
_STREAK = Backoff(initial=1.0, cap=8.0, jitter=0.0)
_HEALTHIE_STATUS = {409: InvalidResponse, 422: InvalidResponse}


class HealthieClient:
    """A Healthie API client bound to one API key.

    ``http_transport`` lets tests pass ``httpx2.MockTransport`` and lets the engine share
    connection pools. ``guard`` paces and protects every request (``app.resilience.guard``:
    the runtime passes its guard for this API key, so clients of one key share a bucket and a
    circuit); without one the client gets its own, from ``bucket`` / ``breaker`` when given.
    ``entry_fragment`` is the PatientEntry
    fragment text to fetch (default: the committed one; see ``selection.build_entry_fragment``).
    ``concurrency`` is how many entries requests the client keeps in flight at once, all its
    callers together (one worker thread's pulled batch of 100 patients is 5 requests: sent
    together they cost one round trip, not five); each still goes through the guard, so the
    key's bucket paces them and learns its limit as before. ``fetch_linger`` is how long a
    call's last, partial batch may wait for other threads' patients to fill it
    (``app.healthie.coalesce``).
    ``integration_id`` labels the client's metrics (``app.observability.metrics``: requests by
    outcome, retries, rate-limit answers, entries fetched, the fetch stage's latency).
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
        batch_size: int = 20,
        entry_fragment: str | None = None,
        max_complexity: int = MAX_COMPLEXITY,
        concurrency: int = DEFAULT_CONCURRENCY,
        fetch_linger: float = 0.05,
        breaker: CircuitBreaker | None = None,
        bucket: TokenBucket | None = None,
        guard: Guard | None = None,
        integration_id: str = "",
    ) -> None:
        headers = {
            "Authorization": f"Basic {api_key}",
            "AuthorizationSource": "API",
            "Healthie-GraphQL-API-Version": api_version,
        }
        if shard_id:
            headers["AuthorizationShard"] = shard_id
        self._local = threading.local()
        kwargs: dict[str, Any] = {
            "headers": headers,
            "timeout": timeout,
            "event_hooks": {"response": [self._remember_response]},
        }
        if http_transport is not None:
            kwargs["transport"] = http_transport
        self.api_version = api_version
        self.url = url
        self.timeout = timeout
        self._transport = HTTPXTransport(url=url, **kwargs)
        self._client = Client(transport=self._transport, fetch_schema_from_transport=False)
        self._session = self._client.connect_sync()  # type: ignore[no-untyped-call]
        self.key_id = credential_id(api_key)  # never the key itself
        self.guard = guard or Guard(
            breaker=breaker or CircuitBreaker(name="Healthie"),
            bucket=bucket or TokenBucket(rate_limit),
        )
        self.bucket: TokenBucket = self.guard.bucket or TokenBucket(rate_limit)
        self.breaker = self.guard.breaker
        self.batch_size = batch_size
        self.max_complexity = max_complexity
        self.concurrency = max(1, concurrency)
        self._coalescer = FetchCoalescer(
            self._fetch_batch,
            lambda: self.entries_per_request,
            linger=fetch_linger,
            max_in_flight=self.concurrency,
        )
        self.entry_fragment = ""
        self.entry_cost = 0
        self.use_entry_fragment(entry_fragment or operations.load("entry"))
        self.appointment_cost = estimate(_appointments_document(1).document)
        self.requests_sent = 0
        self.rate_limited = 0  # TOO_MANY_REQUESTS and HTTP 429 answers seen
        self.complexity_splits = 0
        self.warnings_seen: set[str] = set()
        # The pinned version's lifecycle from Healthie's published table (app.healthie.versions),
        # known before any request: doctor lists it with the warnings Healthie sends.
        notice = version_notice(api_version)
        if notice is not None:
            self.warnings_seen.add(notice)
        self.integration_id = integration_id or metrics.UNKNOWN
        self._consecutive_limits = 0
        self._stats_lock = threading.Lock()
        self.retry = RetryPolicy(
            max_attempts=max_attempts,
            backoff=Backoff(initial=0.2, cap=10.0),
            max_wait=600.0,
            on_retry=self._on_retry,
        )

    def _on_retry(self, exc: BaseException, _wait: float) -> None:
        kind = exc.kind if isinstance(exc, HealthieSyncError) else type(exc).__name__
        metrics.record_retry(self.integration_id, "healthie", kind)

    def use_entry_fragment(self, fragment: str) -> None:
        """Fetch entries with ``fragment`` (PatientEntry text, e.g. from
        ``selection.build_entry_fragment``, which may need this client to introspect first)."""
        self.entry_fragment = fragment
        #: estimated complexity of one aliased entry (corrected by Healthie's refusals)
        self.entry_cost = estimate(_entries_document_for(1, fragment).document)

    @property
    def entries_per_request(self) -> int:
        """Patients per entries request: the complexity cap's allowance, at most batch_size."""
        return _per_request(self.entry_cost, self.max_complexity, self.batch_size)

    def close(self) -> None:
        """Stop the fetch threads, then close the HTTP connections."""
        self._coalescer.close()
        self._client.close_sync()  # type: ignore[no-untyped-call]

    # -- raw execution -------------------------------------------------------------------
    def execute(self, request: GraphQLRequest, variables: dict[str, Any]) -> dict[str, Any]:
        """Run one operation with retries; returns ``data`` (possibly partial, see below).

        Errors that name a path (one alias of a batch) are returned under ``data["__errors__"]``
        so one bad patient does not fail its whole batch.
        """
        return self.retry.call(lambda: self._execute_once(request, variables))

    def _remember_response(self, response: httpx2.Response) -> None:
        # gql hides the status of a response whose body is GraphQL JSON (a 429 or 503 with an
        # ``errors`` body); the hook runs in the requesting thread, so a thread-local is exact.
        self._local.status = response.status_code
        self._local.headers = response.headers

    def _execute_once(self, request: GraphQLRequest, variables: dict[str, Any]) -> dict[str, Any]:
        data = self.guard.call(lambda: self._attempt(request, variables))
        with self._stats_lock:
            self._consecutive_limits = 0
        return data

    def _attempt(self, request: GraphQLRequest, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            data = self._post(request, variables)
        except HealthieSyncError as exc:
            metrics.record_healthie_request(self.integration_id, exc.kind)
            raise
        metrics.record_healthie_request(self.integration_id, "ok")
        return data

    def _post(self, request: GraphQLRequest, variables: dict[str, Any]) -> dict[str, Any]:
        with self._stats_lock:
            self.requests_sent += 1
        self._local.status, self._local.headers = None, None
        if isinstance(request, PrintedRequest):
            req: GraphQLRequest = request.with_variables(variables)
        else:
            req = GraphQLRequest(
                request.document, variable_values=variables, operation_name=request.operation_name
            )
        try:
            result = self._session.execute(req, get_execution_result=True)
        except TransportQueryError as exc:
            status = getattr(self._local, "status", None)
            if status is not None and (status == 429 or status >= 500):
                raise self._map_status(status, str(exc)) from exc
            return self._partial_or_raise(exc)
        except TransportServerError as exc:
            raise self._map_status(exc.code, str(exc)) from exc
        except TransportConnectionFailed as exc:
            raise error_for_status(
                503, f"Healthie unreachable at {self.url}: {exc} (timeout {self.timeout:g} s)"
            ) from exc
        except TransportProtocolError as exc:
            raise InvalidResponse("Healthie answered something that is not GraphQL") from exc
        self._log_warnings(result.extensions)
        return dict(result.data or {})

    def _throttle(self, pause: float | None) -> float:
        """Slow the key's bucket after a rate-limit answer; returns the pause applied."""
        with self._stats_lock:
            self.rate_limited += 1
            self._consecutive_limits += 1
            streak = self._consecutive_limits
        metrics.record_rate_limited(self.integration_id, "healthie")
        # Healthie gives no Retry-After with TOO_MANY_REQUESTS: 1 s, doubling while it repeats.
        wait = pause if pause is not None else _STREAK.delay(streak - 1)
        self.bucket.throttle(wait)
        return wait

    def _map_status(self, code: int | None, message: str) -> HealthieSyncError:
        if code is None:
            return InvalidResponse(f"Healthie HTTP ?: {message[:200]}")
        wait = None
        if code == 429:
            wait = self._throttle(parse_retry_after(getattr(self._local, "headers", None)))
        if code in (401, 403):
            text = f"Healthie refused the API key (HTTP {code})"
        elif code == 429 or code >= 500:
            text = f"Healthie HTTP {code}"
        else:
            text = f"Healthie HTTP {code}: {message[:200]}"
        # Healthie's GraphQL endpoint has no 409/422 semantics: any other status breaks the
        # contract (InvalidResponse), not a target refusal.
        return error_for_status(
            code, text, retry_after=wait, overrides=_HEALTHIE_STATUS, default=InvalidResponse
        )

    def _partial_or_raise(self, exc: TransportQueryError) -> dict[str, Any]:
        errors = exc.errors or []
        codes = {str((e.get("extensions") or {}).get("code", "")) for e in errors}
        if "TOO_MANY_REQUESTS" in codes:
            wait = self._throttle(None)
            raise RateLimited("Healthie TOO_MANY_REQUESTS", retry_after=wait) from exc
        if "UNSUPPORTED_API_VERSION" in codes:
            raise ConfigurationError("Healthie does not support the pinned API version") from exc
        if codes & {"UNAUTHENTICATED", "UNAUTHORIZED", "FORBIDDEN"}:
            raise ConfigurationError("Healthie refused the API key") from exc
        for error in errors:
            refused = parse_complexity_error(str(error.get("message", "")))
            if refused is not None:
                raise ComplexityExceeded(
                    f"Healthie: query complexity {refused.score} exceeds {refused.limit}",
                    score=refused.score,
                    limit=refused.limit,
                ) from exc
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
    def fetch_entries(
        self, patient_ids: Sequence[str], *, concurrency: int | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """Each patient's raw entry (``None`` when Healthie has no such patient).

        Batches are sized by the complexity estimate (``entries_per_request``) and filled with
        other threads' concurrent calls (``app.healthie.coalesce``); up to ``concurrency``
        (default and upper bound: the client's) of this call's batches are in flight at once,
        all still paced by the key's token bucket. A failed request fails this call when it
        carried one of ``patient_ids``; the call returns once all of its requests answered.
        """
        workers = min(concurrency or self.concurrency, self.concurrency)
        with metrics.stage_timer(self.integration_id, "fetch"):
            out = self._coalescer.fetch(patient_ids, workers=workers)
        found = sum(1 for entry in out.values() if entry is not None)
        metrics.record_entries_fetched(self.integration_id, found, len(out) - found)
        return out

    def _fetch_batch(self, chunk: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        try:
            data = self.execute(
                _entries_document_for(len(chunk), self.entry_fragment),
                {f"id{i}": pid for i, pid in enumerate(chunk)},
            )
        except ComplexityExceeded as exc:
            self._learn_entry_cost(exc, len(chunk))
            if len(chunk) == 1:
                raise InvalidResponse(
                    f"patient {chunk[0]}: one entry alone has complexity {exc.score}, over "
                    f"Healthie's cap of {exc.limit}; narrow healthie.entry_extra_selection"
                ) from exc
            with self._stats_lock:
                self.complexity_splits += 1
            # Halves, or smaller pieces when Healthie's score already says halves won't fit.
            size = min(len(chunk) // 2, self.entries_per_request)
            log.info("Healthie refused %d entries as too complex; retrying by %d", len(chunk), size)
            merged: dict[str, dict[str, Any] | None] = {}
            for part in _chunks(chunk, size):
                merged.update(self._fetch_batch(part))
            return merged
        failures = data.get("__errors__", {})
        out: dict[str, dict[str, Any] | None] = {}
        for i, pid in enumerate(chunk):
            value = data.get(f"p{i}")
            if value is not None and not isinstance(value, dict):
                raise InvalidResponse(f"entry for patient {pid} is not an object")
            if (
                value is None
                and f"p{i}" in failures
                and "not found" not in failures[f"p{i}"].lower()
            ):
                raise InvalidResponse(f"patient {pid}: {failures[f'p{i}']}")
            out[pid] = value
        return out

    def _learn_entry_cost(self, exc: ComplexityExceeded, count: int) -> None:
        """Healthie's score is the truth: raise the per-entry estimate to match it."""
        with self._stats_lock:
            if 0 < exc.limit < self.max_complexity:
                self.max_complexity = exc.limit
            observed = math.ceil(exc.score / count)
            if observed > self.entry_cost:
                log.warning(
                    "Healthie scores an entry at %d, above the estimate of %d; batches shrink "
                    "to %d patients",
                    observed,
                    self.entry_cost,
                    _per_request(observed, self.max_complexity, self.batch_size),
                )
                self.entry_cost = observed

    def resolve_appointments(self, appointment_ids: Sequence[str]) -> dict[str, list[str]]:
        """Each appointment's patients (owner and attendees); unknown appointments map to []."""
        out: dict[str, list[str]] = {}
        size = _per_request(self.appointment_cost, self.max_complexity, self.batch_size * 4)
        for chunk in _chunks(list(dict.fromkeys(appointment_ids)), size):
            data = self.execute(
                _appointments_document(len(chunk)), {f"id{i}": a for i, a in enumerate(chunk)}
            )
            for i, appointment_id in enumerate(chunk):
                appt = data.get(f"a{i}") or {}
                people = [appt.get("user")] + list(appt.get("attendees") or [])
                ids = [str(p["id"]) for p in people if isinstance(p, dict) and p.get("id")]
                out[appointment_id] = list(dict.fromkeys(ids))
        return out
