"""Timers for ``Duration`` batches: one heap and one task per batcher.

A ``Duration`` batch must start a fixed time after its first item arrived (or
earlier, for a caller's deadline). Each such batch has at most one live timer
here, owned by :class:`Timers`, which knows nothing of keys or policies: it is
given an owner (the batch), a deadline and a target, and when the deadline
passes it calls ``on_expiry(owner, target)`` once, from its own task.

Design: a heap of ``(deadline, sequence, entry)`` tuples, ordered by deadline
then arrival (the sequence number keeps the comparison away from the entries),
and a dict from owner to its live entry. A timer that is cancelled (its batch
started or was dropped) or moved (a caller's deadline moved it earlier)
becomes a *tombstone*: its entry forgets owner and target at once, so nothing
of a forgotten key is kept alive, and it is skipped when it reaches the top.
Tombstones are swept out of the heap when they outnumber live entries, so the
heap stays proportional to the number of live timers. The timer task sleeps in
a cancel scope whose deadline is the earliest live entry; setting an earlier
timer moves that deadline, waking the task.

Rejected alternatives: a task per batch sleeping until its deadline (a spawn per
batch, and a pending task per batch to cancel); removing cancelled entries from
the heap at once (an O(n) search per start); a stale-check by comparing
deadlines (a batch's timer may legitimately move, and a later batch may reuse
the same deadline: the entry itself is the generation).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Generic, TypeVar, final

import trio

__all__ = ["Timers"]

O = TypeVar("O")  # noqa: E741 - the owner of a timer (a batch)
T = TypeVar("T")


@final
class _Entry(Generic[O, T]):
    """One timer. ``owner is None`` marks a tombstone."""

    __slots__ = ("owner", "target")

    def __init__(self, owner: O, target: T) -> None:
        self.owner: O | None = owner
        self.target: T | None = target


@final
class Timers(Generic[O, T]):
    """Deadlines for owners; ``on_expiry(owner, target)`` runs when one passes.

    ``owner`` must be hashable by identity (a batch). Expiry callbacks run in
    the timer task, synchronously, in deadline order; a cancelled or moved
    timer never fires.
    """

    __slots__ = ("_heap", "_live", "_on_expiry", "_scope", "_sequence", "_stale", "_task_scope")

    def __init__(self, on_expiry: Callable[[O, T], None]) -> None:
        self._on_expiry = on_expiry
        self._heap: list[tuple[float, int, _Entry[O, T]]] = []
        self._live: dict[O, _Entry[O, T]] = {}
        self._stale = 0
        self._sequence = itertools.count()
        # The sleep of the timer task (its deadline is the earliest entry), and
        # the scope of the whole task (cancelled by stop()).
        self._scope: trio.CancelScope | None = None
        self._task_scope: trio.CancelScope | None = None

    def __len__(self) -> int:
        """Live timers."""
        return len(self._live)

    def set(self, owner: O, deadline: float, target: T) -> None:
        """Fire at ``deadline`` for ``owner``, replacing its timer if it has one."""
        self.cancel(owner)
        entry = _Entry(owner, target)
        self._live[owner] = entry
        heapq.heappush(self._heap, (deadline, next(self._sequence), entry))
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def cancel(self, owner: O) -> None:
        """Make ``owner``'s timer (if any) a tombstone: it will never fire."""
        entry = self._live.pop(owner, None)
        if entry is None:
            return
        entry.owner = entry.target = None
        self._stale += 1
        heap = self._heap
        if self._stale > len(heap) // 2:
            heap[:] = [item for item in heap if item[2].owner is not None]
            heapq.heapify(heap)
            self._stale = 0

    def stop(self) -> None:
        """Forget every timer and end the timer task (the batcher is draining)."""
        for entry in self._live.values():
            entry.owner = entry.target = None
        self._live.clear()
        self._heap.clear()
        self._stale = 0
        if self._task_scope is not None:
            self._task_scope.cancel()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The timer task: fire timers as their deadlines pass, until stopped."""
        heap = self._heap
        with trio.CancelScope() as task_scope:
            self._task_scope = task_scope
            task_status.started()
            while True:
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    entry = heapq.heappop(heap)[2]
                    owner, target = entry.owner, entry.target
                    if owner is None:
                        self._stale -= 1
                        continue
                    del self._live[owner]
                    entry.owner = entry.target = None
                    self._on_expiry(owner, target)  # type: ignore[arg-type]
                    # Keep no reference to what may soon be forgotten.
                    owner = target = entry = None  # type: ignore[assignment]
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
