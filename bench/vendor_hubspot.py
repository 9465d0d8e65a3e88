"""HubSpot: requests per 1,000 changed patients, with and without the matching lookups, and the
time to sync them at HubSpot's published rate limit against the ideal.

``python -m bench.vendor_hubspot [--patients 1000] [--per-call 100] [--existing 300]``

The real connector writes synthetic patients (email, phone, names, 3 custom properties) in
``execute_batch`` calls of ``--per-call`` patients, to the router of ``tests.servers.hubspot``
used as an httpx transport without Prism (its contact and property tables answer as the tests'
HubSpot does; nothing is validated here, the tests do that). Scenarios:

* ``no_matching``: ``match = []``, a fresh connector: the properties read and created once,
  then one ``batch/upsert`` per 100 patients;
* ``matching_first_sync``: ``--existing`` of the patients already have a HubSpot contact (same
  email, no patient id): per chunk one search, one ``batch/update`` linking the existing
  contacts and one ``batch/upsert`` for the rest;
* ``matching_next_change_same_process``: every patient changes again: patients the connector
  wrote are not searched again (one upsert per chunk);
* ``matching_next_change_new_process``: the same from a fresh connector (a restarted worker):
  one search per chunk finds every patient linked by the id property, then one upsert.

Pacing runs through the connector's own path on a virtual clock: the credential's TokenBucket
at ``HubSpotConnector.rate_limit`` (10/s = 100 requests per 10 s, a Free or Starter private
app; 190 on Professional and Enterprise) and the search bucket at 4/s; a wait advances the
clock instead of sleeping. Sources: https://developers.hubspot.com/docs/apps/legacy-apps/
private-apps/overview (burst and daily limits per tier) and HubSpot's changelog "CRM Search
API Rate Limit Increase" (4 search requests/s per token). The daily limit (250,000 requests
on Free/Starter) is far from binding: 1,000 patients cost tens of requests. The ideal is the
fewest requests HubSpot's API allows for the same work, sent exactly at the published rates
(10/s overall, 4/s for searches): one batch request per 100 contacts per kind of write (an
upsert by the id property cannot address a contact by its HubSpot id, so linked contacts need
their own ``batch/update``), one search per 100 patients when matching, and no property
requests (properties made beforehand). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from app.resilience.ratelimit import TokenBucket
from connectors import http
from connectors.base import Scope, Write
from connectors.hubspot import SEARCH_RATE, HubSpotConnector
from tests.servers.hubspot import HubSpotRouter

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
PROPERTIES = {"age": {"type": "number"}, "active": {"type": "bool"}, "dob": {"type": "date"}}
RATE = HubSpotConnector.rate_limit or 10.0


class Clock:
    """A virtual clock: sleeping advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def patient_write(connector: HubSpotConnector, n: int, version: int = 0) -> Write:
    """A synthetic patient's contact upsert (no real person's data)."""
    pid = str(1_000_000 + n)
    properties = {
        "email": f"patient{n}@example.com",
        "phone": f"+1415555{n % 10_000:04d}",
        "firstname": f"First{n}",
        "lastname": f"Last{n}-{version}",
        "age": 20 + n % 60,
        "active": n % 3 != 0,
        "dob": "1990-02-28",
    }
    args = connector.validate("upsert_contact", {"patient_id": pid, "properties": properties}, pid)
    return Write(Scope("bench", pid, "run-1", AT), "upsert_contact", args)


def connector_on(router: HubSpotRouter, clock: Clock, match: bool) -> HubSpotConnector:
    """The real connector over the router, paced on the virtual clock."""
    built = HubSpotConnector.from_config(
        "crm",
        {"properties": PROPERTIES, **({} if match else {"match": []})},
        {"access_token": "bench"},
    )
    assert isinstance(built, HubSpotConnector)
    built.bucket = TokenBucket(RATE, clock=clock.time, sleep=clock.sleep)
    built.search_bucket = TokenBucket(SEARCH_RATE, clock=clock.time, sleep=clock.sleep)
    built.client = http.client(
        transport=router.transport(), headers={"authorization": "Bearer bench"}
    )
    return built


def sync(
    connector: HubSpotConnector, clock: Clock, patients: int, per_call: int, version: int
) -> dict[str, Any]:
    """Sync every patient once; the counted requests and the paced time."""
    before = dict(connector.http_requests)
    started_virtual, started = clock.now, time.perf_counter()
    writes = [patient_write(connector, n, version) for n in range(patients)]
    failed = 0
    for start in range(0, patients, per_call):
        failed += sum(
            r.error is not None for r in connector.execute_batch(writes[start : start + per_call])
        )
    by_kind = {
        k: v - before.get(k, 0) for k, v in connector.http_requests.items() if v - before.get(k, 0)
    }
    requests = sum(by_kind.values())
    searches = sum(v for k, v in by_kind.items() if k.endswith("/search"))
    return {
        "requests": requests,
        "requests_per_1000_patients": round(requests * 1000 / patients, 1),
        "by_request": by_kind,
        "failed": failed,
        "seconds_paced_at_published_limit": round(clock.now - started_virtual, 2),
        "seconds_at_published_rate": at_rate(requests, searches),
        "connector_wall_seconds": round(time.perf_counter() - started, 3),
    }


def at_rate(requests: int, searches: int) -> float:
    """Seconds ``requests`` take exactly at 10/s overall and 4/s for the searches."""
    return round(max(requests / RATE, searches / SEARCH_RATE), 2)


def main() -> None:
    """Run the scenarios and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000)
    parser.add_argument("--per-call", type=int, default=100)
    parser.add_argument("--existing", type=int, default=300)
    args = parser.parse_args()
    n, per_call = args.patients, args.per_call

    plain_router, plain_clock = HubSpotRouter(), Clock()
    plain = connector_on(plain_router, plain_clock, match=False)
    no_matching = sync(plain, plain_clock, n, per_call, 0)

    router, clock = HubSpotRouter(), Clock()
    for i in range(min(args.existing, n)):
        router.add_contact(email=f"patient{i}@example.com", firstname=f"First{i}")
    first = connector_on(router, clock, match=True)
    first_sync = sync(first, clock, n, per_call, 1)
    same_process = sync(first, clock, n, per_call, 2)
    restarted = connector_on(router, clock, match=True)
    new_process = sync(restarted, clock, n, per_call, 3)
    chunks = math.ceil(n / 100)
    ideal_plain = chunks
    existing = min(args.existing, n)
    # one search per chunk, one update per 100 linked contacts, one upsert per 100 others
    ideal_matching = chunks + math.ceil(existing / 100) + math.ceil((n - existing) / 100)
    report = {
        "bench": "vendor_hubspot",
        "patients": n,
        "patients_per_call": per_call,
        "existing_contacts_matched": min(args.existing, n),
        "limit": "100 requests / 10 s per private app (Free/Starter; 190 Pro/Enterprise), "
        "250,000 / day per account; CRM search 4 / s per token",
        "source": "https://developers.hubspot.com/docs/apps/legacy-apps/private-apps/overview; "
        "https://developers.hubspot.com/changelog/crm-search-api-rate-limit-increase",
        "no_matching": no_matching,
        "matching_first_sync": first_sync,
        "matching_next_change_same_process": same_process,
        "matching_next_change_new_process": new_process,
        "ideal": {
            "no_matching": {"requests": ideal_plain, "seconds": at_rate(ideal_plain, 0)},
            "matching": {
                "requests": ideal_matching,
                "seconds": at_rate(ideal_matching, chunks),
            },
        },
        "vs_ideal_paced": {
            "no_matching": round(
                no_matching["seconds_paced_at_published_limit"] / at_rate(ideal_plain, 0), 2
            ),
            "matching_first_sync": round(
                first_sync["seconds_paced_at_published_limit"] / at_rate(ideal_matching, chunks),
                2,
            ),
        },
        "all_contacts": len(router.records),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
