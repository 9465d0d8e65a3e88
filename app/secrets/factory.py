"""Build the secrets backend a deployment names (``HEALTHIE_SYNC_SECRETS_BACKEND``).

``env`` (the default: ``HEALTHIE_SYNC_SECRET_<REF>`` variables, read-only), ``file`` (the
envelope-encrypted store under ``<data_dir>/secrets``, key from ``HEALTHIE_SYNC_SECRETS_KEY`` or
``HEALTHIE_SYNC_SECRETS_KEY_FILE``) or ``secret-manager`` (Google Secret Manager in
``gcp_project``). Called from ``app.service.runtime.build_secrets``; nothing is built at import.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from app.core.errors import ConfigurationError
from app.secrets.base import SecretStore
from app.secrets.keys import load_key
from app.secrets.stores import EnvSecretStore

BACKENDS = ("env", "file", "secret-manager")


def build_store(
    backend: str,
    *,
    data_dir: Path,
    gcp_project: str | None = None,
    key: SecretStr | None = None,
    key_file: Path | None = None,
) -> SecretStore:
    """The named backend; ConfigurationError for an unknown name or missing setting."""
    if backend == "env":
        return EnvSecretStore()
    if backend == "file":
        from app.secrets.file_store import FileSecretStore

        kek = load_key(key.get_secret_value() if key else None, key_file, data_dir=data_dir)
        return FileSecretStore(data_dir / "secrets", kek)
    if backend == "secret-manager":
        if not gcp_project:
            raise ConfigurationError(
                "HEALTHIE_SYNC_SECRETS_BACKEND=secret-manager needs HEALTHIE_SYNC_GCP_PROJECT"
            )
        from google.cloud import secretmanager

        from app.secrets.secret_manager import SecretManagerStore

        return SecretManagerStore(secretmanager.SecretManagerServiceClient(), gcp_project)
    raise ConfigurationError(f"unknown secrets backend {backend!r} (known: {', '.join(BACKENDS)})")
