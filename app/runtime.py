"""The engine's assembled parts for one process: integrations, secrets, queue, state, and the
per-integration Healthie clients, agents and connectors built from them.

Built by ``build_runtime`` (from settings) or directly (tests, demo); nothing is created at import.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx2

from app.config import Integration, load_integrations
from app.errors import ConfigurationError
from app.healthie.client import HealthieClient
from app.intake_stats import IntakeStats
from app.queue.base import Queue
from app.secrets import EnvSecretStore, SecretManagerStore, SecretStore
from app.settings import Settings
from app.state.base import StateStore

if TYPE_CHECKING:
    import anthropic

    from app.agent.base import Agent
    from connectors.base import Connector


@dataclass
class Runtime:
    """Everything a webhook, flush or worker needs, with per-integration caches."""

    settings: Settings
    integrations: dict[str, Integration]
    secrets: SecretStore
    queue: Queue
    state: StateStore
    http_transport: httpx2.BaseTransport | None = None
    stats: IntakeStats = field(default_factory=IntakeStats)
    _healthie: dict[str, HealthieClient] = field(default_factory=dict)
    _agents: dict[str, Agent] = field(default_factory=dict)
    _connectors: dict[str, dict[str, Connector]] = field(default_factory=dict)
    _webhook_secrets: dict[str, list[str]] = field(default_factory=dict)
    _anthropic: anthropic.Anthropic | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def integration(self, integration_id: str) -> Integration:
        """The integration, or ConfigurationError."""
        try:
            return self.integrations[integration_id]
        except KeyError:
            raise ConfigurationError(f"unknown integration {integration_id!r}") from None

    def webhook_secrets(self, integration_id: str) -> list[str]:
        """The signing secrets accepted for the integration (cached; see ``reload_secrets``)."""
        cached = self._webhook_secrets.get(integration_id)
        if cached is None:
            refs = self.integration(integration_id).healthie.webhook_secrets
            cached = [self.secrets.get(ref) for ref in refs]
            self._webhook_secrets[integration_id] = cached
        return cached

    def check_secrets(self) -> list[str]:
        """Problems resolving each integration's secrets (empty when all resolve)."""
        problems = []
        for integration in self.integrations.values():
            refs = [integration.healthie.api_key_secret, *integration.healthie.webhook_secrets]
            refs += [r for t in integration.targets for r in t.credentials.values()]
            for ref in refs:
                try:
                    self.secrets.get(ref)
                except ConfigurationError as exc:
                    problems.append(f"{integration.id}: {exc}")
        return problems

    def reload_secrets(self) -> None:
        """Forget cached secrets so the next request reads them again (after a rotation)."""
        self._webhook_secrets.clear()

    def healthie(self, integration_id: str) -> HealthieClient:
        """The integration's Healthie client (one per integration, shared by threads)."""
        with self._lock:
            client = self._healthie.get(integration_id)
            if client is None:
                cfg = self.integration(integration_id).healthie
                client = HealthieClient(
                    url=cfg.url(),
                    api_key=self.secrets.get(cfg.api_key_secret),
                    api_version=cfg.api_version,
                    shard_id=self.secrets.get(cfg.shard_id_secret) if cfg.shard_id_secret else None,
                    http_transport=self.http_transport,
                    batch_size=cfg.batch_size,
                    rate_limit=cfg.rate_limit,
                )
                if cfg.entry_extra_selection or cfg.entry_exclude_fields:
                    from app.healthie.schema_check import live_schema
                    from app.healthie.selection import build_entry_fragment

                    # checked against the live schema (Healthie's, or the sandbox's subset)
                    client.use_entry_fragment(
                        build_entry_fragment(
                            live_schema(client),
                            cfg.entry_extra_selection,
                            cfg.entry_exclude_fields,
                        )
                    )
                self._healthie[integration_id] = client
            return client

    def anthropic_client(self) -> anthropic.Anthropic:
        """The one Anthropic SDK client (its key from the secrets interface)."""
        from app.agent.factory import build_anthropic_client

        if self._anthropic is None:
            ref = self.settings.anthropic_api_key_secret
            if not ref:
                raise ConfigurationError(
                    "the claude backend needs HEALTHIE_SYNC_ANTHROPIC_API_KEY_SECRET "
                    "(a secret reference holding the Anthropic API key)"
                )
            self._anthropic = build_anthropic_client(
                self.secrets.get(ref), base_url=self.settings.anthropic_base_url
            )
        return self._anthropic

    def agent(self, integration_id: str) -> Agent:
        """The integration's agent backend."""
        from app.agent.factory import build_agent

        with self._lock:
            agent = self._agents.get(integration_id)
            if agent is None:
                integration = self.integration(integration_id)
                client = (
                    self.anthropic_client() if integration.agent.backend == "claude" else None
                )
                agent = build_agent(
                    integration, self.connectors_unlocked(integration), anthropic_client=client
                )
                self._agents[integration_id] = agent
            return agent

    def connectors(self, integration_id: str) -> dict[str, Connector]:
        """The integration's targets, by target name."""
        with self._lock:
            return self.connectors_unlocked(self.integration(integration_id))

    def connectors_unlocked(self, integration: Integration) -> dict[str, Connector]:
        """Like ``connectors``, for callers already holding the lock."""
        from connectors.registry import build_connector

        built = self._connectors.get(integration.id)
        if built is None:
            built = {}
            for target in integration.targets:
                credentials = {k: self.secrets.get(v) for k, v in target.credentials.items()}
                built[target.name] = build_connector(target, credentials)
            self._connectors[integration.id] = built
        return built

    def close(self) -> None:
        """Close every client, connector, the queue and the state store."""
        for client in self._healthie.values():
            client.close()
        for targets in self._connectors.values():
            for connector in targets.values():
                connector.close()
        self.queue.close()
        self.state.close()


def build_queue(settings: Settings) -> Queue:
    """The queue backend the settings name."""
    if settings.queue_backend == "pubsub":
        from app.queue.pubsub import PubSubQueue

        if not settings.gcp_project:
            raise ConfigurationError("queue_backend = pubsub needs HEALTHIE_SYNC_GCP_PROJECT")
        return PubSubQueue(project=settings.gcp_project)
    from app.queue.sqlite import SqliteQueue

    return SqliteQueue(settings.data_dir / "queue.db")


def build_state(settings: Settings) -> StateStore:
    """The state backend the settings name."""
    if settings.state_backend == "firestore":
        from google.cloud import firestore

        from app.state.firestore import FirestoreStateStore

        if not settings.gcp_project:
            raise ConfigurationError("state_backend = firestore needs HEALTHIE_SYNC_GCP_PROJECT")
        return FirestoreStateStore(
            firestore.Client(project=settings.gcp_project), prefix=settings.firestore_prefix
        )
    from app.state.sqlite import SqliteStateStore

    return SqliteStateStore(settings.data_dir / "state.db")


def build_secrets(settings: Settings) -> SecretStore:
    """The secrets backend the settings name."""
    if settings.secrets_backend == "secret-manager":
        from google.cloud import secretmanager

        if not settings.gcp_project:
            raise ConfigurationError("secrets_backend = secret-manager needs a GCP project")
        return SecretManagerStore(secretmanager.SecretManagerServiceClient(), settings.gcp_project)
    return EnvSecretStore()


def build_runtime(settings: Settings, *, secrets: SecretStore | None = None) -> Runtime:
    """Assemble a runtime from settings and the integration config directory."""
    from app.queue.topology import ensure_topology_for

    integrations = load_integrations(settings.config_dir)
    queue = build_queue(settings)
    ensure_topology_for(queue, settings)
    return Runtime(
        settings=settings,
        integrations=integrations,
        secrets=secrets or build_secrets(settings),
        queue=queue,
        state=build_state(settings),
    )
