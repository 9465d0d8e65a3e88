"""Professional claims (837P as JSON) only from complete data: the plan's claim is validated
against Stedi's own request schema before anything is sent.

::

    SubmitClaim.claim (the plan's output)
      ─▶ ClaimContract.problems()   ClaimsSubmissionRequestContent of Stedi's published
                                    OpenAPI file (``options.claim_contract``), OpenAPI 3.1 /
                                    JSON Schema 2020-12 (openapi-schema-validator)
      any problem                   PlanValidationError naming every field path, e.g.
                                    ``claim.claimInformation.serviceLines[0]
                                    .professionalService.procedureCode: required``: this
                                    patient's work fails, no request is made
      else                          POST /change/medicalnetwork/professionalclaims/v3/submission
                                    with ``Idempotency-Key`` = digest of (integration,
                                    patient, key): a retry inside 24 hours cannot file a
                                    second claim

Why the published file and not a hand-written model: a model copied by hand drifts from the
contract; Stedi's file is the contract. It is loaded when the first claim is validated (never
at import) and cached per path. Without ``claim_contract`` the operation refuses with a
ConfigurationError: an unvalidated claim is never sent.

Messages name field paths and JSON Schema keywords only, never the offending value (a claim
is all patient data): ``jsonschema``'s own messages quote the instance, so they are not used.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import ConfigurationError, PlanValidationError

CLAIM_SCHEMA = "ClaimsSubmissionRequestContent"
MAX_PROBLEMS = 12


class SubmitClaim(BaseModel):
    """Submit a professional claim (837P) for the Healthie object ``key`` (a billing item or
    an appointment); ``claim`` is Stedi's ClaimsSubmissionRequestContent, complete."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=64)
    key: str = Field(min_length=1, max_length=128)
    claim: dict[str, Any]


def idempotency_key(integration_id: str, patient_id: str, key: str) -> str:
    """The claim's Idempotency-Key (at most 255 characters: 64 hex digits)."""
    who = "\x1f".join(("healthie-sync", integration_id, patient_id, key))
    return hashlib.sha256(who.encode()).hexdigest()


class ClaimContract:
    """The claim request schema of one Stedi OpenAPI file, ready to validate claims."""

    _cache: dict[str, ClaimContract] = {}
    _lock = threading.Lock()

    def __init__(self, spec: Mapping[str, Any]) -> None:
        from jsonschema.exceptions import ValidationError  # noqa: F401 - fail early if absent
        from openapi_schema_validator import OAS31Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        if CLAIM_SCHEMA not in spec.get("components", {}).get("schemas", {}):
            raise ConfigurationError(
                f"the Stedi OpenAPI file has no components.schemas.{CLAIM_SCHEMA}"
            )
        resource = Resource.from_contents(dict(spec), default_specification=DRAFT202012)
        registry: Registry[Any] = Registry().with_resource("urn:stedi-healthcare", resource)
        self._validator = OAS31Validator(
            {"$ref": f"urn:stedi-healthcare#/components/schemas/{CLAIM_SCHEMA}"},
            registry=registry,
        )

    @classmethod
    def load(cls, path: str) -> ClaimContract:
        """The contract of the OpenAPI file at ``path`` (read once per process)."""
        with cls._lock:
            found = cls._cache.get(path)
            if found is None:
                try:
                    spec = json.loads(Path(path).read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise ConfigurationError(
                        f"claim_contract {path!r} is not a readable JSON OpenAPI file "
                        f"({type(exc).__name__})"
                    ) from None
                found = cls._cache[path] = cls(spec)
            return found

    def problems(self, claim: Mapping[str, Any]) -> list[str]:
        """Every way ``claim`` breaks the schema, as ``path: keyword`` lines (no values)."""
        found = sorted({line for error in self._errors(claim) for line in _describe(error)})
        return found[:MAX_PROBLEMS]

    def _errors(self, claim: Mapping[str, Any]) -> Iterator[Any]:
        yield from self._validator.iter_errors(dict(claim))

    def check(self, operation: str, claim: Mapping[str, Any]) -> None:
        """PlanValidationError naming every problem's field path, or nothing."""
        problems = self.problems(claim)
        if problems:
            raise PlanValidationError(
                f"stedi.{operation}: the claim is incomplete or invalid, not sent: "
                + "; ".join(problems)
            )


def _path(parts: Any) -> str:
    out = "claim"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _describe(error: Any) -> list[str]:
    """``path: keyword`` for one jsonschema error; a missing property names itself (its name
    comes from the schema, not from the claim)."""
    where = _path(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, Mapping):
        missing = [n for n in error.validator_value if n not in error.instance]
        return [f"{where}.{name}: required" for name in missing]
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        declared = set((error.schema or {}).get("properties") or {})
        return [f"{where}.{n}: not in the schema" for n in error.instance if n not in declared]
    return [f"{where}: {error.validator}"]
