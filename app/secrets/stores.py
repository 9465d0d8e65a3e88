"""The secrets interface: every credential the engine uses is resolved here, by reference.

References look like ``demo-clinic/healthie-api-key``. Backends: environment variables (local
default), an in-memory store (tests, demo), Google Secret Manager (production). Values are never
logged; errors name the reference, not the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Protocol

from app.core.errors import ConfigurationError


class SecretStore(Protocol):
    """Resolves a secret reference to its current value."""

    def get(self, ref: str) -> str:
        """The secret's value; ConfigurationError when it does not exist."""
        ...


class MemorySecretStore:
    """Secrets held in a dict: tests and the demo's generated credentials."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})

    def set(self, ref: str, value: str) -> None:
        """Store or replace ``ref``."""
        self._values[ref] = value

    def get(self, ref: str) -> str:
        """The value stored for ``ref``."""
        try:
            return self._values[ref]
        except KeyError:
            raise ConfigurationError(f"secret {ref!r} is not set") from None


def env_name(ref: str) -> str:
    """The environment variable that holds ``ref``: ``HEALTHIE_SYNC_SECRET_<REF>``."""
    return "HEALTHIE_SYNC_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", ref).upper()


class EnvSecretStore:
    """Secrets from environment variables, for one-machine deployments."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ

    def get(self, ref: str) -> str:
        """The value of ``env_name(ref)``."""
        value = self._environ.get(env_name(ref))
        if not value:
            raise ConfigurationError(f"secret {ref!r} is not set (expected ${env_name(ref)})")
        return value


class SecretManagerStore:
    """Google Secret Manager: ``ref`` ``a/b`` maps to secret ``a--b``, latest version."""

    def __init__(self, client: Any, project: str) -> None:
        self._client = client  # google.cloud.secretmanager.SecretManagerServiceClient
        self._project = project

    def get(self, ref: str) -> str:
        """Access the latest version of the secret behind ``ref``."""
        secret_id = ref.replace("/", "--")
        name = f"projects/{self._project}/secrets/{secret_id}/versions/latest"
        try:
            response = self._client.access_secret_version(name=name)
        except Exception as exc:  # vendor errors vary; converted at this edge
            raise ConfigurationError(f"secret {ref!r} unavailable: {type(exc).__name__}") from exc
        value: str = response.payload.data.decode("utf-8")
        return value
