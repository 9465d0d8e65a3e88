"""The Google Sheets v4 edge of the Sheets connector: the client, one call, its failures as
engine errors, and the A1 notation the connector addresses cells with.

The client is google-api-python-client's ``sheets`` v4 service built from the discovery
document the package bundles (``static_discovery``: no network at build time; the tests check
every request against the same document, ``../shared/openapi/google-sheets-v4.discovery.json``)
over google-auth-httplib2 with a service account. Retries belong to the platform's
RetryPolicy alone: requests run with ``num_retries=0``, a 401 is not refreshed and resent
(the token is refreshed before it expires), and httplib2 only reconnects a stale keep-alive
connection before a request was sent.

=====================================  ==================================================
Sheets answer                          engine error
=====================================  ==================================================
429 (RESOURCE_EXHAUSTED: per-minute    RateLimited (Retry-After honoured when sent)
quota)
403 RESOURCE_EXHAUSTED /               RateLimited (older quota answers)
rateLimitExceeded
400                                    TargetRejected (the base bisects to the bad row)
401, 403 (not shared with the          ConfigurationError
service account), 404 (no such
spreadsheet), a refused token request
5xx, timeouts, connection failures     UpstreamUnavailable
=====================================  ==================================================

Messages carry the method, the tab, the HTTP status and Google's status code, never a value
(Google's messages can quote the cells of the request).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from app.core.errors import (
    ConfigurationError,
    HealthieSyncError,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from app.resilience.retry import parse_retry_after
from app.resilience.status import error_for_status

SHEETS_SCOPE = "https://www.googleapis.com/auth/spreadsheets"
TIMEOUT = 30.0  # seconds per HTTP request
_CODE = re.compile(r"[A-Z][A-Z_]{1,40}")
_REASON = re.compile(r"[A-Za-z]{1,40}")


def column_letter(index: int) -> str:
    """The A1 letters of the 0-based column ``index`` (0 -> A, 26 -> AA)."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def a1(title: str, cells: str = "") -> str:
    """``'title'!cells`` (the whole tab without ``cells``); the title is always quoted, so a
    tab named like a cell (``a1``) is never read as one."""
    quoted = "'" + title.replace("'", "''") + "'"
    return f"{quoted}!{cells}" if cells else quoted


def row_range(title: str, row: int, first: int, last: int) -> str:
    """The A1 range of columns ``first``..``last`` (0-based) of the 1-based ``row``."""
    return a1(title, f"{column_letter(first)}{row}:{column_letter(last)}{row}")


def service_account(target: str, secret: SecretStr | None) -> Any:
    """google-auth credentials from a service-account key JSON (never quoted in an error)."""
    from google.oauth2 import service_account as sa

    problem = f"target {target!r} (sheets): credentials.service_account_json is not a "
    if secret is None:
        raise ConfigurationError(
            f"target {target!r} (sheets) needs credentials ['service_account_json']"
        )
    try:
        info = json.loads(secret.get_secret_value())
    except ValueError:
        raise ConfigurationError(problem + "JSON document") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ConfigurationError(problem + "service-account key (type service_account)")
    try:
        return sa.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[SHEETS_SCOPE]
        )
    except (ValueError, KeyError, TypeError):
        raise ConfigurationError(problem + "usable service-account key") from None


def build_service(credentials: Any, endpoint: str | None) -> Any:
    """The ``sheets`` v4 service (the bundled discovery document; no I/O until a request)."""
    import google_auth_httplib2
    import httplib2
    from googleapiclient.discovery import build

    http = google_auth_httplib2.AuthorizedHttp(
        credentials, http=httplib2.Http(timeout=TIMEOUT), refresh_status_codes=()
    )
    options = {"api_endpoint": endpoint.rstrip("/") + "/"} if endpoint else None
    return build(
        "sheets",
        "v4",
        http=http,
        client_options=options,
        static_discovery=True,
        cache_discovery=False,
    )


def close_service(service: Any) -> None:
    """Close the service's HTTP connections."""
    service.close()


def execute(target: str, what: str, request: Callable[[], Any]) -> Any:
    """``request().execute()`` once (no library retry), its failures as engine errors."""
    import httplib2
    from google.auth import exceptions as gauth
    from googleapiclient.errors import HttpError

    try:
        return request().execute(num_retries=0)
    except HealthieSyncError:
        raise
    except HttpError as exc:
        raise translate(what, exc) from exc
    except gauth.RefreshError as exc:
        if getattr(exc, "retryable", False):
            raise UpstreamUnavailable(f"Google Sheets {what}: token endpoint unavailable") from exc
        raise ConfigurationError(
            f"target {target!r} (sheets): the service account's token request was refused "
            "(check credentials.service_account_json)"
        ) from exc
    except (gauth.TransportError, httplib2.HttpLib2Error, OSError) as exc:  # incl. timeouts
        raise UpstreamUnavailable(f"Google Sheets {what}: {type(exc).__name__}") from exc


def translate(what: str, exc: Any) -> HealthieSyncError:
    """The engine error for a Sheets HTTP answer (``googleapiclient.errors.HttpError``)."""
    status = int(exc.resp.status)
    code, reason = _codes(exc.content)
    label = f"Google Sheets {what}: HTTP {status}" + (f" {code}" if code else "")
    headers = {str(k).lower(): str(v) for k, v in dict(exc.resp).items()}
    retry_after = parse_retry_after(headers)
    if status == 403 and (
        code == "RESOURCE_EXHAUSTED" or reason in ("rateLimitExceeded", "userRateLimitExceeded")
    ):
        return RateLimited(label, retry_after=retry_after)
    if status == 400:
        return TargetRejected(label)
    if status == 403:
        return ConfigurationError(
            f"{label} (share the spreadsheet with the service account as an editor)"
        )
    if status == 404:
        return ConfigurationError(
            f"{label} (no such spreadsheet, or it is not shared with the service account)"
        )
    return error_for_status(status, label, retry_after=retry_after)


def _codes(content: Any) -> tuple[str, str]:
    """Google's status code and first reason of an error body (names only, never text)."""
    try:
        body = json.loads(content)
        error = body.get("error", {}) if isinstance(body, dict) else {}
    except (ValueError, TypeError, AttributeError):
        return "", ""
    if not isinstance(error, dict):
        return "", ""
    code = str(error.get("status", ""))
    errors = error.get("errors") or []
    reason = str(errors[0].get("reason", "")) if errors and isinstance(errors[0], dict) else ""
    return (
        code if _CODE.fullmatch(code) else "",
        reason if _REASON.fullmatch(reason) else "",
    )
