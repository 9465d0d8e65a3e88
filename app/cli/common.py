"""What the CLI's command modules share."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.service.runtime import Runtime


def open_runtime() -> Runtime:
    """The runtime the settings describe (``HEALTHIE_SYNC_*``)."""
    from app.core.settings import Settings
    from app.service.runtime import build_runtime

    return build_runtime(Settings())
