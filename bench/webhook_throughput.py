"""Webhook intake throughput: the real receiver (verify, dedupe, publish) vs a bare FastAPI
endpoint, on the embedded queue and on the Pub/Sub emulator.

Every server runs under identical uvicorn settings (one process, pinned to CPU 0 when taskset
exists), loaded by wrk (pinned to CPU 1, with the emulator) on loopback, rounds alternating
between servers so machine noise hits them alike. Each request is a distinct, validly signed
delivery read from a pre-generated file (HMAC cannot be computed in wrk's Lua), so the engine's
de-duplication is on, as in production, and pays its real cost: no request is a repeat (the
engine's ``/healthz`` tally is read afterwards and the duplicates it saw are reported).
Reports requests/s of each server and the ratios full / bare (issue 19's target: >= 0.8).

    python -m bench.webhook_throughput [--rounds 3] [--seconds 5] [--queue both|sqlite|pubsub]

The last line printed is one JSON object: ``{"bench": "ingest", "ratio": <embedded queue>,
"ratio_pubsub": <emulator, or null when gcloud is missing>, ...}``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
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
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx2

from app.service.serving import free_port
from bench.webhook_apps import DEDUPE_SECONDS, SECRET

PATH = "/webhooks/healthie/demo-clinic"
#: Requests one wrk run may send before the pre-generated deliveries repeat (per second).
CAPACITY_PER_SECOND = 8_000
#: Pre-generated deliveries are read by wrk's Lua: one tab-separated line each.
LUA = r"""
local lines, index = {}, 1
function init(args)
  for line in io.lines(args[1]) do lines[#lines + 1] = line end
  index = tonumber(args[2]) + 1
end
function request()
  local line = lines[(index - 1) % #lines + 1]
  index = index + 1
  local body, digest, signature = line:match("([^\t]*)\t([^\t]*)\t([^\t]*)")
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["Content-Digest"] = digest,
    ["Signature"] = signature,
  }, body)
end
"""


def delivery(resource_id: int) -> tuple[bytes, dict[str, str]]:
    """A distinct, validly signed ``patient.updated`` delivery for the demo integration."""
    body = json.dumps(
        {
            "resource_id": str(resource_id),
            "resource_id_type": "User",
            "event_type": "patient.updated",
            "changed_fields": ["phone_number"],
        }
    ).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    data = f"post {PATH}  {digest} application/json {len(body)}"
    mac = hmac.new(SECRET.encode(), data.encode(), hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "Content-Digest": f"SHA-256={digest}",
        "Signature": f"sig1={mac}",
    }
    return body, headers


def _write_deliveries(path: Path, count: int) -> None:
    with path.open("w") as out:
        for n in range(count):
            body, headers = delivery(10_000_000 + n)
            out.write(f"{body.decode()}\t{headers['Content-Digest']}\t{headers['Signature']}\n")


def _pin(cpu: int) -> list[str]:
    cpus = os.cpu_count() or 1
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and cpus >= 2 else []


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
    body, headers = delivery(1)  # the warm-up's own delivery, never in the wrk file
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx2.post(url + PATH, content=body, headers=headers, timeout=2)
            return proc, url
        except httpx2.TransportError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"{factory} did not start")


def _wrk(url: str, seconds: int, script: Path, lines: Path, offset: int) -> float:
    out = subprocess.run(
        [
            *_pin(1),
            "wrk",
            "-t1",
            "-c16",
            f"-d{seconds}s",
            "-s",
            str(script),
            url + PATH,
            "--",
            str(lines),
            str(offset),
        ],
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


def _emulator_answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def _pubsub_emulator(work: Path) -> Iterator[str | None]:
    """The Pub/Sub emulator on a free port (pinned with the load generator), or None without
    gcloud."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        yield None
        return
    host = f"127.0.0.1:{free_port()}"
    with (work / "emulator.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                *_pin(1),
                gcloud,
                "beta",
                "emulators",
                "pubsub",
                "start",
                "--project=bench-project",
                f"--host-port={host}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while not _emulator_answers(host):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Pub/Sub emulator did not start")
            time.sleep(0.2)
        yield host
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _duplicates(url: str) -> int:
    intake = httpx2.get(url + "/healthz", timeout=5).json()["intake"]
    return int(intake.get("duplicate", 0))


def main(argv: Sequence[str] = ()) -> None:
    """Run the comparison; print a table, then one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--queue", choices=["both", "sqlite", "pubsub"], default="both")
    args = parser.parse_args(list(argv))
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    capacity = CAPACITY_PER_SECOND * args.seconds
    lines = work / "deliveries.tsv"
    _write_deliveries(lines, capacity * args.rounds)
    script = work / "deliveries.lua"
    script.write_text(LUA)
    queues = ["sqlite", "pubsub"] if args.queue == "both" else [args.queue]
    results: dict[str, list[float]] = {"bare": []}
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        with _pubsub_emulator(work) if "pubsub" in queues else contextlib.nullcontext() as host:
            if host is None and "pubsub" in queues:
                print("pubsub: skipped (gcloud is not on PATH)")
                queues.remove("pubsub")
            env = {**os.environ, "BENCH_DATA_DIR": str(work)}
            servers["bare"] = _serve("bench.webhook_apps:bare_app", env)
            for queue in queues:
                queue_env = {**env, "BENCH_QUEUE": queue, "BENCH_DATA_DIR": str(work / queue)}
                if queue == "pubsub":
                    queue_env["PUBSUB_EMULATOR_HOST"] = str(host)
                servers[queue] = _serve("bench.webhook_apps:full_app", queue_env)
                results[queue] = []
            for round_ in range(args.rounds):
                for name, (_, url) in servers.items():
                    offset = 0 if name == "bare" else round_ * capacity
                    results[name].append(_wrk(url, args.seconds, script, lines, offset))
            duplicates = {q: _duplicates(servers[q][1]) for q in queues}
    finally:
        for proc, _ in servers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in results.items()}
    ratios = {q: round(medians[q] / medians["bare"], 3) for q in queues}
    print(f"{'endpoint':<10}{'req/s (median)':>16}  rounds")
    for name, values in results.items():
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<10}{medians[name]:>16.0f}  {rounds}")
    for queue in queues:
        print(f"ratio {queue}/bare: {ratios[queue]:.2f} (target >= 0.80)")
    print(
        json.dumps(
            {
                "bench": "ingest",
                "ratio": ratios.get("sqlite"),
                "ratio_pubsub": ratios.get("pubsub"),
                "bare_rps": medians["bare"],
                "sqlite_rps": medians.get("sqlite"),
                "pubsub_rps": medians.get("pubsub"),
                "dedupe_seconds": DEDUPE_SECONDS,
                "duplicates_seen": duplicates,
                "seconds": args.seconds,
                "rounds": results,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
