"""The compiled-plan backend on the demo plan, and plan validation as a security boundary."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.agent.base import validate_plan
from app.agent.plan import PlanAgent
from app.core.config import load_integration
from app.core.errors import PlanValidationError
from app.core.models import Entry, WriteOperation, WritePlan
from app.healthie.entry import canonicalize, content_hash
from app.state.base import PatientState
from connectors.memory import MemoryConnector

REPO = Path(__file__).resolve().parents[2]
INTEGRATION = load_integration(REPO / "config" / "integrations" / "demo-clinic.toml")


def entry(**overrides) -> Entry:
    data = canonicalize(
        {
            "id": "42",
            "first_name": "Zoë",
            "last_name": "Núñez",
            "email": " Zoe@Example.COM ",
            "phone_number": "(555) 123-4567",
            "dob": "1980-02-03",
            "active": True,
            "user_group": {"id": "1", "name": "Weight care"},
            "dietitian": {"id": "9", "full_name": "Dr. Ada"},
            "active_tags": [{"id": "2", "name": "vip"}, {"id": "1", "name": "asthma"}],
            "policies": [{"id": "3", "insurance_plan": {"payer_name": "Aetna"}}],
            "appointments": [
                {
                    "id": "100",
                    "date": "2026-10-01 10:00:00 -0400",
                    "pm_status": "Occurred",
                    "deleted_at": None,
                    "appointment_type": {"name": "Initial"},
                    "provider": {"full_name": "Dr. Ada"},
                    "contact_type": "Video Call",
                },
                {
                    "id": "101",
                    "date": "2026-12-01 10:00:00 -0400",
                    "pm_status": None,
                    "deleted_at": "2026-10-02 10:00:00 -0400",
                    "appointment_type": None,
                    "provider": None,
                    "contact_type": None,
                },
            ],
            **overrides,
        }
    )
    return Entry(
        integration_id="demo-clinic",
        patient_id="42",
        data=data,
        content_hash=content_hash(data),
        fetched_at=datetime.now(UTC),
    )


@pytest.fixture(scope="module")
def agent() -> PlanAgent:
    plan = INTEGRATION.agent.plan
    assert plan is not None
    return PlanAgent.from_file(plan, INTEGRATION.agent.instructions)


def test_demo_plan_maps_the_patient_and_appointments(agent):
    plan = agent.decide(INTEGRATION, entry(), None)
    ops = [(o.operation, o.args["table"], o.args["key"]) for o in plan.operations]
    assert ops == [
        ("upsert_row", "patients", "42"),
        ("upsert_row", "appointments", "42:100"),
        ("delete_row", "appointments", "42:101"),
    ]
    assert plan.operations[1].args["values"]["appointment_id"] == "100"
    values = plan.operations[0].args["values"]
    assert values == {
        "first_name": "Zoë",
        "last_name": "Núñez",
        "email": "zoe@example.com",
        "phone_e164": "+15551234567",
        "dob": "1980-02-03",
        "user_group": "Weight care",
        "primary_provider": "Dr. Ada",
        "tags": "asthma, vip",
        "primary_payer": "Aetna",
        "active": True,
    }
    validate_plan(plan, entry(), {"warehouse": MemoryConnector("warehouse")})


def test_do_not_sync_tag_skips(agent):
    plan = agent.decide(INTEGRATION, entry(active_tags=[{"id": "5", "name": "do-not-sync"}]), None)
    assert plan.action == "skip"
    assert "do-not-sync" in (plan.skip_reason or "")


def test_appointment_gone_since_previous_is_deleted(agent):
    before = entry()
    previous = PatientState(
        integration_id="demo-clinic",
        patient_id="42",
        content_hash=before.content_hash,
        entry=before.data,
        outcome="written",
        updated_at=datetime.now(UTC),
    )
    now = entry(appointments=[])
    plan = agent.decide(INTEGRATION, now, previous)
    ops = [(o.operation, o.args["key"]) for o in plan.operations]
    assert ("delete_row", "42:100") in ops


def test_validation_refuses_other_patients_targets_and_bad_args():
    targets = {"warehouse": MemoryConnector("warehouse")}
    e = entry()

    def plan(**args) -> WritePlan:
        base = {"table": "patients", "key": "42", "patient_id": "42", "values": {}}
        return WritePlan(
            patient_id="42",
            operations=(
                WriteOperation(
                    target=args.pop("target", "warehouse"),
                    operation=args.pop("operation", "upsert_row"),
                    args={**base, **args},
                ),
            ),
        )

    validate_plan(plan(), e, targets)
    for bad in (
        plan(patient_id="43"),
        plan(target="elsewhere"),
        plan(operation="drop_table"),
        plan(table="Robert'); DROP TABLE--"),
        plan(values={"x": {"nested": 1}}),
    ):
        with pytest.raises(PlanValidationError):
            validate_plan(bad, e, targets)
    with pytest.raises(PlanValidationError):
        validate_plan(WritePlan(patient_id="43"), e, targets)
