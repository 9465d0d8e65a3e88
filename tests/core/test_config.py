"""Integration config loading and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import load_integration, load_integrations
from app.core.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]


def test_demo_config_loads():
    found = load_integrations(REPO / "config" / "integrations")
    assert "demo-clinic" in found
    assert found["demo-clinic"].agent.plan is not None


def _write(tmp_path: Path, cadence: str) -> Path:
    (tmp_path / "i.md").write_text("instructions")
    (tmp_path / "p.json").write_text("{}")
    path = tmp_path / "x.toml"
    path.write_text(f'''
id = "x"
cadence = "{cadence}"
[healthie]
api_key_secret = "x/key"
webhook_secrets = ["x/hook"]
[agent]
instructions = "i.md"
plan = "p.json"
[[targets]]
name = "t"
connector = "memory"
''')
    return path


@pytest.mark.parametrize("cadence", ["hourly", "every_6_hours", "daily", "weekly"])
def test_supported_cadences(tmp_path, cadence):
    assert load_integration(_write(tmp_path, cadence)).cadence.value == cadence


def test_monthly_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigurationError, match="weekly"):
        load_integration(_write(tmp_path, "monthly"))


def test_unknown_keys_are_refused(tmp_path):
    path = _write(tmp_path, "daily")
    path.write_text(path.read_text() + "\nsurprise = 1\n")
    with pytest.raises(ConfigurationError, match="surprise"):
        load_integration(path)
