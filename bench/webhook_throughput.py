"""Webhook intake throughput: the real receiver (verify + publish) vs a bare FastAPI endpoint.

Both run under identical uvicorn settings (one process, pinned to CPU 0 when taskset exists),
loaded by wrk (pinned to CPU 1) on loopback with the same signed body, alternating rounds so
machine noise hits both alike. Reports requests/s of each, and the ratio full / bare (issue 5's
target: >= 0.70).

    python -m bench.webhook_throughput [--rounds 3] [--seconds 5] [--queue sqlite|pubsub]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from app.service.serving import free_port
from bench.webhook_apps import SECRET

PATH = "/webhooks/healthie/demo-clinic"
BODY = json.dumps(
    {
        "resource_id": "4242",
        "resource_id_type": "User",
        "event_type": "patient.updated",
        "changed_fields": ["phone_number"],
    }
)


def _headers(body: bytes) -> dict[str, str]:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    data = f"post {PATH}  {digest} application/json {len(body)}"
    mac = hmac.new(SECRET.encode(), data.encode(), hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "Content-Digest": f"SHA-256={digest}",
        "Signature": f"sig1={mac}",
    }


def _pin(cpu: int) -> list[str]:
    return (
        ["taskset", "-c", str(cpu)]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() >= 2
        else []
    )  # type: ignore[operator]


def _serve(factory: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *_pin(0),
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx2.post(
                url + PATH, content=BODY.encode(), headers=_headers(BODY.encode()), timeout=2
            )
            return proc, url
        except httpx2.TransportError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"{factory} did not start")


def _wrk(url: str, seconds: int, script: Path) -> float:
    out = subprocess.run(
        [*_pin(1), "wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(script), url + PATH],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx.group(1)} non-2xx responses during the run:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return float(match.group(1))


def main() -> None:
    """Run the comparison and print a table and one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--queue", choices=["sqlite", "pubsub"], default="sqlite")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    headers = _headers(BODY.encode())
    script = work / "post.lua"
    lua_headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\n{lua_headers}')
    env = {**os.environ, "BENCH_DATA_DIR": str(work), "BENCH_QUEUE": args.queue}
    results: dict[str, list[float]] = {"bare": [], "full": []}
    servers = {name: _serve(f"bench.webhook_apps:{name}_app", env) for name in results}
    try:
        for _ in range(args.rounds):
            for name, (_, url) in servers.items():
                results[name].append(_wrk(url, args.seconds, script))
    finally:
        for proc, _ in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    bare, full = (statistics.median(results[k]) for k in ("bare", "full"))
    print(f"{'endpoint':<10}{'req/s (median)':>16}  rounds")
    for name in ("bare", "full"):
        rounds = ", ".join(f"{v:.0f}" for v in results[name])
        print(f"{name:<10}{statistics.median(results[name]):>16.0f}  {rounds}")
    print(f"ratio full/bare: {full / bare:.2f} (target >= 0.70), queue={args.queue}")
    print(
        json.dumps(
            {
                "bench": "webhook_throughput",
                "queue": args.queue,
                "bare_rps": bare,
                "full_rps": full,
                "ratio": round(full / bare, 3),
                "rounds": results,
            }
        )
    )


if __name__ == "__main__":
    main()
