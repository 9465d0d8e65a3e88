"""An in-memory metric reader configured for one test (and the no-op state restored)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from app.observability import metrics


class Points:
    """The reader's current values: ``points[name][labels] = value`` (histograms: count)."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.reader = reader

    def __call__(self, name: str) -> dict[frozenset, float]:
        out: dict[frozenset, float] = defaultdict(float)
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = getattr(point, "count", 0)
                        assert value is not None
                        out[frozenset((point.attributes or {}).items())] += value
        return dict(out)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for k, v in self(name).items() if wanted <= set(k))


@pytest.fixture
def points() -> Iterator[Points]:
    reader = InMemoryMetricReader()
    metrics.configure([reader])
    try:
        yield Points(reader)
    finally:
        metrics.shutdown()
