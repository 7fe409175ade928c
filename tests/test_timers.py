"""``_timers.Timers`` on its own: deadlines, tombstones, one task."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import trio
import trio.testing

from trio_batch._timers import Timers

O = TypeVar("O")  # noqa: E741 - as in _timers
T = TypeVar("T")


class Owner:
    """Stands for a batch: hashable by identity, weakly referenceable."""


class Target:
    """What the expiry callback receives."""


@asynccontextmanager
async def running(timers: Timers[O, T]) -> AsyncIterator[Timers[O, T]]:
    """Run ``timers``' task in a nursery for the block, and stop it at the block's end."""
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        yield timers
        timers.stop()


async def test_timers_fire_once_in_deadline_order_at_their_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[str, float]] = []
    timers: Timers[str, str] = Timers(
        lambda owner, target: fired.append((target, trio.current_time()))
    )
    async with running(timers):
        timers.set("b", 2.0, "second")
        timers.set("a", 1.0, "first")
        timers.set("c", 3.0, "third")
        assert len(timers) == 3
        await trio.sleep(5)
        assert fired == [("first", 1.0), ("second", 2.0), ("third", 3.0)]
        assert len(timers) == 0


async def test_a_cancelled_timer_never_fires(autojump_clock: trio.testing.MockClock) -> None:
    fired: list[str] = []
    timers: Timers[str, str] = Timers(lambda owner, target: fired.append(owner))
    async with running(timers):
        timers.set("a", 1.0, "x")
        timers.set("b", 1.0, "y")
        timers.cancel("a")
        timers.cancel("never set")  # nothing to do
        await trio.sleep(2)
        assert fired == ["b"]


async def test_setting_again_moves_the_timer_and_an_earlier_one_wakes_the_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[str, float]] = []
    timers: Timers[str, str] = Timers(
        lambda owner, target: fired.append((owner, trio.current_time()))
    )
    async with running(timers):
        timers.set("a", 10.0, "x")
        await trio.sleep(1)  # the task now sleeps until 10
        timers.set("a", 3.0, "x")  # moved earlier: the old entry is a tombstone
        timers.set("b", 2.0, "y")
        await trio.sleep(20)
        assert fired == [("b", 2.0), ("a", 3.0)]


async def test_stop_forgets_every_timer_and_ends_the_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[str] = []
    timers: Timers[str, str] = Timers(lambda owner, target: fired.append(owner))
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(timers.run)
            timers.set("a", 0.5, "x")
            timers.stop()
        # The nursery exited: the timer task ended.
    assert fired == []
    assert len(timers) == 0


async def test_tombstones_are_swept_and_keep_nothing_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timers: Timers[Owner, Target] = Timers(lambda owner, target: None)
    async with running(timers):
        live = Owner()
        timers.set(live, 100.0, Target())
        refs = []
        for index in range(1000):
            owner, target = Owner(), Target()
            refs.append(weakref.ref(target))
            timers.set(owner, 50.0 + index, target)
            timers.cancel(owner)
            del owner, target
        gc.collect()
        assert all(ref() is None for ref in refs), "a cancelled timer kept its target alive"
        # Swept whenever tombstones outnumber live entries.
        assert len(timers._heap) <= 2 * len(timers) + 1
        assert len(timers) == 1
