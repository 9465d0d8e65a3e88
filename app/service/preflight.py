"""Start-up checks for ``healthie-sync serve``: what must hold before the engine takes traffic.

* everything ``healthie-sync validate`` checks offline (``app.service.validate``: config,
  plan paths against the entry selection, transforms, targets, secret references) holds for
  the integrations the runtime loaded; any error stops start-up with a ConfigurationError
  listing every finding, one line each (warnings are returned for the log);
* every GraphQL operation the engine sends still validates against each integration's live
  Healthie schema, introspected with the pinned API version, and the plan's paths, typed
  against that schema, read what they mean to (no field of a list, no index of an object).
  Either failing stops start-up: running would dead-letter every patient or write nulls.
  Healthie being unreachable is only reported: it says nothing about the operations.
"""

from __future__ import annotations

from pathlib import Path

from graphql import GraphQLSchema

from app.core.errors import ConfigurationError, InvalidResponse, RetriableError
from app.healthie.schema_check import check_operations_against_live_schema
from app.service.runtime import Runtime
from app.service.validate import Finding, check_integration, read_sources
from app.service.validate_config import Source


def preflight(runtime: Runtime, *, check_schema: bool = True) -> list[str]:
    """Warnings for operators; raises ConfigurationError when the engine must not run."""
    sources = _sources(runtime.settings.config_dir)
    findings: list[Finding] = []
    for integration_id in sorted(runtime.integrations):
        findings += _check(runtime, integration_id, sources.get(integration_id))
    _refuse(findings)
    warnings = [_text(f) for f in findings if f.severity == "warning"]
    from app.healthie.versions import version_notice

    for integration_id in sorted(runtime.integrations):
        # a pinned version that is deprecated or near its sunset (Healthie's published table)
        notice = version_notice(runtime.integrations[integration_id].healthie.api_version)
        if notice:
            warnings.append(f"{integration_id}: {notice}")
    if not check_schema:
        return warnings
    for integration_id in sorted(runtime.integrations):
        # the short interactive timeout and one retry: a Healthie that accepts connections and
        # never answers is a warning within seconds, not a start-up that never listens
        client = runtime.probe_healthie(integration_id)
        try:
            live = check_operations_against_live_schema(client)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{integration_id}: {exc}") from exc
        except (RetriableError, InvalidResponse) as exc:
            warnings.append(f"{integration_id}: live schema not checked ({exc.kind}: {exc})")
            continue
        finally:
            client.close()
        _refuse(_check(runtime, integration_id, sources.get(integration_id), live))
    return warnings


def _check(
    runtime: Runtime,
    integration_id: str,
    source: Source | None,
    schema: GraphQLSchema | None = None,
) -> list[Finding]:
    return check_integration(
        runtime.integrations[integration_id],
        secrets=runtime.secrets,
        schema=schema,
        source=source,
        anthropic_secret=runtime.settings.anthropic_api_key_secret,
    )


def _sources(directory: Path) -> dict[str, Source]:
    # Only to place findings at file:line; the checks run on the integrations as loaded.
    if not directory.is_dir():
        return {}
    return {s.id: s for s in read_sources(directory)}


def _text(finding: Finding) -> str:
    where = f" ({finding.where})" if finding.where else ""
    return f"{finding.integration}: {finding.problem}{where}"


def _refuse(findings: list[Finding]) -> None:
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        lines = "\n".join(f"  {_text(f)}" for f in errors)
        raise ConfigurationError(
            f"serve refused to start: {len(errors)} configuration error(s) "
            f"(healthie-sync validate shows each with a hint):\n{lines}"
        )
