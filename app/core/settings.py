"""Process-wide settings from the environment (``HEALTHIE_SYNC_*``), built in factories only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Default of ``Settings.work_heartbeat_seconds`` (also what a ``Consumer`` built without
#: settings uses).
WORK_HEARTBEAT_SECONDS = 15.0
#: Default of ``Settings.flush_lease_seconds`` (also what a flush built without settings uses).
FLUSH_LEASE_SECONDS = 15.0


class Settings(BaseSettings):
    """Where the engine keeps its state and which backends it uses.

    The defaults are the embedded ones: SQLite queue and state under ``data_dir``, secrets from
    the environment. Production sets the ``pubsub``/``firestore``/``secret-manager`` backends.
    """

    model_config = SettingsConfigDict(env_prefix="HEALTHIE_SYNC_", extra="ignore")

    data_dir: Path = Path(".healthie-sync")
    config_dir: Path = Path("config/integrations")
    queue_backend: Literal["sqlite", "pubsub"] = "sqlite"
    state_backend: Literal["sqlite", "firestore"] = "sqlite"
    secrets_backend: Literal["env", "file", "secret-manager"] = "env"
    # file backend: the key-encryption key (base64 of 32 bytes) or a file holding it, outside
    # the repository and the data directory (`healthie-sync secrets init-key PATH`).
    secrets_key: SecretStr | None = None
    secrets_key_file: Path | None = None
    gcp_project: str | None = None
    firestore_prefix: str = "healthie-sync"  # collection prefix: deployments can share a project
    # Shared token for POST /flush/{cadence} on the local default; production uses OIDC.
    flush_token: SecretStr | None = None
    # Cloud Scheduler's OIDC identity: the audience it requests (the service URL) and the
    # service account it signs as. Both set -> Google ID tokens are accepted on /flush.
    flush_oidc_audience: str | None = None
    flush_oidc_service_account: str | None = None
    flush_oidc_certs_url: str | None = None  # tests point this at a local certificate server
    # Path Healthie called, when a proxy rewrites it before it reaches us ("{integration_id}").
    public_webhook_path: str | None = None
    max_webhook_body_bytes: int = Field(default=1_048_576, gt=0)
    # Drop repeats of an accepted delivery (same integration, signed path and query, body) seen by
    # this instance within this many seconds; 0 = off. Healthie retries only failed deliveries and
    # its signature has no timestamp (app.intake.signature), so a repeat is a replay or double send.
    # In memory, no state-store write (app.intake.dedupe).
    webhook_dedupe_seconds: int = Field(default=300, ge=0, le=86_400)
    # The Claude backend's API key, as a secret reference (never the key itself).
    anthropic_api_key_secret: str | None = None
    anthropic_base_url: str | None = None  # proxies and the tests' local fake
    work_max_delivery_attempts: int = Field(default=5, ge=1, le=100)
    # "embedded" fires flushes in-process on the Cloud Scheduler calendar (local default);
    # "external" leaves it to Cloud Scheduler calling POST /flush/{cadence}.
    scheduler: Literal["embedded", "external"] = "embedded"
    worker_concurrency: int = Field(default=2, ge=0, le=64)
    # serve: introspect each integration's live schema and refuse to start when an operation
    # the engine sends no longer validates (one request per integration at start-up).
    check_schema_at_startup: bool = True
    # Healthie requests: seconds one may take, and attempts per call. Workers keep the patient
    # defaults; commands a person waits on (and the start-up check) use short ones, so a Healthie
    # that accepts connections and never answers is reported in seconds, with its URL.
    healthie_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    healthie_max_attempts: int = Field(default=5, ge=1, le=20)
    interactive_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # configuration outside the image: re-read the config directory this often (0: only on
    # SIGHUP); a change is swapped in only when it validates (app.service.reload)
    config_reload_seconds: float = Field(default=60.0, ge=0, le=86_400)
    # SIGTERM: finish or hand back in-flight work within this (Cloud Run kills at 10 s)
    shutdown_grace_seconds: float = Field(default=8.0, gt=0, le=3_600)
    # false on Cloud Run: the build creates topics and subscriptions (least privilege)
    ensure_topology: bool = True
    # The work and dirty-mark subscriptions' ack deadlines, set when they are created: how long
    # a pulled message stays leased before its holder's first heartbeat shortens it.
    work_ack_deadline_seconds: int = Field(default=300, ge=1, le=600)
    dirty_ack_deadline_seconds: int = Field(default=600, ge=1, le=600)
    # In-flight work's heartbeat: patient leases reach this far ahead and its messages a third
    # further (so they outlast the patients'), renewed every third of it for as long as the
    # batch runs, so a killed worker's items come back within 4/3 of this instead of after the
    # ack deadline. At least 10: Pub/Sub's shortest subscription deadline, and enough for two
    # missed renewals before a live lease lapses. At most 450: 4/3 of it is Pub/Sub's 600 s cap.
    work_heartbeat_seconds: float = Field(default=WORK_HEARTBEAT_SECONDS, ge=10, le=450)
    # A running flush holds its cadence's lease this far ahead, renewed every third of it by a
    # heartbeat thread: a crashed flush's cadence is free again within this many seconds, and
    # the embedded scheduler retries a refused (FlushInProgress) flush after it.
    flush_lease_seconds: float = Field(default=FLUSH_LEASE_SECONDS, ge=3, le=3_600)
    # The embedded queue waits this long for another process's SQLite lock before it reports
    # QueueUnavailable.
    queue_busy_timeout_seconds: float = Field(default=30.0, gt=0, le=300)

    @field_validator("flush_token")
    @classmethod
    def _no_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().lower() in {"", "changeme", "secret"}:
            raise ValueError("flush_token is a placeholder; set a real random token")
        return value
