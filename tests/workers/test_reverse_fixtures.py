"""Builders the reverse direction's tests share (no tests here): the example two-way
integration (``config/examples/hubspot-clinic.toml``) pointed at local servers, a runtime
around it, and a HubSpot router that also serves ``contacts/batch/read``.

``WithReverse`` is ``Integration`` with the ``reverse`` field that the reported one-line
hookup adds to ``app.core.config.Integration``; once it is there this subclass changes nothing.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from app.core.config import Integration, _resolve_paths
from app.core.reverse_config import ReverseConfig, check_reverse, resolve_paths
from app.core.settings import Settings
from app.queue.sqlite import SqliteQueue
from app.queue.topology import ensure_topology
from app.secrets.stores import MemorySecretStore
from app.service.runtime import Runtime
from app.state.sqlite import SqliteStateStore
from tests.helpers import REPO
from tests.servers.hubspot import Answer, HubSpotRouter, _batch, _contact, _std

EXAMPLE = REPO / "config" / "examples" / "hubspot-clinic.toml"
CLIENT_SECRET = "hubspot-app-client-secret"
TOKEN = "pat-na1-test-token"


class WithReverse(Integration):
    """``Integration`` with the ``[reverse]`` section (see the module docstring)."""

    reverse: ReverseConfig | None = None


def example_integration(
    *,
    healthie_url: str = "http://healthie.test/graphql",
    hubspot_url: str | None = None,
    **reverse: Any,
) -> WithReverse:
    """The example integration, its Healthie at ``healthie_url`` and HubSpot at
    ``hubspot_url``; ``reverse`` overrides keys of its ``[reverse]`` section."""
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    _resolve_paths(raw, EXAMPLE.parent)
    resolve_paths(raw, EXAMPLE.parent)
    raw["healthie"].update(environment="local", api_url=healthie_url)
    for target in raw["targets"]:
        if target["connector"] == "hubspot" and hubspot_url:
            target["options"] = {**target["options"], "api_url": hubspot_url}
    raw["reverse"].update(reverse)
    integration = WithReverse.model_validate(raw)
    check_reverse(integration)
    return integration


def example_runtime(
    tmp_path: Path, integration: Integration, *, api_key: str = "key", client_secret: bool = True
) -> Runtime:
    """A runtime for ``integration`` on in-memory SQLite queue and state, its secrets in
    memory (the HubSpot client secret only when ``client_secret``)."""
    queue = SqliteQueue(":memory:")
    ensure_topology(queue)
    reverse = getattr(integration, "reverse", None)
    secrets = {
        integration.healthie.api_key_secret: api_key,
        integration.healthie.webhook_secrets[0]: "whsec_test",
        **{ref: TOKEN for t in integration.targets for ref in t.credentials.values()},
    }
    if reverse is not None and client_secret:
        secrets[reverse.client_secret] = CLIENT_SECRET
    return Runtime(
        settings=Settings(data_dir=tmp_path),
        integrations={integration.id: integration},
        secrets=MemorySecretStore(secrets),
        queue=queue,
        state=SqliteStateStore(":memory:"),
    )


READ = ("POST", "/crm/v3/objects/contacts/batch/read")


class ReadingRouter(HubSpotRouter):
    """``tests.servers.hubspot.HubSpotRouter`` that also answers ``contacts/batch/read`` from
    its table (by HubSpot id, or by ``idProperty``), after Prism validated the request. The
    router itself lacks this route; the change it needs is in the final report."""

    def _answer(
        self, method: str, path: str, headers: dict[str, str], raw: bytes, body: Any
    ) -> Answer:
        status, payload, out = super()._answer(method, path, headers, raw, body)
        if (method, path) == READ and status == 404 and payload.get("category") == "NOT_FOUND":
            return self._read(body)
        return status, payload, out

    def _read(self, body: dict[str, Any]) -> Answer:
        idp = body.get("idProperty")
        wanted = body.get("properties") or ["email", "firstname", "lastname"]
        results, errors = [], []
        for item in body["inputs"]:
            if idp is None:
                cid = item["id"] if item["id"] in self.records else None
            else:
                cid = next((c for c, p in self.records.items() if p.get(idp) == item["id"]), None)
            if cid is None:
                errors.append(_std("OBJECT_NOT_FOUND", "no such contact", ids=[item["id"]]))
                continue
            props = self.records[cid]
            results.append(_contact(cid, {k: v for k, v in props.items() if k in wanted}))
        return (207 if errors else 200), _batch(results, errors), {}
