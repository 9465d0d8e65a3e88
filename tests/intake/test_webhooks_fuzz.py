"""Property-based, over real HTTP: the engine served by uvicorn on a free port with the embedded
queue, fed raw HTTP/1.1 from a socket (chunked bodies, Content-Length missing, too small, too
big or repeated, repeated signing headers, another integration's secret, truncated and modified
bodies, unsigned queries). For EVERY request the queue is read back and:

* nothing is published unless the request carried a valid signature for the integration in its
  path (the oracle below decides validity from how the request was built, not with the engine's
  code);
* what is published is exactly the request's own marks (integration and subject);
* a validly signed, intact, first-seen patient event is published (so the safety check cannot
  pass by rejecting everything);
* no answer is a 5xx other than 503.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.api.app import create_app
from app.core.config import load_integration
from app.core.settings import Settings
from app.queue.sqlite import SqliteQueue
from app.queue.topology import dirty_subscription, ensure_topology
from app.secrets.stores import MemorySecretStore
from app.service.runtime import Runtime
from app.service.serving import serve_in_thread
from app.state.sqlite import SqliteStateStore
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
SECRETS = {"demo-clinic": "whsec_demo-secret", "other-clinic": "whsec_other-secret"}
MARKING_EVENTS = ["patient.updated", "patient.created", "appointment.deleted"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
#: Bodies the engine must cope with, signed or not: random webhook-like payloads.
payload_like = st.fixed_dictionaries(
    {},
    optional={
        "resource_id": st.one_of(st.integers(), st.text(max_size=70), st.none(), st.booleans()),
        "resource_id_type": st.text(max_size=70),
        "event_type": st.one_of(
            st.sampled_from([*MARKING_EVENTS, "applied_tag.created", "patient.merged"]),
            st.text(max_size=140),
        ),
        "changed_fields": st.one_of(st.lists(st.text(max_size=10)), json_values),
        "user_id": json_values,
        "source_user_id": json_values,
        "destination_user_id": json_values,
    },
)

_ids = itertools.count(1_000_000)  # a fresh subject per request: dedupe never hides a publish


@dataclass
class Engine:
    runtime: Runtime
    host: str
    port: int

    def published(self) -> list[dict[str, Any]]:
        """Every mark published since the last call (pulled and acked)."""
        out = []
        for cadence in {i.cadence for i in self.runtime.integrations.values()}:
            subscription = dirty_subscription(cadence)
            while batch := self.runtime.queue.pull(subscription, 100):
                self.runtime.queue.ack(subscription, [m.ack_id for m in batch])
                out += [json.loads(m.data) for m in batch]
        return out


def _runtime(data: Path) -> Runtime:
    demo = load_integration(REPO / "config" / "integrations" / "demo-clinic.toml")
    other = demo.model_copy(
        update={
            "id": "other-clinic",
            "healthie": demo.healthie.model_copy(
                update={"webhook_secrets": ["other-clinic/webhook-signing-secret"]}
            ),
        }
    )
    queue = SqliteQueue(data / "queue.db")  # the embedded queue, on a file as in production
    ensure_topology(queue)
    return Runtime(
        # dedupe on, as by default in production
        settings=Settings(data_dir=data, webhook_dedupe_seconds=300),
        integrations={demo.id: demo, other.id: other},
        secrets=MemorySecretStore(
            {
                demo.healthie.api_key_secret: "unused",
                demo.healthie.webhook_secrets[0]: SECRETS["demo-clinic"],
                other.healthie.webhook_secrets[0]: SECRETS["other-clinic"],
            }
        ),
        queue=queue,
        state=SqliteStateStore(data / "state.db"),
    )


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    runtime = _runtime(tmp_path_factory.mktemp("fuzz-http"))
    port = free_port()
    try:
        with serve_in_thread(create_app(runtime), port=port):
            yield Engine(runtime, "127.0.0.1", port)
    finally:
        runtime.close()


def signing_headers(secret: str, path: str, query: str, body: bytes) -> list[tuple[str, str]]:
    """Healthie's signing, written out from its guide (independent of ``app.intake``)."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    data = f"post {path} {query} {digest} application/json {len(body)}"
    mac = hmac.new(secret.encode(), data.encode(), hashlib.sha256).hexdigest()
    return [("Content-Digest", f"SHA-256={digest}"), ("Signature", f"sig1={mac}")]


@dataclass
class Sent:
    """One raw request and whether Healthie could have sent it as the server will read it."""

    raw: bytes
    valid: bool
    integration: str
    marks_expected: list[str] = field(default_factory=list)  # subjects a valid one must mark
    half_close: bool = False  # the body is short of its Content-Length: end our side


def exchange(engine: Engine, sent: Sent) -> int | None:
    """Send ``sent``; the answer's status, or None when the server closed without one."""
    with socket.create_connection((engine.host, engine.port), timeout=15) as sock:
        sock.sendall(sent.raw)
        if sent.half_close:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    if not reply.startswith(b"HTTP/1.1 "):
        return None
    return int(reply[9:12])


def _chunked(body: bytes, cuts: list[int]) -> bytes:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    pieces = [body[a:b] for a, b in itertools.pairwise(points) if b > a]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@st.composite
def requests(draw: st.DrawFn) -> Sent:
    integration = draw(st.sampled_from(["demo-clinic", "other-clinic"]))
    path = f"/webhooks/healthie/{integration}"
    patient = draw(st.sampled_from([True, True, True, False]))
    subject = str(next(_ids))
    if patient:
        event = draw(st.sampled_from(MARKING_EVENTS))
        body = json.dumps({"resource_id": subject, "resource_id_type": "User", "event_type": event})
        body_bytes = body.encode()
    else:
        body_bytes = draw(
            st.one_of(payload_like.map(lambda p: json.dumps(p).encode()), st.binary(max_size=300))
        )
    query = draw(st.sampled_from(["", "", "a=1"]))
    signer = draw(st.sampled_from(["own", "own", "other", "other", "none", "garbage"]))
    secret = SECRETS[integration]
    if signer == "other":  # another integration's secret, the rest exactly right
        secret = SECRETS["other-clinic" if integration == "demo-clinic" else "demo-clinic"]
    headers = [("Host", "127.0.0.1"), ("Content-Type", "application/json")]
    signed = signing_headers(secret, path, query, body_bytes)
    if signer == "garbage":
        signed = [("Content-Digest", "SHA-256=" + "A" * 44), ("Signature", "sig1=" + "0" * 64)]
    if signer != "none":
        headers += signed
    valid = signer == "own"
    tamper = draw(
        st.sampled_from(
            [
                "none",
                "none",
                "none",
                "modified_body",
                "modified_body",
                "truncated_body",
                "unsigned_query",
                "dup_signature_first",
                "dup_signature_last",
                "dup_digest",
                "other_path",
            ]
        )
    )
    target = path + (f"?{query}" if query else "")
    if tamper == "modified_body" and body_bytes:
        # another patient, same length, still a valid event: only the digest check stops it
        if patient:
            body_bytes = body_bytes.replace(subject.encode(), str(int(subject) + 1).encode())
        else:
            body_bytes = body_bytes[:-1] + bytes([body_bytes[-1] ^ 0x01])
        valid = False
    elif tamper == "truncated_body" and body_bytes:
        body_bytes = body_bytes[: len(body_bytes) // 2]
        valid = False
    elif tamper == "unsigned_query":
        target = path + "?" + (query + "&" if query else "") + "extra=1"
        valid = False
    elif tamper in ("dup_signature_first", "dup_signature_last") and signer != "none":
        junk = ("Signature", "sig1=" + "f" * 64)
        headers = [junk, *headers] if tamper == "dup_signature_first" else [*headers, junk]
        valid = False  # two signatures: which one was checked is a guess, so refused
    elif tamper == "dup_digest" and signer != "none":
        headers.append(("Content-Digest", "SHA-256=" + "B" * 44))
        valid = False
    elif tamper == "other_path":  # signed for one integration, sent to the other
        other = "other-clinic" if integration == "demo-clinic" else "demo-clinic"
        target = target.replace(integration, other)
        integration = other
        valid = False
    framing = draw(
        st.sampled_from(
            ["length", "length", "length", "chunked", "chunked"]
            + ["no_length", "short", "long", "dup_length"]
        )
    )
    half_close = False
    if framing == "length":
        head, wire = [("Content-Length", str(len(body_bytes)))], body_bytes
    elif framing == "chunked":
        cuts = draw(st.lists(st.integers(0, 400), max_size=6))
        head, wire = [("Transfer-Encoding", "chunked")], _chunked(body_bytes, cuts)
    elif framing == "no_length":  # HTTP/1.1 then has an empty body; ours arrive as garbage
        head, wire = [], body_bytes
        valid = valid and not body_bytes
    elif framing == "short":
        cut = draw(st.integers(0, max(0, len(body_bytes) - 1)))
        head, wire = [("Content-Length", str(cut))], body_bytes
        valid = valid and cut == len(body_bytes)
    elif framing == "long":
        extra = draw(st.integers(1, 50))
        head, wire = [("Content-Length", str(len(body_bytes) + extra))], body_bytes
        half_close, valid = True, False
    else:  # the same length twice, or two lengths that disagree
        same = draw(st.booleans())
        second = len(body_bytes) if same else len(body_bytes) + 1
        head = [("Content-Length", str(len(body_bytes))), ("Content-Length", str(second))]
        wire = body_bytes
        valid = valid and same
    lines = [f"POST {target} HTTP/1.1", *(f"{k}: {v}" for k, v in [*headers, *head])]
    lines.append("Connection: close")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + wire
    # published for sure only when framed the ordinary ways (a repeated identical length may
    # be refused by the server's parser: allowed, but not required, to publish)
    expected = [subject] if patient and valid and framing in ("length", "chunked") else []
    return Sent(raw, valid, integration, expected, half_close)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sent=requests())
def test_nothing_is_published_unless_validly_signed_for_its_integration(engine, sent):
    status = exchange(engine, sent)
    published = engine.published()
    event(f"answer {status}, {'valid' if sent.valid else 'invalid'}")
    assert status is None or status < 500 or status == 503, status
    if published:
        assert sent.valid, (status, sent.raw[:400], published)
        assert status == 202
        assert {m["integration_id"] for m in published} == {sent.integration}
    if sent.marks_expected and status != 503:
        assert status == 202, sent.raw[:400]
        assert sorted(m["subject_id"] for m in published) == sent.marks_expected


@pytest.mark.parametrize("framing", ["length", "chunked", "chunked_bytewise"])
def test_a_valid_delivery_is_published_whatever_its_framing(engine, framing):
    subject = str(next(_ids))
    body = json.dumps(
        {"resource_id": subject, "resource_id_type": "User", "event_type": "patient.updated"}
    ).encode()
    path = "/webhooks/healthie/demo-clinic"
    headers = [("Host", "x"), ("Content-Type", "application/json")]
    headers += signing_headers(SECRETS["demo-clinic"], path, "", body)
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
        wire = body
    else:
        headers.append(("Transfer-Encoding", "chunked"))
        cuts = list(range(len(body))) if framing == "chunked_bytewise" else [7, 20]
        wire = _chunked(body, cuts)
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + wire
    assert exchange(engine, Sent(raw, True, "demo-clinic")) == 202
    assert [m["subject_id"] for m in engine.published()] == [subject]
    # the same delivery again (a replay) is answered 2xx and publishes nothing
    assert exchange(engine, Sent(raw, True, "demo-clinic")) == 202
    assert engine.published() == []
