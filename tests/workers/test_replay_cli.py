"""``healthie-sync dlq``: the time forms operators type, the zone in every table and JSON line,
``--json`` as one object per line, the drift note, and a bad time as a one-line usage error.
The commands run as a user runs them (a subprocess on a data directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from app.cli.timeparse import parse_moment, show, zone
from app.core.errors import ConfigurationError
from app.core.models import WorkItem
from app.queue.sqlite import SqliteQueue
from app.queue.topology import WORK_DLQ_TOPIC, ensure_topology
from app.state.base import DeadLetter
from app.state.sqlite import SqliteStateStore
from tests.helpers import REPO

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        ("now", NOW),
        ("today", datetime(2026, 3, 10, tzinfo=BERLIN)),
        ("yesterday", datetime(2026, 3, 9, tzinfo=BERLIN)),
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=BERLIN)),
        ("2026-07-01 14:30", datetime(2026, 7, 1, 14, 30, tzinfo=BERLIN)),  # summer time
        ("2026-03-01T14:30:00", datetime(2026, 3, 1, 14, 30, tzinfo=BERLIN)),
        ("2026-03-01T14:30+00:00", datetime(2026, 3, 1, 14, 30, tzinfo=UTC)),  # offset wins
        ("2026-03-01T14:30Z", datetime(2026, 3, 1, 14, 30, tzinfo=UTC)),
        ("9:15", datetime(2026, 3, 10, 9, 15, tzinfo=BERLIN)),
    ],
)
def test_since_reads_dates_times_and_ages_in_the_operators_zone(text, expected):
    assert parse_moment(text, BERLIN, now=NOW) == expected


def test_a_date_until_means_the_end_of_that_day():
    end = parse_moment("2026-03-01", BERLIN, option="--until", end_of_day=True, now=NOW)
    assert end == datetime(2026, 3, 2, tzinfo=BERLIN)


def test_local_zone_is_the_default(monkeypatch):
    moment = parse_moment("2026-03-01 08:00", None, now=NOW)
    assert moment.tzinfo is not None
    assert moment.replace(tzinfo=None) == datetime(2026, 3, 1, 8, 0)  # noqa: DTZ001


@pytest.mark.parametrize("text", ["last tuesday", "7 days", "2026-13-01", "25:00", "-3h"])
def test_other_forms_are_refused_naming_the_option(text):
    with pytest.raises(ConfigurationError, match=r"^--until .* is not a date, time or age"):
        parse_moment(text, UTC, option="--until")


def test_times_show_with_their_zone_and_unknown_zones_are_refused():
    assert show(datetime(2026, 3, 1, 12, tzinfo=UTC), zone("Europe/Berlin")) == (
        "2026-03-01 13:00 CET"
    )
    assert show(datetime(2026, 7, 1, 12, tzinfo=UTC), zone("UTC")) == "2026-07-01 12:00 UTC"
    with pytest.raises(ConfigurationError, match="--tz 'Mars/Olympus' is not a time zone"):
        zone("Mars/Olympus")


# --- the commands ----------------------------------------------------------------------------


def _cli(data_dir, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HEALTHIE_SYNC_DATA_DIR": str(data_dir),
        "HEALTHIE_SYNC_CONFIG_DIR": str(REPO / "config" / "integrations"),
    }
    code = "from app.cli.main import main; main()"
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def data_dir(tmp_path):
    """Three dead letters on the queue, the first two of them indexed."""
    queue = SqliteQueue(tmp_path / "queue.db")
    ensure_topology(queue)
    ids = [
        queue.publish(
            WORK_DLQ_TOPIC,
            WorkItem(
                integration_id="demo-clinic",
                patient_id=str(n),
                flush_id="f",
                dirty_since=datetime.now(UTC),
            )
            .model_dump_json()
            .encode(),
            {},
        )
        for n in (1, 2, 3)
    ]
    queue.close()
    state = SqliteStateStore(tmp_path / "state.db")
    for n, at in ((1, datetime(2026, 3, 1, 8, tzinfo=UTC)), (2, datetime.now(UTC))):
        state.put_dead_letter(
            DeadLetter(
                message_id=ids[n - 1],
                integration_id="demo-clinic",
                patient_id=str(n),
                error_kind="target_rejected",
                error="TargetRejected: warehouse refused table patients",
                delivery_attempt=1,
                dead_lettered_at=at,
                has_plan=True,
            )
        )
    state.close()
    return tmp_path, ids


def test_dlq_list_json_is_one_object_per_line_in_the_zone_asked(data_dir):
    path, ids = data_dir
    done = _cli(path, "dlq", "list", "--json", "--tz", "Asia/Tokyo")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(d["message_id"], d["patient_id"]) for d in lines] == [(ids[0], "1"), (ids[1], "2")]
    assert lines[0]["dead_lettered_at"] == "2026-03-01T17:00:00+09:00"
    assert "1 dead letters the index lacks" in done.stderr  # the queue holds one more
    fixed = _cli(path, "dlq", "reindex")
    assert "indexed 1," in fixed.stdout
    again = _cli(path, "dlq", "list", "--json")
    assert sorted(json.loads(x)["patient_id"] for x in again.stdout.splitlines()) == ["1", "2", "3"]
    assert again.stderr == ""


def test_dlq_list_keeps_whole_ids_and_zones_within_80_columns(data_dir):
    path, ids = data_dir
    done = _cli(path, "dlq", "list", "--tz", "UTC")
    assert done.returncode == 0, done.stderr
    assert ids[0] in done.stdout.split()  # whole, on one line
    assert "2026-03-01 08:00 UTC" in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    recent = _cli(path, "dlq", "list", "--json", "--since", "24h")
    assert [json.loads(x)["patient_id"] for x in recent.stdout.splitlines()] == ["2"]
    none = _cli(path, "dlq", "list", "--patient", "9")
    assert none.stdout.strip() == "no dead letters match the filters"


def test_replay_preview_says_per_item_what_it_will_do(data_dir):
    path, ids = data_dir
    done = _cli(path, "dlq", "replay", "--patient", "1", "--decide-again")
    assert done.returncode == 0, done.stderr
    assert "replay: decide again: forced by --decide-again" in done.stdout
    assert "would replay 1: 0 with the stored plan, 1 decided again" in done.stdout
    both = _cli(path, "dlq", "replay", "--stored-plan", "--decide-again")
    assert both.returncode == 2
    assert "exclude each other" in both.stderr


def test_a_bad_time_is_a_one_line_usage_error(data_dir):
    done = _cli(data_dir[0], "dlq", "list", "--since", "last tuesday")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --since 'last tuesday' is not a date, time or age (e.g. 30m, 24h, 7d, today, "
        "2026-03-01, 2026-03-01 14:30, 14:30, or ISO 8601)"
    ]


def test_zone_offsets_survive_a_round_trip_through_the_index(tmp_path):
    state = SqliteStateStore(tmp_path / "state.db")
    at = datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    state.put_dead_letter(
        DeadLetter(
            message_id="m",
            integration_id="demo-clinic",
            patient_id="1",
            error_kind="x",
            error="",
            delivery_attempt=1,
            dead_lettered_at=at,
        )
    )
    (back,) = state.list_dead_letters()
    assert back.dead_lettered_at == at
    assert show(back.dead_lettered_at, UTC) == "2026-03-02 04:30 UTC"
    state.close()
