"""The parent's side of the crash tests: one engine deployment (a config directory, durable
queue and state, a Healthie sandbox, a write-logging warehouse) whose processes the test
starts, kills and restarts as children (``tests.crash.child``), and reads back.

``Deployment.spawn`` starts a child with the deployment's environment (plus a crash point);
:class:`Child` waits for its SIGKILL and reports the crash points it reached, or stops it
with SIGTERM. The parent opens the same queue and state as the children (``queue``,
``state``) to seed dirty marks and to read patient states, audit records and runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.core.models import DirtyMark, RunRecord, SubjectKind
from app.core.settings import Settings
from app.queue.base import Queue
from app.queue.topology import DIRTY_TOPIC, ensure_topology_for
from app.secrets.stores import env_name
from app.state.base import AuditRecord, PatientState, StateStore
from tests.crash import writelog
from tests.helpers import REPO

INTEGRATION = "demo-clinic"
API_KEY_SECRET = "demo-clinic/healthie-api-key"
WEBHOOK_SECRET = "demo-clinic/webhook-signing-secret"


@dataclass
class Child:
    """One engine process."""

    proc: subprocess.Popen[bytes]
    log: Path
    trail: Path
    started: float  # time.time() when it was started

    def points(self) -> list[str]:
        """The crash points it reached, in order (the last is where a killed child died)."""
        if not self.trail.exists():
            return []
        return self.trail.read_text(encoding="utf-8").split()

    def tail(self, lines: int = 25) -> str:
        """The end of its output (engine logs carry ids and counts, never patient values)."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait(self, timeout: float) -> int:
        """Its exit status (negative: the signal that ended it); fails after ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"child did not exit within {timeout} s; output:\n{self.tail()}"
            ) from None

    def wait_killed(self, point: str, count: int, timeout: float = 60.0) -> None:
        """Assert it died by SIGKILL, and at the ``count``-th arrival at ``point``."""
        status = self.wait(timeout)
        assert status == -signal.SIGKILL, (
            f"expected death by SIGKILL at {point}:{count}, exit status {status}; "
            f"output:\n{self.tail()}"
        )
        reached = self.points()
        where = f"died after the points {reached[-5:]}, not at {point}:{count}"
        assert reached, where
        assert reached[-1] == point, where
        assert reached.count(point) == count, where

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop) and its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, if it still runs (clean-up)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Deployment:
    """One engine deployment under ``root`` on the ``sqlite`` or ``gcp`` backend."""

    root: Path
    backend: str  # "sqlite" | "gcp" (Pub/Sub + Firestore emulators, found by their env vars)
    healthie_url: str
    api_key: str
    #: HEALTHIE_SYNC_* settings every child gets (ack deadlines, ...), without the prefix
    settings: dict[str, str] = field(default_factory=dict)
    #: child variables of the harness (CRASH_BATCH_SIZE, CRASH_CHUNK_SIZE, ...)
    harness: dict[str, str] = field(default_factory=dict)
    project: str = field(default_factory=lambda: f"hs-crash-{uuid.uuid4().hex[:12]}")
    children: list[Child] = field(default_factory=list)
    _queue: Queue | None = None
    _state: StateStore | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.warehouse(self.root / "warehouse.db")

    # -- configuration ------------------------------------------------------------------------

    def warehouse(self, path: Path) -> Path:
        """A config directory whose demo integration writes to ``path`` (a write-logging
        warehouse, created empty here); returns the config directory."""
        config = path.with_suffix(".config")
        if config.exists():
            return config
        writelog.prepare(path)
        config.mkdir()
        (config / "demo-clinic.toml").write_text(
            f"""id = "{INTEGRATION}"
cadence = "daily"
mode = "live"

[healthie]
environment = "local"
api_url = "{self.healthie_url}"
api_key_secret = "{API_KEY_SECRET}"
webhook_secrets = ["{WEBHOOK_SECRET}"]
batch_size = 15

[agent]
backend = "plan"
instructions = "{REPO / "prompts" / "examples" / "demo-clinic.md"}"
plan = "{REPO / "prompts" / "plans" / "demo-clinic.plan.json"}"

[[targets]]
name = "warehouse"
connector = "sqlite"
options = {{ path = "{path}" }}
""",
            encoding="utf-8",
        )
        return config

    def environment(self, config: Path) -> dict[str, str]:
        """The variables a child gets: the settings, secrets and backend of the deployment."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("HEALTHIE_SYNC_", "CRASH_"))
        }
        values = {
            "DATA_DIR": str(self.root / "data"),
            "CONFIG_DIR": str(config),
            "SECRETS_BACKEND": "env",
            "SCHEDULER": "external",
            **self.settings,
        }
        if self.backend == "gcp":
            values.update(
                QUEUE_BACKEND="pubsub",
                STATE_BACKEND="firestore",
                GCP_PROJECT=self.project,
                FIRESTORE_PREFIX=self.project,
            )
        env.update({f"HEALTHIE_SYNC_{k}": v for k, v in values.items()})
        env[env_name(API_KEY_SECRET)] = self.api_key
        env[env_name(WEBHOOK_SECRET)] = "whsec_crash_tests"
        env.update(self.harness)
        env["PYTHONPATH"] = str(REPO)
        return env

    def settings_object(self) -> Settings:
        """The children's settings, as the parent opens the same queue and state with them."""
        env = self.environment(self.root / "warehouse.config")
        values = {
            k.removeprefix("HEALTHIE_SYNC_").lower(): v
            for k, v in env.items()
            if k.startswith("HEALTHIE_SYNC_") and not k.startswith("HEALTHIE_SYNC_SECRET_")
        }
        return Settings(**values)  # type: ignore[arg-type]

    # -- processes ----------------------------------------------------------------------------

    def spawn(
        self,
        command: str,
        *,
        crash_at: str | None = None,
        warehouse: Path | None = None,
        name: str | None = None,
    ) -> Child:
        """Start ``python -m tests.crash.child command`` (killing itself at ``crash_at``)."""
        config = self.warehouse(warehouse) if warehouse else self.root / "warehouse.config"
        env = self.environment(config)
        label = name or f"{len(self.children)}-{command}"
        trail = self.root / f"{label}.points"
        env["CRASH_TRAIL"] = str(trail)
        if crash_at:
            env["HEALTHIE_SYNC_CRASH_AT"] = crash_at
        log = self.root / f"{label}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "tests.crash.child", command],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        child = Child(proc, log, trail, time.time())
        self.children.append(child)
        return child

    def close(self) -> None:
        """Kill every child still running and close the parent's queue and state."""
        for child in self.children:
            child.kill()
        for opened in (self._queue, self._state):
            if opened is not None:
                with contextlib.suppress(Exception):
                    opened.close()

    # -- the durable queue and state, as the parent sees them ---------------------------------

    @property
    def queue(self) -> Queue:
        """The deployment's queue, with the engine's topology ensured."""
        if self._queue is None:
            from app.service.runtime import build_queue

            settings = self.settings_object()
            self._queue = build_queue(settings)
            ensure_topology_for(self._queue, settings)
        return self._queue

    @property
    def state(self) -> StateStore:
        """The deployment's state store."""
        if self._state is None:
            from app.service.runtime import build_state

            (self.root / "data").mkdir(exist_ok=True)
            self._state = build_state(self.settings_object())
        return self._state

    def mark(self, patients: Iterable[str]) -> None:
        """Publish a ``patient.updated`` dirty mark for each of ``patients`` (daily)."""
        now = datetime.now(UTC)
        self.queue.publish_many(
            DIRTY_TOPIC,
            [
                (
                    DirtyMark(
                        integration_id=INTEGRATION,
                        subject_kind=SubjectKind.PATIENT,
                        subject_id=p,
                        reason="patient.updated",
                        received_at=now,
                    )
                    .model_dump_json()
                    .encode(),
                    {"integration": INTEGRATION, "cadence": "daily"},
                )
                for p in patients
            ],
        )

    def patient_states(self, patients: Iterable[str]) -> dict[str, PatientState | None]:
        """Each patient's recorded state (None: never recorded)."""
        return {p: self.state.get_patient(INTEGRATION, p) for p in patients}

    def audit(self) -> list[AuditRecord]:
        """Every audit record of the integration (both stores list them; not in the protocol)."""
        records: list[AuditRecord] = self.state.list_audit(INTEGRATION)
        return records

    def runs(self) -> list[RunRecord]:
        """Every run of the integration, newest first."""
        return self.state.list_runs(INTEGRATION, limit=100)

    def events(self, *, after: int = 0, warehouse: Path | None = None) -> list[writelog.Event]:
        """The warehouse's write log (after ``seq`` ``after``)."""
        return writelog.read(warehouse or self.root / "warehouse.db", after=after)


def wait_for(
    what: str, condition: Callable[[], Any], timeout: float, children: Iterable[Child] = ()
) -> float | None:
    """Poll ``condition`` until it is truthy; returns when (``time.time()``), or None after
    ``timeout`` seconds (the caller's assertions then say what is missing). Fails as soon as
    one of ``children`` exits."""
    deadline = time.monotonic() + timeout
    watched = list(children)
    while True:
        if condition():
            return time.time()
        for child in watched:
            if child.proc.poll() is not None:
                raise AssertionError(
                    f"{what}: child exited with {child.proc.returncode}; output:\n{child.tail()}"
                )
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
