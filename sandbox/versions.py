"""Healthie's API version header, checked the way the versioning guide describes.

The sandbox serves one schema (the 2026-01-01 reference) whatever version is asked for; what
it reproduces is the lifecycle around the header, judged against the sandbox clock:

* a value that is not a published release date is rejected (``UNSUPPORTED_API_VERSION``);
* from 2026-07-01 every version before 2026-07-01, and a missing header (which falls back
  to the 2024-06-01 baseline), is deprecated: the response carries warnings in
  ``extensions.warnings``;
* from 2027-01-31 those versions are sunset (rejected) and the header is required.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

HEADER = "Healthie-GraphQL-API-Version"
BASELINE = "2024-06-01"
LIFECYCLE_START = date(2026, 7, 1)
TRANSITION_SUNSET = date(2027, 1, 31)
# Published release dates from the guide's version history, plus the baseline and the
# 2026-07-01 release the transition timeline announces.
RELEASES: tuple[str, ...] = (
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
    "2026-07-01",
)


@dataclass(slots=True)
class VersionCheck:
    """Outcome of checking the header: an error to return, or warnings to attach."""

    version: str | None
    error: dict[str, Any] | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)


def _latest(today: date) -> str:
    return max(v for v in RELEASES if date.fromisoformat(v) <= today)


def check_version(header: str | None, today: date) -> VersionCheck:
    """Judge the ``Healthie-GraphQL-API-Version`` header value on ``today``."""
    latest = _latest(today)
    if header is None:
        if today >= TRANSITION_SUNSET:
            return VersionCheck(
                None,
                {
                    "message": f"Missing required header: {HEADER}. All API requests must include "
                    "a version header.",
                    "extensions": {"code": "MISSING_API_VERSION_HEADER", "latest_version": latest},
                },
            )
        result = check_version(BASELINE, today)
        if today >= LIFECYCLE_START:
            result.warnings.insert(
                0,
                {
                    "code": "MISSING_API_VERSION_HEADER",
                    "message": f"No {HEADER} header was sent. Defaulting to baseline version "
                    f"{BASELINE}. This fallback will be removed on {TRANSITION_SUNSET}; please "
                    "include the header in all requests.",
                    "latest_version": latest,
                },
            )
        return result
    version = header.strip()
    known = version in RELEASES and date.fromisoformat(version) <= today
    sunset = known and today >= TRANSITION_SUNSET and date.fromisoformat(version) < LIFECYCLE_START
    if not known or sunset:
        return VersionCheck(
            None,
            {
                "message": f"API version '{version}' is no longer supported. Please upgrade to a "
                "supported version."
                if known
                else f"API version '{version}' is not a recognized Healthie API version.",
                "extensions": {
                    "code": "UNSUPPORTED_API_VERSION",
                    "requested_version": version,
                    "minimum_supported_version": (
                        str(LIFECYCLE_START) if today >= TRANSITION_SUNSET else BASELINE
                    ),
                    "latest_version": latest,
                },
            },
        )
    result = VersionCheck(version)
    if today >= LIFECYCLE_START and date.fromisoformat(version) < LIFECYCLE_START:
        result.warnings.append(
            {
                "code": "API_VERSION_SUNSET_WARNING",
                "message": f"API version {version} is deprecated and will be sunset on "
                f"{TRANSITION_SUNSET}. Please upgrade to a supported version.",
                "requested_version": version,
                "sunset_date": str(TRANSITION_SUNSET),
                "latest_version": latest,
            }
        )
    return result
