"""Healthie webhook signature verification (pure functions, no I/O).

Healthie signs ``"{method} {path} {query} {digest} application/json {length}"`` with
HMAC-SHA256 and sends ``Signature: sig1=<hex>``. Public implementations disagree on two details,
so both readings of each are accepted (see ../shared/DESIGN.md):

* the digest string is the ``Content-Digest`` value split on ``=`` taking element 1 (Healthie's
  docs sample) **or** everything after the first ``=`` (keeps base64 padding);
* the length is the UTF-8 byte length **or** the JavaScript string length (UTF-16 units).

The HMAC covers only the digest *string*, so the digest itself is checked against the raw body
too; otherwise a captured signature could be replayed with another body of the same length.
Digests are accepted as hex, base64, or RFC 9530 ``:base64:`` byte sequences.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

CONTENT_TYPE = "application/json"


def body_digest_matches(content_digest: str, body: bytes) -> bool:
    """True when ``content_digest`` (the header value) is the SHA-256 of ``body``."""
    algorithm, sep, value = content_digest.partition("=")
    if not sep or algorithm.strip().lower() != "sha-256":
        return False
    value = value.strip()
    if len(value) >= 2 and value[0] == ":" and value[-1] == ":":
        value = value[1:-1]
    expected = hashlib.sha256(body).digest()
    candidates: list[bytes] = []
    if len(value) == 64:
        try:
            candidates.append(bytes.fromhex(value))
        except ValueError:
            pass
    try:
        candidates.append(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        pass
    return any(hmac.compare_digest(c, expected) for c in candidates)


def _digest_readings(content_digest: str) -> set[str]:
    first_part = content_digest.split("=")[1] if "=" in content_digest else ""
    after_first = content_digest.partition("=")[2]
    return {first_part, after_first}


def _length_readings(body: bytes) -> set[int]:
    lengths = {len(body)}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return lengths
    lengths.add(len(text.encode("utf-16-le")) // 2)
    return lengths


def signature_data(*, method: str, path: str, query: str, digest: str, length: int) -> bytes:
    """The exact bytes Healthie feeds to HMAC for one reading of digest and length."""
    return f"{method.lower()} {path} {query} {digest} {CONTENT_TYPE} {length}".encode()


def _provided_signatures(header: str) -> list[bytes]:
    # "sig1=<hex>" possibly with several comma-separated labels; accept any sig label.
    out = []
    for part in header.split(","):
        _, sep, value = part.strip().partition("=")
        if sep and value:
            try:
                out.append(bytes.fromhex(value.strip()))
            except ValueError:
                continue  # not hex: cannot match any HMAC
    return out


def verify_healthie_signature(
    *,
    secrets: Sequence[str],
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
) -> bool:
    """True when ``body`` carries a valid Healthie signature under any of ``secrets``.

    ``headers`` must be case-insensitive (Starlette's ``Headers`` or ``httpx2.Headers``);
    ``query`` is the raw query string without ``?``; several secrets are accepted at once so a
    rotation never drops webhooks. Every comparison is constant-time.
    """
    signature_header = headers.get("signature")
    content_digest = headers.get("content-digest")
    if not signature_header or not content_digest or not secrets:
        return False
    if not body_digest_matches(content_digest, body):
        return False
    provided = _provided_signatures(signature_header)
    if not provided:
        return False
    datas = {
        signature_data(method=method, path=path, query=query, digest=d, length=n)
        for d in _digest_readings(content_digest)
        for n in _length_readings(body)
    }
    matched = False
    for secret in secrets:
        key = secret.encode("utf-8")
        for data in datas:
            mac = hmac.digest(key, data, "sha256")  # one-shot C path: this runs per webhook
            for candidate in provided:
                # no early exit: keep timing independent of which reading matched
                matched |= hmac.compare_digest(mac, candidate)
    return matched
