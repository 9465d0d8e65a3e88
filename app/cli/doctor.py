"""``healthie-sync doctor INTEGRATION``: validate, then ask every service the integration
depends on one harmless question (``app.service.doctor``); one line per check."""

from __future__ import annotations

import json

import typer

from app.cli.common import open_runtime
from app.cli.exits import ExitCode

_MARK = {"ok": "ok  ", "fail": "FAIL", "warn": "warn", "skip": "skip"}


def doctor(
    integration: str = typer.Argument(..., help="The integration to check."),
    url: str | None = typer.Option(
        None, "--url", help="The engine's public base URL (checks the webhook registration)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per check."),
) -> None:
    """Check an integration end to end without writing: config, secrets, Healthie (reachable,
    pinned version, the key can read patients), webhooks, each target, the Anthropic key.
    Exits 1 when a check fails."""
    from app.service.doctor import doctor as run_doctor
    from app.service.doctor import summary

    runtime = open_runtime(interactive=True)
    try:
        checks = run_doctor(runtime, integration, url=url)
    finally:
        runtime.close()
    for check in checks:
        if as_json:
            typer.echo(json.dumps(check.as_dict()))
            continue
        detail = " ".join(check.detail.split())  # one line, whatever the error text held
        typer.echo(f"{_MARK[check.verdict]}  {check.name}: {detail}")
        if check.fix and check.verdict in ("fail", "warn", "skip"):
            typer.echo(f"      fix: {check.fix}")
    counts = summary(checks)
    if not as_json:
        typer.echo(
            f"{counts['ok']} ok, {counts['fail']} failed, {counts['warn']} warnings, "
            f"{counts['skip']} skipped"
        )
    if counts["fail"]:
        raise typer.Exit(ExitCode.PROBLEMS)
