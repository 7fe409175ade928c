"""Simulated time: a clock that moves only when every task waits, and a timetable.

Trio's own way to run in virtual time is :class:`trio.testing.MockClock` with
``autojump_threshold=0``, and :func:`trio.sleep`. Both are correct, and the
simulator used them at first. But every ``trio.sleep`` opens a cancel scope
with a deadline, and waking the sleeper means cancelling that scope (a
``Cancelled`` raised into the task and caught again); and every arrival needed
a task that slept until it, then spawned the caller.

So the simulator keeps its own timetable. :meth:`VirtualTime.call_at` files a
plain callback by simulated time; :meth:`VirtualTime.sleep_until` is a
callback that reschedules a task parked with
:func:`trio.lowlevel.wait_task_rescheduled`. One keeper task waits in
:func:`trio.testing.wait_all_tasks_blocked` and, each time the run goes quiet,
sets the clock to the next instant at which something is due and runs what is
due then, in the order it was filed. Something may also be a deadline that Trio
keeps (the batcher's ``Duration`` timers, callers' ``move_on_after``): the
keeper reads the next one from :func:`trio.lowlevel.current_statistics`, moves
the clock to it, and Trio expires it as usual. While a task waits for
idleness, Trio does not autojump, so the keeper is the only thing that moves
time.

The clock (:class:`SimClock`) is a :class:`trio.abc.Clock` whose time is a
number that only the keeper sets: an event due at ``t`` happens with
``trio.current_time() == t`` exactly, and reading the time is an attribute
lookup.

If every task waits and nothing but *passive* callbacks (the statistics
sampler) is due, nothing can ever happen again: the keeper raises
:exc:`SimulationStuck` rather than sampling an idle run for ever.

Rejected: patching Trio's run loop or deadline heap (private; a new Trio would
break the simulator silently); a :class:`~trio.testing.MockClock` subclass (its
sleepers are still woken by cancellation).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Final, final

import trio
import trio.testing

__all__ = ["SimClock", "SimulationStuck", "VirtualTime"]

#: What :meth:`SimClock.deadline_to_sleep_time` answers for a future deadline.
#: Trio asks only when no task can run; the keeper, waiting for idleness, then
#: makes the run loop look again at once, so this is never slept in practice.
_FAR: Final = 3600.0


class SimulationStuck(RuntimeError):
    """Every task waits and nothing is due: the run could never finish."""


@final
class SimClock(trio.abc.Clock):
    """Virtual time that only :class:`VirtualTime` moves."""

    def __init__(self) -> None:
        #: The current simulated time, in seconds.
        self.now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self.now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return 0.0 if deadline <= self.now else _FAR


@final
class _Entry:
    """One filed callback; ``callback`` is None once it is withdrawn."""

    __slots__ = ("callback", "passive")

    def __init__(self, callback: Callable[[], object], passive: bool) -> None:
        self.callback: Callable[[], object] | None = callback
        self.passive = passive


@final
class VirtualTime:
    """The timetable of one ``trio.run`` on a :class:`SimClock`.

    Start :meth:`keep` in a nursery that outlives every sleeper, and cancel it
    when the run is over.
    """

    def __init__(self, clock: SimClock) -> None:
        self._clock = clock
        # (due, sequence number, entry): equal times run in the order filed.
        self._heap: list[tuple[float, int, _Entry]] = []
        self._sequence = itertools.count()
        self._active = 0  # filed entries that are neither passive nor withdrawn

    @property
    def now(self) -> float:
        """The current simulated time."""
        return self._clock.now

    def call_at(
        self, when: float, callback: Callable[[], object], *, passive: bool = False
    ) -> Callable[[], None]:
        """Run ``callback()`` in the keeper task at simulated time ``when``.

        A time in the past means "at the next quiet moment". ``passive``
        callbacks (observers) do not count as something that can still happen.

        Returns:
            A function that withdraws the callback if it has not run yet.
        """
        entry = _Entry(callback, passive)
        heapq.heappush(self._heap, (when, next(self._sequence), entry))
        if not passive:
            self._active += 1

        def withdraw() -> None:
            if entry.callback is not None:
                entry.callback = None
                if not entry.passive:
                    self._active -= 1

        return withdraw

    async def sleep_until(self, when: float) -> None:
        """Wait until simulated time ``when``, like :func:`trio.sleep_until`.

        Always a checkpoint; if ``when`` has passed, only that. A cancelled
        sleeper is withdrawn from the timetable.
        """
        if when <= self._clock.now:
            await trio.lowlevel.checkpoint()
            return
        task = trio.lowlevel.current_task()
        withdraw = self.call_at(when, lambda: trio.lowlevel.reschedule(task))

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            withdraw()
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of simulated time, like :func:`trio.sleep`."""
        await self.sleep_until(self._clock.now + seconds)

    async def keep(self) -> None:
        """Move time forward whenever every other task waits; runs until cancelled.

        Raises:
            SimulationStuck: every task waits, and nothing but passive
                callbacks is due.
        """
        clock = self._clock
        heap = self._heap
        while True:
            await trio.testing.wait_all_tasks_blocked()
            while heap and heap[0][2].callback is None:
                heapq.heappop(heap)
            theirs = trio.lowlevel.current_statistics().seconds_to_next_deadline
            if not self._active and theirs == math.inf:
                raise SimulationStuck(
                    f"at simulated time {clock.now!r} every task waits and nothing is due"
                )
            now = clock.now
            ours = heap[0][0] if heap else math.inf
            if ours - now > theirs:
                # A deadline that Trio keeps comes first: move to it. (Should the
                # sum round below it, the next round moves the last step.)
                clock.now = max(now + theirs, math.nextafter(now, math.inf))
                continue
            clock.now = max(ours, now)
            while heap and heap[0][0] <= ours:
                entry = heapq.heappop(heap)[2]
                callback = entry.callback
                if callback is not None:
                    entry.callback = None
                    if not entry.passive:
                        self._active -= 1
                    callback()
