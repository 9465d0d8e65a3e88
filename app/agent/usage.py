"""Token usage per model call and a thread-safe meter that sums it per integration.

Anthropic bills four kinds of tokens differently: uncached input, cache writes, cache reads and
output; batch calls at a discount. Usage is therefore kept per kind, and batch calls apart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import Any

from app.observability import metrics

#: metric ``kind`` label of each billing kind
TOKEN_KINDS = {
    "input_tokens": "input",
    "cache_creation_input_tokens": "cache_creation",
    "cache_read_input_tokens": "cache_read",
    "output_tokens": "output",
}


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one or more model calls, by billing kind."""

    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0

    @classmethod
    def from_api(cls, usage: Any) -> TokenUsage:
        """From an SDK ``Usage`` (missing cache fields count as 0)."""
        return cls(
            input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            cache_creation_input_tokens=int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
            cache_read_input_tokens=int(getattr(usage, "cache_read_input_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            calls=1,
        )

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    @property
    def prompt_tokens(self) -> int:
        """Every input token, cached or not."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


@dataclass(frozen=True)
class UsageTotals:
    """What a meter has seen: direct calls and Message Batches calls, kept apart."""

    direct: TokenUsage = TokenUsage()
    batch: TokenUsage = TokenUsage()

    @property
    def total(self) -> TokenUsage:
        """Direct and batch together."""
        return self.direct + self.batch


class UsageMeter:
    """Sums token usage per integration; safe to share between worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, UsageTotals] = {}

    def record(self, integration_id: str, usage: TokenUsage, *, batch: bool = False) -> None:
        """Add one call's usage (and count its tokens by kind in the metrics)."""
        for name, kind in TOKEN_KINDS.items():
            metrics.record_tokens(integration_id, kind, getattr(usage, name), batch=batch)
        with self._lock:
            current = self._totals.get(integration_id, UsageTotals())
            if batch:
                current = UsageTotals(current.direct, current.batch + usage)
            else:
                current = UsageTotals(current.direct + usage, current.batch)
            self._totals[integration_id] = current

    def totals(self, integration_id: str | None = None) -> UsageTotals:
        """The integration's totals, or every integration's summed."""
        with self._lock:
            if integration_id is not None:
                return self._totals.get(integration_id, UsageTotals())
            out = UsageTotals()
            for item in self._totals.values():
                out = UsageTotals(out.direct + item.direct, out.batch + item.batch)
            return out

    def reset(self) -> UsageTotals:
        """Return every integration's totals and start again from zero."""
        with self._lock:
            out = UsageTotals()
            for item in self._totals.values():
                out = UsageTotals(out.direct + item.direct, out.batch + item.batch)
            self._totals.clear()
            return out
