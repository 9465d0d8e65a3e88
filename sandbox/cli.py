"""Run the sandbox as a standalone local Healthie (``healthie-sync sandbox``)."""

from __future__ import annotations

import argparse

import uvicorn

from sandbox.core import Sandbox
from sandbox.faults import FaultConfig
from sandbox.server import create_app


def configured(
    patients: int = 200,
    seed: int = 7,
    *,
    latency: float = 0.0,
    rate_limit: float | None = None,
    warm: bool = False,
) -> Sandbox:
    """The sandbox :func:`run_standalone` serves (see its options)."""
    sandbox = Sandbox(patients=patients, seed=seed)
    sandbox.faults.configure(FaultConfig(latency_seconds=latency, rate_limit_per_second=rate_limit))
    if warm:
        for pid in sandbox.org.patient_ids():
            sandbox.org.patient(pid)
    return sandbox


def run_standalone(
    patients: int = 200,
    seed: int = 7,
    port: int = 8765,
    *,
    latency: float = 0.0,
    rate_limit: float | None = None,
    warm: bool = False,
) -> None:
    """Serve a sandbox on 127.0.0.1:``port`` until interrupted.

    ``latency`` seconds are added to every GraphQL request (Healthie answers in ~300 ms),
    ``rate_limit`` refuses requests beyond that many per second as Healthie does, and
    ``warm`` generates every patient before serving, so the first requests cost what later
    ones do. Prints the GraphQL URL, the API key and the webhook signing secret first, so
    another process (the engine) can be pointed at it.
    """
    sandbox = configured(patients, seed, latency=latency, rate_limit=rate_limit, warm=warm)
    limit = f", {rate_limit:g} requests/s" if rate_limit else ""
    print(f"Healthie sandbox: {patients} patients, seed {seed}, {latency * 1000:.0f} ms{limit}")
    print(f"  GraphQL URL:            http://127.0.0.1:{port}/graphql")
    print(f"  API key:                {sandbox.api_key}")
    print(f"  webhook signing secret: {sandbox.webhook_secret}", flush=True)
    try:
        uvicorn.run(create_app(sandbox), host="127.0.0.1", port=port, log_level="warning")
    finally:
        sandbox.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m sandbox``: parse ``--patients --seed --port --latency --rate-limit --warm``
    and serve."""
    parser = argparse.ArgumentParser(description=run_standalone.__doc__)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    parser.add_argument("--warm", action="store_true", help="generate every patient first")
    ns = parser.parse_args(argv)
    run_standalone(
        ns.patients, ns.seed, ns.port, latency=ns.latency, rate_limit=ns.rate_limit, warm=ns.warm
    )
