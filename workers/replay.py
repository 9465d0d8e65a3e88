"""Dead-letter listing and replay, for operators.

**Listing reads the index only** (``workers.deadletters``): no pull, no lease, no delivery
attempt, so a listing (or a listing that dies half-way) leaves the queue exactly as it was, on
both queue backends. A replay *preview* reads the index too, and Healthie (to see whether an
entry changed); it changes nothing.

**What a replay does with each item** (:func:`plan_replay`, shown per item by the preview):

=================  ==============================================================
mode               the item is replayed ...
=================  ==============================================================
``auto``           with its stored plan when the rules (``workers.rules``) and the
(default)          entry are unchanged since the failure; otherwise without it, so
                   the plan is decided again by the rules in force now
``stored_plan``    with its stored plan, even if the rules or the entry changed
                   (``--stored-plan``); an item without a plan is decided again
``decide_again``   without its plan (``--decide-again``)
=================  ==============================================================

A replay with ``preview=False`` then leases the dead-letter subscription, and for each message
the preview selected: publishes a WorkItem to the work topic that records where it came from
(``replay_of``, ``replayed_at``, reason ``replay``; without its plan when decided again),
removes the index entry, and acks the dead letter, at most ``rate_per_second`` a second. Every
other message it leased is given back at the end, also when it fails (a process killed
mid-replay leaves them hidden for the subscription's ack deadline: the one window a replay,
never a listing, can open); one the index lacked is indexed on the way. Selected entries
whose message the scan did not find are reported as ``missing`` and kept (another replay may
hold them; ``dlq reindex`` prunes those past the retention).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from app.core.errors import HealthieSyncError
from app.core.models import WorkItem
from app.healthie.entry import canonicalize, content_hash
from app.queue.topology import WORK_DLQ_SUBSCRIPTION, WORK_TOPIC
from app.service.runtime import Runtime
from app.state.base import DeadLetter, StateStore
from workers import deadletters
from workers.rules import rules_version

__all__ = [
    "DeadLetter",
    "Mode",
    "ReplayFilter",
    "ReplayItem",
    "ReplayReport",
    "list_dead_letters",
    "plan_replay",
    "replay",
]

Mode = Literal["auto", "stored_plan", "decide_again"]
Decision = Literal["stored_plan", "decide_again", "cannot_replay"]


@dataclass(frozen=True)
class ReplayFilter:
    """Which dead letters to select; every set field must match."""

    integration_id: str | None = None
    patient_id: str | None = None
    error_kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, dead: DeadLetter) -> bool:
        """True when ``dead`` passes every set criterion."""
        at = dead.dead_lettered_at
        return (
            (self.integration_id is None or dead.integration_id == self.integration_id)
            and (self.patient_id is None or dead.patient_id == self.patient_id)
            and (self.error_kind is None or dead.error_kind == self.error_kind)
            and (self.since is None or at >= self.since)
            and (self.until is None or at <= self.until)
        )


class ReplayItem(DeadLetter):
    """A selected dead letter and what its replay will do (``decision``) and why."""

    decision: Decision
    why: str


class ReplayReport(BaseModel):
    """What a replay (or its preview) selected and did."""

    preview: bool
    mode: Mode = "auto"
    selected: list[ReplayItem] = []
    replayed: int = 0
    scanned: int = 0  # dead-letter messages leased (0 in a preview: it never leases)
    indexed: int = 0  # messages met on the queue that the index lacked, now indexed
    missing: list[str] = []  # selected entries whose message the scan did not find


def list_dead_letters(
    state: StateStore, selector: ReplayFilter | None = None, *, limit: int = 10_000
) -> list[DeadLetter]:
    """Indexed dead letters matching ``selector`` (all when None), oldest first. Reads the
    state store only; the queue is not touched (see ``workers.deadletters``)."""
    selector = selector or ReplayFilter()
    entries = state.list_dead_letters(selector.integration_id, limit=limit)
    return [d for d in entries if selector.matches(d)]


def plan_replay(
    runtime: Runtime,
    selector: ReplayFilter,
    *,
    mode: Mode = "auto",
    limit: int = 10_000,
) -> list[ReplayItem]:
    """The dead letters ``selector`` matches, each with what a replay in ``mode`` will do.
    Reads the index, the integrations' rules, and Healthie for the entries with a stored plan
    (one batched fetch per integration; when Healthie cannot be reached the item says so)."""
    selected = list_dead_letters(runtime.state, selector, limit=limit)
    versions: dict[str, str | None] = {}
    hashes = _current_hashes(runtime, [d for d in selected if d.has_plan and d.patient_id])
    out = []
    for dead in selected:
        if dead.integration_id not in versions:
            versions[dead.integration_id] = _rules_now(runtime, dead.integration_id)
        decision, why = _decide(dead, mode, versions[dead.integration_id], hashes)
        out.append(ReplayItem(**dead.model_dump(), decision=decision, why=why))
    return out


_UNREACHABLE = "?"  # the entry could not be fetched


def _decide(
    dead: DeadLetter,
    mode: Mode,
    rules_now: str | None,
    hashes: dict[tuple[str, str], str | None],
) -> tuple[Decision, str]:
    if not dead.patient_id:
        return "cannot_replay", "the message does not decode as a work item"
    if rules_now is None:
        return "cannot_replay", "the integration is not configured here (or its rules unreadable)"
    if mode == "decide_again":
        return "decide_again", "forced by --decide-again"
    if not dead.has_plan:
        return "decide_again", "no stored plan: it failed before one was decided"
    if mode == "stored_plan":
        return "stored_plan", "forced by --stored-plan"
    if dead.rules_version is None:
        return "decide_again", "the rules' version at the failure is not known"
    if dead.rules_version != rules_now:
        return "decide_again", "the rules changed since the failure"
    current = hashes.get((dead.integration_id, dead.patient_id), _UNREACHABLE)
    if current is None:
        return "decide_again", "the patient is no longer in Healthie"
    if current == _UNREACHABLE:
        return "stored_plan", "rules unchanged; entry not checked: Healthie unreachable"
    if current != dead.plan_entry_hash:
        return "decide_again", "the entry changed since the failure"
    return "stored_plan", "rules and entry unchanged since the failure"


def _rules_now(runtime: Runtime, integration_id: str) -> str | None:
    if integration_id not in runtime.integrations:
        return None
    try:
        return rules_version(runtime.integrations[integration_id])
    except HealthieSyncError:
        return None


def _current_hashes(
    runtime: Runtime, dead: Sequence[DeadLetter]
) -> dict[tuple[str, str], str | None]:
    """Content hash of each patient's entry now (None: no such patient); patients of an
    integration Healthie did not answer for are left out."""
    by_integration: dict[str, set[str]] = {}
    for d in dead:
        if d.integration_id in runtime.integrations:
            by_integration.setdefault(d.integration_id, set()).add(d.patient_id)
    out: dict[tuple[str, str], str | None] = {}
    for integration_id, patients in by_integration.items():
        try:
            raw = runtime.clients(integration_id).healthie.fetch_entries(sorted(patients))
        except HealthieSyncError:
            continue  # reported per item as "not checked"
        for pid in patients:
            entry = raw.get(pid)
            out[integration_id, pid] = content_hash(canonicalize(entry)) if entry else None
    return out


def replay(
    runtime: Runtime,
    selector: ReplayFilter,
    *,
    preview: bool = True,
    mode: Mode = "auto",
    rate_per_second: float = 10.0,
    limit: int = 10_000,
) -> ReplayReport:
    """Replay the dead letters ``selector`` matches as :func:`plan_replay` decides (only
    report the decisions when ``preview``: nothing is leased or changed then)."""
    items = plan_replay(runtime, selector, mode=mode, limit=limit)
    report = ReplayReport(preview=preview, mode=mode, selected=items)
    if preview:
        return report
    wanted = {i.message_id: i for i in items if i.decision != "cannot_replay"}
    if not wanted:
        return report
    queue, state = runtime.queue, runtime.state
    known = {d.message_id for d in state.list_dead_letters(limit=limit)}
    hashes = _current_hashes(runtime, [i for i in wanted.values() if i.decision == "stored_plan"])
    interval = 1.0 / rate_per_second if rate_per_second > 0 else 0.0
    held: list[str] = []  # every ack id leased; all but the acked ones go back at the end
    acked: set[str] = set()
    found: set[str] = set()
    try:
        for batch in deadletters.lease_batches(queue, limit):
            held.extend(m.ack_id for m in batch)
            for message in batch:
                report.scanned += 1
                chosen = wanted.get(message.message_id)
                dead, item = deadletters.describe_message(message)
                if chosen is None or item is None:
                    if message.message_id not in known:
                        state.put_dead_letter(dead)
                        report.indexed += 1
                    continue
                current = hashes.get((item.integration_id, item.patient_id))
                queue.publish(
                    WORK_TOPIC,
                    _replayed(item, chosen, mode, current).model_dump_json().encode(),
                    {"integration": item.integration_id, "replay_of": message.message_id},
                )
                # The entry first, then the ack: a crash between them leaves an unindexed dead
                # letter (which reindex repairs), never an entry whose message is gone.
                state.remove_dead_letters([message.message_id])
                queue.ack(WORK_DLQ_SUBSCRIPTION, [message.ack_id])
                acked.add(message.ack_id)
                found.add(message.message_id)
                report.replayed += 1
                if interval:
                    time.sleep(interval)
            if len(found) == len(wanted):
                break  # every message of the batch was acked or given back
    finally:
        give_back = [a for a in held if a not in acked]
        if give_back:
            queue.nack(WORK_DLQ_SUBSCRIPTION, give_back)
    report.missing = sorted(set(wanted) - found)
    return report


def _replayed(item: WorkItem, chosen: ReplayItem, mode: Mode, current_hash: str | None) -> WorkItem:
    update: dict[str, object] = {
        "replay_of": chosen.message_id,
        "replayed_at": datetime.now(UTC),
        "reasons": (*item.reasons, "replay"),
    }
    if chosen.decision == "decide_again":
        update |= {"plan": None, "plan_entry_hash": None}
    elif mode == "stored_plan" and current_hash is not None:
        # The pipeline re-executes a stored plan only for the entry it was decided for; a
        # forced replay asks for it on the entry as it is now.
        update["plan_entry_hash"] = current_hash
    return item.model_copy(update=update)
