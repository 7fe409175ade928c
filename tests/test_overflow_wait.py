"""Limits(overflow=Overflow.WAIT): backpressure instead of rejection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from tutil import Recorder, harness

import trio_batch as tb

Calls = list[tuple[str, list[int], float]]


WAIT = tb.Limits(
    max_batch_size=2, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
)


def test_overflow_defaults_to_reject() -> None:
    assert tb.Limits().overflow is tb.Overflow.REJECT
    with pytest.raises(TypeError):
        tb.Limits(overflow="wait")  # type: ignore[arg-type]


async def test_wait_admits_instead_of_rejecting(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=1.0)
    async with harness(process, policy=tb.Size(), limits=WAIT) as h:
        await h.submit_in_order("k", range(6))
        # [0, 1] is processing, [2, 3] fills the queue (max_batch_queue_size=1);
        # 4 and 5 wait for room instead of being rejected.
        stats = h.batcher.statistics()
        assert stats.waiting_submits == 2
        assert stats.queued_items == 2
        assert stats.processing_batches == 1
    assert h.outcomes.values == {i: f"k:{i}" for i in range(6)}
    # First come, first served: batches are formed in arrival order.
    assert process.inputs() == [[0, 1], [2, 3], [4, 5]]
    assert [t for _, _, t in process.calls] == [0.0, 1.0, 2.0]
    assert h.batcher.statistics() == tb.BatcherStatistics(0, 0, 0, 0)


async def test_new_arrivals_do_not_jump_waiters(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(
        max_batch_size=3, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
    )
    # The callers' nursery is outside the block: a partial Size batch waits for
    # the drain, which only starts when the body returns.
    async with harness(process, policy=tb.Size(), limits=limits, callers_outlive_block=True) as h:
        await h.submit_in_order("k", range(5))
        # [0, 1, 2] processing from t=0; 3 and 4 are in a new batch, not full.
        # Nothing waits: room existed.
        assert h.batcher.statistics().waiting_submits == 0
        await h.submit_in_order("k", range(5, 8))
        # 5 fills [3, 4, 5]; 6 and 7 find the queue full and wait, in order.
        assert h.batcher.statistics().waiting_submits == 2
    assert process.inputs() == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert h.outcomes.values == {i: f"k:{i}" for i in range(8)}


async def test_cancelled_waiter_leaves_no_trace(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=1.0)
    async with tb.open_batcher(process, policy=tb.Size(), limits=WAIT) as b:
        async with trio.open_nursery() as nursery:
            # [0, 1] processing, [2, 3] queued: the key has no room.
            for item in range(4):
                nursery.start_soon(b.submit, "k", item)
                await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                with pytest.raises(trio.Cancelled):
                    await b.submit("k", 99)
            cancelled_waiter = trio.CancelScope()

            async def waiter() -> None:
                with cancelled_waiter:
                    await b.submit("k", 100)
                    raise AssertionError("should have been cancelled")

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().waiting_submits == 1
            cancelled_waiter.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().waiting_submits == 0
            nursery.start_soon(b.submit, "k", 4)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(b.submit, "k", 5)
    assert process.inputs() == [[0, 1], [2, 3], [4, 5]]
    assert b.statistics() == tb.BatcherStatistics(0, 0, 0, 0)


async def test_waiter_cancelled_after_admission_is_withdrawn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    async with tb.open_batcher(process, policy=tb.Size(), limits=WAIT) as b:
        scope = trio.CancelScope()

        async def admitted_then_cancelled() -> None:
            with scope:
                await b.submit("k", 2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.submit, "k", 0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(b.submit, "k", 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(admitted_then_cancelled)
            await trio.testing.wait_all_tasks_blocked()
            # [0, 1] is processing (it left the queue), so 2 was admitted to a new batch.
            assert b.statistics().waiting_submits == 0
            assert b.statistics().queued_items == 1
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().queued_items == 0
    assert process.inputs() == [[0, 1]]


async def test_drain_admits_waiters(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=1.0)
    async with harness(process, policy=tb.Size(), limits=WAIT, callers_outlive_block=True) as h:
        await h.submit_in_order("k", range(5))
        assert h.batcher.statistics().waiting_submits == 1
    # The block drained: every waiter was admitted and processed.
    assert h.outcomes.values == {i: f"k:{i}" for i in range(5)}
    assert process.inputs() == [[0, 1], [2, 3], [4]]


async def test_teardown_gives_waiters_batcher_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    outcomes: list[BaseException] = []

    class Stop(Exception):
        pass

    async def submit(b: tb.Batcher[str, int, str], item: int) -> None:
        try:
            await b.submit("k", item)
        except tb.BatcherClosed as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as outside:
        with pytest.raises(Stop):
            async with tb.open_batcher(process, policy=tb.Size(), limits=WAIT) as b:
                for item in range(5):
                    outside.start_soon(submit, b, item)
                    await trio.testing.wait_all_tasks_blocked()
                assert b.statistics().waiting_submits == 1
                raise Stop
    # Processing, queued and waiting callers alike.
    assert len(outcomes) == 5
    assert all(isinstance(exc, tb.BatcherClosed) for exc in outcomes)


async def test_wait_with_on_full_reject_waits_for_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Duration(REJECT) rejects items while the newest batch is full; with WAIT
    # they wait until the batch leaves the queue at its timer, then join a new one.
    process = Recorder(delay=0.5)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1, overflow=tb.Overflow.WAIT)
    policy = tb.Duration(1.0, on_full=tb.OnFull.REJECT)
    async with harness(process, policy=policy, limits=limits) as h:
        await h.submit_in_order("k", range(3))
        assert h.batcher.statistics().waiting_submits == 1
    assert process.calls == [("k", [0, 1], 1.0), ("k", [2], 2.0)]
    assert h.outcomes.values == {i: f"k:{i}" for i in range(3)}


async def test_batch_formed_by_admitting_several_waiters_gets_its_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: two waiters admitted at once formed a new Duration batch that
    # never got a timer (it waited for the drain).
    calls: Calls = []

    @asynccontextmanager
    async def slow_connect(key: str) -> AsyncIterator[None]:
        await trio.sleep(2.0)
        yield

    async def process(key: str, inputs: list[int], resource: None) -> list[str]:
        calls.append((key, list(inputs), trio.current_time()))
        return [f"{key}:{item}" for item in inputs]

    limits = tb.Limits(
        max_batch_size=3, max_key_concurrency=2, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
    )
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, acquire=slow_connect, policy=tb.Duration(1.0), limits=limits
        ) as b:
            for item in range(5):
                nursery.start_soon(b.submit, "k", item)
                await trio.testing.wait_all_tasks_blocked()
            # [0, 1, 2] is full and acquiring (still queued): 3 and 4 wait for room.
            assert b.statistics().waiting_submits == 2
            await trio.sleep(10)
    # At t=2 the first batch is processed and 3, 4 are admitted together into a
    # new batch, whose timer expires at t=3; it acquires for 2 s.
    assert calls == [("k", [0, 1, 2], 2.0), ("k", [3, 4], 5.0)]
