"""Configuration changes reach a running runtime without a rebuild, and only valid ones: an edit
of an integration file, its plan or its instructions is validated and swapped in at once; a
broken edit is reported once and the previous configuration keeps running; the clients of a
changed integration are rebuilt from the new files and the old ones closed later, while an
unchanged integration keeps its own. The config directory is laid out as on Cloud Run's mounted
volume (integrations, prompts and plans side by side)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest

from app.core.config import load_integrations
from app.core.settings import Settings
from app.queue.sqlite import SqliteQueue
from app.queue.topology import ensure_topology
from app.secrets.stores import MemorySecretStore
from app.service.reload import ConfigReloader
from app.service.runtime import Runtime
from app.state.sqlite import SqliteStateStore
from tests.helpers import REPO

SECRETS = {
    "demo-clinic/healthie-api-key": "key",
    "demo-clinic/webhook-signing-secret": "whsec_test",
    "other-clinic/healthie-api-key": "key2",
    "other-clinic/webhook-signing-secret": "whsec_other",
}


def write_config(root: Path, warehouse: Path) -> Path:
    """``root/integrations/*.toml`` naming ``root/prompts`` and ``root/plans``: one volume."""
    (root / "integrations").mkdir(parents=True)
    (root / "prompts").mkdir()
    (root / "plans").mkdir()
    shutil.copy(REPO / "prompts" / "examples" / "demo-clinic.md", root / "prompts")
    shutil.copy(REPO / "prompts" / "plans" / "demo-clinic.plan.json", root / "plans")
    text = (REPO / "config" / "integrations" / "demo-clinic.toml").read_text(encoding="utf-8")
    text = text.replace("../../prompts/examples/", "../prompts/")
    text = text.replace("../../prompts/plans/", "../plans/")
    text = text.replace(".healthie-sync/demo/warehouse.db", str(warehouse))
    (root / "integrations" / "demo-clinic.toml").write_text(text, encoding="utf-8")
    other = text.replace('id = "demo-clinic"', 'id = "other-clinic"').replace(
        "demo-clinic/", "other-clinic/"
    )
    (root / "integrations" / "other-clinic.toml").write_text(other, encoding="utf-8")
    return root / "integrations"


@pytest.fixture
def runtime(tmp_path):
    config_dir = write_config(tmp_path / "config", tmp_path / "warehouse.db")
    queue = SqliteQueue(":memory:")
    ensure_topology(queue)
    rt = Runtime(
        settings=Settings(config_dir=config_dir, data_dir=tmp_path),
        integrations=load_integrations(config_dir),
        secrets=MemorySecretStore(SECRETS),
        queue=queue,
        state=SqliteStateStore(":memory:"),
    )
    yield rt
    rt.close()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def toml(rt: Runtime, name: str = "demo-clinic") -> Path:
    return rt.settings.config_dir / f"{name}.toml"


def test_nothing_changed_is_nothing_to_do(runtime):
    result = ConfigReloader(runtime).check()
    assert not result.changed
    assert not result.applied


def test_a_valid_edit_is_swapped_in_and_only_its_clients_are_rebuilt(runtime):
    reloader = ConfigReloader(runtime)
    demo, other = runtime.clients("demo-clinic"), runtime.clients("other-clinic")
    assert demo.integration.healthie.batch_size == 20
    edit(toml(runtime), "batch_size = 20", "batch_size = 9")
    result = reloader.check()
    assert result.applied
    assert result.integrations == ("demo-clinic",)
    assert runtime.integrations["demo-clinic"].healthie.batch_size == 9
    rebuilt = runtime.clients("demo-clinic")
    assert rebuilt is not demo  # built again, from the new file
    assert rebuilt.integration.healthie.batch_size == 9
    assert runtime.clients("other-clinic") is other  # untouched integration keeps its clients
    assert not reloader.check().changed  # applied once


def test_a_broken_edit_is_reported_once_and_the_old_configuration_keeps_running(runtime, caplog):
    reloader = ConfigReloader(runtime)
    before = runtime.integrations
    clients = runtime.clients("demo-clinic")
    edit(toml(runtime), 'cadence = "daily"', 'cadence = "monthly"\nbatchsize = 3')
    with caplog.at_level(logging.ERROR, logger="app.service.reload"):
        result = reloader.check()
        again = reloader.check()
    assert result.changed
    assert not result.applied
    assert any("demo-clinic.toml" in p and "cadence" in p for p in result.problems)
    assert runtime.integrations is before  # nothing swapped
    assert runtime.clients("demo-clinic") is clients
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1  # the same broken state is not reported at every interval
    assert not again.applied
    # fixing it applies the fixed configuration
    edit(toml(runtime), 'cadence = "monthly"\nbatchsize = 3', 'cadence = "weekly"')
    fixed = reloader.check()
    assert fixed.applied
    assert runtime.integrations["demo-clinic"].cadence.value == "weekly"


def test_an_unresolvable_secret_reference_is_refused(runtime):
    reloader = ConfigReloader(runtime)
    edit(toml(runtime), '"demo-clinic/healthie-api-key"', '"demo-clinic/new-api-key"')
    result = reloader.check()
    assert not result.applied
    assert any("api_key_secret" in p or "new-api-key" in p for p in result.problems)
    assert runtime.integrations["demo-clinic"].healthie.api_key_secret.endswith("healthie-api-key")


def test_a_plan_edit_rebuilds_that_integrations_agent_only(runtime):
    reloader = ConfigReloader(runtime)
    plan = runtime.integrations["demo-clinic"].agent.plan
    assert plan is not None
    # the TOML stays as it is; the plan it names lives on the same volume. Give demo-clinic a
    # plan of its own first (both integrations share the demo's), then edit only that plan.
    own = plan.with_name("demo-own.plan.json")
    shutil.copy(plan, own)
    edit(toml(runtime), "demo-clinic.plan.json", "demo-own.plan.json")
    assert reloader.check().applied
    demo, other = runtime.clients("demo-clinic"), runtime.clients("other-clinic")
    agent, other_agent = demo.agent, other.agent
    edit(own, "(instruction 4)", "(instruction 4, edited on the volume)")
    result = reloader.check()
    assert result.changed
    assert result.integrations == ("demo-clinic",), result.problems
    assert runtime.clients("demo-clinic").agent is not agent  # built again from the new plan
    assert runtime.clients("other-clinic").agent is other_agent


def test_an_instruction_edit_outside_the_integrations_folder_is_seen(runtime):
    reloader = ConfigReloader(runtime)
    instructions = runtime.integrations["demo-clinic"].agent.instructions
    assert instructions.parent.name == "prompts"  # beside, not inside, the config dir
    instructions.write_text(instructions.read_text() + "\nAlso: nothing new.\n")
    result = reloader.check()
    assert result.applied
    assert set(result.integrations) == {"demo-clinic", "other-clinic"}  # both name it


def test_added_and_removed_integrations(runtime):
    reloader = ConfigReloader(runtime)
    other = runtime.clients("other-clinic")
    closed = []
    other.close = lambda: closed.append("other-clinic")
    toml(runtime, "other-clinic").unlink()
    result = reloader.check()
    assert result.applied
    assert result.integrations == ("other-clinic",)
    assert set(runtime.integrations) == {"demo-clinic"}
    assert closed == []  # in-flight work may still hold the old clients
    reloader.stop()  # ... closed at the latest when the reloader stops
    assert closed == ["other-clinic"]


def test_retired_clients_are_closed_after_the_retire_period(runtime):
    now = [0.0]
    reloader = ConfigReloader(runtime, retire_after=300, clock=lambda: now[0])
    old = runtime.clients("demo-clinic")
    closed = []
    old.close = lambda: closed.append(True)
    edit(toml(runtime), "batch_size = 20", "batch_size = 12")
    assert reloader.check().applied
    now[0] = 299
    reloader.check()
    assert closed == []
    now[0] = 301
    reloader.check()
    assert closed == [True]


def test_the_watching_thread_applies_a_change_within_the_interval(runtime):
    reloader = ConfigReloader(runtime, interval=0.1)
    reloader.start()
    try:
        edit(toml(runtime), "batch_size = 20", "batch_size = 7")
        deadline = time.monotonic() + 5
        while runtime.integrations["demo-clinic"].healthie.batch_size != 7:
            assert time.monotonic() < deadline, "not reloaded within 5 s"
            time.sleep(0.05)
    finally:
        reloader.stop()


def test_without_an_interval_only_a_request_checks(runtime):
    reloader = ConfigReloader(runtime, interval=0)
    reloader.start()
    try:
        edit(toml(runtime), "batch_size = 20", "batch_size = 6")
        time.sleep(0.3)
        assert runtime.integrations["demo-clinic"].healthie.batch_size == 20
        reloader.request()  # what SIGHUP does (app.service.lifecycle)
        deadline = time.monotonic() + 5
        while runtime.integrations["demo-clinic"].healthie.batch_size != 6:
            assert time.monotonic() < deadline, "not reloaded after the request"
            time.sleep(0.05)
    finally:
        reloader.stop()
