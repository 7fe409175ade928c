"""When batches start: each policy's rule on an arriving item and when a batch finishes."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from tutil import ALL_POLICIES, AnyPolicy, Recorder, harness, rejects_when_full, sleep_until

import trio_batch as tb

# --- Immediate --------------------------------------------------------------


async def test_immediate_starts_at_once(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=0.25)
    async with tb.open_batcher(process, policy=tb.Immediate()) as batcher:
        assert await batcher.submit("k", 1) == "k:1"
        assert trio.current_time() == 0.25
    assert process.calls == [("k", [1], 0.0)]


async def test_immediate_keeps_filling_in_the_same_scheduling_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    async with harness(process, policy=tb.Immediate()) as h:
        for item in range(5):
            h.spawn("k", item)
    assert len(process.calls) == 1
    key, inputs, started = process.calls[0]
    assert (key, sorted(inputs), started) == ("k", [0, 1, 2, 3, 4], 0.0)
    assert h.outcomes.values == {i: f"k:{i}" for i in range(5)}


async def test_immediate_same_round_overflow_opens_next_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=10)
    async with harness(process, policy=tb.Immediate(), limits=limits) as h:
        for item in range(5):
            h.spawn("k", item)
    # Three batches, all started at once: sizes 2, 2, 1.
    assert sorted(len(inputs) for inputs in process.inputs()) == [1, 2, 2]
    assert sorted(process.processed()) == [0, 1, 2, 3, 4]
    assert [t for _, _, t in process.calls] == [0.0, 0.0, 0.0]


async def test_immediate_item_after_processing_began_opens_new_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    async with harness(process, policy=tb.Immediate()) as h:
        await h.submit_in_order("k", ["a"])
        await trio.sleep(0.5)
        await h.submit_in_order("k", ["b"])
    assert process.calls == [("k", ["a"], 0.0), ("k", ["b"], 0.5)]
    assert h.outcomes.times == {"a": 1.0, "b": 1.5}


async def test_immediate_on_finish_starts_oldest_batch_whatever_its_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1)
    async with harness(process, policy=tb.Immediate(), limits=limits) as h:
        await h.submit_in_order("k", ["a", "b", "c", "d"])
    assert process.calls == [
        ("k", ["a"], 0.0),
        ("k", ["b", "c"], 1.0),
        ("k", ["d"], 2.0),
    ]
    assert h.outcomes.values == {x: f"k:{x}" for x in "abcd"}


# --- Size -------------------------------------------------------------------


async def test_size_starts_only_when_full(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=0.25)
    limits = tb.Limits(max_batch_size=3)
    async with harness(process, policy=tb.Size(), limits=limits) as h:
        await h.submit_in_order("k", [1, 2])
        await trio.sleep(10)
        assert process.calls == []
        await h.submit_in_order("k", [3])
    assert process.calls == [("k", [1, 2, 3], 10.0)]
    assert h.outcomes.times == {1: 10.25, 2: 10.25, 3: 10.25}


async def test_size_full_batch_waits_for_a_slot(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1)
    async with harness(process, policy=tb.Size(), limits=limits) as h:
        await h.submit_in_order("k", ["a", "b", "c", "d"])
    assert process.calls == [("k", ["a", "b"], 0.0), ("k", ["c", "d"], 1.0)]


async def test_size_on_finish_starts_oldest_only_if_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1)
    async with harness(process, policy=tb.Size(), limits=limits) as h:
        # [a, b] starts at 0; [c, d] is full and waits; [e] is partial.
        await h.submit_in_order("k", ["a", "b", "c", "d", "e"])
        await sleep_until(5.0)
        # [e] did not start when [c, d] finished at 2.
        assert process.calls == [("k", ["a", "b"], 0.0), ("k", ["c", "d"], 1.0)]
        await h.submit_in_order("k", ["f"])
    assert process.calls[2] == ("k", ["e", "f"], 5.0)
    assert h.outcomes.times["e"] == h.outcomes.times["f"] == 6.0


async def test_size_batch_that_was_full_stays_ready_after_a_withdrawal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1)
    async with harness(process, policy=tb.Size(), limits=limits) as h:
        await h.submit_in_order("k", ["a", "b", "c"])
        d_scope = h.spawn("k", "d")
        await trio.sleep(0.5)
        d_scope.cancel()  # [c, d] was full; it stays ready with [c] only
        await sleep_until(3.0)
        assert process.calls == [("k", ["a", "b"], 0.0), ("k", ["c"], 1.0)]
        assert h.outcomes.times["c"] == 2.0
    assert isinstance(h.outcomes.errors["d"], trio.Cancelled)


# --- Duration ---------------------------------------------------------------


@pytest.mark.parametrize("on_full", [tb.OnFull.PROCESS, tb.OnFull.REJECT])
async def test_duration_starts_when_the_timer_expires(
    autojump_clock: trio.testing.MockClock, on_full: tb.OnFull
) -> None:
    process = Recorder(delay=0.25)
    async with harness(process, policy=tb.Duration(0.5, on_full=on_full)) as h:
        await h.submit_in_order("k", ["a"])
        await trio.sleep(0.25)
        await h.submit_in_order("k", ["b"])
    assert process.calls == [("k", ["a", "b"], 0.5)]
    assert h.outcomes.times == {"a": 0.75, "b": 0.75}


async def test_duration_zero_delay_starts_at_once(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder()
    async with tb.open_batcher(process, policy=tb.Duration(0)) as batcher:
        assert await batcher.submit("k", 1) == "k:1"
    assert process.calls == [("k", [1], 0.0)]


async def test_duration_is_a_maximum_age_not_a_debounce(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with harness(process, policy=tb.Duration(0.875)) as h:
        # A steady trickle, one item every 0.25 s, never a 0.875 s gap.
        for item in range(12):
            h.spawn("k", item)
            await trio.sleep(0.25)
    assert process.calls == [
        ("k", [0, 1, 2, 3], 0.875),
        ("k", [4, 5, 6, 7], 1.875),
        ("k", [8, 9, 10, 11], 2.875),
    ]


async def test_duration_on_full_process_is_ready_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    policy = tb.Duration(10.0, on_full=tb.OnFull.PROCESS)
    async with harness(process, policy=policy, limits=tb.Limits(max_batch_size=2)) as h:
        await h.submit_in_order("k", ["a"])
        await trio.sleep(1.0)
        await h.submit_in_order("k", ["b", "c"])
    # [a, b] full at 1 -> starts at 1; [c] opened at 1 -> timer expires at 11.
    assert process.calls == [("k", ["a", "b"], 1.0), ("k", ["c"], 11.0)]


async def test_duration_on_full_reject_waits_for_timer_and_rejects_arrivals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    policy = tb.Duration(10.0, on_full=tb.OnFull.REJECT)
    async with harness(process, policy=policy, limits=tb.Limits(max_batch_size=2)) as h:
        await h.submit_in_order("k", ["a"])
        await trio.sleep(1.0)
        await h.submit_in_order("k", ["b"])
        await trio.sleep(1.0)
        await h.submit_in_order("k", ["c"])
        assert isinstance(h.outcomes.errors["c"], tb.Rejected)
        assert h.outcomes.times["c"] == 2.0
        await sleep_until(10.5)
        # Once [a, b] has begun processing, a new batch can open.
        await h.submit_in_order("k", ["d"])
    assert process.calls == [("k", ["a", "b"], 10.0), ("k", ["d"], 20.5)]
    assert h.outcomes.values == {"a": "k:a", "b": "k:b", "d": "k:d"}


@pytest.mark.parametrize(
    ("on_full", "expected_start"), [(tb.OnFull.PROCESS, 1.5), (tb.OnFull.REJECT, 2.25)]
)
async def test_duration_full_batch_and_a_freed_slot(
    autojump_clock: trio.testing.MockClock, on_full: tb.OnFull, expected_start: float
) -> None:
    process = Recorder(delay=0.5)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1)
    policy = tb.Duration(1.0, on_full=on_full)
    async with harness(process, policy=policy, limits=limits) as h:
        await h.submit_in_order("k", ["a"])  # runs 1.0 - 1.5
        await sleep_until(1.25)
        # [b, c] is full at 1.25, timer at 2.25; the slot frees at 1.5.
        await h.submit_in_order("k", ["b", "c"])
    assert process.calls == [("k", ["a"], 1.0), ("k", ["b", "c"], expected_start)]


async def test_duration_on_finish_starts_an_expired_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=2.0)
    limits = tb.Limits(max_key_concurrency=1)
    async with harness(process, policy=tb.Duration(0.5), limits=limits) as h:
        await h.submit_in_order("k", ["a"])  # runs 0.5 - 2.5
        await sleep_until(1.0)
        await h.submit_in_order("k", ["b"])  # expires at 1.5
    assert process.calls == [("k", ["a"], 0.5), ("k", ["b"], 2.5)]


async def test_duration_on_finish_does_not_start_a_young_partial_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=0.5)
    limits = tb.Limits(max_key_concurrency=1)
    async with harness(process, policy=tb.Duration(1.0), limits=limits) as h:
        await h.submit_in_order("k", ["a"])  # runs 1.0 - 1.5
        await sleep_until(1.25)
        await h.submit_in_order("k", ["b"])  # expires at 2.25
    assert process.calls == [("k", ["a"], 1.0), ("k", ["b"], 2.25)]


async def test_duration_timer_of_processed_batch_does_not_flush_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with harness(process, policy=tb.Duration(1.0), limits=tb.Limits(max_batch_size=2)) as h:
        # [a, b] is full at 0 and processed at once; its timer (1.0) is stale.
        await h.submit_in_order("k", ["a", "b"])
        await sleep_until(0.5)
        await h.submit_in_order("k", ["c"])
    assert process.calls == [("k", ["a", "b"], 0.0), ("k", ["c"], 1.5)]


async def test_duration_timer_of_withdrawn_batch_does_not_flush_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with harness(process, policy=tb.Duration(1.0)) as h:
        a_scope = h.spawn("k", "a")
        await sleep_until(0.5)
        a_scope.cancel()  # [a] is dropped; its timer (1.0) is stale
        await sleep_until(0.75)
        await h.submit_in_order("k", ["b"])
    assert process.calls == [("k", ["b"], 1.75)]
    assert isinstance(h.outcomes.errors["a"], trio.Cancelled)


async def test_duration_timers_are_per_batch(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder()
    async with harness(process, policy=tb.Duration(1.0)) as h:
        await h.submit_in_order("x", ["x1"])
        await sleep_until(0.5)
        await h.submit_in_order("y", ["y1"])
    assert process.calls == [("x", ["x1"], 1.0), ("y", ["y1"], 1.5)]


# --- Balanced ---------------------------------------------------------------


async def test_balanced_starts_at_once_when_the_key_is_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=0.25)
    async with tb.open_batcher(process, policy=tb.Balanced(3)) as batcher:
        assert await batcher.submit("k", "a") == "k:a"
        await trio.sleep(1.0)
        assert await batcher.submit("k", "b") == "k:b"
    assert process.calls == [("k", ["a"], 0.0), ("k", ["b"], 1.25)]


async def test_balanced_waits_for_hint_while_a_batch_is_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=10.0)
    async with harness(process, policy=tb.Balanced(3)) as h:
        await h.submit_in_order("k", ["a"])
        for t, item in [(1.0, "b"), (2.0, "c"), (3.0, "d"), (4.0, "e")]:
            await sleep_until(t)
            await h.submit_in_order("k", [item])
        assert process.calls == [("k", ["a"], 0.0), ("k", ["b", "c", "d"], 3.0)]
    # [e] waits for the hint until a batch finishes (at 10), then starts.
    assert process.calls[2] == ("k", ["e"], 10.0)


async def test_balanced_on_finish_starts_oldest_batch_whatever_its_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    async with harness(process, policy=tb.Balanced(3)) as h:
        await h.submit_in_order("k", ["a"])
        await sleep_until(0.5)
        await h.submit_in_order("k", ["b"])
    assert process.calls == [("k", ["a"], 0.0), ("k", ["b"], 1.0)]


async def test_balanced_hint_batch_waits_for_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_key_concurrency=1)
    async with harness(process, policy=tb.Balanced(2), limits=limits) as h:
        await h.submit_in_order("k", ["a", "b", "c"])
    assert process.calls == [("k", ["a"], 0.0), ("k", ["b", "c"], 1.0)]


# --- shared by every policy -------------------------------------------------


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_max_key_concurrency_is_never_exceeded(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=2, max_batch_queue_size=50)
    async with harness(process, policy=policy, limits=limits) as h:
        for round_ in range(4):
            for i in range(10):
                for key in ("x", "y"):
                    h.spawn(key, (key, round_, i))
            await trio.sleep(0.25)
    assert set(process.max_running) == {"x", "y"}
    assert max(process.max_running.values()) <= 2
    if not rejects_when_full(policy):
        # The limit is per key: both keys ran two batches at once.
        assert process.max_running == {"x": 2, "y": 2}
        assert process.max_running_total == 4
        assert h.outcomes.errors == {}
    assert len(h.outcomes.values) + len(h.outcomes.errors) == 80
    assert all(isinstance(e, tb.Rejected) for e in h.outcomes.errors.values())
    assert sorted(process.processed()) == sorted(h.outcomes.values)


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_keys_are_batched_separately(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    process = Recorder()
    async with harness(process, policy=policy, limits=tb.Limits(max_batch_size=2)) as h:
        for key in ("x", "y"):
            h.spawn(key, f"{key}1")
            h.spawn(key, f"{key}2")
    assert sorted((key, sorted(inputs)) for key, inputs, _ in process.calls) == [
        ("x", ["x1", "x2"]),
        ("y", ["y1", "y2"]),
    ]
    assert h.outcomes.values == {"x1": "x:x1", "x2": "x:x2", "y1": "y:y1", "y2": "y:y2"}
