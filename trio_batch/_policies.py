"""Batching policies and limits: immutable values, and the pure decisions they make.

A policy answers one question, "may the oldest batch of this key that has not
started, start now?", from facts about that batch and its key. Nothing here reads
a clock, touches Trio or owns state: the key's queue (``_key_state``) asks, the
batcher (``_batcher``) acts. That split is what lets the property tests drive every
policy through millions of interleavings without an event loop.

The question is only ever asked about the *oldest* batch that has not started,
and a slot must be free before it is asked: batches of one key start in FIFO order,
so a policy can never let a younger batch jump the queue. The answer may depend on
why it is asked (``after_finish``): ``Immediate`` and ``Balanced`` start the next
batch whatever its size when a slot frees, ``Size`` and ``Duration`` never do.

Readiness that comes from an event is remembered: a batch that *became* full is
ready even if a caller withdraws from it later, and a batch whose timer expired
stays expired. Without that, a batch emptied a little by cancellations could sit
in front of full batches until shutdown.

"Full" has one meaning for every policy, kept by the key's queue: the batch
holds ``max_batch_size`` items, or (with a cost function) its cost equals
``max_batch_cost``, or an arriving item did not fit by cost and went on to open
a new batch or to wait for room (``_key_state`` says why that item closes it).

Rejected alternative: policies as open-ended strategy objects with ``on_add`` /
``on_finish`` callbacks returning actions (batch-aint-one's shape). With FIFO starts
and a free slot as preconditions, the only thing left to decide is a yes/no about
one batch, so one predicate per policy is the whole decision surface and each
predicate is a line of boolean logic that the tests can state exactly.

To change a policy or limits, build a new value: ``attrs.evolve(policy,
delay_seconds=0.02)`` copies and re-validates.
"""

from __future__ import annotations

import enum
import math
from typing import Any, ClassVar, Protocol, TypeAlias, final

import attrs

__all__ = [
    "Adaptive",
    "Balanced",
    "Duration",
    "Immediate",
    "Limits",
    "OnFull",
    "Overflow",
    "Oversize",
    "Policy",
    "Size",
    "StartReason",
]


class BatchFacts(Protocol):
    """What a policy may know about a batch that has not started."""

    @property
    def size(self) -> int:
        """Items currently in the batch (withdrawn items excluded)."""

    @property
    def filled(self) -> bool:
        """The batch has been full at some point.

        Full means: ``max_batch_size`` items, or a cost equal to
        ``max_batch_cost``, or an arriving item did not fit by cost and went on
        to open a new batch or to wait for room (it closed this one), or it is
        an oversize item's batch of its own (``Oversize.ALONE``).
        """

    @property
    def expired(self) -> bool:
        """The batch's ``Duration`` timer has expired."""

    @property
    def early(self) -> bool:
        """A caller's deadline moved the batch's timer earlier than its delay."""

    @property
    def reason(self) -> StartReason | None:
        """``Adaptive``: why its decision made the batch ready (None: it did not)."""


def _check_int_at_least_1(_inst: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value!r}")


def _resolve_queue_size(value: int | None, self: Any) -> int:
    # Resolved at construction, so the value you read is the value in force.
    return 2 * self.max_key_concurrency if value is None else value


def _check_max_cost(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be None or a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


class Oversize(enum.Enum):
    """What happens to an item whose own cost exceeds ``Limits.max_batch_cost``."""

    #: :meth:`~trio_batch.Batcher.submit` raises :exc:`~trio_batch.Rejected` at
    #: once, naming the cost and the limit; nothing is queued (the default).
    REJECT = "reject"
    #: The item gets a new batch of its own, which no other item joins (it
    #: counts as full), subject to ``max_batch_queue_size`` like any new batch.
    ALONE = "alone"


class Overflow(enum.Enum):
    """What :meth:`~trio_batch.Batcher.submit` does when its key has no room."""

    #: Raise :exc:`~trio_batch.Rejected` at once; nothing is queued (the default).
    REJECT = "reject"
    #: Wait until the key's queue has room, then join it. Waiters of one key are
    #: admitted first come, first served, ahead of later arrivals. Waiting is
    #: cancellable and leaves no trace; on drain, waiters are admitted as the
    #: queue empties; if the block is torn down they get
    #: :exc:`~trio_batch.BatcherClosed`. Backpressure instead of rejection.
    WAIT = "wait"


@final
@attrs.frozen(kw_only=True)
class Limits:
    """Bounds that hold for every key of a batcher, whatever the policy.

    Args:
        max_batch_size: the most items one ``process`` call receives.
        max_key_concurrency: the most batches of one key that are *started*
            (acquiring a resource or processing) at once.
        max_batch_queue_size: the most batches of one key that have not begun
            processing (waiting to start, or started and still acquiring). An item
            that would need one more batch is :exc:`~trio_batch.Rejected`.
            Defaults to ``2 * max_key_concurrency``, resolved at construction, so
            ``Limits().max_batch_queue_size == 20``.
        overflow: what happens to an item that finds no room:
            :attr:`Overflow.REJECT` (default) or :attr:`Overflow.WAIT`.
        max_batch_cost: the most total cost one ``process`` call receives, with
            ``open_batcher(cost=...)``: a finite ``int`` or ``float`` > 0, or
            ``None`` (the default) for no bound. An item joins the newest batch
            only if it fits by count *and* by cost.
        oversize: what happens to an item whose own cost exceeds
            ``max_batch_cost``: :attr:`Oversize.REJECT` (default) or
            :attr:`Oversize.ALONE`.

    Raises:
        ValueError: a count is less than 1, or ``max_batch_cost`` is not finite
            or not > 0.
        TypeError: a count is not an int, ``max_batch_cost`` is not a number
            (``bool`` is not), or an enum field has the wrong type.
    """

    max_batch_size: int = attrs.field(default=100, validator=_check_int_at_least_1)
    max_key_concurrency: int = attrs.field(default=10, validator=_check_int_at_least_1)
    max_batch_queue_size: int = attrs.field(
        default=None,
        converter=attrs.Converter(_resolve_queue_size, takes_self=True),  # type: ignore[misc]
        validator=_check_int_at_least_1,
    )
    overflow: Overflow = attrs.field(
        default=Overflow.REJECT, validator=attrs.validators.instance_of(Overflow)
    )
    max_batch_cost: int | float | None = attrs.field(default=None, validator=_check_max_cost)
    oversize: Oversize = attrs.field(
        default=Oversize.REJECT, validator=attrs.validators.instance_of(Oversize)
    )


class OnFull(enum.Enum):
    """What a :class:`Duration` batch does when it becomes full before its timer."""

    #: The full batch is ready at once; a later item opens a new batch.
    PROCESS = "process"
    #: The full batch still waits for its timer; items that arrive while the
    #: newest batch is full are :exc:`~trio_batch.Rejected` (with
    #: ``Limits(overflow=Overflow.WAIT)`` they wait for the next batch instead).
    REJECT = "reject"


@final
@attrs.frozen
class Immediate:
    """Start a batch as soon as a slot is free; lowest latency.

    An arriving item's batch starts at once if fewer than ``max_key_concurrency``
    batches of its key are started; it keeps accepting items submitted in the same
    scheduling round (and, with ``acquire``, while its resource is being acquired)
    until ``process`` is called. When a batch finishes, the oldest queued batch
    starts whatever its size. Under load, batches grow by themselves.
    """

    #: An arriving item can make its batch ready without filling it.
    _fill_only_on_arrival: ClassVar[bool] = False

    def _may_start(self, batch: BatchFacts, *, started: int, after_finish: bool) -> bool:
        return True


@final
@attrs.frozen
class Size:
    """Start a batch only when it is full; best batch utilisation.

    A batch starts when it reaches ``max_batch_size`` items and a slot is free, or
    later, when a slot frees. A partial batch waits (there is no timer) until it
    fills or the batcher drains; pair with :class:`Duration` if traffic can stop.
    """

    #: An arriving item makes its batch ready only by filling it.
    _fill_only_on_arrival: ClassVar[bool] = True

    def _may_start(self, batch: BatchFacts, *, started: int, after_finish: bool) -> bool:
        return batch.filled


def _check_delay(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _check_margin(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _check_delay(instance, attribute, value)


@final
@attrs.frozen
class Duration:
    """Start a batch when it is ``delay_seconds`` old; regular, bounded waits.

    The first item of a new batch starts the batch's timer. The timer is a
    *maximum age*, not a debounce: later items do not reset it, so a steady
    trickle of items is still flushed every ``delay_seconds``. At expiry the batch
    starts as soon as a slot is free.

    Args:
        delay_seconds: the maximum age, in seconds (>= 0; ``math.inf`` waits for
            a full batch or the end of the block).
        on_full: what a batch that fills before its timer does.
            :attr:`OnFull.PROCESS` (default): it is ready at once.
            :attr:`OnFull.REJECT`: it still waits for its timer, and items that
            arrive while the newest batch is full are rejected (or, with
            ``Overflow.WAIT``, wait for room in the next batch).
        deadline_margin: deadline awareness. When a caller's effective Trio
            deadline (:func:`trio.current_effective_deadline` at ``submit``)
            leaves too little time, its batch's timer moves earlier, to::

                deadline - deadline_margin - recent_batch_seconds

            where ``recent_batch_seconds`` is the batcher's exponential moving
            average (weight 0.2 for the newest, seeded with the first) of the
            time successful batches took from start to end, 0 until one has
            finished. So a caller's
            timeout shortens the wait instead of turning into a cancellation.
            A batch's timer only ever moves earlier (a caller that withdraws
            does not move it back); a time already past starts the batch at
            once. ``None`` (the default) ignores callers' deadlines, so the
            timer is exactly ``delay_seconds``; ``0`` relies on the measured
            batch duration alone. Opt-in, because it starts batches earlier
            than the timer for callers with deadlines.

    Raises:
        ValueError: ``delay_seconds`` or ``deadline_margin`` is negative or NaN.
    """

    delay_seconds: float = attrs.field(validator=_check_delay)
    on_full: OnFull = attrs.field(
        default=OnFull.PROCESS, validator=attrs.validators.instance_of(OnFull)
    )
    deadline_margin: float | None = attrs.field(default=None, validator=_check_margin, kw_only=True)

    #: An arriving item makes its batch ready only by filling it (the timer
    #: task starts expired batches).
    _fill_only_on_arrival: ClassVar[bool] = True

    def _may_start(self, batch: BatchFacts, *, started: int, after_finish: bool) -> bool:
        return batch.expired or (batch.filled and self.on_full is OnFull.PROCESS)


@final
@attrs.frozen
class Balanced:
    """Start at once when the key is idle, otherwise wait for ``min_size_hint`` items.

    If no batch of the key is started, an arriving item's batch starts now (like
    :class:`Immediate`). Otherwise its batch starts once it holds
    ``min_size_hint`` items and a slot is free. When a batch finishes, the oldest
    queued batch starts whatever its size. Cheap when quiet, efficient under load.

    Args:
        min_size_hint: items a batch should gather while others of its key run
            (>= 1, and no more than ``Limits.max_batch_size``, which
            :func:`~trio_batch.open_batcher` checks).

    Raises:
        ValueError: ``min_size_hint`` is less than 1.
    """

    min_size_hint: int = attrs.field(validator=_check_int_at_least_1)

    #: An arriving item can make its batch ready without filling it.
    _fill_only_on_arrival: ClassVar[bool] = False

    def _may_start(self, batch: BatchFacts, *, started: int, after_finish: bool) -> bool:
        return after_finish or started == 0 or batch.size >= self.min_size_hint


def _check_target(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be None or a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be None or finite and > 0, got {value!r}")


@final
@attrs.frozen
class Adaptive:
    """Learn per key how long batches take and how fast items come; start when it pays.

    Nothing to tune by hand. Per key, it fits how long a batch holds its slot
    as ``a + b * n`` for ``n`` items (robust to outliers, and following a
    processing time that changes), and how many items arrive per second; with
    ``open_batcher(cost=...)``, ``n`` is the batch's total cost and the rate is
    cost per second. When
    a slot is free, the oldest waiting batch starts now, unless it would take
    the key's last free slot and holding it a little longer is expected to
    lower the items' total wait (the items that arrive meanwhile ride along
    instead of waiting for a slot); then it starts at the computed time, from
    a timer. Until a key has timed two batches it behaves like
    :class:`Immediate`. When a batch finishes, the oldest waiting batch is
    decided by the same rule. A full batch starts at once.

    A batch never starts later than its callers' tightest effective Trio
    deadline minus its expected processing time, nor, with
    ``target_latency``, later than its oldest item's arrival plus
    ``target_latency`` minus its expected processing time. What a key has
    learned is forgotten with the key (when it has nothing queued or
    started); :meth:`Batcher.estimates <trio_batch.Batcher.estimates>` shows it.

    Args:
        target_latency: optional bound, in seconds (finite, > 0), on each
            batch's expected latency: the oldest item's wait plus the expected
            processing time.

    Raises:
        ValueError: ``target_latency`` is not finite or not > 0.
        TypeError: ``target_latency`` is not a number.
    """

    target_latency: float | None = attrs.field(default=None, validator=_check_target)

    #: An arriving item can make its batch ready without filling it.
    _fill_only_on_arrival: ClassVar[bool] = False

    def _may_start(self, batch: BatchFacts, *, started: int, after_finish: bool) -> bool:
        # Readiness from events only; the learned decision is asked by the key
        # state (``KeyLearning``), which has the estimates and the time.
        return batch.filled or batch.expired


class StartReason(enum.Enum):
    """Why a batch started (reported to observers)."""

    #: It became full (``Size``, ``Duration``): ``max_batch_size`` items, or by
    #: cost (see ``Limits.max_batch_cost``).
    FULL = "full"
    #: Its ``Duration`` timer expired.
    TIMER = "timer"
    #: A caller's deadline moved its ``Duration`` timer earlier, and that expired.
    DEADLINE = "deadline"
    #: ``Immediate``, or ``Balanced`` with no batch of the key started.
    IMMEDIATE = "immediate"
    #: ``Balanced``: it reached ``min_size_hint`` items.
    HINT = "hint"
    #: A batch of its key finished and freed a slot (``Immediate``, ``Balanced``).
    FINISH = "finish"
    #: The block exited normally: every queued batch is ready.
    DRAIN = "drain"
    #: ``Adaptive``: waiting longer was not expected to pay for the added wait.
    ESTIMATED_OPTIMUM = "estimated optimum"
    #: ``Adaptive``: later would break ``target_latency`` for its oldest item.
    LATENCY_TARGET = "latency target"
    #: ``Adaptive``: later would miss a caller's effective Trio deadline.
    CALLER_DEADLINE = "caller deadline"
    #: ``Adaptive``: a slot was free and nothing was learned yet about the key.
    NO_ESTIMATE = "slot free, no estimate"


def start_reason(
    policy: Policy, batch: BatchFacts, *, started: int, after_finish: bool
) -> StartReason:
    """Why ``batch`` is starting, given the facts the policy was asked about."""
    if isinstance(policy, Adaptive):
        if batch.reason is not None:
            return batch.reason
        return StartReason.FULL if batch.filled else StartReason.DRAIN
    if not policy._may_start(batch, started=started, after_finish=after_finish):
        return StartReason.DRAIN  # only a drain starts a batch the policy holds back
    if after_finish and isinstance(policy, Immediate | Balanced):
        return StartReason.FINISH
    if isinstance(policy, Size):
        return StartReason.FULL
    if isinstance(policy, Duration):
        if batch.expired:
            return StartReason.DEADLINE if batch.early else StartReason.TIMER
        return StartReason.FULL
    if isinstance(policy, Immediate) or started == 0:
        return StartReason.IMMEDIATE
    return StartReason.HINT


#: Any of the batching policies.
Policy: TypeAlias = Immediate | Size | Duration | Balanced | Adaptive

POLICY_TYPES = (Immediate, Size, Duration, Balanced, Adaptive)


def rejects_when_full(policy: Policy) -> bool:
    """Whether an item that finds the newest batch full is rejected outright."""
    return isinstance(policy, Duration) and policy.on_full is OnFull.REJECT


def is_oversize(cost: float, limits: Limits) -> bool:
    """Whether an item of this cost exceeds ``max_batch_cost`` on its own."""
    return limits.max_batch_cost is not None and cost > limits.max_batch_cost


def check_compatible(policy: Policy, limits: Limits) -> None:
    """Raise :exc:`ValueError` if ``policy`` cannot work within ``limits``."""
    if isinstance(policy, Balanced) and policy.min_size_hint > limits.max_batch_size:
        raise ValueError(
            f"Balanced.min_size_hint must be <= max_batch_size, "
            f"got {policy.min_size_hint} > {limits.max_batch_size}"
        )
