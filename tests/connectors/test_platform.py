"""The connector platform itself: declarations checked when a class is defined, options and
credentials checked when a target is built or loaded, the listing, and the CLI around them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import ClassVar

import pytest
from pydantic import BaseModel

from app.core.config import TargetConfig
from app.core.errors import ConfigurationError, TargetRejected, UpstreamUnavailable
from connectors.base import Connector, OperationSpec, Write, WriteResult
from connectors.memory import MemoryConnector
from connectors.registry import CONNECTORS, listing, target_schema
from tests.helpers import REPO


class Ping(BaseModel):
    """A test operation."""

    patient_id: str
    key: str


def test_a_declared_operation_without_an_implementation_fails_when_the_class_is_defined():
    with pytest.raises(TypeError, match="write_ping"):

        class Broken(Connector):
            kind = "broken"
            operations: ClassVar[dict[str, OperationSpec]] = {
                "ping": OperationSpec("ping", Ping, "")
            }


def test_options_are_validated_in_one_line_naming_the_field_not_the_value():
    target = TargetConfig(name="warehouse", connector="sqlite", options={"pth": "/secret/x"})
    with pytest.raises(ConfigurationError) as bad:
        target_schema(target)
    message = str(bad.value)
    assert "\n" not in message
    assert "options.pth" in message
    assert "/secret/x" not in message


def test_an_unknown_connector_lists_the_known_ones():
    with pytest.raises(ConfigurationError, match="postgres"):
        target_schema(TargetConfig(name="w", connector="oracle"))


def test_a_missing_credential_fails_when_built_and_credentials_never_print():
    from connectors.registry import build_connector

    target = TargetConfig(
        name="w",
        connector="postgres",
        options={"dsn": "postgresql+psycopg://u@127.0.0.1:1/db"},
        credentials={"password": "ref"},
    )
    with pytest.raises(ConfigurationError, match="password"):
        build_connector(target, {})
    built = build_connector(target, {"password": "hunter2-secret"})
    try:
        assert "hunter2" not in repr(built.credentials)
        assert "hunter2" not in str(vars(built))
    finally:
        built.close()


class Flaky(MemoryConnector):
    """Refuses any chunk holding key 'bad' (like a multi-row statement would), or is down."""

    kind: ClassVar[str] = "flaky"
    down = False

    def write_upsert_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        if self.down:
            raise UpstreamUnavailable("down")
        if any(getattr(w.args, "key", "") == "bad" for w in batch):
            raise TargetRejected("row refused")
        return super().write_upsert_row(batch)


def _writes(connector: Connector, keys: list[str]) -> list[Write]:
    from datetime import UTC, datetime

    from connectors.base import Scope

    out = []
    for n, key in enumerate(keys):
        patient = str(n)
        args = connector.validate(
            "upsert_row",
            {"table": "t", "key": key, "patient_id": patient, "values": {}},
            patient,
        )
        out.append(Write(Scope("i", patient, "r", datetime.now(UTC)), "upsert_row", args))
    return out


def test_one_refused_row_fails_only_its_write_by_bisection():
    connector = Flaky("w")
    results = connector.execute_batch(_writes(connector, ["a", "b", "bad", "c", "d"]))
    assert [r.error is None for r in results] == [True, True, False, True, True]
    assert isinstance(results[2].error, TargetRejected)
    assert sorted(connector.table("t")) == ["a", "b", "c", "d"]


def test_a_transient_failure_fails_the_whole_chunk_after_the_retries():
    connector = Flaky("w")
    connector.down = True
    connector.retry = connector.retry.__class__(max_attempts=2, sleep=lambda s: None)
    results = connector.execute_batch(_writes(connector, ["a", "b"]))
    assert all(isinstance(r.error, UpstreamUnavailable) for r in results)
    assert connector.requests == 2  # one chunk, tried twice, never split


def test_a_permanent_failure_is_never_retried_as_busy():
    connector = Flaky("w")
    results = connector.execute_batch(_writes(connector, ["bad"]))
    assert isinstance(results[0].error, TargetRejected)
    assert connector.requests == 1


def test_writes_are_chunked_by_max_batch():
    class Small(MemoryConnector):
        kind: ClassVar[str] = "small"
        max_batch: ClassVar[int] = 2

    connector = Small("w")
    connector.execute_batch(_writes(connector, ["a", "b", "c", "d", "e"]))
    assert connector.requests == 3


def test_the_listing_has_every_connector_with_operations_and_options():
    entries = listing()
    assert sorted(e["name"] for e in entries) == sorted(CONNECTORS)
    for entry in entries:
        assert entry["operations"]
        assert entry["options"]["type"] == "object"
    names = {e["name"] for e in entries}
    assert {
        "postgres",
        "redshift",
        "sqlite",
        "bigquery",
        "csv",
        "jsonl",
        "excel",
        "parquet",
    } <= names


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
        check=False,
    )


def test_connectors_json_prints_an_array_of_objects():
    done = _cli("connectors", "--json")
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)
    assert isinstance(entries, list)
    assert {"name", "operations", "options"} <= set(entries[0])
    assert "csv" in {e["name"] for e in entries}


def test_validate_refuses_a_bad_target_in_one_line(tmp_path):
    import os

    config = (REPO / "config" / "integrations" / "demo-clinic.toml").read_text()
    config = config.replace("../../prompts", str(REPO / "prompts"))
    config = config.replace(
        'options = { path = ".healthie-sync/demo/warehouse.db" }',
        'options = { path = "x.db", mode = "sideways" }',
    )
    (tmp_path / "demo-clinic.toml").write_text(config)
    env = {
        **os.environ,
        "HEALTHIE_SYNC_CONFIG_DIR": str(tmp_path),
        "HEALTHIE_SYNC_DATA_DIR": str(tmp_path / "data"),
    }
    from app.secrets.stores import env_name

    env[env_name("demo-clinic/healthie-api-key")] = "key"
    env[env_name("demo-clinic/webhook-signing-secret")] = "whsec_test"
    done = _cli("validate", env=env)
    assert done.returncode == 1  # a finding, not a usage error
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stdout
    assert "options.mode" in errors[0]
    assert "Traceback" not in done.stdout + done.stderr
