"""One key's queue of batches and its count of started batches.

This is the per-key model of the spec, as plain data with no Trio and no clock:
the batcher (``_batcher``) calls these methods from synchronous code and acts on
what they return (hand a batch to a runner, park or wake a caller). Keeping it pure is
what lets ``tests/test_properties_key_state.py`` check it with a Hypothesis state
machine.

Shape of a key::

    waiting:  deque of batches that have not started      (oldest first)
    starting: list of batches started but not processing  (oldest first)
    started:  number of started batches (starting + processing)
    overflow: deque of (item, waiter, cost) that found no room, with
              Overflow.WAIT (oldest first); cost is None without a cost function

The spec's *queue* is ``starting + waiting``: a batch leaves it when its
``process`` call begins (or it is dropped), not when it starts. Because batches
start in FIFO order, every started batch is older than every waiting one, so the
newest batch in the queue is ``waiting[-1]`` if there is one, else
``starting[-1]``.

Costs. A batcher with a cost function adds items with :meth:`KeyState.add_costed`
(one without keeps :meth:`KeyState.add`, which does not look at costs at all, so
it pays nothing for them). A batch then carries its items' costs and their
total. An item joins the newest batch only if it fits by count *and* by cost
(``batch.cost + cost <= max_batch_cost``; a batch whose cost already equals the
bound takes nothing more, not even a cost of 0). An item that does not fit, and
goes on to open a new batch or to wait for room, *closes* the batch it did not
fit: that batch counts as full (``filled``), so a ``Size`` batch that no
further item can join starts instead of waiting for a drain. An item that is
rejected changes nothing. An oversize item (``Oversize.ALONE``) gets a batch of
its own that counts as full. Rejected alternative: looking ahead for a later,
cheaper item that would fit (bin packing); it would break arrival order, and a
caller could not know whether its item is in the current batch.

Adaptive. With :class:`~trio_batch.Adaptive`, a key also holds what it has
learned (``learned``, a :class:`~trio_batch._adaptive.KeyLearning`: batch
timings, arrival rate, when each started batch started), forgotten with the
key. :meth:`KeyState.start_allowed` asks its decision (given ``now``) about the
oldest waiting batch when the policy's event-only readiness (full, timer
expired) says no; a batch it holds back gets the time it should start as its
``deadline``, for the owner's timer. :meth:`KeyState.finish` feeds the batch's
time back to the estimates.

Invariants (checked by the state machine):

* ``len(starting) + len(waiting) <= limits.max_batch_queue_size``
* ``len(starting) <= started <= limits.max_key_concurrency``
* ``0 < batch.size <= limits.max_batch_size`` for every queued batch
* ``batch.cost`` is ``batch.costs`` added up in arrival order, and
  ``<= limits.max_batch_cost`` for every batch except an ``Oversize.ALONE``
  batch of one item
* ``overflow`` is non-empty only while the key has no room for its head
  (:meth:`KeyState.admit` is called after every change that can make room)
* a key whose queue and overflow are empty and whose ``started`` is 0 is
  *idle* and must be forgotten by its owner at once (``is_idle``).

Waiters are whatever the owner uses to stand for a parked caller, and are
always found by identity, never by ``==``: items (and so anything that
compares them) may have any equality, such as numpy's elementwise one.

A :class:`Batch` holds queue facts only (inputs, waiters, life-cycle state and
the readiness facts a policy reads). What only the batcher needs while a batch
runs (its cancel scope, its timer, the ids and times observers see) lives in
the batcher's own records.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Generic, TypeVar

from ._adaptive import Decision, KeyLearning, decide
from ._policies import Adaptive, Limits, Overflow, Policy, StartReason, rejects_when_full

K = TypeVar("K")
I = TypeVar("I")  # noqa: E741 - conventional name for the input type
W = TypeVar("W")

# Batch life cycle. A batch only moves forward through these.
WAITING = 0  # in the queue, not started
STARTING = 1  # started (waiting for a runner, or acquiring), still in the queue and filling
PROCESSING = 2  # process() has been called with its inputs; out of the queue
DONE = 3  # finished, failed, or dropped; out of the queue


class Batch(Generic[I, W]):
    """A group of items of one key that will be passed to one ``process`` call.

    ``inputs[i]`` was submitted by the caller parked as ``waiters[i]``; the two
    lists stay aligned (a withdrawal removes from both).
    """

    __slots__ = (
        "caller_deadline",
        "cost",
        "costs",
        "deadline",
        "early",
        "expired",
        "filled",
        "inputs",
        "opened_at",
        "reason",
        "state",
        "waiters",
    )

    def __init__(self) -> None:
        self.inputs: list[I] = []
        self.waiters: list[W] = []
        self.state = WAITING
        #: Has been full at some point (sticky): held ``max_batch_size`` items,
        #: or its cost reached ``max_batch_cost``, or an item that did not fit
        #: by cost closed it, or it is an oversize item's batch of its own.
        self.filled = False
        #: With a cost function: each input's cost (aligned with ``inputs``)
        #: and their total, ``sum(costs)``. Without one: empty, and 0.
        self.costs: list[float] = []
        self.cost: float = 0
        #: Its Duration timer has fired (sticky).
        self.expired = False
        #: When its Duration timer fires (set by the batcher; inf without one).
        self.deadline = float("inf")
        #: A caller's deadline moved the timer earlier than the policy's delay.
        self.early = False
        #: Adaptive: when its first item arrived, the tightest caller deadline,
        #: and why the decision made it ready (None until it did).
        self.opened_at = 0.0
        self.caller_deadline = float("inf")
        self.reason: StartReason | None = None

    @property
    def size(self) -> int:
        """Items in the batch."""
        return len(self.inputs)

    def __repr__(self) -> str:
        state = ("waiting", "starting", "processing", "done")[self.state]
        return f"<Batch {state} size={len(self.inputs)}>"


class KeyState(Generic[I, W]):
    """The queue and started-batch count of one key."""

    __slots__ = ("learned", "overflow", "started", "starting", "waiting")

    def __init__(self, learned: KeyLearning | None = None) -> None:
        #: Adaptive: what the key has learned (forgotten with the key).
        self.learned = learned
        self.waiting: deque[Batch[I, W]] = deque()
        self.starting: list[Batch[I, W]] = []
        self.started = 0
        # (item, waiter, cost) for each caller waiting for room, oldest first;
        # cost is None without a cost function.
        self.overflow: deque[tuple[I, W, float | None]] = deque()

    # -- queries ---------------------------------------------------------------

    def is_idle(self) -> bool:
        """Nothing queued, started or waiting for room: the owner must forget this key."""
        return not self.started and not self.waiting and not self.starting and not self.overflow

    def queued_items(self) -> int:
        """Items in batches that have not begun processing."""
        return sum(len(b.inputs) for b in self.waiting) + sum(len(b.inputs) for b in self.starting)

    def queued_cost(self) -> float:
        """Total cost of the items in batches that have not begun processing."""
        return sum(b.cost for b in itertools.chain(self.starting, self.waiting))

    def newest(self) -> Batch[I, W] | None:
        """The newest batch in the queue (the one an arriving item may join)."""
        # Batches start in FIFO order: every started batch is older than every
        # waiting one.
        if self.waiting:
            return self.waiting[-1]
        if self.starting:
            return self.starting[-1]
        return None

    def queued_batches(self) -> list[Batch[I, W]]:
        """Batches that have not begun processing, oldest first."""
        return [*self.starting, *self.waiting]

    # -- transitions ---------------------------------------------------------

    def add(
        self,
        item: I,
        waiter: W,
        policy: Policy,
        limits: Limits,
    ) -> Batch[I, W] | None:
        """Put ``item`` in the newest queued batch, or a new one; ``None`` means no room.

        A new batch is appended to ``waiting`` (the caller must then give it a
        timer if the policy has one, and call :meth:`start_allowed`). When there
        is no room nothing changes.
        """
        # ``newest()``, inlined: this is the hot path of every submit.
        if self.waiting:
            newest: Batch[I, W] | None = self.waiting[-1]
        elif self.starting:
            newest = self.starting[-1]
        else:
            newest = None
        if newest is None or len(newest.inputs) >= limits.max_batch_size:
            if newest is not None and rejects_when_full(policy):
                return None
            if len(self.waiting) + len(self.starting) >= limits.max_batch_queue_size:
                return None
            newest = Batch()
            self.waiting.append(newest)
        newest.inputs.append(item)
        newest.waiters.append(waiter)
        if len(newest.inputs) >= limits.max_batch_size:
            newest.filled = True
        return newest

    def add_costed(
        self,
        item: I,
        waiter: W,
        cost: float,
        policy: Policy,
        limits: Limits,
    ) -> Batch[I, W] | None:
        """:meth:`add` for a batcher with a cost function; ``cost`` is the item's.

        The item joins the newest queued batch only if that batch has room by
        count and by cost. If not, it needs a new batch, exactly as in
        :meth:`add`; if it then opens one, or finds no room and will wait for
        it (``Overflow.WAIT``), the batch it did not fit is closed (counts as
        full). ``None`` means no room; nothing changed unless the item is going
        to wait. An oversize item must be ``Oversize.ALONE`` (the caller
        rejects the others first, see ``_policies.is_oversize``): it gets a new
        batch of its own, which counts as full.
        """
        newest = self.newest()
        max_cost = limits.max_batch_cost
        if newest is None or not (
            len(newest.inputs) < limits.max_batch_size
            and (max_cost is None or (newest.cost < max_cost and newest.cost + cost <= max_cost))
        ):
            if newest is not None:
                if (
                    rejects_when_full(policy)
                    or len(self.waiting) + len(self.starting) >= limits.max_batch_queue_size
                ):
                    if limits.overflow is Overflow.WAIT:
                        newest.filled = True  # the item goes on to wait: it closed the batch
                    return None
                newest.filled = True  # the item goes on to a new batch: it closed this one
            newest = Batch()
            self.waiting.append(newest)
        newest.inputs.append(item)
        newest.waiters.append(waiter)
        newest.costs.append(cost)
        newest.cost += cost
        if len(newest.inputs) >= limits.max_batch_size or (
            max_cost is not None and newest.cost >= max_cost
        ):
            newest.filled = True
        return newest

    def start_allowed(
        self,
        policy: Policy,
        limits: Limits,
        *,
        after_finish: bool = False,
        draining: bool = False,
        now: float = 0.0,
    ) -> list[Batch[I, W]]:
        """Start the oldest waiting batches that the policy (or a drain) lets start.

        Returns the batches that moved to ``STARTING``, oldest first; the caller
        must run each one. Stops at the first batch that may not start (FIFO)
        or when ``max_key_concurrency`` batches are started. ``after_finish``
        applies to the first batch only: the one that takes the freed slot.
        ``now`` is the current time, for ``Adaptive``'s decision: a batch it
        holds back is left first in ``waiting`` with its ``deadline`` set to
        when it should start (the owner sets its timer for that time).
        """
        started_now: list[Batch[I, W]] = []
        waiting = self.waiting
        if not waiting:
            return started_now
        while waiting and self.started < limits.max_key_concurrency:
            batch = waiting[0]
            if not (
                draining
                or policy._may_start(batch, started=self.started, after_finish=after_finish)
                or self._decided_now(policy, batch, limits, now)
            ):
                break
            after_finish = False
            waiting.popleft()
            batch.state = STARTING
            self.starting.append(batch)
            self.started += 1
            if self.learned is not None:
                self.learned.started(batch, now)
            started_now.append(batch)
        return started_now

    def _decided_now(self, policy: Policy, batch: Batch[I, W], limits: Limits, now: float) -> bool:
        """``Adaptive``: whether its decision starts ``batch`` now (and remember why)."""
        learned = self.learned
        if learned is None or not isinstance(policy, Adaptive):
            return False
        decision = self.decision(policy, batch, limits, now)
        if decision.start_at > now:
            # Held back: the owner sets the batch's timer for this time.
            batch.deadline = decision.start_at
            learned.timer_reason = decision.reason
            return False
        batch.reason = decision.reason
        return True

    def decision(
        self, policy: Adaptive, batch: Batch[I, W], limits: Limits, now: float
    ) -> Decision:
        """``Adaptive``'s :class:`~trio_batch._adaptive.Decision` for ``batch``."""
        learned = self.learned
        assert learned is not None
        return decide(
            policy,
            batch,
            learned.snapshot(),
            now=now,
            started=self.started,
            next_end=learned.next_end(),
            limits=limits,
        )

    def begin_processing(self, batch: Batch[I, W]) -> bool:
        """Take a started batch out of the queue; ``False`` if it was dropped meanwhile."""
        if batch.state != STARTING:
            return False
        self.starting.remove(batch)
        batch.state = PROCESSING
        return True

    def finish(self, batch: Batch[I, W], *, now: float = 0.0, timed: bool = False) -> list[W]:
        """A started batch is ending: free its slot, return waiters still owed an outcome.

        If the batch never began processing (acquire failed, or teardown), it
        leaves the queue now and all its waiters are returned. ``Adaptive``
        learns how long it took, from its start until ``now``, if ``timed``
        (``process`` ran and succeeded).
        """
        if self.learned is not None:
            self.learned.finished(batch, now, timed=timed)
        if batch.state == STARTING:
            self.starting.remove(batch)
        batch.state = DONE
        self.started -= 1
        return batch.waiters

    def withdraw(self, batch: Batch[I, W], waiter: W) -> bool:
        """Remove a waiter's item from a batch that has not begun processing.

        Returns ``True`` if that emptied the batch, which is then dropped: taken
        out of the queue (a started batch's slot stays taken until the runner
        that takes it ends it with :meth:`finish`).
        """
        index = _index_of(batch.waiters, waiter)
        del batch.waiters[index]
        del batch.inputs[index]
        if batch.costs:
            del batch.costs[index]
            # Recomputed, not subtracted, and added up in arrival order exactly
            # as arrivals do (``cost += c``): the builtin sum() compensates for
            # rounding since Python 3.12, so it could differ in the last bit
            # from the running total a batch without withdrawals has.
            total: float = 0
            for cost in batch.costs:
                total += cost
            batch.cost = total
        if batch.inputs:
            return False
        if batch.state == WAITING:
            self.waiting.remove(batch)
        else:
            # STARTING: it keeps the slot until its runner ends it and calls finish();
            # begin_processing() will see the batch is gone and refuse it.
            self.starting.remove(batch)
        batch.state = DONE
        return True

    # -- waiting for room (Overflow.WAIT) ----------------------------------------

    def admit(self, policy: Policy, limits: Limits) -> list[tuple[W, Batch[I, W]]]:
        """Move overflow waiters into batches, oldest first, while there is room.

        Returns ``(waiter, batch)`` for each admitted waiter. Stops at the first
        that still finds no room, so waiters are admitted in FIFO order.
        """
        admitted: list[tuple[W, Batch[I, W]]] = []
        overflow = self.overflow
        while overflow:
            item, waiter, cost = overflow[0]
            if cost is None:
                batch = self.add(item, waiter, policy, limits)
            else:
                batch = self.add_costed(item, waiter, cost, policy, limits)
            if batch is None:
                break
            overflow.popleft()
            admitted.append((waiter, batch))
        return admitted

    def leave_overflow(self, waiter: W) -> bool:
        """Remove a waiter that gave up while waiting for room.

        Returns ``True`` if it was first in line: with costs, the next waiter
        may fit where it did not, so the owner must :meth:`admit` again.
        """
        for index, (_, queued, _) in enumerate(self.overflow):
            if queued is waiter:
                del self.overflow[index]
                return index == 0
        raise ValueError("not waiting for room")


def _index_of(waiters: list[W], waiter: W) -> int:
    """Position of ``waiter`` by identity (``list.index`` would compare with ``==``)."""
    for index, candidate in enumerate(waiters):
        if candidate is waiter:
            return index
    raise ValueError("not a waiter of this batch")
