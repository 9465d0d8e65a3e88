"""The ``healthie-sync`` command line."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from app.models import Cadence

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@cli.command()
def demo(
    patients: int = typer.Option(200, help="Synthetic patients in the sandbox."),
    changes: int = typer.Option(30, help="Changes made in the sandbox before the flush."),
    seed: int = typer.Option(7, help="Seed of the synthetic organization."),
    reset: bool = typer.Option(False, help="Forget previous demo state first."),
) -> None:
    """Run the main job end to end on embedded defaults (no network, no credentials)."""
    from app.demo import run_demo

    counts = run_demo(patients=patients, changes=changes, seed=seed, reset=reset)
    typer.echo(json.dumps(counts.model_dump()))


@cli.command()
def serve(
    host: str = typer.Option("0.0.0.0", help="Interface to listen on."),  # noqa: S104
    port: int = typer.Option(8080, envvar="PORT", help="Port (Cloud Run sets PORT)."),
) -> None:
    """Serve webhooks and flush triggers with the configured backends."""
    import uvicorn

    from app.main import create_app
    from app.runtime import build_runtime
    from app.settings import Settings

    runtime = build_runtime(Settings())
    try:
        uvicorn.run(create_app(runtime), host=host, port=port, log_level="info")
    finally:
        runtime.close()


@cli.command()
def flush(cadence: Annotated[Cadence, typer.Argument(help="Which cadence to flush.")]) -> None:
    """Flush one cadence's dirty marks into work items, then process them."""
    from app.runtime import build_runtime
    from app.settings import Settings
    from workers.flusher import flush as run_flush
    from workers.subscriber import drain

    runtime = build_runtime(Settings())
    try:
        result = run_flush(runtime, cadence)
        counts = drain(runtime)
        typer.echo(json.dumps({"flush_id": result.flush_id, **counts.model_dump()}))
    finally:
        runtime.close()


@cli.command()
def sandbox(
    patients: int = typer.Option(200, help="Synthetic patients."),
    seed: int = typer.Option(7, help="Seed of the synthetic organization."),
    port: int = typer.Option(8765, help="Port on 127.0.0.1."),
) -> None:
    """Run the local Healthie sandbox standalone; prints its URL and webhook secret."""
    from sandbox.cli import run_standalone

    run_standalone(patients=patients, seed=seed, port=port)


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cli()
