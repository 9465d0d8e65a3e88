"""A fake Anthropic Messages API for tests and benchmarks, served over real HTTP.

The real ``anthropic`` SDK talks to it through ``base_url``. What it implements:

* ``GET /v1/models`` — one model; a key starting ``revoked`` gets 401 (``doctor``'s check).
* ``POST /v1/messages`` — answers with one ``tool_use`` block whose input comes from a *scripted
  model*: a callable the test passes in, receiving the request body and returning the tool input
  (``demo_plan_model`` runs the committed demo plan on the entry in the user turn). Usage counts
  tokens approximately as characters / 4 and emulates prompt caching: the request up to its last
  ``cache_control`` breakpoint (tools, then system, then messages) is a cache write the first
  time that exact prefix is seen and a cache read afterwards, if it reaches
  ``min_cacheable_tokens``.
* Scripted failures: ``fail_next(429, "rate_limit_error", retry_after=...)``, 529
  ``overloaded_error``, or any status, consumed by the next ``/v1/messages`` requests.
* Message Batches: create, retrieve (``in_progress`` for ``batch_polls`` polls, then ``ended``),
  results as JSON Lines, cancel, delete; per-item outcomes scripted with ``batch_outcome``;
  the whole endpoint answers 404 with ``batches_enabled=False``.
* ``counts``: requests per endpoint; ``requests``: every ``/v1/messages`` body received.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx2
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

ModelFn = Callable[[dict[str, Any]], dict[str, Any]]


def approx_tokens(value: Any) -> int:
    """Tokens as characters / 4 of the compact JSON (an approximation, stated as such)."""
    text = (
        value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    )
    return max(1, len(text) // 4) if text else 0


@dataclass
class ScriptedError:
    status: int
    error_type: str
    retry_after: float | None = None


def _blocks(body: dict[str, Any]) -> list[Any]:
    """The request in prompt-cache order: tools, system blocks, message content blocks."""
    out: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    if isinstance(system, str):
        out.append({"type": "text", "text": system})
    elif system:
        out.extend(system)
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            out.append({"type": "text", "text": content, "role": message["role"]})
        else:
            out.extend(content)
    return out


def first_user_text(body: dict[str, Any]) -> str:
    """The text of the first user turn (where the engine puts the entry)."""
    content = body["messages"][0]["content"]
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


class FakeAnthropic:
    """State and behaviour of one fake API; ``app()`` builds the FastAPI app serving it."""

    def __init__(
        self,
        model: ModelFn,
        *,
        min_cacheable_tokens: int = 1024,
        batch_polls: int = 2,
        batches_enabled: bool = True,
        batch_outcome: Callable[[str], str] | None = None,
        output_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.min_cacheable_tokens = min_cacheable_tokens
        self.batch_polls = batch_polls
        self.batches_enabled = batches_enabled
        self.batch_outcome = batch_outcome or (lambda custom_id: "succeeded")
        self.output_tokens = output_tokens
        self.counts: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.batches: dict[str, dict[str, Any]] = {}
        self._errors: deque[ScriptedError] = deque()
        self._cache: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # -- scripting ----------------------------------------------------------------------------

    def fail_next(
        self, status: int, error_type: str, *, retry_after: float | None = None, times: int = 1
    ) -> None:
        """The next ``times`` ``/v1/messages`` requests fail with ``status``."""
        for _ in range(times):
            self._errors.append(ScriptedError(status, error_type, retry_after))

    # -- model ---------------------------------------------------------------------------------

    def usage(self, body: dict[str, Any]) -> dict[str, int]:
        blocks = _blocks(body)
        marks = [i for i, b in enumerate(blocks) if isinstance(b, dict) and b.get("cache_control")]
        total = approx_tokens(blocks)
        write = read = 0
        if marks:
            prefix = blocks[: marks[-1] + 1]
            prefix_tokens = approx_tokens(prefix)
            if prefix_tokens >= self.min_cacheable_tokens:
                key = hashlib.sha256(
                    (body.get("model", "") + json.dumps(prefix, sort_keys=True)).encode()
                ).hexdigest()
                with self._lock:
                    hit = key in self._cache
                    self._cache.add(key)
                if hit:
                    read = prefix_tokens
                else:
                    write = prefix_tokens
        return {
            "input_tokens": max(0, total - read - write),
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
            "output_tokens": 0,
        }

    def message(self, body: dict[str, Any]) -> dict[str, Any]:
        """The Message the scripted model answers ``body`` with."""
        tool_input = self.model(body)
        tool_name = (body.get("tool_choice") or {}).get("name") or body["tools"][0]["name"]
        usage = self.usage(body)
        usage["output_tokens"] = self.output_tokens or approx_tokens(tool_input) + 20
        number = next(self._ids)
        return {
            "id": f"msg_fake_{number:06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": [
                {
                    "type": "tool_use",
                    "id": f"toolu_fake_{number:06d}",
                    "name": tool_name,
                    "input": tool_input,
                }
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": usage,
        }

    # -- HTTP ----------------------------------------------------------------------------------

    @staticmethod
    def error(
        status: int, error_type: str, message: str, retry_after: float | None = None
    ) -> JSONResponse:
        headers = {"request-id": "req_fake"}
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        return JSONResponse(
            {
                "type": "error",
                "error": {"type": error_type, "message": message},
                "request_id": "req_fake",
            },
            status_code=status,
            headers=headers,
        )

    def _batch_json(self, batch: dict[str, Any], base_url: str) -> dict[str, Any]:
        ended = batch["ended"]
        n = len(batch["requests"])
        counts = {
            "processing": 0 if ended else n,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        if ended:
            for line in batch["results"]:
                counts[line["result"]["type"]] += 1
        return {
            "id": batch["id"],
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": batch["created_at"],
            "expires_at": batch["expires_at"],
            "ended_at": batch["created_at"] if ended else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{base_url}v1/messages/batches/{batch['id']}/results"
            if ended
            else None,
        }

    def _finish(self, batch: dict[str, Any]) -> None:
        results = []
        for request in batch["requests"]:
            outcome = self.batch_outcome(request["custom_id"])
            if outcome == "succeeded":
                result: dict[str, Any] = {
                    "type": "succeeded",
                    "message": self.message(request["params"]),
                }
            elif outcome == "errored":
                result = {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {"type": "api_error", "message": "scripted batch item error"},
                    },
                }
            else:
                result = {"type": outcome}
            results.append({"custom_id": request["custom_id"], "result": result})
        results.reverse()  # results come in any order: the engine must match by custom_id
        batch["results"] = results
        batch["ended"] = True

    def app(self) -> FastAPI:
        """The FastAPI app serving this fake."""
        app = FastAPI()

        @app.get("/v1/models")
        def list_models(request: Request) -> Response:
            # doctor's key check; a key starting "revoked" is refused as Anthropic would
            self.counts["models"] += 1
            # the SDK sends the key as x-api-key or (2.x) as a bearer token
            key = request.headers.get("x-api-key") or request.headers.get("authorization", "")
            if key.removeprefix("Bearer ").startswith("revoked"):
                return self.error(401, "authentication_error", "invalid x-api-key")
            model = {
                "type": "model",
                "id": "claude-sonnet-4-5",
                "display_name": "Claude Sonnet 4.5",
                "created_at": "2025-09-29T00:00:00Z",
            }
            return JSONResponse(
                {
                    "data": [model],
                    "has_more": False,
                    "first_id": model["id"],
                    "last_id": model["id"],
                }
            )

        @app.post("/v1/messages")
        def create_message(body: dict[str, Any]) -> Response:
            with self._lock:
                self.counts["messages"] += 1
                self.requests.append(body)
                scripted = self._errors.popleft() if self._errors else None
            if scripted is not None:
                return self.error(
                    scripted.status, scripted.error_type, "scripted failure", scripted.retry_after
                )
            if not body.get("tools") or not body.get("tool_choice"):
                return self.error(400, "invalid_request_error", "fake expects forced tool use")
            return JSONResponse(self.message(body))

        @app.post("/v1/messages/batches")
        def create_batch(body: dict[str, Any], request: Request) -> Response:
            with self._lock:
                self.counts["batches.create"] += 1
            if not self.batches_enabled:
                return self.error(404, "not_found_error", "batches are not available")
            now = datetime.now(UTC)
            batch = {
                "id": f"msgbatch_fake_{next(self._ids):06d}",
                "requests": body["requests"],
                "polls_left": self.batch_polls,
                "ended": False,
                "results": [],
                "created_at": now.isoformat(),
                "expires_at": (now + timedelta(hours=24)).isoformat(),
            }
            with self._lock:
                self.batches[batch["id"]] = batch
            return JSONResponse(self._batch_json(batch, str(request.base_url)))

        @app.get("/v1/messages/batches/{batch_id}")
        def retrieve_batch(batch_id: str, request: Request) -> Response:
            with self._lock:
                self.counts["batches.retrieve"] += 1
                batch = self.batches.get(batch_id)
                if batch is not None and not batch["ended"]:
                    if batch["polls_left"] > 0:
                        batch["polls_left"] -= 1
                    else:
                        self._finish(batch)
            if batch is None:
                return self.error(404, "not_found_error", "no such batch")
            return JSONResponse(self._batch_json(batch, str(request.base_url)))

        @app.get("/v1/messages/batches/{batch_id}/results")
        def batch_results(batch_id: str) -> Response:
            with self._lock:
                self.counts["batches.results"] += 1
                batch = self.batches.get(batch_id)
            if batch is None or not batch["ended"]:
                return self.error(404, "not_found_error", "results not available")
            text = "".join(json.dumps(line) + "\n" for line in batch["results"])
            return Response(text, media_type="application/binary")

        @app.delete("/v1/messages/batches/{batch_id}")
        def delete_batch(batch_id: str) -> Response:
            with self._lock:
                self.counts["batches.delete"] += 1
                batch = self.batches.get(batch_id)
                if batch is None or not batch["ended"]:
                    return self.error(
                        400 if batch else 404,
                        "invalid_request_error",
                        "only ended batches can be deleted",
                    )
                batch["deleted"] = True
            return JSONResponse({"id": batch_id, "type": "message_batch_deleted"})

        @app.post("/v1/messages/batches/{batch_id}/cancel")
        def cancel_batch(batch_id: str, request: Request) -> Response:
            with self._lock:
                self.counts["batches.cancel"] += 1
                batch = self.batches.get(batch_id)
                if batch is not None and not batch["ended"]:
                    for item in batch["requests"]:
                        item.setdefault("_canceled", True)
                    batch["results"] = [
                        {"custom_id": r["custom_id"], "result": {"type": "canceled"}}
                        for r in batch["requests"]
                    ]
                    batch["ended"] = True
            if batch is None:
                return self.error(404, "not_found_error", "no such batch")
            return JSONResponse(self._batch_json(batch, str(request.base_url)))

        return app


# -- scripted models ---------------------------------------------------------------------------


REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config" / "integrations" / "demo-clinic.toml"
DEMO_PLAN = REPO / "prompts" / "plans" / "demo-clinic.plan.json"


def plan_to_tool_input(plan: Any) -> dict[str, Any]:
    """A WritePlan as the ``submit_write_plan`` input a model would send."""
    return {
        "action": plan.action,
        "skip_reason": plan.skip_reason,
        "rationale": "instructions 1-4 applied (scripted model)",
        "operations": [
            {"target": o.target, "operation": o.operation, "args": o.args} for o in plan.operations
        ],
    }


def plan_model(plan_path: Path = DEMO_PLAN, config: Path = DEMO_CONFIG) -> ModelFn:
    """A "model" that answers like a perfect one: it runs a compiled plan on the entry in the
    request's first user turn and returns the plan as ``submit_write_plan`` input."""
    from app.agent.plan import PlanAgent
    from app.agent.prompt import extract_entry
    from app.core.config import load_integration
    from app.core.models import Entry
    from app.healthie.entry import content_hash

    agent = PlanAgent.from_file(plan_path)
    integration = load_integration(config)

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        data = extract_entry(first_user_text(body))
        entry = Entry(
            integration_id=integration.id,
            patient_id=str(data["id"]),
            data=data,
            content_hash=content_hash(data),
            fetched_at=datetime.now(UTC),
        )
        return plan_to_tool_input(agent.decide(integration, entry, None))

    return answer


@contextmanager
def serve(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    """Serve ``fake`` on loopback and yield a real SDK client pointed at it."""
    from app.service.serving import serve_in_thread

    with serve_in_thread(fake.app()) as url, httpx2.Client(timeout=30) as http:
        client = anthropic.Anthropic(
            api_key="sk-ant-fake", base_url=url, http_client=http, max_retries=0
        )
        yield client


def demo_entry(patient_id: str = "42", **overrides: Any) -> Any:
    """A synthetic demo-clinic entry (made-up data, no real patient) as an ``Entry``."""
    from app.core.models import Entry
    from app.healthie.entry import canonicalize, content_hash

    data = canonicalize(
        {
            "id": patient_id,
            "first_name": "Zoë",
            "last_name": "Núñez",
            "email": f" Zoe.{patient_id}@Example.COM ",
            "phone_number": "(555) 123-4567",
            "dob": "1980-02-03",
            "active": True,
            "metadata": None,
            "user_group": {"id": "1", "name": "Weight care"},
            "dietitian": {"id": "9", "full_name": "Dr. Ada"},
            "active_tags": [{"id": "2", "name": "vip"}, {"id": "1", "name": "asthma"}],
            "policies": [{"id": "3", "insurance_plan": {"payer_name": "Aetna"}}],
            "appointments": [
                {
                    "id": f"{patient_id}00",
                    "date": "2026-10-01 10:00:00 -0400",
                    "pm_status": "Occurred",
                    "deleted_at": None,
                    "appointment_type": {"name": "Initial"},
                    "provider": {"full_name": "Dr. Ada"},
                    "contact_type": "Video Call",
                },
            ],
            **overrides,
        }
    )
    return Entry(
        integration_id="demo-clinic",
        patient_id=patient_id,
        data=data,
        content_hash=content_hash(data),
        fetched_at=datetime.now(UTC),
    )
