"""Integration configuration: one TOML file per customer integration, validated at start-up.

A file looks like ``config/integrations/demo-clinic.toml``. Paths inside it are relative to the
file. Secrets are never written here, only *references* resolved through ``app.secrets.stores``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.agent.freshness import RefreshAfter
from app.core.errors import ConfigurationError
from app.core.models import Cadence
from app.core.reverse_config import ReverseConfig, check_reverse
from app.core.reverse_config import resolve_paths as resolve_reverse_paths

HEALTHIE_URLS = {
    "production": "https://api.gethealthie.com/graphql",
    "sandbox": "https://staging-api.gethealthie.com/graphql",
}
DEFAULT_API_VERSION = "2026-07-01"  # Healthie's minimum from 2027-01-31 (app.healthie.versions)


class HealthieConfig(BaseModel):
    """Where and how to reach Healthie for one integration."""

    model_config = ConfigDict(extra="forbid")

    environment: Literal["production", "sandbox", "local"] = "sandbox"
    api_url: str | None = None  # required for "local"; overrides the environment's URL
    api_key_secret: str
    webhook_secrets: list[str] = Field(min_length=1)  # several during a rotation
    shard_id_secret: str | None = None
    api_version: str = DEFAULT_API_VERSION
    # ~97 complexity points per committed entry: 20 fit under Healthie's cap of 2000 (the client
    # lowers it further when its estimate or a refusal says so).
    batch_size: int = Field(default=20, ge=1, le=100)
    # This instance's share of the API key's limit (Healthie allows ~250 requests/s per key).
    rate_limit: float = Field(default=250.0, gt=0, le=1000)
    # Entry selection: extra GraphQL selections added to the PatientEntry fragment, and
    # top-level entry fields dropped from it. Checked against the schema at start-up.
    entry_extra_selection: str | None = None
    entry_exclude_fields: list[str] = Field(default_factory=list)
    # The missed-change sweep run by each flush (patients, appointments, applied tags).
    sweep: bool = True

    def url(self) -> str:
        """The GraphQL endpoint this integration talks to."""
        if self.api_url:
            return self.api_url
        if self.environment == "local":
            raise ConfigurationError("healthie.environment = 'local' needs healthie.api_url")
        return HEALTHIE_URLS[self.environment]


class AgentConfig(BaseModel):
    """Which backend turns entries into WritePlans, and from which instructions."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["plan", "claude"] = "plan"
    instructions: Path
    plan: Path | None = None
    model: str | None = None
    # Message Batches for every cadence but hourly (falls back to direct calls when unavailable)
    use_batches: bool = True
    max_output_tokens: int = Field(default=4096, ge=256, le=64000)
    # Entry fields the model may see (JMESPath-free top-level names); None = the whole entry.
    visible_fields: list[str] | None = None
    # How long a decision stays valid ("7d", "12h"): older ones are decided again even when the
    # entry did not change, so time-dependent rules follow the calendar (None: forever)
    refresh_after: RefreshAfter = None


class TargetConfig(BaseModel):
    """One target system the integration writes to."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    connector: str
    options: dict[str, Any] = Field(default_factory=dict)
    credentials: dict[str, str] = Field(default_factory=dict)  # option name -> secret ref
    #: options of the sandboxed copy that staging mode writes to (None: no staging copy)
    staging: dict[str, Any] | None = None


class Integration(BaseModel):
    """One customer integration, as loaded and validated from its config file."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    cadence: Cadence
    mode: Literal["live", "staging"] = "live"
    healthie: HealthieConfig
    agent: AgentConfig
    targets: list[TargetConfig] = Field(min_length=1)
    #: HubSpot -> Healthie (``app.core.reverse_config``); None: forward only
    reverse: ReverseConfig | None = None
    events: list[str] | None = None  # extra patient-scoped event types to accept

    @field_validator("cadence", mode="before")
    @classmethod
    def _known_cadence(cls, value: Any) -> Any:
        allowed = [c.value for c in Cadence]
        if isinstance(value, str) and value not in allowed:
            hint = " Use 'weekly' for the slowest cadence." if "month" in value.lower() else ""
            raise ValueError(f"cadence {value!r} is not one of {allowed}.{hint}")
        return value

    @model_validator(mode="after")
    def _staging_needs_copies(self) -> Integration:
        if self.mode == "staging":
            bare = [t.name for t in self.targets if t.staging is None]
            if bare:
                raise ValueError(
                    f"mode = 'staging' writes to each target's sandboxed copy, and {bare} "
                    "declare none: add [targets.staging] options (another path, database or "
                    "bucket) or set mode = 'live'"
                )
        return self

    def target(self, name: str) -> TargetConfig:
        """The target called ``name``; ConfigurationError when there is none."""
        for target in self.targets:
            if target.name == name:
                return target
        raise ConfigurationError(f"integration {self.id!r} has no target {name!r}")


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    agent = raw.get("agent")
    if isinstance(agent, dict):
        for key in ("instructions", "plan"):
            if isinstance(agent.get(key), str):
                agent[key] = str((base / agent[key]).resolve())
    resolve_reverse_paths(raw, base)


def load_integration(path: Path) -> Integration:
    """Parse and validate one integration file; ConfigurationError names every problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read integration config: {exc}") from exc
    _resolve_paths(raw, path.parent)
    try:
        integration = Integration.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"{path}: {problems}") from exc
    if not integration.agent.instructions.is_file():
        raise ConfigurationError(f"{path}: instructions {integration.agent.instructions} missing")
    if integration.agent.backend == "plan" and not (
        integration.agent.plan and integration.agent.plan.is_file()
    ):
        raise ConfigurationError(f"{path}: agent.backend = 'plan' needs an existing agent.plan")
    names = [t.name for t in integration.targets]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{path}: target names must be unique, got {names}")
    check_reverse(integration)
    return integration


class ConfigProblem(BaseModel):
    """One integration file that could not be loaded: the file, the integration it names (when
    its ``id`` could be read) and why (paths and field names, never a secret or a value)."""

    model_config = ConfigDict(frozen=True)

    path: Path
    integration_id: str | None = None
    message: str


def _declared_id(path: Path) -> str | None:
    """The ``id`` a file declares, if it can be read at all (to name a broken integration)."""
    try:
        value = tomllib.loads(path.read_text(encoding="utf-8")).get("id")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) else None


def load_integrations(
    directory: Path, problems: list[ConfigProblem] | None = None
) -> dict[str, Integration]:
    """Every ``*.toml`` integration in ``directory``, keyed by id (ids must be unique).

    Strict by default: the first bad file raises ConfigurationError. Given a ``problems``
    list, each bad file (unreadable, invalid, a duplicate id) is appended there and skipped,
    and the good ones are returned: one clinic's broken file never stops the others. A
    missing directory always raises."""
    if not directory.is_dir():
        raise ConfigurationError(f"integration config directory {directory} does not exist")
    found: dict[str, Integration] = {}
    for path in sorted(directory.glob("*.toml")):
        problem: ConfigurationError | None = None
        try:
            integration = load_integration(path)
        except ConfigurationError as exc:
            problem = exc
        else:
            if integration.id in found:
                problem = ConfigurationError(f"{path}: duplicate integration id {integration.id!r}")
        if problem is None:
            found[integration.id] = integration
            continue
        if problems is None:
            raise problem
        problems.append(
            ConfigProblem(path=path, integration_id=_declared_id(path), message=str(problem))
        )
    return found
