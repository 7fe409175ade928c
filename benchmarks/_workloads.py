"""The workloads and the contestants that run them under Trio.

Every contestant is opened the same way, ``opener(process, workload)``, and
yields something with ``async submit(key, item) -> output``; every workload drives
that ``submit`` with the same client code, so the only thing that differs between
two rows of a table is the batcher.

Clients are *closed-loop*: each one submits, waits for its output, and submits
again. Keys and items are ints; ``process`` is a no-op that returns its inputs,
so each caller must get back its own item (checked: ``wrong`` counts mismatches).

Cancellation (workload c) is deterministic: the caller's cancel scope gets a
deadline in the past *after* ``submit`` has checked for cancellation, so the
item is queued, the caller parks, and Trio cancels it at the next scheduler tick,
before any task spawned in this tick (a batch task, or the floor's worker) runs.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import statistics
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from time import perf_counter, process_time
from typing import Literal, Protocol

import trio
import trio.testing

import trio_batch as tb

from ._floor import open_floor
from ._gcmeter import GcMeter, Parked, per_caller, snapshot
from ._yardsticks import open_bare_limit, open_lean_floor

__all__ = [
    "IMPLS",
    "Impl",
    "Sample",
    "Workload",
    "build_workloads",
    "run_latency",
    "run_memory",
    "run_parked",
    "run_throughput",
]

ProcessFn = Callable[[int, list[int]], Awaitable[Sequence[int]]]

#: Keys of warm-up runs live here, far from the measured ones.
_WARM_KEY_OFFSET = 1 << 29


class Submitter(Protocol):
    """The one thing a contestant must offer."""

    async def submit(self, key: int, item: int) -> int: ...


Opener = Callable[[ProcessFn, "Workload"], AbstractAsyncContextManager[Submitter]]


@dataclass(frozen=True)
class Impl:
    """A contestant: ``runtime`` says which event loop runs it."""

    id: str
    label: str
    runtime: Literal["trio", "asyncio"]
    opener: Opener | None = None


def _floor(process: ProcessFn, workload: Workload) -> AbstractAsyncContextManager[Submitter]:
    return open_floor(process, max_batch_size=workload.max_batch_size)


def _lean_floor(process: ProcessFn, workload: Workload) -> AbstractAsyncContextManager[Submitter]:
    return open_lean_floor(process, key=0, max_batch_size=workload.max_batch_size)


def _bare_limit(process: ProcessFn, workload: Workload) -> AbstractAsyncContextManager[Submitter]:
    return open_bare_limit(process, key=0, max_batch_size=workload.max_batch_size)


def limits_for(workload: Workload) -> tb.Limits:
    """trio_batch's limits on a workload: the default ones, or those the workload fixes.

    Workload (f) fixes ``max_key_concurrency`` and gives the queue room for
    every client, so nothing is ever rejected.
    """
    if workload.max_key_concurrency is None:
        return tb.Limits(max_batch_size=workload.max_batch_size)
    return tb.Limits(
        max_batch_size=workload.max_batch_size,
        max_key_concurrency=workload.max_key_concurrency,
        max_batch_queue_size=max(1, workload.clients),
    )


def _trio_batch(policy_for: Callable[[int], tb.Policy]) -> Opener:
    def opener(process: ProcessFn, workload: Workload) -> AbstractAsyncContextManager[Submitter]:
        return tb.open_batcher(
            process,
            policy=policy_for(workload.max_batch_size),
            limits=limits_for(workload),
        )

    return opener


def balanced_hint(max_batch_size: int) -> int:
    """The ``min_size_hint`` the Balanced contestant uses: a quarter of a batch."""
    return max(1, max_batch_size // 4)


#: Every contestant, by the id used on the command line.
IMPLS: dict[str, Impl] = {
    impl.id: impl
    for impl in [
        Impl("lean", "lean floor", "trio", _lean_floor),
        Impl("bare", "bare limit", "trio", _bare_limit),
        Impl("floor", "floor (hand-written)", "trio", _floor),
        Impl("immediate", "trio_batch Immediate", "trio", _trio_batch(lambda _: tb.Immediate())),
        Impl("size", "trio_batch Size", "trio", _trio_batch(lambda _: tb.Size())),
        Impl(
            "duration",
            "trio_batch Duration(1 ms)",
            "trio",
            _trio_batch(lambda _: tb.Duration(0.001)),
        ),
        Impl(
            "balanced",
            "trio_batch Balanced(size/4)",
            "trio",
            _trio_batch(lambda size: tb.Balanced(balanced_hint(size))),
        ),
        Impl("aiodataloader", "aiodataloader (asyncio)", "asyncio"),
    ]
}

_ALL_TRIO = ("floor", "immediate", "size", "duration", "balanced")


@dataclass(frozen=True)
class Workload:
    """One workload at one size.

    ``kind`` picks the runner: ``throughput`` (wall time of a closed-loop run),
    ``memory`` (tracemalloc around a closed-loop run) or ``latency`` (one caller
    at a time, submit to ``process`` start).
    """

    id: str
    title: str
    kind: Literal["throughput", "memory", "latency"]
    impls: tuple[str, ...]
    clients: int
    calls_per_client: int
    #: Calls of one round that share a key; 0: every call uses key 0.
    items_per_key: int
    max_batch_size: int
    cancel_percent: int = 0
    #: trio_batch's ``max_key_concurrency`` (and queue room for every client); None: defaults.
    max_key_concurrency: int | None = None
    #: Workloads run and reported together (``--only f`` runs f100, f1000, f10000).
    group: str = ""
    #: The contestant that ratios are relative to, and a second one (wall time only).
    baseline: str = "floor"
    second_baseline: str | None = None
    #: Measure GC per run and probe the cost of a parked caller (workload f).
    gc_aware: bool = False

    @property
    def calls(self) -> int:
        """Submit calls in one run."""
        return self.clients * self.calls_per_client

    @property
    def distinct_keys(self) -> int:
        if not self.items_per_key:
            return 1
        return self.calls // self.items_per_key


#: Workload (f): the numbers of clients it runs at.
SCALE_CLIENTS = (100, 1000, 10_000)

#: Workload (f)'s contestants, in the order of its tables and plot.
SCALE_IMPLS = ("lean", "bare", "floor", "immediate", "size", "aiodataloader")


def scale_workload(clients: int, size: float = 1.0) -> Workload:
    """Workload (f) at one number of clients.

    One key, ``max_batch_size=100``, ``max_key_concurrency=1``, room in the queue
    for every client; 100,000 calls per run at ``size`` 1 and at least 10 per
    client, so that even 10,000 clients make several rounds. Fewer than 100
    clients (the smoke test) get batches of ``clients``: ``Size`` would wait for
    ever for a batch that cannot fill.
    """
    calls = size * max(100_000, 10 * clients)
    batch = min(100, clients)
    return Workload(
        id=f"f{clients}",
        title=(
            f"scale: one key, {clients:,} closed-loop clients, batch size {batch}, "
            "one batch at a time, no-op process"
        ),
        kind="throughput",
        impls=SCALE_IMPLS,
        clients=clients,
        calls_per_client=max(1, round(calls / clients)),
        items_per_key=0,
        max_batch_size=batch,
        max_key_concurrency=1,
        group="f",
        baseline="lean",
        second_baseline="bare",
        gc_aware=True,
    )


def build_workloads(
    size: float = 1.0, clients: int = 1000, scale_clients: Sequence[int] = SCALE_CLIENTS
) -> list[Workload]:
    """Workloads (a) to (f); ``size`` scales the calls per run, ``clients`` the concurrency.

    ``scale_clients`` are the numbers of clients of workload (f), one workload each.
    """
    per_key = 4
    clients = max(per_key, clients - clients % per_key)

    def rounds(total_calls: float) -> int:
        return max(1, round(total_calls * size / clients))

    distinct = rounds(100_000) * clients
    # Batches of 100 for 1,000 clients; fewer clients (smoke test) get smaller batches.
    batch = max(1, min(100, clients // 10))

    return [
        Workload(
            id="a",
            title=f"one key, {clients:,} closed-loop clients, batch size {batch}, no-op process",
            kind="throughput",
            impls=(*_ALL_TRIO, "aiodataloader"),
            clients=clients,
            calls_per_client=rounds(20_000),
            items_per_key=0,
            max_batch_size=batch,
        ),
        Workload(
            id="b",
            title=(
                f"{rounds(10_000 * per_key) * clients // per_key:,} distinct keys, "
                f"{per_key} calls each: {clients:,} closed-loop clients, batch size {per_key}"
            ),
            kind="throughput",
            impls=_ALL_TRIO,
            clients=clients,
            calls_per_client=rounds(10_000 * per_key),
            items_per_key=per_key,
            max_batch_size=per_key,
        ),
        Workload(
            id="c",
            title=(
                f"as (a), 30% of calls cancelled at the next tick after submit "
                f"(before their batch starts): {clients:,} clients"
            ),
            kind="throughput",
            impls=_ALL_TRIO,
            clients=clients,
            calls_per_client=rounds(20_000),
            items_per_key=0,
            max_batch_size=batch,
            cancel_percent=30,
        ),
        Workload(
            id="d",
            title=(
                f"memory: {distinct:,} distinct keys come and go, one call each, "
                f"{clients:,} clients (tracemalloc)"
            ),
            kind="memory",
            impls=("floor", "immediate", "size", "duration"),
            clients=clients,
            calls_per_client=rounds(100_000),
            items_per_key=1,
            max_batch_size=1,
        ),
        Workload(
            id="e",
            title="idle latency: one caller at a time, submit to process start",
            kind="latency",
            impls=("floor", "immediate", "aiodataloader"),
            clients=1,
            calls_per_client=max(10, round(1000 * size)),
            items_per_key=0,
            max_batch_size=100,
        ),
        *(scale_workload(n, size) for n in scale_clients),
    ]


@dataclass
class Sample:
    """What one run of one contestant measured."""

    #: throughput: wall time of the run; latency: median submit-to-process time.
    seconds: float
    #: throughput: CPU time of this process during the run (immune to other processes).
    cpu_seconds: float = 0.0
    calls: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    #: Outputs that were not the caller's own item.
    wrong: int = 0
    #: Items passed to ``process`` (withdrawn items never are).
    processed: int = 0
    batches: int = 0
    #: memory: tracemalloc peak above the baseline.
    peak_bytes: int = 0
    #: memory: bytes and blocks still allocated, relative to the baseline.
    retained_bytes: int = 0
    retained_blocks: int = 0
    #: trio_batch only: keys still known after every caller has its outcome.
    leftover_keys: int = 0
    latencies: list[float] = field(default_factory=list)
    #: gc_aware runs: collections of generations 0, 1 and 2 during the run.
    gc_collections: tuple[int, int, int] = (0, 0, 0)
    #: gc_aware runs: seconds spent in collections of generations 0, 1 and 2.
    gc_seconds: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: gc_aware runs: GC-tracked objects allocated, net (see ``_gcmeter``).
    gc_allocations: int = 0

    def add_gc(self, meter: GcMeter) -> None:
        """Record what ``meter`` saw."""
        gen0, gen1, gen2 = meter.collections
        self.gc_collections = (gen0, gen1, gen2)
        young, middle, full = meter.seconds
        self.gc_seconds = (young, middle, full)
        self.gc_allocations = meter.allocations


class Tally:
    """Counts what happened; its ``process`` is the no-op processor."""

    __slots__ = (
        "all_submitted",
        "batches",
        "cancelled",
        "completed",
        "errors",
        "processed",
        "unsubmitted",
        "wrong",
    )

    def __init__(self, workload: Workload) -> None:
        self.batches = self.processed = 0
        self.completed = self.cancelled = self.errors = self.wrong = 0
        #: Keyed workloads: clients that have not yet made their last call.
        #: One-key workloads: calls not yet made, by any client.
        self.unsubmitted = workload.clients if workload.items_per_key else workload.calls
        self.all_submitted = trio.Event()

    async def process(self, key: int, inputs: list[int]) -> list[int]:
        self.batches += 1
        self.processed += len(inputs)
        return inputs

    def sample(self, seconds: float, calls: int) -> Sample:
        return Sample(
            seconds=seconds,
            calls=calls,
            completed=self.completed,
            cancelled=self.cancelled,
            errors=self.errors,
            wrong=self.wrong,
            processed=self.processed,
            batches=self.batches,
        )


def cancel_pattern(percent: int) -> list[bool]:
    """100 flags, ``percent`` of them set, spread evenly."""
    return [(i * percent) % 100 < percent for i in range(100)]


async def _client(
    j: int,
    submit: Callable[[int, int], Awaitable[int]],
    workload: Workload,
    tally: Tally,
    go: trio.Event,
    key_offset: int,
) -> None:
    """A closed-loop client.

    Keyed workloads: ``calls_per_client`` calls; in round ``r`` the clients
    with the same ``j // items_per_key`` share a key used in no other round, so
    every key gets exactly ``items_per_key`` calls. One-key workloads: clients
    take calls from a shared budget until it is spent, so no tail of slow
    clients can be left waiting for a batch that will not fill.
    """
    await go.wait()
    calls = workload.calls_per_client
    per_key = workload.items_per_key
    keys_per_round = workload.clients // per_key if per_key else 0
    first_key = key_offset + j // per_key if per_key else 0
    cancels = cancel_pattern(workload.cancel_percent) if workload.cancel_percent else None
    r = -1
    while True:
        r += 1
        if per_key:
            if r == calls:
                return
            key = first_key + r * keys_per_round
            if r == calls - 1:
                tally.unsubmitted -= 1
        else:
            if not tally.unsubmitted:
                return
            key = 0
            tally.unsubmitted -= 1
        if not tally.unsubmitted:
            tally.all_submitted.set()
        try:
            if cancels is not None and cancels[(r * 37 + j) % 100]:
                with trio.CancelScope() as scope:
                    # Not yet cancelled: submit queues the item and parks; the
                    # scheduler cancels it at its next tick.
                    scope.deadline = -math.inf
                    output = await submit(key, j)
                if scope.cancelled_caught:
                    tally.cancelled += 1
                    continue
            else:
                output = await submit(key, j)
        except tb.BatchError:
            tally.errors += 1
            continue
        tally.completed += 1
        if output != j:
            tally.wrong += 1


async def run_throughput(workload: Workload, opener: Opener) -> Sample:
    """Wall time from releasing the clients to the last caller having its outcome.

    The clients live outside the batcher's block; the block is left once every
    client has made its last call, so a policy that waits for full batches
    (``Size``) is flushed by the drain instead of stalling the last partial batch.
    For a ``gc_aware`` workload a :class:`GcMeter` watches the same interval.
    """
    tally = Tally(workload)
    go = trio.Event()
    meter = GcMeter()
    try:
        async with (
            trio.open_nursery() as clients,
            opener(tally.process, workload) as batcher,
        ):
            for j in range(workload.clients):
                clients.start_soon(_client, j, batcher.submit, workload, tally, go, 0)
            await trio.testing.wait_all_tasks_blocked()
            if workload.gc_aware:
                meter.start()
            start, cpu_start = perf_counter(), process_time()
            go.set()
            await tally.all_submitted.wait()
        # The drain (leaving the block) is part of the run.
        seconds, cpu_seconds = perf_counter() - start, process_time() - cpu_start
    finally:
        meter.stop()
    sample = tally.sample(seconds, workload.calls)
    sample.cpu_seconds = cpu_seconds
    if workload.gc_aware:
        sample.add_gc(meter)
    return sample


async def _blocked_process(gate: trio.Event, key: int, inputs: list[int]) -> list[int]:
    await gate.wait()
    return inputs


async def run_parked(workload: Workload, opener: Opener) -> Parked:
    """What a caller parked in ``submit`` costs, its task included (see ``_gcmeter``).

    Every client submits once; ``process`` blocks until the probe has looked, so
    all but the first batch's callers wait in the batcher's queue (trio_batch:
    one batch at a time, queue room for every client). Compared with the moment
    before the clients were spawned.
    """
    gate = trio.Event()
    process = functools.partial(_blocked_process, gate)

    async def client(j: int, submit: Callable[[int, int], Awaitable[int]]) -> None:
        await submit(0, j)

    tracemalloc.start()
    try:
        async with (
            trio.open_nursery() as clients,
            opener(process, workload) as batcher,
        ):
            await trio.testing.wait_all_tasks_blocked()
            before = snapshot()
            tracemalloc.reset_peak()
            for j in range(workload.clients):
                clients.start_soon(client, j, batcher.submit)
            await trio.testing.wait_all_tasks_blocked()
            _, peak = tracemalloc.get_traced_memory()
            after = snapshot()
            gate.set()
    finally:
        tracemalloc.stop()
    return per_caller(before, after, peak, workload.clients)


async def _drive(batcher: Submitter, workload: Workload, tally: Tally, key_offset: int) -> None:
    go = trio.Event()
    async with trio.open_nursery() as clients:
        for j in range(workload.clients):
            clients.start_soon(_client, j, batcher.submit, workload, tally, go, key_offset)
        go.set()


async def run_memory(workload: Workload, opener: Opener) -> Sample:
    """tracemalloc peak, and what is still allocated once every key has come and gone.

    A warm-up pass (a fiftieth of the keys, different ones) first lets the
    containers in Trio and in the batcher grow towards their working size;
    tracemalloc then traces only the measured pass, which runs inside the same
    open block. What remains is measured after ``gc.collect()`` with the block
    still open, in bytes and in blocks: a container (a set, a dict) that grew
    past its warm-up size in the measured pass keeps its table, a few blocks of
    some KiB; a leak per key would be at least one block per key.
    """
    tally = Tally(workload)
    warm = dataclasses.replace(workload, calls_per_client=max(1, workload.calls_per_client // 10))
    async with opener(tally.process, workload) as batcher:
        await _drive(batcher, warm, Tally(warm), _WARM_KEY_OFFSET)
        warm_processed, warm_batches = tally.processed, tally.batches
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            tracemalloc.reset_peak()
            start = perf_counter()
            await _drive(batcher, workload, tally, 0)
            seconds = perf_counter() - start
            gc.collect()
            _, peak = tracemalloc.get_traced_memory()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        leftover = batcher.statistics().active_keys if isinstance(batcher, tb.Batcher) else 0
    sample = tally.sample(seconds, workload.calls)
    sample.processed -= warm_processed
    sample.batches -= warm_batches
    grown = after.compare_to(before, "filename")
    sample.peak_bytes = peak - sum(stat.size for stat in before.statistics("filename"))
    sample.retained_bytes = sum(stat.size_diff for stat in grown)
    sample.retained_blocks = sum(stat.count_diff for stat in grown)
    sample.leftover_keys = leftover
    return sample


class _Probe:
    __slots__ = ("processed", "started_at")

    def __init__(self) -> None:
        self.started_at = 0.0
        self.processed = 0

    async def process(self, key: int, inputs: list[int]) -> list[int]:
        self.started_at = perf_counter()
        self.processed += len(inputs)
        return inputs


async def run_latency(workload: Workload, opener: Opener) -> Sample:
    """One caller at a time on an idle batcher: submit to ``process`` start, median."""
    probe = _Probe()
    latencies: list[float] = []
    wrong = 0
    async with opener(probe.process, workload) as batcher:
        submit = batcher.submit
        for i in range(workload.calls):
            await trio.testing.wait_all_tasks_blocked()
            start = perf_counter()
            if await submit(0, i) != i:
                wrong += 1
            latencies.append(probe.started_at - start)
    return Sample(
        seconds=statistics.median(latencies),
        calls=workload.calls,
        completed=len(latencies),
        wrong=wrong,
        processed=probe.processed,
        batches=probe.processed,
        latencies=latencies,
    )
