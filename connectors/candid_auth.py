"""Candid Health's HTTP edge: OAuth client credentials, one cached bearer token, and every
answer turned into an engine error here.

::

    CandidSession.request(method, url, what, json=..., params=...)
      token()                  POST {api}/api/auth/v2/token {client_id, client_secret} ->
                                 {access_token, expires_in, token_type}; cached per (token URL,
                                 credential id) for the process until 60 s before it expires
                                 (Candid: tokens last 5 hours and minting them too often is
                                 itself answered 429, so they must be reused)
      bucket.acquire()         every request after a chunk's first (the base paces the first)
      Authorization: Bearer    a 401 drops the cached token, mints a new one and sends the
                                 request once more; a second 401 is a ConfigurationError
      status                   404 and, where a caller expects them, 409 are returned to the
                                 caller (absent / version conflict); any other status >= 400
                                 becomes the engine error of ``connectors.http.failure``

Errors name the method and path template (``what``) and the status, never a URL (MRNs travel
in paths), a body or a header. Candid sends no Retry-After and no rate-limit headers (see the
connector's docstring), so a 429 carries no wait and the retry policy's back-off decides.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2

from app.core.errors import ConfigurationError, InvalidResponse, UpstreamUnavailable
from app.resilience.guard import credential_id
from app.resilience.ratelimit import TokenBucket
from connectors import http

VENDOR = "Candid"
TOKEN_PATH = "/api/auth/v2/token"  # noqa: S105 (a path, not a secret)
#: refresh this many seconds before the token's stated expiry
MARGIN = 60.0


@dataclass
class _Token:
    value: str
    expires_at: float


# Process-wide, keyed by (token URL, credential id): every connector of one Candid client
# shares one token, as Candid asks. Filled on first use only (nothing happens at import).
_TOKENS: dict[tuple[str, str], _Token] = {}
_TOKENS_LOCK = threading.Lock()


def forget_tokens() -> None:
    """Drop every cached token (tests that restart a fake Candid use it)."""
    with _TOKENS_LOCK:
        _TOKENS.clear()


@dataclass
class CandidSession:
    """One connector's way to Candid: its client, its credentials, its pacing."""

    client: httpx2.Client
    api_url: str
    client_id: str
    client_secret: str
    clock: Callable[[], float] = time.monotonic
    #: HTTP requests sent, token requests included (a metric)
    sent: int = 0
    #: the bucket later requests of a chunk are paced with (None: unpaced)
    bucket: TokenBucket | None = None
    _first: bool = field(default=True, repr=False)

    @property
    def _key(self) -> tuple[str, str]:
        return (self.api_url + TOKEN_PATH, credential_id(f"{self.client_id}:{self.client_secret}"))

    def begin_chunk(self) -> None:
        """A new chunk: its first request was paced by the base's guard."""
        self._first = True

    def _pace(self) -> None:
        if self._first:
            self._first = False
            return
        if self.bucket is not None:
            self.bucket.acquire()

    def token(self, *, fresh: bool = False) -> str:
        """The cached bearer token, or a new one (``fresh``: the cached one was refused)."""
        key = self._key
        with _TOKENS_LOCK:
            held = _TOKENS.get(key)
            if fresh:
                _TOKENS.pop(key, None)
            elif held is not None and held.expires_at - MARGIN > self.clock():
                return held.value
        minted = self._mint()
        with _TOKENS_LOCK:
            _TOKENS[key] = minted
        return minted.value

    def _mint(self) -> _Token:
        what = f"POST {TOKEN_PATH}"
        self._pace()
        self.sent += 1
        response = self._send(
            "POST",
            self.api_url + TOKEN_PATH,
            what,
            json={"client_id": self.client_id, "client_secret": self.client_secret},
        )
        if response.status_code in (400, 401, 403):
            raise ConfigurationError(
                f"{VENDOR} {what}: HTTP {response.status_code}: the client_id/client_secret "
                "were refused (check them and the environment: staging credentials fail in "
                "production)"
            )
        if response.status_code >= 400:
            raise http.failure(response, vendor=VENDOR, what=what)
        try:
            body = response.json()
            value, lifetime = str(body["access_token"]), float(body["expires_in"])
        except (ValueError, KeyError, TypeError):
            raise InvalidResponse(f"{VENDOR} {what}: no access_token/expires_in") from None
        return _Token(value, self.clock() + lifetime)

    def _send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx2.Response:
        try:
            return self.client.request(
                method, url, json=json, params=dict(params or {}), headers=dict(headers or {})
            )
        except httpx2.TimeoutException:
            raise UpstreamUnavailable(f"{VENDOR} {what}: timed out") from None
        except httpx2.TransportError as exc:
            raise UpstreamUnavailable(f"{VENDOR} {what}: {type(exc).__name__}") from None

    def request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        passes: tuple[int, ...] = (),
    ) -> httpx2.Response:
        """Send one authenticated request; the response when its status is below 400 or in
        ``passes`` (e.g. 404 for a lookup), else the engine error for it (raised)."""
        response = self._authed(method, url, what, json=json, params=params, fresh=False)
        if response.status_code == 401:
            # Expired or revoked: mint once more and resend once (Candid: "After it has
            # expired, the client will receive an HTTP 401 ... generate a new token").
            response = self._authed(method, url, what, json=json, params=params, fresh=True)
        if response.status_code < 400 or response.status_code in passes:
            return response
        raise http.failure(response, vendor=VENDOR, what=what)

    def _authed(
        self,
        method: str,
        url: str,
        what: str,
        *,
        json: Any,
        params: Mapping[str, str] | None,
        fresh: bool,
    ) -> httpx2.Response:
        bearer = {"authorization": f"Bearer {self.token(fresh=fresh)}"}
        self._pace()
        self.sent += 1
        return self._send(method, url, what, json=json, params=params, headers=bearer)


def body_of(response: httpx2.Response, what: str) -> Any:
    """The JSON body, or InvalidResponse (never quoting it)."""
    try:
        return response.json()
    except ValueError:
        raise InvalidResponse(f"{VENDOR} {what}: the answer is not JSON") from None
