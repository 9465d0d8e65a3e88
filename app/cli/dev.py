"""``healthie-sync demo`` and ``sandbox``: development tools on the local Healthie sandbox.

The sandbox is not part of the engine: no runtime module imports it, and the production image
does not contain it. These two commands are the only way the CLI reaches it, on demand, and
they say so in one line when it is absent.
"""

from __future__ import annotations

import importlib
import json
from types import ModuleType

import typer


def _dev_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("sandbox"):
            raise
        typer.echo(
            "error: the demo and the sandbox are development tools, not installed here "
            "(the production image leaves them out); run them from a source checkout: make demo",
            err=True,
        )
        raise typer.Exit(2) from None


def demo(
    patients: int = typer.Option(200, help="Synthetic patients in the sandbox."),
    changes: int = typer.Option(30, help="Changes made in the sandbox before the flush."),
    seed: int = typer.Option(7, help="Seed of the synthetic organization."),
    reset: bool = typer.Option(False, help="Forget previous demo state first."),
    target: str = typer.Option(
        "sqlite",
        help="sqlite | csv | jsonl | excel | parquet (no server) | postgres | hubspot.",
    ),
    dsn: str | None = typer.Option(None, help="With --target postgres: postgresql://..."),
    hubspot_url: str | None = typer.Option(
        None, help="With --target hubspot: HubSpot's API base URL (or a mock of it)."
    ),
) -> None:
    """Run the main job end to end on embedded defaults (no network, no credentials)."""
    counts = _dev_module("sandbox.demo").run_demo(
        patients=patients,
        changes=changes,
        seed=seed,
        reset=reset,
        target=target,
        dsn=dsn,
        hubspot_url=hubspot_url,
    )
    typer.echo(json.dumps(counts.model_dump()))


def sandbox(
    patients: int = typer.Option(200, help="Synthetic patients."),
    seed: int = typer.Option(7, help="Seed of the synthetic organization."),
    port: int = typer.Option(8765, help="Port on 127.0.0.1."),
) -> None:
    """Run the local Healthie sandbox standalone; prints its URL and webhook secret."""
    _dev_module("sandbox.cli").run_standalone(patients=patients, seed=seed, port=port)
