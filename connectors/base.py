"""The connector platform: a connector declares typed operations and writes batches of them;
this base does everything around that (Singer's BatchSink shape).

::

    Connector subclass declares          the base provides
    ─────────────────────────            ──────────────────────────────────────────────────
    kind, description                    from_config: options validated (one-line errors),
    options_model (pydantic)               credentials required and held as SecretStr
    credential_names                     validate: arguments parsed, the patient boundary
    operations: name -> OperationSpec    execute_batch: group by operation, chunk by
    write_<operation>(batch) per op        max_batch, retry and pace through the shared
    max_batch, rate_limit                  resilience layer (app.resilience), isolate a
                                           failed row by bisecting its chunk

Declarations are checked when the class is defined: a concrete connector (one that sets
``kind``) whose declared operation has no ``write_<name>`` method fails at import.

Every write carries its :class:`Scope` (integration, patient, run, time): a connector keys what
it writes by the scope and the Healthie object id in the arguments, so a plan for patient A can
never create or overwrite a record keyed for patient B, nor one integration another's.

Declarations are usable without a connection: :class:`TargetSchema` (a target's name, its
connector's declarations and its validated options) is what the agent and the plan validator
see, so asking for an agent never opens a target.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from app.core.errors import (
    ConfigurationError,
    FatalError,
    HealthieSyncError,
    PlanValidationError,
    UpstreamUnavailable,
)
from app.observability import metrics
from app.resilience.guard import Guard, Guards
from app.resilience.retry import Backoff, RetryPolicy


@dataclass(frozen=True)
class OperationSpec:
    """One operation a connector offers."""

    name: str
    args_model: type[BaseModel]
    description: str
    #: argument that must equal the entry's patient id, so a plan can only touch that patient
    patient_field: str = "patient_id"
    #: the argument whose value (with the scope) identifies the record: the idempotency key
    key_field: str = "key"


class NoOptions(BaseModel):
    """A connector that takes no options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose write this is: every record a connector writes is keyed by it."""

    integration_id: str
    patient_id: str
    run_id: str
    synced_at: datetime


@dataclass(frozen=True, slots=True)
class Write:
    """One validated operation, ready for a batch."""

    scope: Scope
    operation: str
    args: BaseModel
    #: the target it is for (the write stage groups by it; a connector need not read it)
    target: str = ""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one operation did; ``error`` set means it failed (its patient's work fails)."""

    target: str
    operation: str
    key: str
    changed: bool = True
    error: HealthieSyncError | None = None


class Declared(Protocol):
    """What the agent and the plan validator need of a target: its declarations only."""

    @property
    def name(self) -> str:
        """The target's name in the integration config."""
        ...

    @property
    def kind(self) -> str:
        """The connector's config name."""
        ...

    @property
    def operations(self) -> Mapping[str, OperationSpec]:
        """Its operations by name."""
        ...

    def validate(self, operation: str, args: Mapping[str, Any], patient_id: str) -> BaseModel:
        """Parsed arguments, or PlanValidationError."""
        ...


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def safe_name(name: object) -> str:
    """``name`` when it reads as a name (a field, table, target or operation), else ``<?>``.

    Error texts name what a plan or a model answer chose (an argument key, a target); a name
    that is not identifier-like may be a value put where a name goes, and is not repeated."""
    return name if isinstance(name, str) and _NAME.fullmatch(name) else "<?>"


def error_location(loc: Sequence[int | str]) -> str:
    """A pydantic error's location as a field path (``values.first_name``, ``operations.0``),
    each part a position or a :func:`safe_name`."""
    return ".".join(str(p) if isinstance(p, int) else safe_name(p) for p in loc) or "(root)"


def _fields(exc: ValidationError) -> str:
    # Field paths only: pydantic's messages (and str(exc), which adds ``input_value=``) can
    # quote the input, which may be a patient value.
    return ", ".join(error_location(e["loc"]) for e in exc.errors(include_input=False))


def options_error(target: str, kind: str, exc: ValidationError) -> ConfigurationError:
    """A one-line configuration error naming the bad option fields (never their values)."""
    problems = "; ".join(
        f"options.{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
        for e in exc.errors(include_input=False)
    )
    return ConfigurationError(f"target {target!r} ({kind}): {problems}")


class Connector:
    """Base class of every target connector (see the module docstring)."""

    #: the config name (``connector = "sqlite"``); set on concrete classes only
    kind: ClassVar[str]
    description: ClassVar[str] = ""
    operations: ClassVar[Mapping[str, OperationSpec]]
    options_model: ClassVar[type[BaseModel]] = NoOptions
    #: credentials the target needs (``[targets.credentials]`` name -> secret reference)
    credential_names: ClassVar[tuple[str, ...]] = ()
    #: operations per target request (a multi-row statement, a load, a bulk call)
    max_batch: ClassVar[int] = 500
    #: the vendor's published request rate per credential, requests/s (None: unpaced)
    rate_limit: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            return  # an intermediate base: checked in its concrete subclasses
        declared = getattr(cls, "operations", None)
        if not declared:
            raise TypeError(f"connector {cls.__name__} ({cls.kind}) declares no operations")
        missing = [n for n in declared if not callable(getattr(cls, f"write_{n}", None))]
        if missing:
            raise TypeError(
                f"connector {cls.__name__} ({cls.kind}) declares operations without an "
                f"implementation: {', '.join(f'write_{n}' for n in missing)}"
            )

    def __init__(
        self,
        name: str,
        options: BaseModel | None = None,
        credentials: Mapping[str, SecretStr] | None = None,
        *,
        guard: Guard | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.name = name
        self.options = options if options is not None else self.options_model()
        self.credentials: Mapping[str, SecretStr] = dict(credentials or {})
        self.guard = guard or Guard()
        self.retry = retry or RetryPolicy(
            max_attempts=3, backoff=Backoff(initial=0.2, cap=5.0), max_wait=30.0
        )
        #: target requests sent (a metric: what 1,000 patients cost)
        self.requests = 0

    # -- configuration ------------------------------------------------------------------
    @classmethod
    def parse_options(cls, target: str, options: Mapping[str, Any]) -> BaseModel:
        """The validated options, or a one-line ConfigurationError naming the fields."""
        try:
            return cls.options_model.model_validate(dict(options))
        except ValidationError as exc:
            raise options_error(target, cls.kind, exc) from None

    @classmethod
    def from_config(
        cls,
        name: str,
        options: Mapping[str, Any],
        credentials: Mapping[str, str],
        *,
        guard: Guard | None = None,
    ) -> Connector:
        """Build from a target's config: options validated, every credential present."""
        parsed = cls.parse_options(name, options)
        missing = [c for c in cls.required_credentials(parsed) if not credentials.get(c)]
        if missing:
            raise ConfigurationError(
                f"target {name!r} ({cls.kind}) needs credentials {missing}: add them to "
                "[targets.credentials] as secret references"
            )
        secret = {k: SecretStr(v) for k, v in credentials.items()}
        return cls(name, parsed, secret, guard=guard)

    @classmethod
    def for_runtime(
        cls,
        name: str,
        options: Mapping[str, Any] | None,
        credentials: Mapping[str, str],
        *,
        integration_client: Callable[[], Any],
        guards: Guards,
        staging: bool = False,
        http_transport: Any = None,
    ) -> Connector | None:
        """A connector that needs the runtime's parts (its integration's Healthie client, the
        guards by credential) builds itself here; None (the default): the runtime builds it
        from its options and credentials (``from_config``)."""
        return None

    @classmethod
    def required_credentials(cls, options: BaseModel) -> tuple[str, ...]:
        """The credentials a target with these options needs (all declared ones, unless a
        connector knows better, e.g. a local file target needs no S3 keys)."""
        return cls.credential_names

    @classmethod
    def schema(cls, name: str, options: BaseModel | None = None) -> TargetSchema:
        """The declarations of a target named ``name`` using this connector."""
        return TargetSchema(name, cls, options if options is not None else cls.options_model())

    # -- validation ----------------------------------------------------------------------
    def validate(self, operation: str, args: Mapping[str, Any], patient_id: str) -> BaseModel:
        """See :meth:`TargetSchema.validate`."""
        return self.schema(self.name, self.options).validate(operation, args, patient_id)

    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """Connector-specific checks of parsed arguments against the options (declared
        tables, value sizes); returns the arguments to write. Raise PlanValidationError."""
        return args

    # -- execution -----------------------------------------------------------------------
    def execute_batch(self, writes: Sequence[Write]) -> list[WriteResult]:
        """Execute validated writes: grouped by operation (in order of first appearance),
        in chunks of ``max_batch``, each chunk one call of ``write_<operation>``. Returns one
        result per write, in order; a failure is that write's result, never an exception
        (except a dying process). Writes, errors, retries and the write stage's latency are
        recorded per integration and target (``app.observability.metrics``)."""
        results: list[WriteResult | None] = [None] * len(writes)
        groups: dict[str, list[int]] = {}
        for i, w in enumerate(writes):
            groups.setdefault(w.operation, []).append(i)
        integration = writes[0].scope.integration_id if writes else metrics.UNKNOWN
        with metrics.stage_timer(integration, "write"):
            for operation, indexes in groups.items():
                for start in range(0, len(indexes), self.max_batch):
                    chunk = indexes[start : start + self.max_batch]
                    self._run_chunk(operation, chunk, writes, results)
        done = [
            r if r is not None else self._failed(writes[i], _lost()) for i, r in enumerate(results)
        ]
        for write, result in zip(writes, done, strict=True):
            kind = result.error.kind if result.error is not None else None
            metrics.record_target_write(
                write.scope.integration_id, self.name, self.kind, ok=kind is None, kind=kind
            )
        return done

    def _retry_for(self, integration: str) -> RetryPolicy:
        """The retry policy, telling the metrics of each retry (and of rate-limit answers)."""
        if not metrics.is_configured() or self.retry.on_retry is not None:
            return self.retry

        def counted(exc: BaseException, _wait: float) -> None:
            kind = exc.kind if isinstance(exc, HealthieSyncError) else type(exc).__name__
            metrics.record_retry(integration, self.name, kind)
            if kind == "rate_limited":
                metrics.record_rate_limited(integration, self.name)

        return replace(self.retry, on_retry=counted)

    def _run_chunk(
        self,
        operation: str,
        chunk: list[int],
        writes: Sequence[Write],
        results: list[WriteResult | None],
    ) -> None:
        batch = [writes[i] for i in chunk]
        method: Callable[[Sequence[Write]], Sequence[WriteResult]] = getattr(
            self, f"write_{operation}"
        )

        def send() -> Sequence[WriteResult]:
            self.requests += 1
            return method(batch)

        retry = self._retry_for(batch[0].scope.integration_id)
        try:
            out = list(retry.call(lambda: self.guard.call(send)))
        except FatalError as exc:
            if len(chunk) == 1:
                results[chunk[0]] = self._failed(batch[0], exc)
                return
            # One bad row must fail only its own patient: split until it is alone.
            half = len(chunk) // 2
            self._run_chunk(operation, chunk[:half], writes, results)
            self._run_chunk(operation, chunk[half:], writes, results)
            return
        except HealthieSyncError as exc:  # retriable or configuration: the whole chunk
            for i in chunk:
                results[i] = self._failed(writes[i], exc)
            return
        if len(out) != len(batch):
            raise AssertionError(
                f"{type(self).__name__}.write_{operation} returned {len(out)} results "
                f"for {len(batch)} writes"
            )
        for i, result in zip(chunk, out, strict=True):
            results[i] = result

    def _failed(self, write: Write, error: HealthieSyncError) -> WriteResult:
        return WriteResult(self.name, write.operation, self.key_of(write), False, error)

    def key_of(self, write: Write) -> str:
        """The record key of ``write`` (its Healthie object id)."""
        spec = self.operations[write.operation]
        return str(getattr(write.args, spec.key_field, "") or write.scope.patient_id)

    def ok(self, write: Write, *, changed: bool = True) -> WriteResult:
        """A success result for ``write``."""
        return WriteResult(self.name, write.operation, self.key_of(write), changed)

    def prune(self, scope: Scope, keep: Mapping[str, set[str]]) -> None:
        """Mirror mode: delete the scope's records whose keys are not in ``keep`` (per table
        or collection; a table absent from ``keep`` loses all the patient's records). Only
        connectors that offer mirror mode implement it."""
        raise ConfigurationError(f"target {self.name!r} ({self.kind}) has no mirror mode")

    def mirror(self, scope: Scope, keep: Mapping[str, set[str]]) -> HealthieSyncError | None:
        """:meth:`prune` through the resilience layer; the error instead of raising it."""
        try:
            self.retry.call(lambda: self.guard.call(lambda: self.prune(scope, keep)))
        except HealthieSyncError as exc:
            return exc
        return None

    @property
    def mirrors(self) -> bool:
        """True when this target deletes records of items gone from the entry."""
        return getattr(self.options, "mode", "upsert") == "mirror"

    def follow_ups(
        self, write: Write, result: WriteResult
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Writes the pipeline executes after ``write`` succeeded, as (target, operation,
        arguments): a check whose answer the plan routes to another target (an eligibility
        summary into a warehouse row). Validated like the plan's own writes, for the same
        patient. None by default."""
        return []

    def probe(self) -> str | None:
        """A harmless read proving the target answers with these options and credentials
        (``healthie-sync doctor``); returns what was checked, or None when the connector
        offers no such read. Raises the error kind a write would meet (never writes)."""
        return None

    def close(self) -> None:
        """Release connections (nothing to release by default)."""


def _lost() -> HealthieSyncError:
    return UpstreamUnavailable("the connector returned no result for this write")


@dataclass(frozen=True)
class TargetSchema:
    """A configured target's declarations and options, with no connection behind them."""

    name: str
    connector: type[Connector]
    options: BaseModel = field(default_factory=NoOptions)

    @property
    def kind(self) -> str:
        """The connector's config name."""
        return self.connector.kind

    @property
    def operations(self) -> Mapping[str, OperationSpec]:
        """Its operations by name."""
        return self.connector.operations

    def validate(self, operation: str, args: Mapping[str, Any], patient_id: str) -> BaseModel:
        """Parsed arguments for ``operation``; PlanValidationError when anything is off.

        The patient check is the security boundary: a plan for patient A can never write B.
        Nothing here touches the target.
        """
        spec = self.operations.get(operation)
        if spec is None:
            raise PlanValidationError(
                f"target {self.name!r} ({self.kind}) has no operation {safe_name(operation)!r}; "
                f"known: {sorted(self.operations)}"
            )
        try:
            # a plan's arguments are a dict already (pydantic copies what it keeps)
            parsed = spec.args_model.model_validate(args if type(args) is dict else dict(args))
        except ValidationError as exc:
            raise PlanValidationError(
                f"invalid arguments for {self.name}.{operation}: {_fields(exc)}"
            ) from None
        if str(getattr(parsed, spec.patient_field)) != patient_id:
            raise PlanValidationError(
                f"{self.name}.{operation} names another patient than the entry's"
            )
        return self.connector.check_args(self.options, operation, parsed)
