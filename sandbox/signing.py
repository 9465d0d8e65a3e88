"""Sign webhook deliveries the way Healthie does.

Healthie signs an HTTP-message-signatures-like data string with HMAC-SHA256::

    "{method lower} {path} {query} {digest} application/json {content length}"

Public verifiers disagree on two details (see DESIGN.md); the sandbox signs with the reading
Healthie's production signer uses: ``digest`` is the ``Content-Digest`` value after the
*first* ``=`` (so base64 padding is kept), and the length is the body's JavaScript string
length (UTF-16 code units), because Healthie computes it as ``JSON.stringify(body).length``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SIGNATURE_COMPONENTS = (
    '("@method" "@path" "@query" "content-digest" "content-type" "content-length")'
)


def js_length(text: str) -> int:
    """Length of ``text`` as JavaScript counts it: UTF-16 code units, not code points."""
    return len(text.encode("utf-16-le")) // 2


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` header value for ``body``: ``SHA-256=<base64 digest>``."""
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def signing_string(*, method: str, path: str, query: str, digest_header: str, body: bytes) -> str:
    """The data string Healthie feeds to HMAC for one request."""
    digest_value = digest_header.split("=", 1)[1]
    length = js_length(body.decode("utf-8"))
    return f"{method.lower()} {path} {query} {digest_value} application/json {length}"


def sign_webhook(
    *, secret: str, method: str, path: str, query: str, body: bytes, created: int
) -> dict[str, str]:
    """Return the headers Healthie sends with a webhook ``body`` POSTed to ``path?query``.

    ``created`` is the Unix time recorded in ``Signature-Input``; ``query`` is the raw query
    string without the ``?`` ("" when there is none).
    """
    digest = content_digest(body)
    data = signing_string(method=method, path=path, query=query, digest_header=digest, body=body)
    mac = hmac.new(secret.encode("utf-8"), data.encode("utf-8"), hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "Content-Digest": digest,
        "Signature-Input": f"sig1={SIGNATURE_COMPONENTS};created={created}",
        "Signature": f"sig1={mac}",
    }
