"""``serve``'s lifetime: start the background parts, serve HTTP until SIGTERM or SIGINT, then shut
down inside the platform's grace period.

Why this module exists: uvicorn handles SIGTERM itself and, once its server has stopped,
*raises the signal again* with the handler that was installed before it (uvicorn
``Server.capture_signals``). Left at the default, that second SIGTERM kills the process on the
spot, so ``serve``'s cleanup never ran: worker threads were cut mid-batch, the stores were
never closed (SQLite's ``-wal`` files stayed behind) and buffered logs were lost. Here a handler
of ours is installed first, so the re-raised signal only records the request, and the shutdown
is ordered and bounded::

    SIGTERM ─▶ worker loop stops pulling (at once, from the signal)
            ─▶ uvicorn stops accepting, finishes open requests (bounded)
            ─▶ embedded scheduler stopped (bounded)
            ─▶ workers finish their batches until the deadline; what is still unsettled then
               is nacked (redelivered at once, to another instance), never lost
            ─▶ config reloader stopped, runtime closed (queue, state, connectors), logs flushed

The deadline is ``grace`` seconds after the signal (``HEALTHIE_SYNC_SHUTDOWN_GRACE_SECONDS``;
Cloud Run sends SIGKILL 10 s after SIGTERM, so the default leaves time to close the stores).
SIGHUP asks the config reloader to check the configuration directory now.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

import uvicorn

from app.service.reload import ConfigReloader, Reloadable

log = logging.getLogger(__name__)

#: Part of the grace period uvicorn may spend finishing open HTTP requests (at most).
HTTP_DRAIN_SECONDS = 3.0


class Loop(Protocol):
    """The worker loop as the lifecycle drives it (``workers.loop.WorkerLoop``)."""

    def start(self) -> None:
        """Start processing."""
        ...

    def request_stop(self) -> None:
        """Stop pulling (safe from a signal handler)."""
        ...

    def stop(self, grace: float = 60.0) -> int:
        """Finish in-flight work within ``grace`` seconds, nack the rest; how many were nacked."""
        ...


class Stoppable(Protocol):
    """The embedded scheduler (``app.service.scheduler.EmbeddedScheduler``)."""

    def stop(self) -> None:
        """Stop after the current fire."""
        ...


class Closing(Reloadable, Protocol):
    """The runtime as the lifecycle uses it."""

    def close(self) -> None:
        """Close the queue, the state store and every client."""
        ...


class _Server(uvicorn.Server):
    """uvicorn's server, telling the lifecycle about a stop signal the moment it arrives."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[int], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit(sig)
        super().handle_exit(sig, frame)


class Lifecycle:
    """Runs the service and orders its shutdown (see the module docstring)."""

    def __init__(
        self,
        runtime: Closing,
        *,
        loop: Loop,
        scheduler: Stoppable | None = None,
        grace: float = 8.0,
        reload_interval: float | None = None,
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self.scheduler = scheduler
        self.grace = grace
        self.reloader = ConfigReloader(runtime, interval=reload_interval)
        self._signalled_at: float | None = None
        self._lock = threading.Lock()

    def _on_signal(self, sig: int) -> None:
        # Runs in the main thread between bytecodes: set flags only, take no lock.
        if self._signalled_at is None:
            self._signalled_at = time.monotonic()
        self.loop.request_stop()

    def serve(self, app: Any, *, host: str, port: int) -> None:
        """Start the workers and the reloader, serve ``app`` until a stop signal (or uvicorn
        stops), then shut down within the grace period. Returns when everything is closed."""
        installed = _install(signal.SIGTERM, lambda sig, _frame: self._on_signal(sig))
        _install(signal.SIGHUP, lambda _sig, _frame: self.reloader.request())
        self.reloader.start()
        self.loop.start()
        drain = max(1, math.floor(min(HTTP_DRAIN_SECONDS, self.grace / 3)))
        from app.core.logs import is_json, uvicorn_log_config
        from app.service.serving import server_config

        extra: dict[str, Any] = {"log_config": uvicorn_log_config()} if is_json() else {}
        config = server_config(
            app, host=host, port=port, log_level="info", timeout_graceful_shutdown=drain, **extra
        )
        try:
            _Server(config, self._on_signal).run()
        finally:
            self.shutdown()
            if installed:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def shutdown(self) -> None:
        """Stop everything within the grace period counted from the signal (or from now)."""
        with self._lock:
            started = self._signalled_at or time.monotonic()
            self._signalled_at = started
            deadline = started + self.grace
            self.loop.request_stop()
            if self.scheduler is not None:
                _bounded(self.scheduler.stop, deadline - time.monotonic(), "scheduler")
            nacked = self.loop.stop(grace=max(0.0, deadline - time.monotonic()))
            self.reloader.stop()
            self.runtime.close()
            from app.observability import metrics

            metrics.shutdown()  # the last metrics are exported before the process goes
            log.warning(
                "shut down in %.1f s (grace %.1f s); %d in-flight work items handed back",
                time.monotonic() - started,
                self.grace,
                nacked,
            )
            flush_logs()


def _install(sig: signal.Signals, handler: Callable[[int, FrameType | None], None]) -> bool:
    """Install a handler when possible (signals can only be handled in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(sig, handler)
    return True


def _bounded(call: Callable[[], None], seconds: float, what: str) -> None:
    """Run ``call`` for at most ``seconds`` (in a thread; it goes on alone after that)."""
    thread = threading.Thread(target=call, name=f"stop-{what}", daemon=True)
    thread.start()
    thread.join(max(0.0, seconds))
    if thread.is_alive():
        log.warning("%s did not stop within the grace period", what)


def flush_logs() -> None:
    """Flush every handler of the root logger (buffered or remote handlers included)."""
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001, S110 - a broken handler must not block the exit
            pass
