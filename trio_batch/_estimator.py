"""Online estimates for :class:`~trio_batch.Adaptive`: batch time and arrival rate.

Two small pure classes, fed with numbers, holding no clock and no Trio:

* :class:`CostEstimator` fits ``seconds = a + b * n``: how long one batch of
  ``n`` items holds its slot (from its start to its end, so a resource's
  acquisition is part of ``a``). The fit is an exponentially weighted least
  squares: the running sums of ``w``, ``w*n``, ``w*t``, ``w*n*n`` and ``w*n*t``
  are decayed by ``1 - weight`` at every sample, so old timings fade and a
  processing time that changes mid-run is tracked within a few dozen batches.
  Outliers are clipped before they enter the sums: a sample whose residual
  from the current fit is more than ``clip`` times the typical residual (an
  exponentially weighted mean absolute residual) enters as if it were only
  ``clip`` times off. One pathological batch (a GC pause, a lock convoy) moves
  the fit by a bounded amount; a lasting change moves it a little more each
  time, because the typical residual grows with it, until the fit has caught up.
* :class:`RateEstimator` tracks arrivals per second as the inverse of an
  exponentially weighted mean gap between arrivals (or, with a cost per item,
  cost per second: the weighted mean cost of an arrival over the mean gap).

Rejected alternatives: a plain moving average of batch durations (what
deadline-aware ``Duration`` uses) knows nothing of how time grows with size,
which is the whole question; a windowed median or Theil-Sen fit is more robust
but costs a sort per batch (a few hundred comparisons on the hot path of small
batches); recursive least squares with a covariance matrix gives the same
answer as the decayed sums with more arithmetic.
"""

from __future__ import annotations

import math
from typing import final

__all__ = ["CostEstimator", "RateEstimator"]


@final
class CostEstimator:
    """A robust, forgetting fit of ``seconds = per_batch + per_item * n``.

    Args:
        weight: share of the newest sample in the fit (0 < weight <= 1); the
            fit remembers roughly the last ``2 / weight`` samples.
        clip: residuals beyond ``clip`` times the typical residual are clipped.
        warmup: samples taken as they are (the fit needs a start) before
            clipping applies.
    """

    __slots__ = (
        "_clip",
        "_spread",
        "_sw",
        "_swn",
        "_swnn",
        "_swnt",
        "_swt",
        "_warmup",
        "_weight",
        "per_batch",
        "per_item",
        "samples",
    )

    def __init__(self, *, weight: float = 0.1, clip: float = 3.0, warmup: int = 3) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight!r}")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip!r}")
        self._weight = weight
        self._clip = clip
        self._warmup = warmup
        self._sw = self._swn = self._swt = self._swnn = self._swnt = 0.0
        # Typical absolute residual (seconds); 0 until the warmup is over.
        self._spread = 0.0
        #: Fitted seconds per batch whatever its size (``a``, >= 0).
        self.per_batch = 0.0
        #: Fitted seconds per item (``b``, >= 0).
        self.per_item = 0.0
        #: Samples taken so far.
        self.samples = 0

    def seconds(self, n: float) -> float:
        """Expected seconds for a batch of ``n`` items (0 before any sample)."""
        return self.per_batch + self.per_item * n

    def add(self, n: float, seconds: float) -> None:
        """Take one timing: a batch of ``n`` items (or cost) held its slot ``seconds``."""
        if not n > 0 or not math.isfinite(seconds) or seconds < 0:
            return  # nothing to learn (a dropped batch, a clock oddity)
        if self.samples >= self._warmup:
            residual = seconds - self.seconds(n)
            limit = self._clip * self._spread
            clipped = max(-limit, min(limit, residual))
            self._spread += self._weight * (abs(clipped) - self._spread)
            seconds = self.seconds(n) + clipped
        keep = 1.0 - self._weight if self.samples else 0.0
        self._sw = keep * self._sw + 1.0
        self._swn = keep * self._swn + n
        self._swt = keep * self._swt + seconds
        self._swnn = keep * self._swnn + n * n
        self._swnt = keep * self._swnt + n * seconds
        self.samples += 1
        self._solve()
        if self.samples == self._warmup:
            # The typical residual of the warmup samples starts the clipping;
            # a floor keeps a run of identical timings from clipping everything.
            mean = self._swt / self._sw
            self._spread = max(abs(seconds - self.seconds(n)), 0.05 * mean, 1e-9)

    def _solve(self) -> None:
        sw, swn, swt = self._sw, self._swn, self._swt
        mean_n = swn / sw
        mean_t = swt / sw
        var_n = self._swnn / sw - mean_n * mean_n
        if var_n > 1e-9 * max(1.0, mean_n * mean_n):
            slope = (self._swnt / sw - mean_n * mean_t) / var_n
        else:
            # Every batch had (nearly) the same size: the slope cannot be
            # seen; keep the one we had, as long as it explains the mean.
            slope = min(self.per_item, mean_t / mean_n)
        slope = max(slope, 0.0)
        intercept = mean_t - slope * mean_n
        if intercept < 0:
            # Time proportional to size: no fixed part.
            intercept, slope = 0.0, mean_t / mean_n
        self.per_batch, self.per_item = intercept, slope


@final
class RateEstimator:
    """Arrivals per second, from an exponentially weighted mean gap.

    Args:
        weight: share of the newest gap (0 < weight <= 1).
    """

    __slots__ = ("_amount", "_gap", "_last", "_weight", "gaps")

    def __init__(self, *, weight: float = 0.1) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight!r}")
        self._weight = weight
        self._last: float | None = None
        self._gap = 0.0
        # Weighted mean amount (cost) per arrival; 1 without costs.
        self._amount = 1.0
        #: Gaps between arrivals seen so far.
        self.gaps = 0

    def arrived(self, now: float, amount: float = 1.0) -> None:
        """One arrival at time ``now`` (non-decreasing), of ``amount`` (its cost)."""
        last = self._last
        self._last = now
        if last is None:
            self._amount = amount
            return
        self._amount += self._weight * (amount - self._amount)
        gap = max(now - last, 0.0)
        self._gap = gap if not self.gaps else self._gap + self._weight * (gap - self._gap)
        self.gaps += 1

    @property
    def rate(self) -> float:
        """Arrivals (amount) per second (``inf`` if they came at once; 0 before two)."""
        if not self.gaps:
            return 0.0
        return math.inf if self._gap == 0 else self._amount / self._gap
