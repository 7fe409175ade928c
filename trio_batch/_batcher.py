"""``Batcher``: where callers park and how a batch's life goes.

The batcher ties smaller ideas together, each in a module of its own:
one key's queue and the policy's decisions (``_key_state``, ``_policies``: pure,
no Trio), the runner pool that runs started batches (``_runners``), the
``Duration`` timers (``_timers``), and the total, pure end of a batch
(``_outcomes``), and the way in and out of the block (``_open``). What stays
here is the order of events, which only the batcher knows:

* ``open_batcher`` (in ``_open``) checks its arguments, opens one nursery and
  only then builds the :class:`Batcher` inside it, so every field has its
  final value from the start. Every task the batcher runs
  (the runners, plus one timer task for :class:`~trio_batch.Duration` or
  :class:`~trio_batch.Adaptive`) lives in
  that nursery; leaving the block is the nursery's exit, so there is no worker
  to detach and no shutdown channel.
* :meth:`Batcher.submit` puts the item in its key's queue, asks the policy
  which batches may start (handing them to the runner pool), and parks the
  calling task with :func:`trio.lowlevel.wait_task_rescheduled`. A parked
  caller is one small :class:`_Waiter`: no per-item Event or channel; the batch
  reschedules each caller with its own outcome, and the waiter's ``abort``
  withdraws the item if its batch has not begun processing. Because ``abort``
  runs synchronously inside Trio's cancellation delivery, withdrawal is atomic
  with respect to processing: an item is either removed before ``process``
  sees the inputs, or it is processed and its output discarded. Never both,
  never neither.
* A runner runs a started batch (:class:`_Run`) in a fresh copy of the block's
  context: it acquires the resource (if any), takes the batch out of the
  queue (from then on no item can join or leave it), calls ``process`` and
  reads its outputs into a plain list (``_outcomes.read_outputs``), all before
  the batch ends. Then, in ``finally`` and protected from KeyboardInterrupt,
  :meth:`Batcher._finish` frees the slot, delivers every outcome, and starts
  whatever the policy now allows. Each of those steps has exactly one owner,
  here, so no counter can drift between tasks, and no user code runs between
  freeing the slot and delivering (the end of a batch is total).
* DataLoader's conveniences take a path of their own, so that ``submit``
  without them pays one truth test (``_special``): ``dedupe`` and ``cache``
  go through :meth:`Batcher._submit_special` and :meth:`Batcher._place`
  (shared input slots are the pure ``_sharing`` module), ``submit_many`` parks
  its caller once for all its items (``_many``), and ``cancel_abandoned``
  runs each started batch in a cancel scope that the last caller to give up
  cancels.
* The block's life is one :class:`_Phase`: ``OPEN`` → ``DRAINING`` (the body
  returned) or ``TORN_DOWN`` (it raised or was cancelled) → ``CLOSED`` (the
  nursery is gone; whoever is still parked gets ``BatcherClosed``).

Rejected alternatives: a single worker task per batcher or per key (a
bottleneck, and a place for cancellations to jam, as Ray Serve found); a task
per batch (a spawn and exit per batch made many small batches cost up to 1.5
times as much per item as a hand-written batcher); memory channels to carry
items (a closed channel silently drops what it buffers, and the order in which
woken tasks run is not FIFO, so order and ownership must come from our own
queue anyway); a closure per parked caller for its ``abort`` (a function and a
cell per captured name, for every item, all tracked by the garbage collector).
"""

from __future__ import annotations

import contextvars
import enum
import inspect
import logging
import math
import numbers
import reprlib
import threading
from collections.abc import (
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    MutableMapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from functools import partial
from types import CoroutineType
from typing import Any, Generic, Literal, NoReturn, TypeVar, cast, final, overload

import attrs
import outcome
import trio

from ._adaptive import AdaptiveEstimates, KeyLearning
from ._errors import (
    BatcherClosed,
    BatchError,
    BatchFailed,
    ProcessorContractError,
    Rejected,
    ResourceAcquisitionFailed,
)
from ._key_state import STARTING, WAITING, Batch, KeyState
from ._many import Group
from ._observe import (
    BatchFinished,
    BatchOutcome,
    BatchStarted,
    CacheHit,
    Dispatch,
    ItemAccepted,
    ItemRejected,
    ItemWithdrawn,
    logger,
    new_id,
)
from ._outcomes import (
    ContractViolation,
    Failure,
    contract_failure,
    deliver,
    describe,
    read_outputs,
    safe_repr,
)
from ._policies import (
    Adaptive,
    Duration,
    Limits,
    Overflow,
    Oversize,
    Policy,
    StartReason,
    is_oversize,
    start_reason,
)
from ._runners import RunnerPool
from ._sharing import SharingKeyState, Slot, forget_slots, identity_of, members, spread
from ._statistics import BatcherStatistics
from ._timers import Timers

__all__ = ["Batcher"]

K = TypeVar("K")
I = TypeVar("I")  # noqa: E741 - conventional name for the input type
O = TypeVar("O")  # noqa: E741 - conventional name for the output type
R = TypeVar("R")
T = TypeVar("T")

_Task = trio.lowlevel.Task
_get_ident = threading.get_ident
# Looked up once: the hot path of submit and of every batch uses them.
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_current_task = trio.lowlevel.current_task
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_key_repr = reprlib.Repr()
_key_repr.maxstring = 40
_key_repr.maxother = 40

#: Weight of the newest batch in the moving average of batch durations.
_EWMA_WEIGHT = 0.2


class _Phase(enum.Enum):
    """Where the block is in its life; it only moves along ``_NEXT_PHASES``."""

    #: Inside the block: submits are accepted.
    OPEN = "open"
    #: The body returned: no new submits, every queued batch is ready.
    DRAINING = "draining"
    #: The body raised or was cancelled: batch tasks are being cancelled.
    TORN_DOWN = "torn down"
    #: The nursery is gone; nothing runs any more.
    CLOSED = "closed"


#: The phase the hot path checks, as a module global (one lookup, not two).
_OPEN = _Phase.OPEN

_NEXT_PHASES = {
    _Phase.OPEN: (_Phase.DRAINING, _Phase.TORN_DOWN, _Phase.CLOSED),
    _Phase.DRAINING: (_Phase.TORN_DOWN, _Phase.CLOSED),
    _Phase.TORN_DOWN: (_Phase.CLOSED,),
    _Phase.CLOSED: (),
}


@final
@attrs.frozen
class _Options:
    """The arguments of :func:`open_batcher`, checked, on their way to the batcher."""

    process: Callable[..., Awaitable[Sequence[Any]]]
    acquire: Callable[[Any], AbstractAsyncContextManager[Any]] | None
    policy: Policy
    limits: Limits
    name: str
    #: None when unobserved.
    dispatch: Dispatch | None
    #: None without a cost function.
    cost: Callable[[Any], float] | None
    #: DataLoader's conveniences (issue 15).
    dedupe: bool | Callable[[Any], Hashable] = False
    cache: MutableMapping[Any, Any] | None = None
    cancel_abandoned: bool = False


class _NoPublicConstructor(type):
    """Metaclass: ``Batcher(...)`` is a TypeError; only ``open_batcher`` builds one."""

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; "
            "use 'async with trio_batch.open_batcher(process, ...) as batcher:'"
        )

    def _create(cls: type[T], *args: object, **kwargs: object) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


class _Waiter:
    """A caller parked in :meth:`Batcher.submit`, owed exactly one outcome.

    ``task`` becomes ``None`` when the caller gives up after its batch began
    processing (its output is then discarded). ``abort`` is the caller's
    ``abort_fn``: a bound method, so a parked caller costs one object, not a
    closure and its cells.
    """

    # ``slot`` is only set by batchers that deduplicate (the slot it shares).
    __slots__ = ("accepted_at", "batch", "batcher", "item_id", "key", "slot", "state", "task")

    slot: Slot[_Waiter]

    def __init__(
        self,
        batcher: Batcher[Any, Any, Any],
        task: _Task | None,
        key: Any,
        state: KeyState[Any, Any],
    ) -> None:
        self.batcher = batcher
        self.task: _Task | None = task
        self.key = key
        self.state = state
        self.batch: Batch[Any, Any] | None = None
        # Observed batchers only: the id and acceptance time observers see.
        self.item_id = -1
        self.accepted_at = 0.0

    def abort(self, _: object) -> trio.lowlevel.Abort:
        self.batcher._withdraw(self)
        return trio.lowlevel.Abort.SUCCEEDED


@final
class _RoomWaiter(_Waiter):
    """A caller waiting for room in its key's queue (``Overflow.WAIT``)."""

    __slots__ = ("context", "deadline")

    def __init__(
        self,
        batcher: Batcher[Any, Any, Any],
        task: _Task,
        key: Any,
        state: KeyState[Any, Any],
        deadline: float,
        context: contextvars.Context | None,
    ) -> None:
        super().__init__(batcher, task, key, state)
        # Deadline awareness: when its batch must start for it.
        self.deadline = deadline
        # Observed batchers: the caller's context, for its item_accepted event.
        self.context = context


@final
class _GroupItem(_Waiter):
    """One item of a :meth:`Batcher.submit_many` call (see ``_many``).

    Its ``task`` is always ``None``: the batch's delivery skips it, and the
    batcher settles it into its :class:`~trio_batch._many.Group` instead. It
    may wait for room like a :class:`_RoomWaiter`, with the same two fields.
    """

    __slots__ = ("context", "deadline", "group", "index")

    def __init__(
        self,
        batcher: Batcher[Any, Any, Any],
        key: Any,
        state: KeyState[Any, Any],
        group: Group,
        index: int,
    ) -> None:
        # As _Waiter.__init__ (not called: this runs once per item).
        self.batcher = batcher
        self.task = None
        self.key = key
        self.state = state
        self.batch = None
        self.item_id = -1
        self.accepted_at = 0.0
        self.group = group
        self.index = index
        self.deadline = math.inf
        self.context: contextvars.Context | None = None


@final
class _Run:
    """A started batch on its way through a runner: what only the batcher needs.

    The queue facts stay in the :class:`~trio_batch._key_state.Batch`; the
    observation facts (batch id, reason, times) and the batch's moving parts
    live here, for as long as the batch runs.
    """

    __slots__ = (
        "batch",
        "batcher",
        "ident",
        "key",
        "processing_at",
        "reason",
        "started_at",
        "state",
        "weight",
    )

    def __init__(
        self,
        batcher: Batcher[Any, Any, Any],
        key: Any,
        state: KeyState[Any, Any],
        batch: Batch[Any, Any],
    ) -> None:
        self.batcher = batcher
        self.key = key
        self.state = state
        self.batch = batch
        self.ident = -1
        self.reason: StartReason | None = None
        self.started_at = 0.0
        self.processing_at: float | None = None
        #: Items the batch had when it ended (what its runner's step budget counts).
        self.weight = 0

    async def run(self) -> None:
        """Acquire, process and read the outputs of the batch; always end it.

        A method of the run, not of the batcher: the runner creates this
        coroutine directly, with no call in between.
        """
        batcher = self.batcher
        result: list[Any] | Failure | None = None
        # Left by an exception (teardown's Cancelled, or a BaseException from user
        # code): the block is going away, so this task starts nothing new.
        unwinding = True
        began = trio.current_time() if batcher._deadline_margin is not None else 0.0
        if batcher._dispatch is not None:
            batcher._observe_start(self)
        try:
            # A batch started while the block is being cancelled must not begin.
            await _checkpoint_if_cancelled()
            if batcher._cancel_abandoned:
                result = await batcher._run_abandonable(self)
            elif batcher._acquire is not None:
                result = await batcher._acquire_and_process(self)
            elif batcher._begin_processing(self):
                try:
                    result = await batcher._call_process(self, ())
                except Exception as exc:
                    result = batcher._failed(BatchFailed, self, exc)
            unwinding = False
        except BaseExceptionGroup as group:
            _raise_cancellation_of(group, batcher._where(self))
        finally:
            batcher._finish(self, result, unwinding, began)


@final
class Batcher(Generic[K, I, O], metaclass=_NoPublicConstructor):
    """Collects concurrent :meth:`submit` calls per key into batched ``process`` calls.

    Only :func:`open_batcher` creates a batcher (constructing one directly is a
    :exc:`TypeError`); it is usable inside that ``async with`` block, from the
    Trio run that opened it. Share it freely between tasks of the block.
    """

    __slots__ = (
        "__weakref__",
        "_abandonable",
        "_acquire",
        "_acquiring",
        "_adaptive",
        "_batch_seconds",
        "_cache",
        "_cancel_abandoned",
        "_context",
        "_cost",
        "_deadline_margin",
        "_dispatch",
        "_grouped",
        "_identity",
        "_keys",
        "_limits",
        "_name",
        "_nursery",
        "_phase",
        "_policy",
        "_process",
        "_root",
        "_runners",
        "_sharing",
        "_special",
        "_thread",
        "_timers",
        "_wait_for_room",
    )

    def __init__(self, options: _Options, nursery: trio.Nursery) -> None:
        # The options, copied into slots of their own: the hot path reads them.
        self._process = options.process
        self._acquire = options.acquire
        # None without a cost function: submit then never looks at costs.
        self._cost = options.cost
        self._policy = policy = options.policy
        self._limits = limits = options.limits
        self._name = name = options.name
        # None when unobserved: the hot path tests this one attribute.
        self._dispatch = options.dispatch
        self._phase = _Phase.OPEN
        # The run that opened the block: submit from any other is refused. The
        # hot path compares threads (a C call); another run in this thread can
        # only come after this one ended, when the block is closed, and that
        # path compares the runs themselves.
        self._root = trio.lowlevel.current_root_task()
        self._thread = _get_ident()
        # Key -> its queue. Invariant: no idle KeyState is ever stored here.
        self._keys: dict[K, KeyState[I, Any]] = {}
        self._nursery = nursery
        # Batches run in copies of the context that entered the block, never in
        # the context of whichever caller started them.
        self._context = contextvars.copy_context()
        self._runners = RunnerPool(nursery, self._context, f"trio_batch runner of {name!r}")
        self._wait_for_room = limits.overflow is Overflow.WAIT
        # Started batches acquiring their resource: withdrawing every item
        # cancels the scope, so the acquisition stops.
        self._acquiring: dict[Batch[I, Any], trio.CancelScope] = {}
        self._deadline_margin: float | None = None
        # Deadline awareness: moving average of how long a batch takes from its
        # start to its end (None until one has finished).
        self._batch_seconds: float | None = None
        self._timers: Timers[Batch[I, Any], tuple[K, KeyState[I, Any]]] | None = None
        # Adaptive: keys learn, and a held batch starts from a timer.
        self._adaptive = isinstance(policy, Adaptive)
        if self._adaptive:
            self._timers = Timers(self._timer_expired)
        if isinstance(policy, Duration):
            self._deadline_margin = policy.deadline_margin
            if policy.delay_seconds != math.inf or policy.deadline_margin is not None:
                self._timers = Timers(self._timer_expired)
        # DataLoader's conveniences (see ``_sharing`` and ``_many``). With all of
        # them off, ``submit`` pays one truth test (``_special``).
        self._sharing = options.dedupe is not False
        # The identity function; None when an item is its own identity.
        self._identity: Callable[[Any], Hashable] | None = (
            None if isinstance(options.dedupe, bool) else options.dedupe
        )
        self._cache = options.cache
        self._special = self._sharing or options.cache is not None
        self._cancel_abandoned = options.cancel_abandoned
        # cancel_abandoned: the scope around acquiring and processing each started batch.
        self._abandonable: dict[Batch[I, Any], trio.CancelScope] = {}
        # submit_many has been called: batches may hold group items to settle.
        self._grouped = False

    # -- public ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The ``name`` given to :func:`open_batcher`."""
        return self._name

    @property
    def policy(self) -> Policy:
        """The batching policy in force."""
        return self._policy

    @property
    def limits(self) -> Limits:
        """The limits in force."""
        return self._limits

    def statistics(self) -> BatcherStatistics:
        """Return a snapshot of the batcher's state (see :class:`BatcherStatistics`)."""
        states = self._keys.values()
        return BatcherStatistics(
            active_keys=len(self._keys),
            queued_items=sum(state.queued_items() for state in states),
            processing_batches=sum(state.started for state in states),
            waiting_submits=sum(len(state.overflow) for state in states),
            queued_cost=sum(state.queued_cost() for state in states),
        )

    def estimates(self, key: K) -> AdaptiveEstimates | None:
        """What an :class:`~trio_batch.Adaptive` batcher has learned about ``key``.

        Returns ``None`` if the policy is not ``Adaptive`` or the key is not
        active (a key's estimates are forgotten with the key, when it has
        nothing queued or started).
        """
        state = self._keys.get(key)
        if state is None or state.learned is None:
            return None
        return state.learned.snapshot()

    def __repr__(self) -> str:
        phase = self._phase
        status = "closed" if phase is _Phase.TORN_DOWN else phase.value
        return (
            f"<trio_batch.Batcher {self._name!r} {status}, policy={self._policy!r}, "
            f"active_keys={len(self._keys)}>"
        )

    @trio.lowlevel.enable_ki_protection
    async def submit(self, key: K, item: I) -> O:
        """Add ``item`` to ``key``'s current batch and wait for its output.

        Items of one key are processed in arrival order: within a batch, inputs
        keep the order in which ``submit`` was called, and batches of a key start
        in FIFO order. This is always a checkpoint.

        Cancellation is exact. If the caller is cancelled before its item's batch
        has begun processing, the item is *withdrawn*: it is never passed to
        ``process`` (a batch left empty is dropped, releasing any resource).
        If it is cancelled after processing began, the batch carries on for the
        other callers, this caller's output is discarded, and it sees
        :exc:`trio.Cancelled` at once. With ``Limits(overflow=Overflow.WAIT)``, a
        caller waiting for room that is cancelled leaves no trace.

        With ``open_batcher(cost=...)``, ``cost(item)`` is called once, here, in
        the caller's task, before the item is queued; the item joins the
        newest batch of its key only if it fits by count and by cost.

        With ``open_batcher(dedupe=...)``, an item whose identity is in a batch
        of its key that has not finished shares that item's input (and its
        output, or its own instance of the same error); ``cost`` is not called
        for it. A caller sharing an input that is cancelled before processing
        leaves it to the others. With ``open_batcher(cache=...)``, an output
        cached under ``(key, identity)`` is returned without queueing.

        Returns:
            The output that ``process`` returned at this item's position (for an
            ``outcome.Value(v)`` output, ``v``).

        Raises:
            Rejected: the key's queue is full (with ``Overflow.REJECT``), or the
                item's cost alone exceeds ``max_batch_cost`` (with
                ``Oversize.REJECT``); the item was not queued.
            BatchFailed: ``process`` (or releasing the resource) raised; the
                exception is ``__cause__``.
            ItemFailed: ``process`` returned ``outcome.Error(exc)`` for this item;
                ``exc`` is ``__cause__``.
            ResourceAcquisitionFailed: entering ``acquire(key)`` raised; the
                exception is ``__cause__``.
            ProcessorContractError: ``process`` returned the wrong number of
                outputs, or something that cannot be read by position.
            BatcherClosed: the block has exited or is draining, or it was left
                by an exception or cancellation while this item waited.
            TypeError: ``key`` is not hashable, or ``cost(item)`` returned
                something that is not an ``int`` or ``float``, or (with
                ``dedupe`` or ``cache``) the item's identity is not hashable;
                the item was not queued.
            ValueError: ``cost(item)`` returned a negative, NaN or infinite
                number; the item was not queued.
            Exception: whatever ``cost(item)`` or the ``dedupe`` function
                raised, unchanged; the item was not queued.
            RuntimeError: called from a Trio run other than the one that
                opened the batcher.
        """
        await _checkpoint_if_cancelled()
        if _get_ident() != self._thread or self._phase is not _OPEN:
            await trio.lowlevel.cancel_shielded_checkpoint()  # in the caller's own run
            raise self._refusal()
        if self._special:
            return await self._submit_special(key, item)
        keys = self._keys
        try:
            state = keys.get(key)
        except TypeError:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise TypeError(
                f"key must be hashable, got {type(key).__name__} {_key_repr.repr(key)}"
            ) from None
        cost: float | None = None
        if self._cost is not None:
            try:
                cost = self._cost_of(key, item)
            except Exception:
                # Nothing was queued: cost(item)'s own error unchanged, an
                # invalid cost, or an oversize item (Oversize.REJECT).
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise
        if state is None:
            state = keys[key] = KeyState(KeyLearning() if self._adaptive else None)
        task = _current_task()
        dispatch = self._dispatch
        limits = self._limits
        # Waiters for room are ahead of this item (FIFO): it may not jump them,
        # however cheap it is.
        if state.overflow:
            batch = None
        else:
            waiter = _Waiter(self, task, key, state)
            if cost is None:
                batch = state.add(item, waiter, self._policy, limits)
            else:
                batch = state.add_costed(item, waiter, cost, self._policy, limits)
        if batch is None:
            if self._wait_for_room:
                if (
                    cost is not None
                    and state.waiting
                    and state.started < limits.max_key_concurrency
                ):
                    # Not fitting by cost, it closed the newest batch (now full).
                    self._start_batches(key, state, after_finish=False)
                return await self._wait_for_room_in(key, state, item, task, cost)
            self._forget_if_idle(key, state)
            if dispatch is not None:
                dispatch.emit("item_rejected", ItemRejected(self._name, key, trio.current_time()))
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise Rejected(
                f"batcher {self._name!r}: the queue of key {_key_repr.repr(key)} is full "
                f"(max_batch_queue_size={limits.max_batch_queue_size})"
            )
        waiter.batch = batch
        if dispatch is not None:
            waiter.item_id = new_id()
            waiter.accepted_at = now = trio.current_time()
            dispatch.emit("item_accepted", ItemAccepted(self._name, key, waiter.item_id, now))
        if self._adaptive:
            self._arrived(state, batch, trio.current_effective_deadline())
        if batch.state == WAITING:
            if self._timers is not None and not self._adaptive:
                self._set_timer(key, state, batch, self._caller_deadline())
            # Only the oldest waiting batch can start (FIFO), and only this
            # item's batch changed: if it is not the oldest, nothing can start.
            # Under Size and Duration, only an arrival that fills it can.
            if (
                cost is None
                and (batch.filled or not self._policy._fill_only_on_arrival)
                and state.started < limits.max_key_concurrency
                and state.waiting[0] is batch
            ):
                self._start_batches(key, state, after_finish=False)
        if cost is not None and state.waiting and state.started < limits.max_key_concurrency:
            # The item's batch, or the batch it closed by not fitting, may be ready.
            self._start_batches(key, state, after_finish=False)
        return await _wait_task_rescheduled(waiter.abort)  # type: ignore[no-any-return]

    async def _submit_special(self, key: K, item: I) -> O:
        """``submit`` with ``dedupe`` or ``cache``: identity, cache, then place or share."""
        try:
            state = self._keys.get(key)
        except TypeError:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise self._unhashable_key(key) from None
        try:
            identity = identity_of(self._identity, item)
        except BaseException:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        cache = self._cache
        if cache is not None:
            try:
                cached = cache.get((key, identity), _MISSING)
            except BaseException:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise
            if cached is not _MISSING:
                if self._dispatch is not None:
                    self._dispatch.emit(
                        "cache_hit", CacheHit(self._name, key, new_id(), trio.current_time())
                    )
                await trio.lowlevel.cancel_shielded_checkpoint()
                return cached  # type: ignore[no-any-return]
        if state is None:
            state = self._keys[key] = self._new_state()
        try:
            placed = self._place(
                key, state, item, identity, _Waiter(self, trio.lowlevel.current_task(), key, state)
            )
        except BaseException:
            # cost(item) failed or rejected it: nothing was queued.
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        if type(placed) is Rejected:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise placed
        assert isinstance(placed, _Waiter)
        return await trio.lowlevel.wait_task_rescheduled(placed.abort)  # type: ignore[no-any-return]

    @overload
    async def submit_many(
        self, key: K, items: Iterable[I], *, outcomes: Literal[False] = False
    ) -> list[O]: ...

    @overload
    async def submit_many(
        self, key: K, items: Iterable[I], *, outcomes: Literal[True]
    ) -> list[outcome.Outcome[O]]: ...

    @overload
    async def submit_many(
        self, key: K, items: Iterable[I], *, outcomes: bool
    ) -> list[O] | list[outcome.Outcome[O]]: ...

    @trio.lowlevel.enable_ki_protection
    async def submit_many(
        self, key: K, items: Iterable[I], *, outcomes: bool = False
    ) -> list[O] | list[outcome.Outcome[O]]:
        """Submit every item of ``items`` under ``key`` and wait for all their outputs.

        The items are placed exactly as consecutive :meth:`submit` calls made in
        one scheduling round by different tasks would place them (same batches,
        same order, same rejection or waiting rules, same deduplication and
        cache), but the caller parks once, not once per item. This is always a
        checkpoint.

        Cancellation withdraws every item whose batch has not begun processing,
        exactly as for single submits; items already processing carry on for
        whoever shares them, and their outputs are discarded.

        Args:
            key: the key of every item.
            items: the items, in the order they are submitted.
            outcomes: if true, return one :class:`outcome.Outcome` per item
                (``outcome.Value(output)`` or ``outcome.Error(exc)`` with the
                exception ``submit`` would have raised) and raise only
                :exc:`trio.Cancelled`.

        Returns:
            The outputs in item order (or their outcomes), once every item has
            its outcome.

        Raises:
            BatchError: with ``outcomes=False``, the first failure in item order
                (any exception :meth:`submit` raises, ``TypeError`` included),
                raised only after every item has settled: none is left in flight.
            RuntimeError: called from a Trio run other than the one that
                opened the batcher.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if _get_ident() != self._thread or trio.lowlevel.current_root_task() is not self._root:
            await trio.lowlevel.cancel_shielded_checkpoint()  # in the caller's own run
            raise self._refusal()
        try:
            items = list(items)
        except BaseException:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        group = Group(len(items))
        self._grouped = True
        waiters: list[_GroupItem] = []
        if self._phase is not _Phase.OPEN:
            for index in range(len(items)):
                group.fail(index, BatcherClosed(f"batcher {self._name!r} is closed"))
        else:
            try:
                self._keys.get(key)
            except TypeError:
                for index in range(len(items)):
                    group.fail(index, self._unhashable_key(key))
            else:
                for index, item in enumerate(items):
                    self._place_grouped(key, item, group, index, waiters)
        if group.pending:
            group.task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(partial(self._withdraw_many, group, waiters))
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        if outcomes:
            return group.outcomes()
        return group.outputs()

    def _place_grouped(
        self, key: K, item: I, group: Group, index: int, waiters: list[_GroupItem]
    ) -> None:
        """Place one item of a ``submit_many`` call as ``submit`` would (settled if it cannot)."""
        identity: Hashable = None
        if self._special:
            try:
                identity = identity_of(self._identity, item)
                cache = self._cache
                cached = _MISSING if cache is None else cache.get((key, identity), _MISSING)
            except Exception as exc:
                group.fail(index, exc)
                return
            if cached is not _MISSING:
                if self._dispatch is not None:
                    self._dispatch.emit(
                        "cache_hit", CacheHit(self._name, key, new_id(), trio.current_time())
                    )
                group.settle(index, cached)
                return
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = self._new_state()
        waiter = _GroupItem(self, key, state, group, index)
        try:
            placed = self._place(key, state, item, identity, waiter)
        except Exception as exc:
            # cost(item) failed or rejected it: nothing was queued.
            group.fail(index, exc)
            return
        if type(placed) is Rejected:
            group.fail(index, placed)
        else:
            waiters.append(waiter)

    def _place(
        self, key: K, state: KeyState[I, Any], item: I, identity: Hashable, waiter: _Waiter
    ) -> _Waiter | Rejected:
        """Share a slot, join or open a batch, wait for room, or be rejected.

        What :meth:`submit` does between checking its arguments and parking,
        for every caller that is not on the plain path. Returns the waiter to
        park (a new :class:`_RoomWaiter` for a single caller that must wait for
        room), or the :exc:`Rejected` to raise. With a cost function,
        ``cost(item)`` is called for an item that brings its own input (never
        for a sharer: a shared input counts once); whatever it raises
        propagates, with nothing queued.
        """
        dispatch = self._dispatch
        entry: Any = waiter
        if self._sharing:
            sharing: SharingKeyState[I, Any] = state  # type: ignore[assignment]
            slot = sharing.share(identity, waiter)
            if slot is not None:
                # A sharer: the batch does not change, so nothing starts; only
                # a deadline of the sharer's may move its batch's timer earlier.
                batch = waiter.batch = slot.batch
                waiter.slot = slot
                if dispatch is not None:
                    self._accepted(key, waiter, slot.members[0].item_id)
                if self._adaptive and batch is not None:
                    # The sharer's deadline counts for its batch (no new input).
                    deadline = self._caller_deadline()
                    if deadline < batch.caller_deadline:
                        batch.caller_deadline = deadline
                if (
                    self._deadline_margin is not None
                    and self._timers is not None
                    and batch is not None
                    and batch.state == WAITING
                ):
                    self._set_timer(key, state, batch, self._caller_deadline())
                return waiter
        cost: float | None = None
        if self._cost is not None:
            try:
                cost = self._cost_of(key, item)
            except BaseException:
                self._forget_if_idle(key, state)
                raise
        if self._sharing:
            entry = waiter.slot = Slot(identity, waiter)
        limits = self._limits
        # Waiters for room are ahead of this item (FIFO): it may not jump them.
        if state.overflow:
            batch = None
        elif cost is None:
            batch = state.add(item, entry, self._policy, limits)
        else:
            batch = state.add_costed(item, entry, cost, self._policy, limits)
        if batch is None:
            if self._wait_for_room:
                if (
                    cost is not None
                    and state.waiting
                    and state.started < limits.max_key_concurrency
                ):
                    # It may have closed the newest batch (it counts as full now).
                    self._start_batches(key, state, after_finish=False)
                deadline = self._caller_deadline()
                context = None if dispatch is None else contextvars.copy_context()
                if type(waiter) is _GroupItem:
                    waiter.deadline = deadline
                    waiter.context = context
                else:
                    assert waiter.task is not None
                    waiter = _RoomWaiter(self, waiter.task, key, state, deadline, context)
                    entry = waiter
                    if self._sharing:
                        entry = waiter.slot = Slot(identity, waiter)
                state.overflow.append((item, entry, cost))
                return waiter
            self._forget_if_idle(key, state)
            if dispatch is not None:
                dispatch.emit("item_rejected", ItemRejected(self._name, key, trio.current_time()))
            return Rejected(
                f"batcher {self._name!r}: the queue of key {_key_repr.repr(key)} is full "
                f"(max_batch_queue_size={self._limits.max_batch_queue_size})"
            )
        waiter.batch = batch
        if dispatch is not None:
            self._accepted(key, waiter, None)
        # Duration timers (Adaptive's timers are set by its decision).
        timed = self._timers is not None and not self._adaptive
        if self._adaptive:
            self._arrived(state, batch, self._caller_deadline())
        if cost is not None:
            # As in submit: the item's batch, or one it closed, may be ready.
            if batch.state == WAITING and timed:
                self._set_timer(key, state, batch, self._caller_deadline())
            if state.waiting and state.started < limits.max_key_concurrency:
                self._start_batches(key, state, after_finish=False)
        elif batch.state == WAITING:
            if timed:
                self._set_timer(key, state, batch, self._caller_deadline())
            if (
                (batch.filled or not self._policy._fill_only_on_arrival)
                and state.started < limits.max_key_concurrency
                and state.waiting[0] is batch
            ):
                self._start_batches(key, state, after_finish=False)
        return waiter

    def _accepted(self, key: K, waiter: _Waiter, shares_with: int | None) -> None:
        assert self._dispatch is not None
        waiter.item_id = new_id()
        waiter.accepted_at = now = trio.current_time()
        event = ItemAccepted(self._name, key, waiter.item_id, now, shares_with=shares_with)
        self._dispatch.emit("item_accepted", event)

    def _new_state(self) -> KeyState[I, Any]:
        state: KeyState[I, Any] = SharingKeyState() if self._sharing else KeyState()
        if self._adaptive:
            state.learned = KeyLearning()
        return state

    def _unhashable_key(self, key: object) -> TypeError:
        return TypeError(f"key must be hashable, got {type(key).__name__} {_key_repr.repr(key)}")

    def _cost_of(self, key: K, item: I) -> float:
        """``cost(item)``, checked: a finite number >= 0 that the limits allow.

        Raises:
            Exception: whatever ``cost(item)`` raised, unchanged.
            TypeError: it returned something that is not a real number.
            ValueError: it returned a negative, NaN or infinite number.
            Rejected: the item alone costs more than ``max_batch_cost`` and
                ``oversize`` is ``Oversize.REJECT``.
        """
        assert self._cost is not None
        value: object = self._cost(item)
        cost: float
        if type(value) is int or type(value) is float:
            cost = value
        elif not isinstance(value, bool) and isinstance(value, numbers.Real):
            # Another real number (numpy.int64, numpy.float32, an IntEnum): its
            # value as a plain int or float.
            cost = int(value) if isinstance(value, numbers.Integral) else float(value)
        else:
            raise TypeError(
                f"batcher {self._name!r}: cost(item) for key {_key_repr.repr(key)} must "
                f"return an int or a float (a bool is not a number here), got "
                f"{type(value).__name__} {safe_repr(value)}; nothing was queued"
            )
        if not 0 <= cost < math.inf:  # NaN fails this too
            raise ValueError(
                f"batcher {self._name!r}: cost(item) for key {_key_repr.repr(key)} must be "
                f"a finite number >= 0, got {cost!r}; nothing was queued"
            )
        limits = self._limits
        if limits.oversize is Oversize.REJECT and is_oversize(cost, limits):
            if self._dispatch is not None:
                self._dispatch.emit(
                    "item_rejected", ItemRejected(self._name, key, trio.current_time())
                )
            raise Rejected(
                f"batcher {self._name!r}: an item of key {_key_repr.repr(key)} costs "
                f"{cost!r}, more than max_batch_cost={limits.max_batch_cost!r}; it was "
                "not queued (Limits(oversize=Oversize.ALONE) gives such an item a "
                "batch of its own)"
            )
        return cost

    def _refusal(self) -> BaseException:
        """Why a submit is refused: another Trio run, or the block is not open."""
        if _get_ident() != self._thread or trio.lowlevel.current_root_task() is not self._root:
            return RuntimeError(
                f"batcher {self._name!r} belongs to another Trio run; a batcher can "
                "only be used from the trio.run that opened it"
            )
        return BatcherClosed(f"batcher {self._name!r} is closed")

    async def _wait_for_room_in(
        self, key: K, state: KeyState[I, _Waiter], item: I, task: _Task, cost: float | None
    ) -> O:
        """Park a caller until its key has room (``Overflow.WAIT``)."""
        waiter = _RoomWaiter(
            self,
            task,
            key,
            state,
            self._caller_deadline(),
            None if self._dispatch is None else contextvars.copy_context(),
        )
        state.overflow.append((item, waiter, cost))
        return await trio.lowlevel.wait_task_rescheduled(waiter.abort)  # type: ignore[no-any-return]

    # -- parking: withdrawal and admission ---------------------------------------

    @trio.lowlevel.enable_ki_protection
    def _withdraw(self, waiter: _Waiter) -> None:
        """A parked caller was cancelled (its ``abort_fn``)."""
        key, state, batch = waiter.key, waiter.state, waiter.batch
        sharing = self._sharing
        # What stands for the caller in the queue: its slot, when sharing.
        entry: Any = waiter.slot if sharing else waiter
        if batch is None:
            # Still waiting for room: it leaves the line, and no trace.
            if state.leave_overflow(entry) and state.overflow and self._cost is not None:
                # With costs, the next in line may fit where this one did not.
                self._admit(key, state)
            self._forget_if_idle(key, state)
            return
        if batch.state > STARTING:
            # Processing has begun: the batch carries on, the output is discarded.
            waiter.task = None
            if self._cancel_abandoned:
                self._cancel_if_abandoned(key, state, batch)
            return
        if self._dispatch is not None:
            now = trio.current_time()
            self._dispatch.emit(
                "item_withdrawn",
                ItemWithdrawn(self._name, key, waiter.item_id, now, now - waiter.accepted_at),
            )
        if sharing and not cast("SharingKeyState[I, Any]", state).leave(entry, waiter):
            return  # others still share the slot: the batch does not change
        if state.withdraw(batch, entry):
            if self._timers is not None:
                self._timers.cancel(batch)
            scope = self._acquiring.get(batch)
            if scope is not None:
                # Dropped while acquiring: stop it. Its runner's ``finally``
                # frees the slot.
                scope.cancel()
            # A dropped batch may uncover a ready one, or leave the key idle.
            # (A withdrawal that leaves its batch non-empty cannot make any batch
            # ready: readiness never depends on a batch shrinking.)
            if state.overflow:
                self._admit(key, state)
            self._start_batches(key, state, after_finish=False)
            self._forget_if_idle(key, state)
        elif state.overflow:
            self._admit(key, state)  # the batch has room again

    def _admit(self, key: K, state: KeyState[I, Any]) -> None:
        """Move callers waiting for room into batches while there is room."""
        dispatch = self._dispatch
        admitted: list[tuple[Any, Batch[I, Any], Slot[Any] | None]]
        if self._sharing:
            # An admitted caller may share a slot that appeared while it waited.
            admitted = []
            sharing = cast("SharingKeyState[I, Any]", state)
            for waiter, slot, batch, shared in sharing.admit_shared(self._policy, self._limits):
                waiter.slot = slot
                admitted.append((waiter, batch, slot if shared else None))
        else:
            admitted = [
                (waiter, batch, None) for waiter, batch in state.admit(self._policy, self._limits)
            ]
        for waiter, batch, joined in admitted:
            assert type(waiter) is _RoomWaiter or type(waiter) is _GroupItem
            waiter.batch = batch
            # Read now: the caller it shares with may have been admitted just before.
            shares_with = None if joined is None else joined.members[0].item_id
            if dispatch is not None:
                waiter.item_id = new_id()
                waiter.accepted_at = now = trio.current_time()
                event = ItemAccepted(self._name, key, waiter.item_id, now, shares_with=shares_with)
                assert waiter.context is not None
                waiter.context.run(dispatch.emit, "item_accepted", event)
            if self._adaptive and joined is None:
                self._arrived(state, batch, waiter.deadline)
            if batch.state == WAITING and joined is None:
                if self._timers is not None and not self._adaptive:
                    self._set_timer(key, state, batch, waiter.deadline)
                self._start_batches(key, state, after_finish=False)
        if self._cost is not None and state.overflow and state.waiting:
            # The first still waiting may have closed the newest batch by not
            # fitting it: that batch counts as full now.
            self._start_batches(key, state, after_finish=False)

    def _forget_if_idle(self, key: K, state: KeyState[I, Any]) -> None:
        if state.is_idle() and self._keys.get(key) is state:
            del self._keys[key]

    # -- scheduling ------------------------------------------------------------

    def _caller_deadline(self) -> float:
        """When a batch must start for the calling task to get its output in time.

        The task's effective deadline, less ``deadline_margin``, less the
        batcher's moving average of batch durations; ``inf`` if deadlines
        are ignored.
        """
        if self._adaptive:
            return trio.current_effective_deadline()
        margin = self._deadline_margin
        if margin is None:
            return math.inf
        return trio.current_effective_deadline() - margin - (self._batch_seconds or 0.0)

    def _start_batches(self, key: K, state: KeyState[I, Any], *, after_finish: bool) -> None:
        """Start every batch of ``key`` that may start now, and hand it to a runner."""
        phase = self._phase
        if phase is _Phase.TORN_DOWN or phase is _Phase.CLOSED:
            return
        started_before = state.started
        now = trio.current_time() if self._adaptive else 0.0
        started = state.start_allowed(
            self._policy,
            self._limits,
            after_finish=after_finish,
            draining=phase is _Phase.DRAINING,
            now=now,
        )
        if self._adaptive and phase is _Phase.OPEN:
            self._hold(key, state)
        if not started:
            return
        runs = []
        timers = self._timers
        for batch in started:
            runs.append(_Run(self, key, state, batch))
            if timers is not None:
                timers.cancel(batch)
        if self._dispatch is not None or logger.isEnabledFor(logging.DEBUG):
            for index, run in enumerate(runs):
                self._note_start(run, started_before + index, after_finish and not index)
        self._runners.put(runs)

    # -- Adaptive ------------------------------------------------------------------

    def _arrived(self, state: KeyState[I, Any], batch: Batch[I, Any], deadline: float) -> None:
        """An item of an ``Adaptive`` batcher joined ``batch``: learn and note its facts."""
        assert state.learned is not None
        now = trio.current_time()
        # With a cost function, the rate is in cost per second (the item is last).
        state.learned.arrivals.arrived(now, batch.costs[-1] if batch.costs else 1.0)
        if len(batch.inputs) == 1:
            batch.opened_at = now
        if deadline < batch.caller_deadline:
            batch.caller_deadline = deadline

    def _hold(self, key: K, state: KeyState[I, _Waiter]) -> None:
        """The decision holds the oldest waiting batch back: its timer starts it later."""
        assert self._timers is not None
        if not state.waiting or state.started >= self._limits.max_key_concurrency:
            return
        # start_allowed stopped at this batch with a slot free: its decision
        # said "later", and set its deadline to when.
        head = state.waiting[0]
        self._timers.set(head, head.deadline, (key, state))

    # -- Duration timers ---------------------------------------------------------

    def _set_timer(
        self,
        key: K,
        state: KeyState[I, Any],
        batch: Batch[I, Any],
        caller_deadline: float,
    ) -> None:
        """Give a new batch its timer, or move a batch's timer earlier for a caller."""
        assert self._timers is not None
        if batch.expired:
            return  # already ready: no deadline can make it more so
        if batch.deadline == math.inf:
            # No timer yet: the batch is new (several waiters admitted at once
            # may have filled it already), and its timer starts now.
            assert isinstance(self._policy, Duration)
            deadline = trio.current_time() + self._policy.delay_seconds
        else:
            deadline = batch.deadline
        if caller_deadline < deadline:
            deadline = caller_deadline
            batch.early = True
        elif deadline == batch.deadline:
            return  # unchanged (also: no delay and no caller deadline, both inf)
        batch.deadline = deadline
        self._timers.set(batch, deadline, (key, state))

    def _timer_expired(self, batch: Batch[I, Any], target: tuple[K, KeyState[I, Any]]) -> None:
        """A batch's timer fired (it is still waiting: started batches have none)."""
        batch.expired = True
        key, state = target
        if state.learned is not None:
            batch.reason = state.learned.timer_reason
        if state.started < self._limits.max_key_concurrency:
            self._start_batches(key, state, after_finish=False)

    # -- running a batch -------------------------------------------------------

    def _where(self, run: _Run) -> str:
        return (
            f"batcher {self._name!r}, key {_key_repr.repr(run.key)}, "
            f"batch of {len(run.batch.inputs)}"
        )

    def _begin_processing(self, run: _Run) -> bool:
        """Take the batch out of the queue (no item joins or leaves it after this)."""
        if not run.state.begin_processing(run.batch):
            return False
        if self._dispatch is not None:
            run.processing_at = trio.current_time()
        if run.state.overflow:
            self._admit(run.key, run.state)
        return True

    async def _run_abandonable(self, run: _Run) -> list[Any] | Failure | None:
        """Acquire and process in a scope that is cancelled when every caller gives up.

        ``acquire`` and ``process`` then see :exc:`trio.Cancelled` (a transaction
        rolls back); the batch ends as cancelled, and nothing of it is cached.
        """
        result: list[Any] | Failure | None = None
        batch = run.batch
        with trio.CancelScope() as scope:
            self._abandonable[batch] = scope
            try:
                if self._acquire is not None:
                    result = await self._acquire_and_process(run)
                elif self._begin_processing(run):
                    try:
                        result = await self._call_process(run, ())
                    except Exception as exc:
                        result = self._failed(BatchFailed, run, exc)
            finally:
                del self._abandonable[batch]
        if scope.cancel_called:
            return None
        return result

    async def _acquire_and_process(self, run: _Run) -> list[Any] | Failure | None:
        assert self._acquire is not None
        batch = run.batch
        if batch.state != STARTING:
            return None  # dropped before a runner took it
        processing = False
        outputs: list[Any] | Failure | None = None
        process_error: Exception | None = None
        try:
            with trio.CancelScope() as scope:
                # Withdrawing every item cancels this scope: acquisition stops.
                self._acquiring[batch] = scope
                try:
                    async with self._acquire(run.key) as resource:
                        del self._acquiring[batch]
                        if not self._begin_processing(run):
                            return None  # dropped while acquiring: release, no process
                        processing = True
                        try:
                            outputs = await self._call_process(run, (resource,))
                        except Exception as exc:
                            process_error = exc
                            raise
                finally:
                    self._acquiring.pop(batch, None)
        except Exception as exc:
            if not processing:
                return self._failed(ResourceAcquisitionFailed, run, exc)
            return self._failed(BatchFailed, run, exc)
        if process_error is not None:
            # The resource's context manager swallowed process's exception.
            return self._failed(BatchFailed, run, process_error)
        return outputs

    async def _call_process(self, run: _Run, extra: tuple[Any, ...]) -> list[Any] | Failure:
        """Call ``process`` and read its outputs; a broken contract is a Failure."""
        inputs = run.batch.inputs
        awaitable: Any = self._process(run.key, inputs, *extra)
        if type(awaitable) is not CoroutineType and not inspect.isawaitable(awaitable):
            return contract_failure(
                ContractViolation(
                    f"process must be an async function, but it returned "
                    f"{type(awaitable).__name__}; run blocking work with "
                    "trio.to_thread.run_sync inside an async process"
                ),
                self._where(run),
            )
        outputs = await awaitable
        try:
            return read_outputs(outputs, len(inputs))
        except ContractViolation as violation:
            return contract_failure(violation, self._where(run))

    def _failed(self, error_type: type[BatchError], run: _Run, exc: Exception) -> Failure:
        what = "acquire raised" if error_type is ResourceAcquisitionFailed else "process raised"
        return Failure(error_type, f"{what} {describe(exc)} ({self._where(run)})", exc)

    @trio.lowlevel.enable_ki_protection
    def _finish(
        self, run: _Run, result: list[Any] | Failure | None, unwinding: bool, began: float
    ) -> None:
        """Free the batch's slot, deliver its outcomes, and start what may now start.

        Total and protected from KeyboardInterrupt: between freeing the slot and
        delivering, the batch is in no queue, so nothing here may fail or be
        interrupted. The only user code that runs here is observers, which
        ``Dispatch`` guards, after every caller has its outcome.
        """
        key, state, batch = run.key, run.state, run.batch
        run.weight = len(batch.inputs)
        if state.learned is None:
            waiters = state.finish(batch)
        else:
            waiters = state.finish(batch, now=trio.current_time(), timed=type(result) is list)
        if result is None:
            # Cancelled by teardown, or crashed with a BaseException (or dropped,
            # in which case there is nobody left to tell).
            result = Failure(
                BatcherClosed,
                f"batcher {self._name!r} was closed before the batch completed",
                None,
            )
        if self._sharing or self._grouped:
            callers, failed_items = self._deliver(waiters, result)
        else:
            callers, failed_items = waiters, deliver(waiters, result)
        if self._deadline_margin is not None and batch.inputs and type(result) is not Failure:
            elapsed = trio.current_time() - began
            average = self._batch_seconds
            self._batch_seconds = (
                elapsed if average is None else average + _EWMA_WEIGHT * (elapsed - average)
            )
        if self._dispatch is not None:
            self._observe_finish(run, callers, result, failed_items)
        if type(result) is Failure:
            if result.error_type is not BatcherClosed:
                logger.warning("%s", result.message)
        elif self._cache is not None:
            self._store(key, batch, result)
        # Each waiter refers to its batch: break the cycle, so that both are
        # freed by reference counting as their callers resume, never left for
        # the garbage collector (whose collections then cost every parked caller).
        if self._sharing:
            forget_slots(waiters)
        batch.waiters = []
        if state.overflow:
            self._admit(key, state)
        if not unwinding and state.waiting:
            self._start_batches(key, state, after_finish=True)
        self._forget_if_idle(key, state)

    def _callers(self, waiters: list[Any]) -> list[_Waiter]:
        """The callers of a batch's inputs (every member of every slot, when sharing)."""
        return members(waiters) if self._sharing else waiters

    def _deliver(
        self, waiters: list[Any], result: list[Any] | Failure
    ) -> tuple[list[_Waiter], int]:
        """``deliver`` for shared slots and ``submit_many`` items; returns the callers.

        Output *i* goes to every member of slot *i*, each failure is a new
        exception per caller, and group items are settled into their groups.
        """
        callers: list[_Waiter]
        outputs: list[Any] | Failure
        if self._sharing:
            if type(result) is Failure:
                callers, outputs = members(waiters), result
            else:
                callers, outputs = spread(waiters, result)
        else:
            callers, outputs = waiters, result
        failed = deliver(callers, outputs)
        if self._grouped:
            if type(outputs) is Failure:
                for waiter in callers:
                    if type(waiter) is _GroupItem:
                        waiter.group.fail(waiter.index, outputs.new_error())
            else:
                for index, waiter in enumerate(callers):
                    if type(waiter) is _GroupItem:
                        waiter.group.settle_output(waiter.index, outputs[index])
        return callers, failed

    def _store(self, key: K, batch: Batch[I, Any], outputs: list[Any]) -> None:
        """Cache every successful output of a finished batch under ``(key, identity)``."""
        cache = self._cache
        assert cache is not None
        sharing = self._sharing
        try:
            for index, output in enumerate(outputs):
                kind = type(output)
                if kind is outcome.Error:
                    continue
                if kind is outcome.Value:
                    output = output.value
                identity = batch.waiters[index].identity if sharing else batch.inputs[index]
                cache[key, identity] = output
        except Exception:
            logger.exception("batcher %r: storing an output in the cache raised", self._name)

    @trio.lowlevel.enable_ki_protection
    def _withdraw_many(
        self, group: Group, waiters: list[_GroupItem], _: object
    ) -> trio.lowlevel.Abort:
        """A ``submit_many`` caller was cancelled: withdraw each item it still waits for."""
        group.cancelled = True
        group.task = None
        for waiter in waiters:
            if not group.settled(waiter.index):
                self._withdraw(waiter)
        return trio.lowlevel.Abort.SUCCEEDED

    def _cancel_if_abandoned(self, key: K, state: KeyState[I, Any], batch: Batch[I, Any]) -> None:
        """``cancel_abandoned``: cancel a processing batch once every caller has given up."""
        scope = self._abandonable.get(batch)
        if scope is None or not all(map(_gave_up, self._callers(batch.waiters))):
            return
        if self._sharing:
            # Nobody may join a batch that is being cancelled.
            cast("SharingKeyState[I, Any]", state).unshare(batch)
        scope.cancel()

    # -- observation -------------------------------------------------------------

    def _note_start(self, run: _Run, started: int, after_finish: bool) -> None:
        """Record why and when a batch started (for observers and the debug log)."""
        reason = start_reason(self._policy, run.batch, started=started, after_finish=after_finish)
        run.reason = reason
        run.ident = new_id()
        run.started_at = trio.current_time()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "batcher %r: batch of %d for key %s started (%s)",
                self._name,
                len(run.batch.inputs),
                _key_repr.repr(run.key),
                reason.value,
            )

    def _observe_start(self, run: _Run) -> None:
        assert self._dispatch is not None
        assert run.reason is not None
        batch = run.batch
        self._dispatch.emit(
            "batch_started",
            BatchStarted(
                self._name,
                run.key,
                run.ident,
                len(batch.inputs),
                run.reason,
                tuple(waiter.item_id for waiter in self._callers(batch.waiters)),
                run.started_at,
                None if self._cost is None else batch.cost,
            ),
        )

    def _observe_finish(
        self, run: _Run, waiters: list[_Waiter], result: list[Any] | Failure, failed_items: int
    ) -> None:
        assert self._dispatch is not None
        now = trio.current_time()
        processed = run.processing_at is not None
        began = run.processing_at if run.processing_at is not None else now
        if run.reason is None:
            # Never started: closed with the block.
            run.ident = new_id()
            run.started_at = now
        status = _OUTCOMES[result.error_type] if type(result) is Failure else BatchOutcome.OK
        self._dispatch.emit(
            "batch_finished",
            BatchFinished(
                batcher=self._name,
                key=run.key,
                batch_id=run.ident,
                size=len(run.batch.inputs) if processed else 0,
                reason=run.reason,
                item_ids=tuple(waiter.item_id for waiter in waiters),
                # A sharer may join after processing began: it waited 0.
                queue_waits=tuple(max(0.0, began - waiter.accepted_at) for waiter in waiters),
                acquire_seconds=began - run.started_at,
                process_seconds=now - began,
                outcome=status,
                failed_items=failed_items,
                abandoned=sum(map(_gave_up, waiters)) if processed else 0,
                time=now,
                cost=None if self._cost is None else (run.batch.cost if processed else 0),
            ),
        )

    # -- the block ---------------------------------------------------------------

    def _move_to(self, phase: _Phase) -> None:
        if phase not in _NEXT_PHASES[self._phase]:
            raise AssertionError(f"batcher {self._name!r}: {self._phase} cannot become {phase}")
        self._phase = phase

    def _begin_drain(self) -> None:
        """The body returned: refuse new items, make every queued batch ready."""
        self._move_to(_Phase.DRAINING)
        if self._timers is not None:
            self._timers.stop()
        for key, state in list(self._keys.items()):
            self._start_batches(key, state, after_finish=False)
        # From now on a runner with nothing to run exits.
        self._runners.exit_when_idle()

    def _tear_down(self) -> None:
        """The body raised or was cancelled: cancel every batch task now."""
        self._move_to(_Phase.TORN_DOWN)
        self._runners.stop()
        self._nursery.cancel_scope.cancel()

    def _close(self) -> None:
        """After the nursery: anyone still parked gets :exc:`BatcherClosed`."""
        if self._phase is _Phase.CLOSED:
            return
        self._move_to(_Phase.CLOSED)
        self._runners.stop()
        # Started batches no runner took before the nursery was cancelled: end
        # each as if its task had been cancelled.
        for job in self._runners.untaken():
            assert type(job) is _Run
            self._context.copy().run(self._close_untaken, job)
        keys = self._keys
        self._keys = {}
        closed = Failure(BatcherClosed, f"batcher {self._name!r} was closed", None)
        for key, state in keys.items():
            for batch in state.queued_batches():
                callers, _ = self._deliver(batch.waiters, closed)
                if self._dispatch is not None:
                    self._observe_finish(_Run(self, key, state, batch), callers, closed, 0)
                if self._sharing:
                    forget_slots(batch.waiters)
                batch.waiters = []
                batch.inputs = []
            self._deliver([waiter for _, waiter, _ in state.overflow], closed)
            state.overflow.clear()

    def _close_untaken(self, run: _Run) -> None:
        if self._dispatch is not None:
            self._observe_start(run)
        self._finish(run, None, True, 0.0)


def _gave_up(waiter: _Waiter) -> bool:
    """Whether a caller was cancelled after its item's batch began processing."""
    if type(waiter) is _GroupItem:
        return waiter.group.cancelled
    return waiter.task is None


#: Not in the cache.
_MISSING: Any = object()


_OUTCOMES = {
    BatchFailed: BatchOutcome.FAILED,
    ProcessorContractError: BatchOutcome.CONTRACT_ERROR,
    ResourceAcquisitionFailed: BatchOutcome.ACQUIRE_FAILED,
    BatcherClosed: BatchOutcome.CANCELLED,
}


def _raise_cancellation_of(group: BaseExceptionGroup[BaseException], where: str) -> NoReturn:
    """A batch was cancelled (teardown) and its own cleanup raised as well.

    ``process`` (or ``acquire``) with a nursery of its own, cancelled by
    teardown, can end with a group of ``Cancelled`` plus an error one of its
    tasks raised while cleaning up. The error must not replace the body's
    exception, nor turn an outer cancellation into an error: it is logged at
    WARNING and the cancellation alone goes on. A group holding anything else
    that is not an ``Exception`` (KeyboardInterrupt) is never swallowed.
    """
    cancelled, rest = group.split(trio.Cancelled)
    if cancelled is None or rest is None:
        raise group
    errors, others = rest.split(Exception)
    if others is not None:
        raise group
    logger.warning(
        "%s: error while the batch was being cancelled: %s",
        where,
        describe(errors) if errors is not None else "",
        exc_info=errors,
    )
    del errors, rest
    raise cancelled
