"""Run an ASGI app on loopback in a background thread (demo, tests, benchmarks).

Production runs uvicorn as the container's process; this module exists so the demo and the
end-to-end tests talk to real HTTP servers instead of in-process shortcuts.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

#: uvicorn's own bounds, used as they are: the largest request head it buffers (bytes) and how
#: long an idle keep-alive connection stays open (seconds). uvicorn has no deadline for a
#: request body; ``app.api.bodies.RequestGuard`` adds it.
MAX_HEAD_BYTES = 16 * 1024
KEEP_ALIVE_SECONDS = 5


def server_config(app: Any, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` with the service's HTTP bounds (``options`` are
    passed through and may override them): the production server and the test servers
    share it."""
    bounds: dict[str, Any] = {
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    }
    return uvicorn.Config(app, host=host, port=port, **{**bounds, **options})


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[str]:
    """Serve ``app`` with uvicorn on ``host`` and yield its base URL until the block exits.

    The server is started before the URL is yielded and shut down (and joined) afterwards.
    """
    port = port or free_port(host)
    from app.core.logs import is_json, uvicorn_log_config

    extra: dict[str, Any] = {"log_config": uvicorn_log_config()} if is_json() else {}
    config = server_config(
        app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on", **extra
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"server on {host}:{port} failed to start")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"server on {host}:{port} did not start within 20 s")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
