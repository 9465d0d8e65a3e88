"""The hot path of a fetch: documents printed once, and the requests of one fetch in parallel.

* a steady run prints no GraphQL document: each batch size's text is printed when it is first
  built and reused on every send (graphql-core's printer is counted, wherever gql calls it);
* one call's requests are in flight together at a local stand-in (its concurrent requests are
  counted), never more than the client's ``concurrency`` whatever the number of callers;
* results keep their shape (every id once, in the order asked), a failed request fails the
  call that carried its ids only once every request of that call has answered, and a
  complexity refusal still splits the refused batch.

Pass/fail is by counts, never by time. The stand-in holds each request until ``gate``
requests are in flight at once (or ``HOLD`` seconds passed, when they never are), so requests
sent together are seen together, and requests sent one at a time are seen one at a time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import gql.graphql_request
import httpx2
import pytest
from graphql import parse, print_ast

import app.healthie.client as client_module
from app.core.errors import InvalidResponse
from app.healthie import operations
from app.healthie.client import HealthieClient, _entries_text
from app.healthie.pagination import Pages

HOLD = 2.0  # seconds a request waits for company that may never come (bounds a failing run)


class StandIn:
    """Answers entries batches for any id, counting requests in flight at once (``peak``)."""

    def __init__(self, gate: int = 1, refuse: str | None = None) -> None:
        self.gate = gate  # hold each request until this many are in flight at once
        self.refuse = refuse  # an id whose request is answered as not GraphQL
        self.active = 0
        self.peak = 0
        self.requests: list[list[str]] = []
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._opened = threading.Event()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        variables = body.get("variables") or {}
        ids = [variables[f"id{i}"] for i in range(len(variables))]
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.requests.append(ids)
            self.bodies.append(body)
            if self.active >= self.gate:
                self._opened.set()
        try:
            self._opened.wait(HOLD)
            self._opened.set()  # one hold per run: later requests pass
            if self.refuse in ids:
                return httpx2.Response(200, text="not json")
            data = {f"p{i}": {"id": pid, "first_name": "X"} for i, pid in enumerate(ids)}
            return httpx2.Response(200, json={"data": data})
        finally:
            with self._lock:
                self.active -= 1


def make(stand_in: Callable[[httpx2.Request], httpx2.Response], **kw) -> HealthieClient:
    kw.setdefault("rate_limit", 10_000)
    kw.setdefault("fetch_linger", 0.0)
    return HealthieClient(
        url="http://healthie.test/graphql",
        api_key="k-parallel",
        http_transport=httpx2.MockTransport(stand_in),
        **kw,
    )


@pytest.fixture
def printed(monkeypatch) -> list[int]:
    """How many documents graphql-core's printer has printed (gql's per-send call included)."""
    calls: list[int] = []

    def counting(node, *args, **kwargs):
        calls.append(1)
        return print_ast(node, *args, **kwargs)

    monkeypatch.setattr(gql.graphql_request, "print_ast", counting)
    monkeypatch.setattr(client_module, "print_ast", counting)
    return calls


def ids(count: int, prefix: str = "") -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


# -- documents printed once ------------------------------------------------------------------
def test_a_steady_run_prints_no_document(printed):
    # a fragment of its own (a comment changes the cache key, not the query), so the count
    # starts from a cold cache whatever ran before
    fragment = operations.load("entry") + "\n# test_a_steady_run_prints_no_document\n"
    stand_in = StandIn()
    healthie = make(stand_in, batch_size=20, entry_fragment=fragment)
    healthie.fetch_entries(ids(45, "warm-"))  # sizes 20 and 5 built and printed here
    warm = len(printed)
    # once per document at most: sizes 1 (the estimate), 20 and 5, and the appointments one
    assert 3 <= warm <= 4
    for n in range(4):
        healthie.fetch_entries(ids(45, f"run{n}-"))
    healthie.close()
    assert len(stand_in.requests) == 5 * 3
    assert len(printed) == warm  # twelve more sends, nothing printed


def test_the_text_sent_is_the_printed_document():
    stand_in = StandIn()
    healthie = make(stand_in, batch_size=20)
    healthie.fetch_entries(ids(20))
    healthie.close()
    expected = print_ast(parse(_entries_text(20, operations.load("entry"))))
    assert stand_in.bodies[0]["query"] == expected
    assert stand_in.bodies[0]["variables"] == {f"id{i}": str(i) for i in range(20)}


def test_pages_of_a_connection_print_their_document_once(printed):
    pages = [0]

    def connection(request: httpx2.Request) -> httpx2.Response:
        pages[0] += 1
        more = pages[0] < 4
        users = {"page_info": {"has_next_page": more, "end_cursor": f"c{pages[0]}"}, "nodes": []}
        return httpx2.Response(200, json={"data": {"users": users}})

    healthie = make(connection)
    request = gql.GraphQLRequest(
        "query Users($first: Int, $after: String) { users(first: $first, after: $after) "
        "{ page_info { has_next_page end_cursor } nodes { id } } }"
    )
    before = len(printed)
    assert list(Pages(healthie, request, "users")) == [[], [], [], []]
    healthie.close()
    assert len(printed) - before == 1  # four pages, one print


# -- the requests of one fetch in parallel ---------------------------------------------------
def test_the_requests_of_one_fetch_are_in_flight_together():
    stand_in = StandIn(gate=5)
    healthie = make(stand_in, batch_size=20)  # the default concurrency, as the runtime builds it
    out = healthie.fetch_entries(ids(100))  # a worker thread's pulled batch: 5 requests
    healthie.close()
    assert len(out) == 100
    assert sorted(len(r) for r in stand_in.requests) == [20] * 5
    assert stand_in.peak == 5


def test_no_more_than_the_clients_concurrency_are_in_flight_whatever_the_callers():
    stand_in = StandIn(gate=3)  # a third request in flight would open the gate at once
    healthie = make(stand_in, batch_size=20, concurrency=2)
    results: list[dict] = [{}, {}]

    def work(n: int) -> None:
        results[n] = healthie.fetch_entries(ids(100, f"t{n}-"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    healthie.close()
    assert [len(r) for r in results] == [100, 100]
    assert len(stand_in.requests) == 10
    assert stand_in.peak == 2


def test_results_keep_the_order_asked_and_each_id_once():
    stand_in = StandIn(gate=4)
    healthie = make(stand_in, batch_size=10, concurrency=4)
    asked = [str((i * 37) % 61) for i in range(61)] + ["5", "17"]  # shuffled, two repeated
    out = healthie.fetch_entries(asked)
    healthie.close()
    assert list(out) == list(dict.fromkeys(asked))
    assert all(out[pid] == {"id": pid, "first_name": "X"} for pid in out)
    assert sorted(pid for r in stand_in.requests for pid in r) == sorted(set(asked))


def test_a_failed_request_fails_its_call_after_every_request_answered():
    stand_in = StandIn(gate=5, refuse="42")
    healthie = make(stand_in, batch_size=20, max_attempts=1)
    with pytest.raises(InvalidResponse):
        healthie.fetch_entries(ids(100))
    assert stand_in.active == 0  # none of the call's requests is left in flight
    assert stand_in.peak == 5
    assert healthie.fetch_entries(["7"])["7"] is not None  # the next call is unaffected
    healthie.close()


def test_complexity_refusals_of_parallel_requests_split_each_batch():
    seen: list[int] = []
    lock = threading.Lock()

    def refusing(request: httpx2.Request) -> httpx2.Response:
        variables = json.loads(request.content)["variables"]
        with lock:
            seen.append(len(variables))
        if len(variables) * 200 > 2000:
            score = len(variables) * 200
            message = f"Query has complexity of {score}, which exceeds max complexity of 2000"
            return httpx2.Response(200, json={"errors": [{"message": message}]})
        data = {f"p{i}": {"id": variables[f"id{i}"]} for i in range(len(variables))}
        return httpx2.Response(200, json={"data": data})

    healthie = make(refusing, batch_size=20)
    out = healthie.fetch_entries(ids(60))
    assert list(out) == ids(60)
    assert all(out[pid] == {"id": pid} for pid in out)
    assert healthie.entries_per_request == 10
    assert sorted(seen) == [10] * 6 + [20] * 3  # each refused 20 split into two halves
    seen.clear()
    healthie.fetch_entries(ids(40, "later-"))
    healthie.close()
    assert seen == [10] * 4  # sized right the first time now
