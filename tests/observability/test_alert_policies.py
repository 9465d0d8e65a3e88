"""The alert policies in deploy/monitoring/ are Cloud Monitoring AlertPolicy documents that
watch metrics which exist.

* each file parses as ``google.monitoring.v3.AlertPolicy`` (the client library's own message:
  an unknown field, a misspelt enum or a bad duration fails);
* every ``metric.type`` a filter names is one of the engine's instruments
  (``app.observability.metrics.INSTRUMENTS``) or a Google metric listed here, and every
  ``metric.labels.X`` it filters or groups by is a label of that instrument;
* the four alerts the deployment promises are there: a non-empty dead-letter queue (on the
  subscription the topology creates), a failed run, a burst of 401s on the webhook route
  (the receiver's outcome for a bad signature) and a cadence that did not run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from google.cloud.monitoring_v3.types import AlertPolicy

from app.observability.metrics import INSTRUMENTS
from app.queue.topology import WORK_DLQ_SUBSCRIPTION
from tests.helpers import REPO

POLICIES = sorted((REPO / "deploy" / "monitoring").glob("*.json"))
#: Google's own metrics a policy may watch, and the labels used from each
GOOGLE_METRICS = {"pubsub.googleapis.com/subscription/num_undelivered_messages": ()}
BY_TYPE = {i.metric_type: i for i in INSTRUMENTS.values()}


def _conditions(policy: dict) -> list[dict]:
    out = []
    for condition in policy["conditions"]:
        body = condition.get("conditionThreshold") or condition.get("conditionAbsent")
        assert body is not None, f"{condition['displayName']}: unsupported condition type"
        out.append(body)
    return out


def test_there_are_policies():
    assert {p.name for p in POLICIES} >= {
        "dead-letter-queue.json",
        "failed-run.json",
        "webhook-401-burst.json",
        "cadence-missed.json",
    }


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_policy_parses_as_an_alert_policy(path: Path):
    text = path.read_text(encoding="utf-8")
    policy = AlertPolicy.from_json(text, ignore_unknown_fields=False)
    assert policy.display_name.startswith("healthie-sync: ")
    assert policy.documentation.content, "an alert must say what to do"
    assert policy.conditions


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_policy_watches_metrics_and_labels_that_exist(path: Path):
    policy = json.loads(path.read_text(encoding="utf-8"))
    for body in _conditions(policy):
        types = re.findall(r'metric\.type = "([^"]+)"', body["filter"])
        assert len(types) == 1, body["filter"]
        metric_type = types[0]
        if metric_type in GOOGLE_METRICS:
            continue
        assert metric_type in BY_TYPE, f"{path.name}: {metric_type} is no instrument"
        labels = set(re.findall(r"metric\.labels\.([a-z_]+)", body["filter"]))
        for aggregation in body.get("aggregations", []):
            labels |= {
                f.removeprefix("metric.labels.") for f in aggregation.get("groupByFields", [])
            }
        unknown = labels - set(BY_TYPE[metric_type].labels)
        assert not unknown, f"{path.name}: {metric_type} has no labels {unknown}"


def _filters(name: str) -> str:
    policy = json.loads((REPO / "deploy" / "monitoring" / name).read_text(encoding="utf-8"))
    return " || ".join(body["filter"] for body in _conditions(policy))


def test_the_promised_alerts_watch_the_right_series():
    dlq = _filters("dead-letter-queue.json")
    assert f'subscription_id = "{WORK_DLQ_SUBSCRIPTION}"' in dlq
    assert 'outcome = "dead_lettered"' in dlq
    assert 'status = "failed"' in _filters("failed-run.json")
    assert 'outcome = "rejected_signature"' in _filters("webhook-401-burst.json")
    missed = _filters("cadence-missed.json")
    assert 'cadence = "hourly"' in missed
    assert 'cadence = "daily"' in missed
