"""``--tune``: run a grid of static policies and ``adaptive``, find the Pareto front.

For a scenario and one or more arrival-rate multipliers, :func:`tune` runs the
grid of :func:`policy_grid` (``Immediate``; ``Size``; ``Duration`` at delays
of 0.1x to 2x the cost of a one-item batch, of a typical item with item costs;
``Balanced`` at hints 2, 4, 8, ... up to ``max_batch_size``; and
``Adaptive()`` with no arguments) on the same
workload, each through the real batcher (``_run``), and reduces every run to
one point: throughput (items that got their output per simulated second;
rejected, withdrawn, failed and late items are losses and do not count) and
p99 latency (of the items that got their output).

From the points of each rate:

* the **Pareto front**: the policies no other policy beats on both
  throughput (higher) and p99 (lower);
* the **best static policy**: among the static policies whose throughput is
  at least 0.97x the best static throughput, the one with the lowest p99;
* the **bar** for ``adaptive``: throughput at least 0.97x the best static
  throughput, and p99 at most 1.15x the best static policy's p99.

Everything here is a pure function of the simulation results, so the table,
the JSON and the plot of the same run agree, and the same seed gives the same
bytes. Rejected alternative: counting losses as infinite latencies in the
p99. Under overload every policy loses more than 1% of items, every p99 would
be infinite and nothing could be compared; the losses are shown beside each
point instead, and they already lower its throughput.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

import attrs

import trio_batch as tb

from ._results import PolicyResult
from ._run import ProgressCallback, run_scenario
from ._scenario import Scenario

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "P99_FACTOR",
    "THROUGHPUT_SHARE",
    "TunePoint",
    "TuneRate",
    "TuneResult",
    "bar_line",
    "parse_rates",
    "policy_grid",
    "render_tune_json",
    "render_tune_table",
    "summary_markdown",
    "tune",
    "write_tune_plot",
]

#: ``adaptive`` (and the best static policy) must reach this share of the best
#: static throughput.
THROUGHPUT_SHARE: Final = 0.97
#: ``adaptive``'s p99 may be at most this many times the best static p99.
P99_FACTOR: Final = 1.15

#: Duration delays, as multiples of the cost of a one-item batch.
_DELAY_FACTORS: Final = (0.1, 0.25, 0.5, 1.0, 2.0)
#: Delays when a batch costs nothing.
_FALLBACK_DELAYS: Final = (0.001, 0.002, 0.005, 0.01, 0.02)
#: Balanced hints (those up to max_batch_size are used).
_HINTS: Final = (2, 4, 8, 16, 32)


def policy_grid(scenario: Scenario) -> tuple[tb.Policy, ...]:
    """The policies ``--tune`` runs for ``scenario`` (static ones, then adaptive)."""
    unit = scenario.process.per_batch + scenario.process.per_item
    costs = scenario.costs
    if costs is not None:
        # A typical item's cost (its median, or the constant value).
        typical = costs.median if costs.median is not None else costs.value
        unit += scenario.process.per_cost * (typical or 0.0)
    delays = (
        tuple(float(f"{unit * factor:.3g}") for factor in _DELAY_FACTORS)
        if unit > 0
        else _FALLBACK_DELAYS
    )
    hints = [hint for hint in _HINTS if hint <= scenario.limits.max_batch_size]
    return (
        tb.Immediate(),
        tb.Size(),
        *(tb.Duration(delay) for delay in sorted(set(delays))),
        *(tb.Balanced(hint) for hint in hints),
        tb.Adaptive(),
    )


def parse_rates(text: str) -> tuple[float, ...]:
    """Parse ``"0.25,1,4"`` into rate multipliers.

    Raises:
        ValueError: not a comma-separated list of finite numbers > 0.
    """
    rates = []
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            raise ValueError(f"--rates must be numbers separated by commas, got {text!r}") from None
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"--rates must be finite and > 0, got {part.strip()!r}")
        rates.append(rate)
    if len(set(rates)) != len(rates):
        raise ValueError(f"--rates repeats a rate: {text!r}")
    return tuple(rates)


@final
@attrs.frozen(kw_only=True)
class TunePoint:
    """One policy at one rate, reduced to what the front needs."""

    #: The policy spec (``"duration:0.005"``).
    policy: str
    #: Whether it is ``adaptive`` (not part of the static grid).
    adaptive: bool
    #: Items that got their output, per simulated second.
    throughput: float
    #: p99 latency of those items (seconds); ``None`` if none got an output.
    p99: float | None
    #: Items lost: rejected, withdrawn (gave up before processing), failed.
    rejected: int
    withdrawn: int
    failed: int
    #: Gave up after processing began (processed, output discarded).
    late: int
    #: Broken library guarantees seen in the run (empty if all is well).
    anomalies: tuple[str, ...]

    @classmethod
    def of(cls, result: PolicyResult) -> TunePoint:
        return cls(
            policy=result.policy,
            adaptive=result.policy.startswith("adaptive"),
            throughput=result.throughput,
            p99=result.latency(99),
            rejected=result.rejected,
            withdrawn=result.withdrawn,
            failed=result.failed,
            late=result.late,
            anomalies=result.anomalies,
        )

    @property
    def lost(self) -> int:
        """Rejected, withdrawn and failed items."""
        return self.rejected + self.withdrawn + self.failed

    @property
    def _p99(self) -> float:
        return math.inf if self.p99 is None else self.p99


def _dominates(a: TunePoint, b: TunePoint) -> bool:
    return (
        a.throughput >= b.throughput
        and a._p99 <= b._p99
        and (a.throughput > b.throughput or a._p99 < b._p99)
    )


@final
@attrs.frozen(kw_only=True)
class TuneRate:
    """The grid at one arrival rate: points, front, best static policy, the bar."""

    #: The multiplier of the scenario's arrival rate.
    multiplier: float
    #: The arrival rate simulated (arrivals per second, outside bursts).
    rate: float
    #: Items in the workload.
    items: int
    #: One point per policy, in grid order.
    points: tuple[TunePoint, ...]

    @property
    def front(self) -> tuple[TunePoint, ...]:
        """Points no other point dominates, by throughput (highest first)."""
        front = [p for p in self.points if not any(_dominates(q, p) for q in self.points)]
        return tuple(sorted(front, key=lambda p: (-p.throughput, p._p99)))

    @property
    def best_static(self) -> TunePoint:
        """Lowest p99 among static points within 0.97x of the best static throughput."""
        static = [p for p in self.points if not p.adaptive]
        top = max(p.throughput for p in static)
        eligible = [p for p in static if p.throughput >= THROUGHPUT_SHARE * top]
        return min(eligible, key=lambda p: (p._p99, -p.throughput))

    @property
    def adaptive(self) -> TunePoint | None:
        """The ``adaptive`` point (None if the grid had none)."""
        return next((p for p in self.points if p.adaptive), None)

    def ratios(self) -> tuple[float, float] | None:
        """``adaptive``'s (throughput, p99) as multiples of the bar's references."""
        adaptive = self.adaptive
        if adaptive is None:
            return None
        static = [p for p in self.points if not p.adaptive]
        top = max(p.throughput for p in static)
        best = self.best_static
        throughput = adaptive.throughput / top if top > 0 else 1.0
        if best.p99 is None or adaptive.p99 is None:
            p99 = math.inf if adaptive.p99 is None and best.p99 is not None else 1.0
        else:
            p99 = adaptive.p99 / best.p99 if best.p99 > 0 else 1.0
        return throughput, p99

    def meets_bar(self) -> bool | None:
        """Whether ``adaptive`` meets the bar (None without an adaptive point)."""
        ratios = self.ratios()
        if ratios is None:
            return None
        return ratios[0] >= THROUGHPUT_SHARE and ratios[1] <= P99_FACTOR


@final
@attrs.frozen(kw_only=True)
class TuneResult:
    """``--tune`` for one scenario: the grid at every rate."""

    #: The scenario (at multiplier 1).
    scenario: Scenario
    rates: tuple[TuneRate, ...]

    def to_data(self) -> dict[str, object]:
        """JSON-ready data: every point, the front and the bar, per rate."""

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 6)

        rates: list[dict[str, object]] = []
        for rate in self.rates:
            front = {p.policy for p in rate.front}
            ratios = rate.ratios()
            rates.append(
                {
                    "multiplier": rate.multiplier,
                    "rate": rate.rate,
                    "items": rate.items,
                    "points": [
                        {
                            "policy": p.policy,
                            "adaptive": p.adaptive,
                            "throughput": round(p.throughput, 6),
                            "p99_ms": ms(p.p99),
                            "rejected": p.rejected,
                            "withdrawn": p.withdrawn,
                            "failed": p.failed,
                            "late": p.late,
                            "on_front": p.policy in front,
                            "anomalies": list(p.anomalies),
                        }
                        for p in rate.points
                    ],
                    "front": [p.policy for p in rate.front],
                    "best_static": rate.best_static.policy,
                    "adaptive": None
                    if ratios is None
                    else {
                        "throughput_ratio": round(ratios[0], 6),
                        "p99_ratio": round(ratios[1], 6) if math.isfinite(ratios[1]) else None,
                        "meets_bar": rate.meets_bar(),
                    },
                }
            )
        return {
            "scenario": self.scenario.name,
            "seed": self.scenario.seed,
            "bar": {"throughput_share": THROUGHPUT_SHARE, "p99_factor": P99_FACTOR},
            "rates": rates,
        }


def tune(
    scenario: Scenario,
    multipliers: Sequence[float] = (1.0,),
    *,
    on_progress: ProgressCallback | None = None,
    jobs: int = 1,
) -> TuneResult:
    """Run the grid of :func:`policy_grid` at each multiple of the arrival rate.

    Must not be called from inside a Trio run. The numbers depend only on the
    scenario (seed included) and the multipliers, not on ``jobs`` (worker
    processes running policies side by side, as in
    :func:`~trio_batch.sim.run_scenario`).
    """
    grid = policy_grid(scenario)
    rates = []
    for index, multiplier in enumerate(multipliers):
        variant = attrs.evolve(
            scenario,
            policies=grid,
            arrivals=attrs.evolve(scenario.arrivals, rate=scenario.arrivals.rate * multiplier),
        )

        def report(
            done: int, total: int, label: str, index: int = index, multiplier: float = multiplier
        ) -> None:
            if on_progress is not None:
                on_progress(
                    index * total + done,
                    total * len(multipliers),
                    f"x{multiplier:g} {label}",
                )

        result = run_scenario(variant, on_progress=report, jobs=jobs)
        rates.append(
            TuneRate(
                multiplier=multiplier,
                rate=variant.arrivals.rate,
                items=result.results[0].items if result.results else 0,
                points=tuple(TunePoint.of(r) for r in result.results),
            )
        )
    return TuneResult(scenario=scenario, rates=tuple(rates))


# -- reports ---------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _ratio(value: float) -> str:
    return f"{value:.3f}x" if math.isfinite(value) else "inf"


def bar_line(rate: TuneRate) -> str:
    """One sentence: where ``adaptive`` lands against the bar."""
    ratios = rate.ratios()
    if ratios is None:
        return "no adaptive point"
    verdict = "meets the bar" if rate.meets_bar() else "MISSES the bar"
    return (
        f"adaptive: throughput {_ratio(ratios[0])} of the best static "
        f"(bar >= {THROUGHPUT_SHARE:g}x), p99 {_ratio(ratios[1])} of "
        f"{rate.best_static.policy}'s (bar <= {P99_FACTOR:g}x): {verdict}"
    )


def render_tune_table(results: Sequence[TuneResult]) -> str:
    """The human report: per scenario and rate, every point, the front, the bar."""
    lines: list[str] = []
    for result in results:
        for rate in result.rates:
            front = {p.policy for p in rate.front}
            best = rate.best_static.policy
            lines.append(
                f"scenario {result.scenario.name} (seed {result.scenario.seed}), "
                f"rate x{rate.multiplier:g} = {rate.rate:g}/s, {rate.items} items"
            )
            header = ("policy", "items/s", "p99 ms", "rejected", "withdrawn", "failed", "")
            rows = [header]
            for p in sorted(rate.points, key=lambda p: (-p.throughput, p._p99)):
                marks = []
                if p.policy in front:
                    marks.append("front")
                if p.policy == best:
                    marks.append("best static")
                if p.adaptive:
                    marks.append("adaptive")
                rows.append(
                    (
                        p.policy,
                        f"{p.throughput:.0f}",
                        _ms(p.p99),
                        str(p.rejected),
                        str(p.withdrawn),
                        str(p.failed),
                        ", ".join(marks),
                    )
                )
            widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
            for row in rows:
                cells = [row[0].ljust(widths[0])]
                cells += [
                    cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:-1], strict=True)
                ]
                cells.append(row[-1])
                lines.append("  ".join(cells).rstrip())
            lines.append(bar_line(rate))
            for p in rate.points:
                lines.extend(f"ANOMALY ({p.policy}): {anomaly}" for anomaly in p.anomalies)
            lines.append("")
    lines.append(summary_markdown(results))
    return "\n".join(lines)


def summary_markdown(results: Sequence[TuneResult]) -> str:
    """The bar for every scenario and rate, as a Markdown table (docs/policies.md)."""
    lines = [
        "| scenario | rate | best static | its items/s | its p99 ms "
        "| adaptive items/s | adaptive p99 ms | throughput | p99 | bar |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for result in results:
        for rate in result.rates:
            best = rate.best_static
            adaptive = rate.adaptive
            ratios = rate.ratios()
            if adaptive is None or ratios is None:
                continue
            lines.append(
                f"| {result.scenario.name} | x{rate.multiplier:g} ({rate.rate:g}/s) "
                f"| {best.policy} | {best.throughput:.0f} | {_ms(best.p99)} "
                f"| {adaptive.throughput:.0f} | {_ms(adaptive.p99)} "
                f"| {_ratio(ratios[0])} | {_ratio(ratios[1])} "
                f"| {'meets' if rate.meets_bar() else '**misses**'} |"
            )
    return "\n".join(lines) + "\n"


def render_tune_json(results: Sequence[TuneResult]) -> str:
    """The machine report: every scenario's :meth:`TuneResult.to_data`."""
    return json.dumps([result.to_data() for result in results], indent=2) + "\n"


# -- plot --------------------------------------------------------------------------


def write_tune_plot(results: Sequence[TuneResult], directory: Path) -> list[Path]:
    """Draw each scenario's fronts (one panel per rate) into ``tune-NAME.png``.

    Raises:
        PlottingUnavailable: matplotlib is not installed.
        OSError: a file cannot be written.
    """
    from ._plot import require_matplotlib

    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for result in results:
        count = len(result.rates)
        figure = Figure(figsize=(4.2 * count, 4.2), dpi=110, layout="constrained")
        FigureCanvasAgg(figure)
        axes_row = figure.subplots(1, count, squeeze=False)[0]
        for axes, rate in zip(axes_row, result.rates, strict=True):
            _draw_front(axes, rate)
        figure.suptitle(
            f"--tune: throughput against p99, scenario {result.scenario.name}, "
            f"seed {result.scenario.seed}"
        )
        path = directory / f"tune-{result.scenario.name}.png"
        figure.savefig(path)
        paths.append(path)
    return paths


def _draw_front(axes: Axes, rate: TuneRate) -> None:
    points = [p for p in rate.points if p.p99 is not None]
    front = {p.policy for p in rate.front}
    best = rate.best_static.policy
    static = [p for p in points if not p.adaptive]
    axes.scatter(
        [p._p99 * 1000 for p in static],
        [p.throughput for p in static],
        s=18,
        color="#999999",
        label="static policies",
        zorder=2,
    )
    line = sorted((p for p in points if p.policy in front), key=lambda p: p._p99)
    axes.plot(
        [p._p99 * 1000 for p in line],
        [p.throughput for p in line],
        color="#1f77b4",
        drawstyle="steps-post",
        label="Pareto front",
        zorder=1,
    )
    for p in points:
        if p.policy == best:
            axes.scatter(
                [p._p99 * 1000], [p.throughput], s=70, marker="s", color="#2ca02c",
                label=f"best static ({p.policy})", zorder=3,
            )  # fmt: skip
        if p.adaptive:
            axes.scatter(
                [p._p99 * 1000], [p.throughput], s=90, marker="*", color="#d62728",
                label="adaptive", zorder=4,
            )  # fmt: skip
    spread = [p._p99 for p in points if p._p99 > 0]
    if spread and max(spread) / min(spread) > 30:
        axes.set_xscale("log")
    axes.set_title(f"x{rate.multiplier:g} ({rate.rate:g}/s)", loc="left", fontsize=10)
    axes.set_xlabel("p99 latency (simulated ms)" + (", log" if axes.get_xscale() == "log" else ""))
    axes.set_ylabel("items/s with their output")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
