"""Replay does what the operator means: a replay after fixing the plan decides again and
writes; ``--stored-plan`` / ``--decide-again`` force either; the preview says which, per item.
Both backends (``tests.backends``)."""

from __future__ import annotations

import json

import httpx2
import pytest

from tests.backends import (  # noqa: F401 - the fixtures
    backend_fixture,
    firestore_emulator,
    pubsub_emulator,
)
from tests.helpers import REPO, demo_runtime
from tests.workers.test_workers import FakeHealthie, work
from workers.consumer import drain
from workers.replay import ReplayFilter, list_dead_letters, replay
from workers.rules import rules_version

PLAN = REPO / "prompts" / "plans" / "demo-clinic.plan.json"


@pytest.fixture
def fake():
    return FakeHealthie()


@pytest.fixture
def plan_file(tmp_path):
    """A copy of the demo plan whose ``active`` column gets a string: the warehouse declares
    it boolean, so validation refuses the plan (fatal: dead-lettered with the plan)."""
    body = json.loads(PLAN.read_text())
    body["operations"][0]["args"]["values"]["fields"]["active"] = {"const": "maybe"}
    path = tmp_path / "demo-clinic.plan.json"
    path.write_text(json.dumps(body, indent=2))
    return path


def _start(tmp_path, fake, backend, plan_file):
    """A runtime (a fresh process) on the backend's durable queue and state, with the plan."""
    rt = demo_runtime(
        tmp_path,
        http_transport=httpx2.MockTransport(fake),
        queue=backend.make_queue(),
        state=backend.make_state(),
    )
    integration = rt.integrations["demo-clinic"]
    rt.integrations["demo-clinic"] = integration.model_copy(
        update={"agent": integration.agent.model_copy(update={"plan": plan_file})}
    )
    return rt


def test_a_replay_after_fixing_the_plan_decides_again_and_writes(
    tmp_path, fake, backend, plan_file
):
    rt = _start(tmp_path, fake, backend, plan_file)
    work(rt, "1")
    assert drain(rt).dead_lettered == 1
    (dead,) = list_dead_letters(rt.state)
    assert (dead.error_kind, dead.has_plan) == ("plan_invalid", True)
    assert dead.rules_version == rules_version(rt.integrations["demo-clinic"])
    # Nothing fixed yet: the default would re-execute the stored plan.
    (item,) = replay(rt, ReplayFilter()).selected
    assert (item.decision, item.why) == (
        "stored_plan",
        "rules and entry unchanged since the failure",
    )
    rt.close()

    plan_file.write_text(PLAN.read_text())  # the operator fixes the plan, restarts
    rt = _start(tmp_path, fake, backend, plan_file)
    preview = replay(rt, ReplayFilter())
    assert [(i.decision, i.why) for i in preview.selected] == [
        ("decide_again", "the rules changed since the failure")
    ]
    assert len(list_dead_letters(rt.state)) == 1  # the preview changed nothing

    done = replay(rt, ReplayFilter(), preview=False, rate_per_second=0)
    assert (done.replayed, done.missing) == (1, [])
    counts = drain(rt)
    assert (counts.processed, counts.dead_lettered) == (1, 0)
    row = rt.connectors("demo-clinic")["warehouse"].table("patients")["1"]
    assert row["active"] is True  # decided by the fixed plan, not the stored broken one
    assert list_dead_letters(rt.state) == []
    rt.close()


def test_forced_modes_override_the_default_per_item(tmp_path, fake, backend, plan_file):
    rt = _start(tmp_path, fake, backend, plan_file)
    work(rt, "1")
    drain(rt)
    plan_file.write_text(PLAN.read_text())
    rt.close()
    rt = _start(tmp_path, fake, backend, plan_file)

    (stored,) = replay(rt, ReplayFilter(), mode="stored_plan").selected
    assert (stored.decision, stored.why) == ("stored_plan", "forced by --stored-plan")
    (again,) = replay(rt, ReplayFilter(), mode="decide_again").selected
    assert (again.decision, again.why) == ("decide_again", "forced by --decide-again")

    # Forcing the stored (broken) plan re-executes it: it fails the same way again.
    assert replay(rt, ReplayFilter(), preview=False, mode="stored_plan", rate_per_second=0).replayed
    assert drain(rt).dead_lettered == 1
    (dead,) = list_dead_letters(rt.state)
    assert (dead.error_kind, dead.replay_of is not None) == ("plan_invalid", True)
    rt.close()
