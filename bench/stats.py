"""One percentile helper for every benchmark (nearest-rank on the sorted samples)."""

from __future__ import annotations

import math
import statistics


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank: a value that was measured."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(samples: list[float], unit: str = "ms", digits: int = 2) -> dict[str, float]:
    """``{p50_<unit>, p95_<unit>, n}``: the median and the 95th percentile."""
    return {
        f"p50_{unit}": round(statistics.median(samples), digits),
        f"p95_{unit}": round(percentile(samples, 95), digits),
        "n": len(samples),
    }
