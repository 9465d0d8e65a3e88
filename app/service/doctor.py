"""``healthie-sync doctor``: the offline checks of ``validate``, then every service an
integration depends on, each asked one harmless question.

::

    check              question asked                                 fails with the fix
    ─────              ──────────────                                 ──────────────────
    configuration      app.service.validate (offline)                 the findings
    secrets            every secret reference resolves                which reference
    healthie           DoctorProbe: currentUser, one patient id,      URL, API version, key
                       with the pinned API version, short timeout
    schema             every operation validates on the live schema   which operation
    webhooks           registration matches the needed events and     `webhooks sync`
                       is enabled (only with --url: the public URL)
    target <name>      the connector's probe (SELECT 1, HeadBucket,   the target's error
                       datasets.get, a directory check)
    anthropic          models.list with the key (claude backend)      the key's secret

Every check is one :class:`Check`; a check that cannot run because an earlier one failed is
reported as skipped with the reason, never silently dropped. Nothing is written anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from app.core.errors import ConfigurationError, HealthieSyncError
from app.service.runtime import Runtime

Verdict = Literal["ok", "fail", "warn", "skip"]


@dataclass(frozen=True)
class Check:
    """One doctor line: what was checked, the verdict, what was seen and what to do."""

    name: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready."""
        return asdict(self)


def _attempt(name: str, run: Callable[[], str], fix: str) -> Check:
    try:
        return Check(name, "ok", run())
    except HealthieSyncError as exc:
        return Check(name, "fail", f"{exc.kind}: {exc}", fix)


def _configuration(runtime: Runtime, integration_id: str) -> Iterator[Check]:
    from app.service.validate import validate

    findings = validate(runtime.settings, [integration_id], secrets=runtime.secrets)
    errors = [f for f in findings if f.severity == "error"]
    for finding in findings:
        verdict: Verdict = "fail" if finding.severity == "error" else "warn"
        yield Check("configuration", verdict, f"{finding.problem} ({finding.where})", finding.hint)
    if not errors:
        yield Check("configuration", "ok", "config, plan and targets validate offline")


def _secrets(runtime: Runtime, integration_id: str) -> Check:
    prefix = f"{integration_id}:"
    missing = [
        w.removeprefix(prefix).strip() for w in runtime.check_secrets() if w.startswith(prefix)
    ]
    if missing:
        return Check(
            "secrets",
            "fail",
            "; ".join(missing),
            f"store each missing reference with the {runtime.settings.secrets_backend} "
            "secrets backend",
        )
    return Check("secrets", "ok", "every secret reference resolves")


def _healthie(runtime: Runtime, integration_id: str) -> Iterator[Check]:
    from gql import gql

    from app.healthie import operations
    from app.healthie.schema_check import check_operations_against_live_schema

    client = runtime.probe_healthie(integration_id)
    try:
        where = f"{client.url}, API version {client.api_version}"

        def probe() -> str:
            data = client.execute(gql(operations.load("doctor_probe")), {})
            user = (data.get("currentUser") or {}).get("id")
            if not user:
                raise ConfigurationError("the API key belongs to no user")
            patients = ((data.get("users") or {}).get("nodes")) or []
            seen = "can list patients" if patients else "sees no patients (an empty organization?)"
            return f"{where}: key of user {user}, {seen}"

        check = _attempt(
            "healthie",
            probe,
            f"check the URL and network ({where}), the API key's secret and its user's access",
        )
        yield check
        for warning in sorted(client.warnings_seen):  # e.g. the pinned version's sunset
            yield Check(
                "healthie api version",
                "warn",
                f"Healthie warns: {warning}",
                "move healthie.api_version to a supported version",
            )
        if check.verdict != "ok":
            yield Check("schema", "skip", "Healthie did not answer the probe")
            return

        def schema() -> str:
            check_operations_against_live_schema(client)
            return "every operation the engine sends validates against the live schema"

        yield _attempt(
            "schema",
            schema,
            "the pinned API version changed under the engine: see the failing operation",
        )
    finally:
        client.close()


def _webhooks(runtime: Runtime, integration_id: str, url: str | None) -> Check:
    if not url:
        return Check(
            "webhooks", "skip", "not checked", "pass --url with the engine's public base URL"
        )
    from app.healthie.registration import webhook_status

    client = runtime.probe_healthie(integration_id)
    try:

        def status() -> str:
            found = webhook_status(
                client,
                runtime.integration(integration_id),
                url,
                accepted_secrets=runtime.webhook_secrets(integration_id),
            )
            if not found.plan.in_sync:
                steps = "; ".join(str(s) for s in found.plan.steps)
                raise ConfigurationError(f"registration drifted: {steps}")
            return "registered for every needed event, enabled"

        return _attempt(
            "webhooks", status, f"healthie-sync webhooks sync {integration_id} --url {url}"
        )
    finally:
        client.close()


def _targets(runtime: Runtime, integration_id: str) -> Iterator[Check]:
    try:
        connectors = runtime.connectors(integration_id)
    except HealthieSyncError as exc:
        yield Check("targets", "fail", f"{exc.kind}: {exc}", "fix the target's config or secret")
        return
    for name, connector in sorted(connectors.items()):
        label = f"target {name} ({connector.kind})"
        try:
            seen = connector.probe()
        except HealthieSyncError as exc:
            yield Check(label, "fail", f"{exc.kind}: {exc}", "fix the target's options or secret")
            continue
        if seen is None:
            yield Check(label, "skip", "this connector offers no harmless read")
        else:
            yield Check(label, "ok", seen)


def _anthropic(runtime: Runtime, integration_id: str) -> Check | None:
    if runtime.integration(integration_id).agent.backend != "claude":
        return None
    import anthropic

    def models() -> str:
        try:
            page = runtime.anthropic_client().models.list(limit=1)
        except anthropic.AuthenticationError as exc:
            raise ConfigurationError("Anthropic refused the API key (HTTP 401)") from exc
        except anthropic.APIStatusError as exc:
            raise ConfigurationError(f"Anthropic answered HTTP {exc.status_code}") from exc
        except anthropic.APIConnectionError as exc:
            raise ConfigurationError(f"Anthropic unreachable ({type(exc).__name__})") from exc
        return f"the API key works ({len(page.data)} model listed)"

    return _attempt("anthropic", models, "check HEALTHIE_SYNC_ANTHROPIC_API_KEY_SECRET's secret")


def doctor(runtime: Runtime, integration_id: str, *, url: str | None = None) -> list[Check]:
    """Every check for ``integration_id`` (see the module docstring), in order."""
    runtime.integration(integration_id)  # an unknown name is a usage error, raised
    checks = [
        Check("configuration", "fail", p.message, "fix the file; the others keep working")
        for p in runtime.config_problems
        if p.integration_id in (integration_id, None)
    ]
    checks += list(_configuration(runtime, integration_id))
    secrets = _secrets(runtime, integration_id)
    checks.append(secrets)
    if secrets.verdict != "ok":
        checks.append(Check("healthie", "skip", "secrets missing"))
        return checks
    checks.extend(_healthie(runtime, integration_id))
    checks.append(_webhooks(runtime, integration_id, url))
    checks.extend(_targets(runtime, integration_id))
    anthropic_check = _anthropic(runtime, integration_id)
    if anthropic_check is not None:
        checks.append(anthropic_check)
    return checks


def summary(checks: list[Check]) -> dict[str, Any]:
    """Counts by verdict."""
    out: dict[str, Any] = {"ok": 0, "fail": 0, "warn": 0, "skip": 0}
    for check in checks:
        out[check.verdict] += 1
    return out
