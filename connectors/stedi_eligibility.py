"""Eligibility checks as typed results: the plan's arguments, the Stedi 270 request they become,
and the compact summary of a 271 (or of Nirvana's answer) that a check returns.

::

    CheckEligibility (plan arguments)   ─▶ eligibility_request()  Stedi's
      payer_id, member_id, names, dob,                            EligibilityCheckRequestContent
      service types, date of service,                             (externalPatientId = the
      write_back                                                  scope's patient id)
    271 JSON ─▶ summarize_271() ─▶ EligibilitySummary   active yes/no, plan dates, copay,
                                                        coinsurance, deductible (total and
                                                        remaining), out-of-pocket remaining,
                                                        AAA rejection codes: no free text
    EligibilityResult (a WriteResult)   carries the summary; follow_up() is the write the
                                        pipeline writes to ``write_back.target``

A check returns its summary inside its result (:class:`EligibilityResult` subclasses
``WriteResult``); when the plan gave ``write_back``, :func:`follow_up` is the write the pipeline
then executes (``Connector.follow_ups``, run by ``workers.pipeline.write`` as a second round,
validated for the same patient like the plan's own writes).

Amounts are integer cents (Stedi sends dollars as decimal text: "5555.16" -> 555516); Nirvana's
connector fills the same summary from its own answer (``connectors.nirvana``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from connectors.base import Scope, Write, WriteResult

#: X12 eligibility/benefit codes (EB01) that say the coverage is active, and inactive
ACTIVE_CODES = {"1", "2", "3", "4", "5"}
INACTIVE_CODES = {"6", "7", "8"}
COPAY, COINSURANCE, DEDUCTIBLE, OUT_OF_POCKET = "B", "A", "C", "G"
#: time qualifiers (EB06): the plan period's amount, and what remains of it
PERIOD_QUALIFIERS = ("23", "22", "25", "32")  # calendar year, service year, contract, lifetime
REMAINING = "29"
_D8 = re.compile(r"^\d{8}$")


class WriteBack(BaseModel):
    """Where the plan wants the check's summary written: a row of ``table`` in ``target``."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    table: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")


class CheckEligibility(BaseModel):
    """Check the patient's policy ``key`` (the Healthie policy id) in real time with payer
    ``payer_id``; the result is a typed coverage summary (``write_back``: where it goes)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=36)
    key: str = Field(min_length=1, max_length=128)
    #: the payer id (Stedi: tradingPartnerServiceId; leading zeros kept: a string)
    payer_id: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9-]+$")
    member_id: str = Field(min_length=2, max_length=80, pattern=r"^[A-Za-z0-9- ]+$")
    # X12 NM1 limits (first name 35, last name 60), Stedi's request schema too
    first_name: str = Field(min_length=1, max_length=35)
    last_name: str = Field(min_length=1, max_length=60)
    date_of_birth: date
    #: X12 service type codes; Stedi advises one (30: health benefit plan coverage)
    service_type_codes: list[Annotated[str, Field(pattern=r"^[0-9A-Z]{1,2}$")]] = Field(
        default_factory=lambda: ["30"], min_length=1, max_length=5
    )
    date_of_service: date | None = None
    write_back: WriteBack | None = None


class EligibilitySummary(BaseModel):
    """What a check found, typed and free of free text (codes and amounts only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    #: True: active coverage, False: inactive, None: the answer did not say (see codes)
    active: bool | None
    plan_begin: date | None = None
    plan_end: date | None = None
    copay_cents: int | None = None
    coinsurance_percent: float | None = None
    deductible_cents: int | None = None
    deductible_remaining_cents: int | None = None
    out_of_pocket_remaining_cents: int | None = None
    #: the payer's AAA rejection codes (e.g. "72": invalid member id), no descriptions
    rejection_codes: tuple[str, ...] = ()

    def row(self, checked_at: datetime) -> dict[str, Any]:
        """The summary as typed row values (dates as ISO text, codes comma-joined)."""
        values = self.model_dump(exclude={"rejection_codes"})
        for name in ("plan_begin", "plan_end"):
            if values[name] is not None:
                values[name] = values[name].isoformat()
        values["rejection_codes"] = ",".join(self.rejection_codes)
        values["checked_at"] = checked_at.isoformat()
        return values


#: the columns :meth:`EligibilitySummary.row` fills, typed as table targets declare them
ROW_COLUMNS = {
    "source": "text",
    "active": "boolean",
    "plan_begin": "date",
    "plan_end": "date",
    "copay_cents": "integer",
    "coinsurance_percent": "number",
    "deductible_cents": "integer",
    "deductible_remaining_cents": "integer",
    "out_of_pocket_remaining_cents": "integer",
    "rejection_codes": "text",
    "checked_at": "timestamp",
}


@dataclass(frozen=True, slots=True)
class EligibilityResult(WriteResult):
    """A check's result: the base result plus the summary (None when the check failed)."""

    summary: EligibilitySummary | None = None


def follow_up(write: Write, result: EligibilityResult) -> tuple[str, str, dict[str, Any]] | None:
    """(target, operation, arguments) the pipeline would validate and execute to write the
    summary where the plan said (``write_back``); None when there is nothing to write back."""
    args = write.args
    back = getattr(args, "write_back", None)
    if not isinstance(back, WriteBack) or result.summary is None:
        return None
    values = result.summary.row(write.scope.synced_at)
    return (
        back.target,
        "upsert_row",
        {
            "table": back.table,
            "key": result.key,
            "patient_id": write.scope.patient_id,
            "values": values,
        },
    )


class RoutesEligibility:
    """Mixed into the eligibility connectors (Stedi, Nirvana): a check's summary is written
    where the plan's ``write_back`` says, as a follow-up write (``Connector.follow_ups``)."""

    def follow_ups(
        self, write: Write, result: WriteResult
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """The check's summary as a row of the plan's ``write_back`` target, if it asked."""
        if isinstance(result, EligibilityResult):
            routed = follow_up(write, result)
            return [routed] if routed is not None else []
        return []


def d8(day: date) -> str:
    """A date as X12's CCYYMMDD."""
    return day.strftime("%Y%m%d")


def eligibility_request(
    scope: Scope, args: CheckEligibility, provider: Mapping[str, str]
) -> dict[str, Any]:
    """Stedi's EligibilityCheckRequestContent for ``args``: the patient as the subscriber,
    ``externalPatientId`` the scope's patient id (Stedi correlates a person's checks by it)."""
    encounter: dict[str, Any] = {"serviceTypeCodes": list(args.service_type_codes)}
    if args.date_of_service is not None:
        encounter["dateOfService"] = d8(args.date_of_service)
    return {
        "tradingPartnerServiceId": args.payer_id,
        "externalPatientId": scope.patient_id,
        "provider": dict(provider),
        "subscriber": {
            "memberId": args.member_id,
            "firstName": args.first_name,
            "lastName": args.last_name,
            "dateOfBirth": d8(args.date_of_birth),
        },
        "encounter": encounter,
    }


def cents(amount: Any) -> int | None:
    """Dollars as decimal text (or a number) -> integer cents; None when unreadable."""
    if amount is None or isinstance(amount, bool):
        return None
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    return int((value * 100).to_integral_value())


def _day(text: Any) -> date | None:
    if not isinstance(text, str) or not _D8.match(text):
        return None
    try:
        return datetime.strptime(text, "%Y%m%d").date()  # noqa: DTZ007 - a calendar date
    except ValueError:
        return None


def _span(text: Any) -> tuple[date | None, date | None]:
    """A 271 date or date range ("20240101" or "20240101-20241231")."""
    if not isinstance(text, str):
        return None, None
    first, _, last = text.partition("-")
    return _day(first), _day(last) if last else None


def plan_dates(info: Mapping[str, Any]) -> tuple[date | None, date | None]:
    """The plan period from ``planDateInformation``: ``plan`` (a date or a range), else
    ``planBegin``/``planEnd``, else the eligibility dates."""
    begin, end = _span(info.get("plan"))
    if begin is None:
        begin, end = _day(info.get("planBegin")), _day(info.get("planEnd"))
    if begin is None:
        begin, end = _span(info.get("eligibility"))
        if begin is None:
            begin, end = _day(info.get("eligibilityBegin")), _day(info.get("eligibilityEnd"))
    return begin, end


def _rank(benefit: Mapping[str, Any], service_types: Sequence[str]) -> tuple[int, int, int]:
    """Lower is better: the requested service type, in network, the individual's level."""
    codes = benefit.get("serviceTypeCodes") or []
    network = {"Y": 0, "W": 1}.get(str(benefit.get("inPlanNetworkIndicatorCode")), 2)
    level = {"IND": 0, None: 1}.get(benefit.get("coverageLevelCode"), 2)
    return (0 if set(codes) & set(service_types) else 1, network, level)


def _pick(
    benefits: Iterable[Mapping[str, Any]],
    code: str,
    service_types: Sequence[str],
    qualifiers: Sequence[str] | None,
    field: str = "benefitAmount",
) -> Any:
    found = [
        b
        for b in benefits
        if b.get("code") == code
        and b.get(field) is not None
        and (qualifiers is None or b.get("timeQualifierCode") in qualifiers)
    ]
    if not found:
        return None
    return min(found, key=lambda b: _rank(b, service_types)).get(field)


def rejection_codes(body: Mapping[str, Any]) -> tuple[str, ...]:
    """Every AAA code the answer carries (top-level errors, subscriber, provider, payer)."""
    found: list[str] = []
    lists = [body.get("errors")]
    for part in ("subscriber", "provider", "payer"):
        section = body.get(part)
        if isinstance(section, Mapping):
            lists.append(section.get("aaaErrors"))
    for items in lists:
        for item in items if isinstance(items, list) else []:
            code = item.get("code") if isinstance(item, Mapping) else None
            if isinstance(code, str) and code.isalnum() and code not in found:
                found.append(code)
    return tuple(found)


def summarize_271(body: Mapping[str, Any], service_types: Sequence[str]) -> EligibilitySummary:
    """The summary of Stedi's EligibilityCheckResponseContent (see the module docstring)."""
    raw = body.get("benefitsInformation")
    benefits = [b for b in raw if isinstance(b, Mapping)] if isinstance(raw, list) else []
    codes = {b.get("code") for b in benefits}
    active = True if codes & ACTIVE_CODES else False if codes & INACTIVE_CODES else None
    dates = body.get("planDateInformation")
    begin, end = plan_dates(dates) if isinstance(dates, Mapping) else (None, None)
    percent = _pick(benefits, COINSURANCE, service_types, None, "benefitPercent")
    coinsurance = cents(percent)  # a fraction ("0.2") -> hundredths: the percentage
    return EligibilitySummary(
        source="stedi",
        active=active,
        plan_begin=begin,
        plan_end=end,
        copay_cents=cents(_pick(benefits, COPAY, service_types, None)),
        coinsurance_percent=None if coinsurance is None else float(coinsurance),
        deductible_cents=cents(_pick(benefits, DEDUCTIBLE, service_types, PERIOD_QUALIFIERS)),
        deductible_remaining_cents=cents(_pick(benefits, DEDUCTIBLE, service_types, (REMAINING,))),
        out_of_pocket_remaining_cents=cents(
            _pick(benefits, OUT_OF_POCKET, service_types, (REMAINING,))
        ),
        rejection_codes=rejection_codes(body),
    )
