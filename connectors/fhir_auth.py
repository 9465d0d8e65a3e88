"""Access tokens for the FHIR connector: OAuth 2.0 client credentials (Medplum's
``POST /oauth2/token``) or a bearer token handed over as a secret.

::

    client_credentials   POST <token_url>  grant_type=client_credentials (form), the client id
                         and secret as HTTP Basic (client_secret_basic, which Medplum's token
                         endpoint takes: https://www.medplum.com/docs/api/oauth/token)
                         -> {access_token, expires_in}; kept until 60 s before it expires, and
                         dropped when the FHIR server answers 401 (one new token, one retry)
    bearer               the ``token`` credential as is (no refresh: a 401 is a configuration
                         error)

Medplum limits ``/oauth2/*`` to 160 requests per IP per minute (https://www.medplum.com/docs/rate-limits),
which a cached token never approaches. Errors name the token endpoint and the status only: the
answer of a token endpoint is never quoted (it can echo the client id).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx2

from app.core.errors import ConfigurationError, InvalidResponse, UpstreamUnavailable
from connectors import http

#: seconds before a token's expiry at which it is renewed (a request in flight keeps working)
EARLY = 60.0


class TokenSource:
    """The ``Authorization`` header value for the next request (thread-safe)."""

    def __init__(
        self,
        http_client: Callable[[], httpx2.Client],
        token_url: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        bearer: str | None = None,
        count: Callable[[], None] | None = None,
    ) -> None:
        self._http = http_client
        self._url = token_url
        self._client = (client_id, client_secret)
        self._bearer = bearer
        self._count = count
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    @property
    def refreshable(self) -> bool:
        """True when a 401 may be cured by a new token (client credentials)."""
        return self._bearer is None

    def header(self) -> str:
        """``Bearer <token>``, fetching a new token when none is held or it is about to
        expire."""
        if self._bearer is not None:
            return f"Bearer {self._bearer}"
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                self._token, self._expires = self._fetch()
            return f"Bearer {self._token}"

    def drop(self) -> None:
        """Forget the held token (the server refused it)."""
        with self._lock:
            self._token = None

    def _fetch(self) -> tuple[str, float]:
        client_id, secret = self._client
        if not client_id or not secret:
            raise ConfigurationError("fhir: client_credentials needs client_id and client_secret")
        if self._count is not None:
            self._count()
        try:
            response = self._http().post(
                self._url,
                data={"grant_type": "client_credentials"},
                auth=(client_id, secret),
                headers={"accept": "application/json"},
            )
        except httpx2.TimeoutException:
            raise UpstreamUnavailable("fhir POST /oauth2/token: timed out") from None
        except httpx2.TransportError as exc:
            raise UpstreamUnavailable(f"fhir POST /oauth2/token: {type(exc).__name__}") from None
        if response.status_code >= 400:
            # OAuth answers a bad client with 400 invalid_client / 401 (RFC 6749 5.2): config
            raise http.failure(
                response,
                vendor="fhir",
                what="POST /oauth2/token",
                overrides={400: ConfigurationError},
            )
        try:
            body = response.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise InvalidResponse(
                "fhir POST /oauth2/token: no access_token in the answer"
            ) from None
        if not isinstance(token, str) or not token:
            raise InvalidResponse("fhir POST /oauth2/token: no access_token in the answer")
        return token, time.monotonic() + max(0.0, lifetime - EARLY)
