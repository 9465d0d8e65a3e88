"""Where file targets put their files, atomically: nothing half-written is ever visible under
a final name.

``write_files`` takes every file of one chunk, encodes them all to temporary files first, and
publishes them only when every one encoded, so a chunk whose row the format refuses publishes
nothing (the platform then splits the chunk and writes the good rows under new names):

* :class:`LocalStore`: the temporary file sits in the final directory as
  ``.<final name>.<random>.tmp`` (a dot name, which Hive-style readers such as Spark, Athena
  and DuckDB skip), is fsynced, then ``os.replace``-d onto the final name and the directory
  fsynced. A writer killed mid-file leaves at most such a dot file behind.
* :class:`S3Store`: the file is encoded to a local temporary file (unlinked on creation), then
  sent as an explicit multipart upload (8 MiB parts) that is completed only after the last
  part; any failure aborts it, so no object appears. Should the abort itself fail (the network
  is down), the bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule reclaims the parts.

Failures are converted here, at the vendor edge, to the engine's kinds. Messages carry the
target, the bucket, the operation, errno names, S3 error codes and HTTP statuses, never a row
value or a secret.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from app.core.errors import (
    ConfigurationError,
    HealthieSyncError,
    RateLimited,
    UpstreamUnavailable,
)
from app.resilience.retry import parse_retry_after
from app.resilience.status import error_for_status

#: a file to write: its name below the store's root, and what writes its bytes
FileSpec = tuple[str, Callable[[BinaryIO], None]]

#: S3 parts other than the last must be at least 5 MiB
PART_SIZE = 8 * 1024 * 1024

#: errnos a person must fix (permissions, a read-only or missing directory); the others
#: (disk full, I/O errors, too many open files) may pass
_CONFIG_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.EEXIST,  # a file where a partition directory should be
}
#: S3 codes that no retry fixes: credentials, permissions, the bucket, the region
_CONFIG_CODES = {
    "NoSuchBucket",
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidBucketName",
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
    "ExpiredToken",
    "InvalidToken",
    "AccountProblem",
}


def os_error(
    label: str, exc: OSError, where: str = "under the configured path"
) -> HealthieSyncError:
    """The engine error for a local I/O failure (no file name: it holds the run id)."""
    code = errno.errorcode.get(exc.errno or 0, "unknown")
    message = f"{label}: cannot write {where} ({code})"
    if exc.errno in _CONFIG_ERRNOS:
        return ConfigurationError(message)
    return UpstreamUnavailable(message)


class LocalStore:
    """Files below a local directory (which must exist)."""

    def __init__(self, root: Path, label: str) -> None:
        self.root = root
        self.label = label
        #: files published
        self.requests = 0

    def probe(self) -> str:
        """Whether the directory exists and can be written (nothing is written)."""
        if not self.root.is_dir():
            raise ConfigurationError(f"{self.label}: options.path is not an existing directory")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ConfigurationError(f"{self.label}: options.path is not writable by this user")
        return "directory exists and is writable"

    def write_files(self, files: Sequence[FileSpec]) -> None:
        """Encode every file to its temporary name, then move each onto its final name."""
        if not self.root.is_dir():
            raise ConfigurationError(f"{self.label}: options.path is not an existing directory")
        staged: list[tuple[str, Path]] = []
        try:
            for name, encode in files:
                staged.append((self._stage(name, encode), self.root / name))
            for temp, final in staged:
                os.replace(temp, final)
                self.requests += 1
            # the renames (and any directory just made for them) survive a crash too
            folders = {f for _, final in staged for f in final.parents if self.root in f.parents}
            for folder in sorted({self.root, *folders}, key=lambda f: -len(f.parts)):
                _fsync_dir(folder)
        except OSError as exc:
            raise os_error(self.label, exc) from exc
        finally:
            for temp, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)  # only those never moved

    def _stage(self, name: str, encode: Callable[[BinaryIO], None]) -> str:
        final = self.root / name
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                encode(out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(temp)
            raise
        return temp


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Store:
    """Objects below ``s3://bucket/prefix``, each published by one multipart upload."""

    def __init__(self, client: Any, bucket: str, prefix: str, label: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.label = label
        #: S3 requests sent
        self.requests = 0

    @classmethod
    def connect(
        cls,
        bucket: str,
        prefix: str,
        label: str,
        *,
        region: str,
        endpoint_url: str | None,
        credentials: Mapping[str, str],
    ) -> S3Store:
        """A store with its own boto3 client, built from explicit keys only (never the
        environment's or an instance role's) and with botocore's retries off: the platform's
        retry policy is the only one (``total_max_attempts: 1`` is one attempt; botocore's
        ``max_attempts`` counts retries, so ``max_attempts: 1`` would still retry once)."""
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=credentials["aws_access_key_id"],
            aws_secret_access_key=credentials["aws_secret_access_key"],
            aws_session_token=credentials.get("aws_session_token"),
            config=Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )
        return cls(client, bucket, prefix, label)

    def probe(self) -> str:
        """HeadBucket with the configured keys (nothing is written)."""
        self._call("head_bucket", Bucket=self.bucket)
        return f"bucket {self.bucket!r} answers HeadBucket"

    def key(self, name: str) -> str:
        """The object key of ``name``."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def write_files(self, files: Sequence[FileSpec]) -> None:
        """Encode every file locally, then upload each."""
        staged: list[tuple[str, IO[bytes]]] = []
        try:
            try:
                for name, encode in files:
                    spool: IO[bytes] = tempfile.TemporaryFile()  # closed in the finally
                    staged.append((name, spool))
                    encode(cast(BinaryIO, spool))
                    spool.flush()
            except OSError as exc:  # the local spool (disk full, permissions of TMPDIR)
                raise os_error(self.label, exc, "a local temporary file") from exc
            for name, temp in staged:
                temp.seek(0)
                self._upload(self.key(name), temp)
        finally:
            for _, temp in staged:
                temp.close()

    def _upload(self, key: str, body: IO[bytes]) -> None:
        where = {"Bucket": self.bucket, "Key": key}
        upload_id = self._call("create_multipart_upload", **where)["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            while True:
                data = body.read(PART_SIZE)
                if not data and parts:
                    break
                number = len(parts) + 1
                sent = self._call(
                    "upload_part", **where, UploadId=upload_id, PartNumber=number, Body=data
                )
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})
                if len(data) < PART_SIZE:
                    break
            self._call(
                "complete_multipart_upload",
                **where,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # Whatever stopped us (an S3 error, a local one, an interrupt), leave no upload
            # pending; the original failure is the one to report.
            with contextlib.suppress(HealthieSyncError):
                self._call("abort_multipart_upload", **where, UploadId=upload_id)
            raise

    def _call(self, operation: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        self.requests += 1
        try:
            return getattr(self.client, operation)(**kwargs)
        except ClientError as exc:
            raise s3_error(self.label, self.bucket, operation, exc) from exc
        except BotoCoreError as exc:  # no answer: connection refused, timeouts, DNS
            raise UpstreamUnavailable(
                f"{self.label}: S3 {operation} on bucket {self.bucket!r} got no answer "
                f"({type(exc).__name__})"
            ) from exc


def s3_error(label: str, bucket: str, operation: str, exc: Any) -> HealthieSyncError:
    """The engine error for an S3 error answer (``botocore.exceptions.ClientError``)."""
    response = exc.response
    code = str(response.get("Error", {}).get("Code", "unknown"))
    meta = response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 500)
    message = f"{label}: S3 answered {status} {code} to {operation} on bucket {bucket!r}"
    if code in _CONFIG_CODES:
        return ConfigurationError(message)
    retry_after = parse_retry_after({k.lower(): v for k, v in meta.get("HTTPHeaders", {}).items()})
    if code in ("SlowDown", "Throttling", "RequestLimitExceeded"):  # S3's 503 means slow down
        return RateLimited(message, retry_after=retry_after)
    if code == "NoSuchUpload":  # our upload vanished (aborted elsewhere): start again
        return UpstreamUnavailable(message)
    return error_for_status(status, message, retry_after=retry_after)
