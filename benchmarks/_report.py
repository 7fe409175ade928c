"""Tables for people, JSON for machines, and the targets."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._stats import percentile
from ._suite import DEFAULT_SPREAD, Clock, Row, SuiteResult, WorkloadResult
from ._workloads import IMPLS

__all__ = [
    "Target",
    "median_us_per_call",
    "render_text",
    "retained_block_budget",
    "targets",
    "to_json",
]


def retained_block_budget(distinct_keys: int) -> int:
    """Memory "back to baseline": blocks that may stay after every key has gone.

    A leak of anything per key is at least one block per key; a container that
    grew past its warm-up size keeps one table, a block. So the budget is a few
    dozen blocks plus one per thousand keys.
    """
    return 64 + distinct_keys // 1000


_RATIO_MEANING = {
    "throughput": "vs {base} = throughput / {base}'s throughput (higher is better)",
    "time": "vs {base} = time per call / {base}'s (lower is better)",
    "peak": "vs {base} = peak traced memory / {base}'s (lower is better)",
}


def _median(values: list[float]) -> float:
    return statistics.median(values)


def median_us_per_call(row: Row) -> float:
    """Median over the repetitions of wall-time µs per call."""
    return _median([s.seconds / s.calls * 1e6 for s in row.samples])


_us_per_call = median_us_per_call


def _cpu_us_per_call(row: Row) -> float:
    return _median([s.cpu_seconds / s.calls * 1e6 for s in row.samples])


def _items_per_s(row: Row) -> float:
    return _median([s.calls / s.seconds for s in row.samples])


def _per_batch(row: Row) -> float:
    return _median([s.processed / max(1, s.batches) for s in row.samples])


def _ratio_cell(clock: Clock) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        value = row.ratio(clock)
        if value is None:
            return "-"
        if row.impl == row.baseline:
            return "1.00"
        spread = row.ratio_spread(clock)
        return f"{value:.2f}" + ("" if spread is None else f" ±{spread:.0%}")

    return cell


Column = tuple[str, Callable[[Row], str]]


def _second_cell(row: Row) -> str:
    value = row.second_ratio()
    return "-" if value is None else f"{value:.2f}"


def _gc_columns() -> list[Column]:
    def per_item(row: Row, value: Callable[[Any], float]) -> float:
        return _median([value(s) / s.calls for s in row.samples])

    def parked(row: Row, value: Callable[[Any], float], fmt: str) -> str:
        return "-" if row.parked is None else format(value(row.parked), fmt)

    return [
        ("gc allocs/item", lambda r: f"{per_item(r, lambda s: s.gc_allocations):.2f}"),
        ("gc µs/item", lambda r: f"{per_item(r, lambda s: sum(s.gc_seconds) * 1e6):.2f}"),
        (
            "gen2 runs",
            lambda r: f"{_median([float(s.gc_collections[2]) for s in r.samples]):g}",
        ),
        ("objs/parked", lambda r: parked(r, lambda p: p.objects, ".1f")),
        ("peak B/parked", lambda r: parked(r, lambda p: p.peak_bytes, ",.0f")),
    ]


def _columns(result: WorkloadResult) -> list[Column]:
    workload = result.workload
    base = workload.baseline  # a contestant id: floor, or lean in workload f
    if workload.gc_aware:
        columns: list[Column] = [
            ("µs/item", lambda r: f"{_us_per_call(r):.2f}"),
            (f"vs {base}", _ratio_cell("wall")),
        ]
        if workload.second_baseline is not None:
            columns.append((f"vs {workload.second_baseline}", _second_cell))
        return [*columns, ("cpu vs " + base, _ratio_cell("cpu")), *_gc_columns()]
    if workload.kind == "latency":
        return [
            ("median µs", lambda r: f"{r.seconds * 1e6:,.1f}"),
            (
                "p90 µs",
                lambda r: f"{_median([_p90(s.latencies) for s in r.samples]) * 1e6:,.1f}",
            ),
            (f"vs {base}", _ratio_cell("wall")),
        ]
    if workload.kind == "memory":
        return [
            ("peak KiB", lambda r: f"{r.samples[0].peak_bytes / 1024:,.0f}"),
            ("retained KiB", lambda r: f"{r.samples[0].retained_bytes / 1024:,.1f}"),
            ("blocks", lambda r: f"{r.samples[0].retained_blocks:,}"),
            ("keys left", lambda r: f"{r.samples[0].leftover_keys}"),
            (f"vs {base}", _ratio_cell("wall")),
        ]
    columns = [
        ("items/s", lambda r: f"{_items_per_s(r):,.0f}"),
        ("µs/call", lambda r: f"{_us_per_call(r):.2f}"),
        ("cpu µs/call", lambda r: f"{_cpu_us_per_call(r):.2f}"),
        ("items/batch", lambda r: f"{_per_batch(r):.1f}"),
    ]
    if workload.cancel_percent:
        columns += [
            ("cancelled", lambda r: f"{_median([s.cancelled / s.calls for s in r.samples]):.0%}"),
            (
                "processed",
                lambda r: f"{_median([s.processed / s.calls for s in r.samples]):.0%}",
            ),
        ]
    columns += [(f"vs {base}", _ratio_cell("wall")), (f"cpu vs {base}", _ratio_cell("cpu"))]
    return columns


def _p90(values: list[float]) -> float:
    return percentile(values, 90)


def _table(result: WorkloadResult) -> list[str]:
    workload = result.workload
    if not result.rows:
        return [f"({workload.id}) {workload.title}", "    (no contestant of this workload was run)"]
    columns = _columns(result)
    header = ["contestant", *(name for name, _ in columns)]
    body = [[row.label, *(cell(row) for _, cell in columns)] for row in result.rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "    " + "  ".join([first, *rest])

    reps = len(result.rows[0].samples) if result.rows else 0
    if workload.kind == "latency":
        how = f"{workload.calls:,} sequential calls per run, median of {reps} runs"
    elif workload.kind == "memory":
        how = f"{workload.calls:,} calls, {workload.distinct_keys:,} distinct keys, one run"
    else:
        keys = f"{workload.distinct_keys:,} distinct keys" if workload.items_per_key else "one key"
        how = f"{workload.calls:,} calls per run ({keys}), median of {reps} repetitions"
    meaning = _RATIO_MEANING[result.ratio_of].format(base=IMPLS[workload.baseline].label)
    if workload.second_baseline is not None:
        second = IMPLS[workload.second_baseline].label
        meaning += f"; vs {workload.second_baseline}: the same, to the {second}"
    lines = [
        f"({workload.id}) {workload.title}",
        f"    {how}; {meaning}",
        line(header),
        *(line(cells) for cells in body),
    ]
    lines += [f"    {name}: not installed, skipped" for name in result.skipped]
    if workload.gc_aware:
        lines += [
            "    gc allocs/item: GC-tracked objects allocated per item, net of those freed "
            "before the next",
            "    collection; gc µs/item: time in collections; gen2 runs: full collections per "
            "run; objs/parked,",
            "    peak B/parked: GC-tracked objects and tracemalloc peak per caller parked in "
            "submit, its task",
            "    included (one untimed probe with every client parked)",
        ]
    return lines


def _group_table(group: str, results: list[WorkloadResult]) -> list[str]:
    """One line per workload of the group: its clients, then each contestant's ratio."""
    impls: list[str] = []
    for result in results:
        impls += [row.impl for row in result.rows if row.impl not in impls]
    first = results[0].workload
    base = IMPLS[first.baseline].label
    header = ["clients", *(IMPLS[i].label.removeprefix("trio_batch ") for i in impls)]
    body = []
    for result in results:
        by_impl = {row.impl: row for row in result.rows}
        cells = [f"{result.workload.clients:,}"]
        for impl in impls:
            row = by_impl.get(impl)
            value = None if row is None else row.ratio("wall")
            if row is not None and impl == row.baseline:
                cells.append(f"1.00 ({_us_per_call(row):.2f} µs)")
            else:
                cells.append("-" if value is None else f"{value:.2f}")
        body.append(cells)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        f"({group}) summary: throughput relative to the {base} in the same run "
        "(higher is better; its µs per item in brackets)",
    ]
    for cells in [header, *body]:
        lines.append("    " + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return lines


@dataclass(frozen=True)
class Target:
    """One of the issue's acceptance targets, checked against a run."""

    workload: str
    impl: str
    description: str
    value: float
    met: bool


def targets(suite: SuiteResult) -> list[Target]:
    """The targets: (a) >= 0.9x throughput, (b)/(c) <= 1.2x time, (d) no growth,
    (f) >= 1.0x the lean floor's throughput at every number of clients.

    Ratios use the suite's clock (``meta["clock"]``, wall time unless ``--clock cpu``).
    """
    clock: Clock = "cpu" if suite.meta.get("clock") == "cpu" else "wall"
    found: list[Target] = []
    for result in suite.workloads:
        wid = result.workload.id
        for row in result.rows:
            value = row.ratio(clock)
            if wid == "a" and row.impl in ("immediate", "size") and value is not None:
                found.append(Target(wid, row.impl, "throughput >= 0.9x floor", value, value >= 0.9))
            elif (
                result.workload.group == "f"
                and row.impl in ("immediate", "size")
                and value is not None
            ):
                found.append(
                    Target(wid, row.impl, "throughput >= 1.0x lean floor", value, value >= 1.0)
                )
            elif wid in ("b", "c") and row.impl in ("immediate", "size") and value is not None:
                found.append(Target(wid, row.impl, "µs/call <= 1.2x floor", value, value <= 1.2))
            elif wid == "d" and row.impl != "floor":
                sample = row.samples[0]
                budget = retained_block_budget(result.workload.distinct_keys)
                found.append(
                    Target(
                        wid,
                        row.impl,
                        f"retained <= {budget} blocks, no key left",
                        sample.retained_blocks,
                        sample.retained_blocks <= budget and sample.leftover_keys == 0,
                    )
                )
    return found


def _repetitions(meta: dict[str, object]) -> str:
    least, most = meta["repeat"], meta.get("max_repeat", meta["repeat"])
    if most == least:
        return f"{least}"
    spread = meta.get("spread", DEFAULT_SPREAD)
    assert isinstance(spread, float)
    return f"{least} to {most} (more while a ratio's standard error exceeds {spread:.0%})"


def render_text(suite: SuiteResult) -> str:
    """The human-readable report."""
    meta = suite.meta
    lines = [
        "trio_batch benchmarks: "
        f"{meta['implementation']} {meta['python']}, trio {meta['trio']}, "
        f"trio_batch {meta['trio_batch']}, {meta['cpus']} CPUs, {meta['platform']}",
        f"size {meta['size']}, {meta['warmup']} warm-up + {_repetitions(meta)} interleaved "
        "repetitions; ratios are per repetition, then the median (± its standard error); "
        f"targets use {meta['clock']} time",
        "",
    ]
    groups: dict[str, list[WorkloadResult]] = {}
    for result in suite.workloads:
        lines += [*_table(result), ""]
        if result.workload.group and result.rows:
            groups.setdefault(result.workload.group, []).append(result)
    for group, results in groups.items():
        lines += [*_group_table(group, results), ""]
    found = targets(suite)
    if found:
        lines.append("targets:")
        for target in found:
            value = f"{target.value:,.0f}" if target.workload == "d" else f"{target.value:.2f}"
            mark = "met" if target.met else "MISSED"
            workload = f"({target.workload})"
            lines.append(
                f"    {workload:<8} {target.impl:<9} {target.description:<34} {value:>10}  {mark}"
            )
    return "\n".join(lines)


def _row_json(result: WorkloadResult, row: Row) -> dict[str, Any]:
    samples = [
        {k: v for k, v in dataclasses.asdict(s).items() if k != "latencies"} for s in row.samples
    ]
    data: dict[str, Any] = {
        "impl": row.impl,
        "label": row.label,
        "median_seconds": row.seconds,
        "ratio": row.ratio("wall"),
        "ratio_spread": row.ratio_spread("wall"),
        "cpu_ratio": row.ratio("cpu"),
        "cpu_ratio_spread": row.ratio_spread("cpu"),
        "ratios": row.ratios,
        "baseline": row.baseline,
        "samples": samples,
    }
    if result.workload.second_baseline is not None:
        data["second_baseline"] = result.workload.second_baseline
        data["second_ratio"] = row.second_ratio()
        data["second_ratios"] = row.second_ratios
    if result.workload.gc_aware:
        data["gc_allocations_per_item"] = _median([s.gc_allocations / s.calls for s in row.samples])
        data["gc_us_per_item"] = _median([sum(s.gc_seconds) / s.calls * 1e6 for s in row.samples])
        data["parked"] = None if row.parked is None else dataclasses.asdict(row.parked)
    if result.workload.kind != "latency":
        data["us_per_call"] = _us_per_call(row)
        data["cpu_us_per_call"] = _cpu_us_per_call(row)
        data["items_per_second"] = _items_per_s(row)
    return data


def to_json(suite: SuiteResult) -> dict[str, Any]:
    """Everything in the report, and every sample, as JSON-ready data."""
    return {
        "meta": suite.meta,
        "workloads": [
            {
                "id": r.workload.id,
                "group": r.workload.group,
                "title": r.workload.title,
                "kind": r.workload.kind,
                "ratio_of": r.ratio_of,
                "clients": r.workload.clients,
                "calls": r.workload.calls,
                "distinct_keys": r.workload.distinct_keys,
                "max_batch_size": r.workload.max_batch_size,
                "cancel_percent": r.workload.cancel_percent,
                "max_key_concurrency": r.workload.max_key_concurrency,
                "baseline": r.workload.baseline,
                "results": [_row_json(r, row) for row in r.rows],
                "skipped": r.skipped,
            }
            for r in suite.workloads
        ],
        "targets": [dataclasses.asdict(t) for t in targets(suite)],
    }
