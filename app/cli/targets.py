"""``healthie-sync connectors``: what targets exist, their operations and options (the
configuration checks are ``healthie-sync validate``: ``app.cli.validate``)."""

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
