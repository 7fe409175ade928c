"""DataLoader workloads: ``python -m benchmarks._dataloader [--quick] [--repeat N]``.

Two workloads for the conveniences of issue 15, each comparing two ways of
doing the same work in one process, interleaved repetitions, median of the
per-repetition ratios (as the main suite does):

(f) *50% duplicates*: 1,000 closed-loop clients; in every round, client ``j``
    asks for item ``j // 2``, so each item is wanted by two concurrent callers.
    ``dedupe=True`` against ``dedupe=False``, same policy (``Immediate``), same
    batch size. ``process`` spends 10 µs of CPU per input (a stand-in for
    fetching and encoding a row), so sending half the inputs saves real work;
    the cost per *call* is compared. A no-op ``process`` is measured too (f0),
    to show what deduplication itself costs when ``process`` is free.
(g) *submit_many*: one caller with 1,000 items against 1,000 concurrent
    callers with one item each (every one in its own task, started together),
    same batcher settings, ten times over in one batcher; the time per item
    is compared.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import trio
import trio.testing

import trio_batch as tb

__all__ = ["DataLoaderResult", "main", "run_duplicates", "run_submit_many"]

Process = Callable[[int, list[int]], Awaitable[list[Any]]]


async def _noop(key: int, inputs: list[int]) -> list[int]:
    return inputs


#: CPU seconds ``_rows`` spends per input.
ROW_SECONDS = 10e-6


async def _rows(key: int, inputs: list[int]) -> list[str]:
    # A fixed amount of CPU work per input, a stand-in for fetching and encoding
    # a row: 10 µs each (a busy wait, so it does not depend on the data).
    end = perf_counter() + ROW_SECONDS * len(inputs)
    while perf_counter() < end:
        pass
    return [json.dumps({"id": x}) for x in inputs]


async def _duplicates_run(
    process: Process, *, dedupe: bool, clients: int, rounds: int, batch: int
) -> float:
    """Seconds for ``clients`` closed-loop clients to make ``rounds`` calls each."""
    go = trio.Event()

    async def client(batcher: tb.Batcher[int, int, Any], j: int) -> None:
        await go.wait()
        for r in range(rounds):
            # Two concurrent callers want each item of a round.
            await batcher.submit(0, r * clients + j // 2)

    limits = tb.Limits(max_batch_size=batch, max_batch_queue_size=10 * clients)
    async with tb.open_batcher(process, limits=limits, dedupe=dedupe) as batcher:
        async with trio.open_nursery() as nursery:
            for j in range(clients):
                nursery.start_soon(client, batcher, j)
            await trio.testing.wait_all_tasks_blocked()
            start = perf_counter()
            go.set()
        return perf_counter() - start


async def _many_run(*, many: bool, items: int, batch: int, loops: int) -> float:
    """Seconds to get ``items`` outputs ``loops`` times, by submit_many or a task per item."""
    limits = tb.Limits(max_batch_size=batch, max_batch_queue_size=items)
    async with tb.open_batcher(_noop, limits=limits) as batcher:
        start = perf_counter()
        for _ in range(loops):
            if many:
                outputs = await batcher.submit_many(0, range(items))
                assert len(outputs) == items
            else:
                async with trio.open_nursery() as nursery:
                    for i in range(items):
                        nursery.start_soon(batcher.submit, 0, i)
        return perf_counter() - start


@dataclass(frozen=True)
class DataLoaderResult:
    """One workload: seconds per call of each side, and the median per-run ratio."""

    workload: str
    title: str
    baseline: str
    contender: str
    calls: int
    baseline_us: float
    contender_us: float
    #: Median over repetitions of baseline time / contender time (higher: contender faster).
    speedup: float
    target: float | None

    def lines(self) -> list[str]:
        met = ""
        if self.target is not None:
            verdict = "met" if self.speedup >= self.target else "NOT met"
            met = f"   target >= {self.target:g}x: {verdict}"
        return [
            f"({self.workload}) {self.title}",
            f"    {self.baseline:<36} {self.baseline_us:>8.2f} µs/call",
            f"    {self.contender:<36} {self.contender_us:>8.2f} µs/call",
            f"    {self.contender} is {self.speedup:.2f}x as fast per call{met}",
        ]


def _compare(
    run_a: Callable[[], float], run_b: Callable[[], float], repeat: int
) -> tuple[float, float, float]:
    """Interleaved runs of a and b (after one warm-up each): medians and median ratio a/b."""
    run_a()
    run_b()
    times_a: list[float] = []
    times_b: list[float] = []
    for i in range(repeat):
        gc.collect()
        if i % 2:
            b = run_b()
            a = run_a()
        else:
            a = run_a()
            b = run_b()
        times_a.append(a)
        times_b.append(b)
    ratios = [a / b for a, b in zip(times_a, times_b, strict=True)]
    return statistics.median(times_a), statistics.median(times_b), statistics.median(ratios)


def run_duplicates(
    *, clients: int = 1000, rounds: int = 20, batch: int = 100, repeat: int = 9, noop: bool = False
) -> DataLoaderResult:
    """Workload (f): 50% duplicates, dedupe off vs on."""
    process: Process = _noop if noop else _rows

    def run(dedupe: bool) -> float:
        return trio.run(
            lambda: _duplicates_run(
                process, dedupe=dedupe, clients=clients, rounds=rounds, batch=batch
            )
        )

    plain, deduped, ratio = _compare(lambda: run(False), lambda: run(True), repeat)
    calls = clients * rounds
    what = "no-op process" if noop else "process spends 10 µs per input"
    return DataLoaderResult(
        workload="f" if not noop else "f0",
        title=(
            f"{clients:,} closed-loop clients, every item wanted by two at once, "
            f"batch size {batch}, {what}"
        ),
        baseline="dedupe=False",
        contender="dedupe=True",
        calls=calls,
        baseline_us=plain / calls * 1e6,
        contender_us=deduped / calls * 1e6,
        speedup=ratio,
        target=None if noop else 1.0,
    )


def run_submit_many(
    *, items: int = 1000, batch: int = 100, repeat: int = 9, loops: int = 10
) -> DataLoaderResult:
    """Workload (g): 1,000 items by submit_many vs 1,000 concurrent submits (``loops`` times)."""

    def run(many: bool) -> float:
        return trio.run(lambda: _many_run(many=many, items=items, batch=batch, loops=loops))

    singles, many, ratio = _compare(lambda: run(False), lambda: run(True), repeat)
    return DataLoaderResult(
        workload="g",
        title=f"{items:,} items of one key, batch size {batch}, no-op process",
        baseline=f"{items:,} concurrent submit calls",
        contender=f"one submit_many of {items:,}",
        calls=items,
        baseline_us=singles / (items * loops) * 1e6,
        contender_us=many / (items * loops) * 1e6,
        speedup=ratio,
        target=5.0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks._dataloader", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small and few repetitions")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 9)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 9)
    clients = 100 if args.quick else 1000
    rounds = 5 if args.quick else 20
    results = [
        run_duplicates(clients=clients, rounds=rounds, repeat=repeat),
        run_duplicates(clients=clients, rounds=rounds, repeat=repeat, noop=True),
        run_submit_many(repeat=repeat),
    ]
    print(
        f"trio_batch DataLoader workloads: CPython {sys.version.split()[0]}, "
        f"trio {trio.__version__}"
    )
    print(f"median of {repeat} interleaved repetitions; ratio = baseline time / contender time")
    for result in results:
        print()
        print("\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
