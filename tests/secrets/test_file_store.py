"""The encrypted file store beyond the contract: a wrong key fails loudly, moved or modified
ciphertexts fail authentication, a fresh data key per version, owner-only files written
atomically, and where the key may come from."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys

import pytest

from app.core.errors import ConfigurationError
from app.secrets.factory import build_store
from app.secrets.file_store import FileSecretStore
from app.secrets.keys import KEY_BYTES, load_key, write_key_file

KEY = b"\x01" * KEY_BYTES
OTHER = b"\x02" * KEY_BYTES


@pytest.fixture
def store(tmp_path):
    return FileSecretStore(tmp_path / "secrets", KEY)


def _doc(store, ref):
    return json.loads((store.directory / f"{ref.replace('/', '--')}.json").read_text())


def test_a_wrong_key_fails_loudly_for_reading_and_writing(store, tmp_path):
    store.add_version("clinic/key", "value-one")
    wrong = FileSecretStore(store.directory, OTHER)
    with pytest.raises(ConfigurationError, match="secrets key does not match the store"):
        wrong.get("clinic/key")
    with pytest.raises(ConfigurationError, match="secrets key does not match the store"):
        wrong.add_version("clinic/other", "value-two")  # no second key mixed into the store
    assert wrong.refs() == ["clinic/key"]  # names need no key
    assert store.get("clinic/key") == "value-one"


def test_a_wrong_key_is_still_refused_when_the_stores_key_marker_is_gone(store):
    store.add_version("clinic/key", "value-one")
    (store.directory / ".key-id").unlink()
    with pytest.raises(ConfigurationError, match="secrets key does not match the store"):
        FileSecretStore(store.directory, OTHER).get("clinic/key")


def test_no_key_names_the_variables_to_set(tmp_path):
    keyless = FileSecretStore(tmp_path / "secrets", None)
    with pytest.raises(ConfigurationError, match="HEALTHIE_SYNC_SECRETS_KEY"):
        keyless.add_version("r", "v")
    assert keyless.refs() == []


def test_a_ciphertext_moved_to_another_secret_or_version_fails_authentication(store):
    store.add_version("a", "value-of-a")
    store.add_version("b", "value-of-b")
    store.add_version("b", "value-of-b-2")
    a, b = _doc(store, "a"), _doc(store, "b")
    b["versions"][1].update(
        {k: a["versions"][0][k] for k in ("wrapped_key", "ciphertext")}
    )  # a's version 1 into b's version 2
    (store.directory / "b.json").write_text(json.dumps(b))
    with pytest.raises(ConfigurationError, match="failed authentication") as info:
        store.get("b")
    assert "value-of-a" not in str(info.value)
    b["versions"][1].update({k: b["versions"][0][k] for k in ("wrapped_key", "ciphertext")})
    (store.directory / "b.json").write_text(json.dumps(b))  # b's version 1 as its version 2
    with pytest.raises(ConfigurationError, match="failed authentication"):
        store.get("b")
    assert store.get_version("b", 1) == "value-of-b"


def test_a_flipped_bit_fails_authentication(store):
    store.add_version("r", "value")
    doc = _doc(store, "r")
    sealed = bytearray(base64.b64decode(doc["versions"][0]["ciphertext"]))
    sealed[-1] ^= 1
    doc["versions"][0]["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    (store.directory / "r.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigurationError, match="failed authentication"):
        store.get("r")


def test_each_version_has_its_own_data_key(store):
    store.add_version("r", "same value")
    store.add_version("r", "same value")
    one, two = _doc(store, "r")["versions"]
    assert one["wrapped_key"] != two["wrapped_key"]
    assert one["ciphertext"] != two["ciphertext"]


def test_files_are_owner_only_and_written_atomically(store):
    for n in range(3):
        store.add_version("r", f"v{n}")
    store.destroy_version("r", 1)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    names = sorted(p.name for p in store.directory.iterdir())
    assert names == [".key-id", ".lock", "r.json"]  # no temporary file left behind
    for path in store.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    destroyed = _doc(store, "r")["versions"][0]
    assert destroyed["state"] == "destroyed"
    assert "ciphertext" not in destroyed
    assert "wrapped_key" not in destroyed


def test_writers_in_two_processes_never_lose_a_version(store, tmp_path):
    script = (
        "import sys; from pathlib import Path; from app.secrets.file_store import FileSecretStore\n"
        "s = FileSecretStore(Path(sys.argv[1]), b'\\x01' * 32)\n"
        "for i in range(15): s.add_version('r', f'{sys.argv[2]}-{i}')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(store.directory), tag])  # noqa: S603
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    versions = store.versions("r")
    assert [v.version for v in versions] == list(range(30, 0, -1))
    values = {store.get_version("r", v.version) for v in versions}
    assert values == {f"{t}-{i}" for t in "ab" for i in range(15)}


# -- the key ----------------------------------------------------------------------------------


def test_the_key_comes_from_the_variable_or_a_private_key_file_outside_repositories(tmp_path):
    data_dir = tmp_path / "data"
    text = base64.b64encode(KEY).decode()
    assert load_key(text, None, data_dir=data_dir) == KEY
    assert load_key(None, None, data_dir=data_dir) is None
    with pytest.raises(ConfigurationError, match="not both"):
        load_key(text, tmp_path / "k", data_dir=data_dir)
    with pytest.raises(ConfigurationError, match="not a secrets key") as info:
        load_key("c2hvcnQ=", None, data_dir=data_dir)  # base64 of 5 bytes
    assert "c2hvcnQ" not in str(info.value)

    outside = tmp_path / "keys" / "secrets.key"
    kid = write_key_file(outside, data_dir=data_dir)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    key = load_key(None, outside, data_dir=data_dir)
    assert key is not None
    assert len(key) == KEY_BYTES
    assert FileSecretStore(tmp_path / "s", key).add_version("r", "v").version == 1
    assert kid == json.loads((tmp_path / "s" / ".key-id").read_text())["key_id"]
    with pytest.raises(ConfigurationError, match="never overwritten"):
        write_key_file(outside, data_dir=data_dir)

    os.chmod(outside, 0o644)
    with pytest.raises(ConfigurationError, match="readable by other users"):
        load_key(None, outside, data_dir=data_dir)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_key(None, tmp_path / "missing.key", data_dir=data_dir)


def test_a_key_file_in_the_data_directory_or_a_git_tree_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    with pytest.raises(ConfigurationError, match="inside the data directory"):
        write_key_file(data_dir / "secrets.key", data_dir=data_dir)
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    with pytest.raises(ConfigurationError, match="inside the git work tree"):
        write_key_file(repo / "config" / "secrets.key", data_dir=data_dir)
    assert not (repo / "config" / "secrets.key").exists()


def test_the_factory_builds_each_backend_and_refuses_unknown_ones(tmp_path):
    from pydantic import SecretStr

    key = SecretStr(base64.b64encode(KEY).decode())
    built = build_store("file", data_dir=tmp_path, key=key)
    assert isinstance(built, FileSecretStore)
    assert built.directory == tmp_path / "secrets"
    assert build_store("env", data_dir=tmp_path).backend == "env"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="HEALTHIE_SYNC_GCP_PROJECT"):
        build_store("secret-manager", data_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="unknown secrets backend 'vault'"):
        build_store("vault", data_dir=tmp_path)
