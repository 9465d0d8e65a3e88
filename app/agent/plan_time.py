"""The run's time in compiled plans: the ``run`` context and the date functions.

A plan is evaluated *as of* one instant, the run's time, passed in (the flush's time, a
replay's time, a test's fixed time) so that the same entry and the same instant always give the
same plan; without one the entry's fetch time is used. Calendar questions (which date is it,
how many days since) are answered in the plan's ``timezone`` (an IANA name, ``"UTC"`` when the
plan names none): a clinic in New York asking "in the last 7 days" at 01:00 UTC on the 2nd is
still on the 1st. Instants (``run.now``, "has it happened yet") are zone-free.

``run`` (the names a plan expression reads, see :meth:`RunClock.context`)::

    now                 "2026-12-01T16:14:31Z"   the run's instant, UTC
    local_time          "2026-12-01T11:14:31-05:00" the same instant in the plan's zone
    date                "2026-12-01"             the run's date in the plan's zone
    year, month, day_of_month, days_in_month, days_left_in_month (0 on the last day)
    weekday             "Tuesday"; iso_weekday 1 (Monday) .. 7 (Sunday)
    timezone            "America/New_York"

Functions (JMESPath custom functions; a timestamp is Healthie's ISO 8601 or Ruby form, or a
``YYYY-MM-DD`` date; null or anything unparseable gives null / false, never a guess):

* ``days_since(ts)``: calendar days from ts's date to the run's date (negative: in the future);
* ``days_until(ts)``: the opposite;
* ``within_days(ts, n)``: ts has happened (not after the run's instant) and its date is the
  run's date or one of the n dates before it;
* ``within_next_days(ts, n)``: ts has not happened yet and its date is at most n dates ahead;
* ``local_date(ts)``: ts's date in the plan's zone (``"2026-12-01"``).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from functools import cached_property, lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jmespath
from jmespath import functions

from app.core.errors import ConfigurationError
from app.healthie.entry import parse_timestamp

#: ``run``'s names and their JMESPath types (``app.agent.plan_paths`` types them from this).
RUN_FIELDS: dict[str, str] = {
    "now": "string",
    "local_time": "string",
    "date": "string",
    "year": "number",
    "month": "number",
    "day_of_month": "number",
    "days_in_month": "number",
    "days_left_in_month": "number",
    "weekday": "string",
    "iso_weekday": "number",
    "timezone": "string",
}

#: The plan language's own functions and their result types (for ``app.agent.plan_paths``).
PLAN_FUNCTIONS: dict[str, str] = {
    "days_since": "number",
    "days_until": "number",
    "within_days": "boolean",
    "within_next_days": "boolean",
    "local_date": "string",
}

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# the flush id's stamp: "weekly-20261201T161431-1a2b3c4d" (workers.flusher)
_FLUSH_STAMP = re.compile(r"-(\d{8}T\d{6})-")


def zone(name: str) -> tzinfo:
    """The IANA zone ``name``; ConfigurationError when there is no such zone."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"unknown time zone {name!r} in plan (an IANA name)") from exc


def flush_time(flush_id: str) -> datetime | None:
    """The instant a flush started, read from its id (None when the id carries none)."""
    match = _FLUSH_STAMP.search(flush_id)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


def run_time(flush_id: str, replayed_at: datetime | None = None) -> datetime | None:
    """A work item's run time: when it was replayed, else when its flush started; every entry
    of one run is then judged as of the same instant (and a re-run of it, too)."""
    return replayed_at or flush_time(flush_id)


@dataclass(frozen=True)
class RunClock:
    """The instant a plan is evaluated at, and the zone its calendar questions use."""

    as_of: datetime
    tz: tzinfo = UTC

    @classmethod
    def at(cls, as_of: datetime | None = None, timezone: str = "UTC") -> RunClock:
        """A clock at ``as_of`` (now when None) in the zone named ``timezone``."""
        moment = as_of if as_of is not None else datetime.now(UTC)
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ConfigurationError("a plan's run time must be timezone-aware")
        return cls(moment, zone(timezone))

    @property
    def local(self) -> datetime:
        """The run's instant in the plan's zone."""
        return self.as_of.astimezone(self.tz)

    @property
    def today(self) -> date:
        """The run's date in the plan's zone."""
        return self.local.date()

    def context(self) -> dict[str, Any]:
        """The ``run`` object plan expressions read (see the module docstring); a fresh dict
        each call."""
        # Every name in it has a resolution of one second, so the clocks of all the entries
        # fetched within one second share its computation (strftime, isoformat, monthrange).
        return dict(_context(self.as_of.replace(microsecond=0), self.tz))

    def _read(self, value: Any) -> tuple[date, datetime | None] | None:
        """A value's date in the plan's zone and its instant (None for a bare date)."""
        if isinstance(value, str) and _DATE.match(value.strip()):
            try:
                return date.fromisoformat(value.strip()), None
            except ValueError:
                return None
        moment = parse_timestamp(value)
        if moment is None:
            return None
        return moment.astimezone(self.tz).date(), moment

    def local_date(self, value: Any) -> str | None:
        """``value``'s date in the plan's zone, ISO; None when it is not a timestamp."""
        read = self._read(value)
        return read[0].isoformat() if read else None

    def days_since(self, value: Any) -> int | None:
        """Calendar days from ``value``'s date to the run's date (negative when ahead)."""
        read = self._read(value)
        return (self.today - read[0]).days if read else None

    def _happened(self, day: date, moment: datetime | None) -> bool:
        return moment <= self.as_of if moment is not None else day <= self.today

    def within_days(self, value: Any, n: float) -> bool:
        """``value`` has happened, on the run's date or one of the ``n`` dates before it."""
        read = self._read(value)
        if read is None or not self._happened(*read):
            return False
        return 0 <= (self.today - read[0]).days <= n

    def within_next_days(self, value: Any, n: float) -> bool:
        """``value`` has not happened yet and falls at most ``n`` dates after the run's date."""
        read = self._read(value)
        if read is None or self._happened(*read):
            return False
        return 0 <= (read[0] - self.today).days <= n

    def options(self) -> jmespath.Options:
        """JMESPath options carrying the plan functions bound to this clock (made once)."""
        return self._options

    @cached_property
    def functions(self) -> PlanFunctions:
        """The plan functions bound to this clock (made once per clock)."""
        return PlanFunctions(self)

    @cached_property
    def _options(self) -> jmespath.Options:
        return jmespath.Options(custom_functions=self.functions)


@lru_cache(maxsize=256)
def _context(second: datetime, tz: tzinfo) -> dict[str, Any]:
    """:meth:`RunClock.context` at ``second`` (an instant without microseconds) in ``tz``;
    callers copy it, so the cached dict is never handed out."""
    local = second.astimezone(tz)
    days_in_month = calendar.monthrange(local.year, local.month)[1]
    return {
        "now": second.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "local_time": local.isoformat(timespec="seconds"),
        "date": local.date().isoformat(),
        "year": local.year,
        "month": local.month,
        "day_of_month": local.day,
        "days_in_month": days_in_month,
        "days_left_in_month": days_in_month - local.day,
        "weekday": calendar.day_name[local.weekday()],
        "iso_weekday": local.isoweekday(),
        "timezone": str(tz),
    }


class PlanFunctions(functions.Functions):
    """JMESPath's built-in functions plus :data:`PLAN_FUNCTIONS`, bound to a :class:`RunClock`."""

    def __init__(self, clock: RunClock) -> None:
        super().__init__()
        self.clock = clock

    @functions.signature({"types": ["string", "null"]})
    def _func_days_since(self, value: Any) -> int | None:
        return self.clock.days_since(value)

    @functions.signature({"types": ["string", "null"]})
    def _func_days_until(self, value: Any) -> int | None:
        days = self.clock.days_since(value)
        return None if days is None else -days

    @functions.signature({"types": ["string", "null"]}, {"types": ["number"]})
    def _func_within_days(self, value: Any, n: float) -> bool:
        return self.clock.within_days(value, n)

    @functions.signature({"types": ["string", "null"]}, {"types": ["number"]})
    def _func_within_next_days(self, value: Any, n: float) -> bool:
        return self.clock.within_next_days(value, n)

    @functions.signature({"types": ["string", "null"]})
    def _func_local_date(self, value: Any) -> str | None:
        return self.clock.local_date(value)
