"""Configuration picked up without a rebuild: the integration files, their instruction documents
and their plans are read from ``HEALTHIE_SYNC_CONFIG_DIR`` (on Cloud Run a volume mounted from
Cloud Storage or Secret Manager), and a change is applied while the process runs.

::

    SIGHUP, or every HEALTHIE_SYNC_CONFIG_RELOAD_SECONDS
      ─▶ digest (path, mtime, size) of every file under the config directory and of every
         instruction and plan file the integrations name       unchanged? nothing to do
      ─▶ validate (app.service.validate: the offline checks of ``healthie-sync validate``,
         secrets resolved through the runtime's own secrets interface)
           error?  logged once per broken state (file:line and the problem, no value);
                   the running configuration stays in force
      ─▶ load_integrations ─▶ Runtime.replace_integrations(new, changed)
           one reference swap: a request or a worker sees the old set or the new one, never a
           mix; the clients of changed or removed integrations are dropped from the cache (the
           next use builds them from the new files) and closed once in-flight work had time to
           finish (``retire_after`` seconds)

The digest reads metadata only, so an interval of seconds costs nothing; a file edited and
restored to the same size within one mtime tick is the one change it can miss (Cloud Storage
FUSE and Secret Manager volumes give each new object version a new mtime). The live Healthie
schema is checked at start-up (``app.service.preflight``), not on reload: a reload makes no
network call. Loading from a Cloud Storage *prefix* without a mounted volume is not built: mount
the bucket (``docs/deploy.md``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.core.config import Integration, load_integrations
from app.core.errors import ConfigurationError
from app.core.settings import Settings
from app.secrets.stores import SecretStore
from app.service.validate import Finding, validate

log = logging.getLogger(__name__)


class Closeable(Protocol):
    """What a retired integration's clients offer: ``IntegrationClients.close``."""

    def close(self) -> None:
        """Close what was built."""
        ...


class Reloadable(Protocol):
    """The runtime as the reloader uses it (``app.service.runtime.Runtime``)."""

    settings: Settings
    secrets: SecretStore

    @property
    def integrations(self) -> dict[str, Integration]:
        """The integrations in force."""
        ...

    def replace_integrations(
        self, integrations: dict[str, Integration], changed: Iterable[str]
    ) -> Sequence[Closeable]:
        """Swap in ``integrations``; drop (and return) the clients of ``changed`` and removed
        integrations."""
        ...


@dataclass(frozen=True)
class ReloadResult:
    """What one check found and did."""

    changed: bool  # the files differ from the configuration last seen
    applied: bool  # the new configuration is now in force
    integrations: tuple[str, ...] = ()  # ids added, changed or removed (when applied)
    problems: tuple[str, ...] = ()  # why it was refused (when not applied)


def files_digest(paths: Iterable[Path]) -> str:
    """A digest of the files' paths, modification times and sizes (contents are not read);
    a missing file counts as missing, so deleting one is a change."""
    digest = hashlib.sha256()
    for path in sorted(set(paths)):
        try:
            st = path.stat()
            mark = f"{st.st_mtime_ns}:{st.st_size}"
        except OSError:
            mark = "missing"
        digest.update(f"{path}\0{mark}\n".encode())
    return digest.hexdigest()


def config_files(directory: Path) -> list[Path]:
    """Every regular file under ``directory``, symlinks followed (Kubernetes-style volume
    updates swap a ``..data`` link), hidden names included for that reason."""
    found: list[Path] = []
    if not directory.is_dir():
        return found
    for root, _dirs, names in os.walk(directory, followlinks=True):
        found += [Path(root) / name for name in names]
    return found


def integration_files(integration: Integration) -> list[Path]:
    """The files an integration's decisions are read from besides its TOML file."""
    agent = integration.agent
    return [agent.instructions] + ([agent.plan] if agent.plan is not None else [])


def _per_integration(integrations: Mapping[str, Integration]) -> dict[str, str]:
    # The model (what the TOML says) and the files it names: either changing marks it changed.
    return {
        iid: hashlib.sha256(
            (integration.model_dump_json() + files_digest(integration_files(integration))).encode()
        ).hexdigest()
        for iid, integration in integrations.items()
    }


class ConfigReloader:
    """Applies configuration changes to a running runtime, only when they validate.

    ``check()`` does one round (the thread started by ``start()`` calls it every ``interval``
    seconds, and at once after ``request()``, which is safe to call from a signal handler).
    ``interval`` None or 0 checks only on request.
    """

    def __init__(
        self,
        runtime: Reloadable,
        *,
        interval: float | None = None,
        retire_after: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runtime = runtime
        self._directory = runtime.settings.config_dir
        self._interval = interval or None
        self._retire_after = retire_after
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()
        self._retired: list[tuple[float, Closeable]] = []
        self._applied = _per_integration(runtime.integrations)
        self._seen = self._digest(runtime.integrations)
        self._refused: str | None = None  # digest of the broken state already reported

    def _digest(self, integrations: Mapping[str, Integration]) -> str:
        paths = config_files(self._directory)
        for integration in integrations.values():
            paths += integration_files(integration)
        return files_digest(paths)

    def check(self) -> ReloadResult:
        """Compare the files with the configuration in force; validate and apply a change."""
        with self._check_lock:
            self._close_retired(self._clock() - self._retire_after)
            current = self._runtime.integrations
            before = self._digest(current)
            if before == self._seen:
                return ReloadResult(changed=False, applied=False)
            if before == self._refused:
                return ReloadResult(changed=True, applied=False, problems=("already reported",))
            findings = validate(self._runtime.settings, secrets=self._runtime.secrets)
            errors = [f for f in findings if f.severity == "error"]
            new: dict[str, Integration] = {}
            if not errors:
                try:
                    new = load_integrations(self._directory)
                except ConfigurationError as exc:
                    errors = [Finding("*", str(self._directory), str(exc))]
            # The files may have moved on while we read them: judge only a stable state.
            if self._digest(current) != before:
                return ReloadResult(changed=True, applied=False, problems=("still changing",))
            if errors:
                return self._refuse(before, errors)
            digests = _per_integration(new)
            changed = sorted(
                {i for i, d in digests.items() if self._applied.get(i) != d}
                | (set(self._applied) - set(digests))
            )
            retired = self._runtime.replace_integrations(new, changed)
            now = self._clock()
            self._retired += [(now, clients) for clients in retired]
            self._applied = digests
            self._seen = self._digest(new)
            self._refused = None
            log.warning(
                "configuration reloaded from %s: %d integrations, changed: %s",
                self._directory,
                len(new),
                ", ".join(changed) or "none",
            )
            return ReloadResult(changed=True, applied=True, integrations=tuple(changed))

    def _refuse(self, digest: str, errors: list[Finding]) -> ReloadResult:
        self._refused = digest
        problems = tuple(f.line().removeprefix("error: ") for f in errors[:20])
        log.error(
            "configuration change in %s refused (%d errors); the previous configuration "
            "keeps running: %s",
            self._directory,
            len(errors),
            "; ".join(problems),
        )
        return ReloadResult(changed=True, applied=False, problems=problems)

    def request(self) -> None:
        """Check at once (from a SIGHUP handler: sets an event, nothing else)."""
        self._wake.set()

    def start(self) -> None:
        """Start the watching thread."""
        self._thread = threading.Thread(target=self._run, name="config-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and close every retired client set."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._check_lock:
            self._close_retired(float("inf"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a failed check must not end reloading
                log.exception("configuration check failed; the previous configuration stays")

    def _close_retired(self, before: float) -> None:
        keep: list[tuple[float, Closeable]] = []
        for at, clients in self._retired:
            if at > before:
                keep.append((at, clients))
                continue
            try:
                clients.close()
            except Exception:  # noqa: BLE001 - closing an old client must not stop a reload
                log.warning("closing a retired integration's clients failed", exc_info=True)
        self._retired = keep
