"""The embedded queue: Pub/Sub semantics on one SQLite file (or ``":memory:"`` for tests).

Fan-out happens at publish time: one row per matching subscription, so each subscription keeps
its own delivery state. A lease is a ``visible_at`` in the future plus a fresh ``ack_id``; an
expired lease makes the message visible again, exactly like an ack deadline. ``extend`` moves
``visible_at`` and nothing else: a heartbeat never counts as a delivery, only a ``pull`` does.

**A dead holder's messages** come back when its heartbeat horizon lapses (the consumer renews
its leases every few seconds: ``workers.consumer``), not through a holder identity a restarted
process could check. Reclaiming sooner, by looking up the holder's pid, would not make recovery
faster: the dead worker's patient leases in the state store last the same horizon, so its
messages would only meet "patient busy" and spend a delivery attempt. It would also be wrong
where a pid proves nothing (containers sharing the file in separate pid namespaces, a pid
reused), and Pub/Sub cannot do it, so the embedded queue would hide a production difference.

**Failures.** A database that is locked by another process for longer than ``busy_timeout``
seconds, full, or not writable is ``QueueUnavailable`` (retry later; the API answers 503),
mapped in one place (``_unavailable``).

Publishes are group-committed: concurrent callers hand their messages to one writer thread,
which stores everything pending in a single transaction and then releases each caller. Every
caller still returns only after its own messages are committed; under load, many webhooks
share one commit instead of paying one each.
"""

from __future__ import annotations

import json
import queue as stdlib_queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from app.core.errors import ConfigurationError, QueueUnavailable
from app.queue.base import Message, SubscriptionSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS subscriptions (
  name TEXT PRIMARY KEY, topic TEXT NOT NULL, filter TEXT NOT NULL, ack_deadline REAL NOT NULL,
  max_attempts INTEGER, dead_letter_topic TEXT, retention REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  subscription TEXT NOT NULL, message_id TEXT NOT NULL, data BLOB NOT NULL,
  attributes TEXT NOT NULL, publish_time REAL NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, visible_at REAL NOT NULL, ack_id TEXT
);
DROP INDEX IF EXISTS messages_ready;
CREATE INDEX IF NOT EXISTS messages_order ON messages (subscription, seq);
CREATE INDEX IF NOT EXISTS messages_ack ON messages (ack_id);
CREATE INDEX IF NOT EXISTS messages_age ON messages (subscription, publish_time);
"""


class SqliteQueue:
    """A durable queue in one SQLite database; thread-safe within a process.

    Several processes may share the file (SQLite's locking serializes writers; a call waits
    up to ``busy_timeout`` seconds for another's lock); ``:memory:`` gives a private in-process
    queue for unit tests.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self._path = str(path)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with _unavailable(f"open queue {self._path!r}"):
            self._db = sqlite3.connect(
                self._path, check_same_thread=False, isolation_level=None, timeout=busy_timeout
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._subs_cache: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self._purged_at: dict[str, float] = {}  # retention purge runs at most once a minute
        self._pending: stdlib_queue.SimpleQueue[_Publish | None] = stdlib_queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    # -- administration -------------------------------------------------------------------
    def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` if missing."""
        with self._lock, _unavailable(f"create topic {topic!r}"):
            self._db.execute("INSERT OR IGNORE INTO topics(name) VALUES (?)", (topic,))

    def ensure_subscription(self, spec: SubscriptionSpec) -> None:
        """Create the subscription if missing; an existing one keeps its settings."""
        with self._lock, _unavailable(f"create subscription {spec.name!r}"):
            if not self._db.execute("SELECT 1 FROM topics WHERE name=?", (spec.topic,)).fetchone():
                raise ConfigurationError(f"topic {spec.topic!r} does not exist")
            self._db.execute(
                "INSERT OR IGNORE INTO subscriptions VALUES (?,?,?,?,?,?,?)",
                (
                    spec.name,
                    spec.topic,
                    json.dumps(dict(spec.filter), sort_keys=True),
                    spec.ack_deadline_seconds,
                    spec.max_delivery_attempts,
                    spec.dead_letter_topic,
                    spec.retention_seconds,
                ),
            )
            self._subs_cache.clear()

    def _subscribers(self, topic: str) -> list[tuple[str, dict[str, str]]]:
        cached = self._subs_cache.get(topic)
        if cached is None:
            if not self._db.execute("SELECT 1 FROM topics WHERE name=?", (topic,)).fetchone():
                raise ConfigurationError(f"topic {topic!r} does not exist")
            rows = self._db.execute(
                "SELECT name, filter FROM subscriptions WHERE topic=? ORDER BY name", (topic,)
            ).fetchall()
            cached = [(name, json.loads(flt)) for name, flt in rows]
            self._subs_cache[topic] = cached
        return cached

    # -- publishing -------------------------------------------------------------------------
    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Store the message for every matching subscription; returns its id."""
        return self.publish_many(topic, [(data, attributes or {})])[0]

    def publish_many(
        self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[str]:
        """Store all messages (group-committed with concurrent publishers); returns their ids."""
        return self.submit_many(topic, messages).result(timeout=60)

    def submit_many(
        self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> Future[list[str]]:
        """Hand messages to the group commit; the future resolves once they are stored."""
        request = _Publish(topic, list(messages))
        self._ensure_writer()
        self._pending.put(request)
        return request.future

    def _ensure_writer(self) -> None:
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_loop, name="sqlite-queue-writer", daemon=True
                    )
                    self._writer.start()

    def _write_loop(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < 512:
                try:
                    nxt = self._pending.get_nowait()
                except stdlib_queue.Empty:
                    break
                if nxt is None:
                    self._pending.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[_Publish]) -> None:
        now = time.time()
        results: list[tuple[_Publish, list[str] | BaseException]] = []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for request in batch:
                    try:
                        subscribers = self._subscribers(request.topic)
                    except ConfigurationError as exc:
                        results.append((request, exc))
                        continue
                    ids = []
                    for data, attributes in request.messages:
                        message_id = uuid.uuid4().hex
                        ids.append(message_id)
                        attrs = json.dumps(dict(attributes), sort_keys=True)
                        for sub, flt in subscribers:
                            if all(attributes.get(k) == v for k, v in flt.items()):
                                self._db.execute(
                                    "INSERT INTO messages(subscription, message_id, data,"
                                    " attributes, publish_time, visible_at)"
                                    " VALUES (?,?,?,?,?,?)",
                                    (sub, message_id, bytes(data), attrs, now, now),
                                )
                    results.append((request, ids))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                failure = _as_unavailable("publish", exc)
                results = [(request, failure) for request in batch]
        for request, outcome in results:
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open

    # -- consuming --------------------------------------------------------------------------
    def pull(self, subscription: str, max_messages: int = 100) -> list[Message]:
        """Lease up to ``max_messages`` visible messages, dead-lettering exhausted ones."""
        now = time.time()
        out: list[Message] = []
        with self._lock, _unavailable(f"pull from {subscription!r}"):
            sub = self._db.execute(
                "SELECT ack_deadline, max_attempts, dead_letter_topic, retention"
                " FROM subscriptions WHERE name=?",
                (subscription,),
            ).fetchone()
            if sub is None:
                raise ConfigurationError(f"subscription {subscription!r} does not exist")
            deadline, max_attempts, dlq, retention = sub
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if now - self._purged_at.get(subscription, 0.0) >= 60:
                    self._db.execute(
                        "DELETE FROM messages WHERE subscription=? AND publish_time < ?",
                        (subscription, now - retention),
                    )
                    self._purged_at[subscription] = now
                rows = self._db.execute(
                    "SELECT seq, message_id, data, attributes, publish_time, attempts"
                    " FROM messages INDEXED BY messages_order WHERE subscription=?"
                    " AND visible_at <= ? ORDER BY seq LIMIT ?",
                    (subscription, now, max_messages),
                ).fetchall()
                for seq, message_id, data, attrs, published, attempts in rows:
                    if max_attempts and dlq and attempts >= max_attempts:
                        self._forward_dead_letter(dlq, subscription, data, attrs, attempts, now)
                        self._db.execute("DELETE FROM messages WHERE seq=?", (seq,))
                        continue
                    ack_id = f"{subscription}:{seq}:{uuid.uuid4().hex}"
                    self._db.execute(
                        "UPDATE messages SET attempts=?, visible_at=?, ack_id=? WHERE seq=?",
                        (attempts + 1, now + deadline, ack_id, seq),
                    )
                    out.append(
                        Message(
                            message_id=message_id,
                            data=bytes(data),
                            attributes=json.loads(attrs),
                            ack_id=ack_id,
                            delivery_attempt=attempts + 1,
                            publish_time=datetime.fromtimestamp(published, tz=UTC),
                        )
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
        return out

    def _forward_dead_letter(
        self, topic: str, source: str, data: bytes, attrs: str, attempts: int, now: float
    ) -> None:
        attributes = json.loads(attrs)
        # Pub/Sub adds the same facts as CloudPubSubDeadLetterSourceSubscription & co.
        attributes["dead_letter_source_subscription"] = source
        attributes["dead_letter_delivery_attempts"] = str(attempts)
        message_id = uuid.uuid4().hex
        for sub, flt in self._subscribers(topic):
            if all(attributes.get(k) == v for k, v in flt.items()):
                self._db.execute(
                    "INSERT INTO messages(subscription, message_id, data, attributes,"
                    " publish_time, visible_at) VALUES (?,?,?,?,?,?)",
                    (sub, message_id, data, json.dumps(attributes, sort_keys=True), now, now),
                )

    def ack(self, subscription: str, ack_ids: Sequence[str]) -> None:
        """Delete the leased messages; unknown or expired ack ids are ignored (as in Pub/Sub)."""
        with self._lock, _unavailable(f"ack on {subscription!r}"):
            self._db.executemany(
                # INDEXED BY: with the age index present the planner would otherwise scan the
                # whole subscription for every ack (ack ids are unique and name their subscription)
                "DELETE FROM messages INDEXED BY messages_ack WHERE ack_id=? AND subscription=?",
                [(a, subscription) for a in ack_ids],
            )

    def nack(self, subscription: str, ack_ids: Sequence[str], delay_seconds: float = 0) -> None:
        """Make the leased messages visible again after ``delay_seconds``."""
        visible = time.time() + max(0.0, delay_seconds)
        with self._lock, _unavailable(f"nack on {subscription!r}"):
            self._db.executemany(
                "UPDATE messages INDEXED BY messages_ack SET visible_at=?, ack_id=NULL"
                " WHERE ack_id=? AND subscription=?",
                [(visible, a, subscription) for a in ack_ids],
            )

    def extend(self, subscription: str, ack_ids: Sequence[str], seconds: float) -> None:
        """Push the leases of ``ack_ids`` to ``seconds`` from now (shorter or longer than the
        lease they had: a heartbeat); an ack id no longer leased (acked, nacked, or pulled
        again by another worker) matches no row. The delivery count is not touched."""
        visible = time.time() + max(0.0, seconds)
        with self._lock, _unavailable(f"extend leases on {subscription!r}"):
            self._db.executemany(
                "UPDATE messages INDEXED BY messages_ack SET visible_at=?"
                " WHERE ack_id=? AND subscription=?",
                [(visible, a, subscription) for a in ack_ids],
            )

    def depth(self, subscription: str) -> int:
        """Messages held for ``subscription`` (leased or not); for operators and tests."""
        with self._lock, _unavailable(f"count {subscription!r}"):
            row = self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE subscription=?", (subscription,)
            ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Finish pending publishes, stop the writer and close the database connection."""
        if self._writer is not None:
            self._pending.put(None)
            self._writer.join(timeout=30)
        with self._lock:
            self._db.close()


#: SQLite's primary result codes for "not now": another connection holds the lock, the disk
#: or database is full, I/O failed, the file cannot be opened or written.
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
    }
)


def _as_unavailable(what: str, exc: sqlite3.Error) -> QueueUnavailable | sqlite3.Error:
    """``QueueUnavailable`` for a database that cannot serve now (locked past the busy timeout,
    full, unwritable); any other SQLite error unchanged (a bug, not a state of the queue)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in _UNAVAILABLE_CODES or (
        primary is None and isinstance(exc, sqlite3.OperationalError)
    ):
        # the error text is SQLite's own ("database is locked"): no message data in it
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        return QueueUnavailable(f"{what} failed: {name}: {exc}")
    return exc


@contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Run a database step, converting SQLite's "not now" errors (see ``_as_unavailable``)."""
    try:
        yield
    except sqlite3.Error as exc:
        mapped = _as_unavailable(what, exc)
        if mapped is exc:
            raise
        raise mapped from exc


class _Publish:
    """One caller's messages waiting for the group commit."""

    __slots__ = ("future", "messages", "topic")

    def __init__(self, topic: str, messages: list[tuple[bytes, Mapping[str, str]]]) -> None:
        self.topic = topic
        self.messages = messages
        self.future: Future[list[str]] = Future()
