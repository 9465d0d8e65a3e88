"""How long a decision stays valid: ``[agent] refresh_after = "7d"``.

Skip-unchanged reuses a decision as long as the entry's content hash is the same. A rule that
depends on the date ("customer if an appointment occurred in the last 90 days") can change its
answer while the entry does not; ``refresh_after`` bounds how old a reused decision may be: a
patient whose last decision is older is decided again even though the entry is unchanged.

Durations are a number and a unit, or several (``90m``, ``12h``, ``7d``, ``2w``, ``1d12h``);
they must be positive. :data:`RefreshAfter` is the config field's type (validated on load).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator

from app.core.errors import ConfigurationError

_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PART = re.compile(r"(\d+)\s*([mhdw])")
_WHOLE = re.compile(r"^(?:\s*\d+\s*[mhdw])+\s*$")


def parse_duration(text: str) -> timedelta:
    """``"7d"`` as a timedelta; ConfigurationError for anything else or a zero duration."""
    value = text.strip().lower()
    if not _WHOLE.match(value):
        raise ConfigurationError(
            f"duration {text!r} is not a number and unit (m, h, d, w), e.g. '7d' or '1d12h'"
        )
    total = timedelta()
    for amount, unit in _PART.findall(value):
        total += timedelta(**{_UNITS[unit]: int(amount)})
    if total <= timedelta():
        raise ConfigurationError(f"duration {text!r} must be longer than zero")
    return total


def _check(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_duration(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from exc  # pydantic reports it at the config key
    return value


#: The config field: ``refresh_after: RefreshAfter = None`` (None: decisions never expire).
RefreshAfter = Annotated[str | None, AfterValidator(_check)]


def stale_before(as_of: datetime, refresh_after: str | timedelta | None) -> datetime | None:
    """The instant before which a decision is stale at ``as_of`` (None: never stale)."""
    if refresh_after is None:
        return None
    period = parse_duration(refresh_after) if isinstance(refresh_after, str) else refresh_after
    return as_of - period


def is_stale(decided_at: datetime, as_of: datetime, refresh_after: str | timedelta | None) -> bool:
    """Whether a decision made at ``decided_at`` must be made again at ``as_of``: it is at
    least ``refresh_after`` old. A naive time is read as UTC (the engine stores UTC; a store
    that drops the offset must not make every comparison fail)."""
    cutoff = stale_before(_aware(as_of), refresh_after)
    return cutoff is not None and _aware(decided_at) <= cutoff


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
