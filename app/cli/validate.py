"""``healthie-sync validate [INTEGRATION...]``: every offline check, one finding per problem.

Prints ``error: <what> (<where>)`` and ``  hint: ...`` per finding (``--json``: one JSON
object per line), then a summary. Exit codes (``app.cli.exits``): 0 when no error was found
(warnings and notes do not fail), 1 when one was, 2 for a usage error (an unknown
integration, an unreadable ``--schema``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli.exits import ExitCode


def validate(
    integrations: Annotated[
        list[str] | None,
        typer.Argument(help="Integration ids to check (default: every one).", show_default=False),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per finding, one per line.")
    ] = False,
    schema: Annotated[
        Path | None,
        typer.Option(
            "--schema",
            help="Healthie's GraphQL schema (SDL file) to type plan paths against; without it "
            "paths are checked against the entry selection only.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check config files, plans (every path against the entry selection), transforms,
    targets and secret references, without calling Healthie or any target."""
    from app.core.errors import ConfigurationError
    from app.core.settings import Settings
    from app.healthie.selection import schema_from_file
    from app.service.validate import has_errors
    from app.service.validate import validate as run_checks

    try:
        graphql_schema = schema_from_file(schema) if schema is not None else None
        findings = run_checks(Settings(), integrations or None, schema=graphql_schema)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ExitCode.USAGE) from None
    if as_json:
        for finding in findings:
            typer.echo(json.dumps(finding.as_dict()))
    else:
        for finding in findings:
            typer.echo(finding.render())
        counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning")}
        if not any(counts.values()):
            typer.echo("ok: no problems found")
        else:
            typer.echo(f"{counts['error']} error(s), {counts['warning']} warning(s)")
    if has_errors(findings):
        raise typer.Exit(ExitCode.PROBLEMS)
