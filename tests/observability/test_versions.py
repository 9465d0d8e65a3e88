"""The Healthie API version table (app.healthie.versions) and the warnings built on it.

* the table holds every version Healthie's versioning guide publishes, with the transition
  dates the guide gives, and the sandbox accepts exactly the same releases;
* the default pin is 2026-07-01, the minimum from 2027-01-31, and draws no warning;
* a deprecated pin (2026-01-01 today) is warned about, with the sunset date and days left,
  and so is a sunset or unknown one; the 60-day rule holds at its edge;
* the client knows the notice before any request, and ``doctor`` lists it as a warning
  against the real sandbox, which serves 2026-07-01 without a sunset warning.
"""

from __future__ import annotations

import re
from datetime import date

import pytest

from app.core.config import DEFAULT_API_VERSION
from app.healthie import versions
from app.healthie.client import HealthieClient
from app.service.doctor import doctor
from app.service.serving import serve_in_thread
from sandbox import versions as sandbox_versions
from sandbox.core import Sandbox
from sandbox.server import create_app as sandbox_app
from tests.conftest import SHARED, require_service
from tests.helpers import demo_runtime

TODAY = date(2026, 12, 1)


def test_the_table_holds_every_version_the_guide_publishes():
    guide = SHARED / "healthie" / "guides" / "api-concepts_versioning.md"
    if not guide.is_file():
        require_service("../shared", f"Healthie's versioning guide not found at {guide}")
    text = guide.read_text(encoding="utf-8")
    history = text.split("## Version History", 1)[1]
    published = set(re.findall(r"^### (\d{4}-\d{2}-\d{2})$", history, flags=re.MULTILINE))
    assert published, "the guide's version history was not read"
    table = {r.version for r in versions.RELEASES}
    assert published <= table
    # the baseline a header-less request gets, and the minimum from the transition's end
    assert {"2024-06-01", "2026-07-01"} <= table
    assert "2027-01-31" in text
    assert "6-month deprecation window" in text
    for release in versions.RELEASES:
        if release.released < versions.TRANSITION_DEPRECATION:
            assert (release.deprecated, release.sunset) == (date(2026, 7, 1), date(2027, 1, 31))


def test_the_sandbox_accepts_the_same_releases():
    assert set(sandbox_versions.RELEASES) == {r.version for r in versions.RELEASES}


def test_the_default_pin_is_the_minimum_after_the_transition():
    assert DEFAULT_API_VERSION == versions.RECOMMENDED == "2026-07-01"
    assert versions.status(DEFAULT_API_VERSION, TODAY).state == "active"
    assert versions.version_notice(DEFAULT_API_VERSION, TODAY) is None


def test_a_deprecated_pin_is_warned_about_with_its_sunset():
    seen = versions.status("2026-01-01", TODAY)
    assert (seen.state, seen.sunset, seen.days_left) == ("deprecated", date(2027, 1, 31), 61)
    notice = versions.version_notice("2026-01-01", TODAY)
    assert notice is not None
    assert "2027-01-31" in notice
    assert "61 days" in notice
    assert "'2026-07-01'" in notice
    # before the lifecycle began, the same version was active and silent
    assert versions.version_notice("2026-01-01", date(2026, 6, 30)) is None


def test_sunset_and_unknown_pins_are_warned_about():
    sunset = versions.version_notice("2025-10-15", date(2027, 2, 1))
    assert sunset is not None
    assert "was sunset on 2027-01-31" in sunset
    unknown = versions.version_notice("2025-06-15", TODAY)
    assert unknown is not None
    assert "not a published Healthie release" in unknown
    # a release not out yet on that day is not a version one can pin
    assert versions.status("2026-07-01", date(2026, 6, 1)).state == "unknown"


def test_the_sixty_day_rule_at_its_edge():
    def active(days_left: int) -> versions.VersionStatus:
        return versions.VersionStatus("x", "active", date(2027, 1, 31), days_left, "x")

    assert active(versions.WARN_DAYS).warn
    assert not active(versions.WARN_DAYS + 1).warn
    assert not versions.VersionStatus("x", "active", None, None, "x").warn


def test_the_client_knows_the_notice_before_any_request():
    old = HealthieClient(url="http://healthie.test/graphql", api_key="k", api_version="2026-01-01")
    new = HealthieClient(url="http://healthie.test/graphql", api_key="k")
    try:
        assert any("Healthie sunsets it on 2027-01-31" in w for w in old.warnings_seen)
        assert new.warnings_seen == set()
    finally:
        old.close()
        new.close()


@pytest.fixture(scope="module")
def sandbox_url():
    sb = Sandbox(patients=12, seed=5)
    with serve_in_thread(sandbox_app(sb)) as url:
        yield url, sb


def _doctor_warnings(tmp_path, sandbox_url, api_version: str | None) -> list[str]:
    url, sb = sandbox_url
    rt = demo_runtime(tmp_path, api_url=f"{url}/graphql", api_key=sb.api_key, target="sqlite")
    if api_version is not None:
        integration = rt.integrations["demo-clinic"]
        rt.integrations["demo-clinic"] = integration.model_copy(
            update={
                "healthie": integration.healthie.model_copy(update={"api_version": api_version})
            }
        )
    try:
        checks = doctor(rt, "demo-clinic")
    finally:
        rt.close()
    assert {c.name: c.verdict for c in checks}["healthie"] == "ok", checks
    return [c.detail for c in checks if c.name == "healthie api version"]


def test_doctor_warns_about_a_deprecated_pin_and_the_sandbox_serves_the_new_one(
    tmp_path, sandbox_url
):
    old = _doctor_warnings(tmp_path, sandbox_url, "2026-01-01")
    # the table's notice, and the sandbox's own API_VERSION_SUNSET_WARNING
    assert any("Healthie sunsets it on 2027-01-31" in w for w in old), old
    assert any("API_VERSION_SUNSET_WARNING" in w for w in old), old
    assert _doctor_warnings(tmp_path, sandbox_url, None) == []
