"""What the CLI's command modules share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.service.runtime import Runtime


def open_runtime(*, interactive: bool = False) -> Runtime:
    """The runtime the settings describe (``HEALTHIE_SYNC_*``). ``interactive``: a person
    waits on the command, so Healthie calls get the short timeout and one retry."""
    from app.core.settings import Settings
    from app.service.runtime import build_runtime

    settings = Settings()
    if interactive:
        settings = settings.model_copy(
            update={
                "healthie_timeout_seconds": min(
                    settings.healthie_timeout_seconds, settings.interactive_timeout_seconds
                ),
                "healthie_max_attempts": min(settings.healthie_max_attempts, 2),
            }
        )
    return build_runtime(settings)


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    empty: str,
    fold: Sequence[str] = (),
) -> None:
    """Rows as a table when it fits the terminal, else as one block of ``column: value``
    lines per row: readable at 80 columns and never an id cut short. An empty result says
    so in a sentence (``empty``) instead of printing a bare header. ``fold``: columns that may
    wrap inside a wide table."""
    from rich.console import Console
    from rich.table import Table

    materialized = [[str(c) for c in r] for r in rows]
    console = Console()
    if not materialized:
        console.print(empty, soft_wrap=True, highlight=False)
        return
    widths = [max(len(name), *(len(r[i]) for r in materialized)) for i, name in enumerate(columns)]
    if sum(widths) + 3 * len(columns) + 1 > console.width:
        label = max(len(name) for name in columns)
        for n, row in enumerate(materialized):
            if n:
                console.print("")
            for name, value in zip(columns, row, strict=True):
                console.print(f"{name:>{label}}  {value}", soft_wrap=True, highlight=False)
        return
    table = Table(pad_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold", no_wrap=name not in fold)
    for row in materialized:
        table.add_row(*row)
    console.print(table)
