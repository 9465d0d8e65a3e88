"""``healthie-sync validate``: everything that can be checked without Healthie or a target,
as a list of :class:`Finding` (``serve``'s start-up and ``doctor`` build on it).

Per integration file (``app.service.validate_config``): TOML syntax, the config model, unknown
keys with did-you-mean, cadences, instruction and plan files. Per valid integration:

* the entry selection: ``entry_exclude_fields`` name selected fields, ``entry_extra_selection``
  parses (and, given a schema, validates: ``selection.build_entry_fragment``);
* the compiled plan (``app.service.validate_plan``): JSON, model, steps, transforms, and every
  JMESPath path against the entry selection (``app.agent.plan_paths``);
* each target: a registered connector (did-you-mean), options and staging options valid for
  it with the tables the plan writes, the credentials it needs named; built the way the
  runtime builds it, without connecting;
* every secret reference resolves through the secrets interface (values are never printed).

**Schema.** The engine carries no copy of Healthie's schema: the selection itself
(``app/healthie/operations/entry.graphql``) says which fields an entry has, so misspelt fields
are caught without one. Passing ``schema`` (Healthie's SDL, e.g. ``../shared/healthie/
schema.graphql``, or the live one ``serve`` introspects) also types each field, catching a
field read on a list or an index on an object; without it a note says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from graphql import GraphQLError, GraphQLSchema
from pydantic import ValidationError

from app.agent.plan_paths import Obj
from app.core.config import Integration, TargetConfig
from app.core.errors import ConfigurationError
from app.core.settings import Settings
from app.secrets.stores import EnvSecretStore, SecretStore, env_name
from app.service.validate_config import (
    Source,
    close_hint,
    dotted,
    misspelt_once,
    model_at,
    read_source,
)
from app.service.validate_entry import entry_shape
from app.service.validate_plan import check_plan, read_plan
from app.service.validate_sources import Finding, Loc, Severity, display_path
from connectors.base import Connector

__all__ = ["Finding", "check_integration", "has_errors", "read_sources", "validate"]


def validate(
    settings: Settings,
    integrations: Sequence[str] | None = None,
    *,
    secrets: SecretStore | None = None,
    schema: GraphQLSchema | None = None,
) -> list[Finding]:
    """Check every integration in ``settings.config_dir`` (or only those named, by id or file
    stem) offline; the findings, errors first within each integration. A name no file has is
    a ConfigurationError (a usage error, not a finding). ``secrets`` defaults to the backend
    the settings name."""
    directory = settings.config_dir
    if not directory.is_dir():
        return [
            Finding(
                "*",
                display_path(directory),
                "the integration config directory does not exist",
                "pass --config-dir or set HEALTHIE_SYNC_CONFIG_DIR",
            )
        ]
    sources = read_sources(directory)
    if not sources:
        return [
            Finding(
                "*",
                display_path(directory),
                "no integration files (*.toml) in the config directory",
                "add one, e.g. config/integrations/demo-clinic.toml",
            )
        ]
    chosen = _select(sources, integrations)
    if secrets is None:
        from app.service.runtime import build_secrets

        secrets = build_secrets(settings)
    findings: list[Finding] = []
    seen: dict[str, Source] = {}
    for source in chosen:
        findings += source.findings
        if source.integration is None:
            continue
        first = seen.setdefault(source.id, source)
        if first is not source:
            findings.append(
                Finding(
                    source.id,
                    source.at(("id",)),
                    f"integration id {source.id!r} is also used by {display_path(first.path)}",
                    "ids must be unique: rename one",
                )
            )
            continue
        findings += check_integration(
            source.integration,
            secrets=secrets,
            schema=schema,
            source=source,
            anthropic_secret=settings.anthropic_api_key_secret,
        )
    return findings


def has_errors(findings: Iterable[Finding]) -> bool:
    """Whether any finding is an error (warnings and notes do not fail)."""
    return any(f.severity == "error" for f in findings)


def read_sources(directory: Any) -> list[Source]:
    """Every ``*.toml`` integration file in ``directory``, read and checked on its own."""
    return [read_source(path) for path in sorted(directory.glob("*.toml"))]


def _select(sources: list[Source], names: Sequence[str] | None) -> list[Source]:
    if not names:
        return sources
    known = {s.id: s for s in sources} | {s.path.stem: s for s in sources}
    unknown = [n for n in names if n not in known]
    if unknown:
        ids = sorted({s.id for s in sources})
        hint = close_hint(unknown[0], ids, "integrations")
        raise ConfigurationError(f"unknown integration {unknown[0]!r}: {hint}")
    chosen: list[Source] = []
    for name in names:
        if known[name] not in chosen:
            chosen.append(known[name])
    return chosen


def check_integration(
    integration: Integration,
    *,
    secrets: SecretStore,
    schema: GraphQLSchema | None = None,
    source: Source | None = None,
    anthropic_secret: str | None = None,
) -> list[Finding]:
    """The checks of one loaded integration (everything after its file parsed). ``source``
    places findings at their lines; without it they name the integration only."""
    report = _Report(integration.id, source)
    classes = _connector_classes(integration, report)
    entry = _entry(integration, schema, report)
    plan_tables: dict[str, dict[str, dict[str, str]]] = {}
    agent = integration.agent
    if agent.backend == "plan" and agent.plan is not None and agent.plan.is_file():
        plan, check = read_plan(integration, agent.plan)
        if plan is not None and entry is not None:
            check_plan(plan, check, integration, entry, classes)
        report.findings += check.findings
        if plan is not None:
            plan_tables = _plan_tables(integration, report, bool(check.findings))
        if schema is None and plan is not None:
            report.add(
                (),
                "plan paths were checked against the entry selection, not typed: no GraphQL "
                "schema given, so a field read on a list or an index on an object is not caught",
                "pass --schema with Healthie's schema (SDL) to type them",
                severity="info",
            )
    declared = _declared(integration, classes, plan_tables, report)
    for index, target in enumerate(integration.targets):
        cls = classes.get(target.name)
        if cls is not None:
            _target(index, target, cls, declared.get(target.name), report)
    _secrets(integration, secrets, anthropic_secret, report)
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(report.findings, key=lambda f: order[f.severity])


class _Report:
    def __init__(self, integration: str, source: Source | None) -> None:
        self.integration = integration
        self.source = source
        self.findings: list[Finding] = []

    def add(self, loc: Loc, problem: str, hint: str = "", severity: Severity = "error") -> None:
        at = self.source.at(loc) if self.source is not None else ""
        self.findings.append(Finding(self.integration, at, problem, hint, severity))


def _connector_classes(
    integration: Integration, report: _Report
) -> dict[str, type[Connector] | None]:
    from connectors.registry import CONNECTORS, load

    classes: dict[str, type[Connector] | None] = {}
    for index, target in enumerate(integration.targets):
        classes[target.name] = None
        loc = ("targets", index, "connector")
        if target.connector not in CONNECTORS:
            hint = close_hint(target.connector, list(CONNECTORS), "connectors")
            report.add(
                loc,
                f"target {target.name!r}: unknown connector {target.connector!r}",
                f"{hint} (healthie-sync connectors lists them)",
            )
            continue
        try:
            classes[target.name] = load(target.connector)
        except ImportError as exc:  # its driver is not installed
            report.add(
                loc,
                f"target {target.name!r}: connector {target.connector!r} cannot be loaded "
                f"(missing module {exc.name})",
                "install the project's pinned requirements (requirements.lock)",
            )
    return classes


def _entry(integration: Integration, schema: GraphQLSchema | None, report: _Report) -> Obj | None:
    cfg = integration.healthie
    selected = entry_shape(schema).fields
    excluded = list(cfg.entry_exclude_fields)
    for name in excluded:
        if name == "id":
            report.add(("healthie", "entry_exclude_fields"), "entry_exclude_fields cannot drop id")
        elif name not in selected:
            report.add(
                ("healthie", "entry_exclude_fields"),
                f"entry_exclude_fields names {name!r}, which the entry does not select",
                close_hint(name, list(selected), "fields"),
            )
    try:
        shape = entry_shape(
            schema, extra_selection=cfg.entry_extra_selection, exclude_fields=excluded
        )
    except GraphQLError as exc:
        report.add(
            ("healthie", "entry_extra_selection"),
            f"entry_extra_selection does not parse: {exc.message}",
            'GraphQL selection text, e.g. "gender_identity emergency_contacts { id name }"',
        )
        return None
    if schema is not None and cfg.entry_extra_selection:
        from app.healthie.selection import build_entry_fragment

        try:
            build_entry_fragment(schema, cfg.entry_extra_selection, excluded)
        except ConfigurationError as exc:
            report.add(("healthie", "entry_extra_selection"), str(exc))
    return shape


def _plan_tables(
    integration: Integration, report: _Report, reported: bool
) -> dict[str, dict[str, dict[str, str]]]:
    """What the plan writes, read by the agent itself (so any refusal of its own is seen)."""
    from app.agent.plan import PlanAgent

    assert integration.agent.plan is not None
    try:
        agent = PlanAgent.from_file(integration.agent.plan)
    except ConfigurationError as exc:
        if not reported:  # a refusal the plan checks above did not foresee
            report.add(("agent", "plan"), str(exc))
        return {}
    return agent.declared_tables()


def _declared(
    integration: Integration,
    classes: Mapping[str, type[Connector] | None],
    derived: Mapping[str, dict[str, dict[str, str]]],
    report: _Report,
) -> dict[str, dict[str, Any]]:
    # What IntegrationClients.declarations() merges: options.tables over the plan's tables.
    from connectors.tables import TableConnector

    out: dict[str, dict[str, Any]] = {}
    for index, target in enumerate(integration.targets):
        cls = classes.get(target.name)
        if cls is None or not issubclass(cls, TableConnector):
            continue
        own = target.options.get("tables")
        if own is None and target.name not in derived:
            if integration.agent.backend == "claude":
                report.add(
                    ("targets", index, "options"),
                    f"target {target.name!r}: the claude backend writes only declared tables",
                    "declare them in [targets.options.tables] (table -> column -> type)",
                )
            continue
        tables = {k: dict(v) for k, v in derived.get(target.name, {}).items()}
        if isinstance(own, dict):
            for table, columns in own.items():
                if isinstance(columns, dict):
                    tables[table] = {**tables.get(table, {}), **columns}
        out[target.name] = {"tables": tables}
    return out


def _target(
    index: int,
    target: TargetConfig,
    cls: type[Connector],
    extra: Mapping[str, Any] | None,
    report: _Report,
) -> None:
    label = f"target {target.name!r} ({cls.kind})"
    for key, options in (("options", target.options), ("staging", target.staging)):
        if options is None:
            continue
        try:
            parsed = cls.options_model.model_validate({**options, **(extra or {})})
        except ValidationError as exc:
            for error in misspelt_once(exc.errors(include_input=False)):
                loc = tuple(error["loc"])
                at: Loc = ("targets", index, key, *loc)
                if error["type"] == "extra_forbidden":
                    model = model_at(cls.options_model, loc[:-1])
                    known = list(model.model_fields) if model is not None else []
                    hint = close_hint(str(loc[-1]), known, "options")
                    report.add(at, f"{label}: unknown option {key}.{dotted(loc)}", hint)
                else:
                    report.add(at, f"{label}: {key}.{dotted(loc)}: {error['msg']}")
            continue
        if key != "options":
            continue
        missing = [c for c in cls.required_credentials(parsed) if c not in target.credentials]
        for name in missing:
            report.add(
                ("targets", index),
                f"{label} needs the credential {name!r}",
                f'add credentials = {{ {name} = "<secret reference>" }} to the target',
            )
    for name in target.credentials:
        if name not in cls.credential_names:
            report.add(
                ("targets", index, "credentials", name),
                f"{label} takes no credential {name!r} (it is ignored)",
                close_hint(name, list(cls.credential_names), "credentials"),
                severity="warning",
            )


def _secrets(
    integration: Integration,
    secrets: SecretStore,
    anthropic_secret: str | None,
    report: _Report,
) -> None:
    cfg = integration.healthie
    refs: list[tuple[Loc, str]] = [(("healthie", "api_key_secret"), cfg.api_key_secret)]
    refs += [(("healthie", "webhook_secrets", i), r) for i, r in enumerate(cfg.webhook_secrets)]
    if cfg.shard_id_secret:
        refs.append((("healthie", "shard_id_secret"), cfg.shard_id_secret))
    for index, target in enumerate(integration.targets):
        refs += [(("targets", index, "credentials", k), r) for k, r in target.credentials.items()]
    reverse = getattr(integration, "reverse", None)
    if reverse is not None and getattr(reverse, "client_secret", None):
        refs.append((("reverse", "client_secret"), reverse.client_secret))
    for loc, ref in refs:
        problem = _resolve(secrets, ref)
        if problem:
            report.add(loc, problem, _secret_hint(secrets, ref))
    if integration.agent.backend != "claude":
        return
    if not anthropic_secret:
        report.findings.append(
            Finding(
                integration.id,
                "HEALTHIE_SYNC_ANTHROPIC_API_KEY_SECRET",
                "the claude backend needs the Anthropic API key's secret reference",
                "set HEALTHIE_SYNC_ANTHROPIC_API_KEY_SECRET to a reference, e.g. anthropic/api-key",
            )
        )
        return
    problem = _resolve(secrets, anthropic_secret)
    if problem:
        report.findings.append(
            Finding(
                integration.id,
                "HEALTHIE_SYNC_ANTHROPIC_API_KEY_SECRET",
                problem,
                _secret_hint(secrets, anthropic_secret),
            )
        )


def _resolve(secrets: SecretStore, ref: str) -> str:
    """The problem resolving ``ref`` (empty when it resolves); the value is dropped at once."""
    try:
        secrets.get(ref)
    except ConfigurationError as exc:
        return str(exc)
    return ""


def _secret_hint(secrets: SecretStore, ref: str) -> str:
    if isinstance(secrets, EnvSecretStore):
        return f"export {env_name(ref)}=... (the secret's value)"
    return f"store it: healthie-sync secrets set {ref} (value on standard input)"
