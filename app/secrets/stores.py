"""The simple backends: environment variables (read-only, the default) and an in-memory store
(tests, the demo). The interface is :mod:`app.secrets.base`; the encrypted file store is
:mod:`app.secrets.file_store`, Google Secret Manager :mod:`app.secrets.secret_manager`.

Values are never logged; errors name the reference, not the value.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigurationError
from app.secrets.base import (
    SecretStore,
    SecretVersion,
    VersionedSecretStore,
    VersionState,
    accepted_values,
    check_ref,
    check_value,
)

if TYPE_CHECKING:
    from app.secrets.secret_manager import SecretManagerStore

__all__ = [
    "EnvSecretStore",
    "MemorySecretStore",
    "SecretManagerStore",
    "SecretStore",
    "SecretVersion",
    "VersionedSecretStore",
    "accepted_values",
    "env_name",
]


def __getattr__(name: str) -> Any:
    # SecretManagerStore's module imports the Google client lazily; keeping the old import path
    # (app.secrets.stores.SecretManagerStore) must not load it for every importer of this module.
    if name == "SecretManagerStore":
        from app.secrets.secret_manager import SecretManagerStore

        return SecretManagerStore
    raise AttributeError(name)


@dataclass
class _Held:
    value: str | None
    state: VersionState
    created_at: datetime


class MemorySecretStore:
    """Secrets held in a dict, with versions: tests and the demo's generated credentials."""

    backend = "memory"

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._versions: dict[str, list[_Held]] = {}
        self._lock = threading.Lock()
        for ref, value in (values or {}).items():
            self.add_version(ref, value)

    def set(self, ref: str, value: str) -> None:
        """Store ``value`` as ``ref``'s only enabled value (older versions destroyed)."""
        added = self.add_version(ref, value)
        for old in self.versions(ref):
            if old.version != added.version and old.state != "destroyed":
                self.destroy_version(ref, old.version)

    def get(self, ref: str) -> str:
        """The newest version's value."""
        with self._lock:
            held = self._versions.get(ref)
            if not held:
                raise ConfigurationError(f"secret {ref!r} is not set")
            return self._value(ref, len(held), held[-1])

    def refs(self) -> list[str]:
        """Every reference set."""
        with self._lock:
            return sorted(self._versions)

    def versions(self, ref: str) -> list[SecretVersion]:
        """Newest first."""
        with self._lock:
            held = self._versions.get(ref, [])
            return [
                SecretVersion(ref, n, h.state, h.created_at)
                for n, h in reversed(list(enumerate(held, start=1)))
            ]

    def get_version(self, ref: str, version: int) -> str:
        """One version's value."""
        with self._lock:
            held = self._versions.get(ref, [])
            if not 1 <= version <= len(held):
                raise ConfigurationError(f"secret {ref!r} has no version {version}")
            return self._value(ref, version, held[version - 1])

    def add_version(self, ref: str, value: str) -> SecretVersion:
        """Append a version (creating the secret)."""
        check_value(check_ref(ref), value)
        with self._lock:
            held = self._versions.setdefault(ref, [])
            held.append(_Held(value, "enabled", datetime.now(UTC)))
            return SecretVersion(ref, len(held), "enabled", held[-1].created_at)

    def destroy_version(self, ref: str, version: int) -> None:
        """Forget one version's value."""
        with self._lock:
            held = self._versions.get(ref, [])
            if not 1 <= version <= len(held):
                raise ConfigurationError(f"secret {ref!r} has no version {version}")
            held[version - 1].value = None
            held[version - 1].state = "destroyed"

    @staticmethod
    def _value(ref: str, version: int, held: _Held) -> str:
        if held.state != "enabled" or held.value is None:
            raise ConfigurationError(f"secret {ref!r} version {version} is {held.state}")
        return held.value


def env_name(ref: str) -> str:
    """The environment variable that holds ``ref``: ``HEALTHIE_SYNC_SECRET_<REF>``."""
    return "HEALTHIE_SYNC_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", ref).upper()


class EnvSecretStore:
    """Secrets from environment variables, for one-machine deployments (read-only, one
    version: a rotation cannot be stored here)."""

    backend = "env"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ

    def get(self, ref: str) -> str:
        """The value of ``env_name(ref)``."""
        value = self._environ.get(env_name(ref))
        if not value:
            raise ConfigurationError(f"secret {ref!r} is not set (expected ${env_name(ref)})")
        return value
