"""A pytest plugin that breaks one core property of the engine for a whole test session.

``pytest -p tests.meta.breaks`` with ``HEALTHIE_SYNC_BREAK=<name>`` in the environment
monkeypatches, before any test is collected, the one function that holds the property:

==================  ==========================================================================
name                what the break does
==================  ==========================================================================
signature           ``verify_healthie_signature`` accepts every request
body_digest         ``body_digest_matches`` says every body matches its Content-Digest
skip_unchanged      ``workers.pipeline.prepare`` never finds an entry unchanged (the stored
                    state it compares with reads as another content hash), so it never
                    returns None
patient_lease       ``PatientLeases.before_batch`` leases nothing and keeps every item
ack_after_write     the consumer acknowledges a pulled batch's messages before running it
==================  ==========================================================================

``tests/meta/test_property_breaks.py`` runs chosen tests under each break and asserts that they
fail: a suite that still passes with a property broken does not test it. Patching functions
(not editing source text) keeps a break valid while the code around it changes; a break whose
function is renamed or moved fails loudly at start-up (``monkeypatch.setattr`` raises), and a
refactor that stops calling it makes the meta test fail, which is when to move the break.

Without the variable the plugin does nothing.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest

ENV = "HEALTHIE_SYNC_BREAK"


def _everywhere(mp: pytest.MonkeyPatch, module: str, name: str, replacement: Any) -> None:
    """Replace ``module.name`` and every loaded module's binding of the same object (a
    ``from module import name`` made before the patch), so every caller gets the break."""
    home = importlib.import_module(module)
    original = getattr(home, name)
    mp.setattr(home, name, replacement)
    for loaded in list(sys.modules.values()):
        if loaded is not None and getattr(loaded, name, None) is original:
            mp.setattr(loaded, name, replacement)


def _signature(mp: pytest.MonkeyPatch) -> None:
    importlib.import_module("app.intake.receiver")  # it binds the verifier by name
    _everywhere(mp, "app.intake.signature", "verify_healthie_signature", lambda **_: True)


def _body_digest(mp: pytest.MonkeyPatch) -> None:
    importlib.import_module("app.intake.receiver")
    _everywhere(mp, "app.intake.signature", "body_digest_matches", lambda *_: True)


class _ChangedState:
    """A state store whose stored patients read as of another content hash."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def get_patient(self, integration_id: str, patient_id: str) -> Any:
        previous = self._state.get_patient(integration_id, patient_id)
        if previous is None:
            return None
        return previous.model_copy(update={"content_hash": f"broken:{previous.content_hash}"})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def _skip_unchanged(mp: pytest.MonkeyPatch) -> None:
    pipeline = importlib.import_module("workers.pipeline")
    prepare = pipeline.prepare

    def never_unchanged(state: Any, *args: Any, **kwargs: Any) -> Any:
        return prepare(_ChangedState(state), *args, **kwargs)

    _everywhere(mp, "workers.pipeline", "prepare", never_unchanged)


def _patient_lease(mp: pytest.MonkeyPatch) -> None:
    middleware = importlib.import_module("workers.middleware")

    def keep_all(self: Any, items: Sequence[Any]) -> Sequence[Any]:
        return list(items)

    mp.setattr(middleware.PatientLeases, "before_batch", keep_all)


def _ack_after_write(mp: pytest.MonkeyPatch) -> None:
    consumer = importlib.import_module("workers.consumer")
    topology = importlib.import_module("app.queue.topology")
    process_batch = consumer.Consumer.process_batch

    def ack_first(self: Any, messages: Sequence[Any]) -> Any:
        if messages:
            self.queue.ack(topology.WORK_SUBSCRIPTION, [m.ack_id for m in messages])
        return process_batch(self, messages)

    mp.setattr(consumer.Consumer, "process_batch", ack_first)


BREAKS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "signature": _signature,
    "body_digest": _body_digest,
    "skip_unchanged": _skip_unchanged,
    "patient_lease": _patient_lease,
    "ack_after_write": _ack_after_write,
}


def pytest_configure(config: pytest.Config) -> None:
    """Apply the break ``HEALTHIE_SYNC_BREAK`` names (before collection), undone at exit."""
    name = os.environ.get(ENV, "")
    if not name:
        return
    if name not in BREAKS:
        raise pytest.UsageError(f"{ENV}={name!r}: known breaks are {sorted(BREAKS)}")
    mp = pytest.MonkeyPatch()
    BREAKS[name](mp)
    config.add_cleanup(mp.undo)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which property was broken in this session (so its output is never mistaken)."""
    name = os.environ.get(ENV, "")
    if name:
        terminalreporter.write_line(f"healthie-sync: property {name!r} is BROKEN on purpose")
