"""Record matching for targets that have their own ids: link a patient to a record the target
already holds (made before the engine, by hand or another tool) instead of creating a duplicate.

::

    Probe (one per patient write)           Candidate (one per record the target returned)
    ──────────────────────────────           ─────────────────────────────────────────────
    patient_id                               target_id (the target's own id)
    email  (lower-cased, trimmed)            owner (the patient id the record is linked to,
    phones (E.164, via phonenumbers)           None when unlinked)
                                             emails, phones (normalized the same way)

    match(probes, candidates) -> {patient_id: Outcome}, in this order of rules:

    1. a record already linked to the patient        LINKED    (write to it as usual)
    2. unlinked records with the patient's email:    one -> MATCHED on email; two or more ->
                                                     AMBIGUOUS on email
       none unlinked, some linked to other patients  TAKEN on email (a target that keeps
                                                     emails unique would refuse a new record)
    3. the same with the patient's phones            MATCHED / AMBIGUOUS on phone; records
                                                     of other patients are ignored (a household
                                                     shares a phone, not a record)
    4. nothing                                       NEW       (the target creates a record)

A record two patients of the same batch would both claim is AMBIGUOUS for both: one record
cannot be linked to two patients, and choosing one would be a guess. AMBIGUOUS and TAKEN are
never guessed: :func:`refusal` turns them into a ``TargetRejected`` whose message names the
outcome (``ambiguous_match``, ``match_taken``), the field path and a count, never a value, so
the run records it per patient and the dry-run report can show it.

The connector does the I/O: it asks its target for the records carrying any probe's email or
phone (HubSpot: one search request per batch, see ``connectors.hubspot_api``), builds the
candidates with :func:`candidate`, and links each MATCHED record by setting its patient id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import phonenumbers

from app.core.errors import TargetRejected


class Kind(StrEnum):
    """What matching found for one patient."""

    LINKED = "linked"  # a record already carries the patient's id
    MATCHED = "matched"  # one unlinked record shares the email (or phone): link it
    NEW = "new"  # nothing shares them: the target creates a record
    AMBIGUOUS = "ambiguous_match"  # two or more records (or patients) could be the one
    TAKEN = "match_taken"  # the only record sharing them is linked to another patient


@dataclass(frozen=True, slots=True)
class Probe:
    """What one patient's write offers for matching (normalized)."""

    patient_id: str
    email: str | None = None
    phones: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Candidate:
    """One record the target holds (normalized)."""

    target_id: str
    owner: str | None = None
    emails: frozenset[str] = field(default_factory=frozenset)
    phones: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Matching's verdict for one patient; ``field`` is "email" or "phone" when it decided on
    one, ``count`` how many records (or claims) made it ambiguous."""

    kind: Kind
    target_id: str | None = None
    field: str | None = None
    count: int = 0


def normalize_email(value: object) -> str | None:
    """The address lower-cased and trimmed (how both sides compare), or None."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    return text if "@" in text else None


def normalize_phone(value: object, region: str = "US") -> str | None:
    """The number in E.164 (``+14155552671``), or None when it is not a valid number.
    ``region`` reads numbers written without a country code."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def probe(
    patient_id: str, email: object = None, phones: Iterable[object] = (), region: str = "US"
) -> Probe:
    """A probe from raw values (unusable values are dropped)."""
    normalized = [p for p in (normalize_phone(v, region) for v in phones) if p is not None]
    return Probe(patient_id, normalize_email(email), tuple(dict.fromkeys(normalized)))


def candidate(
    target_id: str,
    owner: object,
    emails: Iterable[object] = (),
    phones: Iterable[object] = (),
    region: str = "US",
) -> Candidate:
    """A candidate from a record's raw values (an empty owner means unlinked)."""
    return Candidate(
        target_id,
        owner if isinstance(owner, str) and owner else None,
        frozenset(e for e in (normalize_email(v) for v in emails) if e is not None),
        frozenset(p for p in (normalize_phone(v, region) for v in phones) if p is not None),
    )


def match(probes: Sequence[Probe], candidates: Iterable[Candidate]) -> dict[str, Outcome]:
    """Each probe's outcome (see the module docstring for the rules)."""
    pool = list(candidates)
    found = {p.patient_id: _one(p, pool) for p in probes}
    # One record claimed by two patients of the batch: neither gets it.
    claims: dict[str, list[str]] = {}
    for pid, outcome in found.items():
        if outcome.kind is Kind.MATCHED and outcome.target_id is not None:
            claims.setdefault(outcome.target_id, []).append(pid)
    for pids in claims.values():
        if len(pids) > 1:
            for pid in pids:
                found[pid] = Outcome(Kind.AMBIGUOUS, None, found[pid].field, len(pids))
    return found


def _one(p: Probe, pool: Sequence[Candidate]) -> Outcome:
    mine = [c for c in pool if c.owner == p.patient_id]
    if mine:
        return Outcome(Kind.LINKED, mine[0].target_id)
    rules: list[tuple[str, set[str]]] = [
        ("email", {p.email} if p.email else set()),
        ("phone", set(p.phones)),
    ]
    for name, values in rules:
        if not values:
            continue
        hits = [c for c in pool if values & (c.emails if name == "email" else c.phones)]
        free = [c for c in hits if c.owner is None]
        if len(free) == 1:
            return Outcome(Kind.MATCHED, free[0].target_id, name)
        if len(free) > 1:
            return Outcome(Kind.AMBIGUOUS, None, name, len(free))
        if hits and name == "email":
            return Outcome(Kind.TAKEN, None, name, len(hits))
    return Outcome(Kind.NEW)


def refusal(outcome: Outcome, where: Mapping[str, str], what: str) -> TargetRejected | None:
    """The per-patient error for an outcome that must not be guessed (None otherwise).
    ``where`` maps "email"/"phone" to the argument's field path, ``what`` names the target
    and operation (``"HubSpot upsert_contact"``)."""
    if outcome.kind not in (Kind.AMBIGUOUS, Kind.TAKEN):
        return None
    path = where.get(outcome.field or "", outcome.field or "(unknown)")
    if outcome.kind is Kind.AMBIGUOUS:
        return TargetRejected(
            f"{what}: ambiguous_match on {path}: {outcome.count} records or patients share it; "
            "not linked, nothing written (link one record by hand)"
        )
    return TargetRejected(
        f"{what}: match_taken on {path}: the record sharing it is linked to another patient; "
        "nothing written"
    )
