"""The simulator's virtual time: exact instants, Trio deadlines kept, a stall detected."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from trio_batch.sim._clock import SimClock, SimulationStuck, VirtualTime


def run_virtual(body: Callable[[VirtualTime], Awaitable[object]]) -> None:
    """Run ``body(time)`` in a Trio run on a fresh :class:`SimClock`, with its keeper."""
    clock = SimClock()
    time = VirtualTime(clock)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(time.keep)
            await body(time)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)


def test_sleepers_wake_at_their_exact_instant_in_filing_order() -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(time: VirtualTime, name: str, when: float) -> None:
        await time.sleep_until(when)
        woke.append((name, trio.current_time()))

    async def body(time: VirtualTime) -> None:
        async with trio.open_nursery() as nursery:
            for name, when in (("c", 0.3), ("a", 0.1), ("b", 0.1 + 0.2), ("d", 0.7)):
                nursery.start_soon(sleeper, time, name, when)
        assert trio.current_time() == 0.7

    run_virtual(body)
    # 0.1 + 0.2 != 0.3: the clock lands on each due time exactly, no rounding.
    assert woke == [("a", 0.1), ("c", 0.3), ("b", 0.1 + 0.2), ("d", 0.7)]


def test_trio_deadlines_are_kept_between_our_own_events() -> None:
    seen: list[tuple[str, float]] = []

    async def body(time: VirtualTime) -> None:
        time.call_at(0.5, lambda: seen.append(("callback", time.now)))
        with trio.move_on_after(0.25):
            await trio.sleep_forever()
        seen.append(("move_on_after", trio.current_time()))
        await trio.sleep(0.5)  # a plain Trio sleep: a deadline Trio keeps
        seen.append(("trio.sleep", trio.current_time()))

    run_virtual(body)
    assert seen == [("move_on_after", 0.25), ("callback", 0.5), ("trio.sleep", 0.75)]


def test_a_cancelled_sleeper_is_withdrawn() -> None:
    async def body(time: VirtualTime) -> None:
        with trio.move_on_after(1.0) as scope:
            await time.sleep(5.0)
        assert scope.cancelled_caught
        assert trio.current_time() == 1.0
        await time.sleep(0.5)
        # The withdrawn wake-up at 5.0 did not move the clock.
        assert trio.current_time() == 1.5

    run_virtual(body)


def test_sleeping_until_the_past_is_a_checkpoint_only() -> None:
    async def body(time: VirtualTime) -> None:
        await time.sleep(0.2)
        with trio.CancelScope() as scope:
            scope.cancel()
            await time.sleep_until(0.1)
        assert scope.cancelled_caught
        await time.sleep(0)
        assert trio.current_time() == 0.2

    run_virtual(body)


def test_a_run_where_nothing_can_happen_is_reported_not_sampled_for_ever() -> None:
    samples: list[float] = []

    def sample(time: VirtualTime) -> None:
        samples.append(time.now)
        time.call_at(time.now + 1.0, lambda: sample(time), passive=True)

    async def body(time: VirtualTime) -> None:
        sample(time)
        await time.sleep(2.5)
        await trio.Event().wait()  # nobody will ever set it

    with pytest.RaisesGroup(SimulationStuck, flatten_subgroups=True) as caught:
        run_virtual(body)
    assert "at simulated time 2.5 every task waits and nothing is due" in str(
        caught.value.exceptions[0]
    )
    assert samples == [0.0, 1.0, 2.0]
