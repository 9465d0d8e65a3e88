"""Who may call the guarded routes: ``POST /flush/{cadence}`` and every ``/ops/*`` route.

Production: Cloud Scheduler calls with a Google-signed OIDC ID token; it is verified against
Google's certificates (signature, expiry, issuer), the configured audience (the service URL) and
the configured service account's e-mail. Local default: a shared bearer token. With neither
configured the route stays closed (401), never open.

The check runs before anything else of the request: ``app.api.bodies.RequestGuard`` asks
:meth:`OperatorAuthorizer.allowed` from the headers alone, before the route parses a path,
query or body (FastAPI validates those before a route's own code runs). Each guarded router
also depends on :func:`operator_required`, so a route mounted without the guard stays closed.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import HTTPException, Request

from app.api.bodies import OPERATOR_SCOPE_KEY
from app.core.settings import Settings

log = logging.getLogger(__name__)

GOOGLE_ISSUERS = {"accounts.google.com", "https://accounts.google.com"}

Verifier = Callable[[str, str], Mapping[str, Any]]  # (token, audience) -> claims


def google_verifier(certs_url: str | None = None) -> Verifier:
    """Verify Google-signed ID tokens with google-auth (certificates fetched and cached)."""
    import google.auth.transport.requests
    from google.oauth2 import id_token

    request = google.auth.transport.requests.Request()

    def verify(token: str, audience: str) -> Mapping[str, Any]:
        kwargs: dict[str, Any] = {"audience": audience, "clock_skew_in_seconds": 10}
        if certs_url:
            kwargs["certs_url"] = certs_url
        claims: Mapping[str, Any] = id_token.verify_token(token, request, **kwargs)
        return claims

    return verify


class OperatorAuthorizer:
    """Decides whether an ``Authorization`` header may flush or call an operator route."""

    def __init__(self, settings: Settings, verifier: Verifier | None = None) -> None:
        self._token = settings.flush_token
        self._audience = settings.flush_oidc_audience
        self._account = settings.flush_oidc_service_account
        self._verifier = verifier
        if self._audience and self._account and self._verifier is None:
            self._verifier = google_verifier(settings.flush_oidc_certs_url)

    def allowed(self, authorization: str | None) -> bool:
        """True for a valid OIDC token of the configured account, or the shared token."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        presented = authorization.removeprefix("Bearer ").strip()
        if self._token is not None and hmac.compare_digest(
            presented.encode(), self._token.get_secret_value().encode()
        ):
            return True
        if not (self._verifier and self._audience and self._account):
            return False
        try:
            claims = self._verifier(presented, self._audience)
        except Exception as exc:  # noqa: BLE001 - any verification failure is a refusal
            log.warning("operator token refused: %s", type(exc).__name__)
            return False
        return (
            claims.get("iss") in GOOGLE_ISSUERS
            and claims.get("email") == self._account
            and claims.get("email_verified") is True
        )


def operator_required(authorizer: OperatorAuthorizer) -> Callable[[Request], None]:
    """A router dependency: 401 unless the guard already accepted the request's credentials
    (:data:`app.api.bodies.OPERATOR_SCOPE_KEY`) or ``authorizer`` accepts them now."""

    def check(request: Request) -> None:
        if request.scope.get(OPERATOR_SCOPE_KEY) is True:
            return
        if not authorizer.allowed(request.headers.get("authorization")):
            raise HTTPException(401, "unauthorized", headers={"WWW-Authenticate": "Bearer"})

    return check
