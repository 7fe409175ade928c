"""The one percentile definition of the benchmarks (the simulator uses the same).

``statistics.quantiles(data, n=100, method="inclusive")``: the data are taken
as the whole population, and the *p*-th percentile is linearly interpolated at
position ``p / 100 * (len(data) - 1)`` of the sorted data (so the 0th is the
minimum, the 50th the median, the 100th the maximum). numpy's default
``percentile`` gives the same values.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["percentile"]


def percentile(data: Sequence[float], p: int) -> float:
    """The ``p``-th percentile of ``data`` (``0 <= p <= 100``), as defined above."""
    if not 0 <= p <= 100:
        raise ValueError(f"p must be between 0 and 100, got {p}")
    if not data:
        raise ValueError("percentile of no data")
    if p == 0 or len(data) == 1:
        return min(data) if p == 0 else data[0]
    if p == 100:
        return max(data)
    return statistics.quantiles(data, n=100, method="inclusive")[p - 1]
