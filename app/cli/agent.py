"""``healthie-sync compile`` and ``dry-run``: the agent's instruction document, compiled and
tried without writing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import open_runtime


def compile_plan(
    integration_id: str,
    out: Annotated[
        Path | None, typer.Option(help="Plan file to write (default: agent.plan).")
    ] = None,
) -> None:
    """Ask Claude once to compile the instruction document into a plan file to review."""
    from app.agent.compile import run_compile

    runtime = open_runtime()
    try:
        integration = runtime.integration(integration_id)
        target = out or integration.agent.plan or Path(f"prompts/plans/{integration_id}.plan.json")
        message = run_compile(
            integration,
            runtime.clients(integration_id).targets,
            runtime.anthropic_client(),
            target,
        )
    finally:
        runtime.close()
    typer.echo(message)
    if message.startswith("Not compiled:"):
        raise typer.Exit(1)


def dry_run_cmd(
    integration_id: str,
    patient: Annotated[list[str], typer.Option(help="Patient id (repeat for several).")],
    out: Annotated[Path, typer.Option(help="Folder for report.md and report.json.")] = Path(
        "dry-run"
    ),
    show_values: Annotated[
        bool, typer.Option(help="Include field values (PHI) in the report, not just names.")
    ] = False,
) -> None:
    """What the integration would write for these patients; nothing is executed or recorded."""
    from app.agent.report import build_report, render_markdown
    from workers.dry_run import dry_run

    runtime = open_runtime(interactive=True)
    try:
        items = dry_run(runtime, integration_id, patient)
        integration = runtime.integration(integration_id)
    finally:
        runtime.close()
    report = build_report(
        items,
        integration_id=integration_id,
        visible_fields=integration.agent.visible_fields,
        show_values=show_values,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    summary = report["summary"]
    typer.echo(
        f"{len(items)} patients ({summary['write']} write, {summary['skip']} skip, "
        f"{summary['refused']} refused): {out / 'report.md'} and {out / 'report.json'}"
    )
    if items and summary["refused"] == len(items):
        typer.echo("error: every patient was refused (see the report's reasons)", err=True)
        raise typer.Exit(1)  # exits.ExitCode.PROBLEMS
