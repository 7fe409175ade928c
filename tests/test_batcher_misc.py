"""Statistics, forgetting idle keys, FIFO order, outputs to the right caller, keys, repr."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import trio
import trio.testing
from tutil import (
    ALL_POLICIES,
    AnyPolicy,
    MyError,
    Outcomes,
    Recorder,
    harness,
    sleep_until,
    stats,
    submit_in_order,
)

import trio_batch as tb

# --- statistics -------------------------------------------------------------


async def test_statistics_at_chosen_moments(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_key_concurrency=1)
    async with harness(process, policy=tb.Immediate(), limits=limits) as h:
        assert h.stats() == (0, 0, 0)
        await h.submit_in_order("x", ["a", "b", "c"])
        await h.submit_in_order("y", ["d"])
        # x: [a] processing, [b, c] queued; y: [d] processing.
        assert h.stats() == (2, 2, 2)
        snapshot = h.batcher.statistics()
        await sleep_until(1.5)
        # x: [b, c] processing; y is idle and forgotten.
        assert h.stats() == (1, 0, 1)
        await sleep_until(2.5)
        assert h.stats() == (0, 0, 0)
    # A snapshot, not a live view.
    assert (snapshot.active_keys, snapshot.queued_items, snapshot.processing_batches) == (2, 2, 2)


async def test_statistics_count_items_of_every_waiting_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = tb.Limits(max_batch_size=2)
    async with harness(Recorder(), policy=tb.Duration(1.0), limits=limits) as h:
        await h.submit_in_order("x", ["x1"])
        await h.submit_in_order("y", ["y1"])
        await h.submit_in_order("z", ["z1"])
        assert h.stats() == (3, 3, 0)
        await sleep_until(2.0)
        assert h.stats() == (0, 0, 0)


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_idle_key_is_forgotten(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    process = Recorder(delay=0.5)
    async with harness(process, policy=policy, limits=tb.Limits(max_batch_size=2)) as h:
        h.spawn("k", "a")
        h.spawn("k", "b")
        await trio.testing.wait_all_tasks_blocked()
        assert h.stats()[0] == 1
        await h.wait_for_callers()
        await trio.testing.wait_all_tasks_blocked()
        assert h.stats() == (0, 0, 0)
    assert h.outcomes.values == {"a": "k:a", "b": "k:b"}


async def test_many_distinct_keys_do_not_accumulate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with tb.open_batcher(process) as batcher:
        for i in range(1000):
            assert await batcher.submit(i, "x") == f"{i}:x"
            assert stats(batcher)[0] <= 1
        await trio.testing.wait_all_tasks_blocked()
        assert stats(batcher) == (0, 0, 0)
    assert len(process.calls) == 1000


class Key:
    """A hashable key that can be weakly referenced."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.name == self.name


@pytest.mark.parametrize("how", ["processed", "failed", "withdrawn"])
async def test_batcher_keeps_no_reference_to_a_forgotten_key(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    async def process(key: Key, inputs: list[str]) -> list[str]:
        if how == "failed":
            raise MyError
        return inputs

    key = Key("k")
    ref = weakref.ref(key)
    policy: AnyPolicy = tb.Size() if how == "withdrawn" else tb.Immediate()
    async with tb.open_batcher(process, policy=policy) as batcher:
        failed = False
        with trio.move_on_after(0.5):
            try:
                await batcher.submit(key, "a")
            except tb.BatchFailed:
                failed = True
        assert failed == (how == "failed")
        await trio.testing.wait_all_tasks_blocked()
        assert stats(batcher) == (0, 0, 0)
        del key
        gc.collect()
        assert ref() is None
        # The batcher still works, with an equal key.
        if how == "processed":
            assert await batcher.submit(Key("k"), "b") == "b"


@pytest.mark.parametrize("how", ["processed-when-full", "withdrawn"])
async def test_pending_duration_timers_do_not_keep_forgotten_keys(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    async def process(key: Key, inputs: list[str]) -> list[str]:
        return inputs

    refs: list[weakref.ref[Key]] = []
    limits = tb.Limits(max_batch_size=1 if how == "processed-when-full" else 100)
    async with tb.open_batcher(process, policy=tb.Duration(3600.0), limits=limits) as batcher:
        for i in range(200):
            key = Key(f"k{i}")
            refs.append(weakref.ref(key))
            if how == "withdrawn":
                with trio.move_on_after(0.001) as scope:
                    await batcher.submit(key, "a")
                assert scope.cancelled_caught
            else:
                # A batch of one is full: processed at once, long before its timer.
                assert await batcher.submit(key, "a") == "a"
            del key
        await trio.testing.wait_all_tasks_blocked()
        assert stats(batcher) == (0, 0, 0)
        gc.collect()
        # Forgotten at once, the last key too: memory must not grow with the keys seen.
        alive = [i for i, ref in enumerate(refs) if ref() is not None]
        assert alive == []


async def test_key_is_forgotten_after_withdrawal_and_timer_does_nothing_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with harness(process, policy=tb.Duration(1.0)) as h:
        scope = h.spawn("k", "a")
        await sleep_until(0.5)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert h.stats() == (0, 0, 0)
        await sleep_until(1.5)  # the stale timer fired: nothing came back to life
        assert h.stats() == (0, 0, 0)
    assert process.calls == []


async def test_rejection_leaves_no_trace_and_key_is_forgotten_once_processed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    policy = tb.Duration(1.0, on_full=tb.OnFull.REJECT)
    limits = tb.Limits(max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1)
    async with harness(process, policy=policy, limits=limits) as h:
        # [a] is full and waits for its timer (REJECT): b is rejected.
        await h.submit_in_order("k", ["a"])
        await sleep_until(0.5)
        await h.submit_in_order("k", ["b"])
        assert h.outcomes.error_types() == {"b": tb.Rejected}
        assert h.stats() == (1, 1, 0)  # as before b arrived
        await sleep_until(1.5)  # [a] was processed at its timer
        assert h.stats() == (0, 0, 0)
        # A new item of the forgotten key starts afresh: a new batch, a new timer.
        await h.submit_in_order("k", ["c"])
        assert h.stats() == (1, 1, 0)
    assert process.calls == [("k", ["a"], 1.0), ("k", ["c"], 2.5)]
    assert h.outcomes.values == {"a": "k:a", "c": "k:c"}


# --- order and outputs ------------------------------------------------------


#: ``(inputs, start)`` of each call in ``test_fifo_within_a_key``, by policy.
_FIFO_CALLS: dict[AnyPolicy, list[tuple[list[int], float]]] = {
    # [0] starts alone; the others queue in batches of three behind it.
    tb.Immediate(): [([0], 0.0), ([1, 2, 3], 1.0), ([4, 5, 6], 2.0), ([7, 8, 9], 3.0)],
    tb.Balanced(2): [([0], 0.0), ([1, 2, 3], 1.0), ([4, 5, 6], 2.0), ([7, 8, 9], 3.0)],
    # Like Immediate: nothing known at first, then every batch behind it is full.
    tb.Adaptive(): [([0], 0.0), ([1, 2, 3], 1.0), ([4, 5, 6], 2.0), ([7, 8, 9], 3.0)],
    tb.Adaptive(0.2): [([0], 0.0), ([1, 2, 3], 1.0), ([4, 5, 6], 2.0), ([7, 8, 9], 3.0)],
    # A batch starts when full (before its timer); [9] is flushed by the drain.
    tb.Size(): [([0, 1, 2], 0.25), ([3, 4, 5], 1.25), ([6, 7, 8], 2.25), ([9], 3.25)],
    tb.Duration(0.5): [([0, 1, 2], 0.25), ([3, 4, 5], 1.25), ([6, 7, 8], 2.25), ([9], 3.25)],
}


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_fifo_within_a_key(autojump_clock: trio.testing.MockClock, policy: AnyPolicy) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=3, max_key_concurrency=1, max_batch_queue_size=10)
    async with harness(process, policy=policy, limits=limits, callers_outlive_block=True) as h:
        for item in range(10):  # item i arrives at i / 8
            await h.submit_in_order("k", [item])
            await trio.sleep(0.125)
    accepted = [i for i in range(10) if i not in h.outcomes.errors]
    # Inputs in arrival order within each batch, batches started in FIFO order.
    assert process.processed() == accepted
    assert set(h.outcomes.error_types().values()) <= {tb.Rejected}
    calls = [(inputs, start) for _, inputs, start in process.calls]
    if policy in _FIFO_CALLS:
        assert calls == _FIFO_CALLS[policy]
        assert accepted == list(range(10))
    else:
        # Duration(REJECT): [0, 1, 2] is full at 0.25 and waits for its timer, so 3
        # is rejected. At 0.5 the timer and 4 arrive together: in Trio's (random)
        # order 4 is rejected or opens the next batch, which is full three items
        # later; the rest is rejected until a slot frees at 1.5.
        assert calls in (
            [([0, 1, 2], 0.5), ([4, 5, 6], 1.5)],
            [([0, 1, 2], 0.5), ([5, 6, 7], 1.5)],
        )


async def test_inputs_in_arrival_order_within_a_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    items = [5, 3, 9, 1, 7, 2, 8]
    async with harness(process, policy=tb.Size(), callers_outlive_block=True) as h:
        await h.submit_in_order("k", items)
    assert process.inputs() == [items]


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_output_i_goes_to_the_caller_of_input_i(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    async def process(key: str, inputs: list[int]) -> list[tuple[str, int]]:
        await trio.sleep(0.25)
        return [(key, x * x) for x in inputs]

    limits = tb.Limits(max_batch_size=5, max_batch_queue_size=50)
    async with harness(process, policy=policy, limits=limits) as h:
        for item in range(20):
            h.spawn(f"k{item % 2}", item)
        await trio.sleep(0.125)
        for item in range(20, 40):
            h.spawn(f"k{item % 2}", item)
    for item, value in h.outcomes.values.items():
        assert value == (f"k{item % 2}", item * item)
    if policy == tb.Duration(0.5, on_full=tb.OnFull.REJECT):
        # Each key's first batch takes 5 of its first 10 callers (in Trio's
        # random order) and, full, waits for its timer at 0.5: the other 5, and
        # all 20 at 0.125, are rejected.
        for key in (0, 1):
            accepted = [item for item in h.outcomes.values if item % 2 == key]
            assert len(accepted) == 5
            assert all(item < 20 for item in accepted)
        assert h.outcomes.error_types() == dict.fromkeys(
            set(range(40)) - set(h.outcomes.values), tb.Rejected
        )
    else:
        assert len(h.outcomes.values) == 40


async def test_process_receives_the_key_and_a_list(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[Any, Any]] = []

    async def process(key: tuple[str, int], inputs: list[str]) -> list[str]:
        seen.append((key, inputs))
        return inputs

    key = ("tenant", 7)
    async with tb.open_batcher(process) as batcher:
        assert await batcher.submit(key, "a") == "a"
    assert len(seen) == 1
    assert seen[0][0] is key
    assert type(seen[0][1]) is list
    assert seen[0][1] == ["a"]


# --- keys -------------------------------------------------------------------


@pytest.mark.parametrize("bad_key", [[1, 2], {"a": 1}, {1}, ([1],)])
async def test_unhashable_key_is_a_type_error_and_the_batcher_carries_on(
    autojump_clock: trio.testing.MockClock, bad_key: Any
) -> None:
    process = Recorder()
    async with tb.open_batcher(process) as batcher:
        with pytest.raises(TypeError, match=r"^key must be hashable"):
            await batcher.submit(bad_key, "a")
        assert stats(batcher) == (0, 0, 0)
        assert await batcher.submit("k", "b") == "k:b"
    assert process.calls == [("k", ["b"], 0.0)]


async def test_unhashable_key_among_waiting_callers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with harness(process, policy=tb.Duration(1.0)) as h:
        await h.submit_in_order("k", ["a"])
        with pytest.raises(TypeError, match=r"^key must be hashable"):
            await h.batcher.submit(["k"], "b")
        await h.submit_in_order("k", ["c"])
    assert process.calls == [("k", ["a", "c"], 1.0)]
    assert h.outcomes.values == {"a": "k:a", "c": "k:c"}


async def test_equal_keys_share_batches(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder()
    async with harness(process, policy=tb.Duration(1.0)) as h:
        await h.submit_in_order(("t", 1), ["a"])
        await h.submit_in_order(("t", 1), ["b"])
    assert process.calls == [(("t", 1), ["a", "b"], 1.0)]


# --- name and repr ----------------------------------------------------------


async def test_repr_gives_name_state_policy_and_active_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    size = "policy=Size()"
    process = Recorder(delay=1.0)
    async with harness(process, policy=tb.Size(), callers_outlive_block=True) as h:
        assert repr(h.batcher) == f"<trio_batch.Batcher 'batcher' open, {size}, active_keys=0>"
        await h.submit_in_order("k", ["a"])
        assert repr(h.batcher) == f"<trio_batch.Batcher 'batcher' open, {size}, active_keys=1>"

        async def look_while_draining() -> None:
            await trio.testing.wait_all_tasks_blocked()
            seen.append(repr(h.batcher))

        seen: list[str] = []
        h.nursery.start_soon(look_while_draining)
    assert seen == [f"<trio_batch.Batcher 'batcher' draining, {size}, active_keys=1>"]
    assert repr(h.batcher) == f"<trio_batch.Batcher 'batcher' closed, {size}, active_keys=0>"
    assert h.outcomes.values == {"a": "k:a"}

    with pytest.raises(MyError):
        async with tb.open_batcher(Recorder(), name="user-loader") as batcher:
            assert repr(batcher) == (
                "<trio_batch.Batcher 'user-loader' open, policy=Immediate(), active_keys=0>"
            )
            raise MyError
    assert repr(batcher) == (
        "<trio_batch.Batcher 'user-loader' closed, policy=Immediate(), active_keys=0>"
    )


# --- checkpoints ------------------------------------------------------------


async def test_submit_is_a_checkpoint_on_success(autojump_clock: trio.testing.MockClock) -> None:
    async def instant(key: str, inputs: list[str]) -> list[str]:
        return inputs  # no checkpoint of its own

    async with tb.open_batcher(instant) as batcher:
        with trio.testing.assert_checkpoints():
            assert await batcher.submit("k", "a") == "a"


async def test_submit_is_a_checkpoint_when_rejected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = tb.Limits(max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1)
    async with harness(Recorder(delay=1.0), limits=limits) as h:
        await h.submit_in_order("k", ["a", "b"])
        with trio.testing.assert_checkpoints(), pytest.raises(tb.Rejected):
            await h.batcher.submit("k", "c")


async def test_submit_is_a_checkpoint_for_an_unhashable_key() -> None:
    async with tb.open_batcher(Recorder()) as batcher:
        with trio.testing.assert_checkpoints(), pytest.raises(TypeError):
            await batcher.submit([], "a")


async def test_submit_is_a_checkpoint_when_closed() -> None:
    async with tb.open_batcher(Recorder()) as batcher:
        pass
    with trio.testing.assert_checkpoints(), pytest.raises(tb.BatcherClosed):
        await batcher.submit("k", "a")


@pytest.mark.parametrize(
    "make_submit",
    ["rejected", "unhashable", "closed"],
)
async def test_submit_checks_for_cancellation_even_when_it_would_fail_at_once(
    autojump_clock: trio.testing.MockClock, make_submit: str
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, limits=limits) as batcher:
            await submit_in_order(nursery, Outcomes(), batcher, "k", ["a", "b"])
            if make_submit != "closed":
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await batcher.submit([] if make_submit == "unhashable" else "k", "c")
                assert scope.cancelled_caught
        if make_submit == "closed":
            with trio.CancelScope() as scope:
                scope.cancel()
                await batcher.submit("k", "c")
            assert scope.cancelled_caught
    assert "c" not in process.processed()


async def test_process_may_run_blocking_work_in_a_thread(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def blocking(inputs: list[int]) -> list[int]:
        return [x + 1 for x in inputs]

    async def process(key: str, inputs: list[int]) -> list[int]:
        return await trio.to_thread.run_sync(blocking, inputs)

    async with harness(process) as h:
        for item in range(3):
            h.spawn("k", item)
    assert h.outcomes.values == {0: 1, 1: 2, 2: 3}
