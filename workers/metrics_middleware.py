"""The consumer's metrics: every settled work item counted per integration by what happened to
it (``healthie_sync.work_items``: processed, skipped_unchanged, skipped, retried,
dead_lettered, with the error kind), through ``app.observability.metrics`` (a no-op until the
metrics are configured). Registered with the consumer's other middleware."""

from __future__ import annotations

from app.observability import metrics
from workers.middleware import Middleware
from workers.pipeline import Outcome


def outcome_label(outcome: Outcome, action: str) -> str:
    """The ``outcome`` label of a settled item (the categories of ``counts_of``, with an
    acknowledged failure, a skippable error, as ``skipped``)."""
    if action == "dead_letter":
        return "dead_lettered"
    if action == "nack":
        return "retried"
    if outcome.status == "unchanged":
        return "skipped_unchanged"
    if outcome.status in ("written", "plan_skipped"):
        return "processed"
    return "skipped"


class Metrics(Middleware):
    """Counts each settled item (ids and kinds only)."""

    def after_item(self, outcome: Outcome, action: str, kind: str | None) -> None:
        """Count the item under its integration, outcome and error kind."""
        metrics.record_item(outcome.item.integration_id, outcome_label(outcome, action), kind)
