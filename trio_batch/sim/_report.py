"""Reports for people (a table) and for machines (JSON).

Both are pure functions of a :class:`SimulationResult`: no wall-clock time, no
paths, nothing that differs between two runs of the same scenario and seed, so
their output can be compared byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from ._results import PolicyResult, SimulationResult
from ._scenario import Scenario

__all__ = ["describe_scenario", "render_json", "render_table"]


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
    timeouts = scenario.timeouts
    patience = "callers: all patient"
    if timeouts is not None and timeouts.fraction:
        patience = f"callers: {timeouts.fraction:.0%} give up after {_seconds(timeouts.after)}"
    return [
        head,
        f"  {arrival_text}; {key_text}",
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


# (header, how to render a result, left-aligned)
_COLUMNS: Sequence[tuple[str, Callable[[PolicyResult], str], bool]] = (
    ("policy", lambda r: r.policy, True),
    ("items", lambda r: str(r.items), False),
    ("ok", lambda r: str(r.ok), False),
    ("items/s", lambda r: f"{r.throughput:.0f}", False),
    ("p50 ms", lambda r: _ms(r.latency(50)), False),
    ("p90 ms", lambda r: _ms(r.latency(90)), False),
    ("p99 ms", lambda r: _ms(r.latency(99)), False),
    ("max ms", lambda r: _ms(r.max_latency), False),
    ("batch", lambda r: _fixed(1)(r.mean_batch_size), False),
    ("fill", lambda r: _fixed(2)(r.fill_ratio), False),
    ("batches", lambda r: str(r.batches), False),
    ("rejected", lambda r: str(r.rejected), False),
    ("failed", lambda r: str(r.failed), False),
    ("withdrawn", lambda r: str(r.withdrawn), False),
    ("late", lambda r: str(r.late), False),
    ("acquired", lambda r: str(r.acquisitions), False),
)

_LEGEND = (
    "latency: arrival to output, simulated ms, callers that got their output (ok); "
    "items/s: ok per simulated second;",
    "batch: mean items per process call; fill: batch / max_batch_size; "
    "withdrawn: gave up before processing; late: gave up after; acquired: pool connections taken",
)


def render_table(result: SimulationResult) -> str:
    """The human report: what was simulated, one row per policy, a legend."""
    rows = [[header for header, _, _ in _COLUMNS]]
    rows += [[render(r) for _, render, _ in _COLUMNS] for r in result.results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [*describe_scenario(result.scenario), ""]
    for row in rows:
        cells = [
            cell.ljust(width) if left else cell.rjust(width)
            for cell, width, (_, _, left) in zip(row, widths, _COLUMNS, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.extend(_LEGEND)
    for r in result.results:
        lines.extend(f"ANOMALY ({r.policy}): {anomaly}" for anomaly in r.anomalies)
    return "\n".join(lines) + "\n"


def render_json(result: SimulationResult) -> str:
    """The machine report: the scenario and every policy's numbers, as JSON."""
    return json.dumps(result.to_data(), indent=2) + "\n"
