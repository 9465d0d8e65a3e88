"""HubSpot webhook signature v3 verification (pure functions, no I/O).

HubSpot's recipe (``../shared/openapi/hubspot-webhooks-signature-v3.md``, from
https://developers.hubspot.com/docs/api/webhooks/validating-requests, "Validate the v3 request
signature")::

    refuse when X-HubSpot-Request-Timestamp (epoch milliseconds) is older than 5 minutes
    uri     = the full request URI with %3A %2F %3F %40 %21 %24 %27 %28 %29 %2A %2C %3B decoded
              (only those: any other escape stays as sent)
    source  = utf-8(method + uri + body + timestamp)
    X-HubSpot-Signature-v3 == base64(HMAC-SHA256(app client secret, source))   constant time

The escapes are matched case-insensitively (``%3a`` is ``%3A``: percent-encoding's hex digits
are case-insensitive, RFC 3986 section 2.1). A timestamp more than 5 minutes in the future is
refused too: a captured request must not stay replayable because the sender's clock ran
ahead. Several secrets are accepted at once so rotating the app's secret drops no webhook.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

#: HubSpot's limit on a request's age, in milliseconds
MAX_AGE_MS = 5 * 60 * 1000
SIGNATURE_HEADER = "x-hubspot-signature-v3"
TIMESTAMP_HEADER = "x-hubspot-request-timestamp"
_DECODED = {
    "3a": ":",
    "2f": "/",
    "3f": "?",
    "40": "@",
    "21": "!",
    "24": "$",
    "27": "'",
    "28": "(",
    "29": ")",
    "2a": "*",
    "2c": ",",
    "3b": ";",
}
_ESCAPE = re.compile("%(" + "|".join(_DECODED) + ")", re.IGNORECASE)


def decode_uri(uri: str) -> str:
    """``uri`` with exactly the escapes of HubSpot's table decoded."""
    return _ESCAPE.sub(lambda m: _DECODED[m.group(1).lower()], uri)


def source_bytes(*, method: str, uri: str, body: bytes, timestamp: str) -> bytes:
    """The bytes HubSpot signs: method, decoded URI, raw body and timestamp, UTF-8."""
    return method.encode() + decode_uri(uri).encode() + body + timestamp.encode()


def sign(secret: str, *, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """The ``X-HubSpot-Signature-v3`` value HubSpot sends for this request."""
    data = source_bytes(method=method, uri=uri, body=body, timestamp=timestamp)
    return base64.b64encode(hmac.digest(secret.encode(), data, hashlib.sha256)).decode()


def fresh(timestamp: str | None, now_ms: int) -> bool:
    """True when ``timestamp`` is epoch milliseconds within 5 minutes of ``now_ms``."""
    if not timestamp or not timestamp.isdigit() or len(timestamp) > 16:
        return False
    return abs(now_ms - int(timestamp)) <= MAX_AGE_MS


def verify_hubspot_signature(
    *,
    secrets: Sequence[str],
    method: str,
    uri: str,
    headers: Mapping[str, str],
    body: bytes,
    now_ms: int,
) -> bool:
    """True when the request carries a valid, fresh v3 signature under one of ``secrets``.

    ``uri`` is the full URI HubSpot called (scheme, host, path and query, as registered in
    the app); ``headers`` must be case-insensitive (Starlette's or httpx2's ``Headers``)."""
    provided = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not provided or not secrets or not fresh(timestamp, now_ms):
        return False
    assert timestamp is not None  # fresh() refused a missing one
    try:
        candidate = base64.b64decode(provided.strip(), validate=True)
    except ValueError:  # binascii.Error is a ValueError
        return False
    data = source_bytes(method=method.upper(), uri=uri, body=body, timestamp=timestamp)
    matched = False
    for secret in secrets:
        mac = hmac.digest(secret.encode(), data, hashlib.sha256)
        matched |= hmac.compare_digest(mac, candidate)  # no early exit: timing stays flat
    return matched
