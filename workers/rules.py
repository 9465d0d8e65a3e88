"""The version of an integration's rules: what decides its writes, as one short digest.

A replay uses it to tell whether the stored plan of a dead letter was decided by the rules that
are in force now (``workers.replay``): the instruction document, the compiled plan's content,
the agent backend and its model. Any change to one of them, even a reformatting, is a new
version, so a replay after a fix decides again instead of re-executing the plan that failed.
The consumer stamps the version on every dead letter it writes (``workers.deadletters``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from app.core.config import Integration
from app.core.errors import ConfigurationError


def _file_digest(path: Path | None, what: str, integration_id: str) -> str:
    if path is None:
        return ""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigurationError(
            f"integration {integration_id!r}: cannot read its {what} {path} ({exc.strerror})"
        ) from exc


def rules_version(integration: Integration) -> str:
    """``rules:<16 hex>``: SHA-256 over the agent backend, its model (the Claude default when
    none is configured; none for a compiled plan), and the bytes of the instruction document
    and of the compiled plan file. Raises ConfigurationError when a file cannot be read."""
    agent = integration.agent
    model = ""
    if agent.backend == "claude":
        # Imported here: the Claude module pulls in the Anthropic SDK, which a plan-only
        # deployment should not load to compute a digest.
        from app.agent.claude import DEFAULT_MODEL

        model = agent.model or DEFAULT_MODEL
    parts = [
        agent.backend,
        model,
        _file_digest(agent.instructions, "instruction document", integration.id),
        _file_digest(agent.plan, "compiled plan", integration.id),
    ]
    digest = hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()
    return f"rules:{digest[:16]}"


def decision_rules(integration: Integration) -> str:
    """What a skip decision must match besides the entry: the rules version and the mode, so
    changing the rules reprocesses every entry and a staging run never makes a live run skip."""
    return f"{rules_version(integration)}:{integration.mode}"
