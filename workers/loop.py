"""Long-running work processing: N threads each pulling and processing batches until stopped.

``healthie-sync serve`` runs this beside the HTTP app (and ``healthie-sync work`` alone), so a
deployment is one process type. A configuration error stops the loop and is logged: nothing
will succeed until a person fixes it, and the messages stay queued.
"""

from __future__ import annotations

import logging
import threading

from app.core.errors import ConfigurationError
from app.core.models import Counts
from app.service.runtime import Runtime
from workers.consumer import drain

log = logging.getLogger(__name__)


class WorkerLoop:
    """Processes the work subscription with ``concurrency`` threads."""

    def __init__(self, runtime: Runtime, *, concurrency: int = 2, batch_size: int = 50) -> None:
        self._runtime = runtime
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stopped_by: str | None = None

    def start(self) -> None:
        """Start the worker threads."""
        for n in range(self._concurrency):
            thread = threading.Thread(target=self._run, name=f"worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Ask every thread to finish its batch and wait for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                drain(
                    self._runtime,
                    batch_size=self._batch_size,
                    idle_timeout=0.0,
                    on_batch=_log_batch,
                )
            except ConfigurationError as exc:
                self.stopped_by = str(exc)
                log.error("worker stopped on a configuration error: %s", exc)  # noqa: TRY400
                self._stop.set()
                return
            except Exception:  # noqa: BLE001 - keep processing; the batch was nacked or kept
                log.exception("worker batch failed")
            self._stop.wait(0.5)


def _log_batch(counts: Counts) -> None:
    # one line per processed batch (serve and work log at INFO): counts only, never entries
    log.info(
        "batch: processed=%d unchanged=%d writes=%d dead_lettered=%d retried=%d",
        counts.processed,
        counts.skipped_unchanged,
        counts.writes,
        counts.dead_lettered,
        counts.retried,
    )
