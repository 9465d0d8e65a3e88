"""Crash points: where the crash-safety tests kill the engine with a real SIGKILL.

``HEALTHIE_SYNC_CRASH_AT="name"`` (or ``"name:n"``, the n-th time, default the first) makes the
process send itself SIGKILL when it reaches :func:`point` ``name``: no ``finally`` block, no
lease release, no ack runs, exactly as when the machine loses power or the OOM killer strikes.
The variable is read on the first call (never at import time); unset, a point costs one
comparison. The points, in the order a work item and a flush pass them:

=====================  ==================================================================
``pipeline.fetched``    the batch's entries are fetched, nothing decided
``pipeline.decided``    plans are decided, nothing written
``pipeline.written``    the targets hold the writes, no state recorded
``pipeline.recorded``   the batch's states and audit records recorded, none of its items
                        acknowledged (once per integration batch)
``consumer.settling``   a wave's settlements decided and its run outcomes stored, none of its
                        queue actions sent
``consumer.settled``    a wave's acks, nacks and dead letters sent, its batch not yet ended
                        (leases held)
``flush.staged``        a chunk of marks is staged, its messages not yet acknowledged
``flush.published``     a page of work items is published, its versions not yet unstaged
=====================  ==================================================================
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "HEALTHIE_SYNC_CRASH_AT"

_lock = threading.Lock()
_armed: tuple[str, int] | None = None
_read = False
_seen = 0


def point(name: str) -> None:
    """Die here (SIGKILL, no clean-up) when ``HEALTHIE_SYNC_CRASH_AT`` names this point and
    its count is reached; otherwise do nothing."""
    global _armed, _read, _seen
    if _read and _armed is None:
        return
    with _lock:
        if not _read:
            _armed, _read = _parse(os.environ.get(ENV, "")), True
        if _armed is None or _armed[0] != name:
            return
        _seen += 1
        if _seen < _armed[1]:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def _parse(value: str) -> tuple[str, int] | None:
    name, _, count = value.strip().partition(":")
    if not name:
        return None
    return name, int(count) if count.isdigit() and int(count) > 0 else 1


def reset() -> None:
    """Forget the parsed variable (tests that set it in-process)."""
    global _armed, _read, _seen
    with _lock:
        _armed, _read, _seen = None, False, 0
