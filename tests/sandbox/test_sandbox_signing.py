"""The sandbox signs webhooks byte-for-byte like Healthie."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.signing import js_length, sign_webhook

VECTORS = (
    Path(__file__).resolve().parents[3] / "shared" / "healthie" / "webhook-signature-vectors.json"
)


def _vectors() -> list[dict]:
    if not VECTORS.exists():
        return []
    data = json.loads(VECTORS.read_text(encoding="utf-8"))
    return [
        v
        for v in data["vectors"]
        if "b64-after-first-equals-utf16-units" in v["name"] and v["valid"]
    ]


@pytest.mark.shared
@pytest.mark.parametrize(
    "vector", [*_vectors()] or [None], ids=lambda v: v["name"] if v else "absent"
)
def test_reproduces_healthie_vectors(vector: dict | None) -> None:
    if vector is None:
        pytest.skip(f"signature vectors not found at {VECTORS} (../shared beside the repo)")
    created = int(vector["headers"]["signature-input"].rsplit("=", 1)[1])
    headers = sign_webhook(
        secret=vector["secret"],
        method=vector["method"],
        path=vector["path"],
        query=vector["query"],
        body=vector["body"].encode("utf-8"),
        created=created,
    )
    assert headers["Signature"] == vector["headers"]["signature"]
    assert headers["Content-Digest"] == vector["headers"]["content-digest"]
    assert headers["Signature-Input"] == vector["headers"]["signature-input"]
    assert headers["Content-Type"] == "application/json"


def test_length_counts_utf16_code_units() -> None:
    assert js_length("abc") == 3
    assert js_length("Zoë") == 3  # 4 UTF-8 bytes, one UTF-16 unit for ë
    assert js_length("🙂") == 2  # astral: a surrogate pair
