"""A caller's cancellation: withdrawn before processing, Cancelled-but-carried-on after."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from tutil import (
    ALL_POLICIES,
    AnyPolicy,
    Harness,
    Outcomes,
    Recorder,
    harness,
    rejects_when_full,
    sleep_until,
    stats,
)

import trio_batch as tb

# When the first full batch of two items submitted at 0 begins processing.
FIRST_START = {"duration-reject": 0.5}
POLICY_IDS = [p.id for p in ALL_POLICIES]


async def _hold_the_slot(h: Harness) -> None:
    """Submit a full batch [h1, h2] in one round: it takes the key's only slot."""
    h.spawn("k", "h1")
    h.spawn("k", "h2")
    await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_caller_cancelled_before_processing_is_withdrawn(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy, request: pytest.FixtureRequest
) -> None:
    first_start = FIRST_START.get(request.node.callspec.id, 0.0)
    process = Recorder(delay=10.0)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1)
    async with harness(process, policy=policy, limits=limits) as h:
        await _hold_the_slot(h)
        await sleep_until(1.0)
        b_scope = h.spawn("k", "b")
        await trio.testing.wait_all_tasks_blocked()
        h.spawn("k", "c")
        await sleep_until(2.0)
        b_scope.cancel()
    assert isinstance(h.outcomes.errors["b"], trio.Cancelled)
    assert h.outcomes.times["b"] == 2.0
    assert [(k, sorted(i), t) for k, i, t in process.calls] == [
        ("k", ["h1", "h2"], first_start),
        ("k", ["c"], first_start + 10.0),
    ]
    assert h.outcomes.values == {"h1": "k:h1", "h2": "k:h2", "c": "k:c"}


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_batch_whose_items_are_all_withdrawn_is_dropped(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy, request: pytest.FixtureRequest
) -> None:
    first_start = FIRST_START.get(request.node.callspec.id, 0.0)
    process = Recorder(delay=10.0)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1)
    async with harness(process, policy=policy, limits=limits) as h:
        await _hold_the_slot(h)
        await sleep_until(1.0)
        b_scope = h.spawn("k", "b")
        await trio.testing.wait_all_tasks_blocked()
        c_scope = h.spawn("k", "c")
        await sleep_until(2.0)
        assert h.stats() == (1, 2, 1)
        b_scope.cancel()
        c_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert h.stats() == (1, 0, 1)
        await sleep_until(first_start + 10.5)
        assert h.stats() == (0, 0, 0)
        # The slot was not leaked: a new full batch runs at once.
        h.spawn("k", "d")
        h.spawn("k", "e")
    d_start = first_start + 10.5 + (0.5 if rejects_when_full(policy) else 0.0)
    assert [(k, sorted(i), t) for k, i, t in process.calls] == [
        ("k", ["h1", "h2"], first_start),
        ("k", ["d", "e"], d_start),
    ]
    assert h.outcomes.error_types() == {"b": trio.Cancelled, "c": trio.Cancelled}


async def test_withdrawn_partial_size_batch_is_dropped_and_key_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with harness(process, policy=tb.Size()) as h:
        scope = h.spawn("k", "a")
        await trio.sleep(1.0)
        assert h.stats() == (1, 1, 0)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert h.stats() == (0, 0, 0)
    # Draining at exit found nothing to flush.
    assert process.calls == []
    assert h.outcomes.times == {"a": 1.0}


async def test_withdrawn_item_leaves_the_rest_of_a_waiting_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with harness(process, policy=tb.Duration(1.0)) as h:
        a_scope = h.spawn("k", "a")
        await trio.testing.wait_all_tasks_blocked()
        await h.submit_in_order("k", ["b", "c"])
        await sleep_until(0.5)
        a_scope.cancel()
    assert process.calls == [("k", ["b", "c"], 1.0)]
    assert h.outcomes.error_types() == {"a": trio.Cancelled}
    assert h.outcomes.times == {"a": 0.5, "b": 1.0, "c": 1.0}


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_caller_cancelled_during_processing_sees_cancelled_at_once(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy, request: pytest.FixtureRequest
) -> None:
    start = FIRST_START.get(request.node.callspec.id, 0.0)
    process = Recorder(delay=1.0)
    async with harness(process, policy=policy, limits=tb.Limits(max_batch_size=3)) as h:
        h.spawn("k", "a")
        b_scope = h.spawn("k", "b")
        h.spawn("k", "c")
        await sleep_until(start + 0.25)
        assert len(process.calls) == 1  # processing has begun
        b_scope.cancel()
    # The caller saw Cancelled when it was cancelled, not at the end of the batch.
    assert isinstance(h.outcomes.errors["b"], trio.Cancelled)
    assert h.outcomes.times["b"] == start + 0.25
    # The batch carried on for the others: not cancelled, outputs delivered.
    assert process.cancelled == []
    assert [(k, sorted(i), t) for k, i, t in process.finished] == [
        ("k", ["a", "b", "c"], start + 1.0)
    ]
    assert h.outcomes.values == {"a": "k:a", "c": "k:c"}
    assert h.outcomes.times["a"] == h.outcomes.times["c"] == start + 1.0


async def test_sole_caller_cancelled_during_processing_does_not_free_the_slot_early(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_key_concurrency=1)
    async with harness(process, policy=tb.Immediate(), limits=limits) as h:
        a_scope = h.spawn("k", "a")
        await sleep_until(0.5)
        a_scope.cancel()
        await h.submit_in_order("k", ["b"])
    assert h.outcomes.times["a"] == 0.5
    assert isinstance(h.outcomes.errors["a"], trio.Cancelled)
    assert process.finished == [("k", ["a"], 1.0), ("k", ["b"], 2.0)]
    assert process.max_running["k"] == 1


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_already_cancelled_caller_never_submits(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    process = Recorder()
    async with tb.open_batcher(process, policy=policy) as batcher:
        with trio.CancelScope() as scope:
            scope.cancel()
            await batcher.submit("k", "a")
        assert scope.cancelled_caught
        assert stats(batcher) == (0, 0, 0)
    assert process.calls == []


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_every_count_returns_to_zero_after_many_cancellations(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    process = Recorder(delay=0.5)
    outcomes = Outcomes()
    limits = tb.Limits(max_batch_size=3, max_key_concurrency=2, max_batch_queue_size=50)

    async def cancel_later(scope: trio.CancelScope, delay: float) -> None:
        await trio.sleep(delay)
        scope.cancel()

    items = [(f"key{i % 3}", i) for i in range(60)]
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=policy, limits=limits) as batcher:
            for key, i in items:
                scope = outcomes.spawn(nursery, batcher, key, i)
                if i % 3 != 2:
                    nursery.start_soon(cancel_later, scope, 0.0625 * (i % 7))
                await trio.sleep(0.0625 * (i % 4))
            await trio.sleep(5.0)
            if not isinstance(policy, tb.Size):  # Size keeps partial batches until exit
                assert stats(batcher) == (0, 0, 0)
        # Drained: every caller has its outcome.
        assert stats(batcher) == (0, 0, 0)

    processed = process.processed()
    assert len(processed) == len(set(processed))  # nothing processed twice
    assert max(process.max_running.values()) <= 2
    assert max(len(inputs) for inputs in process.inputs()) <= 3
    assert set(outcomes.times) == {i for _, i in items}  # one outcome each
    for key, i in items:
        if i in outcomes.values:
            assert outcomes.values[i] == f"{key}:{i}"
            assert i in processed
        elif isinstance(outcomes.errors[i], tb.Rejected):
            assert rejects_when_full(policy)
            assert i not in processed
        else:
            assert isinstance(outcomes.errors[i], trio.Cancelled)
    # Some callers were withdrawn, and some were served.
    assert any(
        isinstance(e, trio.Cancelled) and i not in processed for i, e in outcomes.errors.items()
    )
    assert outcomes.values
