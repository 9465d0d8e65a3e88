"""Follow a Healthie connection's cursors to the end, with a page cap as a safeguard.

An operation to page declares ``$first: Int`` and ``$after: String`` and selects, under one
root field, ``page_info { has_next_page end_cursor }`` and ``nodes { ... }``::

    for nodes in Pages(client, request, "users", {"order_by": "UPDATED_AT_DESC"}):
        ...

Stopping early is the caller's choice (break out of the loop). When ``max_pages`` pages have
been read and Healthie still says there is more, iteration stops with ``truncated = True`` and
a warning: a runaway cursor must not turn one sweep into an unbounded crawl.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gql import GraphQLRequest

from app.core.errors import InvalidResponse
from app.healthie.client import PrintedRequest

if TYPE_CHECKING:
    from app.healthie.client import HealthieClient

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50  # Healthie recommends 10-50 per page
DEFAULT_MAX_PAGES = 200


class Pages:
    """Iterate the ``nodes`` of each page of ``field`` (see module docstring).

    After iteration: ``pages`` is the number of requests made, ``truncated`` whether the cap
    stopped it while Healthie had more.
    """

    def __init__(
        self,
        client: HealthieClient,
        request: GraphQLRequest,
        field: str,
        variables: dict[str, Any] | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        if page_size < 1 or max_pages < 1:
            raise ValueError("page_size and max_pages must be positive")
        # printed once for every page, not once per page
        self.client, self.request, self.field = client, PrintedRequest.of(request), field
        self.variables = dict(variables or {})
        self.page_size, self.max_pages = page_size, max_pages
        self.pages = 0
        self.truncated = False
        #: the connection's ``total_count`` when the operation selects it (else None)
        self.total: int | None = None

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        after: str | None = None
        seen_cursors: set[str] = set()
        while True:
            if self.pages >= self.max_pages:
                self.truncated = True
                log.warning(
                    "stopped paging %s after %d pages (max_pages); results are incomplete",
                    self.field,
                    self.pages,
                )
                return
            variables = {**self.variables, "first": self.page_size, "after": after}
            data = self.client.execute(self.request, variables)
            self.pages += 1
            connection = data.get(self.field)
            if connection is None:
                return  # Healthie answers null for a collection the key may not list
            if not isinstance(connection, dict):
                raise InvalidResponse(f"{self.field} is not a connection object")
            total = connection.get("total_count")
            if isinstance(total, int) and total >= 0:
                self.total = total
            nodes = connection.get("nodes") or []
            page_info = connection.get("page_info") or {}
            if not isinstance(nodes, list) or not isinstance(page_info, dict):
                raise InvalidResponse(f"{self.field}: nodes or page_info malformed")
            yield [n for n in nodes if isinstance(n, dict)]
            cursor = page_info.get("end_cursor")
            if not page_info.get("has_next_page") or not cursor:
                return
            if cursor in seen_cursors:
                raise InvalidResponse(f"{self.field}: cursor {cursor!r} repeated")
            seen_cursors.add(str(cursor))
            after = str(cursor)


def collect(
    client: HealthieClient,
    request: GraphQLRequest,
    field: str,
    variables: dict[str, Any] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Every node of every page (bounded by ``max_pages``), in order."""
    return [node for page in Pages(client, request, field, variables, **kwargs) for node in page]
