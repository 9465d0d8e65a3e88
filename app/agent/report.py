"""The dry-run (staging) report: what each patient's entry would have produced, and why.

One section per patient: the entry as the agent saw it (field names and ids, not values), what
changed since the last run (paths only), the decision (write / skip / refused with the reason),
and each operation with its target, operation, table and key. Argument values are shown only
with ``show_values=True`` (for reviewers entitled to see PHI); otherwise they are replaced by
their type. Keys that look like credentials are always redacted. Rendered as Markdown for people
and JSON for tools; both come from the same ``build_report`` dictionary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.agent.prompt import entry_changes, minimize
from app.core.models import Entry, WriteOperation, WritePlan
from app.state.base import PatientState

SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[_-]?key|authori[sz]ation|credential", re.I)
ID_KEYS = frozenset({"id", "key", "table", "patient_id"})


@dataclass(frozen=True)
class ReportItem:
    """One processed entry of a dry run: its plan, or the reason it was refused."""

    entry: Entry
    previous: PatientState | None
    plan: WritePlan | None
    error: str | None = None


def _is_id_key(key: str) -> bool:
    return key in ID_KEYS or key.endswith("_id")


def redact(value: Any, *, show_values: bool, key: str = "") -> Any:
    """``value`` with credentials removed and, unless ``show_values``, non-id values replaced
    by their type name (``<str>``)."""
    if key and SECRET_KEY.search(key):
        return "<redacted>"
    if isinstance(value, Mapping):
        return {k: redact(v, show_values=show_values, key=str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, show_values=show_values, key=key) for v in value]
    if show_values or value is None or (key and _is_id_key(key)):
        return value
    return f"<{type(value).__name__}>"


def describe_entry(entry: Entry, visible_fields: Sequence[str] | None) -> dict[str, Any]:
    """Field names the agent saw (non-empty ones) and the ids of listed objects."""
    seen = minimize(entry.data, visible_fields)
    ids = {
        name: [str(i["id"]) for i in value if isinstance(i, Mapping) and "id" in i]
        for name, value in sorted(seen.items())
        if isinstance(value, list) and value
    }
    return {
        "patient_id": entry.patient_id,
        "content_hash": entry.content_hash,
        "fields": sorted(k for k, v in seen.items() if v not in (None, "", [], {})),
        "list_ids": {k: v for k, v in ids.items() if v},
    }


def describe_operation(op: WriteOperation, *, show_values: bool) -> dict[str, Any]:
    """Target, operation, the row it addresses and its (redacted) arguments."""
    return {
        "target": op.target,
        "operation": op.operation,
        "table": op.args.get("table"),
        "key": op.args.get("key"),
        "args": redact(op.args, show_values=show_values),
    }


def build_report(
    items: Sequence[ReportItem],
    *,
    integration_id: str,
    visible_fields: Sequence[str] | None = None,
    show_values: bool = False,
) -> dict[str, Any]:
    """The report as a JSON-ready dictionary."""
    patients: list[dict[str, Any]] = []
    summary = {"write": 0, "skip": 0, "refused": 0, "operations": 0}
    for item in items:
        changes = None
        if item.previous is not None:
            before = minimize(item.previous.entry, visible_fields)
            after = minimize(item.entry.data, visible_fields)
            changes = [c["path"] for c in entry_changes(before, after)]
        record: dict[str, Any] = {
            "entry": describe_entry(item.entry, visible_fields),
            "changes": changes,
        }
        if item.error is not None or item.plan is None:
            summary["refused"] += 1
            record |= {"decision": "refused", "reason": item.error or "no plan"}
        else:
            plan = item.plan
            summary[plan.action] += 1
            summary["operations"] += len(plan.operations)
            record |= {
                "decision": plan.action,
                "reason": plan.skip_reason if plan.action == "skip" else plan.rationale,
                "backend": plan.backend,
                "operations": [
                    describe_operation(o, show_values=show_values) for o in plan.operations
                ],
            }
        patients.append(record)
    return {
        "integration": integration_id,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "values_shown": show_values,
        "summary": summary,
        "patients": patients,
    }


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Mapping[str, Any]) -> str:
    """A readable per-patient report."""
    s = report["summary"]
    lines = [
        f"# Dry run: {report['integration']}",
        "",
        f"Generated {report['generated_at']}. {len(report['patients'])} patient(s): "
        f"{s['write']} write, {s['skip']} skip, {s['refused']} refused; "
        f"{s['operations']} operation(s) would run."
        + ("" if report["values_shown"] else " Values are hidden (ids and field names only)."),
    ]
    for patient in report["patients"]:
        entry = patient["entry"]
        lines += ["", f"## Patient {entry['patient_id']}: {patient['decision']}", ""]
        lines.append(f"- Why: {_cell(patient.get('reason') or '-')}")
        lines.append(f"- Entry fields seen: {', '.join(entry['fields']) or '-'}")
        for name, ids in entry["list_ids"].items():
            lines.append(f"- {name}: ids {', '.join(ids)}")
        changes = patient["changes"]
        if changes is None:
            lines.append("- Changes: first run for this patient")
        else:
            lines.append(f"- Changes: {', '.join(changes) or 'none in visible fields'}")
        operations = patient.get("operations") or []
        if operations:
            lines += [
                "",
                "| # | target | operation | table | key | arguments |",
                "|---|---|---|---|---|---|",
            ]
            for n, op in enumerate(operations, 1):
                args = {
                    k: v for k, v in op["args"].items() if k not in ("table", "key", "patient_id")
                }
                lines.append(
                    f"| {n} | {_cell(op['target'])} | {_cell(op['operation'])} | "
                    f"{_cell(op['table'] or '')} | {_cell(op['key'] or '')} | {_cell(args)} |"
                )
    return "\n".join(lines) + "\n"
