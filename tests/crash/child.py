"""The engine as a child process, for the crash tests: ``python -m tests.crash.child COMMAND``.

``flush``  flush the daily cadence once (retrying while another flush holds the cadence's
           lease, as the embedded scheduler's next tick would), then exit
``work``   process work with ``workers.loop.WorkerLoop`` (one thread, the production loop)
           until SIGTERM, then stop it gracefully and exit
``run``    ``flush``, then ``work``: a restarted service

Everything else comes from the environment, exactly as for ``healthie-sync serve``: the
``HEALTHIE_SYNC_*`` settings (data and config directories, backends, ack deadlines, secrets)
and ``HEALTHIE_SYNC_CRASH_AT`` (``app.core.faults``: SIGKILL at that crash point). The crash
harness adds three of its own:

``CRASH_TRAIL``               a file: every crash point reached is appended to it, one name a
                              line, *before* the point runs, so the parent can tell where a
                              killed child died
``CRASH_BATCH_SIZE``          work items per pulled batch (default 50)
``CRASH_CHUNK_SIZE``          dirty marks per flush chunk, pending patients per page (1000)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from app.core import faults
from app.core.errors import FlushInProgress
from app.core.models import Cadence
from app.core.settings import Settings
from app.service.runtime import Runtime, build_runtime

#: how long ``flush`` keeps retrying while another flush holds the lease
FLUSH_RETRY_SECONDS = 120.0


def trace_points(trail: str) -> None:
    """Append the name of every crash point reached to ``trail`` (then let it run)."""
    point = faults.point

    def traced(name: str) -> None:
        with open(trail, "a", encoding="utf-8") as out:
            out.write(name + "\n")  # written before a SIGKILL can strike: the kernel keeps it
        point(name)

    # the engine looks faults.point up at every call, so this wraps every crash point
    faults.point = traced


def flush_daily(runtime: Runtime) -> None:
    """One daily flush, retried while another flush's lease is held (a crashed one's, until
    it can be recovered)."""
    from workers.flusher import flush

    deadline = time.monotonic() + FLUSH_RETRY_SECONDS
    while True:
        try:
            flush(
                runtime, Cadence.DAILY, chunk_size=int(os.environ.get("CRASH_CHUNK_SIZE", "1000"))
            )
        except FlushInProgress:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        return


def work_until_stopped(runtime: Runtime) -> None:
    """The production worker loop, one thread, until SIGTERM."""
    from workers.loop import WorkerLoop

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    loop = WorkerLoop(
        runtime,
        concurrency=1,
        batch_size=int(os.environ.get("CRASH_BATCH_SIZE", "50")),
        idle_wait=0.05,
    )
    loop.start()
    try:
        while not stop.wait(0.1):
            if loop.stopped_by:
                raise SystemExit(2)
    finally:
        loop.stop(grace=runtime.settings.shutdown_grace_seconds)


def main(command: str) -> None:
    """Run ``command`` (``flush``, ``work`` or ``run``) on the runtime the settings describe."""
    trail = os.environ.get("CRASH_TRAIL")
    if trail:
        trace_points(trail)
    runtime = build_runtime(Settings())
    try:
        if command in ("flush", "run"):
            flush_daily(runtime)
        if command in ("work", "run"):
            work_until_stopped(runtime)
    finally:
        runtime.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("flush", "work", "run"):
        raise SystemExit("usage: python -m tests.crash.child flush|work|run")
    main(sys.argv[1])
