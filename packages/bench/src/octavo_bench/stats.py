"""Summary statistics of latency samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Summary:
    """Mean and percentiles (linear interpolation, numpy's default) of a sample, in its unit."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def scaled(self, factor: float) -> Summary:
        """The same summary in another unit (``factor=1000``: seconds to milliseconds)."""
        return Summary(self.count, *(getattr(self, f) * factor
                                     for f in ("mean", "p50", "p90", "p99", "min", "max")))


def summarize(values: Sequence[float]) -> Summary | None:
    """Mean, p50, p90, p99, min and max of ``values``; None for an empty sample."""
    if len(values) == 0:
        return None
    array = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(array, PERCENTILES)
    return Summary(len(array), float(array.mean()), float(p50), float(p90), float(p99),
                   float(array.min()), float(array.max()))
