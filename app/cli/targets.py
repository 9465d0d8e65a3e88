"""``healthie-sync connectors`` and ``validate``: what targets exist, and whether the
integrations' configuration holds together (options, declared tables, secrets) before any work."""

from __future__ import annotations

import json

import typer


def connectors(
    as_json: bool = typer.Option(False, "--json", help="A JSON array of objects."),
) -> None:
    """List every connector with its operations and options."""
    from rich.console import Console
    from rich.table import Table

    from connectors.registry import listing

    entries = listing()
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    table = Table("name", "operations", "options", "credentials", "modes", "description")
    for e in entries:
        options = sorted(e["options"].get("properties", {}))
        table.add_row(
            e["name"],
            ", ".join(op["name"] for op in e["operations"]),
            ", ".join(options),
            ", ".join(e["credentials"]),
            ", ".join(e["modes"]),
            e["description"],
        )
    Console().print(table)


def validate() -> None:
    """Check every integration's config: targets' options and declared tables, secrets."""
    from app.cli.common import open_runtime

    runtime = open_runtime()  # loading validates every target (ConfigurationError otherwise)
    try:
        problems = runtime.check_secrets()
        names = sorted(runtime.integrations)
    finally:
        runtime.close()
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(2)
    typer.echo(f"ok: {len(names)} integration(s): {', '.join(names)}")
