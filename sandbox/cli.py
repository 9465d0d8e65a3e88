"""Run the sandbox as a standalone local Healthie (``healthie-sync sandbox``)."""

from __future__ import annotations

import argparse

import uvicorn

from sandbox.core import Sandbox
from sandbox.server import create_app


def run_standalone(patients: int = 200, seed: int = 7, port: int = 8765) -> None:
    """Serve a sandbox on 127.0.0.1:``port`` until interrupted.

    Prints the GraphQL URL, the API key and the webhook signing secret first, so another
    process (the engine) can be pointed at it.
    """
    sandbox = Sandbox(patients=patients, seed=seed)
    print(f"Healthie sandbox: {patients} patients, seed {seed}")
    print(f"  GraphQL URL:            http://127.0.0.1:{port}/graphql")
    print(f"  API key:                {sandbox.api_key}")
    print(f"  webhook signing secret: {sandbox.webhook_secret}", flush=True)
    try:
        uvicorn.run(create_app(sandbox), host="127.0.0.1", port=port, log_level="warning")
    finally:
        sandbox.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m sandbox``: parse ``--patients --seed --port`` and serve."""
    parser = argparse.ArgumentParser(description=run_standalone.__doc__)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port", type=int, default=8765)
    ns = parser.parse_args(argv)
    run_standalone(ns.patients, ns.seed, ns.port)
