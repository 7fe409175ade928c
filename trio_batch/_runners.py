"""The runner pool: reusable tasks that run jobs (started batches), FIFO.

The pool knows nothing of keys, batches or policies. Jobs go in with
:meth:`RunnerPool.put`; each job's ``run()`` coroutine is run to its end by one
runner task, in a fresh copy of the context the pool was given, and a job that
no runner took before the pool's nursery went away is handed back by
:meth:`RunnerPool.untaken` so that its owner can end it.

Why runners, and not a task per job: a task spawn and exit costs several times
what parking and waking one does, and many small batches made that the
largest cost per item. Runners are reused: a job that does not block (a no-op
or cached ``process``) costs no task switch at all, because its runner goes
straight on to the next job. The first time a job blocks, its runner wakes (or
spawns) enough runners for every job still waiting for one, so no job waits
for another to finish before it can begin; the price is that those jobs begin
one scheduling round later than with a task each.

A step has a budget. A runner that has run jobs weighing ``MAX_STEP_WEIGHT``
(items) in one scheduler step without blocking yields once before the next
job, as if it had blocked. Without it, a queue of non-blocking batches would
run in one step: callers, timers and other keys would wait for all of it, and
the outcomes it delivers would pile up unconsumed (tens of thousands at once
with many callers), making the garbage collector run again and again over
every parked caller. Yielding lets the woken callers run, and the objects of
each step are freed before the next.

The same-round barrier. A job put by a task that is not a runner (a caller, the
timer task) must not begin in the scheduling round it was put in: its owner
promises that work submitted in that round still joins it. Each such put gets
a sequence number; each wake of a runner gets a later one, its *barrier*. A
runner takes a job at once only if the job is older than its barrier (the
runner was woken after the put, so it runs in a later round); otherwise it
yields once, with a new barrier, first. Jobs put from inside a runner's own
step (sequence 0) may begin at once: the owner decided that, not a caller.

Rejected alternatives: one worker task for everything (a bottleneck, and a
place for cancellations to jam, as Ray Serve found); memory channels between
the owner and the runners (a closed channel drops what it buffers, and the order
in which woken tasks run is not FIFO anyway).
"""

from __future__ import annotations

import contextvars
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, Protocol, final

import outcome
import trio

__all__ = ["MAX_IDLE_RUNNERS", "Job", "RunnerPool"]

# Looked up once: every wake of a runner uses it.
_reschedule = trio.lowlevel.reschedule

#: Idle runner tasks a pool keeps parked for the next jobs; more exit.
MAX_IDLE_RUNNERS = 16

#: A runner that has run jobs of this much weight (items) in one step without
#: blocking yields to the scheduler before it takes the next job.
MAX_STEP_WEIGHT = 100


class Job(Protocol):
    """Work for a runner: one coroutine, run to its end."""

    def run(self) -> Coroutine[Any, Any, None]:
        """The coroutine to run (it must handle its own exceptions)."""
        ...

    #: How much work the job was (items), read after it has run.
    weight: int


@final
class RunnerPool:
    """Runs jobs in reusable tasks of one nursery, oldest job first.

    ``context`` is copied for every job, so a context variable set while one
    job runs is never seen by another. Every runner lives in ``nursery``.
    """

    __slots__ = (
        "_context",
        "_driving",
        "_exit_when_idle",
        "_idle",
        "_jobs",
        "_name",
        "_nursery",
        "_pending",
        "_sequence",
        "_stopped",
    )

    def __init__(self, nursery: trio.Nursery, context: contextvars.Context, name: str) -> None:
        self._nursery = nursery
        self._context = context
        self._name = name
        # Jobs no runner has taken yet, oldest first, each with the sequence
        # number of its put (0: put from inside a runner's own step).
        self._jobs: deque[tuple[Job, int]] = deque()
        # Orders puts by other tasks against runners' barriers.
        self._sequence = 0
        # Runner tasks parked with nothing to run (most recently parked last).
        self._idle: list[trio.lowlevel.Task] = []
        # Runners woken or spawned that have not yet looked at ``_jobs``.
        self._pending = 0
        # A runner is inside a step of a job: it will look at ``_jobs`` before
        # that step ends, so nobody needs waking.
        self._driving = False
        # Runners with nothing to run exit instead of parking.
        self._exit_when_idle = False
        # No more hand-overs: the nursery is being cancelled.
        self._stopped = False

    def __len__(self) -> int:
        """Jobs put and not yet taken by a runner."""
        return len(self._jobs)

    @property
    def idle_runners(self) -> int:
        """Runner tasks parked with nothing to run."""
        return len(self._idle)

    def put(self, new: Iterable[Job]) -> None:
        """Queue ``new`` jobs (in order) and see that a runner will take them.

        Put from a task that is not a runner, they are not begun before the
        next scheduling round.
        """
        if self._driving:
            sequence = 0
        else:
            self._sequence += 1
            sequence = self._sequence
        jobs = self._jobs
        for job in new:
            jobs.append((job, sequence))
        if not self._pending and not self._driving:
            self._add_runner()

    def exit_when_idle(self) -> None:
        """From now on a runner with nothing to run exits; wake the idle ones."""
        self._exit_when_idle = True
        while self._idle:
            self._wake(self._idle.pop())

    def stop(self) -> None:
        """The nursery is being cancelled: hand nothing over any more."""
        self._stopped = True

    def untaken(self) -> list[Job]:
        """Remove and return the jobs no runner took (after the nursery is gone)."""
        jobs = [job for job, _ in self._jobs]
        self._jobs.clear()
        return jobs

    # -- runners ---------------------------------------------------------------

    def _add_runner(self) -> None:
        """Wake an idle runner, or spawn one, to take what is in ``_jobs``."""
        if self._idle:
            self._wake(self._idle.pop())
        else:
            self._pending += 1
            self._sequence += 1
            # In the pool's context: a task copies the context it is spawned in.
            self._context.run(self._spawn, self._sequence)

    def _wake(self, task: trio.lowlevel.Task) -> None:
        """Reschedule an idle runner, with a barrier later than every put so far."""
        self._pending += 1
        self._sequence += 1
        _reschedule(task, outcome.Value(self._sequence))

    def _spawn(self, barrier: int) -> None:
        self._nursery.start_soon(self._runner, barrier, name=self._name)

    async def _runner(self, barrier: int) -> None:
        """Run jobs one after another; park when there are none (see the module doc)."""
        jobs = self._jobs
        idle = self._idle
        task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            self._pending -= 1
            # Weight of the jobs run in this scheduler step so far.
            step_weight = 0
            while jobs:
                job, sequence = jobs[0]
                if sequence > barrier or step_weight >= MAX_STEP_WEIGHT:
                    # Put in this round, perhaps, or this step has run long
                    # enough: look again in the next round.
                    barrier = await self._yield_once()
                    step_weight = 0
                    continue
                jobs.popleft()
                blocked = await self._drive(job.run())
                # A job that blocked began a new step when it resumed.
                step_weight = (0 if blocked else step_weight) + job.weight
                # Keep nothing of a job while this runner is idle.
                job = None  # type: ignore[assignment]
            if self._exit_when_idle or len(idle) >= MAX_IDLE_RUNNERS:
                return
            idle.append(task)
            barrier = await trio.lowlevel.wait_task_rescheduled(abort)

    async def _yield_once(self) -> int:
        """Let every other runnable task run once; return the runner's new barrier.

        Meanwhile the runner counts as pending, so a put does not wake another.
        """
        self._pending += 1
        self._sequence += 1
        barrier = self._sequence
        await trio.lowlevel.cancel_shielded_checkpoint()
        self._pending -= 1
        return barrier

    @types.coroutine
    def _drive(self, coro: Coroutine[Any, Any, None]) -> Generator[Any, Any, bool]:
        """Run one job's coroutine in this runner's task, in a context of its own.

        Each step runs in a fresh copy of the pool's context, as if the job had
        a task of its own. Every time the job blocks, jobs still in ``_jobs``
        are handed to other runners. (``yield from`` cannot be used: every
        step must run inside ``Context.run``.)
        """
        run = self._context.copy().run
        send: Callable[[Any], Any] = coro.send
        value: Any = None
        error: BaseException | None = None
        blocked = False
        while True:
            self._driving = True
            try:
                trap = run(send, value) if error is None else run(coro.throw, error)
            except StopIteration:
                return blocked
            finally:
                self._driving = False
                error = None  # no cycle through this frame's traceback
            jobs = self._jobs
            if jobs and self._pending < len(jobs) and not self._stopped:
                for _ in range(len(jobs) - self._pending):
                    self._add_runner()
            blocked = True
            try:
                value = yield trap
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                error = exc
            else:
                error = None
