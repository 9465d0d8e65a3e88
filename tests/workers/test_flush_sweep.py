"""The missed-change sweep inside a flush, against the sandbox over HTTP: changes whose webhooks
never arrived are staged and processed; the watermark advances."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.core.models import Cadence
from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.server import create_app as sandbox_app
from tests.helpers import demo_runtime
from workers.consumer import drain
from workers.flusher import SWEEP_WATERMARK, flush


@pytest.fixture
def sandbox_and_runtime(tmp_path):
    # The sandbox clock advances a second per change; starting it a minute back keeps its
    # change timestamps inside the sweep window (between the watermark and now).
    sb = Sandbox(patients=60, seed=5, now=datetime.now(UTC) - timedelta(minutes=1))
    with serve_in_thread(sandbox_app(sb)) as url:
        rt = demo_runtime(
            tmp_path, api_url=f"{url}/graphql", api_key=sb.api_key, webhook_secret=sb.webhook_secret
        )
        yield sb, rt
        rt.close()


def test_sweep_finds_changes_whose_webhooks_were_lost(sandbox_and_runtime):
    sb, rt = sandbox_and_runtime
    assert flush(rt, Cadence.DAILY).swept == 0  # first flush only sets the watermark
    first = rt.state.get_watermark("demo-clinic", SWEEP_WATERMARK)
    assert first is not None
    patient = sorted(sb.org.patient_ids())[3]
    sb.update_client(patient, phone_number="+1 555 010 9999")  # no webhook is registered
    result = flush(rt, Cadence.DAILY)
    assert result.marks == 0
    assert result.swept >= 1
    assert result.work_items == result.swept
    counts = drain(rt)
    assert counts.processed == result.work_items
    assert rt.state.get_patient("demo-clinic", patient) is not None
    assert rt.state.get_watermark("demo-clinic", SWEEP_WATERMARK) > first


def test_sweep_can_be_turned_off(sandbox_and_runtime):
    sb, rt = sandbox_and_runtime
    integration = rt.integrations["demo-clinic"]
    rt.integrations["demo-clinic"] = integration.model_copy(
        update={"healthie": integration.healthie.model_copy(update={"sweep": False})}
    )
    rt.state.set_watermark("demo-clinic", SWEEP_WATERMARK, datetime.now(UTC) - timedelta(hours=1))
    sb.apply_random_changes(3, seed=2)
    assert flush(rt, Cadence.DAILY).swept == 0


def test_applied_tag_marks_without_user_id_resolve_to_their_patient(sandbox_and_runtime):
    from app.core.models import DirtyMark, SubjectKind
    from app.queue.topology import DIRTY_TOPIC

    sb, rt = sandbox_and_runtime
    patient = sorted(sb.org.patient_ids())[5]
    change = sb.apply_tag(patient, sorted(sb.org.tags)[0])
    applied_tag_id = next(
        e.resource_id for e in change.events if e.event_type == "applied_tag.created"
    )
    for subject in (str(applied_tag_id), "no-such-applied-tag"):
        rt.queue.publish(
            DIRTY_TOPIC,
            DirtyMark(
                integration_id="demo-clinic",
                subject_kind=SubjectKind.APPLIED_TAG,
                subject_id=subject,
                reason="applied_tag.created",
                received_at=datetime.now(UTC),
            )
            .model_dump_json()
            .encode(),
            {"integration": "demo-clinic", "cadence": "daily"},
        )
    result = flush(rt, Cadence.DAILY)
    assert (result.marks, result.unresolved_marks) == (2, 1)
    assert result.work_items == 1
    drain(rt)
    assert rt.state.get_patient("demo-clinic", patient) is not None
