"""In-memory target for unit tests and dry runs: same operations as the SQLite connector."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from connectors.base import Connector, OperationSpec, WriteResult
from connectors.sqlite import DeleteRow, UpsertRow


class MemoryConnector(Connector):
    """Keeps rows in a dict: ``rows[(table, key)] = {"patient_id": ..., **values}``."""

    kind = "memory"
    operations: ClassVar[dict[str, OperationSpec]] = {
        "upsert_row": OperationSpec("upsert_row", UpsertRow, UpsertRow.__doc__ or ""),
        "delete_row": OperationSpec("delete_row", DeleteRow, DeleteRow.__doc__ or ""),
    }

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def upsert_row(self, args: UpsertRow) -> WriteResult:
        """Store the row."""
        row = {"patient_id": args.patient_id, **args.values}
        with self._lock:
            self.calls.append(("upsert_row", args.key))
            changed = self.rows.get((args.table, args.key)) != row
            self.rows[(args.table, args.key)] = row
        return WriteResult(self.name, "upsert_row", args.key, changed=changed)

    def delete_row(self, args: DeleteRow) -> WriteResult:
        """Remove the row if it belongs to the patient."""
        with self._lock:
            self.calls.append(("delete_row", args.key))
            row = self.rows.get((args.table, args.key))
            if row is None or row["patient_id"] != args.patient_id:
                return WriteResult(self.name, "delete_row", args.key, changed=False)
            del self.rows[(args.table, args.key)]
        return WriteResult(self.name, "delete_row", args.key)

    def close(self) -> None:
        """Nothing to release."""
