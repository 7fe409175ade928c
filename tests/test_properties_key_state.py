"""A Hypothesis state machine over the pure layer: one key's queue plus a policy.

The machine plays the batcher's part without Trio: it submits items, runs the
policy after every event exactly where the batcher does (add, timer, finish,
withdrawal, drain), begins and finishes started batches in any order, withdraws
and abandons callers, and advances a fake clock for Duration timers. After every
step it checks the spec's invariants, including liveness: no batch that the policy
would start is left waiting while a slot is free.

Half the examples play a batcher with a cost function (issue 14): items carry
drawn costs (integers and floats, some oversize), and ``max_batch_cost`` and
``oversize`` are drawn. The machine then checks the cost bound, that an item
joins the newest batch exactly when it fits by count and by cost, the meaning
of "full" (including an item that did not fit closing the batch), and that
waiters for room are admitted first come, first served whatever their cost.
"""

from __future__ import annotations

import itertools
import math

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from tutil import EXAMPLE_SCALE, policies, rejects_when_full

import trio_batch as tb
from trio_batch._adaptive import KeyLearning, load
from trio_batch._key_state import DONE, PROCESSING, STARTING, WAITING, Batch, KeyState
from trio_batch._policies import is_oversize

Item = int
KeyBatch = Batch[Item, Item]

#: Costs an item may have: integers and floats (0.1 + 0.2 > 0.3 in binary
#: floating point), 0, and more than any drawn max_batch_cost (oversize).
COSTS = [0, 0.1, 0.2, 0.5, 1, 2, 2.5, 3, 6]
MAX_COSTS = [None, 0.3, 1, 2.5, 3, 4]


def total(costs: list[float]) -> float:
    """A batch's cost: its items' costs added in arrival order."""
    result: float = 0
    for cost in costs:
        result += cost
    return result


DELAYS = st.sampled_from([0.0, 1.0, 2.5])


class KeyStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state: KeyState[Item, Item] = KeyState()
        self.ids = itertools.count()
        self.now = 0.0
        self.draining = False
        # Every batch ever created, in creation order.
        self.batches: list[KeyBatch] = []
        self.start_order: list[KeyBatch] = []
        # Started batches whose "task" has not finished yet (incl. dropped ones).
        self.running: list[KeyBatch] = []
        self.submitted: list[Item] = []
        self.withdrawn: set[Item] = set()
        self.processed: list[list[Item]] = []
        # Overflow.WAIT: items that waited for room, in the order they arrived.
        self.waited: list[Item] = []
        self.admitted: list[Item] = []
        # The model's own record of batches that have been full.
        self.been_full: set[int] = set()
        # Costs (with a cost function): each item's, and how many oversize
        # items were rejected before reaching the queue.
        self.cost_of: dict[Item, float] = {}
        self.rejected_oversize = 0

    @initialize(data=st.data())
    def configure(self, data: st.DataObject) -> None:
        self.limits = data.draw(
            st.builds(
                tb.Limits,
                max_batch_size=st.integers(1, 3),
                max_key_concurrency=st.integers(1, 3),
                max_batch_queue_size=st.integers(1, 4),
                overflow=st.sampled_from(list(tb.Overflow)),
                max_batch_cost=st.sampled_from(MAX_COSTS),
                oversize=st.sampled_from(list(tb.Oversize)),
            ),
            label="limits",
        )
        self.policy = data.draw(policies(self.limits.max_batch_size, delays=DELAYS), label="policy")
        # With a cost function or without (then max_batch_cost must be None,
        # which open_batcher enforces).
        self.costed = self.limits.max_batch_cost is not None or data.draw(
            st.booleans(), label="costed"
        )

    # -- the batcher's side -------------------------------------------------

    def run_policy(self, *, after_finish: bool = False) -> None:
        started_before = self.state.started
        started = self.state.start_allowed(
            self.policy, self.limits, after_finish=after_finish, draining=self.draining
        )
        for n, batch in enumerate(started):
            assert batch.state == STARTING
            self.check_may_start(
                batch, started_before + n, first_after_finish=after_finish and n == 0
            )
            self.start_order.append(batch)
            self.running.append(batch)

    def check_may_start(self, batch: KeyBatch, started: int, *, first_after_finish: bool) -> None:
        """Safety: the spec's table, restated as an oracle."""
        assert started < self.limits.max_key_concurrency
        if self.draining:
            return
        policy = self.policy
        if isinstance(policy, tb.Size):
            assert id(batch) in self.been_full, "Size started a batch that never was full"
        elif isinstance(policy, tb.Duration):
            if policy.on_full is tb.OnFull.REJECT:
                assert batch.expired, "Duration(REJECT) started a batch before its timer"
            else:
                assert batch.expired or id(batch) in self.been_full, "Duration started too early"
        elif isinstance(policy, tb.Balanced):
            assert first_after_finish or started == 0 or batch.size >= policy.min_size_hint

    def queue(self) -> list[KeyBatch]:
        return self.state.queued_batches()

    def admit(self) -> None:
        """What the batcher does after every change that can make room."""
        admitted = self.state.admit(self.policy, self.limits)
        # First the model's record of what is full now (admission is one
        # synchronous step, so the batcher sees its end state when it starts
        # batches): a waiter that needed a new batch closed the one before it,
        # and a head that still finds no room closed the newest batch (by
        # count it already was full).
        queue = self.queue()
        for _, batch in admitted:
            if batch not in self.batches:
                position = queue.index(batch)
                if position:
                    self.been_full.add(id(queue[position - 1]))
        if self.state.overflow:
            self.been_full.add(id(queue[-1]))
        for waiter, batch in admitted:
            self.admitted.append(waiter)
            self.after_add(waiter, batch)
        # A batch closed by a waiter may be ready now.
        self.run_policy()

    def fits(self, batch: KeyBatch | None, cost: float) -> bool:
        """The spec: an item joins the newest batch iff it has room by count and cost."""
        if batch is None or batch.size >= self.limits.max_batch_size:
            return False
        bound = self.limits.max_batch_cost
        if not self.costed or bound is None:
            return True
        # A batch whose cost equals the bound takes nothing more, not even 0.
        return batch.cost < bound and batch.cost + cost <= bound

    def after_add(self, item: Item, batch: KeyBatch) -> None:
        self.submitted.append(item)
        if batch.size == self.limits.max_batch_size:
            self.been_full.add(id(batch))
        bound = self.limits.max_batch_cost
        if bound is not None and batch.cost >= bound:
            self.been_full.add(id(batch))
        if batch not in self.batches:
            self.batches.append(batch)
            if isinstance(self.policy, tb.Duration):
                batch.deadline = self.now + self.policy.delay_seconds
        if batch.state == WAITING:
            self.run_policy()

    # -- rules ------------------------------------------------------------------

    @precondition(lambda self: not self.draining)
    @rule(costs=st.lists(st.sampled_from(COSTS), min_size=1, max_size=4))
    def submit(self, costs: list[float]) -> None:
        # Several arrivals in one step: queues build up within few steps.
        for cost in costs:
            if self.costed:
                self.submit_costed(cost)
            else:
                self.submit_one()

    def submit_costed(self, cost: float) -> None:
        bound = self.limits.max_batch_cost
        oversize = bound is not None and cost > bound
        assert is_oversize(cost, self.limits) == oversize
        if oversize and self.limits.oversize is tb.Oversize.REJECT:
            # Rejected by the batcher before it reaches the key: nothing changes.
            self.rejected_oversize += 1
            return
        item = next(self.ids)
        self.cost_of[item] = cost
        if self.state.overflow:
            # Waiters for room are ahead, whatever their cost: join the line.
            self.state.overflow.append((item, item, cost))
            self.waited.append(item)
            return
        queue_before = self.queue()
        newest = queue_before[-1] if queue_before else None
        filled_before = None if newest is None else newest.filled
        fits = self.fits(newest, cost)
        batch = self.state.add_costed(item, item, cost, self.policy, self.limits)
        if batch is None:
            # No room only when a new batch was needed and none may be opened.
            assert newest is not None
            assert not fits
            assert (
                rejects_when_full(self.policy)
                or len(queue_before) >= self.limits.max_batch_queue_size
            )
            assert self.queue() == queue_before
            if self.limits.overflow is tb.Overflow.WAIT:
                # It goes on to wait: it closed the batch it did not fit.
                assert newest.filled
                self.been_full.add(id(newest))
                self.state.overflow.append((item, item, cost))
                self.waited.append(item)
                self.run_policy()
            else:
                # A rejected item changes nothing.
                assert newest.filled == filled_before
                del self.cost_of[item]
            return
        if fits:
            assert batch is newest, "the item did not join the newest batch it fits"
        else:
            assert batch not in queue_before, "an item joined a batch it does not fit"
            assert batch.size == 1
            if newest is not None:
                # It went on to open a new batch: it closed the one it did not fit.
                assert newest.filled
                self.been_full.add(id(newest))
        if oversize:
            assert batch.size == 1, "an oversize item is not alone"
            assert batch.filled, "an oversize item's batch does not count as full"
            self.been_full.add(id(batch))
        self.after_add(item, batch)
        if newest is not None and not fits and newest.state == WAITING:
            self.run_policy()  # the closed batch may be ready

    def submit_one(self) -> None:
        item = next(self.ids)
        if self.state.overflow:
            # Waiters for room are ahead: a newcomer joins the end of that line.
            self.state.overflow.append((item, item, None))
            self.waited.append(item)
            return
        queue_before = self.queue()
        newest = queue_before[-1] if queue_before else None
        newest_full = newest is not None and newest.size >= self.limits.max_batch_size
        batch = self.state.add(item, item, self.policy, self.limits)
        if batch is None:
            # No room only when a new batch was needed and none may be opened.
            assert newest_full
            assert (
                rejects_when_full(self.policy)
                or len(queue_before) >= self.limits.max_batch_queue_size
            )
            assert self.queue() == queue_before
            if self.limits.overflow is tb.Overflow.WAIT:
                self.state.overflow.append((item, item, None))
                self.waited.append(item)
            return
        if newest is None or newest_full:
            assert batch not in queue_before, "a full batch was joined"
        else:
            assert batch is newest, "the item did not join the newest batch"
        self.after_add(item, batch)

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0]))
    def advance_clock(self, dt: float) -> None:
        self.now += dt
        for batch in self.state.waiting:
            if batch.deadline <= self.now:
                batch.expired = True
        self.run_policy()

    @precondition(lambda self: bool(self.state.starting))
    @rule(data=st.data())
    def begin_processing(self, data: st.DataObject) -> None:
        # Acquisition can complete in any order.
        batch = data.draw(st.sampled_from(self.state.starting))
        assert self.state.begin_processing(batch)
        assert batch.state == PROCESSING
        assert 0 < batch.size <= self.limits.max_batch_size
        self.check_cost(batch)
        self.processed.append(list(batch.inputs))
        self.admit()

    @precondition(lambda self: bool(self.state.overflow))
    @rule(data=st.data())
    def cancel_waiter(self, data: st.DataObject) -> None:
        item, waiter, _ = data.draw(st.sampled_from(list(self.state.overflow)))
        was_first = self.state.leave_overflow(waiter)
        assert all(queued is not waiter for _, queued, _ in self.state.overflow)
        self.waited.remove(item)
        if was_first:
            # With costs, the next waiter may fit where the one that left did not.
            self.admit()

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        # A started batch's task ends: success, failure, acquire failure or drop.
        batch = data.draw(st.sampled_from(self.running))
        self.running.remove(batch)
        state_before = batch.state
        oldest = self.state.waiting[0] if self.state.waiting else None
        waiters = self.state.finish(batch, now=self.now, timed=state_before == PROCESSING)
        assert batch.state == DONE
        if state_before == STARTING:
            # Acquisition failed: the batch never ran, every waiter is owed an error.
            assert waiters == batch.inputs
        self.admit()
        self.run_policy(after_finish=True)
        if oldest is not None and isinstance(self.policy, tb.Immediate | tb.Balanced):
            # "When a batch finishes, the oldest queued batch starts, whatever its size."
            assert oldest.state == STARTING

    @precondition(lambda self: any(b.size for b in self.queue()))
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        batch = data.draw(st.sampled_from([b for b in self.queue() if b.size]))
        item = data.draw(st.sampled_from(batch.inputs))
        state_before = batch.state
        dropped = self.state.withdraw(batch, item)
        self.withdrawn.add(item)
        assert item not in batch.inputs
        assert dropped == (batch.size == 0)
        if dropped:
            assert batch.state == DONE
            assert batch not in self.queue()
            if state_before == WAITING:
                assert batch not in self.running
        self.admit()
        self.run_policy()

    @precondition(lambda self: not self.draining)
    @rule()
    def drain(self) -> None:
        self.draining = True
        self.run_policy()

    # -- invariants -------------------------------------------------------------

    def check_cost(self, batch: KeyBatch) -> None:
        """A batch's cost is its items' total, and within the bound unless alone."""
        if not self.costed:
            assert batch.cost == 0
            assert batch.costs == []
            return
        costs = [self.cost_of[item] for item in batch.inputs]
        assert batch.costs == costs
        assert batch.cost == total(costs)
        bound = self.limits.max_batch_cost
        if bound is not None and batch.cost > bound:
            assert self.limits.oversize is tb.Oversize.ALONE
            assert batch.size == 1, "over the bound, and not a lone oversize item"

    @invariant()
    def limits_hold(self) -> None:
        state = self.state
        assert len(state.starting) + len(state.waiting) <= self.limits.max_batch_queue_size
        assert len(state.starting) <= state.started <= self.limits.max_key_concurrency
        for batch in self.queue():
            assert 0 < batch.size <= self.limits.max_batch_size
            self.check_cost(batch)
        assert state.queued_cost() == sum(b.cost for b in self.queue())

    @invariant()
    def full_has_one_meaning(self) -> None:
        # "Full" is exactly the model's record: max_batch_size items, cost equal
        # to the bound, closed by an item that did not fit, or alone.
        for batch in self.batches:
            if batch.state in (WAITING, STARTING):
                assert batch.filled == (id(batch) in self.been_full), batch

    @invariant()
    def started_count_is_exact(self) -> None:
        # One owner per counter: it equals the started batches whose task is live.
        assert self.state.started == len(self.running)

    @invariant()
    def fifo(self) -> None:
        # Batches start in creation order...
        order = [b for b in self.batches if b in self.start_order]
        assert self.start_order == order
        # ... every waiting batch is younger than every started one ...
        for batch in self.state.waiting:
            assert batch.state == WAITING
        for batch in self.state.starting:
            assert batch.state == STARTING
        # ... inputs are in arrival order within every batch (ids increase) ...
        for batch in self.batches:
            assert batch.inputs == sorted(batch.inputs)
        # ... and across the queue. (A batch that has left the queue may have
        # younger items than an older batch still acquiring: an item joins the
        # newest batch *in the queue*, as the spec says.)
        queued = [item for b in self.queue() for item in b.inputs]
        assert queued == sorted(queued)
        # Nothing lost, nothing invented: every accepted item is in exactly one batch.
        everything = sorted(item for b in self.batches for item in b.inputs)
        assert everything == [i for i in self.submitted if i not in self.withdrawn]

    @invariant()
    def nothing_processed_twice_or_after_withdrawal(self) -> None:
        seen = [item for inputs in self.processed for item in inputs]
        assert len(seen) == len(set(seen))
        assert not set(seen) & self.withdrawn

    @invariant()
    def no_ready_batch_left_waiting(self) -> None:
        """Liveness: with a free slot, the oldest waiting batch is one the policy holds back."""
        state = self.state
        if not state.waiting or state.started >= self.limits.max_key_concurrency:
            return
        assert not self.draining, "draining leaves a batch waiting with a free slot"
        oldest = state.waiting[0]
        policy = self.policy
        assert not isinstance(policy, tb.Immediate), "Immediate left a batch waiting"
        if isinstance(policy, tb.Size):
            assert id(oldest) not in self.been_full
        elif isinstance(policy, tb.Duration):
            assert not oldest.expired
            assert policy.on_full is tb.OnFull.REJECT or id(oldest) not in self.been_full
        else:
            assert isinstance(policy, tb.Balanced)
            assert state.started > 0
            assert oldest.size < policy.min_size_hint

    @invariant()
    def waiters_wait_only_without_room(self) -> None:
        overflow = self.state.overflow
        if self.limits.overflow is tb.Overflow.REJECT:
            assert not overflow
            return
        # Admitted first come, first served.
        assert self.admitted == [i for i in self.waited if i in set(self.admitted)]
        assert [entry[0] for entry in overflow] == [
            i for i in self.waited if i not in set(self.admitted)
        ]
        if overflow:
            # The head has no room: the newest queued batch is full, or does
            # not fit its cost, and the queue is full too (or a full batch
            # rejects newcomers).
            queue = self.queue()
            assert queue
            head = overflow[0]
            assert not self.fits(queue[-1], head[2] or 0)
            assert queue[-1].filled
            assert rejects_when_full(self.policy) or len(queue) >= self.limits.max_batch_queue_size

    @invariant()
    def idle_means_empty(self) -> None:
        live = [b for b in self.batches if b.state in (WAITING, STARTING)]
        assert self.state.is_idle() == (not live and not self.running and not self.state.overflow)
        assert self.state.queued_items() == sum(b.size for b in live)


# -- Adaptive: the learned decision drives the same machine ---------------------


class AdaptiveKeyStateMachine(KeyStateMachine):
    """The machine above with ``tb.Adaptive``, learning as the batcher does.

    Batches take as long as the steps between their start and finish, items
    arrive in bursts (gaps of 0) and apart, some callers have deadlines; the
    held batch's timer is its ``deadline`` (set by ``start_allowed``), fired by
    ``advance_clock`` as the batcher's timer task would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.state = KeyState(KeyLearning())

    @initialize(data=st.data())
    def configure(self, data: st.DataObject) -> None:
        self.limits = data.draw(
            st.builds(
                tb.Limits,
                max_batch_size=st.integers(1, 4),
                max_key_concurrency=st.integers(1, 3),
                max_batch_queue_size=st.integers(1, 4),
                overflow=st.sampled_from(list(tb.Overflow)),
                max_batch_cost=st.sampled_from(MAX_COSTS),
                oversize=st.sampled_from(list(tb.Oversize)),
            ),
            label="limits",
        )
        self.policy = data.draw(
            st.builds(tb.Adaptive, st.sampled_from([None, 0.5, 2.0, 10.0])), label="policy"
        )
        # With a cost function (the fit and the rate count cost) or without.
        self.costed = self.limits.max_batch_cost is not None or data.draw(
            st.booleans(), label="costed"
        )

    def run_policy(self, *, after_finish: bool = False) -> None:
        started_before = self.state.started
        started = self.state.start_allowed(
            self.policy,
            self.limits,
            after_finish=after_finish,
            draining=self.draining,
            now=self.now,
        )
        for n, batch in enumerate(started):
            self.check_may_start(batch, started_before + n, first_after_finish=False)
            self.start_order.append(batch)
            self.running.append(batch)

    def after_add(self, item: Item, batch: KeyBatch) -> None:
        # What Batcher._arrived does; every third caller has a deadline.
        learned = self.state.learned
        assert learned is not None
        learned.arrivals.arrived(self.now, batch.costs[-1] if batch.costs else 1.0)
        if batch.size == 1:
            batch.opened_at = self.now
        deadline = (math.inf, self.now + 1.0, self.now + 4.0)[item % 3]
        batch.caller_deadline = min(batch.caller_deadline, deadline)
        super().after_add(item, batch)

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0]))
    def advance_clock(self, dt: float) -> None:
        self.now += dt
        learned = self.state.learned
        assert learned is not None
        for batch in self.state.waiting:
            if batch.deadline <= self.now:
                # The timer fires: the batch is ready, for the reason it was held.
                batch.expired = True
                batch.reason = learned.timer_reason
        self.run_policy()

    def check_may_start(self, batch: KeyBatch, started: int, *, first_after_finish: bool) -> None:
        assert started < self.limits.max_key_concurrency
        if self.draining:
            return
        # Ready by an event (full, timer), or the decision said "now" (and why).
        assert batch.filled or batch.expired or batch.reason is not None
        if batch.reason is not None and not batch.expired:
            assert batch.reason is not tb.StartReason.DRAIN

    @invariant()
    def no_ready_batch_left_waiting(self) -> None:
        """Liveness: a batch held with a free slot has a timer, no later than its bounds."""
        state = self.state
        if not state.waiting or state.started >= self.limits.max_key_concurrency:
            return
        assert not self.draining, "draining leaves a batch waiting with a free slot"
        oldest = state.waiting[0]
        assert isinstance(self.policy, tb.Adaptive)
        assert not oldest.filled
        assert not oldest.expired
        decision = state.decision(self.policy, oldest, self.limits, self.now)
        assert decision.start_at > self.now
        assert oldest.deadline == decision.start_at, "the held batch's timer is not its decision"
        learned = state.learned
        assert learned is not None
        assert learned.ready, "held before anything was learned"
        expected = learned.snapshot().batch_seconds(load(oldest))
        assert oldest.deadline <= oldest.caller_deadline - expected + 1e-9
        target = self.policy.target_latency
        if target is not None:
            assert oldest.deadline <= oldest.opened_at + target - expected + 1e-9

    @invariant()
    def learning_follows_started_batches(self) -> None:
        learned = self.state.learned
        assert learned is not None
        assert set(map(id, learned.running)) == {id(b) for b in self.running}


TestAdaptiveKeyState = AdaptiveKeyStateMachine.TestCase
TestAdaptiveKeyState.settings = settings(
    max_examples=300 * EXAMPLE_SCALE, stateful_step_count=60, deadline=None
)


TestKeyState = KeyStateMachine.TestCase
TestKeyState.settings = settings(
    max_examples=400 * EXAMPLE_SCALE, stateful_step_count=50, deadline=None
)


# --- dedupe: shared slots (issue 15) ---------------------------------------------

from trio_batch._sharing import SharingKeyState, Slot  # noqa: E402

#: A caller: (identity, serial number).
Caller = tuple[int, int]
SharedBatch = Batch[int, Slot[Caller]]


class SharingMachine(RuleBasedStateMachine):
    """The pure layer of ``dedupe``: callers share the slot of an equal identity.

    The model plays the batcher: it shares or queues each caller, withdraws
    members (a slot leaves its batch only with its last member), begins and
    finishes batches in any order, gives up processing batches
    (``cancel_abandoned``) and admits callers waiting for room.
    """

    def __init__(self) -> None:
        super().__init__()
        self.state: SharingKeyState[int, Caller] = SharingKeyState()
        self.serial = itertools.count()
        self.batches: list[SharedBatch] = []
        self.running: list[SharedBatch] = []
        self.given_up: set[int] = set()
        self.processed: list[list[int]] = []
        #: Every caller that is in a slot, and the slot it is in.
        self.where: dict[Caller, Slot[Caller]] = {}

    @initialize(data=st.data())
    def configure(self, data: st.DataObject) -> None:
        self.limits = data.draw(
            st.builds(
                tb.Limits,
                max_batch_size=st.integers(1, 3),
                max_key_concurrency=st.integers(1, 2),
                max_batch_queue_size=st.integers(1, 3),
                overflow=st.sampled_from(list(tb.Overflow)),
                # With a cost bound, each input costs (identity % 3) + 1.
                max_batch_cost=st.none() | st.integers(3, 6),
            ),
            label="limits",
        )
        choices: list[tb.Policy] = [tb.Immediate(), tb.Size()]
        self.policy = data.draw(st.sampled_from(choices), label="policy")

    def queue(self) -> list[SharedBatch]:
        return self.state.queued_batches()

    def start(self, *, after_finish: bool = False) -> None:
        started = self.state.start_allowed(self.policy, self.limits, after_finish=after_finish)
        self.running.extend(started)

    def admit(self) -> None:
        for waiter, slot, batch, shared in self.state.admit_shared(self.policy, self.limits):
            assert slot.batch is batch
            assert any(member is waiter for member in slot.members)
            self.where[waiter] = slot
            if not shared and batch not in self.batches:
                self.batches.append(batch)
        self.start()

    @rule(identity=st.integers(0, 3))
    def submit(self, identity: int) -> None:
        caller = (identity, next(self.serial))
        unfinished = identity in self.state.slots
        slot = self.state.share(identity, caller)
        if slot is not None:
            # A sharer: never rejected, never opens a batch, the batch is unchanged.
            assert unfinished
            assert slot.batch is not None
            assert slot.batch.state != DONE
            self.where[caller] = slot
            return
        assert not unfinished
        own = Slot(identity, caller)
        cost = None if self.limits.max_batch_cost is None else identity % 3 + 1
        if self.state.overflow:
            batch = None
        elif cost is None:
            batch = self.state.add(identity, own, self.policy, self.limits)
        else:
            batch = self.state.add_costed(identity, own, cost, self.policy, self.limits)
        if batch is None:
            if self.limits.overflow is tb.Overflow.WAIT:
                self.state.overflow.append((identity, own, cost))
            return
        assert own.batch is not None
        assert own.batch is batch
        assert self.state.slots[identity] is own
        self.where[caller] = own
        if batch not in self.batches:
            self.batches.append(batch)
        self.start()

    @precondition(
        lambda self: any(s.batch.state <= STARTING for s in self.where.values() if s.batch)
    )
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        callers = [
            c
            for c, slot in self.where.items()
            if slot.batch is not None and slot.batch.state <= STARTING
        ]
        caller = data.draw(st.sampled_from(callers))
        slot = self.where.pop(caller)
        batch = slot.batch
        assert batch is not None
        others = len(slot.members) - 1
        last = self.state.leave(slot, caller)
        assert last == (others == 0)
        if last:
            self.state.withdraw(batch, slot)
            assert (
                slot.identity not in self.state.slots or self.state.slots[slot.identity] is not slot
            )
            assert all(s is not slot for s in batch.waiters)
        self.admit()
        self.start()

    @precondition(lambda self: bool(self.state.overflow))
    @rule(data=st.data())
    def cancel_waiter(self, data: st.DataObject) -> None:
        _, slot, _ = data.draw(st.sampled_from(list(self.state.overflow)))
        self.state.leave_overflow(slot)

    @precondition(lambda self: bool(self.state.starting))
    @rule(data=st.data())
    def begin_processing(self, data: st.DataObject) -> None:
        batch = data.draw(st.sampled_from(self.state.starting))
        assert self.state.begin_processing(batch)
        self.processed.append(list(batch.inputs))
        self.admit()

    @precondition(lambda self: any(b.state == PROCESSING for b in self.running))
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        # cancel_abandoned: nobody may join a batch that is being cancelled.
        batch = data.draw(st.sampled_from([b for b in self.running if b.state == PROCESSING]))
        self.state.unshare(batch)
        self.given_up.add(id(batch))

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        batch = data.draw(st.sampled_from(self.running))
        self.running.remove(batch)
        slots = self.state.finish(batch)
        for slot in slots:
            for member in slot.members:
                assert self.where.pop(member) is slot
        self.admit()
        self.start(after_finish=True)

    # -- invariants -------------------------------------------------------------

    @invariant()
    def shared_slots_count_once(self) -> None:
        state = self.state
        assert len(state.starting) + len(state.waiting) <= self.limits.max_batch_queue_size
        max_cost = self.limits.max_batch_cost
        for batch in self.queue():
            assert 0 < batch.size <= self.limits.max_batch_size
            assert batch.size == len(batch.waiters)
            if max_cost is not None:
                # A shared input costs once: its first item's cost.
                assert batch.cost == sum(identity % 3 + 1 for identity in batch.inputs)
                assert batch.cost <= max_cost
            for slot in batch.waiters:
                # A slot in a batch not yet processing has a member.
                assert slot.members
                assert slot.batch is batch

    @invariant()
    def slots_map_each_identity_to_its_one_unfinished_slot(self) -> None:
        live = [
            slot
            for batch in self.batches
            if batch.state != DONE and id(batch) not in self.given_up
            for slot in batch.waiters
        ]
        identities = [slot.identity for slot in live]
        assert len(identities) == len(set(identities)), "one identity in two slots"
        assert {slot.identity: slot for slot in live} == self.state.slots
        for batch in self.batches:
            assert batch.inputs == [slot.identity for slot in batch.waiters]

    @invariant()
    def every_caller_is_in_one_slot(self) -> None:
        for caller, slot in self.where.items():
            assert caller[0] == slot.identity
            assert sum(member is caller for member in slot.members) == 1

    @invariant()
    def processed_inputs_are_distinct(self) -> None:
        for inputs in self.processed:
            assert len(inputs) == len(set(inputs))


TestSharing = SharingMachine.TestCase
TestSharing.settings = settings(
    max_examples=300 * EXAMPLE_SCALE, stateful_step_count=50, deadline=None
)
