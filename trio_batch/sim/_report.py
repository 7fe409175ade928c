"""Reports for people (a table) and for machines (JSON).

Both are pure functions of a :class:`SimulationResult`: no wall-clock time, no
paths, nothing that differs between two runs of the same scenario and seed, so
their output can be compared byte for byte.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from typing import Final, final

import attrs

from ._results import PolicyResult, SimulationResult
from ._scenario import Scenario

__all__ = ["TABLE_WIDTH", "describe_scenario", "render_json", "render_table"]


def _seconds(value: float) -> str:
    return f"{value * 1000:g} ms" if value < 1 else f"{value:g} s"


def describe_scenario(scenario: Scenario) -> list[str]:
    """Lines that say what was simulated, for the head of the table."""
    head = f"scenario {scenario.name} (seed {scenario.seed})"
    if scenario.description:
        head += f": {scenario.description}"

    arrivals = scenario.arrivals
    arrival_text = f"arrivals: Poisson {arrivals.rate:g}/s"
    if arrivals.burst is not None:
        burst = arrivals.burst
        arrival_text += (
            f" (x{burst.factor:g} for {_seconds(burst.length)} every {_seconds(burst.every)})"
        )
    if scenario.items is not None:
        arrival_text += f", {scenario.items} items"
    else:
        assert scenario.duration is not None
        arrival_text += f" for {_seconds(scenario.duration)}"
    keys = scenario.keys
    if keys.distribution == "single":
        key_text = "keys: one"
    elif keys.distribution == "uniform":
        key_text = f"keys: {keys.count}, uniform"
    else:
        key_text = f"keys: {keys.count}, Zipf s={keys.exponent:g}"

    process = scenario.process
    cost = f"process: {_seconds(process.per_batch)} + {_seconds(process.per_item)}/item"
    if process.per_cost:
        cost += f" + {_seconds(process.per_cost)}/unit of cost"
    if process.jitter == "erlang":
        cost += f", Erlang k={process.erlang_k} jitter"
    elif process.jitter == "lognormal":
        cost += f", log-normal sigma={process.sigma:g} jitter"
    if process.error_rate:
        cost += f", {process.error_rate:.2%} of calls fail"
    resources = "no pool"
    if scenario.pool is not None:
        resources = f"pool: {scenario.pool.size} (connect {_seconds(scenario.pool.connect)})"

    limits = scenario.limits
    limit_text = (
        f"limits: batch {limits.max_batch_size}, concurrency {limits.max_key_concurrency}, "
        f"queue {limits.max_batch_queue_size} ({limits.overflow.value} when full)"
    )
    if limits.max_batch_cost is not None:
        limit_text += (
            f", batch cost {limits.max_batch_cost:g} (oversize items: {limits.oversize.value})"
        )
    costs = scenario.costs
    cost_text = ""
    if costs is not None:
        if costs.distribution == "constant":
            cost_text = f"item costs: {costs.value:g} each"
        elif costs.distribution == "uniform":
            cost_text = f"item costs: uniform {costs.low:g} to {costs.high:g}"
        else:
            cost_text = f"item costs: log-normal, median {costs.median:g}, sigma {costs.sigma:g}"
        if costs.integer:
            cost_text += ", whole numbers"
    timeouts = scenario.timeouts
    patience = "callers: all patient"
    if timeouts is not None and timeouts.fraction:
        patience = f"callers: {timeouts.fraction:.0%} give up after {_seconds(timeouts.after)}"
    return [
        head,
        f"  {arrival_text}; {key_text}" + (f"; {cost_text}" if cost_text else ""),
        f"  {cost}; {resources}",
        f"  {limit_text}; {patience}",
    ]


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    ms = value * 1000
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def _fixed(digits: int) -> Callable[[float | None], str]:
    def render(value: float | None) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return render


#: The width that the table fits by default, in characters.
TABLE_WIDTH: Final = 100


@final
@attrs.frozen
class _Column:
    header: str
    render: Callable[[PolicyResult], str]
    #: Left out first when the table is too wide: higher goes first; 0 never.
    drop: int = 0
    left: bool = False


_COLUMNS: Final = (
    _Column("policy", lambda r: r.policy, left=True),
    _Column("items", lambda r: str(r.items), drop=7),
    _Column("ok", lambda r: str(r.ok)),
    _Column("items/s", lambda r: f"{r.throughput:.0f}"),
    _Column("p50 ms", lambda r: _ms(r.latency(50))),
    _Column("p90 ms", lambda r: _ms(r.latency(90)), drop=5),
    _Column("p99 ms", lambda r: _ms(r.latency(99))),
    _Column("max ms", lambda r: _ms(r.max_latency), drop=3),
    _Column("batch", lambda r: _fixed(1)(r.mean_batch_size)),
    _Column("fill", lambda r: _fixed(2)(r.fill_ratio), drop=6),
    _Column("cost", lambda r: _fixed(0)(r.mean_batch_cost), drop=1),
    _Column("batches", lambda r: str(r.batches), drop=8),
    _Column("rejected", lambda r: str(r.rejected)),
    _Column("failed", lambda r: str(r.failed), drop=2),
    _Column("withdrawn", lambda r: str(r.withdrawn)),
    _Column("late", lambda r: str(r.late), drop=1),
    _Column("acquired", lambda r: str(r.acquisitions), drop=9),
)

_LEGEND = (
    "latency: arrival to output, simulated ms, of the callers that got their output (ok); "
    "items/s: ok per simulated second; "
    "batch: mean items per process call; fill: batch / max_batch_size; "
    "withdrawn: gave up before processing; late: gave up after; "
    "acquired: pool connections taken"
)


def _lay_out(columns: Sequence[_Column], results: Sequence[PolicyResult]) -> list[str]:
    rows = [[column.header for column in columns]]
    rows += [[column.render(r) for column in columns] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return [
        "  ".join(
            cell.ljust(width) if column.left else cell.rjust(width)
            for cell, width, column in zip(row, widths, columns, strict=True)
        ).rstrip()
        for row in rows
    ]


def render_table(result: SimulationResult, *, wide: bool = False) -> str:
    """The human report: what was simulated, one row per policy, a legend.

    Every line fits :data:`TABLE_WIDTH` characters: the columns that matter
    least are left out until the rows fit (and the legend names them), unless
    ``wide`` is true, which keeps every column.
    """
    with_costs = result.scenario.costs is not None
    columns = [column for column in _COLUMNS if with_costs or column.header != "cost"]
    left_out: list[_Column] = []
    while not wide:
        if max(map(len, _lay_out(columns, result.results))) <= TABLE_WIDTH:
            break
        droppable = [column for column in columns if column.drop]
        if not droppable:
            break
        worst = max(droppable, key=lambda column: column.drop)
        columns.remove(worst)
        left_out.append(worst)
    legend = _LEGEND
    if with_costs:
        legend += "; cost: mean total item cost per process call"
    if left_out:
        names = ", ".join(column.header for column in _COLUMNS if column in left_out)
        legend += f". Left out to fit {TABLE_WIDTH} columns: {names} (--wide shows them)"
    lines = [*_wrap(describe_scenario(result.scenario)), ""]
    lines += _lay_out(columns, result.results)
    lines.append("")
    lines += textwrap.wrap(legend, TABLE_WIDTH)
    for r in result.results:
        lines.extend(f"ANOMALY ({r.policy}): {anomaly}" for anomaly in r.anomalies)
    return "\n".join(lines) + "\n"


def _wrap(lines: Sequence[str]) -> list[str]:
    """Wrap each line to :data:`TABLE_WIDTH`, continuing it indented."""
    wrapped: list[str] = []
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip()) + 2)
        wrapped += textwrap.wrap(line, TABLE_WIDTH, subsequent_indent=indent) or [""]
    return wrapped


def render_json(result: SimulationResult) -> str:
    """The machine report: the scenario and every policy's numbers, as JSON."""
    return json.dumps(result.to_data(), indent=2) + "\n"
