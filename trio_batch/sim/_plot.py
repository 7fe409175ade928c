"""PNG plots of a run, with matplotlib (the optional ``sim`` extra).

matplotlib is imported here, inside the functions, and nowhere else: the core
package and ``import trio_batch.sim`` never need it. Figures are drawn with
the object API on an Agg canvas (no pyplot, no global figure state, no GUI
backend), so plotting works headless and leaves the caller's matplotlib
configuration alone.

Every figure compares the policies of one scenario, one colour per policy in
the scenario's order, the same colour in every figure. When one policy's
numbers dwarf the others' (``Size`` stranding cold keys, say), the axis turns
logarithmic and its label says so, so that the small ones stay readable.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._results import PolicyResult, SimulationResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOT_FILES", "PlottingUnavailable", "require_matplotlib", "write_plots"]

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


# -- helpers -----------------------------------------------------------------------


def _new_figure(rows: int = 1, height: float = 4.8) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, 1, sharex=True, squeeze=False)
    return figure, [row[0] for row in grid]


def _colours(count: int) -> list[str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = colormaps["tab10"]
    return [to_hex(palette(index % 10)) for index in range(count)]


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
    start = burst.start
    label: str | None = f"burst (x{burst.factor:g} rate)"
    while start < end:
        axes.axvspan(start, start + burst.length, color="grey", alpha=0.12, lw=0, label=label)
        label = None
        start += burst.every


def _no_data(axes: Axes) -> None:
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)


# -- the figures -------------------------------------------------------------------


def _latency_cdf(result: SimulationResult, colours: Sequence[str], path: Path) -> None:
    figure, (axes,) = _new_figure()
    with_data = [(r, c) for r, c in zip(result.results, colours, strict=True) if r.ok]
    log_x = bool(with_data) and all(r.sorted_latencies[0] > 0 for r, _ in with_data)
    for r, colour in with_data:
        values = r.sorted_latencies
        n = len(values)
        step = max(1, n // _CDF_POINTS)
        indices = [*range(0, n, step), n - 1]
        axes.step(
            [values[i] * 1000 for i in indices],
            [(i + 1) / n for i in indices],
            where="post",
            color=colour,
            linewidth=1.8,
            label=f"{r.policy}: p50 {_ms(r.latency(50))}, p99 {_ms(r.latency(99))}",
        )
    if with_data:
        if log_x:
            axes.set_xscale("log")
            _plain_numbers(axes, "x")
        for level in (0.5, 0.9, 0.99):
            axes.axhline(level, color="grey", linewidth=0.8, linestyle=":")
            axes.annotate(
                f"p{level * 100:g}",
                xy=(0.0, level),
                xycoords=("axes fraction", "data"),
                xytext=(4, 2),
                textcoords="offset points",
                va="bottom",
                fontsize=8,
                color="grey",
            )
        axes.legend(loc="lower right", fontsize=9)
    else:
        _no_data(axes)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("latency, arrival to output (simulated ms" + (", log scale)" if log_x else ")"))
    axes.set_ylabel("fraction of callers that got an output")
    axes.grid(True, which="major", alpha=0.3)
    _title(figure, result, "Latency CDF")
    figure.savefig(path)


def _batch_sizes(result: SimulationResult, colours: Sequence[str], path: Path) -> None:
    count = len(result.results)
    figure, rows = _new_figure(count, height=1.0 + 1.7 * count)
    largest = max((r.max_batch_size for r in result.results), default=1)
    bins = [size - 0.5 for size in range(1, largest + 2)]
    for axes, r, colour in zip(rows, result.results, colours, strict=True):
        if r.batch_sizes:
            axes.hist(r.batch_sizes, bins=bins, color=colour, edgecolor=colour)
            if _spread(list(Counter(r.batch_sizes).values())) > _LOG_SPREAD:
                axes.set_yscale("log")
            full = sum(1 for size in r.batch_sizes if size == r.max_batch_size)
            label = (
                f"{r.policy}: {r.batches} batches, mean {r.mean_batch_size:.1f} items, "
                f"{full / r.batches:.0%} full"
            )
        else:
            _no_data(axes)
            label = f"{r.policy}: no batches"
        axes.set_title(label, loc="left", fontsize=10)
        axes.set_ylabel("batches" + (" (log)" if axes.get_yscale() == "log" else ""))
        axes.grid(True, axis="y", alpha=0.3)
    rows[-1].set_xlim(0.5, largest + 0.5)
    rows[-1].set_xlabel(f"items per process call (max_batch_size {largest})")
    _title(figure, result, "Batch sizes")
    figure.savefig(path)


def _latency_over_time(result: SimulationResult, colours: Sequence[str], path: Path) -> None:
    figure, (axes,) = _new_figure()
    lowest: list[float] = []
    for r, colour in zip(result.results, colours, strict=True):
        points = r.latency_over_time(_WINDOWS)
        if not points:
            continue
        times = [t for t, _, _ in points]
        p50 = [v * 1000 for _, v, _ in points]
        p99 = [v * 1000 for _, _, v in points]
        lowest.append(min(p50))
        axes.plot(times, p50, color=colour, linewidth=1.8, label=f"{r.policy} p50")
        axes.plot(times, p99, color=colour, linewidth=1.1, linestyle="--", label=f"{r.policy} p99")
    log_y = bool(lowest) and min(lowest) > 0
    if lowest:
        if log_y:
            axes.set_yscale("log")
            _plain_numbers(axes, "y")
        _shade_bursts(result, axes, max(r.ok_arrivals[-1] for r in result.results if r.ok))
        _legend_outside(axes, fontsize=8)
    else:
        _no_data(axes)
    axes.set_xlabel(f"arrival time (simulated s, {_WINDOWS} windows)")
    axes.set_ylabel("latency (simulated ms" + (", log scale)" if log_y else ")"))
    axes.grid(True, which="major", alpha=0.3)
    _title(figure, result, "Latency by arrival time, p50 solid, p99 dashed")
    figure.savefig(path)


def _queued_items(result: SimulationResult, colours: Sequence[str], path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    figure, (queued, started) = _new_figure(2, height=6.4)
    with_data = [(r, c) for r, c in zip(result.results, colours, strict=True) if r.samples]
    panels: tuple[tuple[Axes, Callable[[PolicyResult], list[int]]], ...] = (
        (queued, lambda r: [s.queued_items for s in r.samples]),
        (started, lambda r: [s.processing_batches for s in r.samples]),
    )
    for axes, values in panels:
        peaks = []
        for r, colour in with_data:
            series = values(r)
            peaks.append(max(series))
            axes.plot(
                [s.time for s in r.samples],
                series,
                color=colour,
                linewidth=1.3,
                label=r.policy,
                drawstyle="steps-post",
            )
        if _spread(peaks) > _LOG_SPREAD:
            axes.set_yscale("symlog", linthresh=10)
        else:
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts, not fractions
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
    figure.savefig(path)


def write_plots(result: SimulationResult, directory: Path) -> list[Path]:
    """Write the PNGs of :data:`PLOT_FILES` into ``directory`` (created if needed).

    Returns:
        The paths written.

    Raises:
        PlottingUnavailable: matplotlib is not installed.
        OSError: the directory or a file cannot be written.
    """
    require_matplotlib()
    directory.mkdir(parents=True, exist_ok=True)
    colours = _colours(len(result.results))
    drawers = (_latency_cdf, _batch_sizes, _latency_over_time, _queued_items)
    paths = []
    for name, draw in zip(PLOT_FILES, drawers, strict=True):
        path = directory / name
        draw(result, colours, path)
        paths.append(path)
    return paths
