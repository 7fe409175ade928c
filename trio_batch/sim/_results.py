"""What a run measured: one :class:`PolicyResult` per policy, and the summaries.

A result keeps the raw observations (every latency, every batch size, every
statistics sample) so that reports and plots are computed from the same data,
and the summary numbers are derived, never accumulated separately. Latencies
and arrival times are kept in :class:`array.array` (8 bytes each), not tuples
of float objects (32 bytes each).

Percentiles have one definition, the standard library's
``statistics.quantiles(data, n=100, method="inclusive")``: linear interpolation
between the two nearest observations, the same as numpy's default
(``method="linear"``) and spreadsheets' ``PERCENTILE.INC``. The 0th and 100th
percentiles are the smallest and largest observations.
"""

from __future__ import annotations

import statistics
from array import array
from collections.abc import Iterable, Sequence
from typing import final

import attrs

from ._loading import scenario_to_data
from ._scenario import Scenario

__all__ = ["PolicyResult", "Sample", "SimulationResult", "percentile", "percentiles"]


def percentiles(values: Sequence[float]) -> tuple[float, ...]:
    """The 0th to 100th percentiles of ``values`` (101 numbers; empty if no values).

    Linear interpolation: ``statistics.quantiles(values, n=100, method="inclusive")``
    between the smallest and the largest value.
    """
    if not values:
        return ()
    if len(values) == 1:  # statistics.quantiles needs two values before Python 3.13
        return (values[0],) * 101
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return (ordered[0], *cuts, ordered[-1])


def percentile(values: Sequence[float], p: int) -> float | None:
    """The ``p``-th percentile of ``values`` (an integer from 0 to 100; None if empty).

    See :func:`percentiles`.

    Raises:
        ValueError: ``p`` is not an integer from 0 to 100.
    """
    _check_percent(p)
    table = percentiles(values)
    return table[p] if table else None


def _float_array(values: Iterable[float]) -> array[float]:
    return values if isinstance(values, array) and values.typecode == "d" else array("d", values)


def _check_percent(p: int) -> None:
    if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 100:
        raise ValueError(f"p must be an integer from 0 to 100, got {p!r}")


@final
@attrs.frozen
class Sample:
    """The batcher's statistics at one simulated instant."""

    #: Simulated seconds since the start of the run.
    time: float
    #: ``statistics().queued_items``: items in batches not yet processing.
    queued_items: int
    #: ``statistics().processing_batches``: started batches.
    processing_batches: int


@final
@attrs.frozen(kw_only=True, eq=False)
class PolicyResult:
    """One policy's run of a scenario.

    Every submitted item has exactly one outcome, so ``ok + rejected + failed +
    withdrawn + late + closed == items``.
    """

    #: The policy, as a spec (``"duration:0.005"``).
    policy: str
    #: Items submitted (arrivals).
    items: int
    #: Callers that received their output.
    ok: int
    #: Callers that got ``Rejected`` (the key's queue was full, or, with
    #: ``Oversize.REJECT``, their item alone cost more than ``max_batch_cost``).
    rejected: int
    #: Callers whose batch failed (``BatchFailed`` or ``ResourceAcquisitionFailed``).
    failed: int
    #: Callers that gave up before their batch began processing (item never processed).
    withdrawn: int
    #: Callers that gave up after their batch began processing (item processed, output dropped).
    late: int
    #: Callers that got ``BatcherClosed``; always 0 unless the library has a bug.
    closed: int
    #: Simulated seconds from the start until the last caller had its outcome.
    elapsed: float
    #: Size of every ``process`` call, in the order they began.
    batch_sizes: tuple[int, ...]
    #: ``max_batch_size`` of the run, for the fill ratio.
    max_batch_size: int
    #: Arrival time of each caller that got its output, in arrival order.
    ok_arrivals: Sequence[float] = attrs.field(converter=_float_array)
    #: Latency (submit to output, simulated seconds) of the same callers.
    ok_latencies: Sequence[float] = attrs.field(converter=_float_array)
    #: Periodic statistics samples.
    samples: tuple[Sample, ...]
    #: Times a batch obtained a pool connection (0 without a pool).
    acquisitions: int
    #: Pool connections opened (0 without a pool).
    connections: int
    #: Broken library guarantees that the run observed (empty if all is well).
    anomalies: tuple[str, ...]
    #: Total item cost of every ``process`` call, in the order they began
    #: (empty without item costs).
    batch_costs: tuple[float, ...] = ()
    #: ``max_batch_cost`` of the run (None: unbounded, or no item costs).
    max_batch_cost: float | None = None
    #: The 0th to 100th percentile latencies (empty if no caller got its output).
    latency_percentiles: tuple[float, ...] = attrs.field(init=False)

    @latency_percentiles.default
    def _latency_percentiles(self) -> tuple[float, ...]:
        return percentiles(self.ok_latencies)

    @property
    def throughput(self) -> float:
        """Items that got their output, per simulated second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def batches(self) -> int:
        """``process`` calls (including failed ones)."""
        return len(self.batch_sizes)

    @property
    def mean_batch_size(self) -> float | None:
        """Mean items per ``process`` call (None if there was none)."""
        return sum(self.batch_sizes) / len(self.batch_sizes) if self.batch_sizes else None

    @property
    def mean_batch_cost(self) -> float | None:
        """Mean total item cost per ``process`` call (None without costs or batches)."""
        costs = self.batch_costs
        return sum(costs) / len(costs) if costs else None

    @property
    def cost_fill_ratio(self) -> float | None:
        """Mean batch cost as a fraction of ``max_batch_cost`` (None if either is missing)."""
        mean = self.mean_batch_cost
        bound = self.max_batch_cost
        return None if mean is None or bound is None else mean / bound

    @property
    def fill_ratio(self) -> float | None:
        """Mean batch size as a fraction of ``max_batch_size``."""
        mean = self.mean_batch_size
        return None if mean is None else mean / self.max_batch_size

    def latency(self, p: int) -> float | None:
        """The ``p``-th percentile latency in simulated seconds (None if no output).

        ``p`` is an integer from 0 to 100; percentiles interpolate linearly, as
        ``statistics.quantiles(latencies, n=100, method="inclusive")`` does.
        """
        _check_percent(p)
        return self.latency_percentiles[p] if self.latency_percentiles else None

    @property
    def max_latency(self) -> float | None:
        """The largest latency (None if no caller got its output)."""
        return self.latency(100)

    def latency_over_time(self, windows: int) -> list[tuple[float, float, float]]:
        """``(window middle, p50, p99)`` of latencies by arrival time.

        The arrival span is cut into ``windows`` equal windows; windows where
        no caller got its output are left out.
        """
        if not self.ok_arrivals:
            return []
        span = max(self.ok_arrivals[-1], 1e-9)
        width = span / windows
        buckets: list[list[float]] = [[] for _ in range(windows)]
        for arrival, latency in zip(self.ok_arrivals, self.ok_latencies, strict=True):
            buckets[min(int(arrival / width), windows - 1)].append(latency)
        points = []
        for index, bucket in enumerate(buckets):
            if bucket:
                table = percentiles(bucket)
                points.append(((index + 0.5) * width, table[50], table[99]))
        return points

    def summary(self) -> dict[str, object]:
        """The numbers of the report, as JSON-ready data (latencies in ms)."""

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 6)

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 6)

        return {
            "policy": self.policy,
            "items": self.items,
            "ok": self.ok,
            "rejected": self.rejected,
            "failed": self.failed,
            "withdrawn": self.withdrawn,
            "late": self.late,
            "closed": self.closed,
            "simulated_seconds": rounded(self.elapsed),
            "throughput": rounded(self.throughput),
            "latency_ms": {
                "p50": ms(self.latency(50)),
                "p90": ms(self.latency(90)),
                "p99": ms(self.latency(99)),
                "max": ms(self.max_latency),
            },
            "batches": self.batches,
            "mean_batch_size": rounded(self.mean_batch_size),
            "fill_ratio": rounded(self.fill_ratio),
            "mean_batch_cost": rounded(self.mean_batch_cost),
            "max_batch_cost_seen": rounded(max(self.batch_costs, default=None)),
            "cost_fill_ratio": rounded(self.cost_fill_ratio),
            "acquisitions": self.acquisitions,
            "connections_opened": self.connections,
            "max_queued_items": max((s.queued_items for s in self.samples), default=0),
            "anomalies": list(self.anomalies),
        }


@final
@attrs.frozen(kw_only=True, eq=False)
class SimulationResult:
    """A scenario and what each of its policies did with the same workload."""

    scenario: Scenario
    results: tuple[PolicyResult, ...]

    def to_data(self) -> dict[str, object]:
        """The whole run as JSON-ready data (no wall-clock times: reproducible)."""
        return {
            "scenario": scenario_to_data(self.scenario),
            "results": [result.summary() for result in self.results],
        }
