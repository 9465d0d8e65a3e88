"""A server that accepts TCP connections and never answers: what a hung Healthie (or any
HTTP peer) looks like to a client, for tests of bounded timeouts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture
def silent_healthie() -> Iterator[str]:
    """The GraphQL URL of a server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/graphql"
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    server.close()
