"""Google Cloud emulators as session fixtures, one implementation for every emulator.

``gcloud ... emulators X start`` is a Python wrapper that spawns a JVM; killing the wrapper alone
leaves the JVM listening. So each emulator runs in its own process group and teardown signals
the whole group (SIGTERM, then SIGKILL). Without gcloud, or when an emulator does not answer
within ``START_TIMEOUT`` seconds, the requesting tests skip locally and fail under
``REQUIRE_SERVICES=1``. While it runs, the emulator's ``*_EMULATOR_HOST`` variable points at it,
so the Google clients find it on their own.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require_service

START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(host: str, ready: Callable[[int, bytes], bool]) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1) as reply:
            return ready(reply.status, reply.read())
    except (OSError, urllib.error.URLError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or a recycled id that is not ours
        return False
    return True


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
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


@contextmanager
def running_emulator(
    name: str,
    args: list[str],
    env_var: str,
    ready: Callable[[int, bytes], bool] = lambda status, body: status == 200,
) -> Iterator[str]:
    """Start ``gcloud <args> --host-port=HOST``; yield ``host:port`` with ``env_var`` set."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        require_service(name, "gcloud is not on PATH")
    assert gcloud is not None
    host = f"127.0.0.1:{_free_port()}"
    log_dir = Path(tempfile.mkdtemp(prefix="emulator-"))
    log_path = log_dir / "emulator.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [gcloud, *args, f"--host-port={host}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    previous = os.environ.get(env_var)
    try:
        while not _answers(host, ready):
            if proc.poll() is not None:
                require_service(name, f"it exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() - started > START_TIMEOUT:
                require_service(
                    name, f"no answer on {host} within {START_TIMEOUT:.0f} s:\n{_tail(log_path)}"
                )
            time.sleep(0.2)
        print(f"\n{name} on {host} ready in {time.monotonic() - started:.1f} s")
        os.environ[env_var] = host
        yield host
    finally:
        if previous is None:
            os.environ.pop(env_var, None)
        else:
            os.environ[env_var] = previous
        _stop_group(proc)
        shutil.rmtree(log_dir, ignore_errors=True)
