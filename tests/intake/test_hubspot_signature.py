"""HubSpot's v3 signature: vectors computed here from HubSpot's documented recipe (method +
decoded URI + body + timestamp, HMAC-SHA256 with the client secret, base64), independently of
the module's own ``sign``: a valid request, a stale timestamp, a tampered URI, a tampered body,
a wrong secret, and the URI decoding table."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from starlette.datastructures import Headers

from app.intake.hubspot_signature import decode_uri, sign, verify_hubspot_signature

SECRET = "a1b2c3d4-e5f6-4789-9abc-def012345678"
NOW_MS = 1_796_000_000_000
URI = "https://sync.example.com/webhooks/hubspot/hubspot-clinic"
BODY = (
    b'[{"eventId":1,"subscriptionId":7,"portalId":62515,"appId":1160452,'
    b'"occurredAt":1795999990000,"subscriptionType":"contact.propertyChange",'
    b'"attemptNumber":0,"objectId":50001,"propertyName":"phone",'
    b'"propertyValue":"+15551230000","changeSource":"CRM"}]'
)


def recipe(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """HubSpot's steps, literally: the UTF-8 string method + uri + body + timestamp."""
    source = (method + uri + body.decode("utf-8") + timestamp).encode("utf-8")
    return base64.b64encode(hmac.new(secret.encode(), source, hashlib.sha256).digest()).decode()


def headers(signature: str, timestamp: str) -> Headers:
    return Headers({"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": timestamp})


def verify(
    sig: str, *, uri: str = URI, body: bytes = BODY, ts: str | None = None, secret: str = SECRET
) -> bool:
    return verify_hubspot_signature(
        secrets=[secret],
        method="POST",
        uri=uri,
        headers=headers(sig, ts or str(NOW_MS - 1000)),
        body=body,
        now_ms=NOW_MS,
    )


def test_a_request_signed_by_the_recipe_is_valid():
    ts = str(NOW_MS - 1000)
    sig = recipe(SECRET, "POST", URI, BODY, ts)
    assert verify(sig, ts=ts)
    assert sign(SECRET, method="POST", uri=URI, body=BODY, timestamp=ts) == sig


def test_a_timestamp_older_than_five_minutes_is_refused_even_with_a_valid_signature():
    just_in = str(NOW_MS - 300_000)
    stale = str(NOW_MS - 300_001)
    assert verify(recipe(SECRET, "POST", URI, BODY, just_in), ts=just_in)
    assert not verify(recipe(SECRET, "POST", URI, BODY, stale), ts=stale)
    future = str(NOW_MS + 300_001)  # a clock far ahead must not keep a request replayable
    assert not verify(recipe(SECRET, "POST", URI, BODY, future), ts=future)
    for bad in ("", "abc", "1.5e12", str(NOW_MS) + "0000000"):
        assert not verify(recipe(SECRET, "POST", URI, BODY, bad), ts=bad)


def test_a_tampered_uri_body_or_secret_is_refused():
    ts = str(NOW_MS - 1000)
    sig = recipe(SECRET, "POST", URI, BODY, ts)
    assert not verify(sig, ts=ts, uri=URI.replace("hubspot-clinic", "other-clinic"))
    assert not verify(sig, ts=ts, uri=URI + "?x=1")
    assert not verify(sig, ts=ts, uri=URI.replace("https://", "http://"))
    assert not verify(sig, ts=ts, body=BODY.replace(b"+15551230000", b"+15559999999"))
    assert not verify(sig, ts=ts, secret="another-app-secret")
    # the timestamp is signed too: a fresh timestamp on an old signature is refused
    assert not verify(sig, ts=str(NOW_MS - 999))
    # no signature, a signature that is not base64, no secret at all
    assert not verify("", ts=ts)
    assert not verify("not base64!", ts=ts)
    assert not verify_hubspot_signature(
        secrets=[], method="POST", uri=URI, headers=headers(sig, ts), body=BODY, now_ms=NOW_MS
    )


def test_the_documented_escapes_are_decoded_before_signing_and_no_others():
    # HubSpot signs the decoded form of these characters (its table); %20 stays encoded.
    sent = "https://sync.example.com/webhooks/hubspot/c%3Ab?next=%2Fa%40b%21%24%27%28%29%2A%2C%3B%3F&q=a%20b"
    signed = "https://sync.example.com/webhooks/hubspot/c:b?next=/a@b!$'()*,;?&q=a%20b"
    assert decode_uri(sent) == signed
    assert decode_uri("%3a%2f") == ":/"  # hex digits are case-insensitive
    ts = str(NOW_MS)
    sig = recipe(SECRET, "POST", signed, BODY, ts)
    assert verify(sig, ts=ts, uri=sent)
    assert verify(sig, ts=ts, uri=signed)
    assert not verify(sig, ts=ts, uri=sent.replace("%20", " "))


def test_any_secret_of_a_rotation_is_accepted():
    ts = str(NOW_MS)
    sig = recipe(SECRET, "POST", URI, BODY, ts)
    assert verify_hubspot_signature(
        secrets=["old-secret", SECRET],
        method="POST",
        uri=URI,
        headers=headers(sig, ts),
        body=BODY,
        now_ms=NOW_MS,
    )


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_the_method_is_signed(method):
    ts = str(NOW_MS)
    sig = recipe(SECRET, method, URI, BODY, ts)
    assert not verify(sig, ts=ts)
