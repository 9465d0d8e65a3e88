"""Time-aware plans: the ``run`` context, the date functions, ``run_when`` (a monthly schedule
on a weekly run), the run date in the Claude prompt, and ``refresh_after``.

Every evaluation here is at a fixed instant: the same entry and the same run time always give
the same plan, and moving only the run time moves the answer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import jmespath
import pytest
from pydantic import BaseModel, ValidationError

from app.agent.base import validate_plan
from app.agent.freshness import RefreshAfter, is_stale, parse_duration, stale_before
from app.agent.plan import CompiledPlan, PlanAgent, PlanStep, held_until
from app.agent.plan_paths import base_shape, check_expression, context_shape, run_shape
from app.agent.plan_time import PLAN_FUNCTIONS, PlanFunctions, RunClock, flush_time, run_time
from app.agent.prompt import entry_message, extract_entry
from app.core.config import load_integration
from app.core.errors import ConfigurationError, RetriableError
from app.core.models import Entry
from app.core.settings import Settings
from app.healthie.entry import canonicalize, content_hash
from app.secrets.stores import MemorySecretStore
from app.service.validate import validate
from app.service.validate_entry import entry_shape
from connectors.memory import MemoryConnector

REPO = Path(__file__).resolve().parents[2]
INTEGRATION = load_integration(REPO / "config" / "integrations" / "demo-clinic.toml")
EXAMPLES = REPO / "prompts" / "plans" / "examples"
NEW_YORK = ZoneInfo("America/New_York")
CUSTOMER = (
    "length(entry.appointments[?pm_status == 'Occurred' && within_days(date, `90`)] || `[]`) > `0`"
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def search(expr: str, clock: RunClock, data: dict | None = None):
    return jmespath.search(expr, {"run": clock.context(), **(data or {})}, clock.options())


def entry(appointments: list[dict], tags: tuple[str, ...] = ()) -> Entry:
    data = canonicalize(
        {
            "id": "42",
            "active_tags": [{"id": str(i), "name": n} for i, n in enumerate(tags)],
            "appointments": appointments,
        }
    )
    return Entry(
        integration_id="demo-clinic",
        patient_id="42",
        data=data,
        content_hash=content_hash(data),
        fetched_at=at("2030-01-01T00:00:00Z"),  # never the run time in these tests
    )


VISIT = {"id": "100", "date": "2026-09-02 10:00:00 -0400", "pm_status": "Occurred"}


def customer_plan(**extra) -> PlanAgent:
    return PlanAgent(
        CompiledPlan(
            integration="demo-clinic",
            instructions_sha256="x",
            operations=[
                PlanStep.model_validate(
                    {
                        "target": "warehouse",
                        "operation": "upsert_row",
                        "args": {
                            "table": {"const": "patients"},
                            "key": {"expr": "entry.id"},
                            "patient_id": {"expr": "entry.id"},
                            "values": {
                                "fields": {
                                    "customer": {"expr": CUSTOMER, "transforms": ["bool"]},
                                    "as_of": {"expr": "run.date", "transforms": ["date"]},
                                }
                            },
                        },
                    }
                )
            ],
            **extra,
        )
    )


def values(plan) -> dict:
    return dict(plan.operations[0].args["values"])


# -- the run context ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "zone", "expected"),
    [
        ("2026-12-01T16:00:00Z", "UTC", ("2026-12-01", "Tuesday", 2, 1, 31, 30)),
        ("2028-02-29T12:00:00Z", "UTC", ("2028-02-29", "Tuesday", 2, 29, 29, 0)),  # leap
        ("2027-02-28T12:00:00Z", "UTC", ("2027-02-28", "Sunday", 7, 28, 28, 0)),
        ("2026-01-31T23:59:59Z", "UTC", ("2026-01-31", "Saturday", 6, 31, 31, 0)),
        # 03:00 UTC on December 1st is still November 30th in New York
        ("2026-12-01T03:00:00Z", "America/New_York", ("2026-11-30", "Monday", 1, 30, 30, 0)),
        ("2026-12-01T03:00:00Z", "UTC", ("2026-12-01", "Tuesday", 2, 1, 31, 30)),
    ],
)
def test_run_context_at_a_fixed_time(instant, zone, expected):
    run = RunClock.at(at(instant), zone).context()
    got = tuple(
        run[k]
        for k in (
            "date",
            "weekday",
            "iso_weekday",
            "day_of_month",
            "days_in_month",
            "days_left_in_month",
        )
    )
    assert got == expected
    assert run["now"] == at(instant).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert run["timezone"] == zone


def test_the_run_context_is_shared_within_a_second_but_never_the_same_dict():
    early = RunClock.at(at("2026-12-01T03:00:00.100000Z"), "America/New_York")
    late = RunClock.at(at("2026-12-01T03:00:00.900000Z"), "America/New_York")
    assert early.context() == late.context()
    assert early.context()["local_time"] == "2026-11-30T22:00:00-05:00"
    # the next second, and the same instant in another zone, are other contexts
    assert RunClock.at(at("2026-12-01T03:00:01Z"), "America/New_York").context()["now"] == (
        "2026-12-01T03:00:01Z"
    )
    assert RunClock.at(at("2026-12-01T03:00:00.100000Z")).context()["date"] == "2026-12-01"
    handed_out = early.context()
    handed_out["date"] = "changed by a caller"
    assert late.context()["date"] == "2026-11-30"


def test_has_it_happened_is_judged_at_the_exact_instant_not_the_second():
    # one agent, two run times within the same second: each decides as of its own instant
    # (the entry built as is: canonical entries carry whole seconds)
    visit = {"id": "1", "date": "2026-12-01T12:00:00.500Z", "pm_status": "Occurred"}
    agent = customer_plan()
    data = {"id": "42", "active_tags": [], "appointments": [visit]}
    same = entry([]).model_copy(update={"data": data})
    before = agent.decide(INTEGRATION, same, None, as_of=at("2026-12-01T12:00:00.100000Z"))
    after = agent.decide(INTEGRATION, same, None, as_of=at("2026-12-01T12:00:00.900000Z"))
    assert values(before)["customer"] is False
    assert values(after)["customer"] is True
    again = agent.decide(INTEGRATION, same, None, as_of=at("2026-12-01T12:00:00.100000Z"))
    assert again == before


def test_a_run_time_must_be_aware_and_the_zone_known():
    with pytest.raises(ConfigurationError):
        RunClock.at(datetime(2026, 12, 1))  # noqa: DTZ001 - the point of the test
    with pytest.raises(ConfigurationError, match="Mars/Olympus"):
        RunClock.at(at("2026-12-01T00:00:00Z"), "Mars/Olympus")
    with pytest.raises(ConfigurationError, match="time zone"):
        customer_plan(timezone="Mars/Olympus")


def test_the_run_time_of_a_work_item_is_its_flush_or_its_replay():
    assert flush_time("weekly-20261201T161431-1a2b3c4d") == at("2026-12-01T16:14:31Z")
    assert flush_time("manual") is None
    replayed = at("2026-12-03T09:00:00Z")
    assert run_time("weekly-20261201T161431-1a2b3c4d", replayed) == replayed
    assert run_time("weekly-20261201T161431-1a2b3c4d") == at("2026-12-01T16:14:31Z")


# -- the functions --------------------------------------------------------------------------


def test_the_registered_functions_are_the_ones_jmespath_gets():
    assert set(PLAN_FUNCTIONS) <= set(PlanFunctions.FUNCTION_TABLE)
    for name in PLAN_FUNCTIONS:
        assert name not in jmespath.functions.Functions.FUNCTION_TABLE


def test_days_since_and_until_count_calendar_days_in_the_plan_zone():
    utc = RunClock.at(at("2026-12-01T12:00:00Z"))
    ny = RunClock.at(at("2026-12-01T12:00:00Z"), "America/New_York")
    late = "2026-11-30 23:30:00 -0500"  # 04:30 UTC on the 1st; the 30th in New York
    assert search(f"days_since(`{json.dumps(late)}`)", utc) == 0
    assert search(f"days_since(`{json.dumps(late)}`)", ny) == 1
    assert search('days_since(`"2026-11-01T10:00:00Z"`)', utc) == 30
    assert search('days_since(`"2026-09-02"`)', utc) == 90  # a bare date
    assert search('days_until(`"2026-12-25"`)', utc) == 24
    assert search('days_since(`"2026-12-25"`)', utc) == -24
    assert search('days_since(`"2028-03-01"`) ', RunClock.at(at("2028-03-01T00:00:00Z"))) == 0
    # across February 29th
    assert search('days_since(`"2028-02-28"`)', RunClock.at(at("2028-03-01T00:00:00Z"))) == 2
    assert search("days_since(`null`)", utc) is None
    assert search('days_since(`"soon"`)', utc) is None  # never guessed
    assert search('local_date(`"2026-12-01T03:00:00Z"`)', ny) == "2026-11-30"


def test_within_days_means_happened_on_the_run_date_or_the_n_before():
    clock = RunClock.at(at("2026-12-01T12:00:00Z"))
    within = clock.within_days
    assert within("2026-09-02T10:00:00Z", 90)  # 90 dates back: in
    assert not within("2026-09-01T23:59:59Z", 90)  # 91: out
    assert within("2026-12-01T11:59:59Z", 0)  # earlier today
    assert not within("2026-12-01T12:00:01Z", 90)  # later today: not happened yet
    assert not within("2026-12-20", 90)  # a future date
    assert within("2026-12-01", 0)
    assert not within(None, 90)
    assert not within("garbage", 90)
    assert search("within_days(`null`, `3`)", clock) is False


def test_within_next_days_means_not_happened_and_at_most_n_dates_ahead():
    clock = RunClock.at(at("2026-12-01T12:00:00Z"))
    assert clock.within_next_days("2026-12-31T10:00:00Z", 30)
    assert not clock.within_next_days("2027-01-01T10:00:00Z", 30)
    assert clock.within_next_days("2026-12-01T13:00:00Z", 0)  # later today
    assert not clock.within_next_days("2026-11-30T13:00:00Z", 30)


def test_a_wrong_argument_type_is_a_plan_failure_not_a_guess():
    clock = RunClock.at(at("2026-12-01T12:00:00Z"))
    with pytest.raises(jmespath.exceptions.JMESPathTypeError):
        search('within_days(`"2026-11-01"`, `"90"`)', clock)


# -- plans over time -------------------------------------------------------------------------


def test_the_90_day_customer_rule_flips_as_the_run_date_moves():
    agent = customer_plan()
    same = entry([VISIT])  # the entry never changes
    first = agent.decide(INTEGRATION, same, None, as_of=at("2026-11-15T12:00:00Z"))
    edge = agent.decide(INTEGRATION, same, None, as_of=at("2026-12-01T12:00:00Z"))
    after = agent.decide(INTEGRATION, same, None, as_of=at("2026-12-02T12:00:00Z"))
    assert [values(p)["customer"] for p in (first, edge, after)] == [True, True, False]
    assert values(after)["as_of"] == "2026-12-02"
    # the same entry at the same run time: the same plan
    assert agent.decide(INTEGRATION, same, None, as_of=at("2026-12-02T12:00:00Z")) == after
    # an appointment that has not occurred does not count; no appointments at all is fine
    booked = {**VISIT, "pm_status": None}
    later = at("2026-11-15T12:00:00Z")
    assert values(agent.decide(INTEGRATION, entry([booked]), None, as_of=later)) == {
        "customer": False,
        "as_of": "2026-11-15",
    }
    assert values(agent.decide(INTEGRATION, entry([]), None, as_of=later))["customer"] is False
    plan = agent.decide(INTEGRATION, same, None, as_of=later)
    validate_plan(plan, same, {"warehouse": MemoryConnector("warehouse")})


def test_the_run_time_defaults_to_the_fetch_time_and_batches_share_one():
    agent = customer_plan()
    fetched = entry([VISIT]).model_copy(update={"fetched_at": at("2026-11-15T00:00:00Z")})
    assert values(agent.decide(INTEGRATION, fetched, None))["as_of"] == "2026-11-15"
    plans = agent.decide_many(
        INTEGRATION, [(fetched, None), (entry([]), None)], as_of=at("2026-12-02T12:00:00Z")
    )
    assert [values(p)["as_of"] for p in plans] == ["2026-12-02", "2026-12-02"]


def test_the_plan_zone_decides_the_calendar():
    ny = customer_plan(timezone="America/New_York")
    utc = customer_plan()
    moment = at("2026-12-02T03:00:00Z")  # 22:00 on December 1st in New York
    same = entry([VISIT])
    assert values(ny.decide(INTEGRATION, same, None, as_of=moment))["customer"] is True
    assert values(utc.decide(INTEGRATION, same, None, as_of=moment))["customer"] is False


# -- a monthly schedule on a weekly run ----------------------------------------------------


@pytest.fixture(scope="module")
def monthly() -> PlanAgent:
    return PlanAgent.from_file(
        EXAMPLES / "monthly-summary.plan.json", EXAMPLES / "monthly-summary.md"
    )


def test_run_when_holds_only_in_the_last_week_of_the_month(monthly):
    # New York dates: the 24th of December has 7 days left, the 25th 6
    assert not monthly.runs_at(datetime(2026, 12, 24, 23, 59, tzinfo=NEW_YORK))
    assert monthly.runs_at(datetime(2026, 12, 25, 0, 0, tzinfo=NEW_YORK))
    assert monthly.runs_at(datetime(2026, 12, 31, 23, 59, tzinfo=NEW_YORK))
    assert not monthly.runs_at(datetime(2027, 1, 1, 0, 0, tzinfo=NEW_YORK))
    assert monthly.runs_at(datetime(2028, 2, 23, 12, 0, tzinfo=NEW_YORK))  # leap February
    assert not monthly.runs_at(datetime(2027, 2, 21, 12, 0, tzinfo=NEW_YORK))
    # 03:00 UTC on January 1st is still December 31st in New York
    assert monthly.runs_at(at("2027-01-01T03:00:00Z"))


@pytest.mark.parametrize("first_run", range(7))
def test_a_weekly_run_writes_exactly_once_a_month(monthly, first_run):
    start = datetime(2026, 1, 1, 6, 0, tzinfo=NEW_YORK) + timedelta(days=first_run)
    runs = [start + timedelta(weeks=k) for k in range(0, 53 * 2)]  # two years of Mondays...
    months: dict[tuple[int, int], int] = {}
    for moment in runs:
        if monthly.runs_at(moment):
            months[(moment.year, moment.month)] = months.get((moment.year, moment.month), 0) + 1
    covered = {(r.year, r.month) for r in runs[:-5]}
    assert all(months.get(m) == 1 for m in covered), months


def test_outside_its_window_the_plan_holds_the_patient_until_the_window_opens(monthly):
    same = entry([VISIT])
    with pytest.raises(RetriableError) as held:
        monthly.decide(INTEGRATION, same, None, as_of=datetime(2026, 12, 10, 9, tzinfo=NEW_YORK))
    opens = datetime(2026, 12, 25, 0, 0, tzinfo=NEW_YORK)
    assert (
        held.value.retry_after
        == (opens - datetime(2026, 12, 10, 9, tzinfo=NEW_YORK)).total_seconds()
    )
    assert "42" not in str(held.value)
    [slot] = monthly.decide_many(
        INTEGRATION, [(same, None)], as_of=datetime(2026, 12, 10, 9, tzinfo=NEW_YORK)
    )
    assert isinstance(slot, RetriableError)
    plan = monthly.decide(INTEGRATION, same, None, as_of=datetime(2026, 12, 28, 9, tzinfo=NEW_YORK))
    op = plan.operations[0]
    assert op.args["key"] == "42:2026:12"
    assert op.args["values"] == {
        "as_of": "2026-12-28",
        "customer": False,  # September 2nd is more than 90 days before December 28th
        "last_visit": "2026-09-02",
        "days_since_last_visit": "117",
        "booked_next_30_days": False,
    }
    validate_plan(plan, same, {"warehouse": MemoryConnector("warehouse")})
    skipped = monthly.decide(INTEGRATION, entry([VISIT], tags=("do-not-sync",)), None, as_of=opens)
    assert skipped.action == "skip"


def test_the_example_plan_validates(tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    (config / "monthly-summary.toml").write_text(
        "\n".join(
            [
                'id = "monthly-summary"',
                'cadence = "weekly"',
                "[healthie]",
                'environment = "local"',
                'api_url = "http://127.0.0.1:8765/graphql"',
                'api_key_secret = "k"',
                'webhook_secrets = ["w"]',
                "[agent]",
                'backend = "plan"',
                f"instructions = {json.dumps(str(EXAMPLES / 'monthly-summary.md'))}",
                f"plan = {json.dumps(str(EXAMPLES / 'monthly-summary.plan.json'))}",
                "[[targets]]",
                'name = "warehouse"',
                'connector = "sqlite"',
                f"options = {{ path = {json.dumps(str(tmp_path / 'w.db'))} }}",
            ]
        ),
        encoding="utf-8",
    )
    settings = Settings(config_dir=config, data_dir=tmp_path / "data")
    findings = validate(settings, secrets=MemorySecretStore({"k": "key", "w": "whsec"}))
    assert [f for f in findings if f.severity != "info"] == []


# -- the path checker knows the run and the functions --------------------------------------


def test_the_checker_types_run_and_the_date_functions():
    shape = entry_shape(None)
    ctx = context_shape(shape, None)
    _, issues = check_expression(CUSTOMER, ctx)
    assert issues == []
    _, issues = check_expression("run.days_left_in_month < `7`", base_shape(shape))
    assert issues == []
    _, issues = check_expression("run.days_left_in_mnth < `7`", ctx)
    assert [(i.path, i.hint) for i in issues] == [
        ("run.days_left_in_mnth", "did you mean days_left_in_month?")
    ]
    _, issues = check_expression("days_sinse(entry.dob)", ctx)
    assert [i.hint for i in issues] == ["did you mean days_since()?"]
    _, issues = check_expression("entry.active", run_shape())
    assert issues
    assert "run" in issues[0].problem


def test_run_when_may_read_only_the_run():
    with pytest.raises(ConfigurationError, match="run_when"):
        customer_plan(run_when="entry.active")
    with pytest.raises(ConfigurationError, match="JMESPath"):
        customer_plan(run_when="run.date ==")


# -- the Claude prompt states the run date -------------------------------------------------


def test_the_prompt_states_the_run_date():
    data = {"id": "42", "first_name": "Ann"}
    text = entry_message("42", data, None, None, run_at=at("2026-12-01T16:00:00Z"))
    first = text.splitlines()[0]
    assert first == (
        '<run date="2026-12-01" weekday="Tuesday" now="2026-12-01T16:00:00Z" '
        'timezone="UTC" days_left_in_month="30"/>'
    )
    assert "as of the run date" in text
    assert extract_entry(text) == data
    later = entry_message("42", data, None, None, run_at=at("2026-12-02T16:00:00Z"))
    assert later.splitlines()[1:] == text.splitlines()[1:]  # only the run line moves
    before = datetime.now(UTC).date().isoformat()
    default = entry_message("42", data, None, None).splitlines()[0]  # no run time: now
    after = datetime.now(UTC).date().isoformat()
    assert any(f'date="{day}"' in default for day in (before, after))


# -- refresh_after -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("90m", timedelta(minutes=90)),
        ("12h", timedelta(hours=12)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 1D 12H ", timedelta(days=1, hours=12)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7 days", "-7d", "0d", "7d foo", "1.5d"])
def test_bad_durations_are_configuration_errors(text):
    with pytest.raises(ConfigurationError):
        parse_duration(text)


def test_a_decision_is_stale_once_refresh_after_has_passed():
    decided = at("2026-11-24T10:00:00Z")
    assert not is_stale(decided, at("2026-12-01T09:59:59Z"), "7d")
    assert is_stale(decided, at("2026-12-01T10:00:00Z"), "7d")
    assert not is_stale(decided, at("2030-01-01T00:00:00Z"), None)  # never expires
    assert is_stale(decided, at("2026-11-24T11:00:00Z"), timedelta(hours=1))
    assert stale_before(at("2026-12-01T10:00:00Z"), "7d") == decided
    naive = datetime(2026, 11, 24, 10)  # noqa: DTZ001 - a store that dropped the offset
    assert is_stale(naive, at("2026-12-01T10:00:00Z"), "7d")
    assert not is_stale(naive, at("2026-12-01T09:00:00Z"), "7d")


def test_refresh_after_is_a_validated_config_value():
    class Agent(BaseModel):
        refresh_after: RefreshAfter = None

    assert Agent(refresh_after="7d").refresh_after == "7d"
    assert Agent().refresh_after is None
    with pytest.raises(ValidationError, match="number and unit"):
        Agent(refresh_after="weekly")


def test_stale_decisions_make_the_time_rule_current_again():
    """What the pipeline does with ``refresh_after``: an unchanged entry whose decision is older
    than it is decided again, and the time rule's answer moves with the run."""
    agent = customer_plan()
    same = entry([VISIT])
    decided_at = at("2026-11-20T12:00:00Z")
    stored = agent.decide(INTEGRATION, same, None, as_of=decided_at)
    now = at("2026-12-05T12:00:00Z")
    assert is_stale(decided_at, now, "7d")
    fresh = agent.decide(INTEGRATION, same, None, as_of=now)
    assert values(stored)["customer"] is True
    assert values(fresh)["customer"] is False
    assert not is_stale(decided_at, now, "30d")  # with 30d the stored answer is kept


def test_a_flush_knows_when_an_integration_is_held(tmp_path):
    plan = tmp_path / "monthly.plan.json"
    plan.write_text((EXAMPLES / "monthly-summary.plan.json").read_text(), encoding="utf-8")
    agent = INTEGRATION.agent.model_copy(update={"plan": plan})
    monthly = INTEGRATION.model_copy(update={"agent": agent})
    mid_month = datetime(2026, 12, 10, 9, tzinfo=NEW_YORK)
    assert held_until(monthly, mid_month) == datetime(2026, 12, 25, tzinfo=NEW_YORK)
    assert held_until(monthly, datetime(2026, 12, 28, 9, tzinfo=NEW_YORK)) is None
    assert held_until(INTEGRATION, mid_month) is None  # the demo plan has no run_when
