"""The in-memory table target: the fake for unit tests and the contract suite's reference.

Rows live in a dict keyed like every table target's rows, ``(integration, patient, table,
key)``, with the scope columns beside the values, so it behaves as the real targets do (sync
modes, mirror pruning, declared tables) without a server.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from connectors.base import Scope, Write, WriteResult
from connectors.tables import DeleteRow, TableConnector, UpsertRow

RowId = tuple[str, str, str, str]


class MemoryConnector(TableConnector):
    """Keeps rows in ``rows[(integration, patient, table, key)] = {...values, scope columns}``."""

    kind: ClassVar[str] = "memory"
    description: ClassVar[str] = "In-memory tables (tests and dry runs); nothing persists."

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        self.rows: dict[RowId, dict[str, Any]] = {}
        #: (operation, key) per executed write, in order
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def write_upsert_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Store each row (as the sync mode allows)."""
        mode = self.table_options.mode
        out: list[WriteResult] = []
        with self._lock:
            for write in batch:
                args = write.args
                assert isinstance(args, UpsertRow)
                rid = self.row_id(write)
                self.calls.append(("upsert_row", args.key))
                current = self.rows.get(rid)
                if (current is None and mode == "update_only") or (
                    current is not None and mode == "insert_only"
                ):
                    out.append(self.ok(write, changed=False))
                    continue
                row = {**args.values, "patient_id": write.scope.patient_id}
                kept = (
                    None
                    if current is None
                    else {k: v for k, v in current.items() if k not in ("run_id", "synced_at")}
                )
                changed = kept != row
                if changed:
                    self.rows[rid] = {
                        **row,
                        "run_id": write.scope.run_id,
                        "synced_at": write.scope.synced_at,
                    }
                out.append(self.ok(write, changed=changed))
        return out

    def write_delete_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Remove each row of the patient, if present."""
        out: list[WriteResult] = []
        with self._lock:
            for write in batch:
                assert isinstance(write.args, DeleteRow)
                self.calls.append(("delete_row", write.args.key))
                removed = self.rows.pop(self.row_id(write), None)
                out.append(self.ok(write, changed=removed is not None))
        return out

    def prune(self, scope: Scope, keep: Mapping[str, set[str]]) -> None:
        """Drop the patient's rows whose keys are not kept."""
        with self._lock:
            for rid in list(self.rows):
                integration, patient, table, key = rid
                if (integration, patient) == (scope.integration_id, scope.patient_id) and (
                    key not in keep.get(table, set())
                ):
                    del self.rows[rid]

    def table(self, table: str) -> dict[str, dict[str, Any]]:
        """The rows of ``table`` by key (all integrations and patients; tests read this)."""
        with self._lock:
            return {rid[3]: row for rid, row in self.rows.items() if rid[2] == table}
