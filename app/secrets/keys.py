"""The file store's key-encryption key: where it comes from and how it is checked.

The key is 32 random bytes, base64-encoded, given either in ``HEALTHIE_SYNC_SECRETS_KEY`` or in
a file named by ``HEALTHIE_SYNC_SECRETS_KEY_FILE``. The file must be readable by its owner only
and lie outside the data directory and outside any git work tree, so the key never travels
with the ciphertexts it protects (a copied data directory, a commit). ``secrets init-key`` writes
a fresh one (:func:`write_key_file`).

A key is known by its *key id*, an HMAC of a fixed label under the key: the store records it, so
a wrong key is told apart from damaged data and refused before anything is decrypted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from app.core.errors import ConfigurationError

KEY_ENV = "HEALTHIE_SYNC_SECRETS_KEY"
KEY_FILE_ENV = "HEALTHIE_SYNC_SECRETS_KEY_FILE"
KEY_BYTES = 32  # AES-256
_ID_LABEL = b"healthie-sync secrets key id v1"


def decode_key(text: str, source: str) -> bytes:
    """The 32 bytes base64-encoded in ``text`` (from ``source``, named in errors; the text is
    never repeated)."""
    try:
        raw = base64.b64decode(text.strip().encode("ascii"), altchars=b"-_", validate=False)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ConfigurationError(
            f"{source} is not a secrets key: expected base64 of {KEY_BYTES} random bytes "
            "(create one with `healthie-sync secrets init-key PATH`)"
        )
    return raw


def key_id(key: bytes) -> str:
    """A non-secret name for ``key`` (16 hex digits)."""
    return hmac.new(key, _ID_LABEL, hashlib.sha256).hexdigest()[:16]


def _inside_git_tree(path: Path) -> Path | None:
    for parent in path.parents:
        if (parent / ".git").exists():
            return parent
    return None


def check_key_location(path: Path, data_dir: Path) -> Path:
    """``path`` resolved, or ConfigurationError when it sits in the data directory or a git
    work tree."""
    resolved = path.expanduser().resolve()
    data = data_dir.expanduser().resolve()
    if resolved == data or data in resolved.parents:
        raise ConfigurationError(
            f"secrets key file {resolved} is inside the data directory {data}: keep it apart "
            "from the encrypted secrets it protects"
        )
    repo = _inside_git_tree(resolved)
    if repo is not None:
        raise ConfigurationError(
            f"secrets key file {resolved} is inside the git work tree {repo}: keep it outside "
            "any repository (e.g. ~/.config/healthie-sync/secrets.key)"
        )
    return resolved


def load_key(key: str | None, key_file: Path | None, *, data_dir: Path) -> bytes | None:
    """The key from ``key`` (the variable's text) or ``key_file``; None when neither is set.
    Both set is refused (which one is meant?)."""
    if key and key_file:
        raise ConfigurationError(f"set either {KEY_ENV} or {KEY_FILE_ENV}, not both")
    if key:
        return decode_key(key, KEY_ENV)
    if key_file is None:
        return None
    path = check_key_location(key_file, data_dir)
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigurationError(
            f"secrets key file {path} ({KEY_FILE_ENV}) does not exist"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"secrets key file {path} cannot be read: {type(exc).__name__}"
        ) from None
    if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"secrets key file {path} is readable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}): run chmod 600 {path}"
        )
    return decode_key(text, f"secrets key file {path}")


def write_key_file(path: Path, *, data_dir: Path) -> str:
    """Write a fresh random key to ``path`` (owner-only, never overwriting); its key id."""
    resolved = check_key_location(path, data_dir)
    resolved.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(resolved, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigurationError(f"{resolved} exists; a key file is never overwritten") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(key).decode("ascii") + "\n")
    return key_id(key)
