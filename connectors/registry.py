"""Explicit registry: connector config name -> class, imported when first asked for (a target's
driver is loaded only by an integration that uses it). Unknown names fail clearly."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from app.core.config import TargetConfig
from app.core.errors import ConfigurationError
from app.resilience.guard import Guard
from connectors.base import Connector, TargetSchema

#: config name -> "module:Class"
CONNECTORS: dict[str, str] = {
    "sqlite": "connectors.sql:SqliteConnector",
    "postgres": "connectors.sql:PostgresConnector",
    "redshift": "connectors.sql:RedshiftConnector",
    "bigquery": "connectors.bigquery:BigQueryConnector",
    "csv": "connectors.files:CsvConnector",
    "jsonl": "connectors.files:JsonLinesConnector",
    "excel": "connectors.files:ExcelConnector",
    "parquet": "connectors.files:ParquetConnector",
    "memory": "connectors.memory:MemoryConnector",
    "mongodb": "connectors.mongodb:MongoConnector",
    "sheets": "connectors.sheets:SheetsConnector",
    "airtable": "connectors.airtable:AirtableConnector",
    "brevo": "connectors.brevo:BrevoConnector",
    "customerio": "connectors.customerio:CustomerIoConnector",
    "stedi": "connectors.stedi:StediConnector",
    "nirvana": "connectors.nirvana:NirvanaConnector",
    "fhir": "connectors.fhir:FhirConnector",
    "hubspot": "connectors.hubspot:HubSpotConnector",
    "stripe": "connectors.stripe:StripeConnector",
    "candid": "connectors.candid:CandidConnector",
    "healthie": "connectors.healthie:HealthieConnector",
}


def load(name: str) -> type[Connector]:
    """The class registered as ``name``, or ConfigurationError listing the known ones."""
    where = CONNECTORS.get(name)
    if where is None:
        raise ConfigurationError(f"unknown connector {name!r}; available: {sorted(CONNECTORS)}")
    module, _, attr = where.partition(":")
    cls: type[Connector] = getattr(importlib.import_module(module), attr)
    return cls


def connector_class(target: TargetConfig) -> type[Connector]:
    """The class a target's config names."""
    try:
        return load(target.connector)
    except ConfigurationError as exc:
        raise ConfigurationError(f"target {target.name!r}: {exc}") from None


def target_options(target: TargetConfig, extra: Mapping[str, Any] | None = None) -> BaseModel:
    """The target's validated options (``extra`` merged over them, e.g. declared tables)."""
    cls = connector_class(target)
    return cls.parse_options(target.name, {**target.options, **(extra or {})})


def target_schema(target: TargetConfig, extra: Mapping[str, Any] | None = None) -> TargetSchema:
    """The target's declarations and validated options (no connection is opened)."""
    return connector_class(target).schema(target.name, target_options(target, extra))


def build_connector(
    target: TargetConfig,
    credentials: Mapping[str, str],
    *,
    staging: bool = False,
    extra: Mapping[str, Any] | None = None,
    guard: Guard | None = None,
) -> Connector:
    """Build the connector a target's config names (its staging copy when ``staging``)."""
    options = target.staging if staging else target.options
    if options is None:
        raise ConfigurationError(
            f"target {target.name!r} declares no staging copy; add [targets.staging] options "
            "(e.g. another path or database) or run the integration live"
        )
    cls = connector_class(target)
    return cls.from_config(target.name, {**options, **(extra or {})}, credentials, guard=guard)


def listing() -> list[dict[str, Any]]:
    """Every connector with its operations (argument schemas) and options (JSON Schema)."""
    out = []
    for name in sorted(CONNECTORS):
        cls = load(name)
        out.append(
            {
                "name": name,
                "description": cls.description,
                "operations": [
                    {
                        "name": spec.name,
                        "description": spec.description,
                        "arguments": spec.args_model.model_json_schema(),
                    }
                    for spec in cls.operations.values()
                ],
                "options": cls.options_model.model_json_schema(),
                "credentials": list(cls.credential_names),
                "modes": list(getattr(cls, "modes", ("upsert",))),
                "max_batch": cls.max_batch,
            }
        )
    return out
