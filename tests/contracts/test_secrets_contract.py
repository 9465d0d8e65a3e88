"""One contract for every secrets backend: the encrypted file store (real AES-256-GCM under a
real key), Google Secret Manager (the real client library over gRPC to the in-process fake of
``tests.secrets.fake_secret_manager``), the in-memory store, and, for reading, the environment.

What every backend promises (``app.secrets.base``): ``get`` reads the newest version, versions
count from 1 and are never reused, older versions stay readable until destroyed, a destroyed
newest version is an error rather than an older value, errors are ConfigurationError naming
the reference and never the value, and refs/versions list names only. Last, the property of
issue 15: a plaintext value never reaches the disk or a log, checked by grepping the data
directory and the captured logs after the whole CLI and rotation path ran.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.errors import ConfigurationError
from app.resilience.retry import Backoff
from app.secrets.base import SecretStore, VersionedSecretStore, accepted_values
from app.secrets.file_store import FileSecretStore
from app.secrets.keys import KEY_BYTES
from app.secrets.secret_manager import SecretManagerStore
from app.secrets.stores import EnvSecretStore, MemorySecretStore, env_name
from tests.secrets.fake_secret_manager import FakeSecretManager, client_for

VERSIONED = ["file", "secret-manager", "memory"]
VALUE = "s3cr3t-Zoë-\u2603-value"  # non-ASCII on purpose: UTF-8 end to end


def make_store(kind: str, tmp_path: Path) -> Iterator[VersionedSecretStore]:
    if kind == "file":
        yield FileSecretStore(tmp_path / "data" / "secrets", b"k" * KEY_BYTES)
    elif kind == "secret-manager":
        fake = FakeSecretManager()
        address = fake.start()
        try:
            yield SecretManagerStore(
                client_for(address),
                fake.project,
                timeout=5.0,
                backoff=Backoff(initial=0.01, cap=0.05),
            )
        finally:
            fake.stop()
    else:
        yield MemorySecretStore()


@pytest.fixture(params=VERSIONED)
def store(request, tmp_path) -> Iterator[VersionedSecretStore]:
    yield from make_store(request.param, tmp_path)


@pytest.fixture(params=[*VERSIONED, "env"])
def readable(request, tmp_path) -> Iterator[tuple[SecretStore, object]]:
    """A store plus a function that puts a value in it the backend's own way."""
    if request.param == "env":
        environ: dict[str, str] = {}
        yield EnvSecretStore(environ), lambda ref, value: environ.__setitem__(env_name(ref), value)
        return
    for versioned in make_store(request.param, tmp_path):
        yield versioned, versioned.add_version


# -- every backend --------------------------------------------------------------------------


def test_get_reads_what_was_stored_and_a_missing_ref_names_the_ref(readable):
    store, put = readable
    put("clinic-a/healthie-api-key", VALUE)
    assert store.get("clinic-a/healthie-api-key") == VALUE
    with pytest.raises(ConfigurationError, match="'clinic-a/webhook-signing-secret'") as info:
        store.get("clinic-a/webhook-signing-secret")
    assert VALUE not in str(info.value)
    assert accepted_values(store, "clinic-a/healthie-api-key") == [VALUE]


# -- versioned backends ---------------------------------------------------------------------


def test_versions_count_from_one_newest_first_and_get_reads_the_newest(store):
    assert store.versions("clinic/key") == []
    first = store.add_version("clinic/key", "one")
    second = store.add_version("clinic/key", "two")
    assert (first.version, second.version) == (1, 2)
    assert store.get("clinic/key") == "two"
    assert store.get_version("clinic/key", 1) == "one"
    listed = store.versions("clinic/key")
    assert [(v.version, v.state) for v in listed] == [(2, "enabled"), (1, "enabled")]
    assert all(v.ref == "clinic/key" for v in listed)
    assert accepted_values(store, "clinic/key") == ["two", "one"]


def test_refs_lists_names_only_sorted_with_nested_refs(store):
    for ref in ["zeta", "clinic-b/key", "clinic-a/webhook-signing-secret", "a_b/c-d/e"]:
        store.add_version(ref, VALUE)
    assert store.refs() == ["a_b/c-d/e", "clinic-a/webhook-signing-secret", "clinic-b/key", "zeta"]


def test_destroyed_versions_are_gone_and_their_numbers_never_reused(store):
    for value in ["one", "two", "three"]:
        store.add_version("r", value)
    store.destroy_version("r", 1)
    with pytest.raises(ConfigurationError, match="'r'") as info:
        store.get_version("r", 1)
    assert "one" not in str(info.value)
    assert [(v.version, v.state) for v in store.versions("r")] == [
        (3, "enabled"),
        (2, "enabled"),
        (1, "destroyed"),
    ]
    assert accepted_values(store, "r") == ["three", "two"]
    assert store.add_version("r", "four").version == 4


def test_a_destroyed_newest_version_is_an_error_never_an_older_value(store):
    store.add_version("r", "old")
    store.add_version("r", "new")
    store.destroy_version("r", 2)
    with pytest.raises(ConfigurationError, match="'r'"):
        store.get("r")  # Secret Manager's `latest` is the newest version, whatever its state
    assert accepted_values(store, "r") == ["old"]


def test_missing_versions_and_secrets_are_configuration_errors(store):
    store.add_version("r", VALUE)
    with pytest.raises(ConfigurationError, match="'r'"):
        store.get_version("r", 7)
    with pytest.raises(ConfigurationError, match="'absent'"):
        store.get_version("absent", 1)
    with pytest.raises(ConfigurationError):
        store.destroy_version("absent", 1)


@pytest.mark.parametrize("ref", ["a//b", "a--b", "a.b", "/a", "a/", "-a", "a b", ""])
def test_refs_that_cannot_map_one_to_one_are_refused(store, ref):
    with pytest.raises(ConfigurationError, match="not valid"):
        store.add_version(ref, VALUE)


def test_values_are_utf8_text_kept_exactly_and_bounded(store):
    exact = "line one\nline two\n  trailing spaces  \t"
    store.add_version("r", exact)
    assert store.get("r") == exact
    with pytest.raises(ConfigurationError, match="empty"):
        store.add_version("r", "")
    with pytest.raises(ConfigurationError, match="65536-byte limit") as info:
        store.add_version("r", "x" * 65_537)
    assert "xxxx" not in str(info.value)
    assert store.add_version("r", "é" * 32_768).version == 2  # 65,536 bytes: at the limit


# -- the property: no plaintext on disk or in a log -----------------------------------------


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode(), value.encode("unicode_escape")]


def assert_nowhere(value: str, data_dir: Path, texts: list[str]) -> None:
    """``value`` (raw, base64, hex or escaped) in no file under ``data_dir`` and no text."""
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert files, "the data directory should hold the store's files"
    for path in files:
        content = path.read_bytes()
        for form in _forms(value):
            assert form not in content, f"a form of the secret value is in {path}"
    for text in texts:
        for form in _forms(value):
            assert form.decode() not in text, "a form of the secret value is in captured output"


def test_a_plaintext_value_never_reaches_the_data_directory_or_a_log(tmp_path, caplog, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import secrets as cli

    caplog.set_level(logging.DEBUG)  # every logger, the Google and gRPC ones included
    data_dir = tmp_path / "data"
    store = FileSecretStore(data_dir / "secrets", b"\x07" * KEY_BYTES)
    # the CLI builds its store from the settings; here the same class on tmp_path
    monkeypatch.setattr(cli, "open_store", lambda: store)
    first, second = "first-Pl41ntext-value-\u00e9", "second-Pl41ntext-value-\u00e9"
    runner = CliRunner()
    outputs = [
        runner.invoke(cli.app, ["set", "clinic/api-key"], input=first + "\n"),
        runner.invoke(cli.app, ["rotate", "clinic/api-key"], input=second),
        runner.invoke(cli.app, ["list"]),
        runner.invoke(cli.app, ["list", "--json"]),
    ]
    assert [r.exit_code for r in outputs] == [0, 0, 0, 0], [r.output for r in outputs]
    # both versions are held (encrypted) and readable with the key
    assert (store.get_version("clinic/api-key", 1), store.get("clinic/api-key")) == (first, second)
    texts = [caplog.text, *(r.output for r in outputs)]
    assert_nowhere(first, data_dir, texts)
    assert_nowhere(second, data_dir, texts)

    pruned = runner.invoke(cli.app, ["prune", "clinic/api-key", "--yes"])
    assert pruned.exit_code == 0, pruned.output
    assert_nowhere(second, data_dir, [caplog.text, pruned.output])
