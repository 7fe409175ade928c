"""tb.Adaptive: the value, the pure decision, and the batcher that learns (virtual time).

The contract every policy shares (FIFO, limits, withdrawal, drain, teardown) is
tested with ``Adaptive`` among ``ALL_POLICIES`` in the other test files and in
both property tests; here are the parts that only ``Adaptive`` has.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from tutil import Outcomes, Recorder

import trio_batch as tb
from trio_batch._adaptive import AdaptiveEstimates, Decision, decide

Reason = tb.StartReason

# -- the value -------------------------------------------------------------------


def test_value() -> None:
    assert tb.Adaptive() == tb.Adaptive(None) == tb.Adaptive(target_latency=None)
    assert tb.Adaptive(0.05) == tb.Adaptive(target_latency=0.05) != tb.Adaptive()
    assert hash(tb.Adaptive(0.05)) == hash(tb.Adaptive(0.05))
    assert attrs.evolve(tb.Adaptive(), target_latency=0.1).target_latency == 0.1
    assert tb.Adaptive(1).target_latency == 1
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        tb.Adaptive().target_latency = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.inf, math.nan, -math.inf])
def test_bad_target_latency(bad: float) -> None:
    with pytest.raises(ValueError, match=r"^target_latency must be None or finite and > 0, got "):
        tb.Adaptive(bad)


@pytest.mark.parametrize("bad", ["0.1", True, [0.1]])
def test_target_latency_must_be_a_number(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"^target_latency must be None or a number of seconds"):
        tb.Adaptive(bad)


def test_evolve_validates() -> None:
    with pytest.raises(ValueError, match=r"^target_latency"):
        attrs.evolve(tb.Adaptive(), target_latency=-1.0)


# -- the decision, a pure function -----------------------------------------------


@attrs.frozen
class Facts:
    size: int = 1
    filled: bool = False
    opened_at: float = 0.0
    caller_deadline: float = math.inf
    cost: float = 0.0
    costs: list[float] = attrs.field(factory=list)


def estimates(a: float = 0.05, b: float = 0.0, rate: float = 100.0) -> AdaptiveEstimates:
    return AdaptiveEstimates(
        per_batch_seconds=a, per_item_seconds=b, arrival_rate=rate, timed_batches=5, ready=True
    )


LIMITS = tb.Limits(max_batch_size=10, max_key_concurrency=2)


def run_decide(
    facts: Facts,
    known: AdaptiveEstimates | None = None,
    *,
    policy: tb.Adaptive | None = None,
    now: float = 1.0,
    started: int = 1,
    next_end: float = math.inf,
    limits: tb.Limits = LIMITS,
) -> Decision:
    return decide(
        policy or tb.Adaptive(),
        facts,
        known or estimates(),
        now=now,
        started=started,
        next_end=next_end,
        limits=limits,
    )


def test_full_batch_starts_now() -> None:
    assert run_decide(Facts(size=10, filled=True)) == Decision(1.0, Reason.FULL)


def test_nothing_known_starts_now() -> None:
    unknown = attrs.evolve(estimates(), ready=False)
    assert run_decide(Facts(), unknown) == Decision(1.0, Reason.NO_ESTIMATE)


def test_another_free_slot_means_start_now() -> None:
    # Two slots free: an item that arrives meanwhile would find a slot anyway.
    assert run_decide(Facts(), started=0, next_end=math.inf) == Decision(
        1.0, Reason.ESTIMATED_OPTIMUM
    )


def test_last_slot_held_until_the_arrivals_balance_the_wait() -> None:
    # The running batch ends in 0.04 s; a batch takes 0.05 s; 100 items/s.
    # Hold while 100 * (0.04 - s) > 1 + 100 * s: s = (4 - 1) / 200 = 0.015.
    decision = run_decide(Facts(size=1), next_end=1.04)
    assert decision.reason is Reason.ESTIMATED_OPTIMUM
    assert decision.start_at == pytest.approx(1.015)


def test_hold_stops_at_the_first_crossing() -> None:
    # The running batch just started (ends in 0.06 s, later than this one would).
    # Holding pays while 100 * min(0.06 - s, 0.05) > 1 + 100 * s: the batch's own
    # time bounds it until s = 0.04, the running batch's end until s = 0.025.
    decision = run_decide(Facts(size=1), next_end=1.06)
    assert decision.start_at == pytest.approx(1.025)


def test_last_slot_not_held_when_enough_items_wait() -> None:
    assert run_decide(Facts(size=4), next_end=1.04) == Decision(1.0, Reason.ESTIMATED_OPTIMUM)


def test_only_slot_held_until_a_batch_holds_what_arrives_while_it_runs() -> None:
    # One slot, nothing running: wanted = rate * a / (1 - rate * b)
    # = 100 * 0.05 / (1 - 0.1) = 5.56 items; with 2 waiting: (5.56 - 2) / 100 s.
    limits = tb.Limits(max_batch_size=10, max_key_concurrency=1)
    decision = run_decide(Facts(size=2), estimates(b=0.001), started=0, limits=limits)
    assert decision.start_at == pytest.approx(1.0 + (5 / 0.9 - 2) / 100)


def test_with_costs_the_decision_counts_cost() -> None:
    # Two items of cost 3: n = 6; a = 0.05 s, b = 0.001 s per unit of cost,
    # 600 units of cost per second, one slot: wanted = 600 * 0.05 / (1 - 0.6)
    # = 75, capped by max_batch_cost = 20: hold (20 - 6) / 600 s.
    limits = tb.Limits(max_batch_size=10, max_key_concurrency=1, max_batch_cost=20)
    facts = Facts(size=2, cost=6.0, costs=[3.0, 3.0])
    known = estimates(b=0.001, rate=600.0)
    decision = run_decide(facts, known, started=0, limits=limits)
    assert decision.start_at == pytest.approx(1.0 + 14 / 600)
    # Without max_batch_cost, a full batch at 3 per item (30) is the cap.
    limits = tb.Limits(max_batch_size=10, max_key_concurrency=1)
    decision = run_decide(facts, known, started=0, limits=limits)
    assert decision.start_at == pytest.approx(1.0 + 24 / 600)


def test_hold_never_waits_for_more_than_a_full_batch() -> None:
    # rate * b >= 1: the batch can never catch up with arrivals; wait for it to fill.
    limits = tb.Limits(max_batch_size=10, max_key_concurrency=1)
    decision = run_decide(Facts(size=2), estimates(b=0.02), started=0, limits=limits)
    assert decision.start_at == pytest.approx(1.0 + (10 - 2) / 100)


@pytest.mark.parametrize(
    ("target", "deadline", "expected"),
    [
        # oldest item at 0.99 + 0.05 target - 0.05 batch = 0.99: already late, start now.
        (0.05, math.inf, Decision(0.99, Reason.LATENCY_TARGET)),
        (0.06, math.inf, Decision(1.0, Reason.LATENCY_TARGET)),
        (None, 1.055, Decision(1.005, Reason.CALLER_DEADLINE)),
        # Both: the sooner wins.
        (0.065, 1.06, Decision(1.005, Reason.LATENCY_TARGET)),
        (0.07, 1.055, Decision(1.005, Reason.CALLER_DEADLINE)),
        # Neither binds before the optimum (1.015).
        (0.1, 2.0, Decision(1.015, Reason.ESTIMATED_OPTIMUM)),
    ],
)
def test_bounds(target: float | None, deadline: float, expected: Decision) -> None:
    facts = Facts(size=1, opened_at=0.99, caller_deadline=deadline)
    decision = run_decide(facts, policy=tb.Adaptive(target), next_end=1.04)
    assert decision.reason is expected.reason
    assert decision.start_at == pytest.approx(expected.start_at)


# -- the batcher -------------------------------------------------------------------


class Starts(tb.Observer):
    """Records (reason, time, size) of every batch_started event."""

    def __init__(self) -> None:
        self.events: list[tuple[Reason, float, int]] = []

    def batch_started(self, event: tb.BatchStarted) -> None:
        self.events.append((event.reason, event.time, event.size))


ONE_SLOT = tb.Limits(max_batch_size=10, max_key_concurrency=1)


async def learn_then(
    nursery: trio.Nursery, batcher: tb.Batcher[Any, Any, Any], outcomes: Outcomes
) -> None:
    """Two timed batches of key "k" (0.1 s each, one slot), then "d" at t=0.15.

    Arrivals at 0, 0.05, 0.06, 0.15: gaps 0.05, 0.01, 0.09, an exponentially
    weighted mean gap of 0.0504 s (19.84 items/s). At 0.2 the second batch ends:
    two timings of 0.1 s, so a = 0.1, b = 0, and ``d`` is decided.
    """
    for t, item in ((0.0, "a"), (0.05, "b"), (0.06, "c")):
        await trio.sleep_until(t)
        outcomes.spawn(nursery, batcher, "k", item)
    await trio.sleep_until(0.15)


MEAN_GAP = 0.05 + 0.1 * (0.01 - 0.05)
MEAN_GAP += 0.1 * (0.09 - MEAN_GAP)
RATE = 1 / MEAN_GAP
# One slot, nothing running: hold until rate * a items (1.98), from 1 item.
HELD_UNTIL = 0.2 + (RATE * 0.1 - 1) / RATE


async def test_behaves_like_immediate_then_holds_by_its_estimates(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts = Starts()
    outcomes = Outcomes()
    process = Recorder(delay=0.1)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Adaptive(), limits=ONE_SLOT, observers=[starts]
        ) as batcher:
            assert batcher.estimates("k") is None
            await learn_then(nursery, batcher, outcomes)
            outcomes.spawn(nursery, batcher, "k", "d")
            await trio.sleep_until(0.2)
            await trio.testing.wait_all_tasks_blocked()
            known = batcher.estimates("k")
            assert known is not None
            assert known.ready
            assert known.timed_batches == 2
            assert known.per_batch_seconds == pytest.approx(0.1)
            assert known.per_item_seconds == 0.0
            assert known.arrival_rate == pytest.approx(RATE)
            assert known.batch_seconds(3) == pytest.approx(0.1)
            await trio.sleep(1)
            # Forgotten with the key.
            assert batcher.estimates("k") is None
    assert process.inputs() == [["a"], ["b", "c"], ["d"]]
    assert [(reason, size) for reason, _, size in starts.events] == [
        (Reason.NO_ESTIMATE, 1),
        (Reason.NO_ESTIMATE, 2),
        (Reason.ESTIMATED_OPTIMUM, 1),
    ]
    assert [t for _, t, _ in starts.events][:2] == [0.0, 0.1]
    assert starts.events[2][1] == pytest.approx(HELD_UNTIL)
    assert outcomes.values == {x: f"k:{x}" for x in "abcd"}


async def test_an_item_that_joins_the_held_batch_can_start_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Held at 0.2 until 0.2496 for 1.98 items: the second item starts it.
    starts = Starts()
    outcomes = Outcomes()
    process = Recorder(delay=0.1)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Adaptive(), limits=ONE_SLOT, observers=[starts]
        ) as batcher:
            await learn_then(nursery, batcher, outcomes)
            outcomes.spawn(nursery, batcher, "k", "d")
            await trio.sleep_until(0.21)
            outcomes.spawn(nursery, batcher, "k", "e")
            await trio.sleep(1)
    assert process.inputs() == [["a"], ["b", "c"], ["d", "e"]]
    assert starts.events[2] == (Reason.ESTIMATED_OPTIMUM, 0.21, 2)


@pytest.mark.parametrize(
    ("policy", "patience", "expected"),
    [
        # Oldest item d arrived at 0.15: 0.15 + 0.12 - 0.1 = 0.17 < 0.2: at once.
        (tb.Adaptive(0.12), math.inf, (Reason.LATENCY_TARGET, 0.2)),
        (tb.Adaptive(0.18), math.inf, (Reason.LATENCY_TARGET, 0.23)),
        # d's caller has a deadline at 0.15 + 0.17 = 0.32: start by 0.22.
        (tb.Adaptive(), 0.17, (Reason.CALLER_DEADLINE, 0.22)),
    ],
)
async def test_target_and_caller_deadline_bound_the_hold(
    autojump_clock: trio.abc.Clock,
    policy: tb.Adaptive,
    patience: float,
    expected: tuple[Reason, float],
) -> None:
    starts = Starts()
    outcomes = Outcomes()
    process = Recorder(delay=0.1)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=policy, limits=ONE_SLOT, observers=[starts]
        ) as batcher:
            await learn_then(nursery, batcher, outcomes)
            scope = outcomes.spawn(nursery, batcher, "k", "d")
            scope.relative_deadline = patience
            await trio.sleep(1)
    reason, time, size = starts.events[2]
    assert (reason, size) == (expected[0], 1)
    assert time == pytest.approx(expected[1])
    if patience == math.inf:
        assert outcomes.values["d"] == "k:d"


async def test_drain_starts_a_held_batch_at_once(autojump_clock: trio.abc.Clock) -> None:
    starts = Starts()
    outcomes = Outcomes()
    process = Recorder(delay=0.1)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Adaptive(), limits=ONE_SLOT, observers=[starts]
        ) as batcher:
            await learn_then(nursery, batcher, outcomes)
            outcomes.spawn(nursery, batcher, "k", "d")
            await trio.sleep_until(0.21)  # held until 0.2496
    assert starts.events[2] == (Reason.DRAIN, 0.21, 1)
    assert outcomes.values["d"] == "k:d"


async def test_withdrawing_from_a_held_batch_drops_it_and_its_timer(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts = Starts()
    outcomes = Outcomes()
    process = Recorder(delay=0.1)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Adaptive(), limits=ONE_SLOT, observers=[starts]
        ) as batcher:
            await learn_then(nursery, batcher, outcomes)
            scope = outcomes.spawn(nursery, batcher, "k", "d")
            await trio.sleep_until(0.21)
            scope.cancel()
            await trio.sleep_until(0.5)  # past the held batch's time
            assert batcher.statistics() == tb.BatcherStatistics(0, 0, 0, 0)
            assert batcher.estimates("k") is None
    assert process.inputs() == [["a"], ["b", "c"]]
    assert isinstance(outcomes.errors["d"], trio.Cancelled)
    assert len(starts.events) == 2


async def test_failed_batches_are_not_timed(autojump_clock: trio.abc.Clock) -> None:
    async def process(key: str, inputs: list[str]) -> list[str]:
        await trio.sleep(0.1)
        raise RuntimeError("down")

    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Adaptive(), limits=ONE_SLOT) as batcher:
            for t, item in ((0.0, "a"), (0.05, "b")):
                await trio.sleep_until(t)
                outcomes.spawn(nursery, batcher, "k", item)
            await trio.sleep_until(0.15)
            known = batcher.estimates("k")
            assert known is not None
            assert known.timed_batches == 0
            assert not known.ready
    assert set(outcomes.error_types().values()) == {tb.BatchFailed}


async def test_with_a_cost_function_it_learns_per_unit_of_cost(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Items are (name, cost); process takes 0.01 s per unit of cost.
    async def process(key: str, inputs: list[tuple[str, float]]) -> list[str]:
        await trio.sleep(0.01 * sum(cost for _, cost in inputs))
        return [name for name, _ in inputs]

    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Adaptive(), limits=ONE_SLOT, cost=lambda item: item[1]
        ) as batcher:
            arrivals = [(0.0, ("a", 1.0)), (0.001, ("b", 4.0)), (0.002, ("c", 1.0))]
            arrivals += [(0.06, ("d", 4.0)), (0.061, ("e", 1.0))]
            for t, item in arrivals:
                await trio.sleep_until(t)
                outcomes.spawn(nursery, batcher, "k", item)
            # At 0.061: batches [a] (cost 1: 0.01 s) and [b, c] (cost 5: 0.05 s,
            # until 0.06) are timed; [d, e] is processing.
            await trio.testing.wait_all_tasks_blocked()
            known = batcher.estimates("k")
            assert known is not None
            assert known.timed_batches == 2
            assert known.per_batch_seconds == pytest.approx(0.0, abs=1e-9)
            assert known.per_item_seconds == pytest.approx(0.01)
            # Cost per second: the weighted mean cost of an arrival (costs 1, 4,
            # 1, 4, 1: 1.3, 1.27, 1.543, 1.4887) over the weighted mean gap
            # (0.001, 0.001, 0.058, 0.001: 0.001, 0.001, 0.0067, 0.00613).
            assert known.arrival_rate == pytest.approx(1.4887 / 0.00613)
    assert sorted(outcomes.values.values()) == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("dedupe", [False, True])
async def test_learns_and_holds_with_dedupe_and_submit_many(
    autojump_clock: trio.abc.Clock, dedupe: bool
) -> None:
    # The same story as test_behaves_like_immediate_then_holds_by_its_estimates,
    # through the paths of issue 15: a shared input counts once, submit_many
    # places items as single submits would.
    starts = Starts()
    process = Recorder(delay=0.1)
    results: dict[str, list[str]] = {}

    async def many(name: str, items: list[str]) -> None:
        results[name] = await batcher.submit_many("k", items)

    async with tb.open_batcher(
        process, policy=tb.Adaptive(), limits=ONE_SLOT, observers=[starts], dedupe=dedupe
    ) as batcher:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(many, "first", ["a"])
            await trio.sleep_until(0.05)
            nursery.start_soon(many, "second", ["b", "c"])
            await trio.sleep_until(0.15)
            nursery.start_soon(many, "third", ["d"])
            await trio.sleep_until(0.2)
            await trio.testing.wait_all_tasks_blocked()
            known = batcher.estimates("k")
            assert known is not None
            assert known.timed_batches == 2
    assert process.inputs() == [["a"], ["b", "c"], ["d"]]
    assert results == {"first": ["k:a"], "second": ["k:b", "k:c"], "third": ["k:d"]}
    assert [reason for reason, _, _ in starts.events] == [
        Reason.NO_ESTIMATE,
        Reason.NO_ESTIMATE,
        Reason.ESTIMATED_OPTIMUM,
    ]
    # Arrivals at 0, 0.05, 0.05, 0.15: gaps 0.05, 0, 0.1 (mean 0.0535, 18.7/s);
    # one slot: hold until 18.7 * 0.1 = 1.87 items, from 1.
    rate = 1 / (0.05 + 0.1 * (0 - 0.05) + 0.1 * (0.1 - 0.045))
    assert starts.events[2][1] == pytest.approx(0.2 + (rate * 0.1 - 1) / rate)


async def test_estimates_of_other_policies_are_none(autojump_clock: trio.abc.Clock) -> None:
    async with tb.open_batcher(Recorder(delay=0.1), policy=tb.Immediate()) as batcher:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batcher.submit, "k", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert batcher.statistics().processing_batches == 1
            assert batcher.estimates("k") is None


async def test_steady_load_on_two_slots_staggers_batches(autojump_clock: trio.abc.Clock) -> None:
    # 100 items/s, batches of 0.05 s + 0.001 s per item, two slots. Once it has
    # learned, Adaptive holds the last free slot (ESTIMATED_OPTIMUM from its
    # timer), so the two slots take turns instead of finishing together: lower
    # mean and worst latency than Immediate, within the limits.
    limits = tb.Limits(max_batch_size=8, max_key_concurrency=2)

    async def run(policy: tb.Policy) -> tuple[Starts, list[float]]:
        starts = Starts()
        calls: list[int] = []
        running = 0
        most = 0

        async def process(key: str, inputs: list[int]) -> list[int]:
            nonlocal running, most
            calls.append(len(inputs))
            running += 1
            most = max(most, running)
            await trio.sleep(0.05 + 0.001 * len(inputs))
            running -= 1
            return inputs

        outcomes = Outcomes()
        async with trio.open_nursery() as nursery:
            async with tb.open_batcher(
                process, policy=policy, limits=limits, observers=[starts]
            ) as batcher:
                base = trio.current_time()
                for i in range(200):
                    await trio.sleep_until(base + i * 0.01)
                    outcomes.spawn(nursery, batcher, "k", i)
                await trio.sleep(1)
        assert outcomes.errors == {}
        assert outcomes.values == {i: i for i in range(200)}
        assert most <= 2
        assert max(calls) <= 8
        latencies = sorted(outcomes.times[i] - base - i * 0.01 for i in range(200))
        return starts, latencies

    adaptive, adaptive_latencies = await run(tb.Adaptive())
    _, immediate_latencies = await run(tb.Immediate())
    # Measured: mean 65 ms against 72 ms, worst 85 ms against 98 ms.
    assert sum(adaptive_latencies) < 0.95 * sum(immediate_latencies)
    assert adaptive_latencies[-1] < 0.9 * immediate_latencies[-1]
    reasons = {reason for reason, _, _ in adaptive.events}
    assert Reason.ESTIMATED_OPTIMUM in reasons
    held = [
        time
        for reason, time, _ in adaptive.events
        if reason is Reason.ESTIMATED_OPTIMUM and abs(time * 100 - round(time * 100)) > 1e-6
    ]
    assert held, "no batch started from its timer, between arrivals"
