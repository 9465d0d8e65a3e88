"""The local secrets backend: an envelope-encrypted file per secret under ``<data_dir>/secrets``.

Each version's value is encrypted with its own fresh data key (AES-256-GCM, ``cryptography``'s
``AESGCM``); the data key is stored only wrapped (AES-256-GCM again) by the key-encryption key
of :mod:`app.secrets.keys`, which never touches the data directory. Both encryptions bind the
reference, the version and the layer as associated data, so a ciphertext or wrapped key copied
to another secret or version fails authentication instead of decrypting to the wrong secret.

On disk (``<secret id>.json``, mode 0600, directory 0700), per version: number, state, time,
the key id of the key that wrapped it, the wrapped data key and the ciphertext (nonces
prefixed). A ``.key-id`` file records which key the store is written with: another key is
refused as a whole ("secrets key does not match the store") before any decryption, and data
that fails authentication under the right key is reported as modified; a garbled value is
never returned. Files are replaced atomically (temporary file, fsync, rename) under an
exclusive lock, so a reader sees the old or the new file and two writers never lose a version.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.core.errors import ConfigurationError
from app.secrets.base import SecretVersion, check_ref, check_value, ref_from_id, secret_id
from app.secrets.keys import KEY_ENV, KEY_FILE_ENV, key_id

try:  # POSIX; elsewhere the in-process lock is all there is
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

FORMAT = "healthie-sync-secret/1"
_NONCE = 12
_MARKER = ".key-id"


def _aad(layer: str, ref: str, version: int) -> bytes:
    return json.dumps([FORMAT, layer, ref, version]).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class FileSecretStore:
    """Envelope-encrypted secrets in ``directory`` under ``key`` (None: reading and writing
    values is refused with the variables to set; listing still works)."""

    backend = "file"

    def __init__(self, directory: Path, key: bytes | None) -> None:
        self.directory = directory
        self._key = key
        self._key_id = key_id(key) if key is not None else None
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------

    def get(self, ref: str) -> str:
        """The newest version's value (it must be enabled)."""
        entries = self._read(ref)["versions"]
        if not entries:
            raise ConfigurationError(f"secret {ref!r} is not set in the file store")
        return self._open(ref, entries[-1])

    def get_version(self, ref: str, version: int) -> str:
        """One version's value."""
        for entry in self._read(ref)["versions"]:
            if entry["version"] == version:
                return self._open(ref, entry)
        raise ConfigurationError(f"secret {ref!r} has no version {version}")

    def versions(self, ref: str) -> list[SecretVersion]:
        """Newest first (no key needed)."""
        return [
            SecretVersion(
                ref, int(e["version"]), e["state"], datetime.fromisoformat(e["created_at"])
            )
            for e in reversed(self._read(ref)["versions"])
        ]

    def refs(self) -> list[str]:
        """Every stored reference (no key needed)."""
        if not self.directory.is_dir():
            return []
        found = (ref_from_id(p.stem) for p in self.directory.glob("*.json"))
        return sorted(ref for ref in found if ref is not None)

    # -- writing ---------------------------------------------------------------------------

    def add_version(self, ref: str, value: str) -> SecretVersion:
        """Encrypt ``value`` under a fresh data key as the next version."""
        data = check_value(check_ref(ref), value)
        kek = self._require_key(writing=True)
        with self._writing():
            doc = self._read(ref)
            number = max((e["version"] for e in doc["versions"]), default=0) + 1
            dek = AESGCM.generate_key(bit_length=256)
            n_value, n_key = os.urandom(_NONCE), os.urandom(_NONCE)
            created = datetime.now(UTC)
            doc["versions"].append(
                {
                    "version": number,
                    "state": "enabled",
                    "created_at": created.isoformat(),
                    "key_id": self._key_id,
                    "wrapped_key": _b64(
                        n_key + AESGCM(kek).encrypt(n_key, dek, _aad("key", ref, number))
                    ),
                    "ciphertext": _b64(
                        n_value + AESGCM(dek).encrypt(n_value, data, _aad("value", ref, number))
                    ),
                }
            )
            self._write(ref, doc)
        return SecretVersion(ref, number, "enabled", created)

    def destroy_version(self, ref: str, version: int) -> None:
        """Delete one version's wrapped key and ciphertext; its number stays used."""
        with self._writing():
            doc = self._read(ref)
            for entry in doc["versions"]:
                if entry["version"] == version:
                    entry.pop("wrapped_key", None)
                    entry.pop("ciphertext", None)
                    entry["state"] = "destroyed"
                    self._write(ref, doc)
                    return
        raise ConfigurationError(f"secret {ref!r} has no version {version}")

    # -- internals -------------------------------------------------------------------------

    def _path(self, ref: str) -> Path:
        return self.directory / f"{secret_id(ref)}.json"

    def _read(self, ref: str) -> dict[str, Any]:
        path = self._path(ref)
        try:
            doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": FORMAT, "ref": ref, "versions": []}
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"secret {ref!r}: {path} cannot be read ({type(exc).__name__})"
            ) from None
        if doc.get("format") != FORMAT or doc.get("ref") != ref:
            raise ConfigurationError(f"secret {ref!r}: {path} is not this secret's file")
        return doc

    def _require_key(self, *, writing: bool = False) -> bytes:
        if self._key is None:
            raise ConfigurationError(
                f"the file secrets backend needs {KEY_ENV} (base64 of 32 bytes) or "
                f"{KEY_FILE_ENV}; create a key with `healthie-sync secrets init-key PATH`"
            )
        marker = self.directory / _MARKER
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8")).get("key_id")
        except FileNotFoundError:
            recorded = None
        except (OSError, ValueError):
            raise ConfigurationError(f"{marker} cannot be read") from None
        if recorded is not None and recorded != self._key_id:
            self._mismatch(recorded)
        if recorded is None and writing:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._atomic_write(marker, json.dumps({"key_id": self._key_id}))
        return self._key

    def _mismatch(self, recorded: str) -> None:
        raise ConfigurationError(
            f"secrets key does not match the store in {self.directory} (store key id "
            f"{recorded}, given key id {self._key_id}): set {KEY_ENV} or {KEY_FILE_ENV} to "
            "the key the store was written with"
        )

    def _open(self, ref: str, entry: dict[str, Any]) -> str:
        number = int(entry["version"])
        if entry.get("state") != "enabled" or "ciphertext" not in entry:
            raise ConfigurationError(f"secret {ref!r} version {number} is {entry.get('state')}")
        kek = self._require_key()
        if entry.get("key_id") != self._key_id:
            self._mismatch(str(entry.get("key_id")))
        try:
            wrapped = base64.b64decode(entry["wrapped_key"])
            sealed = base64.b64decode(entry["ciphertext"])
            dek = AESGCM(kek).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _aad("key", ref, number))
            plain = AESGCM(dek).decrypt(
                sealed[:_NONCE], sealed[_NONCE:], _aad("value", ref, number)
            )
            return plain.decode("utf-8")
        except (InvalidTag, ValueError, KeyError) as exc:
            raise ConfigurationError(
                f"secret {ref!r} version {number} failed authentication: its stored data was "
                "modified or copied from another secret or version; restore the file or set "
                "the secret again"
            ) from exc

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)  # an existing directory may have been created wider
        with self._lock:
            lock = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # other processes (a CLI beside serve)
                yield
            finally:
                os.close(lock)  # releases the flock

    def _write(self, ref: str, doc: dict[str, Any]) -> None:
        self._atomic_write(self._path(ref), json.dumps(doc, indent=1, sort_keys=True))

    def _atomic_write(self, path: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if os.name == "posix":  # the rename itself survives a crash once the directory is synced
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
