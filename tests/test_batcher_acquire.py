"""``acquire``: entered in the batch's task before ``process``, always released."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from tutil import (
    AnyPolicy,
    MyError,
    Outcomes,
    ResourceRecorder,
    Resources,
    harness,
    sleep_until,
)

import trio_batch as tb


async def test_acquire_is_entered_in_the_batch_task_before_process_and_exited_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resources = Resources(delay=0.25)
    process = ResourceRecorder(resources, delay=0.5)
    async with tb.open_batcher(process.with_resource, acquire=resources) as batcher:
        assert await batcher.submit("k", "a") == "k:a"
        assert trio.current_time() == 0.75
        caller_task = trio.lowlevel.current_task()
    assert resources.events == [
        ("enter", "k", 0.0),
        ("acquired", "k", 0.25),
        ("release", "k", 0.75),
    ]
    # process ran with the yielded resource, while it was held.
    assert process.seen == [("resource-k-1", ["enter", "acquired"])]
    assert process.calls == [("k", ["a"], 0.25)]
    # Both ran in the batch's own task, not in the caller's.
    assert resources.tasks == process.tasks
    assert resources.tasks[0] is not caller_task


async def test_acquire_is_called_per_batch_with_its_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resources = Resources()
    process = ResourceRecorder(resources)
    async with harness(process.with_resource, acquire=resources) as h:
        await h.submit_in_order("x", ["x1"])
        await h.submit_in_order("y", ["y1"])
    assert [(what, key) for what, key, _ in resources.events] == [
        ("enter", "x"),
        ("acquired", "x"),
        ("release", "x"),
        ("enter", "y"),
        ("acquired", "y"),
        ("release", "y"),
    ]
    assert [resource for resource, _ in process.seen] == ["resource-x-1", "resource-y-2"]


async def test_acquire_is_released_when_process_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resources = Resources()
    error = MyError("process failed")

    async def process(key: str, inputs: list[str], resource: str) -> list[str]:
        await trio.sleep(1.0)
        assert resources.kinds() == ["enter", "acquired"]
        raise error

    async with harness(process, acquire=resources) as h:
        h.spawn("k", "a")
        h.spawn("k", "b")
    assert resources.events == [
        ("enter", "k", 0.0),
        ("acquired", "k", 0.0),
        ("release:MyError", "k", 1.0),
    ]
    assert h.outcomes.error_types() == {"a": tb.BatchFailed, "b": tb.BatchFailed}
    assert all(e.__cause__ is error for e in h.outcomes.errors.values())


async def test_acquire_error_is_resource_acquisition_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    raised: list[MyError] = []

    def make_error() -> MyError:
        raised.append(MyError("no connection"))
        return raised[-1]

    resources = Resources(delay=0.5, enter_error=make_error)
    process = ResourceRecorder(resources)
    async with harness(process.with_resource, acquire=resources) as h:
        for item in ["a", "b", "c"]:
            h.spawn("k", item)
        await h.wait_for_callers()
        assert process.calls == []
        assert h.outcomes.error_types() == dict.fromkeys("abc", tb.ResourceAcquisitionFailed)
        assert len(raised) == 1
        assert all(e.__cause__ is raised[0] for e in h.outcomes.errors.values())
        assert len({id(e) for e in h.outcomes.errors.values()}) == 3
        assert set(h.outcomes.times.values()) == {0.5}
        # The h.batcher carries on.
        resources.enter_error = None
        assert await h.batcher.submit("k", "d") == "k:d"
        await trio.testing.wait_all_tasks_blocked()
        assert h.stats() == (0, 0, 0)
    assert process.calls == [("k", ["d"], 1.0)]


async def test_error_on_release_after_process_returned_is_batch_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    raised: list[MyError] = []

    def make_error() -> MyError:
        raised.append(MyError("commit failed"))
        return raised[-1]

    resources = Resources(exit_error=make_error)
    process = ResourceRecorder(resources, delay=1.0)
    async with harness(process.with_resource, acquire=resources) as h:
        h.spawn("k", "a")
        h.spawn("k", "b")
        await h.wait_for_callers()
        # The h.batcher carries on.
        resources.exit_error = None
        assert await h.batcher.submit("k", "c") == "k:c"
    assert len(process.finished) == 2
    assert h.outcomes.error_types() == {"a": tb.BatchFailed, "b": tb.BatchFailed}
    assert len(raised) == 1
    assert all(e.__cause__ is raised[0] for e in h.outcomes.errors.values())


async def test_acquire_is_released_when_every_item_is_withdrawn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resources = Resources(delay=1.0)
    process = ResourceRecorder(resources)
    async with harness(process.with_resource, acquire=resources) as h:
        a_scope = h.spawn("k", "a")
        await sleep_until(0.5)
        a_scope.cancel()
        await sleep_until(2.0)
        assert h.stats() == (0, 0, 0)
        assert resources.held["k"] == 0
        await h.submit_in_order("k", ["b"])
    assert h.outcomes.error_types() == {"a": trio.Cancelled}
    assert h.outcomes.times["a"] == 0.5
    # a was never processed; anything acquired for it was released.
    assert process.inputs() == [["b"]]
    assert resources.kinds().count("acquired") == len(
        [k for k in resources.kinds() if k.startswith("release")]
    )
    assert resources.held["k"] == 0


async def test_caller_withdrawn_while_acquiring_is_not_processed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resources = Resources(delay=1.0)
    process = ResourceRecorder(resources)
    async with harness(process.with_resource, acquire=resources) as h:
        a_scope = h.spawn("k", "a")
        await trio.testing.wait_all_tasks_blocked()
        h.spawn("k", "b")
        await sleep_until(0.5)
        a_scope.cancel()
    assert process.calls == [("k", ["b"], 1.0)]
    assert h.outcomes.error_types() == {"a": trio.Cancelled}
    assert h.outcomes.values == {"b": "k:b"}


async def test_acquire_is_released_on_teardown(autojump_clock: trio.testing.MockClock) -> None:
    resources = Resources(delay=0.5)
    process = ResourceRecorder(resources, delay=10.0)
    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        with pytest.raises(MyError):
            async with tb.open_batcher(process.with_resource, acquire=resources) as batcher:
                outcomes.spawn(nursery, batcher, "x", "x1")  # processing at 1.0
                await sleep_until(0.75)
                outcomes.spawn(nursery, batcher, "y", "y1")  # acquiring at 1.0
                await sleep_until(1.0)
                raise MyError
    assert outcomes.error_types() == {"x1": tb.BatcherClosed, "y1": tb.BatcherClosed}
    assert ("release:Cancelled", "x", 1.0) in resources.events
    assert resources.held == {"x": 0, "y": 0}
    assert trio.current_time() == 1.0


@pytest.mark.parametrize(
    "policy",
    [pytest.param(tb.Immediate(), id="immediate"), pytest.param(tb.Balanced(2), id="balanced")],
)
async def test_batch_keeps_filling_while_its_resource_is_acquired(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    resources = Resources(delay=1.0)
    process = ResourceRecorder(resources, delay=0.5)
    async with harness(process.with_resource, acquire=resources, policy=policy) as h:
        await h.submit_in_order("k", ["a"])
        await sleep_until(0.5)
        await h.submit_in_order("k", ["b"])
        await sleep_until(0.75)
        await h.submit_in_order("k", ["c"])
    assert resources.times("enter") == [0.0]  # acquired as soon as it decided to start
    assert process.calls == [("k", ["a", "b", "c"], 1.0)]
    assert h.outcomes.times == {"a": 1.5, "b": 1.5, "c": 1.5}


async def test_full_batch_stops_filling_while_acquiring(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resources = Resources(delay=1.0)
    process = ResourceRecorder(resources)
    async with harness(
        process.with_resource, acquire=resources, limits=tb.Limits(max_batch_size=2)
    ) as h:
        await h.submit_in_order("k", ["a", "b", "c"])
    # [c] opened its own batch, which acquired at once too (a slot was free).
    assert resources.times("enter") == [0.0, 0.0]
    assert sorted(process.calls) == [("k", ["a", "b"], 1.0), ("k", ["c"], 1.0)]


@pytest.mark.parametrize(
    ("policy", "enter_at", "items"),
    [
        pytest.param(tb.Size(), 1.0, ["a", "b", "c"], id="size"),
        pytest.param(tb.Duration(0.75), 0.75, ["a", "b"], id="duration"),
        pytest.param(
            tb.Duration(0.75, on_full=tb.OnFull.REJECT), 0.75, ["a", "b"], id="duration-reject"
        ),
    ],
)
async def test_size_and_duration_acquire_only_once_the_batch_is_ready(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy, enter_at: float, items: list[str]
) -> None:
    resources = Resources(delay=0.5)
    process = ResourceRecorder(resources)
    async with harness(
        process.with_resource, acquire=resources, policy=policy, limits=tb.Limits(max_batch_size=3)
    ) as h:
        await h.submit_in_order("k", ["a"])
        await sleep_until(0.5)
        await h.submit_in_order("k", ["b"])
        assert resources.events == []  # not ready: nothing acquired yet
        if isinstance(policy, tb.Size):
            await sleep_until(1.0)
            assert resources.events == []
            await h.submit_in_order("k", ["c"])  # full
    assert resources.times("enter") == [enter_at]
    assert process.calls == [("k", items, enter_at + 0.5)]


async def test_duration_batch_keeps_filling_while_acquiring(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resources = Resources(delay=1.0)
    process = ResourceRecorder(resources)
    async with harness(process.with_resource, acquire=resources, policy=tb.Duration(0.5)) as h:
        await h.submit_in_order("k", ["a"])
        await sleep_until(1.0)  # acquiring from 0.5 to 1.5
        await h.submit_in_order("k", ["b"])
    assert resources.times("enter") == [0.5]
    assert process.calls == [("k", ["a", "b"], 1.5)]


async def test_acquiring_batches_take_concurrency_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resources = Resources(delay=1.0)
    process = ResourceRecorder(resources, delay=1.0)
    limits = tb.Limits(max_batch_size=1, max_key_concurrency=1)
    async with harness(process.with_resource, acquire=resources, limits=limits) as h:
        await h.submit_in_order("k", ["a"])
        await sleep_until(0.5)
        await h.submit_in_order("k", ["b"])
    assert resources.times("enter") == [0.0, 2.0]
    assert resources.max_held["k"] == 1
    assert process.calls == [("k", ["a"], 1.0), ("k", ["b"], 3.0)]


async def test_acquiring_batches_count_toward_max_batch_queue_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resources = Resources(delay=1.0)
    process = ResourceRecorder(resources, delay=1.0)
    limits = tb.Limits(max_batch_size=1, max_key_concurrency=5, max_batch_queue_size=2)
    async with harness(process.with_resource, acquire=resources, limits=limits) as h:
        # [a] and [b] are started, full and still acquiring: the queue is full.
        await h.submit_in_order("k", ["a", "b", "c"])
        assert h.outcomes.error_types() == {"c": tb.Rejected}
        assert h.stats() == (1, 2, 2)
        await sleep_until(1.5)  # both began processing at 1.0
        assert h.stats() == (1, 0, 2)
        await h.submit_in_order("k", ["d"])
    assert h.outcomes.values == {"a": "k:a", "b": "k:b", "d": "k:d"}
    assert sorted(process.inputs()) == [["a"], ["b"], ["d"]]


async def test_statistics_count_an_acquiring_batch_as_started_and_its_items_as_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resources = Resources(delay=1.0)
    process = ResourceRecorder(resources, delay=1.0)
    async with harness(process.with_resource, acquire=resources) as h:
        h.spawn("k", "a")
        h.spawn("k", "b")
        await sleep_until(0.5)
        assert h.stats() == (1, 2, 1)
        await sleep_until(1.5)
        assert h.stats() == (1, 0, 1)
        await sleep_until(2.5)
        assert h.stats() == (0, 0, 0)
