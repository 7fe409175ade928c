"""Two leaner yardsticks for one key: the *lean floor* and the *bare limit*.

The existing floor (``_floor``) groups by key and keeps a small object per call;
these two serve one key only and do even less, so that the cost of trio_batch at
scale (workload f: 100 to 10,000 parked callers) can be set against the least a
batcher costs, not only against a plausible hand-written one.

* **Lean floor** (:func:`open_lean_floor`): one unbounded memory channel and one
  worker task. ``submit`` sends ``(item, box)`` with ``box = [trio.Event()]`` and
  waits on the event; the worker takes the first call, then up to
  ``max_batch_size - 1`` more with ``receive_nowait``, calls ``process`` on the
  items, appends each output to its box and sets its event. No grouping by key,
  no error handling.
* **Bare limit** (:func:`open_bare_limit`): one park and one wake per item.
  ``submit`` appends ``(item, current_task())`` to a list, wakes the worker if it
  is parked, and parks with :func:`trio.lowlevel.wait_task_rescheduled`; the
  worker takes up to ``max_batch_size`` entries, processes them and reschedules
  each caller with ``outcome.Value(output)``. Nothing else: a parked caller
  cannot be cancelled (its abort function refuses), and an exception from
  ``process`` kills the worker.

Both ignore the key given to ``submit`` and pass the key they were opened with
to ``process``: they are yardsticks for the one-key workloads, not batchers.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import outcome
import trio

__all__ = ["BareLimit", "LeanFloor", "open_bare_limit", "open_lean_floor"]

K = TypeVar("K")
I = TypeVar("I")  # noqa: E741 - conventional name for the input type
O = TypeVar("O")  # noqa: E741 - conventional name for the output type

Process = Callable[[K, list[I]], Awaitable[Sequence[O]]]


class LeanFloor(Generic[K, I, O]):
    """What :func:`open_lean_floor` yields: only ``submit``."""

    __slots__ = ("_send",)

    def __init__(self, send: trio.MemorySendChannel[tuple[I, list[Any]]]) -> None:
        self._send = send

    async def submit(self, key: K, item: I) -> O:
        box: list[Any] = [trio.Event()]
        self._send.send_nowait((item, box))
        await box[0].wait()
        return box[1]  # type: ignore[no-any-return]


async def _lean_worker(
    receive: trio.MemoryReceiveChannel[tuple[I, list[Any]]],
    process: Process[K, I, O],
    key: K,
    max_batch_size: int,
) -> None:
    async for first in receive:
        calls = [first]
        try:
            while len(calls) < max_batch_size:
                calls.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass
        outputs = await process(key, [item for item, _ in calls])
        for (_, box), output in zip(calls, outputs, strict=True):
            box.append(output)
            box[0].set()
        del first, calls, outputs  # hold no call while idle


@asynccontextmanager
async def open_lean_floor(
    process: Process[K, I, O], *, key: K, max_batch_size: int
) -> AsyncIterator[LeanFloor[K, I, O]]:
    """Run the lean floor for the block; leaving it processes what is queued."""
    send, receive = trio.open_memory_channel[tuple[I, list[Any]]](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_lean_worker, receive, process, key, max_batch_size)
        async with send:
            yield LeanFloor(send)


def _refuse(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class BareLimit(Generic[K, I, O]):
    """What :func:`open_bare_limit` yields: ``submit``, and the worker behind it."""

    __slots__ = ("_closed", "_idle_worker", "_key", "_max_batch_size", "_pending", "_process")

    def __init__(self, process: Process[K, I, O], key: K, max_batch_size: int) -> None:
        self._process = process
        self._key = key
        self._max_batch_size = max_batch_size
        self._pending: list[tuple[I, trio.lowlevel.Task]] = []
        self._idle_worker: trio.lowlevel.Task | None = None
        self._closed = False

    async def submit(self, key: K, item: I) -> O:
        self._pending.append((item, trio.lowlevel.current_task()))
        self._wake()
        return await trio.lowlevel.wait_task_rescheduled(_refuse)  # type: ignore[no-any-return]

    def _wake(self) -> None:
        worker = self._idle_worker
        if worker is not None:
            self._idle_worker = None
            trio.lowlevel.reschedule(worker)

    def close(self) -> None:
        """The worker returns once nothing is pending."""
        self._closed = True
        self._wake()

    async def run(self) -> None:
        """The worker: batches of up to ``max_batch_size``, parking while there are none."""
        reschedule = trio.lowlevel.reschedule
        size = self._max_batch_size
        while True:
            pending = self._pending
            if not pending:
                if self._closed:
                    return
                self._idle_worker = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(_refuse)
                continue
            if len(pending) <= size:
                batch, self._pending = pending, []
            else:
                batch = pending[:size]
                del pending[:size]
            outputs = await self._process(self._key, [item for item, _ in batch])
            for (_, task), output in zip(batch, outputs, strict=True):
                reschedule(task, outcome.Value(output))
            del pending, batch, outputs  # hold no call while idle


@asynccontextmanager
async def open_bare_limit(
    process: Process[K, I, O], *, key: K, max_batch_size: int
) -> AsyncIterator[BareLimit[K, I, O]]:
    """Run the bare limit for the block; leaving it processes what is pending."""
    bare = BareLimit(process, key, max_batch_size)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bare.run)
        try:
            yield bare
        finally:
            bare.close()
