"""``--plot DIR``: workload (f)'s µs per item against the number of clients.

One line per contestant (lean floor, bare limit, floor, Immediate, Size,
aiodataloader), log scale on the clients axis, written as ``perf_clients.png``.
matplotlib is imported only here, and only when a plot is asked for (it is in
the ``bench`` extra).
"""

from __future__ import annotations

from pathlib import Path

from ._report import median_us_per_call
from ._suite import WorkloadResult
from ._workloads import IMPLS

__all__ = ["PLOT_NAME", "write_plot"]

PLOT_NAME = "perf_clients.png"

#: Yardsticks dashed, trio_batch solid, the asyncio peer dotted.
_STYLE = {
    "lean": ("black", "--", "o"),
    "bare": ("grey", "--", "s"),
    "floor": ("tab:brown", "-.", "^"),
    "immediate": ("tab:blue", "-", "o"),
    "size": ("tab:orange", "-", "s"),
    "aiodataloader": ("tab:green", ":", "D"),
}


def write_plot(results: list[WorkloadResult], directory: Path, subtitle: str = "") -> Path:
    """Plot µs per item (median of the repetitions) against clients; return the file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    results = sorted((r for r in results if r.rows), key=lambda r: r.workload.clients)
    if not results:
        raise ValueError("no results of workload f to plot")
    impls: list[str] = []
    for result in results:
        impls += [row.impl for row in result.rows if row.impl not in impls]
    clients = [r.workload.clients for r in results]

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for impl in impls:
        xs, ys = [], []
        for result in results:
            for row in result.rows:
                if row.impl == impl:
                    xs.append(result.workload.clients)
                    ys.append(median_us_per_call(row))
        color, line, marker = _STYLE.get(impl, (None, "-", "x"))
        ax.plot(xs, ys, line, color=color, marker=marker, label=IMPLS[impl].label)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(clients))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{n:,}" for n in clients])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("closed-loop clients (log scale)")
    ax.set_ylabel("µs per item (lower is better)")
    title = "Workload (f): one key, batches of 100, one batch at a time, GC on"
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PLOT_NAME
    fig.savefig(path)
    plt.close(fig)
    return path
