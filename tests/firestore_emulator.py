"""The Firestore emulator as a session fixture: ``gcloud emulators firestore start``.

Import the fixture into a test module (``from tests.firestore_emulator import
firestore_emulator``). Without ``gcloud``, or when the emulator does not answer within
``START_TIMEOUT`` seconds, the requesting tests skip locally and fail under
``REQUIRE_SERVICES=1``. The emulator runs in its own process group because ``gcloud`` is a
wrapper whose Java child would outlive it; teardown signals the whole group.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import require_service

START_TIMEOUT = 60.0
ENV = "FIRESTORE_EMULATOR_HOST"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1) as reply:
            return bool(reply.read().strip() == b"Ok")
    except (OSError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the emulator's process group, then SIGKILL it if anything lives after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            process.poll()  # reap the wrapper: a zombie still counts as a group member
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[str]:
    """``host:port`` of a running emulator; ``FIRESTORE_EMULATOR_HOST`` points at it meanwhile."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        require_service("Firestore emulator", "gcloud is not on PATH")
        return
    host = f"127.0.0.1:{_free_port()}"
    previous = os.environ.get(ENV)
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [gcloud, "emulators", "firestore", "start", f"--host-port={host}", "--quiet"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            started = time.monotonic()
            while not _answers(host):
                if process.poll() is not None or time.monotonic() - started > START_TIMEOUT:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    why = "it exited" if process.returncode is not None else "no answer"
                    require_service(
                        "Firestore emulator",
                        f"{why} after {time.monotonic() - started:.0f}s:\n{tail}",
                    )
                time.sleep(0.2)
            os.environ[ENV] = host
            yield host
        finally:
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous
            _stop(process)
