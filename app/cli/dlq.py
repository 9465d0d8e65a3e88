"""``healthie-sync dlq``: list, replay and reindex dead-lettered work.

Each dead letter prints as a short record (its whole message id first, then the kind, tries,
time with its zone and whether a plan is stored, then the error), which stays readable at 80
columns where an eight-column table would have to cut ids.

``list`` and a replay without ``--yes`` (the preview) read the dead-letter index in the state
store and never touch the queue: no lease, no delivery attempt, nothing hidden
(``workers.deadletters``). ``replay --yes`` and ``reindex`` lease the dead-letter subscription,
on purpose. Times are read and shown in ``--tz`` (default: the local zone), with the zone.
"""

from __future__ import annotations

import json
from datetime import tzinfo
from typing import TYPE_CHECKING

import typer

from app.cli.common import open_runtime
from app.cli.timeparse import parse_moment, show, zone

if TYPE_CHECKING:
    from app.state.base import DeadLetter
    from workers.replay import Mode, ReplayFilter, ReplayItem

app = typer.Typer(help="Dead-lettered work: list, replay, reindex.", no_args_is_help=True)

_INTEGRATION = typer.Option(None, help="Only this integration.")
_PATIENT = typer.Option(None, help="Only this patient id.")
_ERROR = typer.Option(None, help="Only this error kind (e.g. target_rejected).")
_SINCE = typer.Option(
    None, help="Dead-lettered at or after: 30m, 24h, 7d, today, 2026-03-01, 2026-03-01 14:30."
)
_UNTIL = typer.Option(None, help="Dead-lettered at or before (same forms; a date: its end).")
_TZ = typer.Option(None, "--tz", help="Time zone of --since/--until and the tables (IANA name).")
_JSON = typer.Option(False, "--json", help="Machine-readable output.")

_DECISION = {
    "stored_plan": "stored plan",
    "decide_again": "decide again",
    "cannot_replay": "cannot replay",
}


def _filter(
    integration: str | None,
    patient: str | None,
    error: str | None,
    since: str | None,
    until: str | None,
    tz: tzinfo | None,
) -> ReplayFilter:
    from workers.replay import ReplayFilter

    return ReplayFilter(
        integration_id=integration,
        patient_id=patient,
        error_kind=error,
        since=parse_moment(since, tz, option="--since") if since else None,
        until=parse_moment(until, tz, option="--until", end_of_day=True) if until else None,
    )


def _json_line(dead: DeadLetter, tz: tzinfo | None) -> str:
    doc = dead.model_dump(mode="json")
    doc["dead_lettered_at"] = dead.dead_lettered_at.astimezone(tz).isoformat()
    return json.dumps(doc)


def _empty(filtered: bool) -> str:
    return "no dead letters match the filters" if filtered else "no dead letters"


@app.command("list")
def dlq_list(
    integration: str | None = _INTEGRATION,
    patient: str | None = _PATIENT,
    error: str | None = _ERROR,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    tz_name: str | None = _TZ,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    limit: int = typer.Option(10_000, min=1, help="At most this many."),
) -> None:
    """Show dead-lettered work items with the reason and last error (reads only)."""
    from app.queue.base import CountingQueue
    from app.queue.topology import WORK_DLQ_SUBSCRIPTION
    from workers.replay import list_dead_letters

    tz = zone(tz_name)
    selector = _filter(integration, patient, error, since, until, tz)
    runtime = open_runtime()
    try:
        dead = list_dead_letters(runtime.state, selector, limit=limit)
        unindexed = 0
        if isinstance(runtime.queue, CountingQueue):  # counting reads; it leases nothing
            held = runtime.queue.depth(WORK_DLQ_SUBSCRIPTION)
            unindexed = held - len(runtime.state.list_dead_letters(limit=max(limit, held)))
    finally:
        runtime.close()
    if as_json:
        for d in dead:
            typer.echo(_json_line(d, tz))
    elif not dead:
        typer.echo(_empty(any((integration, patient, error, since, until))))
    for d in [] if as_json else dead:
        plan = "plan stored" if d.has_plan else "no plan"
        typer.echo(_headline(d))
        typer.echo(
            f"  {d.error_kind}, {d.delivery_attempt} tries, {show(d.dead_lettered_at, tz)}, {plan}"
        )
        if d.error:
            typer.echo(f"  {d.error}")
    if unindexed > 0:
        typer.echo(
            f"note: the queue holds {unindexed} dead letters the index lacks "
            "(run: healthie-sync dlq reindex)",
            err=True,
        )


def _mode(stored_plan: bool, decide_again: bool) -> Mode:
    from app.core.errors import ConfigurationError

    if stored_plan and decide_again:
        raise ConfigurationError("--stored-plan and --decide-again exclude each other")
    return "stored_plan" if stored_plan else "decide_again" if decide_again else "auto"


def _headline(dead: DeadLetter) -> str:
    patient = f"patient {dead.patient_id}" if dead.patient_id else "(does not decode)"
    return f"{dead.message_id}  {dead.integration_id}  {patient}"


def _print_items(items: list[ReplayItem], tz: tzinfo | None, filtered: bool) -> None:
    if not items:
        typer.echo(_empty(filtered))
    for i in items:
        typer.echo(_headline(i))
        typer.echo(f"  {i.error_kind}, {show(i.dead_lettered_at, tz)}")
        typer.echo(f"  replay: {_DECISION[i.decision]}: {i.why}")


@app.command("replay")
def dlq_replay(
    integration: str | None = _INTEGRATION,
    patient: str | None = _PATIENT,
    error: str | None = _ERROR,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    tz_name: str | None = _TZ,
    stored_plan: bool = typer.Option(
        False, "--stored-plan", help="Re-execute each stored plan, even if the rules changed."
    ),
    decide_again: bool = typer.Option(
        False, "--decide-again", help="Decide every item again with the rules in force now."
    ),
    yes: bool = typer.Option(False, "--yes", help="Replay; without it, a preview."),
    rate: float = typer.Option(10.0, min=0.1, help="Replays per second at most."),
    as_json: bool = _JSON,
) -> None:
    """Put dead-lettered items back on the work queue (a preview unless --yes).

    By default an item re-executes its stored plan only when the rules (instructions, plan,
    backend, model) and the patient's entry are unchanged since it failed; otherwise it is
    decided again. The preview says which, per item."""
    from app.cli.exits import ExitCode
    from workers.replay import replay

    tz = zone(tz_name)
    mode = _mode(stored_plan, decide_again)
    selector = _filter(integration, patient, error, since, until, tz)
    runtime = open_runtime(interactive=True)
    try:
        report = replay(runtime, selector, preview=not yes, mode=mode, rate_per_second=rate)
    finally:
        runtime.close()
    if as_json:
        typer.echo(report.model_dump_json())
    else:
        _print_items(report.selected, tz, any((integration, patient, error, since, until)))
        runnable = [i for i in report.selected if i.decision != "cannot_replay"]
        if report.preview:
            stored = sum(i.decision == "stored_plan" for i in runnable)
            hint = " (run again with --yes)" if runnable else ""
            typer.echo(
                f"would replay {len(runnable)}: {stored} with the stored plan, "
                f"{len(runnable) - stored} decided again{hint}"
            )
        else:
            typer.echo(f"replayed {report.replayed} of {len(runnable)}")
            if report.indexed:
                typer.echo(f"indexed {report.indexed} dead letters the index lacked")
    if report.missing:
        typer.echo(
            f"error: {len(report.missing)} selected dead letters were not on the queue "
            f"({', '.join(report.missing[:5])}); another replay may hold them, or they are "
            "past the retention (healthie-sync dlq reindex prunes those)",
            err=True,
        )
        raise typer.Exit(ExitCode.PROBLEMS)


@app.command("reindex")
def dlq_reindex(as_json: bool = _JSON) -> None:
    """Index dead letters the index lacks (the queue dead-lettered them itself, or an index
    write failed) and prune entries past the retention. Leases each dead letter briefly."""
    from workers.deadletters import reindex

    runtime = open_runtime()
    try:
        report = reindex(runtime.queue, runtime.state)
    finally:
        runtime.close()
    if as_json:
        typer.echo(report.model_dump_json())
        return
    typer.echo(
        f"scanned {report.scanned} dead letters: indexed {report.indexed}, "
        f"pruned {report.pruned} entries past the retention"
    )
