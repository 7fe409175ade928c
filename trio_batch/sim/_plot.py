"""PNG plots of a run, with matplotlib (the optional ``sim`` extra).

matplotlib is imported here, inside the functions, and nowhere else: the core
package and ``import trio_batch.sim`` never need it. Figures are drawn with
the object API on an Agg canvas (no pyplot, no global figure state, no GUI
backend), so plotting works headless and leaves the caller's matplotlib
configuration alone.

Every figure compares the policies of one scenario, each with its own style,
the same in every figure: a colour from ``tab20`` (its ten dark shades first,
then the ten light ones, so no colour repeats up to 20 policies) and a line
style from a cycle of four, so two policies with identical numbers still show
as two lines, one dashed over the other.

What the figures promise:

- The latency CDF counts *every* caller, so a curve ends at the share of
  callers that got an output: a policy that sheds load ends below 1.0.
- Panels that compare policies side by side (batch sizes) share one axis and
  one scale, linear or logarithmic for all of them.
- Counts (batches, items) get integer ticks.
- When one policy's numbers dwarf the others' (``Size`` stranding cold keys,
  say), an axis turns logarithmic and its label says so.
"""

from __future__ import annotations

import importlib
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from ._results import PolicyResult, SimulationResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "PLOT_FILES",
    "PlottingUnavailable",
    "check_plot_directory",
    "require_matplotlib",
    "write_plots",
]

#: The files :func:`write_plots` writes, in order.
PLOT_FILES: Final = (
    "latency_cdf.png",
    "batch_sizes.png",
    "latency_over_time.png",
    "queued_items.png",
)

_INSTALL_HINT: Final = "pip install 'trio_batch[sim]'"
_DPI: Final = 110
#: Points kept per CDF line (quantiles), enough to look smooth.
_CDF_POINTS: Final = 2000
#: Arrival-time windows for latency over time.
_WINDOWS: Final = 60
#: Above this ratio between the largest and smallest series, use a log axis.
_LOG_SPREAD: Final = 30.0
#: Bars in a batch-size histogram, at most (wider bins beyond).
_MAX_BINS: Final = 120
_LINE_STYLES: Final = ("-", "--", "-.", ":")


class PlottingUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> None:
    """Check that plots can be drawn, before spending time on a run.

    Raises:
        PlottingUnavailable: matplotlib cannot be imported; the message says
            what to install.
    """
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise PlottingUnavailable(f"--plot needs matplotlib: {_INSTALL_HINT}") from None


def check_plot_directory(directory: str | os.PathLike[str]) -> None:
    """Check that :func:`write_plots` could write into ``directory``, changing nothing.

    ``directory`` must be a writable directory, or not exist yet below one
    that is; a plot file already in it must be a writable file.

    Raises:
        OSError: it could not; the message is one line that names the path.
    """
    path = Path(directory)
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{path} is not writable")
        for name in PLOT_FILES:
            target = path / name
            if target.exists() and (target.is_dir() or not os.access(target, os.W_OK)):
                raise PermissionError(f"{target} cannot be overwritten")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create {path}: {parent} is not writable")


class _Style(NamedTuple):
    colour: str
    line: str


# -- helpers -----------------------------------------------------------------------


def _new_figure(
    rows: int = 1, height: float = 4.8, *, sharey: bool = False
) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, 1, sharex=True, sharey=sharey, squeeze=False)
    return figure, [row[0] for row in grid]


def _styles(count: int) -> list[_Style]:
    """One style per policy: no colour repeats up to 20, and line styles vary."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # the dark shades, then the light ones
    return [
        _Style(
            colour=to_hex(palette(order[index % 20])),
            line=_LINE_STYLES[(index + index // 20) % len(_LINE_STYLES)],
        )
        for index in range(count)
    ]


def _title(figure: Figure, result: SimulationResult, what: str) -> None:
    scenario = result.scenario
    items = result.results[0].items if result.results else 0
    figure.suptitle(f"{what} - scenario {scenario.name}, seed {scenario.seed}, {items} items")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.3g} ms" if ms < 1000 else f"{ms:,.0f} ms"


def _spread(values: Sequence[float]) -> float:
    """How many times the largest positive value is the smallest one."""
    positive = [value for value in values if value > 0]
    return max(positive) / min(positive) if positive else 1.0


def _legend_outside(axes: Axes, fontsize: float = 9) -> None:
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=fontsize)


def _scale_note(axes: Axes) -> str:
    return {"log": " (log scale)", "symlog": " (log scale above 10)"}.get(axes.get_yscale(), "")


def _integer_ticks(axes: Axes, which: str = "y") -> None:
    """Counts: no 2.5 batches on a linear axis."""
    from matplotlib.ticker import MaxNLocator

    axis = axes.xaxis if which == "x" else axes.yaxis
    axis.set_major_locator(MaxNLocator(integer=True))


def _plain_numbers(axes: Axes, which: str) -> None:
    """Label a log axis 20, 50, 100 rather than 2x10^1, 5x10^1, 10^2."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = axes.xaxis if which == "x" else axes.yaxis
    axis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    low, high = axes.get_xlim() if which == "x" else axes.get_ylim()
    if high / max(low, 1e-12) < 1000:
        axis.set_minor_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    else:
        axis.set_minor_formatter(NullFormatter())


def _shade_bursts(result: SimulationResult, axes: Axes, end: float) -> None:
    """Shade the scenario's burst periods up to ``end`` simulated seconds."""
    burst = result.scenario.arrivals.burst
    if burst is None or burst.start is None:
        return
    label: str | None = f"burst (x{burst.factor:g} rate)"
    period = 0
    while (start := burst.start + period * burst.every) < end:
        axes.axvspan(start, start + burst.length, color="grey", alpha=0.12, lw=0, label=label)
        label = None
        period += 1


def _no_data(axes: Axes) -> None:
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)


# -- the figures -------------------------------------------------------------------


def _latency_cdf(result: SimulationResult, styles: Sequence[_Style]) -> Figure:
    figure, (axes,) = _new_figure()
    runs = list(zip(result.results, styles, strict=True))
    with_data = [(r, style) for r, style in runs if r.ok]
    log_x = bool(with_data) and all(min(r.ok_latencies) > 0 for r, _ in with_data)
    for r, style in runs:
        served = r.ok / r.items if r.items else 0.0
        label = f"{r.policy}: {served:.1%} served"
        if r.ok:
            label += f"; p50 {_ms(r.latency(50))}, p99 {_ms(r.latency(99))} of those"
        values = sorted(r.ok_latencies)
        n = len(values)
        step = max(1, n // _CDF_POINTS)
        indices = [*range(0, n, step), n - 1] if n else []
        # The share of *all* callers served within each latency: a policy
        # that sheds load ends below 1.0, at its share of outputs.
        axes.step(
            [values[i] * 1000 for i in indices],
            [(i + 1) / r.items for i in indices],
            where="post",
            color=style.colour,
            linestyle=style.line,
            linewidth=1.8,
            label=label,
        )
        if n:
            axes.plot(values[-1] * 1000, served, marker="o", color=style.colour, markersize=5)
    if with_data:
        if log_x:
            axes.set_xscale("log")
            _plain_numbers(axes, "x")
        for level in (0.5, 0.9, 0.99, 1.0):
            axes.axhline(level, color="grey", linewidth=0.8, linestyle=":")
        for level in (0.5, 0.9, 0.99):
            axes.annotate(
                f"{level:.0%}",
                xy=(0.0, level),
                xycoords=("axes fraction", "data"),
                xytext=(4, 2),
                textcoords="offset points",
                va="bottom",
                fontsize=8,
                color="grey",
            )
        if len(runs) > 5:
            _legend_outside(axes, fontsize=8)
        else:
            axes.legend(loc="lower right", fontsize=8)
    else:
        _no_data(axes)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("latency, arrival to output (simulated ms" + (", log scale)" if log_x else ")"))
    axes.set_ylabel("share of all callers served")
    axes.grid(True, which="major", alpha=0.3)
    _title(figure, result, "Latency CDF; a curve ends (o) at its share of outputs")
    return figure


def _histogram_bins(result: SimulationResult) -> tuple[list[float], float]:
    """Bin edges for batch sizes, and the right end of the axis.

    The axis reaches ``max_batch_size`` when that is not far beyond the largest
    batch seen; bins are one size wide, or wider beyond :data:`_MAX_BINS` sizes.
    """
    largest = max((max(r.batch_sizes) for r in result.results if r.batch_sizes), default=1)
    limit = max((r.max_batch_size for r in result.results), default=1)
    upper = limit if limit <= max(4 * largest, 64) else largest
    width = max(1, math.ceil(upper / _MAX_BINS))
    edges = [0.5 + width * index for index in range(math.ceil(upper / width) + 1)]
    return edges, edges[-1]


def _batch_sizes(result: SimulationResult, styles: Sequence[_Style]) -> Figure:
    if any(r.batch_costs for r in result.results):
        return _batch_sizes_and_costs(result, styles)
    count = len(result.results)
    figure, rows = _new_figure(count, height=1.0 + 1.7 * count, sharey=True)
    edges, right = _histogram_bins(result)
    # One scale for every panel: logarithmic if any panel needs it.
    heights = [list(Counter(r.batch_sizes).values()) for r in result.results]
    log_y = any(_spread(h) > _LOG_SPREAD for h in heights)
    for axes, r, style in zip(rows, result.results, styles, strict=True):
        if r.batch_sizes:
            axes.hist(r.batch_sizes, bins=edges, color=style.colour, rwidth=0.85)
            full = sum(1 for size in r.batch_sizes if size == r.max_batch_size)
            label = (
                f"{r.policy}: {r.batches} batches, mean {r.mean_batch_size:.1f} items, "
                f"{full / r.batches:.0%} full"
            )
        else:
            _no_data(axes)
            label = f"{r.policy}: no batches"
        axes.set_title(label, loc="left", fontsize=10)
        axes.grid(True, axis="y", alpha=0.3)
    for axes in rows:
        if log_y:
            axes.set_yscale("log")
            _plain_numbers(axes, "y")
        else:
            _integer_ticks(axes)
        axes.set_ylabel("batches" + (" (log)" if log_y else ""))
    rows[-1].set_xlim(0.5, right)
    _integer_ticks(rows[-1], "x")
    width = edges[1] - edges[0]
    bins_note = "" if width == 1 else f", bins of {width:g} sizes"
    limit = max((r.max_batch_size for r in result.results), default=1)
    rows[-1].set_xlabel(f"items per process call (max_batch_size {limit}{bins_note})")
    _title(figure, result, "Batch sizes")
    return figure


def _batch_sizes_and_costs(result: SimulationResult, styles: Sequence[_Style]) -> Figure:
    """Batch sizes (left) and batch costs (right), one row per policy.

    For scenarios with item costs: the count bound and the cost bound side by
    side, each with its limit marked, so one sees which of the two shaped the
    batches.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = len(result.results)
    figure = Figure(figsize=(12.0, 1.0 + 1.7 * count), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(count, 2, sharex="col", sharey="col", squeeze=False)
    edges, right = _histogram_bins(result)
    bound = next((r.max_batch_cost for r in result.results if r.max_batch_cost), None)
    largest = max((max(r.batch_costs) for r in result.results if r.batch_costs), default=1.0)
    top = max(largest, bound or 0.0) or 1.0
    cost_edges = [top * index / 60 for index in range(61)]
    for (size_axes, cost_axes), r, style in zip(grid, result.results, styles, strict=True):
        if r.batch_sizes:
            size_axes.hist(r.batch_sizes, bins=edges, color=style.colour, rwidth=0.85)
            size_axes.set_title(
                f"{r.policy}: {r.batches} batches, mean {r.mean_batch_size:.1f} items",
                loc="left",
                fontsize=10,
            )
        else:
            _no_data(size_axes)
            size_axes.set_title(f"{r.policy}: no batches", loc="left", fontsize=10)
        if r.batch_costs:
            cost_axes.hist(r.batch_costs, bins=cost_edges, color=style.colour, rwidth=0.85)
            text = f"mean cost {r.mean_batch_cost:.4g}"
            if bound is not None:
                over = sum(1 for cost in r.batch_costs if cost > bound)
                text += f", {r.cost_fill_ratio:.0%} of the bound"
                if over:
                    text += f", {over} lone oversize"
            cost_axes.set_title(text, loc="left", fontsize=10)
        else:
            _no_data(cost_axes)
        if bound is not None:
            cost_axes.axvline(bound, color="black", linestyle="--", linewidth=1)
        size_axes.axvline(r.max_batch_size, color="black", linestyle="--", linewidth=1)
        for axes in (size_axes, cost_axes):
            axes.grid(True, axis="y", alpha=0.3)
            _integer_ticks(axes)
        size_axes.set_ylabel("batches")
    grid[-1][0].set_xlim(0.5, max(right, result.results[0].max_batch_size + 0.5))
    _integer_ticks(grid[-1][0], "x")
    limit = max((r.max_batch_size for r in result.results), default=1)
    grid[-1][0].set_xlabel(f"items per process call (max_batch_size {limit}, dashed)")
    bound_note = "unbounded" if bound is None else f"max_batch_cost {bound:g}, dashed"
    grid[-1][1].set_xlabel(f"total item cost per process call ({bound_note})")
    _title(figure, result, "Batch sizes and batch costs")
    return figure


def _latency_over_time(result: SimulationResult, styles: Sequence[_Style]) -> Figure:
    figure, (p50_axes, p99_axes) = _new_figure(2, height=6.4, sharey=True)
    series = [
        (r, style, r.latency_over_time(_WINDOWS))
        for r, style in zip(result.results, styles, strict=True)
    ]
    drawn = [(r, style, points) for r, style, points in series if points]
    log_y = bool(drawn) and min(p50 for _, _, points in drawn for _, p50, _ in points) > 0
    for axes, column in ((p50_axes, 1), (p99_axes, 2)):
        for r, style, points in drawn:
            axes.plot(
                [point[0] for point in points],
                [point[column] * 1000 for point in points],
                color=style.colour,
                linestyle=style.line,
                linewidth=1.6,
                label=r.policy,
            )
        axes.grid(True, which="major", alpha=0.3)
    if drawn:
        end = max(r.ok_arrivals[-1] for r, _, _ in drawn)
        for axes in (p50_axes, p99_axes):
            if log_y:
                axes.set_yscale("log")
                _plain_numbers(axes, "y")
            _shade_bursts(result, axes, end)
        _legend_outside(p50_axes, fontsize=8)
    else:
        _no_data(p50_axes)
    unit = "simulated ms" + (", log scale" if log_y else "")
    p50_axes.set_ylabel(f"p50 latency ({unit})")
    p99_axes.set_ylabel(f"p99 latency ({unit})")
    p50_axes.set_title("median latency of the callers arriving in each window", loc="left")
    p99_axes.set_title("99th percentile", loc="left")
    p99_axes.set_xlabel(f"arrival time (simulated s, {_WINDOWS} windows)")
    _title(figure, result, "Latency by arrival time (callers that got an output)")
    return figure


def _queued_items(result: SimulationResult, styles: Sequence[_Style]) -> Figure:
    figure, (queued, started) = _new_figure(2, height=6.4)
    with_data = [(r, s) for r, s in zip(result.results, styles, strict=True) if r.samples]
    panels: tuple[tuple[Axes, Callable[[PolicyResult], list[int]]], ...] = (
        (queued, lambda r: [s.queued_items for s in r.samples]),
        (started, lambda r: [s.processing_batches for s in r.samples]),
    )
    for axes, values in panels:
        peaks = []
        for r, style in with_data:
            series = values(r)
            peaks.append(max(series))
            axes.plot(
                [s.time for s in r.samples],
                series,
                color=style.colour,
                linestyle=style.line,
                linewidth=1.3,
                label=r.policy,
                drawstyle="steps-post",
            )
        if _spread(peaks) > _LOG_SPREAD:
            axes.set_yscale("symlog", linthresh=10)
        else:
            _integer_ticks(axes)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
    if with_data:
        end = max(r.samples[-1].time for r, _ in with_data)
        _shade_bursts(result, queued, end)
        _shade_bursts(result, started, end)
        _legend_outside(queued)
    else:
        _no_data(queued)
    queued.set_title("items waiting in batches that have not begun processing", loc="left")
    queued.set_ylabel("queued items" + _scale_note(queued))
    started.set_title("batches acquiring or processing, all keys together", loc="left")
    started.set_ylabel("started batches" + _scale_note(started))
    started.set_xlabel("simulated time (s); sampled from Batcher.statistics()")
    _title(figure, result, "Batcher statistics over time")
    return figure


def write_plots(result: SimulationResult, directory: str | os.PathLike[str]) -> list[Path]:
    """Write the PNGs of :data:`PLOT_FILES` into ``directory`` (created if needed).

    Returns:
        The paths written.

    Raises:
        PlottingUnavailable: matplotlib is not installed.
        OSError: the directory or a file cannot be written.
    """
    require_matplotlib()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    styles = _styles(len(result.results))
    drawers = (_latency_cdf, _batch_sizes, _latency_over_time, _queued_items)
    paths = []
    for name, draw in zip(PLOT_FILES, drawers, strict=True):
        path = folder / name
        draw(result, styles).savefig(path)
        paths.append(path)
    return paths
