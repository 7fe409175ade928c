"""The workload: who arrives when, under which key, and what a batch costs.

Everything random in a run is drawn here, from :class:`random.Random`
instances seeded from the scenario's seed and a purpose (``"1:arrivals"``,
``"1:keys"``, ...), never from the global generator. Each purpose has its own
stream, so adding bursts does not reshuffle the keys, and every policy of a
scenario sees the very same arrivals.

The randomness of a batch (its cost jitter, whether it fails) is drawn from a
generator seeded by the batch's identity, its first item, not from a stream
consumed in the order batches happen to start. Two batches that start at the
same simulated instant therefore get the same costs whichever Trio runs first.

String seeds go through SHA-512 in :meth:`random.Random.seed`, so they do not
depend on ``PYTHONHASHSEED``: the same seed gives the same workload in every
process.
"""

from __future__ import annotations

import itertools
import math
import random
from array import array
from collections.abc import Iterator
from typing import final

import attrs

from ._scenario import Arrivals, ItemCosts, KeyDistribution, ProcessModel, Scenario, Timeouts

__all__ = ["Workload", "batch_cost", "batch_random", "generate_workload"]


@final
@attrs.frozen(eq=False)
class Workload:
    """The items of a run, in arrival order; item ``i`` is the ``i``-th arrival.

    Attributes:
        times: arrival time of each item, in simulated seconds, increasing.
        keys: key of each item.
        timeouts: how long each caller waits before giving up (``math.inf``
            for a patient caller).
        costs: each item's cost, or ``None`` if the scenario has no item costs.
    """

    times: array[float]
    keys: array[int]
    timeouts: array[float]
    costs: array[float] | None = None

    def __len__(self) -> int:
        return len(self.times)


def _stream(seed: int, purpose: str) -> random.Random:
    return random.Random(f"{seed}:{purpose}")


def _rate_segments(arrivals: Arrivals) -> Iterator[tuple[float, float, float]]:
    """``(start, end, rate)`` of consecutive periods of constant arrival rate."""
    burst = arrivals.burst
    if burst is None:
        yield 0.0, math.inf, arrivals.rate
        return
    assert burst.start is not None
    yield 0.0, burst.start, arrivals.rate
    # Each period's edges come from its index, not from the previous edge, so
    # rounding never makes a period empty or lets it drift.
    for period in itertools.count():
        begin = burst.start + period * burst.every
        yield begin, begin + burst.length, arrivals.rate * burst.factor
        yield begin + burst.length, begin + burst.every, arrivals.rate


def _arrival_times(
    arrivals: Arrivals, rng: random.Random, items: int | None, duration: float | None
) -> array[float]:
    """Poisson arrivals with a piecewise-constant rate.

    Within a period the gaps are exponential; at a change of rate the process
    restarts from the change (it is memoryless, so that is exact).
    """
    times: array[float] = array("d")
    limit = math.inf if duration is None else duration
    count = math.inf if items is None else items
    for start, end, rate in _rate_segments(arrivals):
        if start >= limit:
            break
        t = start
        while len(times) < count:
            t += rng.expovariate(rate)
            if t >= end or t >= limit:
                break
            times.append(t)
        if len(times) >= count:
            break
    return times


def _keys(distribution: KeyDistribution, rng: random.Random, n: int) -> array[int]:
    if distribution.distribution == "single":
        return array("q", bytes(8 * n))
    if distribution.distribution == "uniform":
        return array("q", (rng.randrange(distribution.count) for _ in range(n)))
    assert distribution.exponent is not None
    s = distribution.exponent
    population = range(distribution.count)
    weights = itertools.accumulate(1.0 / (rank + 1) ** s for rank in population)
    return array("q", rng.choices(population, cum_weights=list(weights), k=n))


def _timeouts(timeouts: Timeouts | None, rng: random.Random, n: int) -> array[float]:
    if timeouts is None or timeouts.fraction == 0:
        return array("d", itertools.repeat(math.inf, n))
    return array(
        "d", (timeouts.after if rng.random() < timeouts.fraction else math.inf for _ in range(n))
    )


def _costs(costs: ItemCosts, rng: random.Random, n: int) -> array[float]:
    if costs.distribution == "constant":
        assert costs.value is not None
        draws: Iterator[float] = itertools.repeat(costs.value, n)
    elif costs.distribution == "uniform":
        assert costs.low is not None
        assert costs.high is not None
        low, high = costs.low, costs.high
        draws = (rng.uniform(low, high) for _ in range(n))
    else:
        assert costs.median is not None
        assert costs.sigma is not None
        mu, sigma = math.log(costs.median), costs.sigma
        draws = (rng.lognormvariate(mu, sigma) for _ in range(n))
    if costs.integer:
        draws = (float(math.ceil(cost)) for cost in draws)
    return array("d", draws)


def generate_workload(scenario: Scenario) -> Workload:
    """Draw the arrivals, keys, caller timeouts and item costs of ``scenario``."""
    times = _arrival_times(
        scenario.arrivals,
        _stream(scenario.seed, "arrivals"),
        scenario.items,
        scenario.duration,
    )
    n = len(times)
    return Workload(
        times=times,
        keys=_keys(scenario.keys, _stream(scenario.seed, "keys"), n),
        timeouts=_timeouts(scenario.timeouts, _stream(scenario.seed, "timeouts"), n),
        costs=(
            None
            if scenario.costs is None
            else _costs(scenario.costs, _stream(scenario.seed, "costs"), n)
        ),
    )


def batch_random(seed: int, first_item: int) -> random.Random:
    """The generator for the batch whose first item is ``first_item``."""
    return random.Random(seed * 0x1_0000_0000_0000 + first_item)


def batch_cost(model: ProcessModel, size: int, rng: random.Random, cost: float = 0.0) -> float:
    """Simulated seconds one ``process`` call on ``size`` items of total ``cost`` takes."""
    base = model.per_batch + model.per_item * size + model.per_cost * cost
    if model.jitter == "erlang":
        assert model.erlang_k is not None
        return base * rng.gammavariate(model.erlang_k, 1.0 / model.erlang_k)
    if model.jitter == "lognormal":
        assert model.sigma is not None
        sigma = model.sigma
        return base * rng.lognormvariate(-sigma * sigma / 2, sigma)
    return base
