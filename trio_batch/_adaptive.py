"""How :class:`~trio_batch.Adaptive` decides, and what it learns per key.

The decision (:func:`decide`) is a pure function of the facts of the oldest
waiting batch, the key's learned estimates, the started-batch count and the
current time. It answers *when* the batch should start (an absolute time;
``<= now`` means now) and why. The batcher asks it whenever the answer can
change (an item joins the batch, a batch of the key finishes, a timer fires),
starts the batch when its time has come, and otherwise sets the batch's timer
for that time (``_timers``), so a held batch is started by the timer task.

The rule, in the order it is applied:

1. A full batch starts (``FULL``). Nothing is known yet (fewer than two
   timed batches or a few arrivals of this key): start now, like
   :class:`~trio_batch.Immediate` (``NO_ESTIMATE``).
2. The optimum. Holding the batch a moment longer costs each of its ``n``
   items that moment; it gains, for each item that arrives meanwhile, the
   wait for a slot that item would have had if the batch had started now.
   If another slot stays free after this batch starts, that wait is 0, so
   the batch starts now. If this is the last free slot, the next slot frees
   when the first started batch ends, ``r`` seconds from now, or when this one
   ends, ``T(n) = a + b * n`` seconds after it starts, whichever is sooner.
   Holding ``s`` more seconds pays while ``rate * min(r - s, T(n + rate * s))
   > n + rate * s``, so the batch starts at the first crossing: after
   ``(rate * r - n) / (2 * rate)`` seconds (the items that have arrived
   balance the wait of those still to come), or once it holds the
   ``rate * a / (1 - rate * b)`` items that arrive while one batch is
   processed, whichever comes first (``ESTIMATED_OPTIMUM``).
3. Bounds. The batch starts no later than its oldest item's arrival plus
   ``target_latency`` minus ``T(n)`` (``LATENCY_TARGET``), nor later than the
   tightest effective Trio deadline of its callers minus ``T(n)``
   (``CALLER_DEADLINE``), whichever is sooner, if that is before the optimum.

A slot must be free and the batch must be the oldest waiting one before the
question is asked (FIFO, ``max_key_concurrency``): the rule can only delay a
start the other policies would make, never add one.

What is learned per key (:class:`KeyLearning`) lives in the key's
``KeyState`` and is forgotten with it: batch timings (a
:class:`~trio_batch._estimator.CostEstimator`), the arrival rate (a
:class:`~trio_batch._estimator.RateEstimator`), and when each started batch
started. A key that goes idle starts again from nothing, and behaves like
``Immediate`` until it has data: under light load that is the right policy.

Rejected alternatives: AIMD on the batch size (Clipper) reacts to missed
targets after the fact and cannot use the callers' deadlines; a fixed
``wait`` learned globally (BentoML's CORK) ignores how many slots are free,
which is what decides whether waiting buys anything.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol, final

import attrs

from ._estimator import CostEstimator, RateEstimator
from ._policies import StartReason

if TYPE_CHECKING:
    from ._policies import Adaptive, Limits

__all__ = ["AdaptiveEstimates", "Decision", "KeyLearning", "decide"]

#: Timed batches and arrival gaps a key needs before its estimates are used.
MIN_TIMINGS = 2
MIN_GAPS = 3


class _Sized(Protocol):
    @property
    def size(self) -> int:
        """Items in the batch."""

    @property
    def cost(self) -> float:
        """Total cost of its items (with a cost function)."""

    @property
    def costs(self) -> list[float]:
        """Each item's cost; empty without a cost function."""


def load(batch: _Sized) -> float:
    """What the fit counts for ``batch``: its items, or its cost with a cost function."""
    return batch.cost if batch.costs else batch.size


class AdaptiveFacts(_Sized, Protocol):
    """What the adaptive decision knows about the oldest waiting batch."""

    @property
    def filled(self) -> bool:
        """The batch has held ``max_batch_size`` items."""

    @property
    def opened_at(self) -> float:
        """When its first item arrived."""

    @property
    def caller_deadline(self) -> float:
        """The tightest effective Trio deadline of its callers (``inf`` if none)."""


@final
@attrs.frozen
class Decision:
    """When the oldest waiting batch should start, and why."""

    #: Absolute time (``trio.current_time()`` clock); ``<= now`` means now.
    start_at: float
    reason: StartReason


@final
@attrs.frozen(kw_only=True)
class AdaptiveEstimates:
    """What an :class:`~trio_batch.Adaptive` batcher believes about one key.

    Returned by :meth:`Batcher.estimates <trio_batch.Batcher.estimates>`.
    """

    #: Fitted seconds a batch holds its slot whatever its size (``a``).
    per_batch_seconds: float
    #: Fitted extra seconds per item (``b``): a batch of ``n`` takes ``a + b * n``.
    #: With ``open_batcher(cost=...)``, ``n`` is the batch's total cost, and
    #: this is seconds per unit of cost.
    per_item_seconds: float
    #: Arrivals of this key per second (0 before two arrivals); with a cost
    #: function, cost per second.
    arrival_rate: float
    #: Batches timed so far (since the key was last idle).
    timed_batches: int
    #: Whether the estimates are used yet (before that, batches start at once).
    ready: bool

    def batch_seconds(self, n: float) -> float:
        """Expected seconds a batch of ``n`` items (or total cost) holds its slot."""
        return self.per_batch_seconds + self.per_item_seconds * n


@final
class KeyLearning:
    """The estimates of one key, and when its started batches started."""

    __slots__ = ("arrivals", "cost", "running", "timer_reason")

    def __init__(self) -> None:
        self.cost = CostEstimator()
        self.arrivals = RateEstimator()
        # Started batch -> when it started (identity keys: a Batch has no __eq__).
        self.running: dict[_Sized, float] = {}
        # Why the key's held batch will start when its timer fires.
        self.timer_reason = StartReason.ESTIMATED_OPTIMUM

    @property
    def ready(self) -> bool:
        """Enough is known to decide by the estimates."""
        return self.cost.samples >= MIN_TIMINGS and self.arrivals.gaps >= MIN_GAPS

    def started(self, batch: _Sized, now: float) -> None:
        """A batch of the key started at ``now``."""
        self.running[batch] = now

    def finished(self, batch: _Sized, now: float, *, timed: bool) -> None:
        """A started batch ended; ``timed``: ``process`` ran and succeeded."""
        began = self.running.pop(batch, None)
        if timed and began is not None:
            self.cost.add(load(batch), now - began)

    def next_end(self) -> float:
        """The expected end of the started batch that should end first."""
        seconds = self.cost.seconds
        return min(
            (began + seconds(load(batch)) for batch, began in self.running.items()),
            default=math.inf,
        )

    def snapshot(self) -> AdaptiveEstimates:
        cost = self.cost
        return AdaptiveEstimates(
            per_batch_seconds=cost.per_batch,
            per_item_seconds=cost.per_item,
            arrival_rate=self.arrivals.rate,
            timed_batches=cost.samples,
            ready=self.ready,
        )


def decide(
    policy: Adaptive,
    batch: AdaptiveFacts,
    estimates: AdaptiveEstimates,
    *,
    now: float,
    started: int,
    next_end: float,
    limits: Limits,
) -> Decision:
    """When the oldest waiting batch of a key should start (see the module doc).

    Args:
        policy: the :class:`~trio_batch.Adaptive` value (its ``target_latency``).
        batch: the batch's facts.
        estimates: the key's estimates.
        now: the current time.
        started: batches of the key started now (fewer than the concurrency).
        next_end: expected end of the started batch that ends first (``inf``
            if none is started).
        limits: the batcher's limits.
    """
    if batch.filled:
        return Decision(now, StartReason.FULL)
    if not estimates.ready:
        return Decision(now, StartReason.NO_ESTIMATE)
    # With a cost function, sizes, times and rates are in cost, not items.
    n = load(batch)
    seconds = estimates.per_batch_seconds + estimates.per_item_seconds * n
    rate = estimates.arrival_rate
    # 2. the optimum
    optimum = now
    if limits.max_key_concurrency - started <= 1 and 0 < rate < math.inf:
        # Holding s more seconds pays while rate * min(r - s, T(n + rate * s))
        # > n + rate * s: it stops at the first of the two crossings.
        b = estimates.per_item_seconds
        wanted = rate * estimates.per_batch_seconds / (1 - rate * b) if rate * b < 1 else math.inf
        most = float(limits.max_batch_size)
        if batch.costs:
            # The cost of a full batch, at this batch's mean cost per item.
            most *= n / batch.size
            if limits.max_batch_cost is not None:
                most = min(most, limits.max_batch_cost)
        hold = (min(wanted, most) - n) / rate
        remaining = next_end - now
        if remaining < math.inf:
            hold = min(hold, (rate * remaining - n) / (2 * rate))
        optimum = now + max(hold, 0.0)
    # 3. the bounds
    target = policy.target_latency
    latest, why = math.inf, StartReason.ESTIMATED_OPTIMUM
    if target is not None:
        latest, why = batch.opened_at + target - seconds, StartReason.LATENCY_TARGET
    if batch.caller_deadline - seconds < latest:
        latest, why = batch.caller_deadline - seconds, StartReason.CALLER_DEADLINE
    if latest < optimum:
        return Decision(latest, why)
    return Decision(optimum, StartReason.ESTIMATED_OPTIMUM)
