"""Running the workloads: warm-up, interleaved repetitions, medians, ratios to a baseline.

Absolute times on a shared machine drift from second to second, so each
repetition runs every contestant once, back to back, in a rotating order
(floor, Immediate, Size, ... then Immediate, Size, ..., floor, ...), and each
contestant's ratio to the baseline (the floor; the lean floor in workload f,
which also has ratios to the bare limit) is computed *within* a repetition.
The table shows the median of those per-repetition ratios and its standard
error, estimated from their interquartile range.

Garbage collection makes single runs of the same contestant differ by 10-20%
(where a full collection falls in a run varies), so a fixed number of
repetitions does not give a fixed precision. After the minimum number of
repetitions, more are run, up to a maximum, until every ratio's standard
error is within the wanted spread (5% by default).

A GC-aware workload (f) also records, per run, what the garbage collector did
(``_gcmeter.GcMeter``), and once per contestant, untimed, what a parked caller
costs (``run_parked``).
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import trio

from . import _peers
from ._gcmeter import Parked
from ._stats import percentile
from ._workloads import (
    IMPLS,
    Sample,
    Workload,
    run_latency,
    run_memory,
    run_parked,
    run_throughput,
)

__all__ = [
    "DEFAULT_SPREAD",
    "Clock",
    "Row",
    "SuiteResult",
    "WorkloadResult",
    "ratio",
    "run_once",
    "run_parked_once",
    "run_workload",
]

#: ``progress(label, done, total)``: ``done`` of ``total`` steps of the workload ``label``.
Progress = Callable[[str, int, int], None]

#: The standard error wanted on every ratio, relative to it.
DEFAULT_SPREAD = 0.05


def _quiet(label: str, done: int, total: int) -> None:
    pass


def run_once(workload: Workload, impl_id: str) -> Sample:
    """One run of one contestant on one workload, in its own event loop."""
    impl = IMPLS[impl_id]
    if impl.runtime == "asyncio":
        if workload.kind == "latency":
            return _peers.run_latency(workload)
        return _peers.run_throughput(workload)
    assert impl.opener is not None
    runner = {"throughput": run_throughput, "memory": run_memory, "latency": run_latency}[
        workload.kind
    ]
    return trio.run(runner, workload, impl.opener)


def run_parked_once(workload: Workload, impl_id: str) -> Parked:
    """The parked-caller probe of one contestant, in its own event loop."""
    impl = IMPLS[impl_id]
    if impl.runtime == "asyncio":
        return _peers.run_parked(workload)
    assert impl.opener is not None
    return trio.run(run_parked, workload, impl.opener)


RatioOf = Literal["throughput", "time", "peak"]
Clock = Literal["wall", "cpu"]


def ratio_of(workload: Workload) -> RatioOf:
    """What a workload's ratio compares (the issue states (a) as throughput)."""
    if workload.kind == "memory":
        return "peak"
    if workload.kind == "throughput" and not workload.items_per_key and not workload.cancel_percent:
        return "throughput"
    return "time"


def ratio(kind: RatioOf, sample: Sample, floor: Sample, clock: Clock = "wall") -> float:
    """``sample`` relative to ``floor``: throughput ratio, or time or peak-memory ratio.

    ``clock`` picks wall time or this process's CPU time (throughput workloads).
    """
    if kind == "peak":
        return sample.peak_bytes / max(1, floor.peak_bytes)
    if clock == "cpu":
        mine, theirs = sample.cpu_seconds, floor.cpu_seconds
    else:
        mine, theirs = sample.seconds, floor.seconds
    return theirs / mine if kind == "throughput" else mine / theirs


@dataclass
class Row:
    """One contestant's results on one workload."""

    impl: str
    label: str
    samples: list[Sample]
    #: The contestant the ratios are relative to.
    baseline: str = "floor"
    #: Per-repetition ratios to the baseline, by clock (empty when it did not run).
    ratios: dict[Clock, list[float]] = field(default_factory=dict)
    #: Per-repetition wall-time ratios to the workload's second baseline, if it ran.
    second_ratios: list[float] = field(default_factory=list)
    #: The parked-caller probe (GC-aware workloads).
    parked: Parked | None = None

    @property
    def seconds(self) -> float:
        """Median run time (throughput) or median latency (latency workloads)."""
        return statistics.median(s.seconds for s in self.samples)

    def ratio(self, clock: Clock = "wall") -> float | None:
        """Median of the per-repetition ratios."""
        ratios = self.ratios.get(clock)
        return statistics.median(ratios) if ratios else None

    def ratio_spread(self, clock: Clock = "wall") -> float | None:
        """Standard error of the median ratio, relative to it, estimated from the IQR.

        ``1.2533 * sigma / sqrt(n)`` with ``sigma = IQR / 1.349``: robust to the
        odd repetition that another process disturbed.
        """
        ratios = self.ratios.get(clock, [])
        if len(ratios) < 2:
            return None
        q1, median, q3 = (percentile(ratios, p) for p in (25, 50, 75))
        return 1.2533 * (q3 - q1) / 1.349 / math.sqrt(len(ratios)) / median

    def second_ratio(self) -> float | None:
        """Median of the per-repetition ratios to the second baseline."""
        return statistics.median(self.second_ratios) if self.second_ratios else None


@dataclass
class WorkloadResult:
    workload: Workload
    ratio_of: RatioOf
    rows: list[Row]
    skipped: list[str] = field(default_factory=list)


@dataclass
class SuiteResult:
    meta: dict[str, object]
    workloads: list[WorkloadResult]


def run_workload(
    workload: Workload,
    *,
    repeat: int,
    warmup: int = 1,
    impls: Sequence[str] | None = None,
    progress: Progress = _quiet,
    max_repeat: int | None = None,
    spread: float = DEFAULT_SPREAD,
    clock: Clock = "wall",
) -> WorkloadResult:
    """Warm up, then at least ``repeat`` interleaved repetitions of every contestant.

    While some contestant's ratio to the baseline (on ``clock``) has a standard
    error above ``spread``, repetitions go on, up to ``max_repeat`` in all
    (default: ``repeat``, so exactly ``repeat`` are run). A GC-aware workload
    then runs the parked-caller probe once per contestant.
    """
    wanted = list(workload.impls if impls is None else impls)
    skipped = [i for i in wanted if IMPLS[i].runtime == "asyncio" and not _peers.available()]
    ids = [i for i in wanted if i not in skipped]
    if not ids:
        return WorkloadResult(workload, ratio_of(workload), [], skipped)
    most = max(repeat, max_repeat if max_repeat is not None else repeat)
    if workload.kind == "memory":
        # Deterministic, and it warms up inside the run: one run, no more.
        warmup = 0
        repeat = most = 1
    probes = len(ids) if workload.gc_aware else 0
    for round_ in range(warmup):
        progress(f"({workload.id}) warm-up", round_, warmup)
        for impl_id in ids:
            run_once(workload, impl_id)
    samples: dict[str, list[Sample]] = {impl_id: [] for impl_id in ids}
    kind = ratio_of(workload)
    rep = 0
    while True:
        rows = _rows(workload, kind, ids, samples)
        if rep >= most or (rep >= repeat and _steady(rows, clock, spread)):
            break
        total = (repeat if rep < repeat else most) * len(ids) + probes
        shift = rep % len(ids)
        for done, impl_id in enumerate(ids[shift:] + ids[:shift]):
            progress(f"({workload.id}) repetition {rep + 1}", rep * len(ids) + done, total)
            gc.collect()
            samples[impl_id].append(run_once(workload, impl_id))
        rep += 1
    for done, row in enumerate(rows[:probes]):
        progress(f"({workload.id}) parked callers", rep * len(ids) + done, rep * len(ids) + probes)
        gc.collect()
        row.parked = run_parked_once(workload, row.impl)
    return WorkloadResult(workload, kind, rows, skipped)


def _rows(
    workload: Workload, kind: RatioOf, ids: list[str], samples: dict[str, list[Sample]]
) -> list[Row]:
    rows = []
    base, second = workload.baseline, workload.second_baseline
    for impl_id in ids:
        row = Row(impl_id, IMPLS[impl_id].label, samples[impl_id], baseline=base)
        mine = samples[impl_id]
        if base in samples:
            clocks: list[Clock] = ["wall", "cpu"] if workload.kind == "throughput" else ["wall"]
            row.ratios = {
                clock: [
                    ratio(kind, own, theirs, clock)
                    for own, theirs in zip(mine, samples[base], strict=True)
                ]
                for clock in clocks
            }
        if second is not None and second in samples:
            row.second_ratios = [
                ratio(kind, own, theirs) for own, theirs in zip(mine, samples[second], strict=True)
            ]
        rows.append(row)
    return rows


def _steady(rows: list[Row], clock: Clock, spread: float) -> bool:
    """Whether every ratio's standard error is known and within ``spread``."""
    for row in rows:
        clocks = [clock] if clock in row.ratios else list(row.ratios)
        for which in clocks:
            error = row.ratio_spread(which)
            if error is None or error > spread:
                return False
    return True


def meta(
    *,
    size: float,
    repeat: int,
    warmup: int,
    clock: Clock = "wall",
    max_repeat: int | None = None,
    spread: float = DEFAULT_SPREAD,
) -> dict[str, object]:
    """Where and how the suite ran."""
    import os
    import platform

    import trio_batch

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
        "trio_batch": trio_batch.__version__,
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "size": size,
        "repeat": repeat,
        "max_repeat": repeat if max_repeat is None else max_repeat,
        "spread": spread,
        "warmup": warmup,
        "clock": clock,
        "argv": sys.argv[1:],
    }
