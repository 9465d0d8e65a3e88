"""The secrets interface every backend implements, and the reference grammar they share.

A *reference* names a secret (``demo-clinic/healthie-api-key``); configuration holds only
references, the value lives in one backend. Two capabilities:

* :class:`SecretStore` — ``get(ref)``: the value of the newest version (every backend);
* :class:`VersionedSecretStore` — versions, writing and destroying (the encrypted file store,
  Secret Manager, the in-memory store). The environment backend is read-only.

Versions are numbered from 1 per secret and never reused; ``get`` reads the most recently
created one (Secret Manager's ``latest`` alias), which must be enabled. During a rotation the
older versions stay enabled so :func:`accepted_values` (every enabled version, newest first)
lets a signature made with either secret verify; ``destroy_version`` ends the overlap.

Errors name the reference and version, never a value: ConfigurationError when a person must act
(missing secret, no permission, wrong key), a retriable error when the backend is unavailable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from app.core.errors import ConfigurationError

VersionState = Literal["enabled", "disabled", "destroyed"]

# Segments of letters, digits and '_' joined by single '-', separated by '/': the mapping to a
# backend id ('/' -> '--') is then injective, and ids fit Secret Manager's [A-Za-z0-9_-]{1,255}.
_SEGMENT = r"[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*"
_REF = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT})*$")
_MAX_ID = 255
MAX_VALUE_BYTES = 65_536  # Secret Manager's payload limit, kept by every backend


@runtime_checkable
class SecretStore(Protocol):
    """Resolves a secret reference to its current value."""

    def get(self, ref: str) -> str:
        """The newest version's value; ConfigurationError when there is none."""
        ...


@dataclass(frozen=True)
class SecretVersion:
    """One version's metadata (never its value)."""

    ref: str
    version: int
    state: VersionState
    created_at: datetime | None = None


@runtime_checkable
class VersionedSecretStore(SecretStore, Protocol):
    """A store that keeps versions and can be written (file, Secret Manager, memory)."""

    backend: str  # "file", "secret-manager", "memory": for messages

    def refs(self) -> list[str]:
        """Every stored reference, sorted."""
        ...

    def versions(self, ref: str) -> list[SecretVersion]:
        """The secret's versions, newest first; empty when the secret does not exist."""
        ...

    def get_version(self, ref: str, version: int) -> str:
        """One version's value; ConfigurationError when it is missing or not enabled."""
        ...

    def add_version(self, ref: str, value: str) -> SecretVersion:
        """Store ``value`` as the secret's new newest version, creating the secret if needed."""
        ...

    def destroy_version(self, ref: str, version: int) -> None:
        """Destroy one version's value for good (its number stays used)."""
        ...


def check_ref(ref: str) -> str:
    """``ref`` when it is a valid reference, else ConfigurationError naming it."""
    if not _REF.match(ref) or len(secret_id(ref, checked=True)) > _MAX_ID:
        raise ConfigurationError(
            f"secret reference {ref!r} is not valid: use letters, digits, '_' and single '-', "
            "segments separated by '/' (at most 255 characters)"
        )
    return ref


def secret_id(ref: str, *, checked: bool = False) -> str:
    """The backend id of ``ref``: ``a/b`` -> ``a--b`` (Secret Manager's secret id, the file
    store's file name)."""
    return (ref if checked else check_ref(ref)).replace("/", "--")


def ref_from_id(sid: str) -> str | None:
    """The reference whose id is ``sid``, or None when ``sid`` is no engine reference."""
    ref = sid.replace("--", "/")
    return ref if _REF.match(ref) else None


def check_value(ref: str, value: str) -> bytes:
    """``value`` as UTF-8, refused when empty or over the payload limit (by size, never shown)."""
    data = value.encode("utf-8")
    if not data:
        raise ConfigurationError(f"secret {ref!r}: an empty value is not stored")
    if len(data) > MAX_VALUE_BYTES:
        raise ConfigurationError(
            f"secret {ref!r}: value of {len(data)} bytes is over the {MAX_VALUE_BYTES}-byte limit"
        )
    return data


def accepted_values(store: SecretStore, ref: str) -> list[str]:
    """Every enabled version's value, newest first (one value for the environment backend):
    what the webhook receiver accepts, so both secrets of a rotation in progress verify."""
    if not isinstance(store, VersionedSecretStore):
        return [store.get(ref)]
    enabled = [v.version for v in store.versions(ref) if v.state == "enabled"]
    if not enabled:
        store.get(ref)  # the backend's own "not set" / "not enabled" error
        raise ConfigurationError(f"secret {ref!r} has no enabled version")
    return [store.get_version(ref, version) for version in enabled]


def require_versioned(store: SecretStore, purpose: str) -> VersionedSecretStore:
    """``store`` when it can be written, else ConfigurationError saying why ``purpose`` needs
    the file or Secret Manager backend."""
    if isinstance(store, VersionedSecretStore):
        return store
    raise ConfigurationError(
        f"{purpose} needs a secrets backend that can store values; the environment backend is "
        "read-only: set HEALTHIE_SYNC_SECRETS_BACKEND=file (encrypted, local) or secret-manager"
    )
