"""``healthie-sync secrets``: store, rotate, list and prune secrets in the configured backend
(``HEALTHIE_SYNC_SECRETS_BACKEND``: ``file`` or ``secret-manager``; ``env`` is read-only).

A value is read from standard input, never from an argument (arguments land in shell history
and ``ps``); from a terminal it is read with ``getpass`` (no echo) and asked twice. Nothing
here prints a value or a fingerprint of one (a short hash of a weak password can be guessed).

* ``set NAME``: the first version; refused when NAME exists (use ``rotate``).
* ``rotate NAME``: a new version; older ones stay enabled (a webhook signing secret's old and
  new values are both accepted during the switch), ``--destroy-old`` destroys them now (a
  leaked secret).
* ``prune NAME --yes``: destroy every version but the newest (the end of a rotation).
* ``list``: names, versions and states, never values (``--json``).
* ``init-key PATH``: a fresh key file for the ``file`` backend (outside any repository).
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.core.errors import ConfigurationError

if TYPE_CHECKING:
    from app.secrets.base import SecretStore, VersionedSecretStore

app = typer.Typer(
    help="Secrets in the configured backend: set, rotate, list, prune, init-key.",
    no_args_is_help=True,
)


def open_store() -> SecretStore:
    """The backend the settings name (``HEALTHIE_SYNC_SECRETS_BACKEND``)."""
    from app.core.settings import Settings
    from app.service.runtime import build_secrets

    return build_secrets(Settings())


def _versioned(command: str) -> VersionedSecretStore:
    from app.secrets.base import require_versioned

    return require_versioned(open_store(), f"`secrets {command}`")


def read_value(name: str) -> str:
    """The value from standard input: without echo from a terminal (asked twice), else all
    of it, less one trailing newline (``echo``, a file ending in a newline)."""
    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {name} (not shown): ")
        if getpass.getpass("again: ") != value:
            raise ConfigurationError(f"the two values typed for {name!r} differ; nothing stored")
    else:
        value = sys.stdin.read()
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    if not value:
        raise ConfigurationError(f"no value for {name!r} on standard input; nothing stored")
    return value


@app.command("set")
def set_secret(name: str = typer.Argument(..., help="The reference, e.g. clinic/api-key.")) -> None:
    """Store NAME's first version, the value read from standard input."""
    from app.secrets.base import check_ref

    store = _versioned("set")
    check_ref(name)
    existing = store.versions(name)
    if existing:
        raise ConfigurationError(
            f"secret {name!r} exists (version {existing[0].version}); "
            f"`healthie-sync secrets rotate {name}` adds a version"
        )
    added = store.add_version(name, read_value(name))
    typer.echo(f"stored {name!r} version {added.version} ({store.backend})")


@app.command("rotate")
def rotate_version(
    name: str = typer.Argument(..., help="The reference."),
    destroy_old: bool = typer.Option(
        False, "--destroy-old", help="Destroy the older versions now (a leaked secret)."
    ),
) -> None:
    """Add a new version of NAME from standard input; older versions stay enabled (readers
    take the newest, webhook verification accepts every enabled one) unless --destroy-old."""
    store = _versioned("rotate")
    existing = store.versions(name)
    if not existing:
        raise ConfigurationError(
            f"secret {name!r} does not exist; `healthie-sync secrets set {name}` creates it"
        )
    older = [v for v in existing if v.state != "destroyed"]
    added = store.add_version(name, read_value(name))
    typer.echo(f"stored {name!r} version {added.version} ({store.backend})")
    if destroy_old:
        for version in older:
            store.destroy_version(name, version.version)
            typer.echo(f"destroyed {name!r} version {version.version}")
    elif older:
        kept = ", ".join(str(v.version) for v in older)
        typer.echo(
            f"kept version(s) {kept}; `healthie-sync secrets prune {name} --yes` destroys them"
        )


@app.command("prune")
def prune(
    name: str = typer.Argument(..., help="The reference."),
    yes: bool = typer.Option(False, "--yes", help="Destroy them (irreversible)."),
) -> None:
    """Destroy every version of NAME but the newest (after a rotation's overlap)."""
    store = _versioned("prune")
    versions = store.versions(name)
    if not versions:
        raise ConfigurationError(f"secret {name!r} does not exist")
    doomed = [v for v in versions[1:] if v.state != "destroyed"]
    if not doomed:
        typer.echo(f"{name!r}: only version {versions[0].version} is left")
        return
    if not yes:
        listed = ", ".join(str(v.version) for v in doomed)
        typer.echo(f"would destroy {name!r} version(s) {listed}; run again with --yes")
        raise typer.Exit(1)
    for version in doomed:
        store.destroy_version(name, version.version)
        typer.echo(f"destroyed {name!r} version {version.version}")


@app.command("list")
def list_secrets(
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Every secret's name and versions with their states (never a value)."""
    from app.cli.common import print_table

    store = _versioned("list")
    listing = [(ref, store.versions(ref)) for ref in store.refs()]
    if as_json:
        report = {
            "backend": store.backend,
            "secrets": [
                {
                    "name": ref,
                    "versions": [
                        {
                            "version": v.version,
                            "state": v.state,
                            "created_at": v.created_at.isoformat() if v.created_at else None,
                        }
                        for v in versions
                    ],
                }
                for ref, versions in listing
            ],
        }
        typer.echo(json.dumps(report))
        return
    rows = [
        (
            ref,
            str(v.version),
            v.state,
            v.created_at.isoformat(timespec="seconds") if v.created_at else "",
        )
        for ref, versions in listing
        for v in versions
    ]
    print_table(
        ["name", "version", "state", "created"],
        rows,
        empty=f"no secrets in the {store.backend} backend",
    )


@app.command("init-key")
def init_key(
    path: Annotated[Path, typer.Argument(help="Where to write the key (outside any repository).")],
) -> None:
    """Write a fresh key for the file backend (owner-only; never overwrites), then point
    HEALTHIE_SYNC_SECRETS_KEY_FILE at it."""
    from app.core.settings import Settings
    from app.secrets.keys import KEY_FILE_ENV, write_key_file

    kid = write_key_file(path, data_dir=Settings().data_dir)
    typer.echo(f"wrote a secrets key (key id {kid}) to {path}")
    typer.echo(f"export {KEY_FILE_ENV}={path.expanduser().resolve()}")
