"""``open_batcher(cancel_abandoned=True)``: a batch nobody waits for is cancelled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_batch as tb


class Process:
    """Records starts, ends and cancellations of ``process`` (and its resource)."""

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        self.calls: list[tuple[list[Any], float]] = []
        self.cancelled: list[float] = []
        self.finished: list[float] = []
        self.released: list[tuple[str, float]] = []

    async def __call__(self, key: Any, inputs: list[Any], resource: Any = None) -> list[Any]:
        self.calls.append((list(inputs), trio.current_time()))
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled.append(trio.current_time())
            raise
        self.finished.append(trio.current_time())
        return [f"{key}:{x}" for x in inputs]

    @asynccontextmanager
    async def acquire(self, key: Any) -> AsyncIterator[str]:
        await trio.sleep(0.5)
        try:
            yield "connection"
        except BaseException as exc:
            self.released.append((f"rollback on {type(exc).__name__}", trio.current_time()))
            raise
        self.released.append(("commit", trio.current_time()))


class Finished(tb.Observer):
    def __init__(self) -> None:
        self.finished: list[tb.BatchFinished] = []

    def batch_finished(self, event: tb.BatchFinished) -> None:
        self.finished.append(event)


async def impatient(batcher: tb.Batcher[Any, Any, Any], item: Any, patience: float) -> None:
    with trio.move_on_after(patience):
        await batcher.submit("k", item)
        raise AssertionError("gave up before its output")


@pytest.mark.parametrize("with_acquire", [False, True])
async def test_a_batch_whose_callers_all_gave_up_is_cancelled(
    autojump_clock: trio.testing.MockClock, with_acquire: bool
) -> None:
    process = Process()
    observer = Finished()
    cache: dict[Any, Any] = {}
    options: dict[str, Any] = {"acquire": process.acquire} if with_acquire else {}
    start = 0.5 if with_acquire else 0.0
    async with tb.open_batcher(
        process,
        cancel_abandoned=True,
        cache=cache,
        observers=[observer],
        policy=tb.Duration(0.0),
        limits=tb.Limits(max_key_concurrency=1),
        **options,
    ) as b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(impatient, b, 1, start + 0.25)
            nursery.start_soon(impatient, b, 2, start + 0.5)
        # The slot is free again: the next batch starts at once.
        assert await b.submit("k", 3) == "k:3"
    assert [(sorted(inputs), at) for inputs, at in process.calls] == [
        ([1, 2], start),
        ([3], start + 0.5 + start),
    ]
    assert process.cancelled == [start + 0.5]
    assert process.finished == [start + 0.5 + start + 1.0]
    if with_acquire:
        assert process.released == [("rollback on Cancelled", 1.0), ("commit", 2.5)]
    first = observer.finished[0]
    assert first.outcome is tb.BatchOutcome.CANCELLED
    assert first.abandoned == 2
    assert cache == {("k", 3): "k:3"}


async def test_a_batch_with_a_caller_left_runs_to_completion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    async with tb.open_batcher(process, cancel_abandoned=True, policy=tb.Duration(0.0)) as b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(impatient, b, 1, 0.5)
            outputs: list[str] = []

            async def patient() -> None:
                outputs.append(await b.submit("k", 2))

            nursery.start_soon(patient)
    assert process.cancelled == []
    assert outputs == ["k:2"]


async def test_a_sharer_keeps_the_batch_alive(autojump_clock: trio.testing.MockClock) -> None:
    process = Process()
    async with tb.open_batcher(process, cancel_abandoned=True, dedupe=True) as b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(impatient, b, 1, 0.5)
            await trio.testing.wait_all_tasks_blocked()
            outputs: list[str] = []

            async def sharer() -> None:
                outputs.append(await b.submit("k", 1))

            nursery.start_soon(sharer)
            await trio.sleep(0.75)
            assert process.cancelled == []
        assert outputs == ["k:1"]
        # Every sharer gone: cancelled.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(impatient, b, 5, 0.25)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(impatient, b, 5, 0.5)
    assert process.cancelled == [1.5]


async def test_a_cancelled_submit_many_abandons_its_batches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    async with tb.open_batcher(
        process, cancel_abandoned=True, limits=tb.Limits(max_batch_size=2)
    ) as b:
        with trio.move_on_after(0.5):
            await b.submit_many("k", [1, 2, 3])
        await trio.testing.wait_all_tasks_blocked()
        assert b.statistics() == tb.BatcherStatistics(0, 0, 0, 0)
    assert process.cancelled == [0.5, 0.5]


async def test_by_default_an_abandoned_batch_runs_to_completion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    async with tb.open_batcher(process) as b:
        await impatient(b, 1, 0.5)
    assert process.cancelled == []
    assert process.finished == [1.0]


async def test_an_abandoned_batch_shares_nothing_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A sharer arriving after everyone gave up must not join a cancelled batch.
    seen: list[float] = []

    async def process(key: str, inputs: list[int]) -> list[str]:
        seen.append(trio.current_time())
        # A process that shields its cleanup: the batch ends later than the cancel.
        try:
            await trio.sleep(1)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1)
        return [f"{key}:{x}" for x in inputs]

    async with tb.open_batcher(process, cancel_abandoned=True, dedupe=True) as b:
        await impatient(b, 1, 0.5)
        assert await b.submit("k", 1) == "k:1"
    # The second submit opened its own batch (it may start once the first ends).
    assert len(seen) == 2
