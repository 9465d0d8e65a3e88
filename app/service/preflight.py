"""Start-up checks for ``healthie-sync serve``: what must hold before the engine takes traffic.

* every secret reference resolves (a missing one is reported, and that integration's other
  checks are skipped);
* every GraphQL operation the engine sends still validates against each integration's live
  Healthie schema, introspected with the pinned API version. An operation that no longer
  validates stops start-up (ConfigurationError): running would dead-letter every patient.
  Healthie being unreachable is only reported: it says nothing about the operations.
"""

from __future__ import annotations

from app.core.errors import ConfigurationError, InvalidResponse, RetriableError
from app.healthie.schema_check import check_operations_against_live_schema
from app.service.runtime import Runtime


def preflight(runtime: Runtime, *, check_schema: bool = True) -> list[str]:
    """Warnings for operators; raises ConfigurationError when the engine must not run."""
    warnings = runtime.check_secrets()
    unconfigured = {w.split(":", 1)[0] for w in warnings}
    if not check_schema:
        return warnings
    for integration_id in sorted(runtime.integrations):
        if integration_id in unconfigured:
            continue
        try:
            check_operations_against_live_schema(runtime.healthie(integration_id))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{integration_id}: {exc}") from exc
        except (RetriableError, InvalidResponse) as exc:
            warnings.append(f"{integration_id}: live schema not checked ({exc.kind}: {exc})")
    return warnings
