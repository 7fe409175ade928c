"""Leaving the block: drain on a normal exit, prompt teardown on an exception or cancel."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from tutil import (
    ALL_POLICIES,
    AnyPolicy,
    MyError,
    Outcomes,
    Recorder,
    rejects_when_full,
    sleep_until,
    submit_in_order,
)

import trio_batch as tb

# --- drain ------------------------------------------------------------------


async def test_exit_with_nothing_to_do_is_immediate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    async with tb.open_batcher(process, policy=tb.Duration(100.0)):
        pass
    assert trio.current_time() == 0.0
    assert process.calls == []


async def test_drain_flushes_a_partial_size_batch(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=0.5)
    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size()) as batcher:
            await submit_in_order(nursery, outcomes, batcher, "k", [1, 2, 3])
            await trio.sleep(1.0)
            assert process.calls == []
        assert trio.current_time() == 1.5
        # Every caller had its outcome when the block exited (let them record it).
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes.values == {1: "k:1", 2: "k:2", 3: "k:3"}
    assert process.calls == [("k", [1, 2, 3], 1.0)]


@pytest.mark.parametrize("on_full", [tb.OnFull.PROCESS, tb.OnFull.REJECT])
async def test_drain_does_not_wait_out_a_duration_timer(
    autojump_clock: trio.testing.MockClock, on_full: tb.OnFull
) -> None:
    process = Recorder(delay=0.5)
    outcomes = Outcomes()
    policy = tb.Duration(100.0, on_full=on_full)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=policy, limits=tb.Limits(max_batch_size=2)
        ) as batcher:
            # [a, b] is full: REJECT keeps it waiting for its timer; [c] is partial.
            await submit_in_order(nursery, outcomes, batcher, "k", ["a", "b"])
            if on_full is tb.OnFull.PROCESS:
                await submit_in_order(nursery, outcomes, batcher, "k", ["c"])
            await trio.sleep(1.0)
        assert trio.current_time() == 1.5
    if on_full is tb.OnFull.PROCESS:
        assert process.calls == [("k", ["a", "b"], 0.0), ("k", ["c"], 1.0)]
        assert outcomes.values == {"a": "k:a", "b": "k:b", "c": "k:c"}
    else:
        assert process.calls == [("k", ["a", "b"], 1.0)]
        assert outcomes.values == {"a": "k:a", "b": "k:b"}


async def test_drain_waits_for_in_flight_batches(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=1.0)
    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Immediate()) as batcher:
            await submit_in_order(nursery, outcomes, batcher, "k", ["a"])
            await trio.sleep(0.25)
        assert trio.current_time() == 1.0
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes.values == {"a": "k:a"}
    assert process.cancelled == []


async def test_drain_respects_max_key_concurrency(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=1.0)
    outcomes = Outcomes()
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits) as batcher:
            # [a, b] runs; [c, d] is full and waits; [e] is partial.
            await submit_in_order(nursery, outcomes, batcher, "k", list("abcde"))
        assert trio.current_time() == 3.0
    assert process.calls == [
        ("k", ["a", "b"], 0.0),
        ("k", ["c", "d"], 1.0),
        ("k", ["e"], 2.0),
    ]
    assert process.max_running["k"] == 1


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_drain_gives_every_caller_its_outcome(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    process = Recorder(delay=1.0)
    outcomes = Outcomes()
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=2, max_batch_queue_size=50)
    items = [(key, f"{key}{i}") for i in range(7) for key in ("x", "y", "z")]
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=policy, limits=limits) as batcher:
            for key, item in items:
                outcomes.spawn(nursery, batcher, key, item)
            await trio.testing.wait_all_tasks_blocked()
        exit_time = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        assert set(outcomes.times) == {item for _, item in items}
    assert max(process.max_running.values()) <= 2
    assert max(end for _, _, end in process.finished) == exit_time
    assert process.cancelled == []
    processed = process.processed()
    assert sorted(processed) == sorted(outcomes.values)
    for key, item in items:
        if item in outcomes.values:
            assert outcomes.values[item] == f"{key}:{item}"
        else:
            assert rejects_when_full(policy)
            assert isinstance(outcomes.errors[item], tb.Rejected)


async def test_submit_after_exit_raises_batcher_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with tb.open_batcher(process) as batcher:
        assert await batcher.submit("k", 1) == "k:1"
    with pytest.raises(tb.BatcherClosed):
        await batcher.submit("k", 2)
    assert process.inputs() == [[1]]


async def test_submit_while_draining_raises_batcher_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    outcomes = Outcomes()
    late: list[BaseException] = []

    async def submit_late(batcher: tb.Batcher[str, str, str]) -> None:
        await sleep_until(0.5)
        try:
            await batcher.submit("k", "late")
        except tb.BatcherClosed as exc:
            late.append(exc)

    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Immediate()) as batcher:
            await submit_in_order(nursery, outcomes, batcher, "k", ["a"])
            nursery.start_soon(submit_late, batcher)
            await trio.sleep(0.25)
        assert trio.current_time() == 1.0
    assert len(late) == 1
    assert outcomes.values == {"a": "k:a"}
    assert process.inputs() == [["a"]]


# --- teardown ---------------------------------------------------------------


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_body_error_tears_down_promptly(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    process = Recorder(delay=10.0)
    outcomes = Outcomes()
    error = MyError("from the body")
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1)
    async with trio.open_nursery() as nursery:
        with pytest.raises(MyError) as exc_info:
            async with tb.open_batcher(process, policy=policy, limits=limits) as batcher:
                outcomes.spawn(nursery, batcher, "k", "a")
                outcomes.spawn(nursery, batcher, "k", "b")
                await trio.testing.wait_all_tasks_blocked()
                await submit_in_order(nursery, outcomes, batcher, "k", ["c"])
                await sleep_until(1.0)
                raise error
        # Not wrapped in an exception group: the very exception the body raised.
        assert exc_info.value is error
        assert trio.current_time() == 1.0
    # Every waiting caller got BatcherClosed at once; the in-flight process was cancelled.
    expected: dict[str, type[tb.BatchError]] = dict.fromkeys("abc", tb.BatcherClosed)
    if rejects_when_full(policy):
        expected["c"] = tb.Rejected
    assert outcomes.error_types() == expected
    assert set(outcomes.times.values()) <= {0.0, 1.0}
    assert [t for _, _, t in process.cancelled] == [1.0]
    assert process.finished == []


async def test_body_base_exception_propagates_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=10.0)
    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        with pytest.raises(KeyboardInterrupt):
            async with tb.open_batcher(process) as batcher:
                outcomes.spawn(nursery, batcher, "k", "a")
                await sleep_until(1.0)
                raise KeyboardInterrupt
    assert outcomes.error_types() == {"a": tb.BatcherClosed}
    assert trio.current_time() == 1.0


async def test_body_error_with_nothing_running_propagates_as_itself() -> None:
    with pytest.raises(MyError, match=r"^plain$"):
        async with tb.open_batcher(Recorder()):
            raise MyError("plain")


async def test_body_error_while_the_body_itself_waits_in_submit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=10.0)

    async def fail_soon() -> None:
        await sleep_until(1.0)
        raise MyError

    with pytest.raises(MyError):
        async with tb.open_batcher(process) as batcher:
            with trio.move_on_after(0.5):
                await batcher.submit("k", "a")  # cancelled during processing
            await fail_soon()
    assert trio.current_time() == 1.0


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_block_cancelled_from_outside_tears_down_promptly(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    process = Recorder(delay=10.0)
    outcomes = Outcomes()
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1)
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            async with tb.open_batcher(process, policy=policy, limits=limits) as batcher:
                outcomes.spawn(nursery, batcher, "k", "a")
                outcomes.spawn(nursery, batcher, "k", "b")
                await trio.testing.wait_all_tasks_blocked()
                await submit_in_order(nursery, outcomes, batcher, "k", ["c"])
                await sleep_until(1.0)
                scope.cancel()
                await trio.sleep(100.0)
        assert scope.cancelled_caught
        assert trio.current_time() == 1.0
    expected: dict[str, type[tb.BatchError]] = dict.fromkeys("abc", tb.BatcherClosed)
    if rejects_when_full(policy):
        expected["c"] = tb.Rejected
    assert outcomes.error_types() == expected
    assert [t for _, _, t in process.cancelled] == [1.0]
    assert process.finished == []


async def test_block_with_deadline_exits_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=10.0)
    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        with trio.move_on_after(2.0):
            async with tb.open_batcher(process, policy=tb.Size()) as batcher:
                await submit_in_order(nursery, outcomes, batcher, "k", ["a"])
                # The body returns, the drain starts, and the deadline cuts it short.
        assert trio.current_time() == 2.0
    assert outcomes.error_types() == {"a": tb.BatcherClosed}
    assert [t for _, _, t in process.cancelled] == [2.0]


async def test_submit_after_teardown_raises_batcher_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    batchers: list[tb.Batcher[str, str, str]] = []
    with pytest.raises(MyError):
        async with tb.open_batcher(process) as batcher:
            batchers.append(batcher)
            raise MyError
    with pytest.raises(tb.BatcherClosed):
        await batchers[0].submit("k", "a")
    assert process.calls == []
