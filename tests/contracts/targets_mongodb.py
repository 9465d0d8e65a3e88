"""MongoDB in the connector contract suite: the real connector (pymongo's operations and
errors) on mongomock, and on a real server when ``HEALTHIE_SYNC_TEST_MONGODB_URL`` is set.

No MongoDB server can be installed on the project's machines, so CI runs ``mongodb`` only: a
fresh in-process mongomock server per test, handed to the connector through its client
factory (the connector builds every other part itself). ``mongodb-real`` gets a fresh
database on the server named by the variable, dropped afterwards.

Poison is the database's own refusal. On mongomock: a unique index on ``key`` limited (partial
filter) to documents keyed 'poison', plus one such document of another integration, so the
poison write is refused with a duplicate-key error (11000) while every other write goes in. On
a real server: a collection validator (``key`` must not be 'poison'), refused with 121.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import mongomock

from connectors.base import Connector
from connectors.mongodb import MongoConnector
from tests.contracts.targets import Rows, TargetBackend

MODES = ("upsert", "update_only", "insert_only", "mirror")
REAL_URL_VARIABLE = "HEALTHIE_SYNC_TEST_MONGODB_URL"
MOCK_URI = "mongodb://mongomock.invalid:27017"


def read_rows(connector: Connector, table: str) -> Rows:
    """Every document of ``table`` as the connector stored it."""
    return cast(MongoConnector, connector).fetch_rows(table)


def _declared(connector: Connector) -> list[str]:
    mongo = cast(MongoConnector, connector)
    mongo.ensure_tables()  # the poison needs the collections to exist
    return sorted(mongo.table_options.tables or {})


def mock_factory(client: mongomock.MongoClient) -> Callable[..., Any]:
    """A client factory that hands the connector ``client`` (one in-process server), after
    checking the options pymongo would be given are ones mongomock knows to ignore."""

    def factory(uri: str, **options: Any) -> mongomock.MongoClient:
        assert uri.startswith("mongodb://")
        assert options["retryWrites"] is False
        assert options["tz_aware"] is True
        return client

    return factory


def _builder(
    database: str, uri: str, factory: Callable[..., Any] | None
) -> Callable[[Mapping[str, Any], Mapping[str, str] | None], Connector]:
    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        secrets = {"uri": uri} if credentials is None else dict(credentials)
        return MongoConnector.from_config(
            "warehouse", {"database": database, **options}, secrets, client_factory=factory
        )

    return build


def mongomock_backend(request: Any) -> Iterator[TargetBackend]:
    """The MongoDB connector on a fresh mongomock server."""
    client: Any = mongomock.MongoClient(MOCK_URI, tz_aware=True)

    @contextlib.contextmanager
    def poison(connector: Connector) -> Iterator[None]:
        tables = _declared(connector)
        db = client["healthie"]
        for table in tables:
            db[table].create_index(
                [("key", 1)], unique=True, name="poison", partialFilterExpression={"key": "poison"}
            )
            db[table].insert_one({"integration_id": "sentinel", "patient_id": "0", "key": "poison"})
        try:
            yield
        finally:
            for table in tables:
                db[table].delete_many({"integration_id": "sentinel"})
                db[table].drop_index("poison")

    yield TargetBackend(
        name="mongodb",
        build=_builder("healthie", MOCK_URI, mock_factory(client)),
        read=read_rows,
        modes=MODES,
        credential_names=("uri",),
        poison=poison,
    )


def real_backend(request: Any) -> Iterator[TargetBackend]:
    """The MongoDB connector on the server named by HEALTHIE_SYNC_TEST_MONGODB_URL."""
    import pymongo

    url = os.environ[REAL_URL_VARIABLE]
    database = f"hs_test_{uuid.uuid4().hex[:12]}"
    admin: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=5_000
    )

    @contextlib.contextmanager
    def poison(connector: Connector) -> Iterator[None]:
        tables = _declared(connector)
        for table in tables:
            admin[database].command(
                "collMod", table, validator={"key": {"$ne": "poison"}}, validationLevel="strict"
            )
        try:
            yield
        finally:
            for table in tables:
                admin[database].command("collMod", table, validator={}, validationLevel="off")

    try:
        yield TargetBackend(
            name="mongodb-real",
            build=_builder(database, url, None),
            read=read_rows,
            modes=MODES,
            credential_names=("uri",),
            poison=poison,
        )
    finally:
        admin.drop_database(database)
        admin.close()


MONGODB_BACKENDS: dict[str, Any] = {"mongodb": mongomock_backend}
if os.environ.get(REAL_URL_VARIABLE):  # a real server only where one is named (never in CI)
    MONGODB_BACKENDS["mongodb-real"] = real_backend


class CountingClient:
    """A mongomock client that records every command the connector sends through it, as
    ``(command, collection, operations)``: mongomock speaks no wire protocol, so pymongo's
    command monitoring sees nothing; this counts the client calls instead (each one command
    on a real server: the connector's finds fit one batch)."""

    COMMANDS = frozenset({"find", "bulk_write", "create_index", "delete_many", "index_information"})

    def __init__(self, client: mongomock.MongoClient | None = None) -> None:
        self.client = client or mongomock.MongoClient(MOCK_URI, tz_aware=True)
        self.calls: list[tuple[str, str, int]] = []
        #: command -> what to do right after it (e.g. another writer's change), once
        self.after: dict[str, Callable[[], None]] = {}

    def factory(self, uri: str, **options: Any) -> CountingClient:
        """The connector's client factory."""
        mock_factory(self.client)(uri, **options)
        return self

    def names(self, command: str | None = None) -> list[str]:
        """The commands sent (only ``command``'s collections when given)."""
        return [c if command is None else t for c, t, _ in self.calls if command in (None, c)]

    def __getitem__(self, database: str) -> _CountingDatabase:
        return _CountingDatabase(self, self.client[database])

    def close(self) -> None:
        """Nothing to release (the mock server outlives the connector)."""


class _CountingDatabase:
    def __init__(self, owner: CountingClient, db: Any) -> None:
        self._owner, self._db = owner, db

    def __getitem__(self, name: str) -> _CountingCollection:
        return _CountingCollection(self._owner, self._db[name])

    def list_collection_names(self) -> list[str]:
        self._owner.calls.append(("list_collection_names", "", 0))
        return cast(list[str], self._db.list_collection_names())


class _CountingCollection:
    def __init__(self, owner: CountingClient, collection: Any) -> None:
        self._owner, self._collection = owner, collection

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._collection, name)
        if name not in CountingClient.COMMANDS:
            return method

        def counted(*args: Any, **kwargs: Any) -> Any:
            size = len(args[0]) if name == "bulk_write" else 0
            self._owner.calls.append((name, self._collection.name, size))
            answer = method(*args, **kwargs)
            if name == "find":
                answer = list(answer)  # read now, as the server would answer now
            hook = self._owner.after.pop(name, None)
            if hook is not None:
                hook()
            return answer

        return counted
