"""A throwaway PostgreSQL server for tests and benchmarks, and its session fixture.

::

    running_postgres()                       the session fixture ``postgres_server``
    ──────────────────                       ─────────────────────────────────────────
    initdb (scram-sha-256, --pwfile)         one server per test session, shared by every
    pg_ctl start on 127.0.0.1:<free port>,   module that imports the fixture (and by the
      unix socket in the server's directory  contract suite, which registers this module
      CREATE DATABASE healthie_sync          as a plugin when it was not imported)
    yield PostgresServer (DSN pieces)
    pg_ctl stop -m immediate, rm -rf

initdb refuses to run as root, so when the tests run as root every PostgreSQL program runs as
the ``postgres`` OS user (``runuser``), in a fresh directory under /tmp that user owns. The
server uses password authentication only, so a connector's password credential is really
checked. Without PostgreSQL (no ``/usr/lib/postgresql/*/bin/initdb``) the fixture skips
locally and fails under ``REQUIRE_SERVICES=1``; the benchmark asks :func:`postgres_bin`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers import Shared, fixture_for, free_port

SUPERUSER = "postgres"
DATABASE = "healthie_sync"
START_TIMEOUT = 60


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parents[1].name
        return tuple(int(p) for p in part.split(".") if p.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    return Path(found[-1]).parent if found else None


def _as_owner(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    # initdb and postgres refuse root: run them as the postgres OS user when we are root.
    prefix = ["runuser", "-u", SUPERUSER, "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, *args],
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=START_TIMEOUT + 30,
        **kwargs,
    )


@dataclass(frozen=True)
class PostgresServer:
    """A running server: where it listens, who may log in, and its directories."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    root: Path
    bin_dir: Path

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    def dsn(self, database: str | None = None) -> str:
        """A SQLAlchemy URL without the password (the connector's ``dsn`` option)."""
        return (
            f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database or self.database}"
        )

    def connect(self, database: str | None = None) -> Any:
        """An autocommit psycopg connection as the superuser (the test's own access)."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database or self.database,
            autocommit=True,
            connect_timeout=10,
        )

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (a unique name unless given); returns its name."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing whatever sessions still use it."""
        with self.connect("postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (its clients see their connections die). ``immediate`` is a crash:
        with this test server's fsync and synchronous_commit off it may lose the last commits;
        ``fast`` shuts down cleanly."""
        pg_ctl = str(self.bin_dir / "pg_ctl")
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _as_owner([pg_ctl, "stop", "-D", str(self.data_dir), "-m", mode, "-w"])
        _kill_leftover(self.data_dir)

    def start(self) -> None:
        """Start the (stopped) server again on the same port."""
        options = (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        _as_owner(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-o",
                options,
            ]
        )


def _kill_leftover(data_dir: Path) -> None:
    # pg_ctl starts the postmaster in its own session, so its pid is its process group.
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)


@contextlib.contextmanager
def running_postgres(bin_dir: Path) -> Iterator[PostgresServer]:
    """A fresh server from ``bin_dir`` (see the module docstring), stopped and removed after."""
    root = Path(tempfile.mkdtemp(prefix="hs-pg-", dir="/tmp"))
    server: PostgresServer | None = None
    try:
        if os.geteuid() == 0:
            shutil.chown(root, SUPERUSER, SUPERUSER)
        password = secrets.token_urlsafe(18)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            shutil.chown(pwfile, SUPERUSER, SUPERUSER)
        _as_owner(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        pwfile.unlink()
        server = PostgresServer(
            "127.0.0.1", free_port(), SUPERUSER, password, DATABASE, root, bin_dir
        )
        server.start()
        server.create_database(DATABASE)
        yield server
    finally:
        if server is not None:
            server.stop()
        else:
            _kill_leftover(root / "data")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _started() -> Iterator[PostgresServer]:
    from tests.conftest import require_service

    bin_dir = postgres_bin()
    if bin_dir is None:
        require_service("postgresql", "no /usr/lib/postgresql/*/bin/initdb installed")
    assert bin_dir is not None
    try:
        with running_postgres(bin_dir) as server:
            yield server
    except subprocess.CalledProcessError as exc:
        require_service("postgresql", f"it did not start: {exc.stderr or exc.stdout}")


_SHARED: Shared[PostgresServer] = Shared("postgresql", _started)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 for the session (skips locally when not installed)."""
    with _SHARED.use() as server:
        yield server


def postgres_for(request: Any) -> PostgresServer:
    """The session's server for a fixture or factory holding ``request``."""
    server: PostgresServer = fixture_for(request, __name__, "postgres_server")
    return server
