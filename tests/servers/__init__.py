"""Real servers the tests start themselves (PostgreSQL, moto's S3, Prism, the vendor fakes),
and what they share: one server per session however many fixture definitions hold it, reaching
a server's fixture from code that only has ``request`` (the contract suite), and the small
process helpers (a free port, stopping a process group, a log's tail)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

T = TypeVar("T")


class Shared(Generic[T]):
    """One running server for the session: started by the first holder, stopped when the last
    lets go (a test module that imports a fixture and the plugin copy the contract suite
    registers are two fixture definitions of one server). A start that failed is not retried
    per test: every later holder gets ``require_service`` with the first failure."""

    def __init__(self, name: str, start: Callable[[], AbstractContextManager[T]]) -> None:
        self._name = name
        self._start = start
        self._lock = threading.Lock()
        self._users = 0
        self._stack: contextlib.ExitStack | None = None
        self._server: T | None = None
        self._failed: str | None = None

    @contextlib.contextmanager
    def use(self) -> Iterator[T]:
        """The server, for as long as the block runs."""
        from tests.conftest import require_service

        with self._lock:
            if self._failed is not None:
                require_service(self._name, self._failed)
            if self._server is None:
                stack = contextlib.ExitStack()
                try:
                    self._server = stack.enter_context(self._start())
                except BaseException as exc:
                    stack.close()
                    self._failed = str(exc) or type(exc).__name__
                    raise
                self._stack = stack
            self._users += 1
            server = self._server
        try:
            yield server
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._stack is not None:
                    stack, self._stack, self._server = self._stack, None, None
                    stack.close()


def fixture_for(request: Any, module: str, fixture: str) -> Any:
    """``fixture``'s value for whoever holds ``request``: the fixture itself when the test
    module imported it, else ``module`` registered as a plugin first (how the contract suite,
    which imports only the backends, reaches a server's fixture)."""
    try:
        return request.getfixturevalue(fixture)
    except pytest.FixtureLookupError:
        manager = request.config.pluginmanager
        if not manager.has_plugin(module):
            manager.register(sys.modules[module], module)
        return request.getfixturevalue(fixture)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started with ``start_new_session=True`` by its process group (children,
    such as a JVM or node, go too): SIGTERM, then SIGKILL after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
            return


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` of a log file ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
