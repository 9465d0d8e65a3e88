"""Google Secret Manager as the secrets backend (production).

Reference ``a/b`` is secret ``a--b`` in the configured project (:func:`app.secrets.base.secret_id`);
``get`` accesses ``versions/latest`` (Secret Manager's alias for the most recently created
version), ``add_version`` calls ``AddSecretVersion`` and, when the secret does not exist yet,
``CreateSecret`` first (automatic replication unless ``locations`` are given, label
``managed-by=healthie-sync``). Payloads carry a CRC32C both ways, as Google recommends, so data
damaged in transit is retried rather than used.

Each call runs with :func:`app.resilience.retry.google_rpc_retry` on transient errors (unavailable,
deadline, internal, aborted, quota) within ``timeout`` seconds; what still fails then is
``UpstreamUnavailable`` / ``RateLimited`` (retriable: the secret exists, the service is down). A
missing secret or version, a disabled one, no permission or no credentials are
``ConfigurationError`` naming the reference and the Secret Manager resource, never a value.
Retrying ``AddSecretVersion`` after a lost answer may add the same value twice (two versions
with one value): harmless, the newest is read. Reading needs the role
``roles/secretmanager.secretAccessor``; ``secrets set``/``rotate`` and ``webhooks rotate`` also
need ``roles/secretmanager.secretVersionAdder``, and ``roles/secretmanager.admin`` to create
secrets and destroy versions.

The client (``google.cloud.secretmanager.SecretManagerServiceClient``) is passed in; Google's
libraries are imported on first use, not with this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from app.core.errors import ConfigurationError, HealthieSyncError, RateLimited, UpstreamUnavailable
from app.resilience.retry import Backoff, google_no_retry, google_rpc_retry
from app.secrets.base import (
    SecretVersion,
    VersionState,
    check_ref,
    check_value,
    ref_from_id,
    secret_id,
)

_STATES: dict[str, VersionState] = {
    "ENABLED": "enabled",
    "DISABLED": "disabled",
    "DESTROYED": "destroyed",
}


def _transient() -> tuple[type[Exception], ...]:
    from google.api_core import exceptions as gexc

    return (
        gexc.ServiceUnavailable,
        gexc.DeadlineExceeded,
        gexc.InternalServerError,
        gexc.Aborted,
        gexc.ResourceExhausted,
    )


def _data_loss() -> type[Exception]:
    from google.api_core import exceptions as gexc

    return gexc.DataLoss


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


class SecretManagerStore:
    """Secrets in Secret Manager project ``project`` through ``client``."""

    backend = "secret-manager"

    def __init__(
        self,
        client: Any,
        project: str,
        *,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        locations: Sequence[str] = (),
    ) -> None:
        """``timeout`` bounds each call, retries included (waits from ``backoff``);
        ``locations``: user-managed replication for new secrets (an organisation policy may
        forbid automatic)."""
        self._client = client  # google.cloud.secretmanager.SecretManagerServiceClient
        self._project = project
        self._timeout = timeout
        self._locations = list(locations)
        backoff = backoff or Backoff(initial=0.25, cap=5.0)
        self._retry = google_rpc_retry(_transient(), backoff=backoff, deadline=timeout)
        self._access_retry = google_rpc_retry(
            (*_transient(), _data_loss()), backoff=backoff, deadline=timeout
        )

    def _secret(self, ref: str) -> str:
        return f"projects/{self._project}/secrets/{secret_id(ref)}"

    def _call(self, method: str, ref: str, action: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(**kwargs, retry=self._retry, timeout=self._timeout)
        except Exception as exc:  # vendor errors vary; converted at this edge
            raise self._convert(exc, ref, action) from exc

    # -- reading ---------------------------------------------------------------------------

    def get(self, ref: str) -> str:
        """The value of ``versions/latest``."""
        return self._access(ref, "latest", "read")

    def get_version(self, ref: str, version: int) -> str:
        """The value of one version."""
        return self._access(ref, str(int(version)), f"read version {version} of")

    def _access(self, ref: str, version: str, action: str) -> str:
        from google.api_core import exceptions as gexc

        name = f"{self._secret(ref)}/versions/{version}"

        def once() -> bytes:
            response = self._client.access_secret_version(
                name=name, retry=google_no_retry(), timeout=self._timeout
            )
            payload = response.payload
            if "data_crc32c" in payload and payload.data_crc32c != _crc32c(payload.data):
                # damaged on the way: a retriable answer for the retry below
                raise gexc.DataLoss(f"{name}: payload CRC32C mismatch")  # type: ignore[no-untyped-call]
            return bytes(payload.data)

        # One retry around the call and its checksum, so a damaged answer is asked again.
        try:
            data: bytes = self._access_retry(once)()
        except Exception as exc:  # vendor errors vary; converted at this edge
            raise self._convert(exc, ref, action) from exc
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigurationError(
                f"secret {ref!r} version {version} ({name}) is not UTF-8 text"
            ) from None

    def versions(self, ref: str) -> list[SecretVersion]:
        """Newest first; empty when the secret does not exist."""
        from google.api_core import exceptions as gexc

        try:
            pages = self._client.list_secret_versions(
                parent=self._secret(ref), retry=self._retry, timeout=self._timeout
            )
            found = [
                SecretVersion(
                    ref,
                    int(v.name.rsplit("/", 1)[-1]),
                    _STATES.get(v.state.name, "disabled"),
                    _when(v.create_time),
                )
                for v in pages
            ]
        except gexc.NotFound:
            return []
        except Exception as exc:  # vendor errors vary; converted at this edge
            raise self._convert(exc, ref, "list the versions of") from exc
        return sorted(found, key=lambda v: v.version, reverse=True)

    def refs(self) -> list[str]:
        """The project's secrets whose ids are engine references (names only)."""
        pages = self._call(
            "list_secrets", "*", "list the secrets of", parent=f"projects/{self._project}"
        )
        try:
            ids = [s.name.rsplit("/", 1)[-1] for s in pages]  # pages fetch lazily
        except Exception as exc:  # vendor errors vary; converted at this edge
            raise self._convert(exc, "*", "list the secrets of") from exc
        return sorted(ref for ref in map(ref_from_id, ids) if ref is not None)

    # -- writing ---------------------------------------------------------------------------

    def add_version(self, ref: str, value: str) -> SecretVersion:
        """``AddSecretVersion``, creating the secret first when it does not exist."""
        from google.api_core import exceptions as gexc

        data = check_value(check_ref(ref), value)
        payload = {"data": data, "data_crc32c": _crc32c(data)}
        parent = self._secret(ref)
        try:
            try:
                added = self._client.add_secret_version(
                    parent=parent, payload=payload, retry=self._retry, timeout=self._timeout
                )
            except gexc.NotFound:
                self._create(ref)
                added = self._client.add_secret_version(
                    parent=parent, payload=payload, retry=self._retry, timeout=self._timeout
                )
        except HealthieSyncError:
            raise
        except Exception as exc:  # vendor errors vary; converted at this edge
            raise self._convert(exc, ref, "add a version to") from exc
        return SecretVersion(
            ref, int(added.name.rsplit("/", 1)[-1]), "enabled", _when(added.create_time)
        )

    def _create(self, ref: str) -> None:
        from google.api_core import exceptions as gexc

        replication: dict[str, Any] = (
            {"user_managed": {"replicas": [{"location": loc} for loc in self._locations]}}
            if self._locations
            else {"automatic": {}}
        )
        try:
            self._client.create_secret(
                parent=f"projects/{self._project}",
                secret_id=secret_id(ref),
                secret={"replication": replication, "labels": {"managed-by": "healthie-sync"}},
                retry=self._retry,
                timeout=self._timeout,
            )
        except gexc.AlreadyExists:
            pass  # created meanwhile (another writer, or our own retried call)
        except Exception as exc:  # vendor errors vary; converted at this edge
            raise self._convert(exc, ref, "create") from exc

    def destroy_version(self, ref: str, version: int) -> None:
        """``DestroySecretVersion``: the value is gone for good."""
        name = f"{self._secret(ref)}/versions/{int(version)}"
        self._call("destroy_secret_version", ref, f"destroy version {version} of", name=name)

    # -- errors ----------------------------------------------------------------------------

    def _convert(self, exc: Exception, ref: str, action: str) -> HealthieSyncError:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        if isinstance(exc, gexc.RetryError) and isinstance(exc.cause, Exception):
            exc = exc.cause  # our retries ran out: classify what kept failing
        where = (
            f"Secret Manager project {self._project!r}"
            if ref == "*"
            else f"secret {ref!r} (Secret Manager {self._secret(ref)})"
        )
        detail = str(getattr(exc, "message", "") or type(exc).__name__)[:200]
        if isinstance(exc, gexc.ResourceExhausted | gexc.TooManyRequests):
            return RateLimited(f"Secret Manager quota exceeded: {action} {where}")
        if isinstance(exc, _transient()):
            return UpstreamUnavailable(f"Secret Manager unavailable: {action} {where}: {detail}")
        if isinstance(exc, gexc.NotFound):
            return ConfigurationError(f"{where} does not exist (cannot {action} it)")
        if isinstance(exc, gexc.PermissionDenied):
            return ConfigurationError(
                f"no permission to {action} {where}: grant this service account the Secret "
                f"Manager role it needs ({detail})"
            )
        if isinstance(exc, gexc.FailedPrecondition):
            return ConfigurationError(f"cannot {action} {where}: {detail}")
        if isinstance(exc, gexc.Unauthenticated | auth_exc.GoogleAuthError):
            return ConfigurationError(
                f"Secret Manager credentials missing or refused: cannot {action} {where} "
                f"({type(exc).__name__})"
            )
        if isinstance(exc, gexc.ClientError):
            return ConfigurationError(f"Secret Manager refused to {action} {where}: {detail}")
        return UpstreamUnavailable(f"Secret Manager failed: {action} {where}: {detail}")


def _when(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) and value.year > 1970 else None
