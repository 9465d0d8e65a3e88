"""Isolation between integrations: one clinic's failure (a missing secret, a breaker that stays
open, a broken config file, a slow upstream) is that clinic's items' outcome — they wait,
counted and staged again — while every other clinic's intake, flush and work go on, and the
operator commands keep working and name the broken file."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import httpx2
import pytest

from app.core.config import ConfigProblem, load_integrations
from app.core.errors import CircuitOpen, ConfigurationError, UpstreamUnavailable
from app.core.models import Cadence, WorkItem
from app.core.settings import Settings
from app.queue.base import Message
from app.queue.topology import WORK_DLQ_SUBSCRIPTION, WORK_SUBSCRIPTION, WORK_TOPIC
from app.service.runtime import Runtime, build_runtime
from tests.cli.test_cli_errors import config_dir, run_cli, secrets_env
from tests.helpers import demo_runtime
from tests.workers.test_workers import FakeHealthie
from workers.consumer import Consumer, drain
from workers.flusher import flush
from workers.loop import WorkerLoop
from workers.pipeline import Outcome

NOW = datetime(2026, 11, 1, tzinfo=UTC)
SMALL = "small-clinic"


def two_clinics(tmp_path, transport, *, small_url: str = "http://healthie.test/graphql"):
    """The demo clinic and a second one, ``small-clinic``, whose API key secret is missing
    unless the test sets it."""
    rt = demo_runtime(tmp_path, http_transport=transport, work_max_delivery_attempts=2)
    demo = rt.integrations["demo-clinic"]
    rt.integrations[SMALL] = demo.model_copy(
        update={
            "id": SMALL,
            "healthie": demo.healthie.model_copy(
                update={"api_key_secret": f"{SMALL}/key", "api_url": small_url}
            ),
        }
    )
    return rt


def publish_work(rt: Runtime, integration_id: str, *patients: str, flush_id: str = "f") -> None:
    rt.queue.publish_many(
        WORK_TOPIC,
        [
            (
                WorkItem(
                    integration_id=integration_id,
                    patient_id=p,
                    flush_id=flush_id,
                    dirty_since=NOW,
                )
                .model_dump_json()
                .encode(),
                {"integration": integration_id},
            )
            for p in patients
        ],
    )


def test_a_missing_secret_makes_its_items_wait_and_the_other_clinic_is_processed(tmp_path):
    rt = two_clinics(tmp_path, httpx2.MockTransport(FakeHealthie()))
    publish_work(rt, SMALL, "1", "2", "3")
    publish_work(rt, "demo-clinic", "1", "2")
    counts = drain(rt)  # no ConfigurationError escapes
    assert (counts.processed, counts.waiting, counts.dead_lettered) == (2, 3, 0)
    assert set(rt.connectors("demo-clinic")["warehouse"].table("patients")) == {"1", "2"}
    # the small clinic's items wait in its pending set (the next flush publishes them) ...
    waiting = rt.state.list_pending(SMALL)
    assert [p.patient_id for p in waiting] == ["1", "2", "3"]
    assert all("waiting" in p.reasons for p in waiting)
    # ... and are neither queued nor dead-lettered
    assert rt.queue.pull(WORK_SUBSCRIPTION) == []
    assert rt.queue.pull(WORK_DLQ_SUBSCRIPTION) == []
    audited = rt.state.list_audit(SMALL)
    assert {a.outcome for a in audited} == {"waiting:configuration"}
    rt.close()


def test_the_worker_loop_keeps_running_for_the_other_clinics(tmp_path):
    rt = two_clinics(tmp_path, httpx2.MockTransport(FakeHealthie()))
    loop = WorkerLoop(rt, concurrency=2, batch_size=2, idle_wait=0.05)
    loop.start()
    try:
        publish_work(rt, SMALL, "1", "2")
        publish_work(rt, "demo-clinic", "1", "2", "3", "4")
        warehouse = rt.connectors("demo-clinic")["warehouse"]
        until = time.monotonic() + 20
        while len(warehouse.table("patients")) < 4 and time.monotonic() < until:
            time.sleep(0.05)
        assert set(warehouse.table("patients")) == {"1", "2", "3", "4"}
        assert loop.stopped_by is None
        # work that arrives later is still processed by the same threads
        publish_work(rt, "demo-clinic", "5")
        until = time.monotonic() + 20
        while "5" not in warehouse.table("patients") and time.monotonic() < until:
            time.sleep(0.05)
        assert "5" in warehouse.table("patients")
    finally:
        loop.stop(grace=10)
    assert {p.patient_id for p in rt.state.list_pending(SMALL)} == {"1", "2"}
    rt.close()


def test_a_waiting_clinic_is_published_again_by_its_next_flush_once_fixed(tmp_path):
    from app.secrets.stores import MemorySecretStore

    rt = two_clinics(tmp_path, httpx2.MockTransport(FakeHealthie()))
    publish_work(rt, SMALL, "1", "2")
    assert drain(rt).waiting == 2
    assert isinstance(rt.secrets, MemorySecretStore)
    rt.secrets.set(f"{SMALL}/key", "key")  # the operator restores the secret
    result = flush(rt, Cadence.DAILY)
    assert result.per_integration[SMALL] == 2
    assert drain(rt).processed == 2
    assert rt.state.list_pending(SMALL) == []
    rt.close()


def _message(attempt: int) -> Message:
    return Message("m", b"", {}, "a", attempt, NOW)


def test_an_open_breaker_on_the_last_attempt_waits_rather_than_dead_letters(tmp_path):
    rt = demo_runtime(tmp_path)
    consumer = Consumer.from_runtime(rt)  # 5 attempts by default
    item = WorkItem(integration_id="demo-clinic", patient_id="1", flush_id="f", dirty_since=NOW)
    breaker = Outcome(item, "failed", error=CircuitOpen("Healthie kept failing", retry_after=30))
    down = Outcome(item, "failed", error=UpstreamUnavailable("503"))
    assert consumer._decide(_message(1), breaker).action == "nack"
    assert consumer._decide(_message(5), breaker).action == "wait"
    # one item that kept failing on its own is still dead-lettered at the end
    assert consumer._decide(_message(5), down).action == "dead_letter"
    assert consumer._decide(_message(1), down).action == "nack"
    rt.close()


class SlowHost:
    """The fake Healthie, except that requests to ``slow.test`` hang until released."""

    def __init__(self) -> None:
        self.fake = FakeHealthie()
        self.release = threading.Event()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "slow.test":
            self.release.wait(30)
        return self.fake(request)


def test_a_slow_clinic_never_holds_another_clinics_items_in_the_same_batch(tmp_path):
    host = SlowHost()
    rt = two_clinics(tmp_path, httpx2.MockTransport(host), small_url="http://slow.test/graphql")
    from app.secrets.stores import MemorySecretStore

    assert isinstance(rt.secrets, MemorySecretStore)
    rt.secrets.set(f"{SMALL}/key", "key")
    publish_work(rt, SMALL, "1", "2", "3")  # first in the batch
    publish_work(rt, "demo-clinic", "1", "2")
    messages = rt.queue.pull(WORK_SUBSCRIPTION, 10)
    assert len(messages) == 5
    consumer = Consumer.from_runtime(rt)
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(consumer.process_batch(messages)))
    worker.start()
    try:
        warehouse = rt.connectors("demo-clinic")["warehouse"]
        until = time.monotonic() + 10
        while len(warehouse.table("patients")) < 2 and time.monotonic() < until:
            time.sleep(0.02)
        # the demo clinic's items were written while the small clinic's fetch still hangs
        assert set(warehouse.table("patients")) == {"1", "2"}
        assert not done
    finally:
        host.release.set()
        worker.join(30)
    assert done
    rt.close()


def test_a_broken_config_file_is_reported_and_the_others_load(tmp_path):
    folder = config_dir(tmp_path)
    (folder / "broken.toml").write_text("id = 'broken-clinic'\ncadence = [unterminated\n")
    (folder / "bad.toml").write_text('id = "bad-clinic"\ncadence = "monthly"\n')
    with pytest.raises(ConfigurationError):
        load_integrations(folder)  # strict by default (validate, reload)
    problems: list[ConfigProblem] = []
    found = load_integrations(folder, problems)
    assert list(found) == ["demo-clinic"]
    assert {(p.path.name, p.integration_id) for p in problems} == {
        ("bad.toml", "bad-clinic"),
        ("broken.toml", None),  # not even TOML: no id to name
    }
    assert all(str(p.path) in p.message for p in problems)

    rt = build_runtime(Settings(config_dir=folder, data_dir=tmp_path / "data"))
    try:
        assert list(rt.integrations) == ["demo-clinic"]
        assert {p.integration_id for p in rt.config_problems} == {"bad-clinic", None}
        with pytest.raises(ConfigurationError, match=r"'bad-clinic' is not loaded: .*bad\.toml"):
            rt.integration("bad-clinic")
    finally:
        rt.close()


def test_a_refused_target_is_reported_and_the_integration_stays_loaded(tmp_path):
    folder = config_dir(tmp_path)
    text = (folder / "demo-clinic.toml").read_text()
    other = text.replace('id = "demo-clinic"', 'id = "other-clinic"')
    other = other.replace('connector = "sqlite"', 'connector = "no-such-connector"')
    assert other != text
    (folder / "other-clinic.toml").write_text(other)
    rt = build_runtime(Settings(config_dir=folder, data_dir=tmp_path / "data"))
    try:
        assert sorted(rt.integrations) == ["demo-clinic", "other-clinic"]
        (problem,) = rt.config_problems
        assert problem.integration_id == "other-clinic"
        assert "no-such-connector" in problem.message
    finally:
        rt.close()


def test_operator_commands_work_beside_a_broken_file(tmp_path):
    folder = config_dir(tmp_path)
    (folder / "broken.toml").write_text("cadence = [unterminated\n")
    env = {
        **secrets_env(),
        "HEALTHIE_SYNC_CONFIG_DIR": str(folder),
        "HEALTHIE_SYNC_DATA_DIR": str(tmp_path / "data"),
    }
    done = run_cli("runs", env=env)
    assert done.returncode == 0, done.stderr
    assert "broken.toml" in done.stderr  # reported, not hidden
