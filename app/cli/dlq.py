"""``healthie-sync dlq``: list and replay dead-lettered work."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from app.cli.common import open_runtime

if TYPE_CHECKING:
    from workers.replay import ReplayFilter

app = typer.Typer(help="Dead-lettered work: list and replay.", no_args_is_help=True)


def _filter(
    integration: str | None,
    patient: str | None,
    error: str | None,
    since: str | None,
    until: str | None,
) -> ReplayFilter:
    from datetime import datetime

    from workers.replay import ReplayFilter

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return ReplayFilter(
        integration_id=integration,
        patient_id=patient,
        error_kind=error,
        since=when(since),
        until=when(until),
    )


_INTEGRATION = typer.Option(None, help="Only this integration.")

_PATIENT = typer.Option(None, help="Only this patient id.")

_ERROR = typer.Option(None, help="Only this error kind (e.g. target_rejected).")

_SINCE = typer.Option(None, help="Dead-lettered at or after (ISO 8601, with offset).")

_UNTIL = typer.Option(None, help="Dead-lettered at or before (ISO 8601, with offset).")


@app.command("list")
def dlq_list(
    integration: str | None = _INTEGRATION,
    patient: str | None = _PATIENT,
    error: str | None = _ERROR,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
) -> None:
    """Show dead-lettered work items with the reason and last error."""
    from rich.console import Console
    from rich.table import Table

    from workers.replay import list_dead_letters

    runtime = open_runtime()
    try:
        dead = list_dead_letters(runtime.queue, _filter(integration, patient, error, since, until))
    finally:
        runtime.close()
    table = Table("message", "integration", "patient", "kind", "attempts", "at", "plan", "error")
    for d in dead:
        table.add_row(
            d.message_id[:12],
            d.integration_id,
            d.patient_id,
            d.error_kind,
            str(d.delivery_attempt),
            f"{d.dead_lettered_at:%Y-%m-%d %H:%M}" if d.dead_lettered_at else "",
            "yes" if d.has_plan else "",
            d.error[:80],
        )
    Console().print(table)


@app.command("replay")
def dlq_replay(
    integration: str | None = _INTEGRATION,
    patient: str | None = _PATIENT,
    error: str | None = _ERROR,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    yes: bool = typer.Option(False, "--yes", help="Replay; without it, a preview."),
    rate: float = typer.Option(10.0, help="Replays per second at most."),
) -> None:
    """Put dead-lettered items back on the work queue (preview unless --yes)."""
    from workers.replay import replay

    runtime = open_runtime()
    try:
        report = replay(
            runtime.queue,
            _filter(integration, patient, error, since, until),
            preview=not yes,
            rate_per_second=rate,
        )
    finally:
        runtime.close()
    if report.preview:
        hint = " (run again with --yes)" if report.selected else ""
        typer.echo(f"scanned {report.scanned}, would replay {len(report.selected)}{hint}")
    else:
        typer.echo(f"scanned {report.scanned}, replayed {report.replayed}")
