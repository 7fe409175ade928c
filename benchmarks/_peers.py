"""aiodataloader under asyncio: the best-known Python peer (optional extra ``bench``).

aiodataloader batches the keys passed to ``loader.load(key)`` in one event-loop
iteration into ``batch_load_fn(keys)`` calls of at most ``max_batch_size``. It
has no notion of a batching key, so it maps onto the single-key workloads only:
the item is its "key", the cache is off (every call is a new load), and the
client code mirrors the Trio clients line for line.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import tracemalloc
from time import perf_counter, process_time

from ._gcmeter import GcMeter, Parked, per_caller, snapshot
from ._workloads import Sample, Workload

__all__ = ["available", "run_latency", "run_parked", "run_throughput"]


def available() -> bool:
    """Whether aiodataloader is installed."""
    return importlib.util.find_spec("aiodataloader") is not None


class _Tally:
    __slots__ = ("batches", "completed", "processed", "started_at", "wrong")

    def __init__(self) -> None:
        self.batches = self.processed = self.completed = self.wrong = 0
        self.started_at = 0.0

    async def batch_load(self, keys: list[int]) -> list[int]:
        self.started_at = perf_counter()
        self.batches += 1
        self.processed += len(keys)
        return keys


async def _throughput(workload: Workload) -> Sample:
    from aiodataloader import DataLoader  # type: ignore[import-not-found, unused-ignore]

    tally = _Tally()
    loader: DataLoader[int, int] = DataLoader(
        tally.batch_load, max_batch_size=workload.max_batch_size, cache=False
    )
    go = asyncio.Event()

    async def client(j: int) -> None:
        await go.wait()
        load = loader.load
        for _ in range(workload.calls_per_client):
            output = await load(j)
            tally.completed += 1
            if output != j:
                tally.wrong += 1

    tasks = [asyncio.create_task(client(j)) for j in range(workload.clients)]
    for _ in range(2):
        await asyncio.sleep(0)  # every client is now parked on `go`
    meter = GcMeter()
    if workload.gc_aware:
        meter.start()
    try:
        start, cpu_start = perf_counter(), process_time()
        go.set()
        await asyncio.gather(*tasks)
        seconds, cpu_seconds = perf_counter() - start, process_time() - cpu_start
    finally:
        meter.stop()
    sample = Sample(
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        calls=workload.calls,
        completed=tally.completed,
        wrong=tally.wrong,
        processed=tally.processed,
        batches=tally.batches,
    )
    if workload.gc_aware:
        sample.add_gc(meter)
    return sample


async def _parked(workload: Workload) -> Parked:
    from aiodataloader import DataLoader  # type: ignore[import-not-found, unused-ignore]

    gate = asyncio.Event()

    async def batch_load(keys: list[int]) -> list[int]:
        await gate.wait()
        return keys

    loader: DataLoader[int, int] = DataLoader(
        batch_load, max_batch_size=workload.max_batch_size, cache=False
    )

    async def client(j: int) -> None:
        await loader.load(j)

    tracemalloc.start()
    try:
        before = snapshot()
        tracemalloc.reset_peak()
        tasks = [asyncio.create_task(client(j)) for j in range(workload.clients)]
        for _ in range(4):
            await asyncio.sleep(0)  # every client has called load; every batch is dispatched
        _, peak = tracemalloc.get_traced_memory()
        after = snapshot()
        gate.set()
        await asyncio.gather(*tasks)
    finally:
        tracemalloc.stop()
    return per_caller(before, after, peak, workload.clients)


async def _latency(workload: Workload) -> Sample:
    from aiodataloader import DataLoader  # type: ignore[import-not-found, unused-ignore]

    tally = _Tally()
    loader: DataLoader[int, int] = DataLoader(
        tally.batch_load, max_batch_size=workload.max_batch_size, cache=False
    )
    latencies: list[float] = []
    wrong = 0
    for i in range(workload.calls):
        for _ in range(4):
            await asyncio.sleep(0)  # let the previous dispatch finish: the loader is idle
        start = perf_counter()
        if await loader.load(i) != i:
            wrong += 1
        latencies.append(tally.started_at - start)
    return Sample(
        seconds=statistics.median(latencies),
        calls=workload.calls,
        completed=len(latencies),
        wrong=wrong,
        processed=tally.processed,
        batches=tally.batches,
        latencies=latencies,
    )


def run_throughput(workload: Workload) -> Sample:
    """Workloads (a) and (f) under ``asyncio.run``."""
    if workload.items_per_key or workload.cancel_percent:
        raise ValueError("aiodataloader only runs the single-key workloads without cancellation")
    return asyncio.run(_throughput(workload))


def run_parked(workload: Workload) -> Parked:
    """The parked-caller probe (see ``_gcmeter``) under ``asyncio.run``."""
    return asyncio.run(_parked(workload))


def run_latency(workload: Workload) -> Sample:
    """Workload (e) under ``asyncio.run``."""
    return asyncio.run(_latency(workload))
