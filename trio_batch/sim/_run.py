"""Running the real batcher on a workload, in Trio's virtual time.

Each policy gets its own ``trio.run`` on a :class:`~._clock.SimClock`: time
moves only when every task waits, straight to the next instant at which
something is due (see ``_clock``). Simulated time, not wall time, drives every
delay (arrivals, ``process`` costs, connects, timers, timeouts), so a minute of
traffic takes as long as the Python code needs, not a minute.

Nothing here models the batcher: callers call the real
:meth:`trio_batch.Batcher.submit`, and the simulated ``process`` and pool only
sleep for the scenario's costs. With item costs, the batcher is opened with
``cost=`` reading each item's drawn cost, so the real batcher forms the
cost-bounded batches; the simulated ``process`` checks the bound. At each
arrival time the clock's keeper hands the item to a caller task: one that has
finished its previous call and waits for another, or a new one if none is
free; so there are as many caller tasks as callers waiting at once, not as
arrivals. The callers' nursery is outside the batcher's block; after the last
arrival the block is left normally, so the batcher drains exactly as in
production. The statistics sampler is a passive callback of the clock, not a
task.

Determinism. The workload and every batch's randomness come from seeded
generators (see ``_workload``), and events rarely share an instant. But some
do: a drain makes many batches ready at once, batches of equal size with a
fixed cost finish together, a caller's timeout can coincide with a timer, and
with a shared pool the order in which those tasks reach the pool decides who
waits. Trio deliberately runs simultaneously runnable tasks in a random order
(from its private ``trio._core._run._r``), and breaks ties between equal
deadlines by object address. So without help, a run with a pool gave different
numbers from one process to the next (measured: in the ``web-db`` scenario the
p50 latency of ``duration:0.002`` differed in its fourth digit). There is no
public way to fix the order, and the simulated code cannot tell the tied tasks
apart (``acquire`` only sees the key), so for the duration of each
``trio.run`` we switch on the deterministic scheduling Trio provides for
Hypothesis (sort the runnable tasks by creation order, then shuffle them with
``_r``) and seed ``_r`` from the scenario seed and the policy. Both are
restored afterwards, also on error. The order stays random-looking, as Trio
intends, but it is the same in every run and process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from array import array
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, final

import outcome
import trio

import trio_batch as tb

from ._clock import SimClock, SimulationStuck, VirtualTime
from ._pool import ConnectionPool
from ._results import PolicyResult, Sample, SimulationResult
from ._scenario import MAX_SAMPLES, Scenario, policy_label
from ._workload import Workload, batch_cost, batch_random, generate_workload

__all__ = ["ProgressCallback", "SimulatedFailure", "run_scenario", "simulate_policy"]

#: Called as ``(items done, items in total, what is running)`` as a run progresses.
ProgressCallback = Callable[[int, int, str], None]

#: Arrivals between two progress reports.
_PROGRESS_EVERY: Final = 512

# Outcome codes, one byte per item.
_PENDING, _OK, _REJECTED, _FAILED, _WITHDRAWN, _LATE, _CLOSED = range(7)


class SimulatedFailure(Exception):
    """What the simulated ``process`` raises for a failed batch."""


@contextlib.contextmanager
def _deterministic_scheduling(seed: str) -> Iterator[None]:
    """Make Trio's choice among simultaneously runnable tasks a function of ``seed``.

    Uses the hook Trio installs for Hypothesis (see the module docstring for
    why). If a future Trio moves these internals, the run still works, only
    without the guarantee.
    """
    run_module: Any = sys.modules.get("trio._core._run")
    scheduler_random = getattr(run_module, "_r", None)
    if scheduler_random is None or not hasattr(run_module, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        yield
        return
    saved_flag = run_module._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = scheduler_random.getstate()
    run_module._ALLOW_DETERMINISTIC_SCHEDULING = True
    scheduler_random.seed(seed)
    try:
        yield
    finally:
        run_module._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag
        scheduler_random.setstate(saved_state)


def _is_not_simulated_failure(record: logging.LogRecord) -> bool:
    return SimulatedFailure.__name__ not in record.getMessage()


@contextlib.contextmanager
def _quiet_simulated_failures() -> Iterator[None]:
    """Keep the library from logging each failure that the scenario asked for."""
    library_logger = logging.getLogger("trio_batch")
    library_logger.addFilter(_is_not_simulated_failure)
    try:
        yield
    finally:
        library_logger.removeFilter(_is_not_simulated_failure)


@final
class _Simulation:
    """One policy's run: the callers, the simulated ``process``, the sampler."""

    def __init__(
        self,
        scenario: Scenario,
        workload: Workload,
        policy: tb.Policy,
        on_progress: Callable[[int], None],
        time: VirtualTime,
    ) -> None:
        self._time = time
        self._scenario = scenario
        self._workload = workload
        self._policy = policy
        self._on_progress = on_progress
        self._sample_interval = scenario.resolved_sample_interval
        n = len(workload)
        self._outcomes = bytearray(n)
        self._processed = bytearray(n)
        self._latency: array[float] = array("d", bytes(8 * n))
        self._batch_sizes: list[int] = []
        self._batch_costs: list[float] = []
        self._samples: list[Sample] = []
        # What went wrong -> (how often, the first example).
        self._anomalies: dict[str, tuple[int, str]] = {}
        self._running: dict[int, int] = {}  # key -> process calls in progress
        self._entered = 0
        self._all_entered = trio.Event()
        self._pool: ConnectionPool | None = None
        self._next_item = 0  # the next arrival
        self._idle: list[trio.lowlevel.Task] = []  # caller tasks waiting for an arrival
        # Set in run():
        self._callers: trio.Nursery
        self._batcher: tb.Batcher[int, int, int]

    def _anomaly(self, what: str, example: str) -> None:
        """Record a broken library guarantee (the first example is kept)."""
        count, first = self._anomalies.get(what, (0, example))
        self._anomalies[what] = (count + 1, first)

    # -- the simulated process -----------------------------------------------------

    async def _process(self, key: int, inputs: list[int]) -> list[int]:
        limits = self._scenario.limits
        processed = self._processed
        for item in inputs:
            if processed[item]:
                self._anomaly("an item was passed to process twice", f"item {item}")
            processed[item] = 1
        if len(inputs) > limits.max_batch_size:
            self._anomaly("a batch exceeded max_batch_size", f"{len(inputs)} items")
        running = self._running[key] = self._running.get(key, 0) + 1
        if running > limits.max_key_concurrency:
            self._anomaly(
                "a key had more than max_key_concurrency batches processing",
                f"key {key}: {running}",
            )
        self._batch_sizes.append(len(inputs))
        cost = 0.0
        costs = self._workload.costs
        if costs is not None:
            cost = math.fsum(costs[item] for item in inputs)
            self._batch_costs.append(cost)
            bound = limits.max_batch_cost
            alone = len(inputs) == 1 and limits.oversize is tb.Oversize.ALONE
            if bound is not None and cost > bound * (1 + 1e-9) and not alone:
                self._anomaly("a batch exceeded max_batch_cost", f"cost {cost:g} > {bound:g}")
        rng = batch_random(self._scenario.seed, inputs[0])
        try:
            await self._time.sleep(batch_cost(self._scenario.process, len(inputs), rng, cost))
        finally:
            remaining = self._running[key] - 1
            if remaining:
                self._running[key] = remaining
            else:
                del self._running[key]
        error_rate = self._scenario.process.error_rate
        if error_rate and rng.random() < error_rate:
            raise SimulatedFailure(f"simulated failure of a batch of {len(inputs)}")
        return inputs

    async def _process_with_connection(
        self, key: int, inputs: list[int], connection: int
    ) -> list[int]:
        return await self._process(key, inputs)

    # -- callers -----------------------------------------------------------------------

    async def _submit(self, item: int) -> int:
        """Submit ``item`` and return its outcome code (cancellation propagates)."""
        try:
            output = await self._batcher.submit(self._workload.keys[item], item)
        except tb.Rejected:
            return _REJECTED
        except tb.BatcherClosed:
            return _CLOSED
        except tb.BatchError:
            return _FAILED
        if output != item:
            self._anomaly("a caller got another item's output", f"item {item}: {output}")
        self._latency[item] = self._time.now - self._workload.times[item]
        return _OK

    async def _call(self, item: int) -> None:
        """Be the caller of ``item``: submit it, and record its outcome."""
        self._entered += 1
        if self._entered == len(self._workload):
            self._all_entered.set()
        timeout = self._workload.timeouts[item]
        if timeout == math.inf:
            self._outcomes[item] = await self._submit(item)
            return
        code = _PENDING
        with trio.move_on_after(timeout):
            code = await self._submit(item)
        if code == _PENDING:  # gave up: before its batch began processing, or after?
            code = _LATE if self._processed[item] else _WITHDRAWN
        self._outcomes[item] = code

    async def _caller(self, item: int) -> None:
        """A caller task: calls for ``item``, then for later arrivals while there are any.

        Reusing a task that has finished its call is cheaper than a new task per
        arrival, and the number of caller tasks is bounded by the number of
        callers waiting at once, not by the number of arrivals.
        """
        while item >= 0:
            await self._call(item)
            if self._next_item >= len(self._workload):
                return
            task = trio.lowlevel.current_task()
            self._idle.append(task)

            def abort(_raise_cancel: object, task: trio.lowlevel.Task = task) -> Any:
                self._idle.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            item = await trio.lowlevel.wait_task_rescheduled(abort)

    def _arrival(self) -> None:
        """At the next arrival time (in the keeper): hand the item to a caller task."""
        item = self._next_item
        self._next_item = item + 1
        if self._idle:
            trio.lowlevel.reschedule(self._idle.pop(), outcome.Value(item))
        else:
            self._callers.start_soon(self._caller, item)
        if item % _PROGRESS_EVERY == 0:
            self._on_progress(item)
        if self._next_item < len(self._workload):
            self._time.call_at(self._workload.times[self._next_item], self._arrival)
        else:  # that was the last arrival: idle callers can go
            while self._idle:
                trio.lowlevel.reschedule(self._idle.pop(), outcome.Value(-1))

    def _sample(self) -> None:
        """Record the batcher's statistics, and file the next sample (in the keeper)."""
        stats = self._batcher.statistics()
        samples = self._samples
        samples.append(Sample(self._time.now, stats.queued_items, stats.processing_batches))
        if len(samples) >= 2 * MAX_SAMPLES:
            # A drain that lasts far longer than the arrivals: keep every other
            # sample and sample half as often, so memory stays bounded.
            del samples[1::2]
            self._sample_interval *= 2
        self._time.call_at(len(samples) * self._sample_interval, self._sample, passive=True)

    # -- the run ---------------------------------------------------------------------------

    def _item_cost(self, item: int) -> float:
        costs = self._workload.costs
        assert costs is not None
        return costs[item]

    def _open_batcher(self) -> AbstractAsyncContextManager[tb.Batcher[int, int, int]]:
        scenario = self._scenario
        name = f"sim {policy_label(self._policy)}"
        cost = None if self._workload.costs is None else self._item_cost
        if scenario.pool is None:
            return tb.open_batcher(
                self._process, policy=self._policy, limits=scenario.limits, name=name, cost=cost
            )
        pool = self._pool = ConnectionPool(
            scenario.pool.size, scenario.pool.connect, self._time.sleep
        )
        return tb.open_batcher(
            self._process_with_connection,
            acquire=pool.connection,
            policy=self._policy,
            limits=scenario.limits,
            name=name,
            cost=cost,
        )

    async def run(self) -> PolicyResult:
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._time.keep)
                # The callers' nursery is outside the batcher's block, so that
                # leaving the block drains the batcher while callers wait.
                async with (
                    trio.open_nursery() as self._callers,
                    self._open_batcher() as self._batcher,
                ):
                    self._time.call_at(0.0, self._sample, passive=True)
                    if len(self._workload):
                        self._time.call_at(self._workload.times[0], self._arrival)
                        # Leaving the block before every caller has submitted
                        # would close the batcher under their feet.
                        await self._all_entered.wait()
                    self._on_progress(len(self._workload))
                # Drained, and every caller has its outcome.
                outer.cancel_scope.cancel()
        except* SimulationStuck as stuck:
            self._anomaly("the run stalled", str(stuck.exceptions[0]))
        return self._result(self._time.now)

    def _result(self, elapsed: float) -> PolicyResult:
        outcomes = self._outcomes
        counts = [outcomes.count(code) for code in range(7)]
        for item, code in enumerate(outcomes):
            if code == _PENDING:
                self._anomaly("a caller never got an outcome", f"item {item}")
            elif code == _CLOSED:
                self._anomaly("a caller got BatcherClosed", f"item {item}")
            elif code == _WITHDRAWN and self._processed[item]:
                self._anomaly("a withdrawn item was processed", f"item {item}")
            elif code == _OK and not self._processed[item]:
                self._anomaly("a caller got an output for an unprocessed item", f"item {item}")
        times = self._workload.times
        ok_items = [item for item, code in enumerate(outcomes) if code == _OK]
        pool = self._pool
        return PolicyResult(
            policy=policy_label(self._policy),
            items=len(outcomes),
            ok=counts[_OK],
            rejected=counts[_REJECTED],
            failed=counts[_FAILED],
            withdrawn=counts[_WITHDRAWN],
            late=counts[_LATE],
            closed=counts[_CLOSED],
            elapsed=elapsed,
            batch_sizes=tuple(self._batch_sizes),
            max_batch_size=self._scenario.limits.max_batch_size,
            batch_costs=tuple(self._batch_costs),
            max_batch_cost=self._scenario.limits.max_batch_cost,
            ok_arrivals=array("d", (times[item] for item in ok_items)),
            ok_latencies=array("d", (self._latency[item] for item in ok_items)),
            samples=tuple(self._samples),
            acquisitions=0 if pool is None else pool.acquisitions,
            connections=0 if pool is None else pool.opened,
            anomalies=tuple(
                f"{what}: {count} time(s), first {example}"
                for what, (count, example) in self._anomalies.items()
            ),
        )


def simulate_policy(
    scenario: Scenario,
    workload: Workload,
    policy: tb.Policy,
    on_progress: Callable[[int], None] | None = None,
) -> PolicyResult:
    """Run ``workload`` through a real batcher with ``policy``, in virtual time.

    Must not be called from inside a Trio run (it starts its own).
    """
    clock = SimClock()
    simulation = _Simulation(
        scenario, workload, policy, on_progress or (lambda _done: None), VirtualTime(clock)
    )
    with (
        _deterministic_scheduling(f"{scenario.seed}:{policy_label(policy)}"),
        _quiet_simulated_failures(),
    ):
        return trio.run(simulation.run, clock=clock)


def run_scenario(
    scenario: Scenario, *, on_progress: ProgressCallback | None = None, jobs: int = 1
) -> SimulationResult:
    """Simulate every policy of ``scenario`` on the same workload.

    Args:
        scenario: what to simulate.
        on_progress: optional ``(items done, items in total, what is running)``
            callback, called every few hundred arrivals.
        jobs: worker processes to run policies in, side by side; 1 (the
            default) runs them one after the other in this process. The
            numbers are the same either way.

    Returns:
        One result per policy, in the scenario's order. The numbers depend only
        on the scenario (seed included), never on wall time, the process or
        ``jobs``.

    Raises:
        ValueError: ``jobs`` is not an integer >= 1.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    report_all = on_progress or (lambda _done, _total, _label: None)
    report_all(0, 0, "drawing the workload")
    workload = generate_workload(scenario)
    count = len(scenario.policies)
    if jobs > 1 and count > 1:
        from ._parallel import simulate_in_processes  # it imports this module

        results = simulate_in_processes(scenario, workload, jobs, report_all)
        return SimulationResult(scenario=scenario, results=tuple(results))
    n = len(workload)
    results = []
    for index, policy in enumerate(scenario.policies):
        label = f"{policy_label(policy)} ({index + 1}/{count})"

        def report(done: int, offset: int = index * n, label: str = label) -> None:
            report_all(offset + done, n * count, label)

        results.append(simulate_policy(scenario, workload, policy, report))
    return SimulationResult(scenario=scenario, results=tuple(results))
