"""The HTTP edges, over real HTTP against uvicorn on loopback (raw sockets where a client
library cannot produce the case): credentials before validation on /flush and /ops, body
limits (declared and chunked), a locked state store answered 503 before its busy timeout,
a client leaving mid-body logged as one warning, a stalled body timed out."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from app.api import bodies
from app.api.app import create_app
from app.service.serving import serve_in_thread
from app.state.sqlite import SqliteStateStore
from tests.helpers import demo_runtime

TOKEN = "operator-token-for-tests-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MB = 1024 * 1024


class Records(logging.Handler):
    """Every record logged anywhere in the process (uvicorn's loggers do not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def of(self, logger: str, level: int = logging.WARNING) -> list[logging.LogRecord]:
        with self._lock2:
            return [r for r in self.records if r.name == logger and r.levelno == level]

    def errors(self) -> list[logging.LogRecord]:
        with self._lock2:
            return [r for r in self.records if r.levelno >= logging.ERROR or r.exc_info]

    def wait_for(self, logger: str, seconds: float = 10.0) -> list[logging.LogRecord]:
        deadline = time.monotonic() + seconds
        while not self.of(logger) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # anything the same request logs next (a traceback) lands too
        return self.of(logger)


@pytest.fixture
def state_path(tmp_path):
    return tmp_path / "state.db"


@pytest.fixture
def runtime(tmp_path, state_path):
    rt = demo_runtime(tmp_path, flush_token=TOKEN, state=SqliteStateStore(state_path))
    yield rt
    rt.close()


@pytest.fixture
def server(runtime, monkeypatch) -> Iterator[str]:
    monkeypatch.setattr(bodies, "BODY_SECONDS", 1.0)  # a stalled body is cut off after 1 s
    with serve_in_thread(create_app(runtime)) as url:
        yield url


@pytest.fixture
def records(server) -> Iterator[Records]:
    handler = Records()
    loggers = [
        logging.getLogger(),
        logging.getLogger("uvicorn"),
        logging.getLogger("uvicorn.error"),
    ]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=15)
    return sock


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers, body and whether the server closed the connection after it."""
    data = b""
    closed = False
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    try:
        closed = sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        closed = True  # reset: closed with our unread bytes in its buffer
    return int(status_line.split()[1]), headers, body, closed


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# --- credentials before validation -------------------------------------------------------

UNAUTHENTICATED = [
    ("POST", "/flush/never-a-cadence", None, {}),
    ("POST", "/flush/hourly?stage_only=not-a-bool", None, {}),
    ("GET", "/ops/runs?limit=not-a-number", None, {}),
    ("GET", "/ops/dead-letters?integration=x", None, {}),
    ("POST", "/ops/replay", b"{not json", {"content-type": "application/json"}),
    ("POST", "/ops/replay", b'{"rate_per_second": -1}', {"content-type": "application/json"}),
    ("POST", "/ops/no-such-route", b"{}", {"content-type": "application/json"}),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), UNAUTHENTICATED)
@pytest.mark.parametrize("credentials", [None, "Bearer wrong-token", f"Basic {TOKEN}"])
def test_unauthenticated_requests_get_401_and_nothing_about_the_request(
    server, method, path, body, headers, credentials
):
    sent = dict(headers)
    if credentials is not None:
        sent["Authorization"] = credentials
    response = httpx.request(method, server + path, content=body, headers=sent, timeout=15)
    assert response.status_code == 401
    assert response.json() == {"detail": "unauthorized"}


def test_authenticated_requests_are_still_validated(server):
    bad = httpx.post(server + "/flush/never-a-cadence", headers=AUTH, timeout=15)
    assert bad.status_code == 422
    replay = httpx.post(
        server + "/ops/replay",
        content=b"{not json",
        timeout=15,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert replay.status_code == 422
    assert httpx.post(server + "/flush/hourly", headers=AUTH, timeout=15).status_code == 200
    assert httpx.get(server + "/ops/runs", headers=AUTH, timeout=15).status_code == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_unauthenticated_20mb_replay_is_refused_before_its_body_is_read(server, framing):
    # Only the first 64 KiB of the 20 MB is ever sent: the answer cannot have waited for it.
    sock = connect(server)
    declared = (
        {"Content-Length": str(20 * MB)}
        if framing == "content-length"
        else {"Transfer-Encoding": "chunked"}
    )
    sock.sendall(head("POST", "/ops/replay", {"Content-Type": "application/json", **declared}))
    first = b'{"integration": "' + b"x" * (64 * 1024)
    sock.sendall(first if framing == "content-length" else chunk(first))
    status, headers, body, closed = read_response(sock)
    sock.close()
    assert status == 401
    assert body == b'{"detail":"unauthorized"}'
    assert headers["connection"] == "close"
    assert closed  # the connection is dropped, not drained


# --- body limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ops/replay", "/flush/hourly"])
def test_declared_oversize_body_is_413_before_it_is_sent(server, path):
    sock = connect(server)
    sock.sendall(head("POST", path, {**AUTH, "Content-Length": str(20 * MB)}))
    status, _, _, closed = read_response(sock)  # no body byte was sent
    sock.close()
    assert (status, closed) == (413, True)


@pytest.mark.parametrize(("path", "limit"), [("/ops/replay", 64 * 1024), ("/flush/hourly", 4096)])
def test_chunked_oversize_body_is_413_once_it_passes_the_limit(server, runtime, path, limit):
    sock = connect(server)
    sock.sendall(head("POST", path, {**AUTH, "Transfer-Encoding": "chunked"}))
    piece = b" " * 1024
    for _ in range(limit // len(piece) + 1):  # one KiB past the limit, no final chunk
        sock.sendall(chunk(piece))
    status, _, _, closed = read_response(sock)
    sock.close()
    assert (status, closed) == (413, True)
    assert runtime.state.list_runs(None, 10) == []  # the route never ran


def test_chunked_body_within_the_limit_is_served(server):
    def pieces() -> Iterator[bytes]:
        yield b'{"preview": '
        yield b"true}"

    response = httpx.post(
        server + "/ops/replay",
        content=pieces(),  # an iterator: httpx sends it chunked
        headers={**AUTH, "content-type": "application/json"},
        timeout=15,
    )
    assert response.status_code == 200
    assert response.json()["preview"] is True


# --- a locked store ------------------------------------------------------------------------


def test_locked_state_store_is_503_before_its_busy_timeout(server, state_path):
    # Another connection holds the SQLite file exclusively: every write of the service waits
    # out the store's 30 s busy timeout. The client gives up after 10 s.
    blocker = sqlite3.connect(state_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        flush = httpx.post(server + "/flush/hourly", headers=AUTH, timeout=10)
        assert flush.status_code == 503
        assert int(flush.headers["retry-after"]) > 0
        # the flush still waits for the lock and holds the store meanwhile: reads wait too
        runs = httpx.get(server + "/ops/runs", headers=AUTH, timeout=10)
        assert runs.status_code == 503
        assert "retry-after" in runs.headers
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # The flush that outlived its answer finishes and releases its lease: the next one runs.
    statuses = []
    for _ in range(50):
        statuses.append(httpx.post(server + "/flush/hourly", headers=AUTH, timeout=10).status_code)
        if statuses[-1] == 200:
            break
        time.sleep(0.1)
    assert statuses[-1] == 200, statuses
    assert set(statuses) <= {200, 409}  # waiting for the first flush, never failing


# --- clients that misbehave ----------------------------------------------------------------

ROUTES = [
    ("/webhooks/healthie/demo-clinic", {"Content-Type": "application/json"}),
    ("/ops/replay", {**AUTH, "Content-Type": "application/json"}),
]


@pytest.mark.parametrize(("path", "headers"), ROUTES)
def test_client_leaving_mid_body_is_one_warning(server, records, path, headers):
    sock = connect(server)
    sock.sendall(head("POST", path, {**headers, "Content-Length": "1000"}))
    sock.sendall(b'{"resource_id": "1", ')
    time.sleep(0.2)
    sock.close()
    warnings = records.wait_for("app.api.bodies")
    assert [r.getMessage() for r in warnings] == [
        f"request body disconnected: POST {path} after 21 bytes"
    ]
    assert records.errors() == []


@pytest.mark.parametrize(("path", "headers"), ROUTES)
def test_stalled_body_is_timed_out(server, records, path, headers):
    sock = connect(server)
    sock.sendall(head("POST", path, {**headers, "Content-Length": "1000"}))
    sock.sendall(b'{"resource_id": "1", ')  # then nothing
    status, _, _, closed = read_response(sock)
    sock.close()
    assert (status, closed) == (408, True)
    assert len(records.wait_for("app.api.bodies")) == 1
    assert records.errors() == []


def test_body_trickled_past_the_deadline_is_timed_out(server):
    # Each byte arrives well within any per-read timeout; the whole body does not.
    sock = connect(server)
    path, headers = ROUTES[0]
    sock.sendall(head("POST", path, {**headers, "Content-Length": "1000"}))
    sock.settimeout(0.25)
    response = b""
    for _ in range(40):
        try:
            sock.sendall(b" ")
            response = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        if response:
            break
    sock.close()
    assert response.startswith(b"HTTP/1.1 408 ")
