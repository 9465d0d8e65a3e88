"""``healthie-sync webhooks``: Healthie's registration of the receiver (status, sync, test,
rotate); see ``app.healthie.registration``."""

from __future__ import annotations

import typer

from app.cli.common import open_runtime

app = typer.Typer(
    help="Healthie webhook registration: status, sync, test, rotate.", no_args_is_help=True
)

_URL = typer.Option(..., "--url", help="The engine's public base URL (https://...).")


@app.command("status")
def hooks_status(
    integration: str,
    url: str = _URL,
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """What is registered at Healthie against what the integration needs, and warnings.
    Exits 1 when the registration drifted from what the integration needs."""
    from app.healthie.registration import webhook_status

    runtime = open_runtime(interactive=True)
    try:
        status = webhook_status(
            runtime.healthie(integration),
            runtime.integration(integration),
            url,
            accepted_secrets=runtime.webhook_secrets(integration),
        )
    finally:
        runtime.close()
    if as_json:
        import json

        report = {
            "integration": integration,
            "in_sync": status.plan.in_sync,
            "steps": [str(step) for step in status.plan.steps],
            "others": [str(other) for other in status.plan.others],
            "warnings": list(status.warnings),
        }
        typer.echo(json.dumps(report))
    else:
        typer.echo("in sync" if status.plan.in_sync else "drift:")
        for step in status.plan.steps:
            typer.echo(f"  {step}")
        for other in status.plan.others:
            typer.echo(f"  (left alone, other URL) {other}")
        for warning in status.warnings:
            typer.echo(f"warning: {warning}")
    if not status.plan.in_sync:
        raise typer.Exit(1)  # exits.ExitCode.PROBLEMS: fix it with `webhooks sync`


@app.command("sync")
def hooks_sync(integration: str, url: str = _URL) -> None:
    """Register or fix the integration's webhook so it carries exactly the needed events; the
    signing secret of a webhook it creates is stored through the secrets backend."""
    from app.healthie.registration.rotation import sync_and_store

    runtime = open_runtime(interactive=True)
    try:
        actions, stored = sync_and_store(
            runtime.healthie(integration), runtime.integration(integration), url, runtime.secrets
        )
    finally:
        runtime.close()
    for action in actions:
        typer.echo(str(action))
    for item in stored:
        typer.echo(str(item))
    if not actions:
        typer.echo("already in sync")
    if not all(item.ok for item in stored):
        raise typer.Exit(1)


@app.command("test")
def hooks_test(
    integration: str,
    url: str = _URL,
    timeout: float = typer.Option(30.0, help="Seconds to wait for the delivery."),
) -> None:
    """Ask Healthie to send a test webhook and confirm the engine received and verified it."""
    from app.healthie.registration import confirm_arrival, engine_webhooks, send_test

    runtime = open_runtime(interactive=True)
    try:
        client = runtime.healthie(integration)
        registered = engine_webhooks(client, runtime.integration(integration), url)
        if not registered:
            typer.echo("no webhook registered for this integration; run 'webhooks sync' first")
            raise typer.Exit(1)
        sent = send_test(client, registered[0].id, receiver_url=url)
        arrival = confirm_arrival(client, sent, receiver_url=url, timeout=timeout)
    finally:
        runtime.close()
    typer.echo(f"{arrival.verdict}: {arrival.detail}")
    if not arrival.ok:
        raise typer.Exit(1)


@app.command("rotate")
def hooks_rotate(
    integration: str,
    url: str = _URL,
    yes: bool = typer.Option(False, "--yes", help="Expire the signing secret now."),
) -> None:
    """Rotate the webhook signing secret: prints the procedure; --yes expires it and stores
    Healthie's new secret as the next version of the signing-secret reference."""
    from app.healthie.registration import engine_webhooks, rotation_steps
    from app.healthie.registration.rotation import rotate_and_store

    runtime = open_runtime(interactive=True)
    try:
        client = runtime.healthie(integration)
        config = runtime.integration(integration)
        ids = [w.id for w in engine_webhooks(client, config, url)]
        for line in rotation_steps(config, ids, base=url, store=runtime.secrets):
            typer.echo(line)
        if yes:
            stored = rotate_and_store(client, config, ids, runtime.secrets)
            for item in stored:
                typer.echo(str(item))
            if not all(item.ok for item in stored):
                raise typer.Exit(1)
    finally:
        runtime.close()
