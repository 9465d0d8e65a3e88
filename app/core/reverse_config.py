"""The ``[reverse]`` section of an integration: HubSpot back into Healthie.

::

    [reverse]
    source = "crm"                 # the integration's hubspot target (its api_url, token and
                                   #   id_property are the reverse direction's too)
    target = "ehr"                 # the integration's healthie target the reverse plan writes
    backend = "plan"
    instructions = "../../prompts/examples/hubspot-clinic.md"
    plan = "../../prompts/plans/hubspot-clinic.reverse.plan.json"
    client_secret = "hubspot-clinic/hubspot-client-secret"   # secret reference: the app's
                                                             #   client secret (signs webhooks)
    webhook_url = "https://sync.example.com/webhooks/hubspot/hubspot-clinic"
    properties = ["email", "phone", "firstname", "lastname"]
    conflict = { email = "healthie", phone = "hubspot" }
    default_conflict = "healthie"

``properties`` are the contact properties the reverse rules read (the ``batch/read``
request asks for them and the id property). ``conflict`` says, per property, which side wins
when both changed since the engine last synchronised it; properties it does not name take
``default_conflict``. ``webhook_url`` is the exact URL registered in the HubSpot app (what
HubSpot signs); without it the URL the request arrived at is used, which is right only when
nothing (a load balancer, a proxy) rewrites scheme, host or path.

The section is hooked into ``app.core.config.Integration`` as ``reverse: ReverseConfig | None``
(paths resolved relative to the file like the agent's); :func:`reverse_of` reads it and
:func:`check_reverse` makes the checks that need the integration's targets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import ConfigurationError

Side = Literal["healthie", "hubspot"]
PROPERTY = r"^[a-z][a-z0-9_]{0,99}$"


class ReverseConfig(BaseModel):
    """HubSpot -> Healthie for one integration (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    target: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    backend: Literal["plan", "claude"] = "plan"
    instructions: Path
    plan: Path | None = None
    client_secret: str = Field(min_length=1)
    webhook_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    properties: list[str] = Field(min_length=1, max_length=200)
    conflict: dict[str, Side] = Field(default_factory=dict)
    default_conflict: Side = "healthie"
    #: contacts per batch/read request (HubSpot's batch limit is 100)
    batch_size: int = Field(default=100, ge=1, le=100)

    def winner(self, prop: str) -> Side:
        """Which side wins ``prop`` when both changed it."""
        return self.conflict.get(prop, self.default_conflict)


def reverse_of(integration: Any) -> ReverseConfig | None:
    """The integration's ``[reverse]`` section, or None (no reverse direction)."""
    found = getattr(integration, "reverse", None)
    return found if isinstance(found, ReverseConfig) else None


def check_reverse(integration: Any) -> ReverseConfig | None:
    """The section checked against the integration: ``source`` a hubspot target, ``target``
    a healthie target, ``properties`` and ``conflict`` well-formed, the compiled plan loadable.
    ConfigurationError naming the problem; None when there is no section."""
    reverse = reverse_of(integration)
    if reverse is None:
        return None
    where = f"integration {integration.id!r} [reverse]"
    kinds = {t.name: t.connector for t in integration.targets}
    if kinds.get(reverse.source) != "hubspot":
        raise ConfigurationError(f"{where}: source {reverse.source!r} is not a hubspot target")
    if kinds.get(reverse.target) != "healthie":
        raise ConfigurationError(f"{where}: target {reverse.target!r} is not a healthie target")
    bad = [p for p in [*reverse.properties, *reverse.conflict] if not re.fullmatch(PROPERTY, p)]
    if bad:
        raise ConfigurationError(f"{where}: property names must match {PROPERTY}: {bad}")
    unread = sorted(set(reverse.conflict) - set(reverse.properties))
    if unread:
        raise ConfigurationError(f"{where}: conflict names properties not read: {unread}")
    if not reverse.instructions.is_file():
        raise ConfigurationError(f"{where}: instructions {reverse.instructions} missing")
    if reverse.backend == "claude":
        raise ConfigurationError(
            f"{where}: backend 'claude' is not built for the reverse direction yet; "
            "compile the instructions into a plan and set backend = 'plan'"
        )
    if reverse.plan is None or not reverse.plan.is_file():
        raise ConfigurationError(f"{where}: backend 'plan' needs an existing plan file")
    from app.agent.plan import PlanAgent

    agent = PlanAgent.from_file(reverse.plan)
    wrong = sorted({s.target for s in agent.plan.operations} - {reverse.target})
    if wrong:
        raise ConfigurationError(f"{where}: the plan writes to {wrong}, not only {reverse.target}")
    return reverse


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the section's paths absolute, relative to the file's directory ``base`` (what
    ``app.core.config._resolve_paths`` does for ``[agent]``)."""
    section = raw.get("reverse")
    if isinstance(section, dict):
        for key in ("instructions", "plan"):
            if isinstance(section.get(key), str):
                section[key] = str((base / section[key]).resolve())
