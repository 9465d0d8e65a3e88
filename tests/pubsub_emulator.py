"""The Pub/Sub emulator as a session fixture: started once, shared, killed with its Java child.

``gcloud beta emulators pubsub start`` is a Python wrapper that spawns a JVM; killing the wrapper
alone leaves the JVM listening. So the emulator runs in its own process group and teardown
signals the whole group. Without gcloud, or when the emulator does not answer within
``START_TIMEOUT`` seconds, tests skip locally and fail under ``REQUIRE_SERVICES=1``.

Tests share one emulator, so each must use its own topic and subscription names.
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
from pathlib import Path

import pytest

from tests.conftest import require_service

PROJECT = "test-project"
START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1) as reply:
            return reply.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a recycled group id we do not own: ours is gone
        return False
    return True


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the emulator's process group, then SIGKILL whatever is left."""
    pgid = proc.pid  # start_new_session made the wrapper the group leader
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        until = time.monotonic() + wait
        while time.monotonic() < until:
            proc.poll()  # reap the wrapper, or it stays in the group as a zombie
            if not _group_alive(pgid):
                return
            time.sleep(0.1)
    proc.poll()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """Start the emulator, point ``PUBSUB_EMULATOR_HOST`` at it, yield ``host:port``."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        require_service("Pub/Sub emulator", "gcloud is not on PATH")
    assert gcloud is not None
    host = f"127.0.0.1:{_free_port()}"
    log_dir = Path(tempfile.mkdtemp(prefix="pubsub-emulator-"))
    log_path = log_dir / "emulator.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [gcloud, "beta", "emulators", "pubsub", "start",
             f"--host-port={host}", f"--project={PROJECT}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while not _answers(host):
            if proc.poll() is not None:
                why = f"emulator exited with {proc.returncode}:\n{_tail(log_path)}"
                require_service("Pub/Sub emulator", why)
            if time.monotonic() - started > START_TIMEOUT:
                why = f"no answer on {host} within {START_TIMEOUT:.0f} s:\n{_tail(log_path)}"
                require_service("Pub/Sub emulator", why)
            time.sleep(0.2)
        print(f"\nPub/Sub emulator on {host} ready in {time.monotonic() - started:.1f} s")
        previous = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        try:
            yield host
        finally:
            if previous is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = previous
    finally:
        _stop_group(proc)
        shutil.rmtree(log_dir, ignore_errors=True)
