"""Healthie's published API versions and their lifecycle, to warn before a pinned version is
refused.

Source: Healthie's versioning guide (https://docs.gethealthie.com/guides/api-concepts/versioning/,
kept in ``shared/healthie/guides/api-concepts_versioning.md``):

* the header value must be a published release date ("Version History"), or Healthie answers
  ``UNSUPPORTED_API_VERSION``;
* a version moves through active → deprecated (it still works; every response carries
  ``API_VERSION_SUNSET_WARNING``) → sunset (rejected) ("Version Lifecycle");
* transition: on 2026-07-01 every existing version (2024-06-01 … 2026-01-01) entered
  deprecation, and on 2027-01-31 they are sunset: 2026-07-01 is the minimum from then on
  ("Transition Timeline");
* from 2026-07-01 on, a new release puts the previous one in a 6-month deprecation window.

:func:`version_notice` is what start-up and ``doctor`` say about a pinned version: nothing
while it is active and no sunset is within :data:`WARN_DAYS`; otherwise one line with the
sunset date, the days left and the version to move to. A newly published release is one more
row in :data:`RELEASES` (with the deprecation and sunset dates Healthie announces for the one
before it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

#: warn this many days before a pinned version's sunset
WARN_DAYS = 60
TRANSITION_DEPRECATION = date(2026, 7, 1)
TRANSITION_SUNSET = date(2027, 1, 31)
#: the version this engine pins by default (``healthie.api_version``)
RECOMMENDED = "2026-07-01"

State = Literal["active", "deprecated", "sunset", "unknown"]


@dataclass(frozen=True)
class Release:
    """One published version: deprecated from ``deprecated``, refused from ``sunset``."""

    version: str
    deprecated: date | None = None
    sunset: date | None = None

    @property
    def released(self) -> date:
        """Healthie names versions by their release date."""
        return date.fromisoformat(self.version)


def _transition(version: str) -> Release:
    return Release(version, TRANSITION_DEPRECATION, TRANSITION_SUNSET)


# The guide's version history, plus the 2024-06-01 baseline (what a request without the
# header gets) and 2026-07-01, the release the transition timeline names as the minimum.
RELEASES: tuple[Release, ...] = (
    *(
        _transition(v)
        for v in (
            "2024-06-01",
            "2024-07-01",
            "2024-10-01",
            "2024-10-20",
            "2024-11-01",
            "2025-01-01",
            "2025-04-01",
            "2025-05-15",
            "2025-07-31",
            "2025-10-15",
            "2025-11-30",
            "2026-01-01",
        )
    ),
    Release("2026-07-01"),
)
_BY_VERSION = {r.version: r for r in RELEASES}


@dataclass(frozen=True)
class VersionStatus:
    """Where a version stands on a given day."""

    version: str
    state: State
    sunset: date | None
    days_left: int | None  # until the sunset (negative: days since)
    latest: str

    @property
    def warn(self) -> bool:
        """True when an operator should move off this version now."""
        if self.state != "active":
            return True
        return self.days_left is not None and self.days_left <= WARN_DAYS


def latest(today: date) -> str:
    """The newest version released by ``today``."""
    return max(r.version for r in RELEASES if r.released <= today)


def status(version: str, today: date) -> VersionStatus:
    """``version``'s lifecycle state on ``today``."""
    newest = latest(today)
    found = _BY_VERSION.get(version.strip())
    if found is None or found.released > today:
        return VersionStatus(version, "unknown", None, None, newest)
    days = (found.sunset - today).days if found.sunset else None
    state: State = "active"
    if found.sunset is not None and today >= found.sunset:
        state = "sunset"
    elif found.deprecated is not None and today >= found.deprecated:
        state = "deprecated"
    return VersionStatus(found.version, state, found.sunset, days, newest)


def version_notice(version: str, today: date | None = None) -> str | None:
    """One line for operators when ``version`` is not safe to keep (see the module
    docstring), else None. ``today`` defaults to the current UTC date."""
    seen = status(version, today or datetime.now(UTC).date())
    if not seen.warn:
        return None
    move = f"set healthie.api_version = {seen.latest!r}"
    if seen.state == "unknown":
        return (
            f"API version {version!r} is not a published Healthie release date: Healthie "
            f"refuses it (UNSUPPORTED_API_VERSION); {move}"
        )
    if seen.state == "sunset":
        return (
            f"API version {version} was sunset on {seen.sunset}: Healthie refuses it "
            f"(UNSUPPORTED_API_VERSION); {move}"
        )
    return (
        f"API version {version} is {seen.state}; Healthie sunsets it on {seen.sunset}, "
        f"in {seen.days_left} days, and refuses it from then on; {move}"
    )
