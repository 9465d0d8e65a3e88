"""A local Secret Manager: a real in-process gRPC server speaking the
``google.cloud.secretmanager.v1.SecretManagerService`` protocol, for the real client library.

Google ships no Secret Manager emulator. This server implements the methods the engine calls
(CreateSecret, AddSecretVersion, AccessSecretVersion, ListSecrets, ListSecretVersions,
DestroySecretVersion) with the service's documented behaviour, so the client's own
serialization, paging, retry and error mapping are what the tests exercise:

* names in answers carry the project *number*, as the real service's do
  (``projects/123456789012/secrets/...``), so a caller that compares project ids breaks here;
* ``versions/latest`` is the most recently created version, whatever its state; accessing a
  disabled or destroyed version is FAILED_PRECONDITION, a missing secret NOT_FOUND, an existing
  secret ALREADY_EXISTS; a payload over 64 KiB or a wrong ``data_crc32c`` INVALID_ARGUMENT;
* lists are paged two at a time (the service picks the page size when none is asked for);
* ``fail_next(method, code, times)`` makes the next calls fail with a status (transient faults),
  ``deny`` lists secret ids whose calls answer PERMISSION_DENIED.

Every request is recorded (``calls``) by method name.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
import grpc
from google.cloud.secretmanager_v1 import types
from google.protobuf import timestamp_pb2

SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"
PROJECT_NUMBER = "123456789012"
_PAGE = 2
_MAX_PAYLOAD = 65_536


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Version:
    number: int
    data: bytes | None
    state: Any
    created: timestamp_pb2.Timestamp


@dataclass
class _Secret:
    secret_id: str
    labels: dict[str, str]
    versions: list[_Version] = field(default_factory=list)


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


class FakeSecretManager:
    """The server's state and handlers; ``start()`` serves it on a loopback port."""

    def __init__(self, project: str = "demo-project") -> None:
        self.project = project
        self.secrets: dict[str, _Secret] = {}
        self.calls: list[str] = []
        self.deny: set[str] = set()
        self.corrupt_next = 0  # answers to AccessSecretVersion whose CRC32C is wrong
        self._faults: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.address = ""

    # -- test controls ---------------------------------------------------------------------

    def fail_next(self, method: str, code: grpc.StatusCode, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` (e.g. ``AccessSecretVersion``) fail."""
        self._faults[method].extend([code] * times)

    def count(self, method: str) -> int:
        """How many times ``method`` was called."""
        return self.calls.count(method)

    # -- serving ---------------------------------------------------------------------------

    def start(self) -> str:
        """Serve on 127.0.0.1 and return ``host:port``."""
        handlers: dict[str, tuple[Any, Any, Any]] = {
            "CreateSecret": (types.CreateSecretRequest, types.Secret, self._create),
            "AddSecretVersion": (types.AddSecretVersionRequest, types.SecretVersion, self._add),
            "AccessSecretVersion": (
                types.AccessSecretVersionRequest,
                types.AccessSecretVersionResponse,
                self._access,
            ),
            "ListSecrets": (types.ListSecretsRequest, types.ListSecretsResponse, self._list),
            "ListSecretVersions": (
                types.ListSecretVersionsRequest,
                types.ListSecretVersionsResponse,
                self._list_versions,
            ),
            "DestroySecretVersion": (
                types.DestroySecretVersionRequest,
                types.SecretVersion,
                self._destroy,
            ),
        }
        rpc = {
            name: grpc.unary_unary_rpc_method_handler(
                self._wrap(name, handler),
                request_deserializer=request.deserialize,
                response_serializer=response.serialize,
            )
            for name, (request, response, handler) in handlers.items()
        }
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, rpc),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.stop(grace=None)

    def _wrap(self, method: str, handler: Any) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self.calls.append(method)
                faults = self._faults[method]
                fault = faults.pop(0) if faults else None
                if fault is not None:
                    context.abort(fault, f"injected {fault.name}")
                try:
                    return handler(request)
                except _Abort as exc:
                    context.abort(exc.code, exc.message)

        return call

    # -- names -----------------------------------------------------------------------------

    def _project(self, parent: str) -> None:
        if parent not in (f"projects/{self.project}", f"projects/{PROJECT_NUMBER}"):
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, f"Permission denied on {parent}")

    def _secret_of(self, name: str, *, must_exist: bool = True) -> tuple[str, _Secret | None]:
        parts = name.split("/")
        if len(parts) < 4 or parts[0] != "projects" or parts[2] != "secrets":
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid resource name {name}")
        self._project("/".join(parts[:2]))
        sid = parts[3]
        if sid in self.deny:
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission 'secretmanager.versions.access' denied for resource '{name}'",
            )
        secret = self.secrets.get(sid)
        if secret is None and must_exist:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Secret [{self._name(sid)}] not found.")
        return sid, secret

    def _name(self, sid: str, version: int | None = None) -> str:
        base = f"projects/{PROJECT_NUMBER}/secrets/{sid}"
        return base if version is None else f"{base}/versions/{version}"

    def _version_of(self, name: str) -> tuple[_Secret, _Version]:
        sid, secret = self._secret_of(name)
        assert secret is not None
        parts = name.split("/")
        if len(parts) != 6 or parts[4] != "versions":
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid version name {name}")
        if not secret.versions:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Secret Version [{name}] not found.")
        if parts[5] == "latest":
            return secret, secret.versions[-1]
        if not parts[5].isdigit() or not 1 <= int(parts[5]) <= len(secret.versions):
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Secret Version [{name}] not found.")
        return secret, secret.versions[int(parts[5]) - 1]

    def _message(self, sid: str, version: _Version) -> types.SecretVersion:
        return types.SecretVersion(
            name=self._name(sid, version.number), state=version.state, create_time=version.created
        )

    # -- methods ---------------------------------------------------------------------------

    def _create(self, request: types.CreateSecretRequest) -> types.Secret:
        self._project(request.parent)
        sid = request.secret_id
        if not sid or len(sid) > 255 or not all(c.isalnum() or c in "-_" for c in sid):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid secret id {sid!r}")
        replication = request.secret.replication
        if "automatic" not in replication and "user_managed" not in replication:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Secret.replication is required")
        if sid in self.secrets:
            raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"Secret [{self._name(sid)}] exists.")
        self.secrets[sid] = _Secret(sid, dict(request.secret.labels))
        return types.Secret(name=self._name(sid), labels=dict(request.secret.labels))

    def _add(self, request: types.AddSecretVersionRequest) -> types.SecretVersion:
        sid, secret = self._secret_of(request.parent)
        assert secret is not None
        data = request.payload.data
        if len(data) > _MAX_PAYLOAD:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "payload over 64 KiB")
        if "data_crc32c" in request.payload and request.payload.data_crc32c != int(
            google_crc32c.value(data)
        ):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Checksum mismatch")
        version = _Version(
            len(secret.versions) + 1, data, types.SecretVersion.State.ENABLED, _now()
        )
        secret.versions.append(version)
        return self._message(sid, version)

    def _access(self, request: types.AccessSecretVersionRequest) -> Any:
        secret, version = self._version_of(request.name)
        if version.state != types.SecretVersion.State.ENABLED or version.data is None:
            state = types.SecretVersion.State(version.state).name
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Secret Version [{self._name(secret.secret_id, version.number)}] is in "
                f"{state} state.",
            )
        crc = int(google_crc32c.value(version.data))
        if self.corrupt_next:
            self.corrupt_next -= 1
            crc ^= 1  # what a flipped bit on the way looks like to the client
        return types.AccessSecretVersionResponse(
            name=self._name(secret.secret_id, version.number),
            payload=types.SecretPayload(data=version.data, data_crc32c=crc),
        )

    @staticmethod
    def _page(items: list[Any], token: str, size: int) -> tuple[list[Any], str]:
        start = int(token or 0)
        end = start + (size or _PAGE)
        return items[start:end], (str(end) if end < len(items) else "")

    def _list(self, request: types.ListSecretsRequest) -> types.ListSecretsResponse:
        self._project(request.parent)
        names = [types.Secret(name=self._name(s)) for s in sorted(self.secrets)]
        page, token = self._page(names, request.page_token, request.page_size)
        return types.ListSecretsResponse(secrets=page, next_page_token=token, total_size=len(names))

    def _list_versions(
        self, request: types.ListSecretVersionsRequest
    ) -> types.ListSecretVersionsResponse:
        sid, secret = self._secret_of(request.parent)
        assert secret is not None
        newest_first = [self._message(sid, v) for v in reversed(secret.versions)]
        page, token = self._page(newest_first, request.page_token, request.page_size)
        return types.ListSecretVersionsResponse(
            versions=page, next_page_token=token, total_size=len(newest_first)
        )

    def _destroy(self, request: types.DestroySecretVersionRequest) -> types.SecretVersion:
        secret, version = self._version_of(request.name)
        version.data = None
        version.state = types.SecretVersion.State.DESTROYED
        return self._message(secret.secret_id, version)


def client_for(address: str) -> Any:
    """The real ``SecretManagerServiceClient`` over an insecure channel to ``address``."""
    from google.cloud.secretmanager_v1 import SecretManagerServiceClient
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport,
    )

    channel = grpc.insecure_channel(address)
    return SecretManagerServiceClient(transport=SecretManagerServiceGrpcTransport(channel=channel))
