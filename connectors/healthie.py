"""Healthie as a target: writes back into the entry's patient's own Healthie record, through the
engine's Healthie GraphQL client (so its requests share the API key's rate limit with reads).

::

    operation           requests (one write each)             Healthie mutation
    ─────────────────   ───────────────────────────────────   ──────────────────────────────
    update_client       1                                     updateClient (profile fields)
    update_metadata     read metadata, then 1 (0 if no-op)    updateClient(metadata): keys
                                                                merged, never dropped
    apply_tag           read tags (+ org tags), then 1        bulkApply, or createTag with
                        (0 if already applied)                  taggable_user_id when missing
    remove_tag          read tags, then 1 (0 if not applied)  removeAppliedTag
    create_task         1                                     createTask (client = patient)
    update_appointment  read its patients, then 1             updateAppointment (pm_status,
                                                                contact_type, location)

**The patient boundary.** Every operation names the entry's patient (``patient_id``, checked
by the platform before any I/O); the connector sends that id, never one from elsewhere: a task's
``client_id``, a tag's ``taggable_user_id`` and the updated user are the entry's patient. An
appointment is read first and written only when its owner or attendees are exactly that
patient: another patient's appointment, or a group appointment with other patients, is refused
(PlanValidationError) without writing. Tags are the organization's: applying or removing one
touches only the patient's application of it.

**Never clinical.** No operation reaches session notes, form answers, charting notes, documents
or diagnoses: the documents and argument names are checked when the class is defined
(``connectors.healthie_api.check_declarations``), the arguments are closed models
(``extra="forbid"``), and appointment ``notes`` and the client's ``quick_notes`` are not
offered. Task updates are not offered either: Healthie's published ``task`` query takes no id,
so a task's patient cannot be checked before touching it.

**Failures.** A mutation's ``messages`` (Healthie's HTTP 200 refusal) are TargetRejected naming
the refused fields, never Healthie's text (it may quote the value); a patient Healthie no
longer has is PatientNotFound; transport failures are the client's kinds (RateLimited,
UpstreamUnavailable, ConfigurationError). ``create_task`` is at least once: Healthie has no
lookup of a patient's tasks by key, so a retried create after a lost answer can add a second
task (every other operation is idempotent: a repeat changes nothing and reports unchanged).

**Which client.** ``use_integration_key = true`` (default): the integration's own Healthie
client (``IntegrationClients.healthie``), handed over by the runtime through
:meth:`HealthieConnector.for_runtime`; the same key, URL, version, shard and guard as the
reads. ``use_integration_key = false``: ``api_url`` and ``credentials.api_key`` (another
Healthie account, or a staging copy), with the guard of that key
(``Guards.for_credential(credential_id(api_key))``: the same bucket as any reads with it).

Healthie's limits (https://docs.gethealthie.com/guides/api-concepts/rate-limits): requests are
limited per account with no published number ("subject to dynamic adjustment", refused as the
GraphQL error ``TOO_MANY_REQUESTS``); queries are capped at complexity 2000. The engine paces a
key at ``healthie.rate_limit`` (250/s by default) and slows down on every refusal; each write is
one or two small requests, far below the complexity cap, so writes are not batched
(``max_batch = 1``: a refusal fails exactly its own write).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, SecretStr

from app.core.errors import ConfigurationError, PatientNotFound, PlanValidationError, TargetRejected
from app.healthie.client import HealthieClient
from app.resilience.guard import Guard, Guards, credential_id
from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Connector, OperationSpec, Write, WriteResult
from connectors.healthie_api import check_declarations, mutate, run
from connectors.healthie_args import (
    METADATA_MAX,
    CreateTaskArgs,
    HealthieOptions,
    TagArgs,
    UpdateAppointmentArgs,
    UpdateClientArgs,
    UpdateMetadataArgs,
)


def _spec(name: str, model: type[BaseModel], description: str, key: str = "key") -> OperationSpec:
    return OperationSpec(name, model, description, key_field=key)


class HealthieConnector(Connector):
    """Writes back into Healthie (see the module docstring)."""

    kind = "healthie"
    description = "Healthie itself: profile fields, metadata, tags, tasks, appointment fields"
    options_model = HealthieOptions
    credential_names = ("api_key", "shard_id")
    max_batch = 1
    rate_limit = 250.0
    operations: ClassVar[Mapping[str, OperationSpec]] = {
        s.name: s
        for s in (
            _spec("update_client", UpdateClientArgs, "set profile fields of the patient"),
            _spec("update_metadata", UpdateMetadataArgs, "set/remove keys of user metadata"),
            _spec("apply_tag", TagArgs, "apply a tag (by id, or by name: created if missing)"),
            _spec("remove_tag", TagArgs, "remove a tag from the patient"),
            _spec("create_task", CreateTaskArgs, "create a task about the patient"),
            _spec(
                "update_appointment",
                UpdateAppointmentArgs,
                "set pm_status, contact_type or location of the patient's own appointment",
                key="appointment_id",
            ),
        )
    }
    #: every document this connector sends (checked at class definition)
    documents: ClassVar[tuple[str, ...]] = (
        "write_update_client",
        "write_patient_metadata",
        "write_patient_tags",
        "write_org_tags",
        "write_apply_tags",
        "write_create_tag",
        "write_remove_tag",
        "write_create_task",
        "write_appointment_patients",
        "write_update_appointment",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_declarations(
            cls.__name__, cls.documents, (s.args_model for s in cls.operations.values())
        )

    def __init__(
        self,
        name: str,
        options: BaseModel | None = None,
        credentials: Mapping[str, SecretStr] | None = None,
        *,
        guard: Guard | None = None,
        retry: RetryPolicy | None = None,
        client: HealthieClient | None = None,
        http_transport: Any = None,
    ) -> None:
        # The client paces every request with the key's guard and retries each request;
        # the base's own wrapper must neither pace again nor retry the retried.
        super().__init__(
            name,
            options,
            credentials,
            guard=Guard(),
            retry=retry or RetryPolicy(max_attempts=1, backoff=Backoff(), max_wait=0.0),
        )
        opts = self.options
        assert isinstance(opts, HealthieOptions)
        self._owns_client = client is None
        if client is None:
            if opts.use_integration_key:
                raise ConfigurationError(
                    f"target {name!r} (healthie): use_integration_key = true needs the "
                    "integration's Healthie client (HealthieConnector.for_runtime); or set "
                    "use_integration_key = false with api_url and credentials.api_key"
                )
            key = self.credentials["api_key"].get_secret_value()
            shard = self.credentials.get("shard_id")
            client = HealthieClient(
                url=str(opts.api_url),
                api_key=key,
                api_version=opts.api_version,
                shard_id=shard.get_secret_value() if shard else None,
                http_transport=http_transport,
                rate_limit=opts.rate_limit,
                guard=guard,  # None: the client's own bucket at rate_limit
            )
        self.client = client

    @classmethod
    def required_credentials(cls, options: BaseModel) -> tuple[str, ...]:
        """``api_key`` only when the target does not use the integration's key."""
        assert isinstance(options, HealthieOptions)
        return () if options.use_integration_key else ("api_key",)

    @classmethod
    def for_runtime(
        cls,
        name: str,
        options: Mapping[str, Any] | None,
        credentials: Mapping[str, str],
        *,
        integration_client: Callable[[], HealthieClient],
        guards: Guards,
        staging: bool = False,
        http_transport: Any = None,
    ) -> HealthieConnector:
        """The connector as the runtime builds it: the integration's own client, or a client
        of the target's key paced by that key's guard in ``guards`` (shared with any reads of
        the same key). ``options`` are the live or (``staging``) the staging ones."""
        if options is None:
            raise ConfigurationError(
                f"target {name!r} declares no staging copy; add [targets.staging] options "
                "(use_integration_key = false, another api_url) or run the integration live"
            )
        parsed = cls.parse_options(name, options)
        assert isinstance(parsed, HealthieOptions)
        if parsed.use_integration_key:
            if staging:
                raise ConfigurationError(
                    f"target {name!r} (healthie): a staging copy cannot write with the "
                    "integration's key (that is the live source): set use_integration_key = "
                    "false and another api_url in [targets.staging]"
                )
            return cls(name, parsed, client=integration_client())
        key = credentials.get("api_key")
        if not key:
            raise ConfigurationError(
                f"target {name!r} (healthie) needs credentials ['api_key']: add them to "
                "[targets.credentials] as secret references"
            )
        guard = guards.for_credential(credential_id(key), rate=parsed.rate_limit, name="Healthie")
        secret = {k: SecretStr(v) for k, v in credentials.items()}
        return cls(name, parsed, secret, guard=guard, http_transport=http_transport)

    def close(self) -> None:
        """Close the client this connector built (never the integration's)."""
        if self._owns_client:
            self.client.close()

    def probe(self) -> str | None:
        """A read of the organization's tags (what apply_tag reads)."""
        run(self.client, "write_org_tags", {}, "-")
        return "Healthie: the key can read the organization's tags"

    # -- operations ---------------------------------------------------------------------
    def write_update_client(self, batch: Sequence[Write]) -> list[WriteResult]:
        """updateClient with the given fields."""
        (write,) = batch
        args = write.args
        assert isinstance(args, UpdateClientArgs)
        pid = write.scope.patient_id
        mutate(
            self.client,
            "write_update_client",
            "updateClient",
            "user",
            {"id": pid, **args.fields()},
            pid,
        )
        return [self.ok(write)]

    def write_update_metadata(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Read the metadata object, merge, write it back only when it changed."""
        (write,) = batch
        args = write.args
        assert isinstance(args, UpdateMetadataArgs)
        pid = write.scope.patient_id
        user = self._user("write_patient_metadata", pid)
        raw = user.get("metadata")
        try:
            current = json.loads(raw) if raw else {}
        except ValueError:
            current = None
        if not isinstance(current, dict):
            # Not an object: merging would destroy what is there, so nothing is written.
            raise TargetRejected(f"patient {pid}: Healthie metadata is not a JSON object")
        merged = {**current, **args.set}
        for k in args.remove:
            merged.pop(k, None)
        if merged == current:
            return [self.ok(write, changed=False)]
        text = json.dumps(merged, ensure_ascii=False, separators=(",", ":"))
        if len(text) > METADATA_MAX:
            raise TargetRejected(
                f"patient {pid}: merged metadata exceeds {METADATA_MAX} characters"
            )
        mutate(
            self.client,
            "write_update_client",
            "updateClient",
            "user",
            {"id": pid, "metadata": text},
            pid,
        )
        return [self.ok(write)]

    def write_apply_tag(self, batch: Sequence[Write]) -> list[WriteResult]:
        """bulkApply an existing tag, or createTag (applied at creation) for a new name."""
        (write,) = batch
        args = write.args
        assert isinstance(args, TagArgs)
        pid = write.scope.patient_id
        if _find(self._applied(pid), args) is not None:
            return [self.ok(write, changed=False)]
        org = run(self.client, "write_org_tags", {}, pid).get("tags") or []
        tag_id = _find(org, args)
        if tag_id is None and args.tag_id is not None:
            raise TargetRejected(f"patient {pid}: Healthie has no tag {args.tag_id}")
        if tag_id is None:
            if not self._opts.create_missing_tags:
                raise TargetRejected(
                    f"patient {pid}: no tag has that name and create_missing_tags is false"
                )
            created = {"name": args.name, "taggable_user_id": pid}
            mutate(self.client, "write_create_tag", "createTag", "tag", created, pid)
        else:
            applied = {"ids": [tag_id], "taggable_user_id": pid}
            mutate(self.client, "write_apply_tags", "bulkApply", "tags", applied, pid)
        return [self.ok(write)]

    def write_remove_tag(self, batch: Sequence[Write]) -> list[WriteResult]:
        """removeAppliedTag, when the tag is applied to the patient."""
        (write,) = batch
        args = write.args
        assert isinstance(args, TagArgs)
        pid = write.scope.patient_id
        tag_id = _find(self._applied(pid), args)
        if tag_id is None:
            return [self.ok(write, changed=False)]
        inp = {"id": tag_id, "taggable_user_id": pid}
        mutate(self.client, "write_remove_tag", "removeAppliedTag", "tag", inp, pid)
        return [self.ok(write)]

    def write_create_task(self, batch: Sequence[Write]) -> list[WriteResult]:
        """createTask whose client is the entry's patient."""
        (write,) = batch
        args = write.args
        assert isinstance(args, CreateTaskArgs)
        pid = write.scope.patient_id
        inp: dict[str, Any] = {"client_id": pid, "content": args.content, "priority": args.priority}
        if args.due_date is not None:
            inp["due_date"] = args.due_date.isoformat()
        task = mutate(self.client, "write_create_task", "createTask", "task", inp, pid)
        if str(task.get("client_id")) != pid:
            raise TargetRejected(
                f"patient {pid}: Healthie created task {task.get('id')} for another client"
            )
        return [self.ok(write)]

    def write_update_appointment(self, batch: Sequence[Write]) -> list[WriteResult]:
        """updateAppointment, after checking the appointment is the patient's alone."""
        (write,) = batch
        args = write.args
        assert isinstance(args, UpdateAppointmentArgs)
        pid, appt_id = write.scope.patient_id, args.appointment_id
        appt = run(self.client, "write_appointment_patients", {"id": appt_id}, pid).get(
            "appointment"
        )
        if not isinstance(appt, dict):
            raise TargetRejected(f"patient {pid}: Healthie has no appointment {appt_id}")
        people = [appt.get("user")] + list(appt.get("attendees") or [])
        ids = {str(p["id"]) for p in people if isinstance(p, dict) and p.get("id")}
        if ids != {pid}:
            raise PlanValidationError(
                f"appointment {appt_id} is not patient {pid}'s alone: refused without writing"
            )
        inp = {"id": appt_id, **args.fields()}
        mutate(
            self.client, "write_update_appointment", "updateAppointment", "appointment", inp, pid
        )
        return [self.ok(write)]

    # -- reads ----------------------------------------------------------------------------
    @property
    def _opts(self) -> HealthieOptions:
        assert isinstance(self.options, HealthieOptions)
        return self.options

    def _user(self, document: str, pid: str) -> dict[str, Any]:
        user = run(self.client, document, {"id": pid}, pid).get("user")
        if not isinstance(user, dict) or str(user.get("id")) != pid:
            raise PatientNotFound(f"Healthie has no patient {pid}")
        return user

    def _applied(self, pid: str) -> list[dict[str, Any]]:
        return list(self._user("write_patient_tags", pid).get("active_tags") or [])


def _find(tags: Sequence[Any], args: TagArgs) -> str | None:
    """The id of the tag ``args`` names among ``tags`` (names match case-insensitively; an
    exact match wins over a case-folded one, the lowest id among equals)."""
    if args.tag_id is not None:
        return args.tag_id if any(str(t.get("id")) == args.tag_id for t in tags) else None
    name = str(args.name)
    exact = [str(t["id"]) for t in tags if t.get("name") == name]
    folded = [
        str(t["id"]) for t in tags if str(t.get("name", "")).strip().casefold() == name.casefold()
    ]
    found = exact or folded
    return min(found, key=int) if found else None


check_declarations(
    HealthieConnector.__name__,
    HealthieConnector.documents,
    (s.args_model for s in HealthieConnector.operations.values()),
)
