"""A moto S3 server for tests and its session fixture, with real credential checks.

::

    running_moto_s3()                         the session fixture ``moto_s3``
    ─────────────────                         ──────────────────────────────────────────
    python -m moto.server -H 127.0.0.1 -p P   one server per test session, shared by every
      in its own process group                module that imports the fixture (and by the
    wait until it answers                     contract suite, which registers this module as
    IAM: user "writer" (s3:* allowed) and     a plugin when it was not imported: see
      user "reader" (no permission), keys     ``moto_s3_for``)
    enforce authentication from now on        ``s3_bucket``: a fresh bucket per test
    yield MotoS3 (endpoint URL and keys)
    kill the process group

moto checks nothing by default; the server here turns authentication on once the two users
exist, so a wrong key is refused (``InvalidAccessKeyId`` / ``SignatureDoesNotMatch``) and the
keyless reader is denied (``AccessDenied``) exactly as S3 would. If ``moto.server`` is missing or
does not answer, the requesting tests skip locally and fail under ``REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers import Shared, fixture_for, free_port, stop_group, tail

START_TIMEOUT = 30.0
REGION = "us-east-1"


@dataclass(frozen=True)
class MotoS3:
    """A running moto server: its endpoint and the keys of its two IAM users."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    #: a user with no permission at all
    reader_key_id: str
    reader_secret: str = field(repr=False)

    @property
    def credentials(self) -> dict[str, str]:
        """The writer's keys as a connector's credentials."""
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
        }

    def client(self) -> Any:
        """A boto3 S3 client as the writer (the test's own access)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            region_name=REGION,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(retries={"total_max_attempts": 2, "mode": "standard"}),
        )

    def create_bucket(self) -> str:
        """A new empty bucket with a unique name; returns its name."""
        name = f"t-{uuid.uuid4().hex[:16]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete ``name`` with its objects and pending uploads."""
        client = self.client()
        try:
            for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
                client.abort_multipart_upload(
                    Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                for item in page.get("Contents", []):
                    client.delete_object(Bucket=name, Key=item["Key"])
            client.delete_bucket(Bucket=name)
        finally:
            client.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _users(url: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """Create the writer and the reader (authentication is still off), then turn it on."""
    import boto3

    iam = boto3.session.Session().client(
        "iam",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    try:
        keys = []
        for user, allowed in (("writer", True), ("reader", False)):
            iam.create_user(UserName=user)
            if allowed:
                policy = {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
                iam.put_user_policy(
                    UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy)
                )
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys.append((key["AccessKeyId"], key["SecretAccessKey"]))
    finally:
        iam.close()
    # moto authenticates every request once its "no-auth" request allowance is 0
    request = urllib.request.Request(
        f"{url}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()
    return keys[0], keys[1]


@contextlib.contextmanager
def running_moto_s3() -> Iterator[MotoS3]:
    """Start a moto server on 127.0.0.1 (see the module docstring); stopped after."""
    from tests.conftest import require_service

    try:
        import moto.server  # noqa: F401 - is the server extra installed?
    except ImportError as exc:
        require_service("moto S3 server", f"moto[server] is not installed ({exc})")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_dir = Path(tempfile.mkdtemp(prefix="moto-"))
    log_path = log_dir / "moto.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while not _answers(url):
            if proc.poll() is not None:
                require_service(
                    "moto S3 server", f"it exited with {proc.returncode}:\n{tail(log_path)}"
                )
            if time.monotonic() - started > START_TIMEOUT:
                require_service(
                    "moto S3 server",
                    f"no answer on {url} within {START_TIMEOUT:.0f} s:\n{tail(log_path)}",
                )
            time.sleep(0.1)
        (writer, writer_secret), (reader, reader_secret) = _users(url)
        yield MotoS3(url, writer, writer_secret, reader, reader_secret)
    finally:
        stop_group(proc)
        for leftover in log_dir.iterdir():
            leftover.unlink()
        log_dir.rmdir()


_SHARED: Shared[MotoS3] = Shared("moto S3 server", lambda: running_moto_s3())


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """The session's moto S3 server (skips locally when it cannot start)."""
    with _SHARED.use() as server:
        yield server


@pytest.fixture
def s3_bucket(moto_s3: MotoS3) -> Iterator[str]:
    """A fresh bucket on the session's server, deleted after the test."""
    name = moto_s3.create_bucket()
    yield name
    moto_s3.delete_bucket(name)


def moto_s3_for(request: Any) -> MotoS3:
    """The session's server for a fixture or factory holding ``request``."""
    server: MotoS3 = fixture_for(request, __name__, "moto_s3")
    return server
