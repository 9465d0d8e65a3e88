"""MongoDB's failures as the engine's kinds, at the edge: driver exceptions and server error
codes mapped by type and number only (the driver's texts can quote document values, and a bad
URI's its password). Used by ``connectors.mongodb``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bson.errors import InvalidDocument
from pymongo import errors as perr

from app.core.errors import (
    ConfigurationError,
    HealthieSyncError,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)

#: the connector's unique index on (integration_id, patient_id, key)
INDEX_NAME = "healthie_sync_identity"
# Server error codes (github.com/mongodb/mongo, src/mongo/base/error_codes.yml).
AUTH = {11, 13, 18, 8000}  # UserNotFound, Unauthorized, AuthenticationFailed, AtlasError
INDEX_CONFLICT = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict
# unreachable, network timeout, socket; time limits; shutdown, stepdown, not primary; conflict
TRANSIENT = {6, 7, 89, 9001} | {50, 262} | {91, 189, 10107, 11600, 11602, 13435, 13436} | {112}
THROTTLED = {16500}  # TooManyRequests (Azure Cosmos DB's MongoDB API)


@contextmanager
def mapped(where: str) -> Iterator[None]:
    """Driver exceptions inside as the engine's kinds: names and codes only (the
    driver's texts can quote document values, and a bad URI's its password)."""
    try:
        yield
    except HealthieSyncError:
        raise
    except (perr.InvalidURI, perr.ConfigurationError):
        raise ConfigurationError(
            f"{where}: credentials.uri is not a usable MongoDB connection string"
        ) from None
    except perr.ConnectionFailure as exc:  # AutoReconnect, server selection, network
        raise UpstreamUnavailable(f"{where}: MongoDB unavailable ({type(exc).__name__})") from exc
    except perr.OperationFailure as exc:
        if exc.has_error_label("RetryableWriteError"):
            raise UpstreamUnavailable(f"{where}: transient failure ({exc.code})") from None
        raise for_code(f"{where}: refused", exc.code) from None
    except InvalidDocument:
        raise TargetRejected(f"{where}: a document BSON cannot encode") from None
    except perr.PyMongoError as exc:
        raise UpstreamUnavailable(f"{where}: {type(exc).__name__}") from None


def for_code(what: str, code: Any) -> HealthieSyncError:
    """The engine's kind for a MongoDB server error code."""
    number = code if isinstance(code, int) else -1
    if number in AUTH:
        return ConfigurationError(
            f"{what} (code {number}): authentication or authorization failed; check the user "
            "in credentials.uri and its roles on the database"
        )
    if number in INDEX_CONFLICT:
        return ConfigurationError(
            f"{what} (code {number}): an index on (integration_id, patient_id, key) exists "
            f"with other options; drop it so the connector can create {INDEX_NAME!r}"
        )
    if number in THROTTLED:
        return RateLimited(f"{what} (code {number}): throttled by the server")
    if number in TRANSIENT:
        return UpstreamUnavailable(f"{what} (code {number}): transient server failure")
    return TargetRejected(f"{what} (code {number})")
