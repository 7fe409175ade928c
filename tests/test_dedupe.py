"""``open_batcher(dedupe=...)``: equal items share one input of a batch.

One test (or a few) per sentence of the issue's "Deduplication" section.
Every test runs on virtual time; ``process`` records ``(key, inputs, start)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import outcome
import pytest
import trio
import trio.testing

import trio_batch as tb


class Boom(Exception):
    """Raised by user code in these tests."""


class Process:
    """A fake ``process``: records its calls, answers ``f"{key}:{x}"`` after ``delay``."""

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        self.calls: list[tuple[Any, list[Any], float]] = []
        self.cancelled = 0

    async def __call__(self, key: Any, inputs: list[Any]) -> list[str]:
        self.calls.append((key, list(inputs), trio.current_time()))
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        return [f"{key}:{x}" for x in inputs]


class Events(tb.Observer):
    """Records every observer event."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def item_accepted(self, event: tb.ItemAccepted) -> None:
        self.events.append(event)

    def item_withdrawn(self, event: tb.ItemWithdrawn) -> None:
        self.events.append(event)

    def batch_started(self, event: tb.BatchStarted) -> None:
        self.events.append(event)

    def batch_finished(self, event: tb.BatchFinished) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if type(event) is kind]


async def submit_all(
    nursery: trio.Nursery, batcher: tb.Batcher[Any, Any, Any], key: Any, items: list[Any]
) -> list[outcome.Outcome[Any]]:
    """Submit ``items`` from one task each, in this order (each parks before the next)."""
    results: list[outcome.Outcome[Any]] = [outcome.Value(None)] * len(items)

    async def one(index: int, item: Any, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        results[index] = await outcome.acapture(batcher.submit, key, item)

    for index, item in enumerate(items):
        # start() runs each task up to its park before the next one begins.
        await nursery.start(one, index, item)
    return results


async def test_equal_items_share_one_input_and_get_the_same_output(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    async with tb.open_batcher(process, dedupe=True, policy=tb.Duration(1.0)) as b:
        async with trio.open_nursery() as nursery:
            results = await submit_all(nursery, b, "k", [1, 2, 2, 3, 1])
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().queued_items == 3
    assert process.calls == [("k", [1, 2, 3], 1.0)]
    assert [r.unwrap() for r in results] == ["k:1", "k:2", "k:2", "k:3", "k:1"]


@pytest.mark.parametrize("where", ["queued", "acquiring", "processing"])
async def test_an_item_shares_with_any_batch_that_has_not_finished(
    autojump_clock: trio.testing.MockClock, where: str
) -> None:
    process = Process()
    resources: list[float] = []

    @asynccontextmanager
    async def acquire(key: str) -> AsyncIterator[None]:
        resources.append(trio.current_time())
        await trio.sleep(1.0)
        yield

    async def process_with(key: str, inputs: list[int], resource: None) -> list[str]:
        return await process(key, inputs)

    # queued: the Duration batch starts at t=1; acquiring: t=0 to 1; processing: t=1 to 2.
    policy: tb.Policy = tb.Duration(1.0) if where == "queued" else tb.Immediate()
    async with tb.open_batcher(
        process_with,
        acquire=acquire,
        dedupe=True,
        policy=policy,
        limits=tb.Limits(max_batch_size=2),
    ) as b:
        async with trio.open_nursery() as nursery:
            first = await submit_all(nursery, b, "k", [7])
            await trio.sleep({"queued": 0.5, "acquiring": 0.5, "processing": 1.5}[where])
            second = await submit_all(nursery, b, "k", [7])
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().queued_items == (1 if where != "processing" else 0)
    # One input, passed to process once.
    assert [inputs for _, inputs, _ in process.calls] == [[7]]
    assert first[0].unwrap() == second[0].unwrap() == "k:7"


async def test_a_finished_batch_is_not_shared(autojump_clock: trio.testing.MockClock) -> None:
    process = Process()
    async with tb.open_batcher(process, dedupe=True) as b:
        assert await b.submit("k", 1) == "k:1"
        assert await b.submit("k", 1) == "k:1"
    assert [(inputs, start) for _, inputs, start in process.calls] == [([1], 0.0), ([1], 1.0)]


async def test_keys_never_share(autojump_clock: trio.testing.MockClock) -> None:
    process = Process()
    async with tb.open_batcher(process, dedupe=True) as b:
        async with trio.open_nursery() as nursery:
            await submit_all(nursery, b, "a", [1])
            await submit_all(nursery, b, "b", [1])
    assert sorted((key, inputs) for key, inputs, _ in process.calls) == [("a", [1]), ("b", [1])]


@attrs.frozen
class Query:
    id: int
    note: str = attrs.field(eq=False)


async def test_an_identity_function_decides_what_is_equal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[list[Query]] = []

    async def process(key: str, inputs: list[Query]) -> list[str]:
        seen.append(list(inputs))
        await trio.sleep(1)
        return [q.note for q in inputs]

    async with tb.open_batcher(process, dedupe=lambda q: q.id, policy=tb.Duration(1.0)) as b:
        async with trio.open_nursery() as nursery:
            results = await submit_all(
                nursery, b, "k", [Query(1, "first"), Query(1, "second"), Query(2, "third")]
            )
    # The first item of an identity is the one process sees.
    assert [[q.note for q in inputs] for inputs in seen] == [["first", "third"]]
    assert [r.unwrap() for r in results] == ["first", "first", "third"]


@pytest.mark.parametrize("failure", ["process", "item", "contract", "acquire"])
async def test_every_sharer_gets_its_own_instance_of_the_same_error(
    autojump_clock: trio.testing.MockClock, failure: str
) -> None:
    cause = Boom("no")

    @asynccontextmanager
    async def acquire(key: str) -> AsyncIterator[None]:
        if failure == "acquire":
            raise cause
        yield

    async def process(key: str, inputs: list[int], resource: None) -> list[Any]:
        await trio.sleep(1)
        if failure == "process":
            raise cause
        if failure == "contract":
            return []
        return [outcome.Error(cause) if x == 1 else x for x in inputs]

    expected = {
        "process": tb.BatchFailed,
        "item": tb.ItemFailed,
        "contract": tb.ProcessorContractError,
        "acquire": tb.ResourceAcquisitionFailed,
    }[failure]
    async with tb.open_batcher(process, acquire=acquire, dedupe=True, policy=tb.Duration(1.0)) as b:
        async with trio.open_nursery() as nursery:
            results = await submit_all(nursery, b, "k", [1, 1, 1])
    errors = [r.error for r in results if isinstance(r, outcome.Error)]
    assert len(errors) == 3
    assert all(type(e) is expected for e in errors)
    assert len({id(e) for e in errors}) == 3
    if failure != "contract":
        assert all(e.__cause__ is cause for e in errors)


async def test_a_shared_input_counts_once_toward_max_batch_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, dedupe=True, policy=tb.Size(), limits=tb.Limits(max_batch_size=2)
        ) as b:
            await submit_all(nursery, b, "k", [1, 1, 1, 2, 2, 3])
    # [1, 2] is full and starts at once; 3 opens the next batch (flushed by the drain).
    assert [(inputs, start) for _, inputs, start in process.calls] == [([1, 2], 0.0), ([3], 0.0)]


async def test_a_sharer_is_never_rejected_and_never_opens_a_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    limits = tb.Limits(max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1)
    events = Events()
    async with tb.open_batcher(process, dedupe=True, limits=limits, observers=[events]) as b:
        async with trio.open_nursery() as nursery:
            # 1 processing, 2 fills the only queued batch: the queue is full.
            results = await submit_all(nursery, b, "k", [1, 2])
            await trio.testing.wait_all_tasks_blocked()
            rejected = await submit_all(nursery, b, "k", [3])
            sharers = await submit_all(nursery, b, "k", [1, 2, 2])
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().queued_items == 1
    assert isinstance(rejected[0], outcome.Error)
    assert type(rejected[0].error) is tb.Rejected
    assert [r.unwrap() for r in results + sharers] == ["k:1", "k:2", "k:1", "k:2", "k:2"]
    assert [inputs for _, inputs, _ in process.calls] == [[1], [2]]
    accepted = events.of(tb.ItemAccepted)
    assert [e.shares_with for e in accepted] == [
        None,
        None,
        accepted[0].item_id,
        accepted[1].item_id,
        accepted[1].item_id,
    ]
    assert len({e.item_id for e in accepted}) == 5


async def test_a_sharer_never_opens_a_batch_beyond_the_queue_bound_with_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Overflow.WAIT: a caller waiting for room is in no batch, so nobody shares
    # with it; once admitted it shares a slot that appeared meanwhile.
    process = Process()
    limits = tb.Limits(
        max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
    )
    events = Events()
    async with tb.open_batcher(process, dedupe=True, limits=limits, observers=[events]) as b:
        async with trio.open_nursery() as nursery:
            results = await submit_all(nursery, b, "k", [1, 2, 3, 3, 2])
            await trio.testing.wait_all_tasks_blocked()
            # 1 processing, 2 queued (and its sharer), 3 and 3 wait for room.
            assert b.statistics().waiting_submits == 2
    assert [(inputs, start) for _, inputs, start in process.calls] == [
        ([1], 0.0),
        ([2], 1.0),
        ([3], 2.0),
    ]
    assert [r.unwrap() for r in results] == ["k:1", "k:2", "k:3", "k:3", "k:2"]
    by_id = {e.item_id: e for e in events.of(tb.ItemAccepted)}
    threes = [e for e in events.of(tb.ItemAccepted) if e.time == 1.0]
    # Both 3s were admitted when 1 finished: the second shares the first's input.
    assert [e.shares_with for e in threes] == [None, threes[0].item_id]
    assert len(by_id) == 5


async def test_a_sharer_cancelled_before_processing_leaves_the_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    events = Events()
    async with tb.open_batcher(
        process, dedupe=True, policy=tb.Duration(1.0), observers=[events]
    ) as b:
        async with trio.open_nursery() as nursery:
            scopes: list[trio.CancelScope] = []

            async def cancellable(item: int, task_status: trio.TaskStatus[None]) -> None:
                with trio.CancelScope() as scope:
                    scopes.append(scope)
                    task_status.started()
                    await b.submit("k", item)
                    raise AssertionError("withdrawn callers get no output")

            await nursery.start(cancellable, 1)
            kept = await submit_all(nursery, b, "k", [1])
            await nursery.start(cancellable, 2)
            await nursery.start(cancellable, 2)
            await trio.sleep(0.5)
            # The first 1 leaves; its sharer keeps the input.
            scopes[0].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().queued_items == 2
            # Both 2s leave: only then is the input withdrawn.
            scopes[1].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().queued_items == 2
            scopes[2].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().queued_items == 1
    assert process.calls == [("k", [1], 1.0)]
    assert kept[0].unwrap() == "k:1"
    assert len(events.of(tb.ItemWithdrawn)) == 3
    (finished,) = events.of(tb.BatchFinished)
    accepted = events.of(tb.ItemAccepted)
    assert finished.item_ids == (accepted[1].item_id,)


async def test_a_sharer_cancelled_after_processing_began_sees_cancelled_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    async with tb.open_batcher(process, dedupe=True) as b:
        async with trio.open_nursery() as nursery:
            kept = await submit_all(nursery, b, "k", [1])
            cancelled_at: list[float] = []

            async def impatient(task_status: trio.TaskStatus[None]) -> None:
                with trio.move_on_after(0.5):
                    task_status.started()
                    await b.submit("k", 1)
                cancelled_at.append(trio.current_time())

            await nursery.start(impatient)
    assert cancelled_at == [0.5]
    assert kept[0].unwrap() == "k:1"
    assert process.calls == [("k", [1], 0.0)]
    assert process.cancelled == 0


async def test_an_unhashable_identity_fails_that_submit_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    async with tb.open_batcher(process, dedupe=True) as b:
        with pytest.raises(TypeError, match=r"^item must be hashable"):
            await b.submit("k", [1])
        assert b.statistics() == tb.BatcherStatistics(0, 0, 0, 0)
        assert await b.submit("k", 1) == "k:1"
    async with tb.open_batcher(process, dedupe=lambda x: [x]) as b:  # type: ignore[arg-type, return-value]
        with pytest.raises(TypeError, match=r"^identity returned by dedupe must be hashable"):
            await b.submit("k", 1)
        assert b.statistics().active_keys == 0


async def test_an_identity_function_that_raises_fails_that_submit_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    error = Boom("bad item")

    def identity(item: int) -> Hashable:
        if item < 0:
            raise error
        return item

    process = Process()
    async with tb.open_batcher(process, dedupe=identity) as b:
        async with trio.open_nursery() as nursery:
            ok = await submit_all(nursery, b, "k", [1])
            with pytest.raises(Boom) as caught:
                await b.submit("k", -1)
            assert caught.value is error
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().processing_batches == 1
    assert ok[0].unwrap() == "k:1"
    assert [inputs for _, inputs, _ in process.calls] == [[1]]


async def test_submit_with_dedupe_is_a_checkpoint_even_when_it_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tb.open_batcher(Process(), dedupe=lambda x: 1 // x) as b:
        with trio.testing.assert_checkpoints(), pytest.raises(ZeroDivisionError):
            await b.submit("k", 0)
        with trio.testing.assert_checkpoints(), pytest.raises(TypeError):
            await b.submit(["unhashable key"], 1)


async def test_sharers_in_batch_events_each_keep_their_own_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = Events()
    async with tb.open_batcher(
        Process(), dedupe=True, policy=tb.Duration(1.0), observers=[events]
    ) as b:
        async with trio.open_nursery() as nursery:
            await submit_all(nursery, b, "k", [1, 1, 2])
    accepted = [e.item_id for e in events.of(tb.ItemAccepted)]
    (started,) = events.of(tb.BatchStarted)
    (finished,) = events.of(tb.BatchFinished)
    # size counts inputs; item_ids lists every caller, slot by slot.
    assert started.size == finished.size == 2
    assert finished.item_ids == (accepted[0], accepted[1], accepted[2])
    assert len(finished.queue_waits) == 3


def test_dedupe_must_be_a_bool_or_a_function() -> None:
    with pytest.raises(TypeError, match=r"^dedupe must be True, False or a function"):
        tb.open_batcher(Process(), dedupe="yes")  # type: ignore[call-overload]


async def test_a_shared_input_counts_once_toward_max_batch_cost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    costed: list[int] = []

    def cost(item: int) -> int:
        costed.append(item)
        return item

    limits = tb.Limits(max_batch_size=10, max_batch_cost=5)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, dedupe=True, cost=cost, policy=tb.Size(), limits=limits
        ) as b:
            results = await submit_all(nursery, b, "k", [3, 3, 3, 2, 2, 1])
            await trio.testing.wait_all_tasks_blocked()
            # 3 + 2 fills the cost bound once, whatever the sharers: it started.
            assert b.statistics().processing_batches == 1
    assert [(inputs, start) for _, inputs, start in process.calls] == [([3, 2], 0.0), ([1], 0.0)]
    # cost is called once per input, never for a sharer.
    assert costed == [3, 2, 1]
    assert [r.unwrap() for r in results] == ["k:3", "k:3", "k:3", "k:2", "k:2", "k:1"]


async def test_submit_many_with_costs_and_dedupe(autojump_clock: trio.testing.MockClock) -> None:
    process = Process()

    def cost(item: int) -> int:
        if item < 0:
            raise ValueError("negative item")
        return item

    limits = tb.Limits(max_batch_cost=4)
    async with tb.open_batcher(process, dedupe=True, cost=cost, limits=limits) as b:
        results = await b.submit_many("k", [2, 2, 9, -1, 2, 1], outcomes=True)
    summary = [r.value if isinstance(r, outcome.Value) else type(r.error) for r in results]  # type: ignore[attr-defined]
    assert summary == [
        "k:2",
        "k:2",
        tb.Rejected,  # costs more than max_batch_cost on its own
        ValueError,
        "k:2",
        "k:1",
    ]
    assert [inputs for _, inputs, _ in process.calls] == [[2, 1]]


async def test_a_sharers_deadline_moves_its_batch_timer_earlier(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    policy = tb.Duration(10.0, deadline_margin=0.5)
    async with tb.open_batcher(process, dedupe=True, policy=policy) as b:
        async with trio.open_nursery() as nursery:
            first = await submit_all(nursery, b, "k", [1])

            async def impatient(task_status: trio.TaskStatus[None]) -> None:
                with trio.move_on_after(2.0):
                    task_status.started()
                    await b.submit("k", 1)

            await nursery.start(impatient)
    # Started 0.5 s before the sharer's deadline, not at t=10.
    assert process.calls == [("k", [1], 1.5)]
    assert first[0].unwrap() == "k:1"


async def test_a_sharer_that_joins_during_processing_waited_zero(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = Events()
    async with tb.open_batcher(Process(), dedupe=True, observers=[events]) as b:
        async with trio.open_nursery() as nursery:
            await submit_all(nursery, b, "k", [1])
            await trio.sleep(0.5)
            await submit_all(nursery, b, "k", [1])
    (finished,) = events.of(tb.BatchFinished)
    assert finished.queue_waits == (0.0, 0.0)
    assert len(finished.item_ids) == 2
