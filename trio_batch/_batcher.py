"""``open_batcher`` and ``Batcher``: where callers park and where batches run.

Design, in the order things happen:

* :func:`open_batcher` opens one nursery and yields a :class:`Batcher`. Every task
  the batcher runs (the runners that run batches, plus one timer task for
  :class:`~trio_batch.Duration`) lives in that nursery; leaving the block is the
  nursery's exit, so there is no worker to detach and no shutdown channel.
* :meth:`Batcher.submit` puts the item in its key's queue (``_key_state``), asks
  the policy which batches may start (queueing them for a runner), and parks the
  calling task with :func:`trio.lowlevel.wait_task_rescheduled`. There is no
  per-item Event or channel: the batch reschedules each caller with its own
  outcome, and the caller's ``abort_fn`` withdraws the item if its batch has
  not begun processing. Because ``abort_fn`` runs synchronously inside Trio's
  cancellation delivery, withdrawal is atomic with respect to processing: an
  item is either removed before ``process`` sees the inputs, or it is processed
  and its output discarded. Never both, never neither.
* A runner takes started batches in FIFO order and runs each one in a fresh
  copy of the block's context (``_drive``): it acquires the resource (if any),
  takes the batch out of the queue (from then on no item can join or leave it),
  calls ``process``, and in ``finally`` frees its slot, delivers outcomes,
  starts whatever the policy now allows, and forgets the key if it is idle.
  Each of those steps has exactly one owner, here, so no counter can drift
  between tasks.
* Runners are reused, because a task spawn and exit costs several times what
  parking and waking one does. A batch that does not block (a no-op or cached
  ``process``) costs no task switch: its runner goes straight on to the next
  batch. The first time a batch blocks, its runner wakes (or spawns) enough
  runners for every batch still waiting for one, so a batch never waits for
  another batch to finish before it can begin; the price is that those batches
  begin one scheduler tick later than with a task each. A batch started by
  another task (a caller, the timer task) is never taken in the scheduling
  round it started in, so items submitted in that round still join it: each
  such start gets a sequence number, and a runner takes it only if the runner
  was woken after it (and so runs in a later round), or else yields once
  first. At most ``_MAX_IDLE_RUNNERS`` idle runners are kept; a runner with
  nothing to run exits instead of parking beyond that, and during the drain.

Rejected alternatives: a single worker task per batcher or per key (a
bottleneck, and a place for cancellations to jam, as Ray Serve found); a task
per batch (simplest, and what this module did first, but a spawn and exit per
batch made many small batches cost up to 1.5 times as much per item as a
hand-written batcher); memory channels to carry items (a closed channel
silently drops what it buffers, and the order in which woken tasks run is not
FIFO, so order and ownership must come from our own queue anyway).
"""

from __future__ import annotations

import contextvars
import heapq
import inspect
import itertools
import logging
import math
import reprlib
import types
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import CoroutineType
from typing import Any, Generic, TypeVar, final, overload

import outcome
import trio

from ._errors import (
    BatcherClosed,
    BatchError,
    BatchFailed,
    ItemFailed,
    ProcessorContractError,
    Rejected,
    ResourceAcquisitionFailed,
)
from ._key_state import STARTING, WAITING, Batch, KeyState
from ._observe import (
    BatchFinished,
    BatchOutcome,
    BatchStarted,
    Dispatch,
    ItemAccepted,
    ItemRejected,
    ItemWithdrawn,
    Observer,
    logger,
    new_id,
)
from ._policies import (
    POLICY_TYPES,
    Duration,
    Immediate,
    Limits,
    Overflow,
    Policy,
    check_compatible,
    start_reason,
)
from ._statistics import BatcherStatistics

__all__ = ["Batcher", "open_batcher"]

K = TypeVar("K")
I = TypeVar("I")  # noqa: E741 - conventional name for the input type
O = TypeVar("O")  # noqa: E741 - conventional name for the output type
R = TypeVar("R")

_Task = trio.lowlevel.Task
_key_repr = reprlib.Repr()
_key_repr.maxstring = 40
_key_repr.maxother = 40


class _ContractViolation(Exception):
    """Raised inside the batch task when ``process`` broke its contract."""


@final
class _Failure:
    """A failed batch: each caller gets its own exception built from this."""

    __slots__ = ("cause", "error_type", "message")

    def __init__(
        self, error_type: type[BatchError], message: str, cause: BaseException | None
    ) -> None:
        self.error_type = error_type
        self.message = message
        self.cause = cause

    def new_error(self) -> BatchError:
        error = self.error_type(self.message)
        error.__cause__ = self.cause
        return error


def _is_sequence_like(value: object) -> bool:
    # Array-likes (numpy, torch) are not registered Sequences but have a length
    # and index by position; strings and mappings are never a list of outputs.
    if isinstance(value, str | bytes | Mapping):
        return False
    return isinstance(value, Sequence) or (
        hasattr(value, "__len__") and hasattr(value, "__getitem__")
    )


def _check_outputs(outputs: Any, expected: int) -> Sequence[Any]:
    """Return ``outputs`` if it is a sequence of ``expected`` items, else raise."""
    if type(outputs) is not list and type(outputs) is not tuple and not _is_sequence_like(outputs):
        raise _ContractViolation(
            f"process must return a sequence of outputs, got {type(outputs).__name__}"
        )
    if len(outputs) != expected:
        raise _ContractViolation(f"process returned {len(outputs)} outputs for {expected} inputs")
    return outputs  # type: ignore[no-any-return]


@final
class _OverflowWaiter:
    """A caller parked for room (``Overflow.WAIT``); ``batch`` is set on admission."""

    __slots__ = ("batch", "context", "deadline", "entry")

    def __init__(self, deadline: float, context: contextvars.Context | None) -> None:
        self.batch: Batch[Any, _Task] | None = None
        self.deadline = deadline
        self.entry: Any = None
        # Observed batchers: the caller's context, for its item_accepted event.
        self.context = context


@final
class Batcher(Generic[K, I, O]):
    """Collects concurrent :meth:`submit` calls per key into batched ``process`` calls.

    Only :func:`open_batcher` creates a batcher; it is usable inside that
    ``async with`` block. Share it freely between tasks of the block.
    """

    __slots__ = (
        "__weakref__",
        "_acquire",
        "_batch_seconds",
        "_closed",
        "_context",
        "_deadline_margin",
        "_dispatch",
        "_draining",
        "_driving",
        "_idle_runners",
        "_keys",
        "_limits",
        "_name",
        "_nursery",
        "_pending_runners",
        "_policy",
        "_process",
        "_ready",
        "_runner_name",
        "_seq",
        "_timer_heap",
        "_timer_scope",
        "_timer_seq",
        "_timer_stale",
        "_timer_task_scope",
        "_torn_down",
        "_uses_timer",
        "_wait_for_room",
    )

    def __init__(
        self,
        process: Callable[..., Awaitable[Sequence[O]]],
        acquire: Callable[[K], AbstractAsyncContextManager[Any]] | None,
        policy: Policy,
        limits: Limits,
        name: str,
        observers: Sequence[object],
    ) -> None:
        self._process = process
        self._acquire = acquire
        self._policy = policy
        self._limits = limits
        self._name = name
        # None when unobserved: the hot path tests this one attribute.
        self._dispatch = Dispatch(name, observers) if observers else None
        # Key -> its queue. Invariant: no idle KeyState is ever stored here.
        self._keys: dict[K, KeyState[I, _Task]] = {}
        self._nursery: trio.Nursery | None = None
        # Started batches not yet taken by a runner, oldest first, each with the
        # sequence number of its start (0: started by a runner's own step).
        self._ready: deque[tuple[K, KeyState[I, _Task], Batch[I, _Task], int]] = deque()
        # Orders starts by other tasks against runners' barriers (see _run_ready).
        self._seq = 0
        # Runner tasks parked with nothing to run (most recently parked last).
        self._idle_runners: list[_Task] = []
        # Runners woken or spawned that have not yet looked at ``_ready``.
        self._pending_runners = 0
        # A runner is inside a step of one of this batcher's batches: it will
        # look at ``_ready`` before that step ends, so nobody needs waking.
        self._driving = False
        self._runner_name = f"trio_batch runner of {name!r}"
        # Batch tasks run in a copy of the context that entered the block (set
        # by _open), not in the context of whichever caller started them.
        self._context = contextvars.Context()
        self._wait_for_room = limits.overflow is Overflow.WAIT
        # No new submits (draining or closed).
        self._closed = False
        # Every queued batch is ready, whatever the policy.
        self._draining = False
        # The block was left by an exception or a cancellation: start nothing.
        self._torn_down = False
        self._deadline_margin: float | None = None
        # Deadline awareness: moving average of how long a batch takes from its
        # start to its end (None until one has finished).
        self._batch_seconds: float | None = None
        self._uses_timer = False
        if isinstance(policy, Duration):
            self._deadline_margin = policy.deadline_margin
            self._uses_timer = (
                policy.delay_seconds != math.inf or policy.deadline_margin is not None
            )
        # Duration timers: a heap of [deadline, sequence, key, key state, batch].
        # A batch has at most one live entry (``batch.timer``). When the batch
        # starts, is dropped or its deadline moves, the entry becomes a
        # tombstone (key, state and batch cleared at once, so nothing of a
        # forgotten key is kept), and tombstones are swept out of the heap
        # when they outnumber live entries.
        self._timer_heap: list[list[Any]] = []
        self._timer_stale = 0
        self._timer_scope: trio.CancelScope | None = None
        self._timer_task_scope: trio.CancelScope | None = None
        self._timer_seq = itertools.count()

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
        )

    def __repr__(self) -> str:
        if self._torn_down or (self._closed and not self._draining):
            status = "closed"
        elif self._draining:
            status = "draining"
        else:
            status = "open"
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

        Returns:
            The output that ``process`` returned at this item's position (for an
            ``outcome.Value(v)`` output, ``v``).

        Raises:
            Rejected: the key's queue is full (with ``Overflow.REJECT``); the item
                was not queued.
            BatchFailed: ``process`` (or releasing the resource) raised; the
                exception is ``__cause__``.
            ItemFailed: ``process`` returned ``outcome.Error(exc)`` for this item;
                ``exc`` is ``__cause__``.
            ResourceAcquisitionFailed: entering ``acquire(key)`` raised; the
                exception is ``__cause__``.
            ProcessorContractError: ``process`` returned the wrong number of
                outputs, or not a sequence.
            BatcherClosed: the block has exited or is draining, or it was left
                by an exception or cancellation while this item waited.
            TypeError: ``key`` is not hashable.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise BatcherClosed(f"batcher {self._name!r} is closed")
        keys = self._keys
        try:
            state = keys.get(key)
        except TypeError:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise TypeError(
                f"key must be hashable, got {type(key).__name__} {_key_repr.repr(key)}"
            ) from None
        if state is None:
            state = keys[key] = KeyState()
        task = trio.lowlevel.current_task()
        dispatch = self._dispatch
        meta = None if dispatch is None else (new_id(), trio.current_time())
        # Waiters for room are ahead of this item (FIFO): it may not jump them.
        batch = None if state.overflow else state.add(item, task, self._policy, self._limits, meta)
        if batch is None:
            if self._wait_for_room:
                return await self._wait_in_overflow(key, state, item, task, meta)
            self._forget_if_idle(key, state)
            if dispatch is not None:
                dispatch.emit("item_rejected", ItemRejected(self._name, key, trio.current_time()))
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise Rejected(
                f"batcher {self._name!r}: the queue of key {_key_repr.repr(key)} is full "
                f"(max_batch_queue_size={self._limits.max_batch_queue_size})"
            )
        if dispatch is not None:
            assert meta is not None
            dispatch.emit("item_accepted", ItemAccepted(self._name, key, meta[0], meta[1]))
        if batch.state == WAITING:
            if self._uses_timer:
                self._set_timer(key, state, batch, self._caller_deadline())
            # Only the oldest waiting batch can start (FIFO), and only this
            # item's batch changed: if it is not the oldest, nothing can start.
            # Under Size and Duration, only an arrival that fills it can.
            if (
                (batch.filled or not self._policy._fill_only_on_arrival)
                and state.started < self._limits.max_key_concurrency
                and state.waiting[0] is batch
            ):
                self._start_ready(key, state, after_finish=False)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._withdraw(key, state, batch, task)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    async def _wait_in_overflow(
        self,
        key: K,
        state: KeyState[I, _Task],
        item: I,
        task: _Task,
        meta: tuple[int, float] | None,
    ) -> O:
        """Park a caller until its key has room (``Overflow.WAIT``)."""
        waiter = _OverflowWaiter(
            self._caller_deadline(),
            None if self._dispatch is None else contextvars.copy_context(),
        )
        waiter.entry = (item, task, meta, waiter)
        state.overflow.append(waiter.entry)

        def abort(_: Any) -> trio.lowlevel.Abort:
            if waiter.batch is None:
                state.overflow.remove(waiter.entry)
                self._forget_if_idle(key, state)
            else:
                self._withdraw(key, state, waiter.batch, task)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    # -- scheduling ------------------------------------------------------------

    def _caller_deadline(self) -> float:
        """When a batch must start for the calling task to get its output in time.

        The task's effective deadline, less ``deadline_margin``, less the
        batcher's moving average of batch durations; ``inf`` if deadlines
        are ignored.
        """
        margin = self._deadline_margin
        if margin is None:
            return math.inf
        return trio.current_effective_deadline() - margin - (self._batch_seconds or 0.0)

    def _start_ready(self, key: K, state: KeyState[I, _Task], *, after_finish: bool) -> None:
        """Start every batch of ``key`` that may start now, and see that a runner will take it."""
        if self._torn_down:
            return
        started_before = state.started
        started = state.start_ready(
            self._policy, self._limits, after_finish=after_finish, draining=self._draining
        )
        if not started:
            return
        ready = self._ready
        if self._driving:
            seq = 0  # the runner whose step this is takes it, or hands it over
        else:
            self._seq += 1
            seq = self._seq
        for index, batch in enumerate(started):
            if batch.timer is not None:
                self._cancel_timer(batch)
            if self._dispatch is not None or logger.isEnabledFor(logging.DEBUG):
                self._note_start(key, batch, started_before + index, after_finish and not index)
            ready.append((key, state, batch, seq))
        if not self._pending_runners and not self._driving:
            self._add_runner()

    # -- runners ---------------------------------------------------------------

    def _add_runner(self) -> None:
        """Wake an idle runner, or spawn one, to take what is in ``_ready``."""
        if self._idle_runners:
            self._wake_runner(self._idle_runners.pop())
        else:
            self._pending_runners += 1
            self._seq += 1
            # In the block's context: a task copies the context it is spawned in.
            self._context.run(self._spawn_runner, self._seq)

    def _wake_runner(self, task: _Task) -> None:
        """Reschedule an idle runner, with a barrier later than every start so far."""
        self._pending_runners += 1
        self._seq += 1
        trio.lowlevel.reschedule(task, outcome.Value(self._seq))

    def _spawn_runner(self, barrier: int) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._run_ready, barrier, name=self._runner_name)

    async def _run_ready(self, barrier: int) -> None:
        """A runner: run started batches one after another, park when there are none.

        A batch that never blocks (its ``process`` returns without waiting)
        costs no task switch at all: the runner goes straight on to the next.
        A batch that blocks hands what is left over to other runners first
        (see :meth:`_drive`), so keys never wait for each other's batches.

        A batch started by another task must go on filling until Trio's next
        scheduling round: the SPEC promises that items submitted in the same
        round as the one that started it still join it. A runner woken (or
        spawned) after the start runs in a later round, so it may take the
        batch at once; ``barrier`` is the sequence number of this runner's
        wake. A batch started after it (it may be in the current round) makes
        the runner yield once, with a new barrier, before taking it.
        """
        ready = self._ready
        idle = self._idle_runners
        task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            self._pending_runners -= 1
            while ready:
                if ready[0][3] > barrier:
                    # Still looking at the queue, as a pending runner would.
                    self._pending_runners += 1
                    self._seq += 1
                    barrier = self._seq
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    self._pending_runners -= 1
                    continue
                key, state, batch, _ = ready.popleft()
                await self._drive(self._run_batch(key, state, batch))
                # Keep nothing of a key that may be forgotten while this runner is idle.
                key = state = batch = None  # type: ignore[assignment]
            if self._draining or len(idle) >= _MAX_IDLE_RUNNERS:
                return  # nothing will be started that needs this runner
            idle.append(task)
            barrier = await trio.lowlevel.wait_task_rescheduled(abort)

    @types.coroutine
    def _drive(self, coro: Coroutine[Any, Any, None]) -> Generator[Any, Any, None]:
        """Run one batch's coroutine in the runner's task, in a context of its own.

        Each batch gets a fresh copy of the block's context, as if it had a task
        of its own: a context variable set by one batch (or by an observer for
        it) is never seen by another. Every time the batch blocks, batches
        still in ``_ready`` are handed to other runners, so no batch waits for
        another to finish before it can begin.
        """
        run = self._context.copy().run
        send: Callable[[Any], Any] = coro.send
        value: Any = None
        error: BaseException | None = None
        while True:
            self._driving = True
            try:
                trap = run(send, value) if error is None else run(coro.throw, error)
            except StopIteration:
                return
            finally:
                self._driving = False
                error = None  # no cycle through this frame's traceback
            ready = self._ready
            if ready and self._pending_runners < len(ready) and not self._torn_down:
                for _ in range(len(ready) - self._pending_runners):
                    self._add_runner()
            try:
                value = yield trap
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                error = exc
            else:
                error = None

    def _admit(self, key: K, state: KeyState[I, _Task]) -> None:
        """Move callers waiting for room into batches while there is room."""
        for waiter, batch in state.admit(self._policy, self._limits):
            waiter.batch = batch
            if self._dispatch is not None and waiter.context is not None:
                item_id = batch.meta[-1][0]
                event = ItemAccepted(self._name, key, item_id, trio.current_time())
                waiter.context.run(self._dispatch.emit, "item_accepted", event)
            if batch.state == WAITING:
                if self._uses_timer:
                    self._set_timer(key, state, batch, waiter.deadline)
                self._start_ready(key, state, after_finish=False)

    def _forget_if_idle(self, key: K, state: KeyState[I, _Task]) -> None:
        if state.is_idle() and self._keys.get(key) is state:
            del self._keys[key]

    @trio.lowlevel.enable_ki_protection
    def _withdraw(
        self, key: K, state: KeyState[I, _Task], batch: Batch[I, _Task], task: _Task
    ) -> None:
        """A parked caller was cancelled (its ``abort_fn``)."""
        if batch.state > STARTING:
            # Processing has begun: the batch carries on, the output is discarded.
            state.abandon(batch, task)
            return
        if self._dispatch is not None:
            item_id, accepted_at = batch.meta[batch.waiters.index(task)]
            now = trio.current_time()
            self._dispatch.emit(
                "item_withdrawn", ItemWithdrawn(self._name, key, item_id, now, now - accepted_at)
            )
        if state.withdraw(batch, task):
            if batch.timer is not None:
                self._cancel_timer(batch)
            if batch.scope is not None:
                # Dropped while started: stop its acquisition. Its runner's
                # ``finally`` frees the slot.
                batch.scope.cancel()
            # A dropped batch may uncover a ready one, or leave the key idle.
            # (A withdrawal that leaves its batch non-empty cannot make any batch
            # ready: readiness never depends on a batch shrinking.)
            if state.overflow:
                self._admit(key, state)
            self._start_ready(key, state, after_finish=False)
            self._forget_if_idle(key, state)
        elif state.overflow:
            self._admit(key, state)  # the batch has room again

    def _set_timer(
        self, key: K, state: KeyState[I, _Task], batch: Batch[I, _Task], caller_deadline: float
    ) -> None:
        """Give a new batch its timer, or move a batch's timer earlier for a caller."""
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
        self._cancel_timer(batch)
        entry = [deadline, next(self._timer_seq), key, state, batch]
        batch.timer = entry
        heapq.heappush(self._timer_heap, entry)
        scope = self._timer_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def _cancel_timer(self, batch: Batch[I, _Task]) -> None:
        """Turn the batch's timer entry (if any) into a tombstone."""
        entry = batch.timer
        if entry is None:
            return
        batch.timer = None
        entry[2] = entry[3] = entry[4] = None
        self._timer_stale += 1
        heap = self._timer_heap
        if self._timer_stale > len(heap) // 2:
            heap[:] = [live for live in heap if live[4] is not None]
            heapq.heapify(heap)
            self._timer_stale = 0

    async def _run_timers(self, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        """Expire Duration timers. One task for the whole batcher."""
        heap = self._timer_heap
        with trio.CancelScope() as outer:
            task_status.started(outer)
            while True:
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    _, _, key, state, batch = heapq.heappop(heap)
                    # A timer belongs to one batch: once that batch has started
                    # or been dropped, or its timer moved, the entry is a
                    # tombstone and does nothing.
                    if batch is None:
                        self._timer_stale -= 1
                        continue
                    batch.timer = None
                    batch.expired = True
                    if state.started < self._limits.max_key_concurrency:
                        self._start_ready(key, state, after_finish=False)
                    # Keep no reference to a key that may soon be forgotten.
                    key = state = batch = None
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                    self._timer_scope = scope
                    await trio.sleep_forever()

    # -- running a batch -------------------------------------------------------

    def _begin_processing(self, key: K, state: KeyState[I, _Task], batch: Batch[I, _Task]) -> bool:
        """Take the batch out of the queue (no item joins or leaves it after this)."""
        if not state.begin_processing(batch):
            return False
        if self._dispatch is not None:
            batch.processing_at = trio.current_time()
        if state.overflow:
            self._admit(key, state)
        return True

    async def _run_batch(self, key: K, state: KeyState[I, _Task], batch: Batch[I, _Task]) -> None:
        """Acquire, process and deliver one started batch; always frees its slot."""
        result: Sequence[Any] | _Failure | None = None
        # Left by an exception (teardown's Cancelled, or a BaseException from user
        # code): the block is going away, so this task starts nothing new.
        unwinding = True
        timed = self._deadline_margin is not None
        began = trio.current_time() if timed else 0.0
        if self._dispatch is not None:
            self._observe_start(key, batch)
        try:
            # A batch started while the block is being cancelled must not begin.
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._acquire is not None:
                result = await self._acquire_and_process(key, state, batch)
            elif self._begin_processing(key, state, batch):
                try:
                    result = await self._call_process(key, batch.inputs, ())
                except Exception as exc:
                    result = self._failure(BatchFailed, key, batch, exc)
            unwinding = False
        finally:
            self._finish_batch(key, state, batch, result, unwinding, began)

    @trio.lowlevel.enable_ki_protection
    def _finish_batch(
        self,
        key: K,
        state: KeyState[I, _Task],
        batch: Batch[I, _Task],
        result: Sequence[Any] | _Failure | None,
        unwinding: bool,
        began: float,
    ) -> None:
        """Free the batch's slot, deliver its outcomes, and start what may now start.

        Protected from KeyboardInterrupt: between freeing the slot and delivering,
        the batch is in no queue, so an interrupt there would leave its callers
        without an outcome.
        """
        waiters = state.finish(batch)
        if result is None:
            # Cancelled by teardown, or crashed with a BaseException (or dropped,
            # in which case there is nobody left to tell).
            result = _Failure(
                BatcherClosed,
                f"batcher {self._name!r} was closed before the batch completed",
                None,
            )
        failed_items = self._deliver(waiters, result)
        if self._deadline_margin is not None and batch.inputs and type(result) is not _Failure:
            elapsed = trio.current_time() - began
            average = self._batch_seconds
            self._batch_seconds = (
                elapsed if average is None else average + _EWMA_WEIGHT * (elapsed - average)
            )
        if self._dispatch is not None:
            self._observe_finish(key, batch, waiters, result, failed_items)
        if type(result) is _Failure and result.error_type is not BatcherClosed:
            logger.warning("%s", result.message)
        if state.overflow:
            self._admit(key, state)
        if not unwinding and state.waiting:
            self._start_ready(key, state, after_finish=True)
        self._forget_if_idle(key, state)

    async def _acquire_and_process(
        self, key: K, state: KeyState[I, _Task], batch: Batch[I, _Task]
    ) -> Sequence[Any] | _Failure | None:
        assert self._acquire is not None
        if batch.state != STARTING:
            return None  # dropped before a runner took it
        processing = False
        outputs: Sequence[Any] | None = None
        process_error: Exception | None = None
        try:
            with trio.CancelScope() as scope:
                # Withdrawing every item cancels this scope: acquisition stops.
                batch.scope = scope
                async with self._acquire(key) as resource:
                    batch.scope = None
                    if not self._begin_processing(key, state, batch):
                        return None  # dropped while acquiring: release, no process
                    processing = True
                    try:
                        outputs = await self._call_process(key, batch.inputs, (resource,))
                    except Exception as exc:
                        process_error = exc
                        raise
        except Exception as exc:
            if not processing:
                return self._failure(ResourceAcquisitionFailed, key, batch, exc)
            return self._failure(BatchFailed, key, batch, exc)
        if process_error is not None:
            # The resource's context manager swallowed process's exception.
            return self._failure(BatchFailed, key, batch, process_error)
        return outputs

    async def _call_process(self, key: K, inputs: list[I], extra: tuple[Any, ...]) -> Sequence[Any]:
        expected = len(inputs)
        awaitable = self._process(key, inputs, *extra)
        if type(awaitable) is not CoroutineType and not inspect.isawaitable(awaitable):
            raise _ContractViolation(
                f"process must be an async function, but it returned {type(awaitable).__name__}; "
                "run blocking work with trio.to_thread.run_sync inside an async process"
            )
        return _check_outputs(await awaitable, expected)

    def _failure(
        self, error_type: type[BatchError], key: K, batch: Batch[I, _Task], exc: Exception
    ) -> _Failure:
        where = f"batcher {self._name!r}, key {_key_repr.repr(key)}, batch of {len(batch.inputs)}"
        if isinstance(exc, _ContractViolation):
            return _Failure(ProcessorContractError, f"{exc} ({where})", None)
        what = "acquire raised" if error_type is ResourceAcquisitionFailed else "process raised"
        return _Failure(error_type, f"{what} {type(exc).__name__}: {exc} ({where})", exc)

    @staticmethod
    def _deliver(waiters: list[_Task | None], result: Sequence[Any] | _Failure) -> int:
        """Reschedule every waiting caller with its outcome; return items failed alone."""
        reschedule = trio.lowlevel.reschedule
        Value = outcome.Value
        if type(result) is _Failure:
            for task in waiters:
                if task is not None:
                    reschedule(task, outcome.Error(result.new_error()))
            return 0
        failed = 0
        for task, output in zip(waiters, result, strict=True):
            kind = type(output)
            if kind is Value:
                output = output.value
            elif kind is outcome.Error:
                failed += 1
                if task is not None:
                    error = ItemFailed(f"process failed this item: {output.error!r}")
                    error.__cause__ = output.error
                    reschedule(task, outcome.Error(error))
                continue
            if task is not None:
                reschedule(task, Value(output))
        return failed

    # -- observation -------------------------------------------------------------

    def _note_start(self, key: K, batch: Batch[I, _Task], started: int, after_finish: bool) -> None:
        """Record why and when a batch started (for observers and the debug log)."""
        reason = start_reason(self._policy, batch, started=started, after_finish=after_finish)
        batch.reason = reason
        batch.ident = new_id()
        batch.started_at = trio.current_time()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "batcher %r: batch of %d for key %s started (%s)",
                self._name,
                len(batch.inputs),
                _key_repr.repr(key),
                reason.value,
            )

    def _observe_start(self, key: K, batch: Batch[I, _Task]) -> None:
        assert self._dispatch is not None
        self._dispatch.emit(
            "batch_started",
            BatchStarted(
                self._name,
                key,
                batch.ident,
                len(batch.inputs),
                batch.reason,
                tuple(item_id for item_id, _ in batch.meta),
                batch.started_at,
            ),
        )

    def _observe_finish(
        self,
        key: K,
        batch: Batch[I, _Task],
        waiters: list[_Task | None],
        result: Sequence[Any] | _Failure,
        failed_items: int,
    ) -> None:
        assert self._dispatch is not None
        now = trio.current_time()
        processed = batch.processing_at is not None
        began = batch.processing_at if batch.processing_at is not None else now
        if batch.reason is None:
            # Never started: closed with the block.
            batch.ident = new_id()
            batch.started_at = now
        status = _OUTCOMES[result.error_type] if type(result) is _Failure else BatchOutcome.OK
        self._dispatch.emit(
            "batch_finished",
            BatchFinished(
                batcher=self._name,
                key=key,
                batch_id=batch.ident,
                size=len(batch.inputs) if processed else 0,
                reason=batch.reason,
                item_ids=tuple(item_id for item_id, _ in batch.meta),
                queue_waits=tuple(began - accepted for _, accepted in batch.meta),
                acquire_seconds=began - batch.started_at,
                process_seconds=now - began,
                outcome=status,
                failed_items=failed_items,
                abandoned=waiters.count(None) if processed else 0,
                time=now,
            ),
        )

    # -- the block ---------------------------------------------------------------

    def _begin_drain(self) -> None:
        """The body returned: refuse new items, make every queued batch ready."""
        self._closed = True
        self._draining = True
        self._stop_timers()
        for key, state in list(self._keys.items()):
            self._start_ready(key, state, after_finish=False)
        # Idle runners exit: from now on a runner with nothing to run returns.
        while self._idle_runners:
            self._wake_runner(self._idle_runners.pop())

    def _stop_timers(self) -> None:
        self._timer_heap.clear()
        self._timer_stale = 0
        self._uses_timer = False
        if self._timer_task_scope is not None:
            self._timer_task_scope.cancel()

    def _tear_down(self) -> None:
        """The body raised or was cancelled: cancel every batch task now."""
        self._closed = True
        self._torn_down = True
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _close_untaken(self, key: K, state: KeyState[I, _Task], batch: Batch[I, _Task]) -> None:
        """End a started batch that no runner took: as if its task had been cancelled."""
        if self._dispatch is not None:
            self._observe_start(key, batch)
        self._finish_batch(key, state, batch, None, True, 0.0)

    def _close(self) -> None:
        """After the nursery: anyone still parked gets :exc:`BatcherClosed`."""
        self._closed = True
        self._torn_down = True
        self._draining = False
        # Started batches no runner took before the nursery was cancelled.
        ready = self._ready
        while ready:
            key, state, batch, _ = ready.popleft()
            self._context.copy().run(self._close_untaken, key, state, batch)
        keys = self._keys
        self._keys = {}
        closed = _Failure(BatcherClosed, f"batcher {self._name!r} was closed", None)
        for key, state in keys.items():
            for batch in state.queued_batches():
                self._deliver(batch.waiters, closed)
                if self._dispatch is not None:
                    self._observe_finish(key, batch, batch.waiters, closed, 0)
                batch.waiters = []
                batch.inputs = []
            self._deliver([task for _, task, _, _ in state.overflow], closed)
            state.overflow.clear()


#: Weight of the newest batch in the moving average of batch durations.
_EWMA_WEIGHT = 0.2

#: Idle runner tasks a batcher keeps parked for the next batches; more exit.
_MAX_IDLE_RUNNERS = 16

_OUTCOMES = {
    BatchFailed: BatchOutcome.FAILED,
    ProcessorContractError: BatchOutcome.CONTRACT_ERROR,
    ResourceAcquisitionFailed: BatchOutcome.ACQUIRE_FAILED,
    BatcherClosed: BatchOutcome.CANCELLED,
}


@overload
def open_batcher(
    process: Callable[[K, list[I]], Awaitable[Sequence[O]]],
    *,
    acquire: None = None,
    policy: Policy = ...,
    limits: Limits = ...,
    name: str = ...,
    observers: Iterable[Observer] = ...,
) -> AbstractAsyncContextManager[Batcher[K, I, O]]: ...


@overload
def open_batcher(
    process: Callable[[K, list[I], R], Awaitable[Sequence[O]]],
    *,
    acquire: Callable[[K], AbstractAsyncContextManager[R]],
    policy: Policy = ...,
    limits: Limits = ...,
    name: str = ...,
    observers: Iterable[Observer] = ...,
) -> AbstractAsyncContextManager[Batcher[K, I, O]]: ...


def open_batcher(
    process: Callable[..., Awaitable[Sequence[O]]],
    *,
    acquire: Callable[[K], AbstractAsyncContextManager[Any]] | None = None,
    policy: Policy = Immediate(),  # noqa: B008 - frozen value, safe to share
    limits: Limits = Limits(),  # noqa: B008 - frozen value, safe to share
    name: str = "batcher",
    observers: Iterable[Observer] = (),
) -> AbstractAsyncContextManager[Batcher[Any, Any, O]]:
    """Open a batcher whose tasks live inside the ``async with`` block.

    ::

        async with trio_batch.open_batcher(process, policy=trio_batch.Size()) as batcher:
            output = await batcher.submit(key, item)

    Args:
        process: ``async (key, inputs) -> outputs``, or ``async (key, inputs,
            resource) -> outputs`` when ``acquire`` is given. ``inputs`` is a new
            list, in arrival order, that ``process`` may keep; it must return a
            sequence of exactly ``len(inputs)`` outputs, output *i* going to the
            caller of input *i*. Blocking or CPU-bound work belongs in
            :func:`trio.to_thread.run_sync` inside it.
        acquire: optional ``(key) -> async context manager``. It is entered in
            the batch's task before ``process`` is called and exited after
            ``process`` returns or fails (seeing its exception, so a transaction
            can roll back); the value it yields is passed as ``resource``.
        policy: when batches start: :class:`Immediate` (default), :class:`Size`,
            :class:`Duration` or :class:`Balanced`.
        limits: a :class:`Limits` value.
        name: used in logs, error messages, metrics and ``repr``.
        observers: objects implementing any of the :class:`Observer` hooks;
            each receives an event for every decision the batcher makes. With
            none (the default), observation costs nothing.

    Leaving the block is shutdown. If the body returns normally, the batcher
    *drains*: new :meth:`~Batcher.submit` calls raise :exc:`BatcherClosed`,
    every queued batch becomes ready at once whatever the policy (a partial
    ``Size`` batch is flushed, a ``Duration`` timer is not waited out) within
    ``max_key_concurrency``, and the block exits when every caller has its
    outcome. If the body raises or the block is cancelled, every batch task is
    cancelled at once, callers still waiting get :exc:`BatcherClosed`, and the
    body's exception propagates as itself, not wrapped in an exception group.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``policy`` cannot work within ``limits`` (``Balanced``
            with ``min_size_hint > max_batch_size``).
    """
    if not callable(process):
        raise TypeError(f"process must be an async callable, got {process!r}")
    if acquire is not None and not callable(acquire):
        raise TypeError(
            f"acquire must be None or a callable returning an async context manager, "
            f"got {acquire!r}"
        )
    if not isinstance(policy, POLICY_TYPES):
        raise TypeError(
            f"policy must be Immediate(), Size(), Duration(...) or Balanced(...), got {policy!r}"
        )
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a trio_batch.Limits, got {limits!r}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r}")
    check_compatible(policy, limits)
    if not isinstance(observers, Iterable):
        raise TypeError(f"observers must be an iterable of observers, got {observers!r}")
    return _open(Batcher(process, acquire, policy, limits, name, tuple(observers)))


@asynccontextmanager
async def _open(batcher: Batcher[K, I, O]) -> AsyncIterator[Batcher[K, I, O]]:
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            batcher._nursery = nursery
            batcher._context = contextvars.copy_context()
            if batcher._uses_timer:
                batcher._timer_task_scope = await nursery.start(batcher._run_timers)
            try:
                yield batcher
            except BaseException as exc:
                body_error = exc
                batcher._tear_down()
            else:
                batcher._begin_drain()
    except BaseExceptionGroup as group:
        # Our nursery's own tasks only raise BaseExceptions that are not
        # Exceptions (process raised KeyboardInterrupt, or a cancellation from
        # outside reached them). Never hand the caller a group made by our nursery.
        _, rest = group.split(trio.Cancelled)
        if rest is None:
            # Only cancellations: the body's own error wins; otherwise one
            # Cancelled stands for all (the enclosing scope catches it the same).
            _reraise(body_error if body_error is not None else _first_leaf(group))
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            _reraise(group.exceptions[0])
        raise
    finally:
        batcher._close()
    if body_error is not None:
        raise body_error


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _reraise(error: BaseException) -> None:
    """Raise ``error`` as itself, keeping the ``__context__`` it already had."""
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error, context
