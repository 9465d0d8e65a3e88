"""Prism as a validating mock of a vendor's published OpenAPI file, and its session fixtures.

::

    running_prism(spec)                       one Prism per spec file per test session
    ───────────────────                       ──────────────────────────────────────────
    node_modules/.bin/prism mock --errors     installed by `make test` from package.json
      -h 127.0.0.1 -p P SPEC                  (npm ci); missing -> skip locally, fail in CI
      in its own process group
    wait for "Prism is listening"             ``prism_brevo``, ``prism_customerio``,
    yield Prism (url, log)                    ``prism_hubspot_contacts``,
    kill the process group                    ``prism_hubspot_properties``: session fixtures

With ``--errors`` Prism answers a request that breaks the contract (an unknown path, a body
that does not match the operation's schema, a missing security header) with an error status
instead of a mocked success, so a connector that sends a wrong field fails its test. Prism
also logs every verdict; ``Prism.violations(mark)`` returns the ``[VALIDATOR] ✖ error`` lines
logged since ``mark`` (``Prism.mark()``), for specs whose error answers Prism cannot serialize
(HubSpot's are declared ``*/*``, so Prism answers 500 rather than 422: see
``../shared/openapi/SOURCES.md``) and for asserting that a whole test sent nothing invalid.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SHARED
from tests.servers import Shared, free_port, stop_group, tail

ROOT = Path(__file__).resolve().parents[2]
PRISM = ROOT / "node_modules" / ".bin" / "prism"
START_TIMEOUT = 90.0  # the large specs (Brevo, 650 KB) take a few seconds on a busy machine


@dataclass(frozen=True)
class Prism:
    """A running Prism: its base URL and the log it writes every verdict to."""

    url: str
    spec: Path
    log_path: Path

    def mark(self) -> int:
        """A position in the log; pass it to ``violations`` for what came after."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, mark: int = 0) -> str:
        """The log text written after ``mark``."""
        with self.log_path.open("rb") as log:
            log.seek(mark)
            return log.read().decode("utf-8", errors="replace")

    def violations(self, mark: int = 0) -> list[str]:
        """The contract violations Prism reported after ``mark`` (its validator's error lines)."""
        return [
            line.split("[VALIDATOR]", 1)[1].strip()
            for line in self.log_since(mark).splitlines()
            if "[VALIDATOR]" in line and "error" in line
        ]


@contextlib.contextmanager
def running_prism(spec: Path) -> Iterator[Prism]:
    """Start Prism mocking ``spec`` with ``--errors`` on 127.0.0.1; stopped after."""
    from tests.conftest import require_service

    name = f"Prism ({spec.name})"
    if not spec.is_file():
        pytest.skip(f"../shared not found at {SHARED}; {spec.name} is needed for this test")
    if not PRISM.exists():
        require_service(name, f"{PRISM} is missing; run `make test` (npm ci) with Node.js 20")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_dir = Path(tempfile.mkdtemp(prefix="prism-"))
    log_path = log_dir / "prism.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(PRISM), "mock", "--errors", "-h", "127.0.0.1", "-p", str(port), str(spec)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
        )
    try:
        while "Prism is listening" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None:
                require_service(name, f"it exited with {proc.returncode}:\n{tail(log_path)}")
            if time.monotonic() - started > START_TIMEOUT:
                require_service(
                    name, f"not listening on {url} within {START_TIMEOUT:.0f} s:\n{tail(log_path)}"
                )
            time.sleep(0.1)
        yield Prism(url, spec, log_path)
    finally:
        stop_group(proc)
        for leftover in log_dir.iterdir():
            leftover.unlink()
        log_dir.rmdir()


_SHARED: dict[str, Shared[Prism]] = {}


def shared_prism(spec_name: str) -> Shared[Prism]:
    """The session's Prism for ``../shared/openapi/<spec_name>`` (one per spec file)."""
    if spec_name not in _SHARED:
        spec = SHARED / "openapi" / spec_name
        _SHARED[spec_name] = Shared(f"Prism ({spec_name})", lambda: running_prism(spec))
    return _SHARED[spec_name]


@pytest.fixture(scope="session")
def prism_brevo() -> Iterator[Prism]:
    """Prism mocking Brevo's API v3 (``brevo-api-v3.swagger.yaml``; paths without ``/v3``)."""
    with shared_prism("brevo-api-v3.swagger.yaml").use() as server:
        yield server


@pytest.fixture(scope="session")
def prism_customerio() -> Iterator[Prism]:
    """Prism mocking customer.io's Track API (``customerio-track-api.json``)."""
    with shared_prism("customerio-track-api.json").use() as server:
        yield server


@pytest.fixture(scope="session")
def prism_hubspot_contacts() -> Iterator[Prism]:
    """Prism mocking HubSpot's CRM contacts v3 (``hubspot-crm-contacts-v3.json``)."""
    with shared_prism("hubspot-crm-contacts-v3.json").use() as server:
        yield server


@pytest.fixture(scope="session")
def prism_hubspot_properties() -> Iterator[Prism]:
    """Prism mocking HubSpot's CRM properties v3 (``hubspot-crm-properties-v3.json``)."""
    with shared_prism("hubspot-crm-properties-v3.json").use() as server:
        yield server
