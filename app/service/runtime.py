"""The engine's assembled parts for one process: integrations, secrets, queue, state, and the
per-integration Healthie clients, agents and connectors built from them.

Built by ``build_runtime`` (from settings) or directly (tests, demo); nothing is created at import.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2

from app.core.config import ConfigProblem, Integration, load_integrations
from app.core.errors import ConfigurationError
from app.core.settings import Settings
from app.healthie.client import HealthieClient
from app.intake.stats import IntakeStats
from app.queue.base import Queue
from app.resilience.guard import Guards, credential_id
from app.secrets.base import SecretStore, accepted_values
from app.state.base import StateStore

if TYPE_CHECKING:
    import anthropic

    from app.agent.base import Agent
    from connectors.base import Connector, TargetSchema

log = logging.getLogger(__name__)


class IntegrationClients:
    """One integration's clients, each built on first use and then shared by threads: its
    Healthie client (paced and protected by the guard of its API key), its agent (built from
    the targets' declarations, so asking for it opens no target) and its target connectors.
    This is what the flusher and the pipeline stages are handed; they reach nothing else."""

    def __init__(self, runtime: Runtime, integration: Integration) -> None:
        self.integration = integration
        self._runtime = runtime
        self._lock = threading.RLock()
        self._healthie: HealthieClient | None = None
        self._agent: Agent | None = None
        self._connectors: dict[str, Connector] | None = None
        self._targets: dict[str, TargetSchema] | None = None
        self._declared: dict[str, dict[str, Any]] | None = None
        self._rules: str | None = None

    @property
    def rules(self) -> str:
        """What the integration's decisions depend on besides the entry: the rules version
        (instructions, plan, backend, model: ``workers.rules``) and the mode, so changing the
        rules reprocesses every entry and a staging run never makes a live run skip. Read once,
        like the agent built from the same files."""
        from workers.rules import decision_rules

        with self._lock:
            if self._rules is None:
                self._rules = decision_rules(self.integration)
            return self._rules

    @property
    def healthie(self) -> HealthieClient:
        """The Healthie client."""
        with self._lock:
            if self._healthie is None:
                self._healthie = self._runtime.build_healthie(self.integration)
            return self._healthie

    @property
    def targets(self) -> dict[str, TargetSchema]:
        """The targets' declarations and validated options by target name (no connection
        opened). A bad option or an undeclared table the backend needs declared is a
        ConfigurationError here, before any work."""
        from connectors.registry import target_schema

        with self._lock:
            if self._targets is None:
                declared = self.declarations()
                self._targets = {
                    t.name: target_schema(t, declared.get(t.name)) for t in self.integration.targets
                }
            return self._targets

    def declarations(self) -> dict[str, dict[str, Any]]:
        """Per table-shaped target, the tables it may be written: its ``options.tables``
        merged over what the compiled plan writes (read once). The Claude backend writes only
        declared tables, so a table target without declarations is refused for it."""
        with self._lock:
            if self._declared is None:
                self._declared = self._declare()
            return self._declared

    def _declare(self) -> dict[str, dict[str, Any]]:
        from connectors.registry import connector_class
        from connectors.tables import TableConnector

        integration = self.integration
        derived: dict[str, dict[str, dict[str, str]]] = {}
        if integration.agent.backend == "plan" and integration.agent.plan is not None:
            from app.agent.plan import PlanAgent

            derived = PlanAgent.from_file(integration.agent.plan).declared_tables()
        out: dict[str, dict[str, Any]] = {}
        for target in integration.targets:
            if not issubclass(connector_class(target), TableConnector):
                continue
            own = target.options.get("tables")
            if own is None and target.name not in derived:
                if integration.agent.backend == "claude":
                    raise ConfigurationError(
                        f"integration {integration.id!r}, target {target.name!r}: the claude "
                        "backend writes only declared tables; declare them in "
                        "[targets.options.tables] (table -> column -> type)"
                    )
                continue
            tables = {k: dict(v) for k, v in derived.get(target.name, {}).items()}
            for table, columns in (own or {}).items():
                tables[table] = {**tables.get(table, {}), **dict(columns)}
            out[target.name] = {"tables": tables}
        return out

    @property
    def agent(self) -> Agent:
        """The agent backend the integration names."""
        from app.agent.factory import build_agent

        with self._lock:
            if self._agent is None:
                client = guard = None
                if self.integration.agent.backend == "claude":
                    client = self._runtime.anthropic_client()
                    guard = self._runtime.guards.for_credential(
                        credential_id(client.api_key or ""), name="Anthropic"
                    )
                self._agent = build_agent(
                    self.integration, self.targets, anthropic_client=client, guard=guard
                )
            return self._agent

    @property
    def connectors(self) -> dict[str, Connector]:
        """The target connectors by target name, built (and connected) on first use; in
        staging mode, each target's declared staging copy instead."""
        from connectors.registry import build_connector, connector_class

        with self._lock:
            if self._connectors is None:
                declared = self.declarations()
                staging = self.integration.mode == "staging"
                built: dict[str, Connector] = {}
                try:
                    for target in self.integration.targets:
                        credentials = {
                            k: self._runtime.secrets.get(v) for k, v in target.credentials.items()
                        }
                        cls = connector_class(target)
                        # e.g. Healthie as a target: the integration's own client, so its
                        # rate limit is shared with reads
                        own = cls.for_runtime(
                            target.name,
                            target.staging if staging else target.options,
                            credentials,
                            integration_client=lambda: self.healthie,
                            guards=self._runtime.guards,
                            staging=staging,
                            http_transport=self._runtime.http_transport,
                        )
                        if own is not None:
                            built[target.name] = own
                            continue
                        guard = self._runtime.guards.for_credential(
                            credential_id(
                                json.dumps(
                                    [
                                        target.connector,
                                        target.staging if staging else target.options,
                                        sorted(credentials.items()),
                                    ],
                                    sort_keys=True,
                                    default=str,
                                )
                            ),
                            rate=cls.rate_limit,
                            name=f"target {target.name}",
                        )
                        built[target.name] = build_connector(
                            target,
                            credentials,
                            staging=staging,
                            extra=declared.get(target.name),
                            guard=guard,
                        )
                except BaseException:
                    for connector in built.values():
                        connector.close()
                    raise
                from workers.reverse_ledger import guard_connectors

                # the HubSpot targets of a two-way integration skip what the engine last wrote
                self._connectors = guard_connectors(built, self._runtime.state, self.integration)
            return self._connectors

    def close(self) -> None:
        """Close what was built."""
        with self._lock:
            if self._healthie is not None:
                self._healthie.close()
            for connector in (self._connectors or {}).values():
                connector.close()


@dataclass
class Runtime:
    """The process's assembled parts (the composition root): settings, integrations, secrets,
    queue, state, one guard per credential, and each integration's clients.

    Entry points (the routes, the CLI, ``workers.consumer.drain``, ``workers.flusher.flush``)
    take a runtime; below them every function is handed the clients it uses."""

    settings: Settings
    integrations: dict[str, Integration]
    secrets: SecretStore
    queue: Queue
    state: StateStore
    http_transport: httpx2.BaseTransport | None = None
    stats: IntakeStats = field(default_factory=IntakeStats)
    guards: Guards = field(default_factory=Guards)
    #: integration files that did not load and integrations whose targets were refused: the
    #: others keep working; ``runs`` and ``doctor`` show these (``build_runtime`` fills it)
    config_problems: list[ConfigProblem] = field(default_factory=list)
    _clients: dict[str, IntegrationClients] = field(default_factory=dict)
    _webhook_secrets: dict[str, list[str]] = field(default_factory=dict)
    _anthropic: anthropic.Anthropic | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def integration(self, integration_id: str) -> Integration:
        """The integration, or ConfigurationError."""
        try:
            return self.integrations[integration_id]
        except KeyError:
            import difflib

            for problem in self.config_problems:
                if problem.integration_id == integration_id:
                    raise ConfigurationError(
                        f"integration {integration_id!r} is not loaded: {problem.message}"
                    ) from None
            close = difflib.get_close_matches(integration_id, list(self.integrations), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(self.integrations)) or "none"
            raise ConfigurationError(
                f"unknown integration {integration_id!r}{hint} (known: {known}; "
                f"in {self.settings.config_dir})"
            ) from None

    def clients(self, integration_id: str) -> IntegrationClients:
        """The integration's clients (one set per integration in the process)."""
        with self._lock:
            clients = self._clients.get(integration_id)
            if clients is None:
                clients = IntegrationClients(self, self.integration(integration_id))
                self._clients[integration_id] = clients
            return clients

    def check_targets(self) -> None:
        """Validate every integration's targets (options, declared tables, connector names)
        without connecting; ConfigurationError naming the integration and target."""
        for integration_id in sorted(self.integrations):
            _ = self.clients(integration_id).targets

    def target_problems(self) -> list[ConfigProblem]:
        """``check_targets`` per integration: one problem for each integration whose targets
        are refused (the integration stays loaded: its marks are staged and its work items
        wait, counted, until the file is fixed), none when all pass."""
        problems = []
        for integration_id in sorted(self.integrations):
            try:
                _ = self.clients(integration_id).targets
            except ConfigurationError as exc:
                problems.append(
                    ConfigProblem(
                        path=self.settings.config_dir,
                        integration_id=integration_id,
                        message=str(exc),
                    )
                )
        return problems

    def webhook_secrets(self, integration_id: str) -> list[str]:
        """The signing secrets accepted for the integration (cached; see ``reload_secrets``)."""
        cached = self._webhook_secrets.get(integration_id)
        if cached is None:
            refs = self.integration(integration_id).healthie.webhook_secrets
            # every enabled version: a retry signed before a rotation still verifies
            cached = [value for ref in refs for value in accepted_values(self.secrets, ref)]
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

    def replace_integrations(
        self, integrations: dict[str, Integration], changed: Iterable[str]
    ) -> list[IntegrationClients]:
        """Swap in reloaded integrations (``app.service.reload``); returns the clients of the
        changed or removed ones, for the caller to close once their work has drained."""
        with self._lock:
            drop = set(changed) | (set(self._clients) - set(integrations))
            retired = [self._clients.pop(i) for i in sorted(drop) if i in self._clients]
            self.integrations = integrations
            loaded = set(integrations)
            self.config_problems = [
                p for p in self.config_problems if p.integration_id not in loaded
            ]
            self._webhook_secrets.clear()
        return retired

    def reload_secrets(self) -> None:
        """Forget cached secrets so the next request reads them again (after a rotation)."""
        self._webhook_secrets.clear()

    def healthie(self, integration_id: str) -> HealthieClient:
        """The integration's Healthie client."""
        return self.clients(integration_id).healthie

    def agent(self, integration_id: str) -> Agent:
        """The integration's agent backend."""
        return self.clients(integration_id).agent

    def connectors(self, integration_id: str) -> dict[str, Connector]:
        """The integration's target connectors, by target name."""
        return self.clients(integration_id).connectors

    def probe_healthie(self, integration_id: str) -> HealthieClient:
        """A fresh client for checks a person waits on (start-up, ``doctor``): one retry and
        the short interactive timeout, so a silent Healthie is reported in seconds. The
        caller closes it; it shares the key's guard (pacing) with the integration's client."""
        return self.build_healthie(self.integration(integration_id), interactive=True)

    def build_healthie(
        self, integration: Integration, *, interactive: bool = False
    ) -> HealthieClient:
        """A Healthie client for ``integration``, paced by its API key's guard."""
        cfg = integration.healthie
        timeout = self.settings.healthie_timeout_seconds
        attempts = self.settings.healthie_max_attempts
        if interactive:
            timeout = min(timeout, self.settings.interactive_timeout_seconds)
            attempts = min(attempts, 2)
        api_key = self.secrets.get(cfg.api_key_secret)
        client = HealthieClient(
            url=cfg.url(),
            integration_id=integration.id,
            api_key=api_key,
            api_version=cfg.api_version,
            shard_id=self.secrets.get(cfg.shard_id_secret) if cfg.shard_id_secret else None,
            http_transport=self.http_transport,
            timeout=timeout,
            max_attempts=attempts,
            batch_size=cfg.batch_size,
            guard=self.guards.for_credential(
                credential_id(api_key), rate=cfg.rate_limit, name="Healthie"
            ),
        )
        if cfg.entry_extra_selection or cfg.entry_exclude_fields:
            from app.healthie.schema_check import live_schema
            from app.healthie.selection import build_entry_fragment

            # checked against the live schema (Healthie's, or the sandbox's subset)
            client.use_entry_fragment(
                build_entry_fragment(
                    live_schema(client), cfg.entry_extra_selection, cfg.entry_exclude_fields
                )
            )
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

    def close(self) -> None:
        """Close every client, connector, the queue and the state store."""
        for clients in self._clients.values():
            clients.close()
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

    return SqliteQueue(
        settings.data_dir / "queue.db", busy_timeout=settings.queue_busy_timeout_seconds
    )


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
    """The secrets backend the settings name (``app.secrets.factory``)."""
    from app.secrets.factory import build_store

    return build_store(
        settings.secrets_backend,
        data_dir=settings.data_dir,
        gcp_project=settings.gcp_project,
        key=settings.secrets_key,
        key_file=settings.secrets_key_file,
    )


def build_runtime(settings: Settings, *, secrets: SecretStore | None = None) -> Runtime:
    """Assemble a runtime from settings and the integration config directory."""
    from app.core.logs import silence_payload_loggers
    from app.queue.topology import ensure_topology_for

    silence_payload_loggers()  # entries must not reach any log, whoever configured logging
    problems: list[ConfigProblem] = []
    # One clinic's broken file is reported, never a reason to stop the others (or the
    # operator commands that would show it).
    integrations = load_integrations(settings.config_dir, problems)
    if problems and not integrations:
        # no other clinic to keep working: the first problem is the command's error
        others = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigurationError(problems[0].message + others)
    queue = build_queue(settings)
    if settings.ensure_topology:  # on Cloud Run the build creates topics and subscriptions
        ensure_topology_for(queue, settings)
    runtime = Runtime(
        settings=settings,
        integrations=integrations,
        secrets=secrets or build_secrets(settings),
        queue=queue,
        state=build_state(settings),
        config_problems=problems,
    )
    try:
        # a bad target is found before any work, and reported with the broken files
        runtime.config_problems.extend(runtime.target_problems())
    except BaseException:
        runtime.close()
        raise
    for problem in runtime.config_problems:
        log.error("integration %s not usable: %s", problem.integration_id or "?", problem.message)
    return runtime
