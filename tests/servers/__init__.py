"""Real servers the tests start themselves (PostgreSQL, moto's S3, the BigQuery fake), and the
two mechanisms they share: one server per session however many fixture definitions hold it,
and reaching a server's fixture from code that only has ``request`` (the contract suite)."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
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
