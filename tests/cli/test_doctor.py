"""``healthie-sync doctor``: every check against real parts (the sandbox over HTTP, a SQLite
target, a CSV directory, the Anthropic SDK against its local fake), one line each, exit 1 when
one fails, and a failing service reported with what to do rather than a traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.cli.main import cli
from app.core.config import TargetConfig
from app.secrets.stores import MemorySecretStore, env_name
from app.service.doctor import doctor
from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.server import create_app as sandbox_app
from tests.cli.test_cli_errors import config_dir
from tests.helpers import demo_runtime


@pytest.fixture(scope="module")
def sandbox_url():
    sb = Sandbox(patients=12, seed=5)
    with serve_in_thread(sandbox_app(sb)) as url:
        yield url, sb


def verdicts(checks) -> dict[str, str]:
    return {c.name: c.verdict for c in checks}


def test_a_healthy_integration_passes_every_check(tmp_path, sandbox_url):
    url, sb = sandbox_url
    rt = demo_runtime(tmp_path, api_url=f"{url}/graphql", api_key=sb.api_key, target="sqlite")
    try:
        checks = doctor(rt, "demo-clinic")
    finally:
        rt.close()
    seen = verdicts(checks)
    assert seen["healthie"] == "ok", checks
    assert seen["schema"] == "ok", checks
    assert seen["secrets"] == "ok"
    assert seen["target warehouse (sqlite)"] == "ok"
    assert seen["webhooks"] == "skip"  # no --url: said, not silently dropped
    assert "fail" not in seen.values(), checks
    healthie = next(c for c in checks if c.name == "healthie")
    assert "can list patients" in healthie.detail
    assert url in healthie.detail
    assert "API version" in healthie.detail


def test_a_refused_key_fails_the_healthie_check_with_the_fix(tmp_path, sandbox_url):
    url, _ = sandbox_url
    rt = demo_runtime(tmp_path, api_url=f"{url}/graphql", api_key="wrong", target="sqlite")
    try:
        checks = doctor(rt, "demo-clinic")
    finally:
        rt.close()
    healthie = next(c for c in checks if c.name == "healthie")
    assert healthie.verdict == "fail"
    assert healthie.detail.startswith("configuration:")
    assert "API key" in healthie.fix
    assert verdicts(checks)["schema"] == "skip"


def test_an_unusable_target_fails_its_own_check_only(tmp_path, sandbox_url):
    url, sb = sandbox_url
    rt = demo_runtime(tmp_path, api_url=f"{url}/graphql", api_key=sb.api_key, target="sqlite")
    integration = rt.integrations["demo-clinic"]
    rt.integrations["demo-clinic"] = integration.model_copy(
        update={
            "targets": [
                *integration.targets,
                TargetConfig(
                    name="exports",
                    connector="csv",
                    options={"path": str(tmp_path / "missing-dir")},
                ),
            ]
        }
    )
    try:
        checks = doctor(rt, "demo-clinic")
    finally:
        rt.close()
    seen = verdicts(checks)
    assert seen["target exports (csv)"] == "fail"
    assert seen["target warehouse (sqlite)"] == "ok"
    assert seen["healthie"] == "ok"


def test_the_command_prints_one_line_per_check_and_exits_1_on_a_failure(
    tmp_path, sandbox_url, monkeypatch
):
    url, sb = sandbox_url
    folder = config_dir(tmp_path, api_url=f"{url}/graphql")
    monkeypatch.setenv(env_name("demo-clinic/healthie-api-key"), sb.api_key)
    monkeypatch.setenv(env_name("demo-clinic/webhook-signing-secret"), sb.webhook_secret)
    runner = CliRunner()
    base = ["--config-dir", str(folder), "--data-dir", str(tmp_path / "d")]
    ok = runner.invoke(cli, [*base, "doctor", "demo-clinic"])
    assert ok.exit_code == 0, ok.output
    assert "ok    healthie:" in ok.output
    assert "failed" in ok.output.splitlines()[-1]
    as_json = runner.invoke(cli, [*base, "doctor", "demo-clinic", "--json"])
    lines = [json.loads(line) for line in as_json.output.splitlines()]
    assert {line["name"] for line in lines} >= {"healthie", "schema", "secrets"}

    monkeypatch.setenv(env_name("demo-clinic/healthie-api-key"), "revoked")
    bad = runner.invoke(cli, [*base, "doctor", "demo-clinic"])
    assert bad.exit_code == 1, bad.output
    assert "FAIL  healthie:" in bad.output
    assert "fix:" in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.parametrize(("key", "verdict"), [("sk-test", "ok"), ("revoked-key", "fail")])
def test_the_claude_backend_checks_the_anthropic_key(tmp_path, sandbox_url, key, verdict):
    from tests.fake_anthropic import FakeAnthropic, plan_model

    url, sb = sandbox_url
    fake = FakeAnthropic(plan_model())
    with serve_in_thread(fake.app()) as anthropic_url:
        rt = demo_runtime(
            tmp_path,
            api_url=f"{url}/graphql",
            api_key=sb.api_key,
            target="sqlite",
            anthropic_api_key_secret="anthropic/key",
            anthropic_base_url=anthropic_url,
        )
        rt.secrets.set("anthropic/key", key)  # type: ignore[attr-defined]
        integration = rt.integrations["demo-clinic"]
        rt.integrations["demo-clinic"] = integration.model_copy(
            update={"agent": integration.agent.model_copy(update={"backend": "claude"})}
        )
        try:
            checks = doctor(rt, "demo-clinic")
        finally:
            rt.close()
    assert verdicts(checks)["anthropic"] == verdict, checks
    assert fake.counts["models"] >= 1


def test_a_missing_secret_skips_the_online_checks_and_says_why(tmp_path):
    rt = demo_runtime(tmp_path, target="sqlite")
    rt.secrets = MemorySecretStore({})
    try:
        checks = doctor(rt, "demo-clinic")
    finally:
        rt.close()
    seen = verdicts(checks)
    assert seen["secrets"] == "fail"
    assert seen["healthie"] == "skip"
    secrets = next(c for c in checks if c.name == "secrets")
    assert "demo-clinic/healthie-api-key" in secrets.detail
