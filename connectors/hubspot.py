"""HubSpot contacts: one contact per Healthie patient, keyed by a unique custom property that
holds the patient id, upserted in batches; a clinic's existing contacts are linked by email,
then phone, instead of duplicated (``connectors.matching``).

::

    write_upsert_contact (chunk of <= 100)      CRM v3 (api.hubapi.com, Bearer private-app token)
    ──────────────────────────────────────      ───────────────────────────────────────────────
    once per connector                          POST /crm/v3/properties/contacts/batch/read
                                                  the id property and the declared ones;
                                                POST .../batch/create for the missing ones
                                                  (declared type; the id property with
                                                  hasUniqueValue: true)
    matching, for patients not yet seen linked  POST /crm/v3/objects/contacts/search: one
      (``match`` option, email then phone)        request, filterGroups ORed: id property IN
                                                  patient ids, email IN emails, phone IN and
                                                  mobilephone IN E.164 numbers
    patients matched to an unlinked contact     POST /crm/v3/objects/contacts/batch/update by
                                                  HubSpot id: the id property and the values
    every other patient                         POST /crm/v3/objects/contacts/batch/upsert
                                                  {id: patient id, idProperty, properties}

The patient id is set from the write's scope, never by the plan (which may not name the id
property). Ambiguous matches (two contacts, or two patients for one contact) and an email held
by another patient's contact are not guessed: that patient's write fails with a TargetRejected
naming ``ambiguous_match`` or ``match_taken`` and the field path; :meth:`match_preview` gives the
same outcomes without writing (for the dry-run report). Phone matching finds numbers HubSpot
stores in E.164 (what its phone validation saves); a number typed in another format is not found.

HubSpot's published numbers (https://developers.hubspot.com/docs/developer-tooling/platform/
usage-guidelines and the private-apps page https://developers.hubspot.com/docs/apps/legacy-apps/
private-apps/overview): a private app may send 100 requests per 10 seconds on Free and Starter
(190 on Professional and Enterprise, 200 with the API limit increase) and an account 250,000
requests a day (625,000 Professional, 1,000,000 Enterprise). ``rate_limit`` is the lowest burst,
10/s, and is the credential's bucket (shared by every request of the token). The CRM search
endpoints have their own limit per token (4 per second in HubSpot's changelog "CRM Search API
Rate Limit Increase"; five in later guides): searches also take a 4/s bucket. A 429 carries
``policyName`` (TEN_SECONDLY_ROLLING, SECONDLY, DAILY) and is honoured by ``hubspot_api``; a
DAILY one waits an hour, so the queue, not a worker, waits it out. Batch endpoints take at most
100 inputs (the CRM objects guides), hence ``max_batch``; a search page at most 200 results and
5 filter groups. A 400 fails a whole batch: the base bisects it to the bad contact; a 207 names
the refused inputs, which fail alone. OAuth refresh tokens are not supported (ConfigurationError).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import httpx2
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.errors import ConfigurationError, PlanValidationError
from app.resilience.guard import Guard
from app.resilience.ratelimit import TokenBucket
from connectors import http, matching
from connectors.base import Connector, OperationSpec, Write, WriteResult
from connectors.hubspot_api import HubSpotApi, batch_outcome
from connectors.hubspot_values import (
    NAME,
    STANDARD,
    PropertyDecl,
    Value,
    is_email,
    is_name,
    problem,
    property_create,
    text,
)

MatchField = Literal["email", "phone"]
MATCH_FIELDS: tuple[MatchField, ...] = ("email", "phone")
SEARCH_RATE = 4.0  # CRM search requests per second per token (see the module docstring)


class UpsertContact(BaseModel):
    """Create or update the patient's HubSpot contact with ``properties`` (HubSpot internal
    names: the default contact properties or the target's declared ones); None clears one."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    properties: dict[str, Value] = Field(default_factory=dict, max_length=200)


class HubSpotOptions(BaseModel):
    """Where HubSpot is, which properties exist, and how existing contacts are matched."""

    model_config = ConfigDict(extra="forbid")

    #: the API's base URL (tests point it at a router in front of Prism)
    api_url: str = Field(default="https://api.hubapi.com", pattern=r"^https?://[^\s]+$")
    #: the unique contact property that holds the Healthie patient id
    id_property: str = Field(default="healthie_patient_id", pattern=NAME)
    #: custom properties by internal name, created on demand with their declared type
    properties: dict[str, PropertyDecl] = Field(default_factory=dict, max_length=500)
    #: the property group new properties join
    group_name: str = Field(default="contactinformation", pattern=r"^[a-z][a-z0-9_]{0,99}$")
    #: link existing contacts by these fields, in order (empty: never search, always upsert)
    match: list[MatchField] = Field(default_factory=lambda: list(MATCH_FIELDS))
    #: the region of phone numbers written without a country code (ISO 3166 alpha-2)
    default_region: str = Field(default="US", pattern=r"^[A-Z]{2}$")

    @model_validator(mode="after")
    def _names(self) -> HubSpotOptions:
        clash = (set(self.properties) & STANDARD) | ({self.id_property} & set(self.properties))
        if clash:
            raise ValueError(f"properties {sorted(clash)} are HubSpot's or the id property")
        bad = [n for n in self.properties if not is_name(n)]
        if bad:
            raise ValueError(f"property names must match {NAME}, not hs_: {sorted(bad)}")
        return self


class HubSpotConnector(Connector):
    """HubSpot contacts keyed by the Healthie patient id (see the module docstring)."""

    kind: ClassVar[str] = "hubspot"
    description: ClassVar[str] = (
        "HubSpot contacts keyed by a unique property holding the Healthie patient id; batch "
        "upserts of 100, properties created on demand, existing contacts linked by email/phone."
    )
    operations: ClassVar[dict[str, OperationSpec]] = {
        "upsert_contact": OperationSpec(
            "upsert_contact", UpsertContact, UpsertContact.__doc__ or "", key_field="patient_id"
        ),
    }
    options_model: ClassVar[type[BaseModel]] = HubSpotOptions
    credential_names: ClassVar[tuple[str, ...]] = ("access_token",)
    max_batch: ClassVar[int] = 100
    rate_limit: ClassVar[float | None] = 10.0  # 100 requests / 10 s, Free and Starter

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        if "refresh_token" in self.credentials:
            raise ConfigurationError(
                f"target {name!r} (hubspot): OAuth refresh tokens are not supported; use a "
                "private app's access token as credential access_token"
            )
        # Every HTTP request takes the credential's bucket (a chunk costs several); the
        # breaker stays on the guard.
        self.bucket: TokenBucket | None = self.guard.bucket
        self.guard = Guard(breaker=self.guard.breaker)
        self.search_bucket: TokenBucket | None = (
            TokenBucket(SEARCH_RATE) if self.bucket is not None else None
        )
        #: the HTTP client; None: built on first use (tests set one with their transport)
        self.client: httpx2.Client | None = None
        #: HTTP requests sent, by method and path template
        self.http_requests: dict[str, int] = {}
        self._ensured = False
        #: patients whose contact this connector wrote or found linked (no search next time)
        self._linked: set[str] = set()

    @property
    def hubspot(self) -> HubSpotOptions:
        """The options, typed."""
        assert isinstance(self.options, HubSpotOptions)
        return self.options

    # -- validation ----------------------------------------------------------------------
    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """Known property names only, not the id property, values of the declared types."""
        assert isinstance(options, HubSpotOptions)
        assert isinstance(args, UpsertContact)
        for name, value in args.properties.items():
            if not is_name(name):
                raise PlanValidationError(
                    f"{operation}.properties: names match {NAME} and do not start with hs_"
                )
            where = f"{operation}.properties.{name}"
            if name == options.id_property:
                raise PlanValidationError(f"{where}: set by the connector from the scope")
            decl = options.properties.get(name)
            if decl is None and name not in STANDARD:
                raise PlanValidationError(f"{where}: not declared in the target's properties")
            why = problem(decl.type if decl else "string", decl, value)
            if name == "email" and value and (not isinstance(value, str) or not is_email(value)):
                why = "not an email address"
            if why:
                raise PlanValidationError(f"{where}: {why}")
        return args

    # -- writing ------------------------------------------------------------------------
    def write_upsert_contact(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Ensure the properties, match the unseen patients, update the matched contacts by
        HubSpot id and upsert the others by patient id (see the module docstring)."""
        api = self.api()
        self._ensure(api)
        merged = _merged(batch)  # one input per patient: HubSpot refuses duplicate ids
        outcomes = self._match(api, merged) if self.hubspot.match else {}
        errors: dict[str, Any] = {}
        updates: dict[str, str] = {}
        for pid in merged:
            outcome = outcomes.get(pid)
            if outcome is None:
                continue
            refused = matching.refusal(outcome, _WHERE, "HubSpot upsert_contact")
            if refused is not None:
                errors[pid] = refused
            elif outcome.kind is matching.Kind.MATCHED and outcome.target_id:
                updates[pid] = outcome.target_id
        idp = self.hubspot.id_property
        if updates:
            by_contact = {cid: pid for pid, cid in updates.items()}
            response = api.batch(
                "/crm/v3/objects/contacts/batch/update",
                [
                    {"id": cid, "properties": self._values(pid, merged[pid])}
                    for pid, cid in updates.items()
                ],
            )
            done = batch_outcome(
                response, by_contact, lambda r: r.get("id"), "POST contacts/batch/update"
            )
            errors.update({by_contact[cid]: e for cid, e in done.items()})
        upserts = [pid for pid in merged if pid not in errors and pid not in updates]
        if upserts:
            response = api.batch(
                "/crm/v3/objects/contacts/batch/upsert",
                [
                    {"id": pid, "idProperty": idp, "properties": self._values(pid, merged[pid])}
                    for pid in upserts
                ],
            )
            errors.update(
                batch_outcome(
                    response,
                    upserts,
                    lambda r: (r.get("properties") or {}).get(idp),
                    "POST contacts/batch/upsert",
                )
            )
        self._linked.update(pid for pid in merged if errors.get(pid) is None)
        return [
            WriteResult(self.name, w.operation, self.key_of(w), False, err)
            if (err := errors.get(w.scope.patient_id)) is not None
            else self.ok(w)
            for w in batch
        ]

    def match_preview(self, writes: Sequence[Write]) -> dict[str, matching.Outcome]:
        """What matching would decide for each patient of ``writes``, reading only (search
        requests; properties are neither read nor created): for a dry run's report."""
        if not self.hubspot.match:
            return {}
        return self._match(self.api(), _merged(writes), remember=False)

    def _match(
        self, api: HubSpotApi, merged: Mapping[str, dict[str, Value]], *, remember: bool = True
    ) -> dict[str, matching.Outcome]:
        region = self.hubspot.default_region
        fields = self.hubspot.match
        probes = [
            matching.probe(
                pid,
                values.get("email") if "email" in fields else None,
                [values.get("phone"), values.get("mobilephone")] if "phone" in fields else [],
                region,
            )
            for pid, values in merged.items()
            if pid not in self._linked
        ]
        probes = [p for p in probes if p.email or p.phones]
        if not probes:
            return {}
        idp = self.hubspot.id_property
        emails = sorted({p.email for p in probes if p.email})
        phones = sorted({n for p in probes for n in p.phones})
        groups = [
            [{"propertyName": idp, "operator": "IN", "values": [p.patient_id for p in probes]}]
        ]
        if emails:
            groups.append([{"propertyName": "email", "operator": "IN", "values": emails}])
        for prop in ("phone", "mobilephone") if phones else ():
            groups.append([{"propertyName": prop, "operator": "IN", "values": phones}])
        found = api.search(groups, [idp, "email", "phone", "mobilephone"])
        candidates = [
            matching.candidate(
                str(c.get("id")),
                (c.get("properties") or {}).get(idp),
                [(c.get("properties") or {}).get("email")],
                [(c.get("properties") or {}).get(k) for k in ("phone", "mobilephone")],
                region,
            )
            for c in found
            if c.get("id") is not None
        ]
        outcomes = matching.match(probes, candidates)
        if remember:
            self._linked.update(
                pid for pid, o in outcomes.items() if o.kind is matching.Kind.LINKED
            )
        return outcomes

    def _values(self, pid: str, values: Mapping[str, Value]) -> dict[str, str]:
        """The properties as HubSpot's API takes them (strings), the id from the scope."""
        decls = self.hubspot.properties
        out = {k: text(decls[k].type if k in decls else "string", v) for k, v in values.items()}
        out[self.hubspot.id_property] = pid
        return out

    def _ensure(self, api: HubSpotApi) -> None:
        """The id property and the declared ones exist with their types (once)."""
        if self._ensured:
            return
        opts = self.hubspot
        wanted = {opts.id_property: PropertyDecl(label="Healthie patient id"), **opts.properties}
        existing = api.existing_properties(list(wanted))
        for name, prop in existing.items():
            declared = wanted[name].type
            if name == opts.id_property and not prop.get("hasUniqueValue"):
                raise ConfigurationError(
                    f"target {self.name!r} (hubspot): property {name!r} exists without unique "
                    "values; choose another id_property (uniqueness cannot be added later)"
                )
            if prop.get("type") not in (declared, None):
                raise ConfigurationError(
                    f"target {self.name!r} (hubspot): property {name!r} exists with type "
                    f"{prop.get('type')!r}, declared {declared!r}"
                )
        missing = [n for n in wanted if n not in existing]
        if missing:
            api.create_properties(
                [
                    property_create(n, wanted[n], n == opts.id_property, opts.group_name)
                    for n in missing
                ]
            )
        self._ensured = True

    def api(self) -> HubSpotApi:
        """The connector's paced, error-mapped HubSpot client (one credential; the reverse
        direction reads contacts through it)."""
        if self.client is None:
            token = self.credentials["access_token"].get_secret_value()
            self.client = http.client(
                headers={"authorization": f"Bearer {token}", "accept": "application/json"}
            )
        return HubSpotApi(
            self.client,
            self.hubspot.api_url,
            bucket=self.bucket,
            search_bucket=self.search_bucket,
            count=self._count,
        )

    def _count(self, what: str) -> None:
        self.http_requests[what] = self.http_requests.get(what, 0) + 1

    def close(self) -> None:
        """Close the HTTP client."""
        if self.client is not None:
            self.client.close()
            self.client = None


_WHERE = {"email": "upsert_contact.properties.email", "phone": "upsert_contact.properties.phone"}


def _merged(batch: Sequence[Write]) -> dict[str, dict[str, Value]]:
    """Each patient's properties, later writes of the chunk over earlier ones."""
    merged: dict[str, dict[str, Value]] = {}
    for write in batch:
        assert isinstance(write.args, UpsertContact)
        merged.setdefault(write.scope.patient_id, {}).update(write.args.properties)
    return merged
