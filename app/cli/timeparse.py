"""Times as an operator types and reads them: ``--since``/``--until`` values and table cells.

Accepted forms, read in the operator's time zone (``--tz NAME``, an IANA name such as
``Europe/Berlin``; by default the machine's local zone, daylight saving included):

* a relative age: ``30m``, ``24h``, ``7d``, ``2w`` (also ``90s``): that long before now;
* ``now``, ``today``, ``yesterday``;
* a date: ``2026-03-01``: the start of that day for ``--since``, its end for ``--until``, so
  ``--since 2026-03-01 --until 2026-03-01`` is the whole day;
* a date and time: ``2026-03-01 14:30`` or ``2026-03-01T14:30:00``; with an offset
  (``+01:00``, ``Z``) the offset wins over the zone;
* a time alone: ``14:30``: today at that time.

Anything else is a ConfigurationError naming the option and the forms (exit code 2).
Displayed times carry their zone: ``2026-03-01 14:30 CET``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.core.errors import ConfigurationError

_AGE = re.compile(r"^(\d+)\s*(s|sec|m|min|h|d|w)$", re.IGNORECASE)
_UNIT = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_FORMS = "e.g. 30m, 24h, 7d, today, 2026-03-01, 2026-03-01 14:30, 14:30, or ISO 8601"


def zone(name: str | None) -> tzinfo | None:
    """The zone ``--tz`` names; None for the local zone."""
    if not name:
        return None
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"--tz {name!r} is not a time zone name (e.g. UTC, Europe/Berlin, America/New_York)"
        ) from exc


def _local(naive: datetime, tz: tzinfo | None) -> datetime:
    # astimezone() on a naive value reads it as the machine's local time, DST included.
    return naive.replace(tzinfo=tz) if tz is not None else naive.astimezone()


def parse_moment(
    text: str,
    tz: tzinfo | None,
    *,
    option: str = "--since",
    end_of_day: bool = False,
    now: datetime | None = None,
) -> datetime:
    """The aware instant ``text`` means in ``tz`` (None: local); ``end_of_day`` makes a bare
    date mean the end of that day (for ``--until``)."""
    value = text.strip()
    current = now or datetime.now(UTC)
    age = _AGE.match(value)
    if age:
        return current - timedelta(seconds=int(age.group(1)) * _UNIT[age.group(2).lower()])
    today = current.astimezone(tz).date()
    word = value.lower()
    if word == "now":
        return current
    if word in ("today", "yesterday"):
        day = today - timedelta(days=1 if word == "yesterday" else 0)
        start = _local(datetime.combine(day, time()), tz)
        return start + timedelta(days=1) if end_of_day else start
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            day = datetime.strptime(value, "%Y-%m-%d").date()  # noqa: DTZ007 - a date only
        except ValueError as exc:
            raise _refused(option, text) from exc
        start = _local(datetime.combine(day, time()), tz)
        return start + timedelta(days=1) if end_of_day else start
    if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value):
        try:
            clock = time.fromisoformat(value if value.index(":") == 2 else "0" + value)
        except ValueError as exc:
            raise _refused(option, text) from exc
        return _local(datetime.combine(today, clock), tz)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _refused(option, text) from exc
    return moment if moment.tzinfo is not None else _local(moment, tz)


def _refused(option: str, text: str) -> ConfigurationError:
    return ConfigurationError(f"{option} {text!r} is not a date, time or age ({_FORMS})")


def show(moment: datetime | None, tz: tzinfo | None) -> str:
    """``2026-03-01 14:30 CET``: the instant in ``tz`` (None: local), with its zone."""
    if moment is None:
        return ""
    local = moment.astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname() or local.strftime('%z')}"
