"""The state contract, run against every backend: SQLite (memory and file) and Firestore.

The Firestore cases use the emulator (``tests/firestore_emulator.py``) with a fresh collection
prefix per test, so tests never see each other's documents. Tests racing several processes
open one store per thread over the same state (``open_store``): separate Firestore clients,
separate SQLite connections to one file; an in-memory database cannot be shared, so there
the threads share one store. The few Firestore-only tests at the end pin how vendor errors are
converted at the store's edge.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from app.core.errors import (
    ConfigurationError,
    FatalError,
    RateLimited,
    StoreUnavailable,
)
from app.core.models import Cadence, Counts, RunRecord, WriteOperation, WritePlan
from app.state import sqlite as sqlite_state
from app.state.base import (
    AuditRecord,
    DeadLetter,
    PatientRecord,
    PatientState,
    PendingPatient,
    StateStore,
)
from app.state.firestore import FirestoreStateStore, convert_error
from app.state.sqlite import SqliteStateStore
from tests.firestore_emulator import firestore_emulator  # noqa: F401 (fixture)

#: Per-document size limit of each backend; None means the backend has none.
DOCUMENT_LIMIT = {"sqlite-memory": None, "sqlite-file": None, "firestore": 1_048_576}

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(
    params=[
        "sqlite-memory",
        "sqlite-file",
        pytest.param("firestore", marks=pytest.mark.firestore),
    ]
)
def backend(request) -> str:
    return request.param


@pytest.fixture
def open_store(backend, request, tmp_path):
    """Opens stores over one shared state, as separate processes would (see the docstring)."""
    if backend == "firestore":
        request.getfixturevalue("firestore_emulator")
    prefix = f"test-{uuid4().hex[:12]}"
    opened: list[StateStore] = []

    def open_():
        if backend == "sqlite-memory" and opened:
            return opened[0]
        s: StateStore
        if backend == "firestore":
            client = firestore.Client(project="healthie-sync-test")
            s = FirestoreStateStore(client, prefix=prefix, timeout=10)
        else:
            path = ":memory:" if backend == "sqlite-memory" else tmp_path / "state.db"
            s = SqliteStateStore(path)
        opened.append(s)
        return s

    yield open_
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store):
    return open_store()


def patient(integration_id="clinic-a", patient_id="1001", **changes) -> PatientState:
    fields = {
        "integration_id": integration_id,
        "patient_id": patient_id,
        "content_hash": "sha256:aa",
        "entry": {"id": patient_id, "first_name": "Ada"},
        "plan": None,
        "outcome": "written",
        "updated_at": T0,
    }
    return PatientState.model_validate(fields | changes)


def run(run_id, integration_id="clinic-a", minutes=0, **changes) -> RunRecord:
    fields = {
        "run_id": run_id,
        "integration_id": integration_id,
        "cadence": Cadence.HOURLY,
        "started_at": T0 + timedelta(minutes=minutes),
    }
    return RunRecord.model_validate(fields | changes)


# --- patients ------------------------------------------------------------------------------


def test_patient_is_none_before_first_put_then_round_trips(store):
    assert store.get_patient("clinic-a", "1001") is None
    plan = WritePlan(
        patient_id="1001",
        operations=(
            WriteOperation(
                target="warehouse",
                operation="upsert_patient",
                args={"name": "Zoë Ñandú", "codes": [[1, 2], [3]], "score": 0.5, "vip": True},
            ),
            WriteOperation(target="crm", operation="tag", args={"tags": ["日本語", "✓"]}),
        ),
        rationale="première visite 🙂",
        backend="plan",
    )
    entry = {
        "id": "1001",
        "first_name": "Zoë",
        "last_name": "Łukasiewicz-Ñandú",
        "notes": "日本語 ✓ 🙂",
        "matrix": [[1, 2], [3, [4]]],
        "weight": 72.5,
        "visits": 3,
        "active": True,
        "deleted_at": None,
        "tags": [{"name": "VIP"}, {"name": "Ünïcode"}],
    }
    state = patient(entry=entry, plan=plan)
    store.put_patient(state)
    got = store.get_patient("clinic-a", "1001")
    assert got == state
    assert got.updated_at.utcoffset() is not None
    assert isinstance(got.entry["visits"], int)
    assert isinstance(got.entry["weight"], float)


def test_put_replaces_the_whole_previous_state(store):
    plan = WritePlan(
        patient_id="1001", operations=(WriteOperation(target="w", operation="o", args={"a": 1}),)
    )
    store.put_patient(patient(entry={"id": "1001", "old": "x"}, plan=plan))
    newer = patient(
        content_hash="sha256:bb",
        entry={"id": "1001"},
        outcome="plan_skipped",
        updated_at=T0 + timedelta(hours=1),
    )
    store.put_patient(newer)
    assert store.get_patient("clinic-a", "1001") == newer


def test_same_patient_id_never_mixes_between_integrations(store):
    a = patient("clinic-a", "1001", entry={"id": "1001", "owner": "a"})
    b = patient("clinic-b", "1001", entry={"id": "1001", "owner": "b"}, content_hash="sha256:b")
    store.put_patient(a)
    store.put_patient(b)
    assert store.get_patient("clinic-a", "1001") == a
    assert store.get_patient("clinic-b", "1001") == b
    assert store.get_patient("clinic-c", "1001") is None
    assert store.get_patient("clinic-a", "1002") is None


def test_ids_that_look_like_paths_stay_separate(store):
    # Unescaped, both pairs would name ".../clinic-a/patients/1001/patients/x".
    pairs = [
        ("clinic-a/patients/1001", "x"),
        ("clinic-a", "1001/patients/x"),
        ("clinic-a", "A"),
        ("clinic-a", "%41"),
        ("clinic-a", "a"),
        ("clinic-a", "_"),
        ("clinic-a", "__name__"),
        ("clinic-a", "."),
        ("clinic-a", ".."),
        ("clinic-a", "é"),
    ]
    for i, (integration_id, patient_id) in enumerate(pairs):
        store.put_patient(patient(integration_id, patient_id, content_hash=f"h{i}"))
    for i, (integration_id, patient_id) in enumerate(pairs):
        got = store.get_patient(integration_id, patient_id)
        assert got is not None
        assert (got.integration_id, got.patient_id, got.content_hash) == (
            integration_id,
            patient_id,
            f"h{i}",
        )
    assert store.get_patient("clinic-a", "1001") is None


def test_entry_beyond_one_mib(store, backend):
    limit = DOCUMENT_LIMIT[backend]
    # "é" is two UTF-8 bytes: sizes must be counted in bytes, not characters.
    near = patient(entry={"id": "1001", "note": "é" * 520_000})  # 1,040,000 bytes of text
    store.put_patient(near)
    assert store.get_patient("clinic-a", "1001") == near
    over = patient(entry={"id": "1001", "note": "é" * 525_000}, content_hash="sha256:big")
    if limit is None:
        store.put_patient(over)
        assert store.get_patient("clinic-a", "1001") == over
    else:
        with pytest.raises(FatalError, match=r"1001.*clinic-a.*1 MiB"):
            store.put_patient(over)
        assert store.get_patient("clinic-a", "1001") == near


# --- runs ----------------------------------------------------------------------------------


def test_runs_list_most_recent_first_with_updates_limit_and_filter(store):
    first, third, second = run("r1", minutes=0), run("r3", minutes=20), run("r2", minutes=10)
    other = run("r4", integration_id="clinic-b", minutes=30)
    for r in (first, third, second, other):
        store.save_run(r)
    finished = first.model_copy(
        update={
            "status": "finished",
            "finished_at": T0 + timedelta(minutes=5),
            "patients": 2,
            "counts": Counts(processed=2, writes=3),
        }
    )
    store.save_run(finished)

    assert store.list_runs("clinic-a") == [third, second, finished]
    assert store.list_runs("clinic-a", limit=2) == [third, second]
    assert store.list_runs("clinic-b") == [other]
    assert store.list_runs("clinic-c") == []
    assert store.list_runs() == [other, third, second, finished]
    assert store.list_runs(limit=1) == [other]
    assert store.list_runs("clinic-a")[-1].finished_at.utcoffset() is not None


# --- watermarks ----------------------------------------------------------------------------


def test_watermarks_get_set_and_advance(store):
    assert store.get_watermark("clinic-a", "sweep") is None
    eastern = timezone(timedelta(hours=-5))
    first = datetime(2026, 3, 1, 7, 0, 0, 654321, tzinfo=eastern)
    store.set_watermark("clinic-a", "sweep", first)
    got = store.get_watermark("clinic-a", "sweep")
    assert got == first
    assert got.utcoffset() is not None
    later = first + timedelta(hours=1)
    store.set_watermark("clinic-a", "sweep", later)
    assert store.get_watermark("clinic-a", "sweep") == later
    assert store.get_watermark("clinic-a", "other") is None
    assert store.get_watermark("clinic-b", "sweep") is None
    store.set_watermark("clinic-b", "sweep", first)
    assert store.get_watermark("clinic-a", "sweep") == later
    # Both backends store what they are given; keeping marks monotonic is the caller's job.
    store.set_watermark("clinic-a", "sweep", first)
    assert store.get_watermark("clinic-a", "sweep") == first


# --- audit ---------------------------------------------------------------------------------


def test_audit_lists_in_write_order_with_patient_filter(store):
    # ``at`` runs backwards, so ordering by it (rather than by write order) fails this test.
    records = [
        AuditRecord(
            integration_id="clinic-a",
            patient_id=("1001", "1002", "1003")[i % 3],
            run_id=f"run-{i // 4}",
            at=T0 - timedelta(seconds=i),
            outcome="written" if i % 2 else "plan_skipped",
            operations=[f"warehouse.op{i}"] if i % 2 else [],
            detail=f"détail {i}",
        )
        for i in range(12)
    ]
    foreign = AuditRecord(
        integration_id="clinic-b", patient_id="1001", run_id="run-x", at=T0, outcome="written"
    )
    for record in records[:6]:
        store.append_audit(record)
    store.append_audit(foreign)
    for record in records[6:]:
        store.append_audit(record)

    assert store.list_audit("clinic-a") == records
    assert store.list_audit("clinic-a", "1001") == [r for r in records if r.patient_id == "1001"]
    assert store.list_audit("clinic-a", "9999") == []
    assert store.list_audit("clinic-b") == [foreign]
    assert store.list_audit("clinic-c") == []


# --- pending patients ----------------------------------------------------------------------


def pending(patient_id, minutes=0, *reasons, version=0) -> PendingPatient:
    return PendingPatient(
        patient_id=patient_id,
        dirty_since=T0 + timedelta(minutes=minutes),
        reasons=list(reasons),
        version=version,
    )


def test_staging_keeps_earliest_since_unions_reasons_and_bumps_version(store):
    assert store.list_pending("clinic-a") == []
    store.add_pending("clinic-a", [pending("1001", 10, "webhook"), pending("1002", 5, "sweep")])
    assert store.list_pending("clinic-a") == [
        pending("1001", 10, "webhook", version=1),
        pending("1002", 5, "sweep", version=1),
    ]
    # A later mark keeps the earlier since; reasons merge sorted; the given version is ignored.
    store.add_pending("clinic-a", [pending("1001", 20, "webhook", "appointment", version=99)])
    # An earlier mark, given in another zone, moves since back.
    earlier = (T0 - timedelta(minutes=1)).astimezone(timezone(timedelta(hours=-5)))
    store.add_pending("clinic-a", [PendingPatient(patient_id="1002", dirty_since=earlier)])
    # One call naming a patient three times stages it three times.
    store.add_pending(
        "clinic-a", [pending("1003", 3, "b"), pending("1003", 1, "a"), pending("1003", 2, "a")]
    )
    store.add_pending("clinic-a", [])
    got = store.list_pending("clinic-a")
    assert got == [
        pending("1001", 10, "appointment", "webhook", version=2),
        pending("1002", -1, "sweep", version=2),
        pending("1003", 1, "a", "b", version=3),
    ]
    assert all(p.dirty_since.utcoffset() == timedelta(0) for p in got)


def test_pending_lists_in_patient_id_string_order_page_by_page(store):
    # 2,412 patients: several 500-write batches on Firestore. Ids sort as strings ("10" < "9"),
    # by code point (UTF-8 bytes), and not as Firestore's escaped document ids ("_a" is "%5Fa").
    odd = ["_a", "-b", "A", "a", "a b", "Z~", "%41", "1/2", "é", "日本", "\ufffd", "😀"]
    ids = [str(n) for n in range(1, 2401)] + odd
    store.add_pending("clinic-a", [pending(i, 0, "sweep") for i in reversed(ids)])
    expected = sorted(ids)
    assert expected[:4] == ["%41", "-b", "1", "1/2"]

    pages, after = [], None
    for _ in range(5):  # bounded: a backend ignoring ``after`` must fail, not hang
        if not (page := store.list_pending("clinic-a", after=after, limit=1000)):
            break
        pages.append(page)
        after = page[-1].patient_id
    assert [len(p) for p in pages] == [1000, 1000, 412]
    listed = [p for page in pages for p in page]
    assert [p.patient_id for p in listed] == expected
    assert {p.version for p in listed} == {1}

    assert [p.patient_id for p in store.list_pending("clinic-a", limit=3)] == expected[:3]
    # ``after`` need not be staged: "15" is followed by "150".
    assert [p.patient_id for p in store.list_pending("clinic-a", after="15", limit=2)] == [
        "150",
        "1500",
    ]
    assert store.list_pending("clinic-a", after=expected[-1]) == []
    assert store.list_pending("clinic-a", limit=0) == []

    store.remove_pending("clinic-a", listed)
    assert store.list_pending("clinic-a") == []


def test_pending_patients_never_mix_between_integrations(store):
    store.add_pending("clinic-a", [pending("1001", 0, "a")])
    store.add_pending("clinic-b", [pending("1001", 5, "b"), pending("1002", 5, "b")])
    store.add_pending("clinic-a/pending", [pending("1001", 9, "path")])
    assert store.list_pending("clinic-a") == [pending("1001", 0, "a", version=1)]
    assert store.list_pending("clinic-b") == [
        pending("1001", 5, "b", version=1),
        pending("1002", 5, "b", version=1),
    ]
    assert store.list_pending("clinic-a/pending") == [pending("1001", 9, "path", version=1)]
    assert store.list_pending("clinic-c") == []
    store.remove_pending("clinic-b", [pending("1001", version=1)])
    assert store.list_pending("clinic-a") == [pending("1001", 0, "a", version=1)]
    assert store.list_pending("clinic-b") == [pending("1002", 5, "b", version=1)]


def test_remove_pending_keeps_patients_staged_again_after_listing(store):
    store.add_pending("clinic-a", [pending(p, 0, "webhook") for p in ("1001", "1002", "1003")])
    listed = store.list_pending("clinic-a")
    # Staged again while the listed versions are being published:
    store.add_pending("clinic-a", [pending("1002", 5, "sweep")])
    store.remove_pending("clinic-a", [*listed, pending("9999", version=1)])  # unknown: ignored
    assert store.list_pending("clinic-a") == [pending("1002", 0, "sweep", "webhook", version=2)]
    store.remove_pending("clinic-a", listed)  # still stale: nothing happens
    assert len(store.list_pending("clinic-a")) == 1
    store.remove_pending("clinic-a", store.list_pending("clinic-a"))
    assert store.list_pending("clinic-a") == []
    store.add_pending("clinic-a", [pending("1001", 9, "again")])
    assert [(p.patient_id, p.reasons) for p in store.list_pending("clinic-a")] == [
        ("1001", ["again"])
    ]


def test_no_staging_is_lost_while_other_processes_stage_and_publish(open_store):
    # Two stagers and a publisher (list, then remove what was listed) race on a few patients.
    # Every staging adds a unique reason, so every reason must end either in a listed version
    # the publisher removed or still be staged: concurrent stagings merge instead of
    # overwriting each other, and removing a listed version never drops a newer staging, even
    # one landing between the remover's read and its delete.
    stagers, publisher = [open_store(), open_store()], open_store()
    ids, rounds = ["1001", "1002", "1003"], 40
    published: set[str] = set()
    staging = threading.Semaphore(0)

    def stage(n):
        try:
            for k in range(rounds):
                marks = [pending(i, k, f"s{n}-r{k:02d}-{i}") for i in ids]
                stagers[n].add_pending("clinic-a", marks)
        finally:
            staging.release()

    def publish():
        finished = 0
        while finished < len(stagers):
            finished += staging.acquire(blocking=False)
            listed = publisher.list_pending("clinic-a")
            publisher.remove_pending("clinic-a", listed)
            published.update(r for p in listed for r in p.reasons)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(stage, 0), pool.submit(stage, 1), pool.submit(publish)]
        for future in futures:
            future.result(timeout=60)
    left = {r for p in publisher.list_pending("clinic-a") for r in p.reasons}
    staged = {f"s{n}-r{k:02d}-{i}" for n in range(2) for k in range(rounds) for i in ids}
    assert published | left == staged


def test_pending_beyond_one_mib(store, backend):
    huge = pending("1001", 0, "r" * 1_100_000)
    if DOCUMENT_LIMIT[backend] is None:
        store.add_pending("clinic-a", [huge])
        assert store.list_pending("clinic-a")[0].reasons == huge.reasons
    else:
        with pytest.raises(FatalError, match=r"1001.*clinic-a.*1 MiB"):
            store.add_pending("clinic-a", [huge])
        assert store.list_pending("clinic-a") == []


# --- leases --------------------------------------------------------------------------------


def test_lease_is_exclusive_renewable_and_released_only_by_its_owner(store):
    assert store.try_lease("flush:hourly", "a", 60)
    assert store.try_lease("flush:hourly", "a", 60)  # renewal
    assert not store.try_lease("flush:hourly", "b", 60)
    assert store.try_lease("flush:daily", "b", 60)  # another name, another lease
    store.release_lease("flush:hourly", "b")  # not b's: ignored
    assert not store.try_lease("flush:hourly", "b", 60)
    store.release_lease("flush:hourly", "a")
    assert store.try_lease("flush:hourly", "b", 60)
    assert not store.try_lease("flush:hourly", "a", 60)
    assert not store.try_lease("flush:daily", "a", 60)
    store.release_lease("never-taken", "a")


def test_renewal_extends_a_lease_and_an_expired_lease_is_taken_over(store):
    assert store.try_lease("patient:clinic-a:1001", "a", 0.3)
    assert store.try_lease("patient:clinic-a:1001", "a", 60)  # now outlives the first ttl
    assert store.try_lease("patient:clinic-a:1002", "a", 0.3)
    time.sleep(0.5)
    assert not store.try_lease("patient:clinic-a:1001", "b", 60)
    assert store.try_lease("patient:clinic-a:1002", "b", 60)  # expired: taken over
    assert not store.try_lease("patient:clinic-a:1002", "a", 60)  # the old owner lost it
    store.release_lease("patient:clinic-a:1002", "a")  # ... and cannot release it
    assert not store.try_lease("patient:clinic-a:1002", "c", 60)


@pytest.mark.parametrize("previous", ["none", "expired"])
def test_exactly_one_of_eight_racing_owners_takes_the_lease(open_store, previous):
    stores = [open_store() for _ in range(8)]
    if previous == "expired":
        assert stores[0].try_lease("flush:hourly", "crashed", 0.05)
        time.sleep(0.1)
    barrier = threading.Barrier(len(stores))

    def race(i):
        barrier.wait(timeout=30)
        return stores[i].try_lease("flush:hourly", f"owner-{i}", 60)

    with ThreadPoolExecutor(len(stores)) as pool:
        won = list(pool.map(race, range(len(stores))))
    assert won.count(True) == 1
    winner = won.index(True)
    for i, s in enumerate(stores):
        assert s.try_lease("flush:hourly", f"owner-{i}", 60) is (i == winner)


# --- Firestore's edge: vendor errors become engine errors ------------------------------------


def test_many_leases_are_taken_when_free_expired_or_own_never_when_another_holds_them(store):
    assert store.try_lease("patient:c:live", "b", 60)
    assert store.try_lease("patient:c:expiring", "b", 0.3)
    assert store.try_lease("patient:c:own", "a", 0.3)
    time.sleep(0.4)
    names = ["patient:c:free", "patient:c:live", "patient:c:expiring", "patient:c:own"]
    taken = store.try_lease_many([*names, "patient:c:free"], "a", 60)  # a name twice: once
    assert taken == {"patient:c:free", "patient:c:expiring", "patient:c:own"}
    # what was taken is a's for the new ttl (the own lease renewed past its first 0.3 s) ...
    time.sleep(0.4)
    assert not store.try_lease_many(["patient:c:own", "patient:c:expiring"], "b", 60)
    # ... and the live lease stayed b's
    assert not store.try_lease("patient:c:live", "a", 60)
    assert store.try_lease_many(["patient:c:live"], "b", 60) == {"patient:c:live"}
    assert store.try_lease_many([], "a", 60) == set()


def test_many_leases_are_released_only_by_their_owners(store):
    assert store.try_lease_many(["p1", "p2", "p3"], "a", 60) == {"p1", "p2", "p3"}
    assert store.try_lease("q1", "b", 60)
    store.release_lease_many([("p1", "a"), ("p2", "b"), ("q1", "a"), ("never", "a")])
    assert store.try_lease_many(["p1", "p2", "q1"], "c", 60) == {"p1"}  # p2 a's, q1 b's
    store.release_lease_many([("p2", "a"), ("p3", "a"), ("q1", "b")])
    assert store.try_lease_many(["p2", "p3", "q1"], "c", 60) == {"p2", "p3", "q1"}
    store.release_lease_many([])


def test_racing_owners_of_many_leases_never_share_one(open_store):
    """Four owners (separate processes' stores) take overlapping batches of 600 names at
    once (over one Firestore commit's 500): every name has exactly one owner."""
    stores = [open_store() for _ in range(4)]
    names = [f"patient:clinic-a:{n}" for n in range(600)]
    batches = [names[i * 100 :] + names[: i * 100] for i in range(4)]  # other orders
    with ThreadPoolExecutor(4) as pool:
        taken = list(
            pool.map(lambda i: stores[i].try_lease_many(batches[i], f"o{i}", 60), range(4))
        )
    assert sum(len(t) for t in taken) == len(names)
    assert set().union(*taken) == set(names)
    for i, held in enumerate(taken):  # and each owner holds what it was told it took
        assert stores[0].try_lease_many(sorted(held), f"o{i}", 60) == held
    stores[0].release_lease_many([(n, f"o{i}") for i, held in enumerate(taken) for n in held])
    assert stores[1].try_lease_many(names, "next", 60) == set(names)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_firestore_unreachable_is_retriable_within_the_timeout(monkeypatch):
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{_closed_port()}")
    store = FirestoreStateStore(firestore.Client(project="healthie-sync-test"), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.get_patient("clinic-a", "1001")
    assert isinstance(info.value.__cause__, gexc.GoogleAPIError)
    with pytest.raises(StoreUnavailable):
        store.put_patient(patient())
    with pytest.raises(StoreUnavailable):
        store.list_runs()
    with pytest.raises(StoreUnavailable):
        store.add_pending("clinic-a", [PendingPatient(patient_id="1001", dirty_since=T0)])
    with pytest.raises(StoreUnavailable):
        store.list_pending("clinic-a")
    with pytest.raises(StoreUnavailable):
        store.remove_pending("clinic-a", [PendingPatient(patient_id="1001", dirty_since=T0)])
    with pytest.raises(StoreUnavailable):
        store.try_lease("flush:hourly", "a", 60)
    with pytest.raises(StoreUnavailable):
        store.release_lease("flush:hourly", "a")
    (refused,) = store.record_patients([recorded("1001")])
    assert isinstance(refused, StoreUnavailable)
    assert time.monotonic() - started < 10
    store.close()


@pytest.mark.firestore
@pytest.mark.usefixtures("firestore_emulator")
def test_firestore_invalid_project_is_a_configuration_error():
    store = FirestoreStateStore(firestore.Client(project=""), timeout=5)
    with pytest.raises(ConfigurationError, match="read patient state") as info:
        store.get_patient("clinic-a", "1001")
    assert isinstance(info.value.__cause__, gexc.InvalidArgument)
    store.close()


@pytest.mark.parametrize(
    ("vendor", "expected"),
    [
        (gexc.ServiceUnavailable("down"), StoreUnavailable),
        (gexc.DeadlineExceeded("slow"), StoreUnavailable),
        (gexc.InternalServerError("oops"), StoreUnavailable),
        (gexc.Aborted("contention"), StoreUnavailable),
        (gexc.RetryError("gave up", gexc.ServiceUnavailable("down")), StoreUnavailable),
        (gexc.ResourceExhausted("quota"), RateLimited),
        (gexc.RetryError("gave up", gexc.ResourceExhausted("quota")), RateLimited),
        (gexc.PermissionDenied("no"), ConfigurationError),
        (gexc.Unauthenticated("who"), ConfigurationError),
        (gexc.InvalidArgument("bad"), ConfigurationError),
        (gexc.NotFound("no database"), ConfigurationError),
        (gexc.FailedPrecondition("needs an index"), ConfigurationError),
        (gexc.AlreadyExists("dup"), FatalError),
    ],
)
def test_vendor_errors_are_grouped_by_what_happens_next(vendor, expected):
    converted = convert_error(vendor, "do something")
    assert type(converted) is expected
    assert "do something" in str(converted)


def test_firestore_prefix_must_be_a_plain_name():
    client = firestore.Client(project="p", credentials=AnonymousCredentials())
    with pytest.raises(ConfigurationError, match="prefix"):
        FirestoreStateStore(client, prefix="a/b")


# --- Firestore-only promises -----------------------------------------------------------------


@pytest.fixture
def firestore_pair(firestore_emulator):  # noqa: F811 (the fixture imported above)
    """Two stores over one emulator project, as two deployments sharing a project would be."""
    tag = uuid4().hex[:12]
    stores = [
        FirestoreStateStore(firestore.Client(project="healthie-sync-test"), prefix=f"{name}-{tag}")
        for name in ("prod", "staging")
    ]
    yield stores
    for s in stores:
        s.close()


@pytest.mark.firestore
@pytest.mark.usefixtures("firestore_emulator")
def test_firestore_commits_of_many_leases_and_outcomes_stay_within_500_writes(monkeypatch):
    """Firestore refuses a commit of more than 500 writes; the emulator does not, so the
    writes of every batch are counted here."""
    client = firestore.Client(project="healthie-sync-test")
    sizes: list[int] = []
    make_batch = client.batch

    def counted_batch():
        batch = make_batch()
        commit = batch.commit

        def counted_commit(*args, **kwargs):
            sizes.append(len(batch))
            return commit(*args, **kwargs)

        monkeypatch.setattr(batch, "commit", counted_commit)
        return batch

    monkeypatch.setattr(client, "batch", counted_batch)
    store = FirestoreStateStore(client, prefix=f"test-{uuid4().hex[:12]}", timeout=10)
    try:
        names = [f"patient:clinic-a:{n}" for n in range(1200)]
        assert store.try_lease_many(names, "a", 60) == set(names)
        store.release_lease_many([(n, "a") for n in names])
        assert (max(sizes), sum(sizes)) == (500, 2400)
        store.save_run(run("r1", status="published", patients=1200))
        sizes.clear()
        outcomes = dict.fromkeys(map(str, range(1200)), Counts(processed=1))
        store.add_run_outcomes("clinic-a", "r1", outcomes)
        assert (max(sizes), sum(sizes)) == (500, 1200 + len(sizes))  # + the run, each commit
        (stored,) = store.list_runs("clinic-a")
        assert (stored.status, stored.counts.processed) == ("finished", 1200)
    finally:
        store.close()


@pytest.mark.firestore
def test_firestore_prefixes_keep_deployments_apart(firestore_pair):
    prod, staging = firestore_pair
    prod.put_patient(patient())
    prod.save_run(run("r1"))
    prod.set_watermark("clinic-a", "sweep", T0)
    prod.append_audit(
        AuditRecord(
            integration_id="clinic-a", patient_id="1001", run_id="r1", at=T0, outcome="written"
        )
    )
    assert staging.get_patient("clinic-a", "1001") is None
    assert staging.list_runs() == []
    assert staging.list_runs("clinic-a") == []
    assert staging.get_watermark("clinic-a", "sweep") is None
    assert staging.list_audit("clinic-a") == []
    assert [r.run_id for r in prod.list_runs()] == ["r1"]
    prod.add_pending("clinic-a", [PendingPatient(patient_id="1001", dirty_since=T0)])
    assert prod.try_lease("flush:hourly", "prod", 60)
    assert staging.list_pending("clinic-a") == []
    assert staging.try_lease("flush:hourly", "staging", 60)


@pytest.mark.firestore
def test_firestore_datetimes_are_utc_and_runs_sort_by_instant(firestore_pair):
    store, _ = firestore_pair
    eastern = timezone(timedelta(hours=-5))
    # As text "10:00-05:00" sorts before "12:00+00:00"; as instants it is 15:00Z, the latest.
    late = run("late", started_at=datetime(2026, 3, 1, 10, 0, tzinfo=eastern))
    early = run("early", started_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    store.save_run(early)
    store.save_run(late)
    assert [r.run_id for r in store.list_runs("clinic-a")] == ["late", "early"]
    assert store.list_runs("clinic-a")[0].started_at.tzinfo is UTC
    store.set_watermark("clinic-a", "sweep", late.started_at)
    assert store.get_watermark("clinic-a", "sweep").tzinfo is UTC
    store.put_patient(patient(updated_at=late.started_at))
    assert store.get_patient("clinic-a", "1001").updated_at.tzinfo is UTC


# --- the dead-letter index ----------------------------------------------------------------


def dead_letter(message_id, integration_id="clinic-a", minutes=0, **changes) -> DeadLetter:
    fields = {
        "message_id": message_id,
        "integration_id": integration_id,
        "patient_id": "1001",
        "error_kind": "target_rejected",
        "error": "TargetRejected: warehouse refused table patients",
        "delivery_attempt": 2,
        "dead_lettered_at": T0 + timedelta(minutes=minutes),
    }
    return DeadLetter.model_validate(fields | changes)


def test_dead_letters_round_trip_oldest_first_per_integration(store):
    assert store.list_dead_letters() == []
    late = dead_letter("a/3", minutes=5, has_plan=True, plan_entry_hash="sha256:bb")
    early = dead_letter("m-1", "clinic-b", rules_version="rules:0123456789abcdef")
    tie = dead_letter("m-0", "clinic-b")
    for d in (late, early, tie):
        store.put_dead_letter(d)
    assert store.list_dead_letters() == [tie, early, late]  # by time, then message id
    assert store.list_dead_letters("clinic-b") == [tie, early]
    assert store.list_dead_letters("clinic-a") == [late]
    assert store.list_dead_letters(limit=1) == [tie]
    assert store.list_dead_letters("clinic-c") == []
    (back,) = store.list_dead_letters("clinic-a")
    assert back.dead_lettered_at == late.dead_lettered_at  # aware UTC, microseconds kept
    assert back.dead_lettered_at.tzinfo is not None


def test_dead_letter_index_upserts_and_removes_by_message_id(store):
    store.put_dead_letter(dead_letter("m-1"))
    store.put_dead_letter(dead_letter("m-1", error_kind="plan_invalid"))  # the same letter
    store.put_dead_letter(dead_letter("m-2", minutes=1))
    assert [d.error_kind for d in store.list_dead_letters()] == ["plan_invalid", "target_rejected"]
    store.remove_dead_letters(["m-1", "never-indexed"])
    assert [d.message_id for d in store.list_dead_letters()] == ["m-2"]
    store.remove_dead_letters([])
    assert len(store.list_dead_letters()) == 1


def test_dead_letters_in_other_zones_sort_by_instant(store):
    east = timezone(timedelta(hours=9))
    store.put_dead_letter(
        dead_letter("tokyo", dead_lettered_at=datetime(2026, 3, 1, 20, tzinfo=east))
    )
    store.put_dead_letter(dead_letter("utc", dead_lettered_at=datetime(2026, 3, 1, 12, tzinfo=UTC)))
    assert [d.message_id for d in store.list_dead_letters()] == ["tokyo", "utc"]


def test_run_counts_add_up_from_several_writers(open_store):
    from app.core.models import Cadence, Counts, RunRecord

    first, second = open_store(), open_store()
    run = RunRecord(
        run_id="r1",
        integration_id="clinic-a",
        cadence=Cadence.DAILY,
        started_at=datetime(2026, 11, 1, tzinfo=UTC),
        patients=3,
    )
    first.save_run(run)
    first.add_run_counts("clinic-a", "r1", Counts(processed=2, writes=5))
    second.add_run_counts("clinic-a", "r1", Counts(processed=1, skipped_unchanged=1))
    second.add_run_counts("clinic-a", "missing-run", Counts(processed=1))  # a no-op
    (stored,) = first.list_runs("clinic-a")
    assert (stored.counts.processed, stored.counts.writes, stored.counts.skipped_unchanged) == (
        3,
        5,
        1,
    )
    assert stored.patients == 3
    assert [r.run_id for r in first.list_runs("clinic-a")] == ["r1"]


def test_run_outcomes_count_each_patient_once_and_extra_always(open_store):
    first, second = open_store(), open_store()
    first.save_run(run("r1", status="published", patients=3))
    first.add_run_outcomes(
        "clinic-a",
        "r1",
        {"1": Counts(processed=1, writes=2), "2": Counts(skipped_unchanged=1)},
        Counts(retried=1),
    )
    # patient 1 delivered again (another process, a redelivery after a crash): its first
    # outcome stays; the retries are no outcomes and always add up
    second.add_run_outcomes(
        "clinic-a", "r1", {"1": Counts(dead_lettered=1, writes=9)}, Counts(retried=2)
    )
    second.add_run_outcomes("clinic-a", "missing-run", {"1": Counts(processed=1)})  # a no-op
    (stored,) = first.list_runs("clinic-a")
    assert stored.counts == Counts(processed=1, writes=2, skipped_unchanged=1, retried=3)
    assert (stored.status, stored.in_flight) == ("published", 1)
    assert [r.run_id for r in first.list_runs()] == ["r1"]


def test_a_run_finishes_exactly_when_every_patient_has_an_outcome(store):
    store.save_run(run("r1", status="published", patients=3))
    for patient_id in ("1", "1", "2", "1"):  # three deliveries, two patients
        store.add_run_outcomes("clinic-a", "r1", {patient_id: Counts(processed=1)})
    (stored,) = store.list_runs("clinic-a")
    assert (stored.status, stored.counts.processed, stored.in_flight) == ("published", 2, 1)
    store.add_run_outcomes("clinic-a", "r1", {"2": Counts(waiting=1), "3": Counts(not_found=1)})
    (finished,) = store.list_runs("clinic-a")
    assert finished.status == "finished"
    assert finished.finished_at is not None
    assert finished.counts == Counts(processed=2, not_found=1)
    # a finished run is final: a new patient, a duplicate and extra counts change nothing
    store.add_run_outcomes(
        "clinic-a", "r1", {"4": Counts(processed=1), "3": Counts(processed=1)}, Counts(retried=1)
    )
    store.save_run(run("r1", status="published", patients=3))
    assert store.list_runs("clinic-a") == [finished]


def test_run_outcomes_before_publishing_finish_the_run_when_it_is_published(store):
    store.save_run(run("r1"))
    store.add_run_outcomes("clinic-a", "r1", {"1": Counts(processed=1), "2": Counts(waiting=1)})
    (stored,) = store.list_runs("clinic-a")
    assert stored.status == "running"  # not finished before it is published
    store.save_run(run("r1", status="published", patients=2, counts=Counts(dirty_patients=2)))
    (published,) = store.list_runs("clinic-a")
    assert published.status == "finished"
    assert published.counts == Counts(dirty_patients=2, processed=1, waiting=1)


def test_racing_writers_count_each_patients_outcome_once(open_store):
    """Eight writers (separate processes' stores) report overlapping patients of one run at
    once, 600 per call (over one Firestore commit's 500 writes)."""
    stores = [open_store() for _ in range(8)]
    stores[0].save_run(run("r1", status="published", patients=1000))
    patients = [str(n) for n in range(1000)]

    def report(i: int) -> None:
        share = patients[i * 50 : i * 50 + 600]  # each overlaps the next seven
        stores[i].add_run_outcomes(
            "clinic-a", "r1", dict.fromkeys(share, Counts(processed=1, writes=1)), Counts(retried=1)
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(report, range(8)))
    reported = len(set().union(*(patients[i * 50 : i * 50 + 600] for i in range(8))))
    (stored,) = stores[0].list_runs("clinic-a")
    assert stored.counts == Counts(processed=reported, writes=reported, retried=8)
    assert stored.status == "published"
    stores[1].add_run_outcomes("clinic-a", "r1", dict.fromkeys(patients, Counts(processed=1)))
    (finished,) = stores[0].list_runs("clinic-a")
    assert (finished.status, finished.counts.processed) == ("finished", 1000)


def test_the_appointment_index_answers_who_held_an_appointment(open_store):
    first, second = open_store(), open_store()
    first.index_appointments("clinic-a", "1001", ["a-1", "a-2", "a-2"])
    first.index_appointments("clinic-a", "1002", ["a-2"])
    first.index_appointments("clinic-b", "1001", ["a-1"])  # another clinic's index is its own
    assert second.patients_for_appointments("clinic-a", ["a-1", "a-2", "a-9"]) == {
        "a-1": ["1001"],
        "a-2": ["1001", "1002"],
        "a-9": [],
    }
    # a new record replaces the patient's set: what its entry no longer holds is forgotten
    second.index_appointments("clinic-a", "1001", ["a-3"])
    assert first.patients_for_appointments("clinic-a", ["a-1", "a-2", "a-3"]) == {
        "a-1": [],
        "a-2": ["1002"],
        "a-3": ["1001"],
    }
    first.index_appointments("clinic-a", "1002", [])
    assert first.patients_for_appointments("clinic-a", ["a-2"]) == {"a-2": []}
    assert first.patients_for_appointments("clinic-b", ["a-1"]) == {"a-1": ["1001"]}
    assert first.patients_for_appointments("clinic-a", []) == {}


def test_the_appointment_index_takes_any_id_and_large_sets(store):
    odd = ["a/b", "_x_", "ü", "%41", "A"]  # ids that could collide once escaped
    store.index_appointments("clinic-a", "p/1", odd)
    found = store.patients_for_appointments("clinic-a", [*odd, "a"])
    assert found == {**{a: ["p/1"] for a in odd}, "a": []}
    many = [f"appt-{n}" for n in range(620)]  # over one 500-write batch, many 30-id queries
    store.index_appointments("clinic-a", "1001", many)
    found = store.patients_for_appointments("clinic-a", many)
    assert all(found[a] == ["1001"] for a in many)
    store.index_appointments("clinic-a", "1001", many[:5])
    found = store.patients_for_appointments("clinic-a", many)
    assert sum(1 for a in many if found[a]) == 5


# --- synced digests (loop prevention, workers.reverse_ledger) ------------------------------


def test_synced_digests_merge_by_name_and_stay_per_patient(open_store):
    first, second = open_store(), open_store()  # two processes over one state
    assert first.get_synced("clinic-a", "1001") == {}
    names = {"crm:email": "d1", "crm:phone": "d2", "a.b/c": "d3", "`x` y": "d4"}
    first.put_synced("clinic-a", "1001", names)
    assert second.get_synced("clinic-a", "1001") == names
    # a later write replaces the names it gives and keeps the others
    second.put_synced("clinic-a", "1001", {"crm:email": "d9"})
    assert first.get_synced("clinic-a", "1001") == {**names, "crm:email": "d9"}
    first.put_synced("clinic-a", "1001", {})
    assert first.get_synced("clinic-a", "1001")["crm:email"] == "d9"
    assert first.get_synced("clinic-a", "1002") == {}
    assert first.get_synced("clinic-b", "1001") == {}
    first.put_synced("clinic-a", "p/1", {"crm:email": "z"})
    assert first.get_synced("clinic-a", "p") == {}
    assert first.get_synced("clinic-a", "p/1") == {"crm:email": "z"}


# --- state and audit recorded together (record_patients) ----------------------------------


def recorded(patient_id, appointments=(), integration_id="clinic-a", **changes) -> PatientRecord:
    """A processed item's record: state, appointment index and audit record."""
    detail = changes.pop("detail", f"written {patient_id}")
    key = changes.pop("key", None)
    fields = {
        "state": patient(integration_id, patient_id, **changes),
        "appointment_ids": list(appointments),
        "audit": AuditRecord(
            integration_id=integration_id,
            patient_id=patient_id,
            run_id="run-1",
            at=T0,
            outcome="written",
            operations=["warehouse.upsert_row"],
            detail=detail,
        ),
    }
    return PatientRecord.model_validate(fields | ({"key": key} if key else {}))


def stored(store, record: PatientRecord) -> tuple[bool, int]:
    """Whether the record's state is stored, and how many of its audit records are."""
    state = store.get_patient(record.state.integration_id, record.state.patient_id)
    audits = store.list_audit(record.state.integration_id, record.state.patient_id)
    return state == record.state, sum(a == record.audit for a in audits)


def test_recorded_patients_keep_state_index_and_audit_in_order(store):
    before = AuditRecord(
        integration_id="clinic-a", patient_id="0", run_id="r", at=T0, outcome="skipped:x"
    )
    store.append_audit(before)
    # ``at`` runs backwards: the audit must list in the order given, not by time.
    records = [
        recorded(str(n), [f"a-{n}", "shared"], content_hash=f"h{n}", detail=f"d{n}")
        for n in range(1, 6)
    ]
    records = [
        r.model_copy(update={"audit": r.audit.model_copy(update={"at": T0 - timedelta(seconds=n)})})
        for n, r in enumerate(records)
    ]
    other = recorded("1", ["a-1"], integration_id="clinic-b")
    assert store.record_patients([*records, other]) == [None] * 6
    after = before.model_copy(update={"patient_id": "9"})
    store.append_audit(after)

    for record in records:
        assert store.get_patient("clinic-a", record.state.patient_id) == record.state
    assert store.list_audit("clinic-a") == [before, *(r.audit for r in records), after]
    assert store.list_audit("clinic-b") == [other.audit]
    assert store.patients_for_appointments("clinic-a", ["a-3", "shared"]) == {
        "a-3": ["3"],
        "shared": ["1", "2", "3", "4", "5"],
    }
    assert store.patients_for_appointments("clinic-b", ["a-1", "shared"]) == {
        "a-1": ["1"],
        "shared": [],
    }
    assert store.record_patients([]) == []


def test_a_new_record_replaces_state_and_index_and_adds_its_audit(store):
    store.record_patients([recorded("1001", ["a-1", "a-2"])])
    newer = recorded("1001", ["a-2", "a-3"], content_hash="sha256:bb", detail="second")
    assert store.record_patients([newer]) == [None]
    assert store.get_patient("clinic-a", "1001") == newer.state
    assert store.patients_for_appointments("clinic-a", ["a-1", "a-2", "a-3"]) == {
        "a-1": [],
        "a-2": ["1001"],
        "a-3": ["1001"],
    }
    assert [a.detail for a in store.list_audit("clinic-a", "1001")] == ["written 1001", "second"]
    # a patient named twice in one call keeps the later state and index, and both audits
    first = recorded("1002", ["b-1"], content_hash="h1", detail="one")
    second = recorded("1002", ["b-2"], content_hash="h2", detail="two")
    assert store.record_patients([first, second]) == [None, None]
    assert store.get_patient("clinic-a", "1002") == second.state
    assert store.patients_for_appointments("clinic-a", ["b-1", "b-2"]) == {
        "b-1": [],
        "b-2": ["1002"],
    }
    assert [a.detail for a in store.list_audit("clinic-a", "1002")] == ["one", "two"]


def test_recording_the_same_keys_again_keeps_one_audit_record_each(store):
    records = [recorded(str(n), [f"a-{n}"], key=f"step/{n}") for n in range(3)]
    assert store.record_patients(records) == [None] * 3
    assert store.record_patients(records) == [None] * 3  # e.g. a commit retried after a crash
    for record in records:
        assert stored(store, record) == (True, 1)
    assert len(store.list_audit("clinic-a")) == 3
    assert store.patients_for_appointments("clinic-a", ["a-0", "a-2"]) == {
        "a-0": ["0"],
        "a-2": ["2"],
    }


def test_large_indexes_are_recorded_whole_with_their_state_and_audit(store):
    # 620 appointments: over one 500-write Firestore batch, packed with the other records
    many = [f"appt-{n}" for n in range(620)]
    records = [recorded("1001", many), *(recorded(str(n), [f"x-{n}"]) for n in range(300))]
    assert store.record_patients(records) == [None] * len(records)
    found = store.patients_for_appointments("clinic-a", many)
    assert all(found[a] == ["1001"] for a in many)
    assert all(stored(store, r) == (True, 1) for r in records[:3] + records[-3:])
    assert len(store.list_audit("clinic-a")) == len(records)
    shrunk = recorded("1001", many[:5], content_hash="sha256:small")
    assert store.record_patients([shrunk]) == [None]
    found = store.patients_for_appointments("clinic-a", many)
    assert sorted(a for a in many if found[a]) == sorted(many[:5])


def test_a_state_over_the_document_limit_is_refused_alone(store, backend):
    big = recorded("1002", ["a-2"], entry={"id": "1002", "note": "é" * 525_000})
    records = [recorded("1001", ["a-1"]), big, recorded("1003", ["a-3"])]
    results = store.record_patients(records)
    if DOCUMENT_LIMIT[backend] is None:
        assert results == [None] * 3
        assert stored(store, big) == (True, 1)
        return
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], FatalError)
    assert stored(store, big) == (False, 0)
    assert store.patients_for_appointments("clinic-a", ["a-2"]) == {"a-2": []}
    assert stored(store, records[0]) == (True, 1)
    assert stored(store, records[2]) == (True, 1)


def _fail_audits_from_now_on(store, backend) -> str:
    """Make the store unable to take a large audit record, and return such a detail text:
    SQLite's disk fills up (``max_page_count`` on the store's own connection: the limit is
    per connection), Firestore refuses a document over 1 MiB (its server's check, which the
    store does not repeat for audit records)."""
    if backend != "firestore":
        db = store._db  # noqa: SLF001 - the only way to fill one connection's disk
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        db.execute(f"PRAGMA max_page_count = {pages + 64}")  # room for small rows only
    return "x" * 1_100_000


def test_an_audit_record_the_store_cannot_take_leaves_no_state(store, backend):
    earlier = recorded("1001", ["a-0"], content_hash="sha256:old")
    assert store.record_patients([earlier]) == [None]
    detail = _fail_audits_from_now_on(store, backend)
    newer = recorded("1001", ["a-1"], content_hash="sha256:new")
    fresh = recorded("1002", ["a-2"])
    failing = recorded("1003", ["a-3"], detail=detail)
    results = store.record_patients([newer, fresh, failing])
    assert all(r is not None for r in results)
    assert isinstance(results[0], StoreUnavailable | ConfigurationError | FatalError)
    # nothing of the batch: no state, no index, no audit; the earlier record is intact
    assert store.get_patient("clinic-a", "1001") == earlier.state
    assert stored(store, fresh) == (False, 0)
    assert stored(store, failing) == (False, 0)
    assert store.list_audit("clinic-a") == [earlier.audit]
    assert store.patients_for_appointments("clinic-a", ["a-0", "a-1", "a-2", "a-3"]) == {
        "a-0": ["1001"],
        "a-1": [],
        "a-2": [],
        "a-3": [],
    }


def test_a_patient_record_names_one_patient():
    record = recorded("1001")
    with pytest.raises(ValueError, match="own patient"):
        PatientRecord(state=record.state, audit=record.audit.model_copy(update={"patient_id": "2"}))


# --- SQLite's edge: a locked or full database is StoreUnavailable, fast --------------------


def test_a_locked_sqlite_store_is_unavailable_not_a_long_wait(tmp_path):
    path = tmp_path / "state.db"
    store = SqliteStateStore(path, busy_timeout=0.05)
    store.set_watermark("clinic-a", "sweep", T0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreUnavailable, match="stage pending patients") as info:
            store.add_pending("clinic-a", [PendingPatient(patient_id="1001", dirty_since=T0)])
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(StoreUnavailable):
            store.try_lease("flush:hourly", "a", 60)
        with pytest.raises(StoreUnavailable):
            store.put_patient(patient())
        # WAL: readers never wait for the writer
        assert store.get_watermark("clinic-a", "sweep") == T0
        (refused,) = store.record_patients([recorded("1001")])
        assert isinstance(refused, StoreUnavailable)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.try_lease("flush:hourly", "a", 60)  # free again: works again
    assert store.get_watermark("clinic-a", "sweep") == T0
    store.close()


def test_sqlite_errors_are_grouped_by_what_happens_next(tmp_path):
    full = sqlite3.connect(tmp_path / "full.db", isolation_level=None)
    full.execute("CREATE TABLE t (v TEXT)")
    (pages,) = full.execute("PRAGMA page_count").fetchone()
    full.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError) as disk_full:
        full.execute("INSERT INTO t VALUES (?)", ("x" * 100_000,))
    converted = sqlite_state.convert_error(disk_full.value, "append audit record")
    assert isinstance(converted, StoreUnavailable)
    assert "append audit record" in str(converted)
    with pytest.raises(sqlite3.OperationalError) as bug:
        full.execute("SELECT nothing FROM nowhere")
    assert sqlite_state.convert_error(bug.value, "read") is None  # raised as it is
    full.close()
