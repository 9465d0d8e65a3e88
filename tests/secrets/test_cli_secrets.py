"""``healthie-sync secrets``: values only from standard input (no echo from a terminal), set
refuses to overwrite, rotate keeps or destroys the old versions, prune asks for --yes, list
shows names and versions only, and the read-only environment backend is refused."""

from __future__ import annotations

import getpass
import io
import json
import stat
import sys

import pytest
from typer.testing import CliRunner

from app.cli import secrets as cli
from app.core.errors import ConfigurationError
from app.secrets.file_store import FileSecretStore
from app.secrets.keys import KEY_BYTES

runner = CliRunner()


@pytest.fixture
def store(tmp_path, monkeypatch):
    built = FileSecretStore(tmp_path / "data" / "secrets", b"\x09" * KEY_BYTES)
    monkeypatch.setattr(cli, "open_store", lambda: built)
    return built


def run(*args: str, stdin: str | None = None):
    return runner.invoke(cli.app, list(args), input=stdin)


def test_set_reads_stdin_once_and_refuses_to_overwrite(store):
    result = run("set", "clinic/api-key", stdin="value-one\n")
    assert result.exit_code == 0, result.output
    assert "version 1" in result.output
    assert store.get("clinic/api-key") == "value-one"  # one trailing newline dropped
    again = run("set", "clinic/api-key", stdin="value-two")
    assert isinstance(again.exception, ConfigurationError)
    assert "secrets rotate clinic/api-key" in str(again.exception)
    assert store.get("clinic/api-key") == "value-one"


def test_a_value_is_never_taken_as_an_argument_nor_empty(store):
    assert run("set", "clinic/api-key", "value-on-the-command-line").exit_code == 2
    empty = run("set", "clinic/api-key", stdin="")
    assert isinstance(empty.exception, ConfigurationError)
    assert store.versions("clinic/api-key") == []


def test_rotate_keeps_old_versions_unless_asked_and_prune_needs_yes(store):
    run("set", "r", stdin="v1")
    kept = run("rotate", "r", stdin="v2")
    assert kept.exit_code == 0, kept.output
    assert "kept version(s) 1" in kept.output
    assert [v.state for v in store.versions("r")] == ["enabled", "enabled"]

    dry = run("prune", "r")
    assert dry.exit_code == 1
    assert "would destroy 'r' version(s) 1" in dry.output
    assert store.get_version("r", 1) == "v1"
    assert run("prune", "r", "--yes").exit_code == 0
    assert [v.state for v in store.versions("r")] == ["enabled", "destroyed"]

    leaked = run("rotate", "r", "--destroy-old", stdin="v3")
    assert leaked.exit_code == 0, leaked.output
    assert [v.state for v in store.versions("r")] == ["enabled", "destroyed", "destroyed"]
    assert store.get("r") == "v3"
    missing = run("rotate", "absent", stdin="x")
    assert "secrets set absent" in str(missing.exception)


def test_list_shows_names_versions_and_states_never_values(store):
    assert "no secrets in the file backend" in run("list").output
    run("set", "clinic/api-key", stdin="Pl41n-one")
    run("rotate", "clinic/api-key", stdin="Pl41n-two")
    run("set", "clinic/webhook-signing-secret", stdin="Pl41n-three")
    table = run("list")
    assert "clinic/webhook-signing-secret" in table.output
    report = json.loads(run("list", "--json").output)
    assert report["backend"] == "file"
    assert [(s["name"], [v["version"] for v in s["versions"]]) for s in report["secrets"]] == [
        ("clinic/api-key", [2, 1]),
        ("clinic/webhook-signing-secret", [1]),
    ]
    assert "Pl41n" not in table.output + json.dumps(report)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_from_a_terminal_the_value_is_read_without_echo_and_asked_twice(monkeypatch):
    typed = iter(["typed-value", "typed-value", "first", "different"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(typed)

    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    assert cli.read_value("r") == "typed-value"
    with pytest.raises(ConfigurationError, match="differ"):
        cli.read_value("r")
    assert prompts[0] == "value of r (not shown): "


def test_the_environment_backend_is_refused_as_read_only(monkeypatch, tmp_path):
    monkeypatch.delenv("HEALTHIE_SYNC_SECRETS_BACKEND", raising=False)
    monkeypatch.setenv("HEALTHIE_SYNC_DATA_DIR", str(tmp_path))
    result = run("set", "clinic/api-key", stdin="value")
    assert isinstance(result.exception, ConfigurationError)
    assert "read-only" in str(result.exception)
    assert "HEALTHIE_SYNC_SECRETS_BACKEND=file" in str(result.exception)


def test_init_key_writes_an_owner_only_key_and_the_variable_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv("HEALTHIE_SYNC_DATA_DIR", str(tmp_path / "data"))
    path = tmp_path / "keys" / "secrets.key"
    result = run("init-key", str(path))
    assert result.exit_code == 0, result.output
    assert f"export HEALTHIE_SYNC_SECRETS_KEY_FILE={path}" in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() not in result.output
    refused = run("init-key", str(tmp_path / "data" / "k"))
    assert "inside the data directory" in str(refused.exception)
