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

**No signed timestamp, so no rejection by age.** Healthie's guide (``guides/webhooks.md``,
"Signed payloads") signs the method, path, query, content digest, content type and length:
nothing that changes with time. It also lists a ``Signature-Input`` header, but the string its
sample verifies does not include it, so whatever that header carries (an RFC 9421 ``created``
parameter, say) is not covered by the HMAC and anyone can rewrite it. A stale delivery
therefore cannot be told from a fresh one, and the engine does not try: it must not, either,
because Healthie retries a failed delivery with exponential back-off for up to three days with
the same body, hence the same signature. A captured delivery verifies forever; what bounds a
replay is ``app.intake.dedupe`` (a repeat within the window is dropped), and what makes it
harmless is the design: a webhook is only a hint carrying an id, the data is fetched from
Healthie at flush time, and marks of one subject coalesce.
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
    if body.isascii():
        return lengths  # one byte, one UTF-16 unit: both readings agree
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return lengths
    lengths.add(len(text.encode("utf-16-le")) // 2)
    return lengths


_KEYED: dict[str, hmac.HMAC] = {}


def _keyed(secret: str) -> hmac.HMAC:
    """HMAC-SHA256 keyed with ``secret``, before any data (cached: this runs per webhook)."""
    keyed = _KEYED.get(secret)
    if keyed is None:
        if len(_KEYED) >= 64:  # rotations add secrets; old ones need not stay
            _KEYED.clear()
        keyed = _KEYED[secret] = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)
    return keyed


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
    lengths = _length_readings(body)
    datas = {
        signature_data(method=method, path=path, query=query, digest=d, length=n)
        for d in _digest_readings(content_digest)
        for n in lengths
    }
    matched = False
    for secret in secrets:
        keyed = _keyed(secret)
        for data in datas:
            state = keyed.copy()  # a copy of the keyed state: the key schedule runs once
            state.update(data)
            mac = state.digest()
            for candidate in provided:
                # no early exit: keep timing independent of which reading matched
                matched |= hmac.compare_digest(mac, candidate)
    return matched
