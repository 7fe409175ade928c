"""Property test of the async layer: scripts of submits, cancellations, sleeps and
failures against the real batcher, in virtual time, with every rule of the spec
checked at the end of each example.

Hypothesis rules cannot be ``async`` under pytest-trio, so the test is a plain
function: each example is one ``trio.run`` with an autojumping ``MockClock``.
Trio makes its scheduler deterministic under Hypothesis, so failures shrink and
replay.

The harness orders events with a global sequence number as well as virtual time:
a cancel requested by the script and a ``process`` call that begins in the same
virtual instant are still ordered exactly.

Examples also draw ``Limits.overflow`` (``REJECT`` or ``WAIT``), per-item failures
(``process`` returns ``outcome.Error`` for one item, ``outcome.Value`` or a plain
output for the others) and deadline-aware ``Duration`` policies.

They also draw misbehaving user code, so that the end of a batch is checked to be
total (SPEC, "A batch's end is total"): outputs handed back as other shapes, some
readable by position (a tuple, a numpy array, a tensor-like) and some not (not a
sequence, mapping-like, DataFrame-like, a wrong or lying length, a 0-d array,
reading that raises), and exceptions whose ``str()`` and ``repr()`` raise, from
``process``, from ``acquire`` and inside ``outcome.Error``. Whatever the user code
does, every submit still ends with exactly one outcome of the right type and the
block does not die.

Set ``HYPOTHESIS_PROFILE=thorough`` for a longer run.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, cast

import numpy as np
import outcome
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings, strategies as st
from tutil import (
    EXAMPLE_SCALE,
    DataFrameLikeOutputs,
    LyingLengthOutputs,
    MappingLikeOutputs,
    TensorLikeOutputs,
    UnprintableMixin,
    policies,
    safe_repr,
)

import trio_batch as tb

MAX_EXAMPLES = 1500 * EXAMPLE_SCALE

KEYS = ("a", "b")
# Virtual seconds after which a run counts as hung (scripts last well under 100 s).
HANG_GUARD_SECONDS = 10_000.0
EPS = 1e-9

Output: TypeAlias = tuple[str, int]
OutcomeKind: TypeAlias = Literal["output", "error", "cancelled", "type_error", "unexpected"]
Batcher: TypeAlias = tb.Batcher[str, int, Output]


# --------------------------------------------------------------------------------------
# The script


@dataclass(frozen=True)
class Submit:
    """Spawn a caller task that submits a fresh item; optionally with a timeout."""

    key: str
    timeout: float | None


@dataclass(frozen=True)
class Burst:
    """Spawn ``count`` callers of ``key`` at once (fills queues: Rejected, or Overflow.WAIT)."""

    key: str
    count: int
    timeout: float | None


@dataclass(frozen=True)
class SubmitUnhashable:
    """Spawn a caller that submits with an unhashable key: ``TypeError``, nothing queued."""


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class CancelCaller:
    """Cancel the scope of caller ``index % number_of_callers`` (if any)."""

    index: int


@dataclass(frozen=True)
class FailNextBatch:
    """The next ``process`` call for ``key`` raises (an exception that cannot be
    printed, if ``unprintable``)."""

    key: str
    unprintable: bool = False


@dataclass(frozen=True)
class BreakNextBatch:
    """The next ``process`` call for ``key`` returns one output too few."""

    key: str


class Shape(enum.Enum):
    """How ``process`` hands back its outputs (see ``ReshapeNextBatch``)."""

    # Readable by position (output i is outputs[i]): each caller gets its own output.
    TUPLE = "a tuple"
    NUMPY = "a 1-d numpy array of objects"
    TENSOR_LIKE = "__len__ and __getitem__ by position, no __iter__"
    # Not readable that way: ProcessorContractError for every caller of the batch.
    NOT_A_SEQUENCE = "an int"
    MAPPING_LIKE = "__len__ and __getitem__ by label (obj[0] is KeyError(0))"
    DATAFRAME_LIKE = "len() is rows, iteration yields column labels, [] takes a column"
    ONE_TOO_MANY = "a list with one output too many"
    LYING_LENGTH = "a list one short whose len() claims the right length"
    RAISES_ON_READ = "reading the last output raises"
    ZERO_D_ARRAY = "a 0-d numpy array"


#: The shapes from which every caller gets its own output.
READABLE_SHAPES = frozenset({Shape.TUPLE, Shape.NUMPY, Shape.TENSOR_LIKE})


@dataclass(frozen=True)
class ReshapeNextBatch:
    """The next ``process`` call for ``key`` hands its outputs back as ``shape``."""

    key: str
    shape: Shape


@dataclass(frozen=True)
class FailItem:
    """``process`` returns ``outcome.Error`` for the item of pending caller
    ``index % number_of_pending_callers`` (if any), whichever call it lands in
    (an exception that cannot be printed, if ``unprintable``)."""

    index: int
    unprintable: bool = False


@dataclass(frozen=True)
class Settle:
    """Wait until every task is blocked, then compare ``statistics()`` with the record."""


Operation: TypeAlias = (
    Submit
    | Burst
    | SubmitUnhashable
    | Sleep
    | CancelCaller
    | FailNextBatch
    | BreakNextBatch
    | ReshapeNextBatch
    | FailItem
    | Settle
)


class FinalPause(enum.Enum):
    """What the body does between the script and its end."""

    NONE = "nothing: callers spawned last submit after the body ended"
    CHECKPOINT = "one checkpoint: every spawned caller has submitted"
    SETTLE = "wait until every task is blocked"


class Ending(enum.Enum):
    DRAIN = "the body returns"
    RAISE = "the body raises"
    CANCEL = "the block is cancelled from outside"
    DRAIN_THEN_CANCEL = "the body returns, then the drain is cancelled from outside"


@dataclass(frozen=True)
class Scenario:
    policy: tb.Policy
    limits: tb.Limits
    use_acquire: bool
    #: None: no checkpoint at all (the batch runs to its end without blocking).
    acquire_delay: float | None
    failing_acquire_keys: frozenset[str]
    process_delay: float | None
    script: tuple[Operation, ...]
    settle_after_sleeps: bool  # an implicit Settle after every Sleep
    final_pause: FinalPause
    ending: Ending
    drain_cancel_delay: float
    late_submit: bool
    #: ``acquire`` of a failing key raises an exception that cannot be printed.
    unprintable_acquire_error: bool = False

    @property
    def batch_time(self) -> float:
        """How long one batch takes from its start to its end."""
        return (self.acquire_delay or 0.0) + (self.process_delay or 0.0)


# --------------------------------------------------------------------------------------
# Strategies

keys = st.sampled_from(KEYS)
delays = st.sampled_from([0.0, 0.5, 1.0])

timeouts = st.sampled_from([None, None, None, 0.0, 0.25, 0.5, 1.0, 1.5])
submits = st.builds(Submit, key=keys, timeout=timeouts)
sleeps = st.builds(Sleep, seconds=st.sampled_from([0.0, 0.25, 0.5, 1.0]))
mistakes = st.one_of(
    st.builds(FailNextBatch, key=keys, unprintable=st.booleans()),
    st.builds(BreakNextBatch, key=keys),
    st.builds(ReshapeNextBatch, key=keys, shape=st.sampled_from(Shape)),
    st.just(SubmitUnhashable()),
)
# Weights by repetition (one_of would give each kind the same share): most of a
# script is submits and sleeps.
OPERATION_KINDS: dict[str, st.SearchStrategy[Operation]] = {
    "submit": submits,
    "burst": st.builds(Burst, key=keys, count=st.integers(2, 6), timeout=timeouts),
    "sleep": sleeps,
    "cancel": st.builds(CancelCaller, index=st.integers(0, 40)),
    "settle": st.just(Settle()),
    "mistake": mistakes,
    "fail_item": st.builds(FailItem, index=st.integers(0, 40), unprintable=st.booleans()),
}
WEIGHTED_KINDS = [
    *["submit"] * 5,
    *["sleep"] * 3,
    *["burst", "cancel", "cancel", "settle", "mistake", "fail_item"],
]


@st.composite
def operations(draw: st.DrawFn) -> Operation:
    return draw(OPERATION_KINDS[draw(st.sampled_from(WEIGHTED_KINDS))])


# Built once (not per example): generating examples is much of the test's run time.
MAX_BATCH_SIZES = st.integers(1, 5)
DEADLINE_MARGINS = st.sampled_from([None, 0.0, 0.25])
ADAPTIVE = st.builds(tb.Adaptive, st.sampled_from([None, 0.05, 1.0]))
POLICIES = {
    size: st.one_of(policies(size, delays=delays, deadline_margins=DEADLINE_MARGINS), ADAPTIVE)
    for size in range(1, 6)
}
SCRIPTS = st.lists(operations(), min_size=4, max_size=40)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    limits = tb.Limits(
        max_batch_size=draw(MAX_BATCH_SIZES),
        max_key_concurrency=draw(st.integers(1, 3)),
        max_batch_queue_size=draw(st.integers(1, 4)),
        overflow=draw(st.sampled_from(tb.Overflow)),
    )
    use_acquire = draw(st.booleans())
    return Scenario(
        policy=draw(POLICIES[limits.max_batch_size]),
        limits=limits,
        use_acquire=use_acquire,
        acquire_delay=draw(st.sampled_from([None, 0.0, 0.25, 0.5])) if use_acquire else 0.0,
        failing_acquire_keys=(
            draw(st.frozensets(keys, max_size=1)) if use_acquire else frozenset()
        ),
        process_delay=draw(st.sampled_from([None, 0.0, 0.25, 0.5, 1.0])),
        script=tuple(draw(SCRIPTS)),
        settle_after_sleeps=draw(st.booleans()),
        final_pause=draw(st.sampled_from(FinalPause)),
        ending=draw(st.sampled_from([Ending.DRAIN, *Ending])),
        drain_cancel_delay=draw(st.sampled_from([0.0, 0.25, 1.0])),
        late_submit=draw(st.booleans()),
        unprintable_acquire_error=use_acquire and draw(st.booleans()),
    )


# --------------------------------------------------------------------------------------
# What happened


class ProcessBoom(Exception):
    pass


class AcquireBoom(Exception):
    pass


class BodyBoom(Exception):
    pass


class ItemBoom(Exception):
    """What ``process`` returns as ``outcome.Error`` for an item marked by ``FailItem``."""


class UnprintableProcessBoom(UnprintableMixin, ProcessBoom):
    pass


class UnprintableAcquireBoom(UnprintableMixin, AcquireBoom):
    pass


class UnprintableItemBoom(UnprintableMixin, ItemBoom):
    pass


def reshape(outputs: list[Any], shape: Shape) -> object:
    """``outputs`` handed back as ``shape``."""
    match shape:
        case Shape.TUPLE:
            return tuple(outputs)
        case Shape.NUMPY:
            array = np.empty(len(outputs), dtype=object)
            for index, output in enumerate(outputs):
                array[index] = output
            return array
        case Shape.TENSOR_LIKE:
            return TensorLikeOutputs(outputs)
        case Shape.NOT_A_SEQUENCE:
            return len(outputs)
        case Shape.MAPPING_LIKE:
            return MappingLikeOutputs(outputs)
        case Shape.DATAFRAME_LIKE:
            return DataFrameLikeOutputs(outputs)
        case Shape.ONE_TOO_MANY:
            return [*outputs, outputs[-1]]
        case Shape.LYING_LENGTH:
            return LyingLengthOutputs(outputs[:-1])
        case Shape.RAISES_ON_READ:
            return TensorLikeOutputs(outputs, raise_at=len(outputs) - 1)
        case Shape.ZERO_D_ARRAY:
            return np.array(len(outputs))


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    value: object
    seq: int
    time: float


@dataclass
class Caller:
    index: int  # also the submitted item
    key: str
    scope: trio.CancelScope
    deadline: float  # math.inf without a timeout
    unhashable_key: bool = False
    submit_seq: int | None = None
    submit_time: float | None = None
    cancel_seq: int | None = None  # explicit cancel by the script
    cancel_time: float | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def cancel_requested_at(self) -> float:
        """When this caller's cancellation was first requested (inf if never)."""
        explicit = math.inf if self.cancel_time is None else self.cancel_time
        return min(explicit, self.deadline)


#: What a ``process`` call does: return good outputs, raise, return one output too
#: few, or hand its outputs back in another shape.
Mode: TypeAlias = Literal["ok", "fail", "break"] | Shape


@dataclass
class ProcessCall:
    key: str
    inputs: tuple[int, ...]
    resource: str | None
    mode: Mode
    start_seq: int
    start_time: float
    # Items failed alone (outcome.Error at their position), as marked when the call began.
    failed_items: dict[int, ItemBoom] = field(default_factory=dict)
    returned: bool = False
    error: ProcessBoom | None = None
    end_time: float = math.inf

    def readable(self) -> bool:
        """Whether the outputs it returned (if any) can be read by position."""
        return self.mode == "ok" or self.mode in READABLE_SHAPES

    def broke_contract(self) -> bool:
        """Whether it returned outputs that cannot be matched to its inputs."""
        return self.mode == "break" or (
            isinstance(self.mode, Shape) and self.mode not in READABLE_SHAPES
        )


class Run:
    """One example: the fakes handed to the batcher, the script runner, and the record."""

    def __init__(self, scenario: Scenario) -> None:
        self.sc = scenario
        self._seq = itertools.count()
        self.callers: list[Caller] = []
        self.calls: list[ProcessCall] = []
        # Per key, what its next process calls do (and, for "fail", whether the
        # exception can be printed).
        self.pending_modes: defaultdict[str, deque[tuple[Mode, bool]]] = defaultdict(deque)
        self.item_failures: dict[int, ItemBoom] = {}
        # Started batches per key, as the fakes see them: live acquire contexts, or
        # live process calls when there is no acquire.
        self.live: Counter[str] = Counter()
        self.max_live: Counter[str] = Counter()
        self.acquire_enters = 0
        self.acquire_exits = 0
        self.settle_failures: list[str] = []
        self.boom = BodyBoom("from the body")
        self.batcher: Batcher | None = None
        self.escaped: BaseException | None = None
        self.outer_cancelled_caught = False
        self.body_end_seq = math.inf
        self.body_end_time = math.inf
        self.teardown_deadline = math.inf
        self.block_exit_time = math.inf
        self.live_at_exit = -1
        self.stats_after: tuple[int, int, int, int] | None = None
        self.pending_at_body_end = 0
        self.live_at_body_end = 0

    def mark(self) -> tuple[int, float]:
        return next(self._seq), trio.current_time()

    # ---- fakes ------------------------------------------------------------------------

    def _slot_taken(self, key: str) -> None:
        self.live[key] += 1
        self.max_live[key] = max(self.max_live[key], self.live[key])

    @asynccontextmanager
    async def acquire(self, key: str) -> AsyncIterator[str]:
        self.acquire_enters += 1
        self._slot_taken(key)
        try:
            if self.sc.acquire_delay is not None:
                await trio.sleep(self.sc.acquire_delay)
            if key in self.sc.failing_acquire_keys:
                if self.sc.unprintable_acquire_error:
                    raise UnprintableAcquireBoom(key)
                raise AcquireBoom(key)
            yield f"resource-{key}"
        finally:
            self.acquire_exits += 1
            self.live[key] -= 1

    async def _process(self, key: str, inputs: list[int], resource: str | None) -> list[Any]:
        seq, now = self.mark()
        modes = self.pending_modes[key]
        mode, unprintable = modes.popleft() if modes else ("ok", False)
        failed = {item: self.item_failures[item] for item in inputs if item in self.item_failures}
        call = ProcessCall(key, tuple(inputs), resource, mode, seq, now, failed)
        self.calls.append(call)
        if not self.sc.use_acquire:
            self._slot_taken(key)
        try:
            if self.sc.process_delay is not None:
                await trio.sleep(self.sc.process_delay)
            if mode == "fail":
                call.error = UnprintableProcessBoom(key) if unprintable else ProcessBoom(key)
                raise call.error
            # Both forms of a good output: plain, and wrapped in outcome.Value.
            outputs: list[Any] = [
                outcome.Error(failed[item])
                if item in failed
                else outcome.Value((key, item))
                if item % 2
                else (key, item)
                for item in inputs
            ]
            call.returned = True
            if isinstance(mode, Shape):
                return cast(list[Any], reshape(outputs, mode))
            return outputs[:-1] if mode == "break" else outputs
        finally:
            call.end_time = trio.current_time()
            if not self.sc.use_acquire:
                self.live[key] -= 1

    async def process(self, key: str, inputs: list[int]) -> list[Any]:
        return await self._process(key, inputs, None)

    async def process_with_resource(self, key: str, inputs: list[int], resource: str) -> list[Any]:
        return await self._process(key, inputs, resource)

    def open_batcher(self) -> AbstractAsyncContextManager[Batcher]:
        if self.sc.use_acquire:
            return tb.open_batcher(
                self.process_with_resource,
                acquire=self.acquire,
                policy=self.sc.policy,
                limits=self.sc.limits,
                name="property",
            )
        return tb.open_batcher(
            self.process, policy=self.sc.policy, limits=self.sc.limits, name="property"
        )

    # ---- callers and script -----------------------------------------------------------

    def _record(self, caller: Caller, kind: OutcomeKind, value: object) -> None:
        seq, now = self.mark()
        caller.outcomes.append(Outcome(kind, value, seq, now))

    async def call_submit(self, batcher: Batcher, caller: Caller) -> None:
        with caller.scope:
            caller.submit_seq, caller.submit_time = self.mark()
            try:
                key = cast(str, [caller.key]) if caller.unhashable_key else caller.key
                output = await batcher.submit(key, caller.index)
            except trio.Cancelled:
                self._record(caller, "cancelled", None)
                raise
            except tb.BatchError as exc:
                self._record(caller, "error", exc)
            except TypeError as exc:
                self._record(caller, "type_error", exc)
            except Exception as exc:
                self._record(caller, "unexpected", exc)
            else:
                self._record(caller, "output", output)

    def spawn_caller(
        self,
        nursery: trio.Nursery,
        batcher: Batcher,
        key: str,
        timeout: float | None,
        *,
        unhashable_key: bool = False,
    ) -> None:
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        scope = trio.CancelScope(deadline=deadline)
        caller = Caller(len(self.callers), key, scope, deadline, unhashable_key)
        self.callers.append(caller)
        nursery.start_soon(self.call_submit, batcher, caller)

    def _processed_items(self) -> set[int]:
        return {item for call in self.calls for item in call.inputs}

    def pending_when_submitted(self, caller: Caller) -> int:
        """An upper bound on the items of ``caller.key`` queued or waiting for room
        when ``caller`` submitted (the harness marks a submit just before the
        batcher adds the item, with no checkpoint in between)."""
        assert caller.submit_seq is not None
        seq = caller.submit_seq
        started_at = {item: call.start_seq for call in self.calls for item in call.inputs}
        count = 0
        for other in self.callers:
            if other is caller or other.key != caller.key or other.unhashable_key:
                continue
            if other.submit_seq is None or other.submit_seq > seq:
                continue
            if other.outcomes and (
                isinstance(other.outcomes[0].value, tb.Rejected) or other.outcomes[0].seq < seq
            ):
                continue
            if started_at.get(other.index, math.inf) < seq:
                continue
            count += 1
        return count

    def check_settled(self, batcher: Batcher) -> None:
        """Every task is blocked: compare the batcher's state with the record."""
        now = trio.current_time()
        processed = self._processed_items()
        # Items queued, or (with Overflow.WAIT) waiting for room.
        queued = [
            c
            for c in self.callers
            if c.submit_seq is not None and not c.outcomes and c.index not in processed
        ]
        # statistics() is exact: each started batch sits in acquire or process now.
        stats = batcher.statistics()
        waiting_submits = stats.waiting_submits
        limits = self.sc.limits
        policy = self.sc.policy
        waits_for_room = limits.overflow is tb.Overflow.WAIT
        if not waits_for_room and waiting_submits != 0:
            self.settle_failures.append(
                f"at t={now}: waiting_submits={waiting_submits} with Overflow.REJECT"
            )
        active = {c.key for c in queued} | {k for k, n in self.live.items() if n > 0}
        expected = (len(active), len(queued) - waiting_submits, sum(self.live.values()))
        got = (stats.active_keys, stats.queued_items, stats.processing_batches)
        if got != expected:
            self.settle_failures.append(
                f"at t={now}: statistics (active_keys, queued_items, "
                f"processing_batches) = {got}, expected {expected}"
            )
        rejects_when_full = isinstance(policy, tb.Duration) and policy.on_full is tb.OnFull.REJECT
        # A key's queue holds at most max_batch_queue_size batches of at most
        # max_batch_size items; with OnFull.REJECT only one batch (it rejects
        # rather than open a second batch while the newest is full).
        most = limits.max_batch_size
        if not rejects_when_full:
            most *= limits.max_batch_queue_size
        # A full queue (no room for one more item): the newest batch is full and,
        # unless OnFull.REJECT, the older batches hold at least one item each.
        needed = limits.max_batch_size
        if not rejects_when_full:
            needed += limits.max_batch_queue_size - 1
        if waits_for_room:
            # Callers wait for room only while their key's queue is full, and the
            # items of a key waiting for room are its youngest pending ones (FIFO);
            # the rest fit in the queue. statistics() are summed over keys: some
            # split of waiting_submits between the keys must fit both.
            counts = [sum(1 for c in queued if c.key == key) for key in KEYS]

            def fits(pending: int, waiting: int) -> bool:
                room_left = pending - waiting
                return 0 <= waiting <= pending and (
                    room_left <= most and (waiting == 0 or room_left >= needed)
                )

            if not any(
                fits(counts[0], split) and fits(counts[1], waiting_submits - split)
                for split in range(waiting_submits + 1)
            ):
                self.settle_failures.append(
                    f"at t={now}: waiting_submits={waiting_submits} with {counts} items "
                    f"pending for {KEYS}: a queue holds at most {most} items and is full "
                    f"with at least {needed}"
                )
        for key in KEYS:
            waiting = [c for c in queued if c.key == key]
            if not waiting:
                continue
            if not waits_for_room and len(waiting) > most:
                self.settle_failures.append(
                    f"at t={now}: {len(waiting)} items queued for {key!r}, at most {most} fit"
                )
            # Liveness: nothing waits that its policy would have started. Without
            # acquire, a started batch is processing, so every waiting item is in a
            # batch that has not started. (With Overflow.WAIT, the oldest pending
            # item is in the queue: waiting for room needs a full queue of older items.)
            started = self.live[key]
            slot_free = started < limits.max_key_concurrency
            if isinstance(policy, tb.Immediate | tb.Balanced) and started == 0:
                self.settle_failures.append(
                    f"at t={now}: {policy} left {len(waiting)} items of {key!r} waiting "
                    f"with no batch started"
                )
            if self.sc.use_acquire or not slot_free:
                continue
            if isinstance(policy, tb.Immediate):
                self.settle_failures.append(
                    f"at t={now}: Immediate left {len(waiting)} items of {key!r} waiting "
                    f"with a slot free"
                )
            if isinstance(policy, tb.Adaptive) and policy.target_latency is not None:
                # The decision never starts a batch later than its first item's
                # arrival + target_latency (less the expected batch time).
                oldest = min(waiting, key=lambda c: c.submit_seq or 0)
                assert oldest.submit_time is not None
                if not waits_for_room and now > oldest.submit_time + policy.target_latency + EPS:
                    self.settle_failures.append(
                        f"at t={now}: {policy} left an item of {key!r} from "
                        f"t={oldest.submit_time} waiting with a slot free"
                    )
            if isinstance(policy, tb.Duration):
                oldest = min(waiting, key=lambda c: c.submit_seq or 0)
                assert oldest.submit_time is not None
                expiry = math.inf
                # The oldest batch's timer started no later than its oldest item
                # joined it: at its submit, unless it may have waited for room
                # (a batch formed by admission starts its timer then).
                if not waits_for_room or self.pending_when_submitted(oldest) < needed:
                    expiry = oldest.submit_time + policy.delay_seconds
                # Deadline awareness: the oldest item's deadline moved the timer to
                # at most deadline - margin (less the average batch time).
                if policy.deadline_margin is not None:
                    expiry = min(expiry, oldest.deadline - policy.deadline_margin)
                if now >= expiry - EPS:
                    self.settle_failures.append(
                        f"at t={now}: {policy} left an item of {key!r} from "
                        f"t={oldest.submit_time} (deadline {oldest.deadline}) "
                        f"waiting with a slot free"
                    )

    async def run_script(self, batcher: Batcher, nursery: trio.Nursery) -> None:
        for op in self.sc.script:
            match op:
                case Submit(key, timeout):
                    self.spawn_caller(nursery, batcher, key, timeout)
                case Burst(key, count, timeout):
                    for _ in range(count):
                        self.spawn_caller(nursery, batcher, key, timeout)
                case SubmitUnhashable():
                    self.spawn_caller(nursery, batcher, KEYS[0], None, unhashable_key=True)
                case Sleep(seconds):
                    await trio.sleep(seconds)
                    if self.sc.settle_after_sleeps:
                        await trio.testing.wait_all_tasks_blocked()
                        self.check_settled(batcher)
                case CancelCaller(index):
                    if self.callers:
                        caller = self.callers[index % len(self.callers)]
                        if caller.cancel_seq is None:
                            caller.cancel_seq, caller.cancel_time = self.mark()
                        caller.scope.cancel()
                case FailNextBatch(key, unprintable):
                    self.pending_modes[key].append(("fail", unprintable))
                case BreakNextBatch(key):
                    self.pending_modes[key].append(("break", False))
                case ReshapeNextBatch(key, shape):
                    self.pending_modes[key].append((shape, False))
                case FailItem(index, unprintable):
                    processed = self._processed_items()
                    pending = [
                        c
                        for c in self.callers
                        if not c.unhashable_key
                        and not c.outcomes
                        and c.index not in processed
                        and c.index not in self.item_failures
                    ]
                    if pending:
                        caller = pending[index % len(pending)]
                        boom = UnprintableItemBoom if unprintable else ItemBoom
                        self.item_failures[caller.index] = boom(caller.index)
                case Settle():
                    await trio.testing.wait_all_tasks_blocked()
                    self.check_settled(batcher)

    async def body(self, batcher: Batcher, nursery: trio.Nursery, outer: trio.CancelScope) -> None:
        await self.run_script(batcher, nursery)
        match self.sc.final_pause:
            case FinalPause.NONE:
                pass
            case FinalPause.CHECKPOINT:
                await trio.lowlevel.checkpoint()
            case FinalPause.SETTLE:
                await trio.testing.wait_all_tasks_blocked()
                self.check_settled(batcher)
        self.body_end_seq, self.body_end_time = self.mark()
        processed = self._processed_items()
        self.pending_at_body_end = sum(
            1 for c in self.callers if not c.outcomes and c.index not in processed
        )
        self.live_at_body_end = sum(self.live.values())
        match self.sc.ending:
            case Ending.DRAIN:
                pass
            case Ending.RAISE:
                raise self.boom
            case Ending.CANCEL:
                outer.cancel()
                try:
                    await trio.lowlevel.checkpoint()
                finally:
                    # Callers spawned last ran during that checkpoint, while the body
                    # was still running: the body ends only now.
                    self.body_end_seq, self.body_end_time = self.mark()
            case Ending.DRAIN_THEN_CANCEL:
                self.teardown_deadline = outer.deadline = (
                    trio.current_time() + self.sc.drain_cancel_delay
                )

    async def main(self) -> None:
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                outer = trio.CancelScope()
                with outer:
                    try:
                        async with self.open_batcher() as batcher:
                            self.batcher = batcher
                            await self.body(batcher, nursery, outer)
                    except BaseException as exc:
                        self.escaped = exc
                        if isinstance(exc, trio.Cancelled):
                            raise
                _, self.block_exit_time = self.mark()
                self.outer_cancelled_caught = outer.cancelled_caught
                self.live_at_exit = sum(self.live.values())
                if self.batcher is not None:
                    stats = self.batcher.statistics()
                    self.stats_after = (
                        stats.active_keys,
                        stats.queued_items,
                        stats.processing_batches,
                        stats.waiting_submits,
                    )
                    if self.sc.late_submit:
                        self.spawn_caller(nursery, self.batcher, KEYS[0], None)


# --------------------------------------------------------------------------------------
# The checks


def check_ending(run: Run) -> float:
    """Check how the block ended; return the teardown time (inf after a full drain)."""
    sc = run.sc
    match sc.ending:
        case Ending.DRAIN:
            assert run.escaped is None, f"drain raised {run.escaped!r}"
        case Ending.RAISE:
            assert run.escaped is run.boom, (
                f"the body's exception came out as {run.escaped!r}, not as itself"
            )
        case Ending.CANCEL:
            assert isinstance(run.escaped, trio.Cancelled), f"got {run.escaped!r}"
            assert run.outer_cancelled_caught
        case Ending.DRAIN_THEN_CANCEL:
            assert run.escaped is None or isinstance(run.escaped, trio.Cancelled), (
                f"got {run.escaped!r}"
            )
    if sc.ending in (Ending.RAISE, Ending.CANCEL):
        teardown_time = run.body_end_time
    elif run.escaped is not None:
        teardown_time = run.teardown_deadline
    else:
        return math.inf
    assert run.block_exit_time == teardown_time, (
        f"teardown at t={teardown_time} was not prompt: block exited at t={run.block_exit_time}"
    )
    return teardown_time


def check_calls(run: Run) -> dict[int, ProcessCall]:
    """Check every process call; return item -> the call that processed it."""
    sc = run.sc
    by_index = {c.index: c for c in run.callers}
    processed_in: dict[int, ProcessCall] = {}
    for call in run.calls:
        assert 1 <= len(call.inputs) <= sc.limits.max_batch_size, (
            f"process({call.key!r}, {list(call.inputs)}) breaks 1 <= len(inputs) <= "
            f"max_batch_size={sc.limits.max_batch_size}"
        )
        if sc.use_acquire:
            assert call.resource == f"resource-{call.key}", f"wrong resource {call.resource!r}"
        for item in call.inputs:
            assert item not in processed_in, f"item {item} processed twice"
            processed_in[item] = call
            caller = by_index[item]
            assert caller.key == call.key, f"item {item} of {caller.key!r} in a {call.key!r} batch"
            assert caller.submit_seq is not None
            assert caller.submit_seq < call.start_seq, f"item {item} processed before submitted"
        seqs = [by_index[item].submit_seq or 0 for item in call.inputs]
        assert seqs == sorted(seqs), f"inputs {list(call.inputs)} not in submit order"
    for key, most in run.max_live.items():
        assert most <= sc.limits.max_key_concurrency, (
            f"{most} batches of {key!r} started at once, "
            f"max_key_concurrency={sc.limits.max_key_concurrency}"
        )
    # FIFO between batches of one key: the acquire delay is the same for every batch,
    # so an older item's batch never begins processing after a younger item's batch.
    for key in KEYS:
        items = sorted(
            (c for c in run.callers if c.key == key and c.index in processed_in),
            key=lambda c: c.submit_seq or 0,
        )
        for older, younger in itertools.pairwise(items):
            a, b = processed_in[older.index], processed_in[younger.index]
            assert a.start_time <= b.start_time, (
                f"item {older.index} submitted before item {younger.index} of {key!r}, "
                f"but processed at t={a.start_time} > t={b.start_time}"
            )
    return processed_in


def outstanding_when_rejected(run: Run, rejected: Caller, outcome: Outcome) -> int:
    """An upper bound on the items queued for ``rejected.key`` when it was rejected."""
    assert rejected.submit_seq is not None
    count = 0
    processed_in = {item: call for call in run.calls for item in call.inputs}
    for other in run.callers:
        if other is rejected or other.key != rejected.key or other.unhashable_key:
            continue
        if other.submit_seq is None:
            continue
        if other.submit_seq > outcome.seq:
            continue  # arrived after
        other_outcome = other.outcomes[0]
        if isinstance(other_outcome.value, tb.Rejected):
            continue
        if other_outcome.seq < rejected.submit_seq:
            continue  # already done
        call = processed_in.get(other.index)
        if call is not None and call.start_seq < rejected.submit_seq:
            continue  # already processing, so out of the queue
        count += 1
    return count


def check_caller(
    run: Run, caller: Caller, processed_in: dict[int, ProcessCall], teardown_time: float
) -> None:
    sc = run.sc
    assert len(caller.outcomes) == 1, f"caller {caller.index}: outcomes {caller.outcomes}"
    outcome = caller.outcomes[0]
    call = processed_in.get(caller.index)
    late = caller.submit_seq is not None and caller.submit_seq > run.body_end_seq
    what = f"caller {caller.index} (key {caller.key!r}) got {outcome.value!r} at t={outcome.time}"

    assert outcome.kind != "unexpected", what
    cancel_at = caller.cancel_requested_at()
    assert outcome.time <= cancel_at, f"{what}: still waiting after its cancel at t={cancel_at}"

    if caller.unhashable_key:
        assert call is None, f"{what}: processed with an unhashable key"
        if outcome.kind == "type_error" or outcome.kind == "cancelled":
            return
        assert late, f"{what}: an unhashable key must raise TypeError"
    assert outcome.kind != "type_error", what

    if outcome.kind == "cancelled":
        assert caller.scope.cancelled_caught, f"caller {caller.index}: Cancelled not its own"
        if call is not None:
            # Processed although cancelled: the cancel must not precede process().
            explicit = caller.cancel_time is not None and caller.cancel_time < caller.deadline
            if explicit:
                assert caller.cancel_seq is not None
                assert caller.cancel_seq > call.start_seq, (
                    f"caller {caller.index} was cancelled at t={caller.cancel_time} before "
                    f"its batch began processing, yet item was processed at t={call.start_time}"
                )
            else:
                assert caller.deadline >= call.start_time, (
                    f"caller {caller.index} timed out at t={caller.deadline}, yet its item "
                    f"was processed later, at t={call.start_time}"
                )
        return

    if outcome.kind == "output":
        assert call is not None, f"{what}: item never processed"
        assert call.readable(), f"{what}: from a call whose mode was {call.mode}"
        assert call.returned, what
        assert caller.index not in call.failed_items, f"{what}: its item was failed alone"
        assert outcome.value == (caller.key, caller.index), f"{what}: wrong output"
        assert not late, what
        return

    exc = outcome.value
    assert isinstance(exc, tb.BatchError)
    try:
        str(exc)
    except Exception as error:
        pytest.fail(f"caller {caller.index}: str() of its {type(exc).__name__} raised {error!r}")
    if late:
        assert isinstance(exc, tb.BatcherClosed), f"{what}: submitted after the body ended"
    if isinstance(exc, tb.BatcherClosed):
        assert late or outcome.time >= teardown_time, (
            f"{what}: BatcherClosed without a teardown (ending: {sc.ending.name})"
        )
    elif isinstance(exc, tb.Rejected):
        assert sc.limits.overflow is tb.Overflow.REJECT, f"{what}: Overflow.WAIT never rejects"
        assert call is None, f"{what}: rejected item was processed"
        # The newest batch is full; with OnFull.PROCESS the queue also holds
        # max_batch_queue_size - 1 older batches of at least one item each.
        needed = sc.limits.max_batch_size
        rejects_when_full = (
            isinstance(sc.policy, tb.Duration) and sc.policy.on_full is tb.OnFull.REJECT
        )
        if not rejects_when_full:
            needed += sc.limits.max_batch_queue_size - 1
        outstanding = outstanding_when_rejected(run, caller, outcome)
        assert outstanding >= needed, (
            f"{what}: rejected with at most {outstanding} items queued for its key, "
            f"a full queue needs {needed}"
        )
    elif isinstance(exc, tb.ResourceAcquisitionFailed):
        assert call is None, what
        assert caller.key in sc.failing_acquire_keys, what
        assert isinstance(exc.__cause__, AcquireBoom), f"{what}: cause {safe_repr(exc.__cause__)}"
        unprintable = isinstance(exc.__cause__, UnprintableAcquireBoom)
        assert unprintable == sc.unprintable_acquire_error, what
    elif isinstance(exc, tb.BatchFailed):
        assert call is not None, what
        assert call.mode == "fail", what
        assert exc.__cause__ is call.error, f"{what}: cause {safe_repr(exc.__cause__)}"
    elif isinstance(exc, tb.ProcessorContractError):
        assert call is not None, what
        assert call.broke_contract(), f"{what}: from a call whose mode was {call.mode}"
        assert call.returned, what
    elif isinstance(exc, tb.ItemFailed):
        # Only the item process failed alone, in a call that returned its outputs.
        assert call is not None, what
        assert call.readable(), f"{what}: from a call whose mode was {call.mode}"
        assert call.returned, what
        assert caller.index in call.failed_items, f"{what}: its item was not failed"
        assert exc.__cause__ is call.failed_items[caller.index], (
            f"{what}: cause {safe_repr(exc.__cause__)}"
        )
    else:
        pytest.fail(f"{what}: unexpected error type")


def check_policy_timing(run: Run, processed_in: dict[int, ProcessCall]) -> None:
    """Size and Duration never start a batch early.

    Items withdrawn before a batch began processing may have been in it (making it
    full, starting its timer earlier, or moving its timer with their deadline): the
    bounds allow for every withdrawn item that may have been in it. That is one that
    arrived after every item of an older batch of its key (batches are FIFO).
    """
    sc = run.sc
    policy = sc.policy
    by_index = {c.index: c for c in run.callers}
    by_key = {key: [c for c in run.callers if c.key == key] for key in KEYS}

    def withdrawn_before(caller: Caller, time: float) -> bool:
        outcome = caller.outcomes[0]
        return (
            outcome.kind == "cancelled"
            and caller.index not in processed_in
            and not caller.unhashable_key
            and outcome.time <= time
        )

    for call in run.calls:
        if call.start_seq > run.body_end_seq:
            continue  # draining: every batch is ready
        if not isinstance(policy, tb.Size | tb.Duration):
            continue
        # Items of batches that began processing earlier arrived before this batch's.
        fence = max(
            (
                by_index[item].submit_seq or 0
                for older in run.calls
                if older.key == call.key and older.start_time < call.start_time
                for item in older.inputs
            ),
            default=-1,
        )
        maybe_in = [
            c
            for c in by_key[call.key]
            if withdrawn_before(c, call.start_time)
            and (c.submit_seq is None or fence < c.submit_seq < call.start_seq)
        ]
        # The batch may have been full: ready at once (Size; Duration with PROCESS).
        maybe_full = len(call.inputs) + len(maybe_in) >= sc.limits.max_batch_size
        if isinstance(policy, tb.Size):
            assert maybe_full, (
                f"Size started a batch of {len(call.inputs)} before the drain "
                f"(and at most {len(maybe_in)} withdrawn items were in it)"
            )
        elif not maybe_full or policy.on_full is tb.OnFull.REJECT:
            # The timer starts when the batch's first item joins (at its submit, or
            # later if it waited for room).
            first = min(c.submit_time or 0.0 for c in [by_index[call.inputs[0]], *maybe_in])
            earliest = first + policy.delay_seconds
            if policy.deadline_margin is not None:
                # Deadline awareness: a caller with a deadline in the batch (the timer
                # only moves earlier, even if it withdrew) may have moved its timer
                # to deadline - margin - the average batch time, which is at most one
                # batch's acquire + process time.
                batch_time = sc.batch_time
                for caller in [*(by_index[item] for item in call.inputs), *maybe_in]:
                    if caller.deadline != math.inf:
                        earliest = min(
                            earliest, caller.deadline - policy.deadline_margin - batch_time
                        )
            assert call.start_time >= earliest - EPS, (
                f"{policy} processed {list(call.inputs)} at t={call.start_time}, "
                f"first item arrived at t={first}, earliest start t={earliest}"
            )


def check_deadline_awareness(run: Run, processed_in: dict[int, ProcessCall]) -> None:
    """Deadline-aware Duration starts a batch in time for its callers' deadlines.

    A caller with deadline ``d`` moved its batch's timer to at most ``d - margin``.
    If at that instant it was the oldest item of its key still waiting (so its batch
    was the oldest, and in the queue even with Overflow.WAIT) and a slot was free,
    its batch started then: it cannot have timed out with its item unprocessed.
    Checked without acquire (a started batch is processing) and with margin > 0
    (with 0, the start and the timeout are the same instant).
    """
    sc = run.sc
    policy = sc.policy
    if not isinstance(policy, tb.Duration) or not policy.deadline_margin or sc.use_acquire:
        return
    for caller in run.callers:
        outcome = caller.outcomes[0]
        if caller.unhashable_key or caller.deadline == math.inf or caller.submit_seq is None:
            continue
        if outcome.kind != "cancelled" or caller.index in processed_in:
            continue
        if caller.cancel_time is not None and caller.cancel_time < caller.deadline:
            continue  # cancelled by the script, not by its deadline
        due = caller.deadline - policy.deadline_margin
        assert caller.submit_time is not None
        if not caller.submit_time < due < run.body_end_time:
            continue
        older_waiting = any(
            other.key == caller.key
            and not other.unhashable_key
            and (other.submit_seq or 0) < caller.submit_seq
            and other.outcomes[0].time >= due
            and not (other.index in processed_in and processed_in[other.index].start_time < due)
            for other in run.callers
        )
        if older_waiting:
            continue
        busy = sum(
            1
            for call in run.calls
            if call.key == caller.key and call.start_time <= due < call.end_time
        )
        assert busy >= sc.limits.max_key_concurrency, (
            f"{policy}: caller {caller.index} of {caller.key!r} timed out at t={caller.deadline} "
            f"waiting, but at t={due} its batch was the oldest, with a slot free"
        )


def check(run: Run) -> None:
    sc = run.sc
    teardown_time = check_ending(run)
    assert not run.settle_failures, run.settle_failures
    assert run.stats_after == (0, 0, 0, 0), f"statistics after the block: {run.stats_after}"
    assert run.live_at_exit == 0, "a batch was still running after the block"
    assert run.acquire_enters == run.acquire_exits
    processed_in = check_calls(run)
    for caller in run.callers:
        check_caller(run, caller, processed_in, teardown_time)
        late = caller.submit_seq is not None and caller.submit_seq > run.body_end_seq
        if not late:
            # Nobody waits past the end of the block (or past a teardown).
            assert caller.outcomes[0].time <= min(run.block_exit_time, teardown_time)
    errors = [c.outcomes[0].value for c in run.callers if c.outcomes[0].kind == "error"]
    assert len({id(e) for e in errors}) == len(errors), "two callers got the same exception object"
    check_policy_timing(run, processed_in)
    check_deadline_awareness(run, processed_in)
    if teardown_time == math.inf:
        # Drain does not wait for timers: at worst every pending item is its own batch,
        # run one after the other.
        per_batch = sc.batch_time
        bound = (run.pending_at_body_end + run.live_at_body_end) * per_batch
        took = run.block_exit_time - run.body_end_time
        assert took <= bound + EPS, f"drain took {took} s, at most {bound} s expected"


# Rare at random: a caller that waited for room (Overflow.WAIT) is admitted into a
# new batch at t=1; its deadline (t=1.5, margin 0.25) must move that batch's timer
# to t=1.25, not leave it at t=2.
WAITER_WITH_DEADLINE = Scenario(
    policy=tb.Duration(1.0, on_full=tb.OnFull.REJECT, deadline_margin=0.25),
    limits=tb.Limits(
        max_batch_size=1,
        max_key_concurrency=1,
        max_batch_queue_size=1,
        overflow=tb.Overflow.WAIT,
    ),
    use_acquire=False,
    acquire_delay=0.0,
    failing_acquire_keys=frozenset(),
    process_delay=0.0,
    script=(Submit("a", None), Sleep(0.0), Submit("a", 1.5), Sleep(2.0)),
    settle_after_sleeps=False,
    final_pause=FinalPause.NONE,
    ending=Ending.DRAIN,
    drain_cancel_delay=0.0,
    late_submit=False,
)


# Every kind of misbehaving user code at least once, in batches one after another:
# outputs that are mapping-like, then a numpy array with an item failed by an
# unprintable exception, then process and acquire raising unprintable exceptions.
MISBEHAVING_USER_CODE = Scenario(
    policy=tb.Immediate(),
    limits=tb.Limits(max_batch_size=2, max_key_concurrency=1, max_batch_queue_size=1),
    use_acquire=True,
    acquire_delay=0.0,
    failing_acquire_keys=frozenset({"b"}),
    process_delay=0.5,
    script=(
        ReshapeNextBatch("a", Shape.MAPPING_LIKE),
        Submit("a", None),
        Submit("a", None),
        Sleep(1.0),
        ReshapeNextBatch("a", Shape.NUMPY),
        Submit("a", None),
        FailItem(0, unprintable=True),
        Submit("a", None),
        Sleep(1.0),
        FailNextBatch("a", unprintable=True),
        Submit("a", None),
        Submit("b", None),
        Sleep(1.0),
    ),
    settle_after_sleeps=True,
    final_pause=FinalPause.NONE,
    ending=Ending.DRAIN,
    drain_cancel_delay=0.0,
    late_submit=False,
    unprintable_acquire_error=True,
)


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(scenario=scenarios())
@example(scenario=WAITER_WITH_DEADLINE)
@example(scenario=MISBEHAVING_USER_CODE)
def test_batcher_properties(scenario: Scenario) -> None:
    """Run one scripted scenario against the real batcher and check, in every example:

    - each submit has exactly one outcome: its own output, a fitting BatchError,
      TypeError for an unhashable key, or Cancelled from its own scope;
    - process calls: 1..max_batch_size inputs, of one key, in submit order, no item
      twice, the right resource; batches of one key begin in FIFO order; started
      batches per key never exceed max_key_concurrency;
    - cancellation: a cancelled caller's item is never processed if the cancel came
      before process() began; a cancelled caller never waits past its cancel;
    - Rejected only with a full queue (weakly), and never with Overflow.WAIT;
      BatchFailed / ResourceAcquisitionFailed / ProcessorContractError only for the
      batch that failed, with its cause; ItemFailed only for the item process failed
      alone (cause: its own exception), every other caller of that call gets its output;
    - a batch's end is total: outputs readable by position (a tuple, a numpy array, a
      tensor-like) reach their callers, any other shape is ProcessorContractError for
      every caller, exceptions that cannot be printed still give the right error (and
      every error delivered can be printed), and the block does not die;
    - Overflow.WAIT: waiters are admitted first come, first served (the order checks
      above), and at settle points waiting_submits fits full queues only;
    - Size and Duration never start a batch early (deadline-aware Duration: only as
      early as a deadline in the batch allows, and in time for an oldest waiting
      caller's deadline); nothing waits that its policy would have started (at
      settle points); statistics() match the record there;
    - ending: drain gives no BatcherClosed except to late submits and does not wait
      for timers; a raised exception comes out as itself, a cancel as Cancelled;
      teardown is prompt; afterwards statistics() are zero and acquire enters == exits.
    """
    run = Run(scenario)
    trio.run(run.main, clock=trio.testing.MockClock(autojump_threshold=0))
    check(run)


# --- DataLoader conveniences (issue 15): dedupe, cache, submit_many -------------------
#
# Two properties of their own, with scripts of their own:
#
# 1. submit_many is consecutive submits: after the batcher has settled, the same
#    items go in either by one submit_many or by as many tasks that, in the next
#    scheduling round, each take the next item from a shared deque and submit it
#    (so they are submitted in item order, in one round, from different tasks,
#    whatever order Trio runs the tasks in). process calls, their times and every
#    item's outcome must be the same.
# 2. dedupe, cache and cancel_abandoned under scripted load with cancellations:
#    every caller gets the output for its own identity (or a fitting error), no
#    process call holds one identity twice, no identity of a key is in two
#    unfinished batches at once, the cache holds only outputs of batches that
#    succeeded, and nothing is left behind.


def _identity_mod_3(item: int) -> int:
    return item % 3


#: Items that process fails alone (outcome.Error), and items that fail their batch.
_ITEM_FAILS = 4
_BATCH_FAILS = 5


@dataclass
class _DLRecord:
    calls: list[tuple[str, list[int], float, float, bool]] = field(default_factory=list)
    running: dict[str, list[set[int]]] = field(default_factory=lambda: defaultdict(list))
    overlaps: list[str] = field(default_factory=list)


def _dl_process(record: _DLRecord, delay: float, identity: Any) -> Any:
    ident = (lambda x: x) if identity is None else identity

    async def process(key: str, inputs: list[int]) -> list[Any]:
        start = trio.current_time()
        idents = {ident(x) for x in inputs}
        for other in record.running[key]:
            if idents & other:
                record.overlaps.append(f"{key}: {idents & other} in two running batches")
        record.running[key].append(idents)
        ok = False
        try:
            await trio.sleep(delay)
            if _BATCH_FAILS in inputs:
                raise ValueError("batch fails")
            ok = True
            return [
                outcome.Error(KeyError(x)) if x == _ITEM_FAILS else (key, ident(x)) for x in inputs
            ]
        finally:
            record.running[key].remove(idents)
            record.calls.append((key, list(inputs), start, trio.current_time(), ok))

    return process


_dl_limits = st.builds(
    tb.Limits,
    max_batch_size=st.integers(1, 4),
    max_key_concurrency=st.integers(1, 2),
    max_batch_queue_size=st.integers(1, 3),
    overflow=st.sampled_from(list(tb.Overflow)),
    # With a bound, items cost (item % 3) + 1 (see _dl_cost): never oversize.
    max_batch_cost=st.none() | st.integers(3, 6),
)


def _dl_cost(item: int) -> int:
    return item % 3 + 1


def _summary(result: outcome.Outcome[Any]) -> Any:
    if isinstance(result, outcome.Value):
        return ("value", result.value)
    error = result.error  # type: ignore[attr-defined]
    return ("error", type(error), type(error.__cause__))


@given(
    data=st.data(),
    limits=_dl_limits,
    dedupe=st.sampled_from([False, True, _identity_mod_3]),
    before=st.lists(st.integers(0, 6), max_size=4),
    items=st.lists(st.integers(0, 6), max_size=8),
    delay=st.sampled_from([0.0, 1.0]),
)
@settings(max_examples=200 * EXAMPLE_SCALE, deadline=None)
def test_submit_many_is_consecutive_submits(
    data: st.DataObject,
    limits: tb.Limits,
    dedupe: Any,
    before: list[int],
    items: list[int],
    delay: float,
) -> None:
    policy = data.draw(policies(limits.max_batch_size, delays=st.sampled_from([0.0, 0.5])))

    async def scenario(many: bool) -> tuple[list[Any], list[Any]]:
        record = _DLRecord()
        identity = None if dedupe is False or dedupe is True else dedupe
        results: list[Any] = []
        async with trio.open_nursery() as callers:
            async with tb.open_batcher(
                _dl_process(record, delay, identity),
                policy=policy,
                limits=limits,
                dedupe=dedupe,
                cost=None if limits.max_batch_cost is None else _dl_cost,
            ) as batcher:
                # Load already in the batcher, one caller at a time.
                for item in before:
                    callers.start_soon(outcome.acapture, batcher.submit, "k", item)
                    await trio.testing.wait_all_tasks_blocked()
                # In one step: the submit_many task, or one task per item, all
                # run in the next scheduling round (outside the block, so that a
                # Size batch that never fills is flushed by the drain).
                if many:

                    async def all_at_once() -> None:
                        results.extend(await batcher.submit_many("k", items, outcomes=True))

                    callers.start_soon(all_at_once)
                else:
                    pending = deque(enumerate(items))
                    results.extend([None] * len(items))

                    async def one() -> None:
                        index, item = pending.popleft()
                        results[index] = await outcome.acapture(batcher.submit, "k", item)

                    for _ in items:
                        callers.start_soon(one)
                await trio.testing.wait_all_tasks_blocked()
        # Batches that end in the same instant may end in any order (their
        # runners are woken together): compare the calls as a sorted list.
        calls = sorted((start, end, inputs) for _, inputs, start, end, _ in record.calls)
        return calls, [_summary(r) for r in results]

    many = trio.run(scenario, True, clock=trio.testing.MockClock(autojump_threshold=0))
    single = trio.run(scenario, False, clock=trio.testing.MockClock(autojump_threshold=0))
    assert many == single


@dataclass(frozen=True)
class _DLOp:
    #: "submit" (one caller), "many" (one submit_many) or "sleep".
    kind: str
    key: str = "a"
    items: tuple[int, ...] = ()
    #: Seconds until the caller is cancelled (None: never).
    cancel_after: float | None = None
    seconds: float = 0.0


_dl_ops = st.one_of(
    st.builds(
        _DLOp,
        kind=st.just("submit"),
        key=st.sampled_from(KEYS),
        items=st.tuples(st.integers(0, 6)),
        cancel_after=st.none() | st.sampled_from([0.0, 0.5, 1.5]),
    ),
    st.builds(
        _DLOp,
        kind=st.just("many"),
        key=st.sampled_from(KEYS),
        items=st.lists(st.integers(0, 6), max_size=5).map(tuple),
        cancel_after=st.none() | st.sampled_from([0.0, 0.5, 1.5]),
    ),
    st.builds(_DLOp, kind=st.just("sleep"), seconds=st.sampled_from([0.0, 0.5, 1.0])),
)


@given(
    data=st.data(),
    limits=_dl_limits,
    dedupe=st.sampled_from([False, True, _identity_mod_3]),
    use_cache=st.booleans(),
    cancel_abandoned=st.booleans(),
    script=st.lists(_dl_ops, max_size=12),
)
@settings(max_examples=300 * EXAMPLE_SCALE, deadline=None)
def test_dedupe_cache_and_cancel_abandoned_under_load(
    data: st.DataObject,
    limits: tb.Limits,
    dedupe: Any,
    use_cache: bool,
    cancel_abandoned: bool,
    script: list[_DLOp],
) -> None:
    policy = data.draw(policies(limits.max_batch_size, delays=st.sampled_from([0.0, 1.0])))
    identity = _identity_mod_3 if dedupe is _identity_mod_3 else (lambda x: x)
    record = _DLRecord()
    cache: dict[Any, Any] | None = {} if use_cache else None
    # (key, item, outcome or None if cancelled, cancelled)
    settled: list[tuple[str, int, Any]] = []
    cache_seen: list[dict[Any, Any]] = []

    async def caller(batcher: Batcher, op: _DLOp) -> None:
        with trio.CancelScope() as scope:
            if op.cancel_after is not None:
                scope.deadline = trio.current_time() + op.cancel_after
            if op.kind == "submit":
                single = await outcome.acapture(batcher.submit, op.key, op.items[0])
                if isinstance(single, outcome.Error) and isinstance(single.error, trio.Cancelled):
                    single.unwrap()  # to the scope
                settled.append((op.key, op.items[0], single))
                return
            results = await batcher.submit_many(op.key, op.items, outcomes=True)
            assert len(results) == len(op.items)
            for item, result in zip(op.items, results, strict=True):
                settled.append((op.key, item, result))
        if scope.cancelled_caught:
            for item in op.items:
                settled.append((op.key, item, None))

    async def main() -> None:
        async with trio.open_nursery() as callers:
            async with tb.open_batcher(
                _dl_process(record, 1.0, None if dedupe in (False, True) else dedupe),
                policy=policy,
                limits=limits,
                dedupe=dedupe,
                cache=cache,
                cancel_abandoned=cancel_abandoned,
                cost=None if limits.max_batch_cost is None else _dl_cost,
            ) as batcher:
                for op in script:
                    if op.kind == "sleep":
                        await trio.sleep(op.seconds)
                    else:
                        callers.start_soon(caller, batcher, op)
                        await trio.testing.wait_all_tasks_blocked()
                    if cache is not None:
                        cache_seen.append(dict(cache))
        assert batcher.statistics() == tb.BatcherStatistics(0, 0, 0, 0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    # One outcome per item submitted.
    submitted = sum(len(op.items) if op.kind == "many" else op.kind == "submit" for op in script)
    assert len(settled) == submitted
    for key, item, result in settled:
        if result is None:
            continue
        if isinstance(result, outcome.Value):
            # Its own identity's output, whoever shared it.
            assert result.value == (key, identity(item))
            continue
        error = result.error
        assert isinstance(error, tb.ItemFailed | tb.BatchFailed | tb.Rejected), error
        if isinstance(error, tb.ItemFailed):
            assert identity(item) == identity(_ITEM_FAILS)
    if dedupe is not False:
        assert record.overlaps == []
        for _, inputs, _, _, _ in record.calls:
            idents = [identity(x) for x in inputs]
            assert len(idents) == len(set(idents)), "one identity twice in a batch"
    for _, inputs, _, _, _ in record.calls:
        assert 1 <= len(inputs) <= limits.max_batch_size
        if limits.max_batch_cost is not None:
            # A shared input costs once.
            assert sum(_dl_cost(x) for x in inputs) <= limits.max_batch_cost
    if cache is not None:
        succeeded = {
            (key, identity(x))
            for key, inputs, _, _, ok in record.calls
            if ok
            for x in inputs
            if x != _ITEM_FAILS
        }
        for snapshot in [*cache_seen, cache]:
            for (key, ident), value in snapshot.items():
                # Only successful outputs of batches that succeeded.
                assert value == (key, ident)
                assert (key, ident) in succeeded


# --------------------------------------------------------------------------------------
# Costs (issue 14): a script of its own, checked with the rules that costs add.
#
# Items carry drawn costs (integers, floats, 0, oversize ones), and some cost
# functions raise or return what is not a cost; max_batch_cost, oversize and
# overflow are drawn. Checked in every example: every process call is within the
# bound or is one oversize item with Oversize.ALONE; within a key, items are
# processed in submit order; each submit has exactly one outcome, its own; cost()
# is called exactly once per submit; a raising cost gives its caller that very
# exception and an invalid one TypeError/ValueError naming the batcher and the
# value, and neither touches any other caller; oversize with REJECT is Rejected;
# at settle points queued_cost is the total cost of the queued items.


class CostBoom(Exception):
    """What a cost function raises for an item marked to raise."""


#: Cost specs: a cost, or "raise", or a value that is not a cost.
COST_VALUES: list[object] = [0, 0.5, 1, 2, 2.5, 3, 4, 7, 12, 0.1, 0.2]
BAD_COSTS: list[object] = ["raise", -1, math.nan, math.inf, True, "3", None]


@dataclass(frozen=True)
class CostSubmit:
    key: str
    cost: object
    timeout: float | None


@dataclass(frozen=True)
class CostBurst:
    """Callers of ``key`` with these costs, spawned at once (fills queues)."""

    key: str
    costs: tuple[object, ...]


@dataclass(frozen=True)
class CostScenario:
    policy: tb.Policy
    limits: tb.Limits
    process_delay: float
    script: tuple[CostSubmit | CostBurst | Sleep | CancelCaller | Settle, ...]


cost_submits = st.builds(
    CostSubmit,
    key=keys,
    cost=st.one_of(
        st.sampled_from(COST_VALUES), st.sampled_from(COST_VALUES), st.sampled_from(BAD_COSTS)
    ),
    timeout=st.sampled_from([None, None, None, 0.0, 0.5, 1.0]),
)
COST_SCRIPTS = st.lists(
    st.one_of(
        cost_submits,
        cost_submits,
        cost_submits,
        st.builds(
            CostBurst,
            key=keys,
            costs=st.lists(st.sampled_from(COST_VALUES), min_size=2, max_size=6).map(tuple),
        ),
        sleeps,
        st.builds(CancelCaller, index=st.integers(0, 40)),
        st.just(Settle()),
    ),
    min_size=4,
    max_size=40,
)


@st.composite
def cost_scenarios(draw: st.DrawFn) -> CostScenario:
    limits = tb.Limits(
        max_batch_size=draw(MAX_BATCH_SIZES),
        max_key_concurrency=draw(st.integers(1, 3)),
        max_batch_queue_size=draw(st.integers(1, 4)),
        overflow=draw(st.sampled_from(tb.Overflow)),
        max_batch_cost=draw(st.sampled_from([None, 0.3, 1, 2.5, 4, 10])),
        oversize=draw(st.sampled_from(tb.Oversize)),
    )
    return CostScenario(
        policy=draw(POLICIES[limits.max_batch_size]),
        limits=limits,
        process_delay=draw(st.sampled_from([0.0, 0.25, 1.0])),
        script=tuple(draw(COST_SCRIPTS)),
    )


@dataclass
class CostCaller:
    index: int
    key: str
    cost: object
    scope: trio.CancelScope
    submit_seq: int = -1
    cancel_seq: int | None = None
    cost_calls: int = 0
    raised: CostBoom | None = None
    outcomes: list[tuple[str, object, int]] = field(default_factory=list)


class CostRun:
    def __init__(self, scenario: CostScenario) -> None:
        self.sc = scenario
        self._seq = itertools.count()
        self.callers: list[CostCaller] = []
        # (key, inputs, seq when process began)
        self.calls: list[tuple[str, tuple[int, ...], int]] = []
        self.settle_failures: list[str] = []
        self.stats_after: tb.BatcherStatistics | None = None

    def cost(self, item: int) -> Any:
        caller = self.callers[item]
        caller.cost_calls += 1
        if caller.cost == "raise":
            caller.raised = CostBoom(item)
            raise caller.raised
        return caller.cost

    async def process(self, key: str, inputs: list[int]) -> list[Output]:
        self.calls.append((key, tuple(inputs), next(self._seq)))
        await trio.sleep(self.sc.process_delay)
        return [(key, item) for item in inputs]

    async def call_submit(self, batcher: Batcher, caller: CostCaller) -> None:
        with caller.scope:
            caller.submit_seq = next(self._seq)
            try:
                output = await batcher.submit(caller.key, caller.index)
            except trio.Cancelled:
                caller.outcomes.append(("cancelled", None, next(self._seq)))
                raise
            except Exception as exc:
                caller.outcomes.append(("error", exc, next(self._seq)))
            else:
                caller.outcomes.append(("output", output, next(self._seq)))

    def check_settled(self, batcher: Batcher) -> None:
        stats = batcher.statistics()
        if stats.waiting_submits:
            return  # which pending callers are queued is not known then
        processed = {item for _, inputs, _ in self.calls for item in inputs}
        queued = [
            c
            for c in self.callers
            if c.submit_seq >= 0 and not c.outcomes and c.index not in processed
        ]
        expected = sum(cast(float, c.cost) for c in queued)
        if stats.queued_items != len(queued) or not math.isclose(
            stats.queued_cost, expected, abs_tol=1e-9
        ):
            self.settle_failures.append(
                f"statistics {stats}: expected {len(queued)} items of cost {expected} queued"
            )

    async def main(self) -> None:
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                async with tb.open_batcher(
                    self.process,
                    policy=self.sc.policy,
                    limits=self.sc.limits,
                    name="cost-property",
                    cost=self.cost,
                ) as batcher:
                    for op in self.sc.script:
                        match op:
                            case CostSubmit(key, cost, timeout):
                                deadline = math.inf if timeout is None else trio.current_time()
                                scope = trio.CancelScope(
                                    deadline=deadline if timeout is None else deadline + timeout
                                )
                                caller = CostCaller(len(self.callers), key, cost, scope)
                                self.callers.append(caller)
                                nursery.start_soon(self.call_submit, batcher, caller)
                            case CostBurst(key, costs):
                                for cost in costs:
                                    caller = CostCaller(
                                        len(self.callers), key, cost, trio.CancelScope()
                                    )
                                    self.callers.append(caller)
                                    nursery.start_soon(self.call_submit, batcher, caller)
                            case Sleep(seconds):
                                await trio.sleep(seconds)
                            case CancelCaller(index):
                                if self.callers:
                                    caller = self.callers[index % len(self.callers)]
                                    if caller.cancel_seq is None:
                                        caller.cancel_seq = next(self._seq)
                                    caller.scope.cancel()
                            case Settle():
                                await trio.testing.wait_all_tasks_blocked()
                                self.check_settled(batcher)
                    # Every caller submits before the body ends (no BatcherClosed).
                    await trio.testing.wait_all_tasks_blocked()
                self.stats_after = batcher.statistics()


def check_costs(run: CostRun) -> None:
    limits = run.sc.limits
    bound = limits.max_batch_cost
    assert not run.settle_failures, run.settle_failures
    assert run.stats_after == tb.BatcherStatistics(0, 0, 0, 0, 0)
    by_index = {c.index: c for c in run.callers}
    processed_in: dict[int, tuple[str, tuple[int, ...], int]] = {}
    for process_call in run.calls:
        key, inputs, _ = process_call
        assert 1 <= len(inputs) <= limits.max_batch_size
        costs = [cast(float, by_index[item].cost) for item in inputs]
        total = sum(costs)
        if bound is not None and total > bound + 1e-9:
            assert limits.oversize is tb.Oversize.ALONE, f"batch {inputs} of cost {total}"
            assert len(inputs) == 1, f"batch {inputs} of cost {total} > {bound}, not alone"
            assert costs[0] > bound
        for item in inputs:
            assert item not in processed_in, f"item {item} processed twice"
            assert by_index[item].key == key
            processed_in[item] = process_call
    # FIFO within a key: processed in submit order.
    for key in KEYS:
        order = [item for k, inputs, _ in run.calls if k == key for item in inputs]
        seqs = [by_index[item].submit_seq for item in order]
        assert seqs == sorted(seqs), f"key {key!r}: processed out of submit order: {order}"
    for caller in run.callers:
        assert len(caller.outcomes) == 1, f"caller {caller.index}: {caller.outcomes}"
        kind, value, _ = caller.outcomes[0]
        what = f"caller {caller.index} (cost {caller.cost!r}) got {value!r}"
        call = processed_in.get(caller.index)
        if kind == "cancelled":
            assert caller.scope.cancelled_caught, what
            # Exactly once if it reached cost(); not at all if cancelled before.
            assert caller.cost_calls <= 1, what
            if call is not None and caller.cancel_seq is not None:
                assert caller.cancel_seq > call[2], f"{what}: processed after its cancel"
            continue
        assert caller.cost_calls == 1, f"{what}: cost() called {caller.cost_calls} times"
        cost = caller.cost
        if cost == "raise":
            assert value is caller.raised, f"{what}: not the cost function's own exception"
            assert call is None, what
            continue
        if type(cost) is not int and type(cost) is not float:
            expected: type[Exception] | None = TypeError  # bool, str, None
        elif not 0 <= cost < math.inf:
            expected = ValueError  # negative, NaN, infinite
        else:
            expected = None
        if expected is not None:
            assert type(value) is expected, what
            assert "cost-property" in str(value), what
            assert call is None, what
            continue
        assert isinstance(cost, int | float)
        oversize = bound is not None and cost > bound
        if kind == "output":
            assert value == (caller.key, caller.index), what
            assert call is not None, what
            continue
        assert isinstance(value, tb.Rejected), what
        assert call is None, what
        if oversize and limits.oversize is tb.Oversize.REJECT:
            assert "more than max_batch_cost" in str(value), what
        else:
            assert limits.overflow is tb.Overflow.REJECT, f"{what}: rejected with Overflow.WAIT"


@settings(max_examples=max(200, MAX_EXAMPLES // 5), deadline=None)
@given(scenario=cost_scenarios())
def test_batcher_properties_with_costs(scenario: CostScenario) -> None:
    run = CostRun(scenario)
    trio.run(run.main, clock=trio.testing.MockClock(autojump_threshold=0))
    check_costs(run)
