"""Mutation resolvers: GraphQL inputs in, :class:`~sandbox.core.Sandbox` method calls out.

Each resolver only translates: the change itself (validation, webhooks) lives in the
sandbox method it calls, so a direct Python call and a mutation behave identically. Refused
changes come back the way Healthie returns them: HTTP 200, the payload's object null and
``messages`` listing ``{field, message}``, never as GraphQL ``errors``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from graphql import GraphQLResolveInfo

from sandbox.changes import FieldMessage, ValidationFailed
from sandbox.resolvers import Resolver, sandbox_of

if TYPE_CHECKING:
    from sandbox.core import Sandbox

Payload = dict[str, Any]


def _messages(exc: ValidationFailed) -> list[dict[str, str | None]]:
    return [{"field": m.field, "message": m.message} for m in exc.messages]


def _guard(key: str, run: Callable[[], Any]) -> Payload:
    try:
        return {key: run(), "messages": []}
    except ValidationFailed as exc:
        return {key: None, "messages": _messages(exc)}


def _input(kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(kwargs.get("input") or {})


def update_client(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    sb, data = sandbox_of(info), _input(kw)
    user_id = str(data.pop("id"))

    def run() -> Any:
        sb.update_client(user_id, **data)
        return sb.org.patient(user_id)

    return _guard("user", run)


def create_tag(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    sb, data = sandbox_of(info), _input(kw)

    def run() -> Any:
        tag = sb.create_tag(data.get("name") or "")
        if data.get("taggable_user_id"):
            sb.apply_tag(str(data["taggable_user_id"]), tag.id)
        return tag

    return _guard("tag", run)


def bulk_apply(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    sb, data = sandbox_of(info), _input(kw)
    ids = [str(i) for i in data.get("ids") or []]

    def run() -> Any:
        sb.bulk_apply(str(data["taggable_user_id"]), ids)
        return [sb.org.tags[i] for i in ids]

    return _guard("tags", run)


def remove_applied_tag(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    sb, data = sandbox_of(info), _input(kw)
    tag_id, user_id = str(data.get("id")), data.get("taggable_user_id")

    def run() -> Any:
        if user_id is None:
            raise ValidationFailed([FieldMessage("taggable_user_id", "can't be blank")])
        sb.remove_applied_tag(str(user_id), tag_id)
        return sb.org.tags.get(tag_id)

    return _guard("tag", run)


def create_task(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    sb, data = sandbox_of(info), _input(kw)
    content, client = data.pop("content", None), data.pop("client_id", None)
    return _guard("task", lambda: sb.create_task(content=content, client_id=client, **data))


def _appointment_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Map Healthie's input names onto the sandbox's (provider = ``other_party_id``)."""
    if data.get("datetime") and not data.get("date"):
        data["date"] = data["datetime"]
    data.pop("datetime", None)
    if data.get("other_party_id") or data.get("providers"):
        data["provider_id"] = str(data.get("other_party_id") or data["providers"]).split(",")[0]
    data.pop("other_party_id", None)
    data.pop("providers", None)
    return data


def create_appointment(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    sb, data = sandbox_of(info), _input(kw)
    suppress = bool(data.pop("suppress_webhook_notifications", False))
    attendees = data.pop("attendee_ids", None) or []
    user_id = data.pop("user_id", None) or (attendees[0] if attendees else None)

    def run() -> Any:
        if user_id is None:
            raise ValidationFailed([FieldMessage("user_id", "can't be blank")])
        change = sb.create_appointment(
            str(user_id), suppress_webhooks=suppress, **_appointment_fields(data)
        )
        return sb.org.appointment(change.subject_id)

    return _guard("appointment", run)


def update_appointment(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    sb, data = sandbox_of(info), _input(kw)
    suppress = bool(data.pop("suppress_webhook_notifications", False))
    appt_id = str(data.pop("id", None))

    def run() -> Any:
        sb.update_appointment(appt_id, suppress_webhooks=suppress, **_appointment_fields(data))
        return sb.org.appointment(appt_id)

    return _guard("appointment", run)


def delete_appointment(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    sb, data = sandbox_of(info), _input(kw)
    appt_id = str(data.get("id"))
    suppress = bool(data.get("suppress_webhook_notifications"))

    def run() -> Any:
        sb.delete_appointment(appt_id, suppress_webhooks=suppress)
        return sb.org.appointment(appt_id)

    return _guard("appointment", run)


def _event_types(data: dict[str, Any]) -> list[str] | None:
    events = [e["event_type"] for e in data.get("webhook_events") or [] if e.get("event_type")]
    if data.get("event_type"):
        events.insert(0, data["event_type"])
    return list(dict.fromkeys(events)) or None


def create_webhook(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    sb, data = sandbox_of(info), _input(kw)

    def run() -> Any:
        url = data.get("url") or ""
        if not url.startswith(("http://", "https://")):
            raise ValidationFailed([FieldMessage("url", "Url is invalid")])
        hook = sb.register_webhook(
            url, _event_types(data), should_retry=bool(data.get("should_retry"))
        )
        hook.is_enabled = data.get("is_enabled", True) is not False
        return hook

    return _guard("webhook", run)


def _hook(info: GraphQLResolveInfo[Sandbox], webhook_id: Any) -> Any:
    hook = sandbox_of(info).emitter.webhooks.get(str(webhook_id))
    if hook is None:
        raise ValidationFailed([FieldMessage("id", "Webhook not found")])
    return hook


def update_webhook(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    data = _input(kw)

    def run() -> Any:
        hook = _hook(info, data.get("id"))
        with sandbox_of(info).lock:
            for key in ("url", "is_enabled", "should_retry"):
                if data.get(key) is not None:
                    setattr(hook, key, data[key])
            if data.get("webhook_events") is not None or data.get("event_type") is not None:
                events = _event_types(data)
                hook.event_types = frozenset(events) if events else None
        return hook

    return _guard("webhook", run)


def delete_webhook(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    data = _input(kw)

    def run() -> Any:
        hook = _hook(info, data.get("id"))
        sandbox_of(info).emitter.webhooks.pop(hook.id, None)
        return hook

    return _guard("webhook", run)


def expire_webhook_signature(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    data = _input(kw)
    return _guard(
        "webhook", lambda: sandbox_of(info).expire_webhook_signature(_hook(info, data.get("id")).id)
    )


def send_test_webhook(_: None, info: GraphQLResolveInfo[Sandbox], **kw: Any) -> Payload:
    data = _input(kw)
    try:
        sent = sandbox_of(info).send_test_webhook(_hook(info, data.get("id")).id)
    except ValidationFailed as exc:
        return {"sent": False, "messages": _messages(exc)}
    return {"sent": bool(sent) and not sent[0].failed, "messages": []}


MUTATION_RESOLVERS: dict[tuple[str, str], Resolver] = {
    ("Mutation", "updateClient"): update_client,
    ("Mutation", "createTag"): create_tag,
    ("Mutation", "bulkApply"): bulk_apply,
    ("Mutation", "removeAppliedTag"): remove_applied_tag,
    ("Mutation", "createTask"): create_task,
    ("Mutation", "createAppointment"): create_appointment,
    ("Mutation", "updateAppointment"): update_appointment,
    ("Mutation", "deleteAppointment"): delete_appointment,
    ("Mutation", "createWebhook"): create_webhook,
    ("Mutation", "updateWebhook"): update_webhook,
    ("Mutation", "deleteWebhook"): delete_webhook,
    ("Mutation", "expireWebhookSignature"): expire_webhook_signature,
    ("Mutation", "sendTestWebhook"): send_test_webhook,
}
