"""/flush/{cadence} authentication: Google OIDC tokens verified for real (google-auth against a
local certificate server on loopback), the shared token, and refusals."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from fastapi.testclient import TestClient
from google.auth import crypt, jwt

from app.api.app import create_app
from app.service.serving import serve_in_thread
from tests.helpers import demo_runtime

AUDIENCE = "https://healthie-sync.example.run.app"
ACCOUNT = "scheduler@proj.iam.gserviceaccount.com"


def _key_and_cert() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem_key, cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def keys():
    return {"good": _key_and_cert(), "other": _key_and_cert()}


@pytest.fixture(scope="module")
def certs_url(keys):
    app = FastAPI()

    @app.get("/certs")
    def certs() -> dict[str, str]:
        return {"k1": keys["good"][1].decode()}

    with serve_in_thread(app) as url:
        yield f"{url}/certs"


def token(keys, which="good", **claims) -> str:
    now = int(time.time())
    payload = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "email": ACCOUNT,
        "email_verified": True,
        "iat": now,
        "exp": now + 600,
        "sub": "1",
        **claims,
    }
    signer = crypt.RSASigner.from_string(keys[which][0], key_id="k1")
    return jwt.encode(signer, payload).decode()


@pytest.fixture
def client(tmp_path, certs_url):
    runtime = demo_runtime(
        tmp_path,
        flush_oidc_audience=AUDIENCE,
        flush_oidc_service_account=ACCOUNT,
        flush_oidc_certs_url=certs_url,
        flush_token="local-shared-token-123",
    )
    yield TestClient(create_app(runtime))
    runtime.close()


def status(client, header: str | None) -> int:
    headers = {"Authorization": header} if header is not None else {}
    return client.post("/flush/hourly", headers=headers).status_code


def test_valid_scheduler_token_is_accepted(client, keys):
    assert status(client, f"Bearer {token(keys)}") == 200


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "https://elsewhere.example"},
        {"email": "someone@proj.iam.gserviceaccount.com"},
        {"email_verified": False},
        {"iss": "https://evil.example"},
        {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200},
    ],
)
def test_wrong_claims_are_refused(client, keys, claims):
    assert status(client, f"Bearer {token(keys, **claims)}") == 401


def test_token_signed_by_another_key_is_refused(client, keys):
    assert status(client, f"Bearer {token(keys, which='other')}") == 401


def test_shared_token_and_missing_header(client):
    assert status(client, "Bearer local-shared-token-123") == 200
    assert status(client, "Bearer local-shared-token-12") == 401
    assert status(client, None) == 401
    assert status(client, "Basic local-shared-token-123") == 401


def test_nothing_configured_means_closed(tmp_path):
    runtime = demo_runtime(tmp_path)
    assert status(TestClient(create_app(runtime)), "Bearer anything") == 401
    runtime.close()
