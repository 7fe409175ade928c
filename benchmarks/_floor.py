"""The floor: the least a Trio batcher can do, as a yardstick.

One unbounded memory channel, one worker task, one :class:`trio.Event` per call.
The worker takes whatever is in the channel, groups it by key and calls
``process`` once per key (in chunks of at most ``max_batch_size``), serially.

It has none of trio_batch's features: no limits, no policies, no per-key
concurrency, no error handling (an exception from ``process`` kills the worker),
and no withdrawal: a caller cancelled while it waits still has its item
processed. Its cost per item is the price of one channel send, one Event and a
dict lookup; a batcher cannot do much less and still be a batcher.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import trio

__all__ = ["FloorBatcher", "open_floor"]

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - conventional name for the input type
O = TypeVar("O")  # noqa: E741 - conventional name for the output type


class _Call(Generic[K, I, O]):
    __slots__ = ("event", "item", "key", "output")
    output: O

    def __init__(self, key: K, item: I) -> None:
        self.key = key
        self.item = item
        self.event = trio.Event()


class FloorBatcher(Generic[K, I, O]):
    """What :func:`open_floor` yields: only ``submit``."""

    __slots__ = ("_send",)

    def __init__(self, send: trio.MemorySendChannel[_Call[K, I, O]]) -> None:
        self._send = send

    async def submit(self, key: K, item: I) -> O:
        call: _Call[K, I, O] = _Call(key, item)
        self._send.send_nowait(call)
        await call.event.wait()
        return call.output


async def _worker(
    receive: trio.MemoryReceiveChannel[_Call[K, I, O]],
    process: Callable[[K, list[I]], Awaitable[Sequence[O]]],
    max_batch_size: int,
) -> None:
    async for first in receive:
        calls = [first]
        try:
            while True:
                calls.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass
        await _serve(calls, process, max_batch_size)
        del first, calls  # hold no call while idle


async def _serve(
    calls: list[_Call[K, I, O]],
    process: Callable[[K, list[I]], Awaitable[Sequence[O]]],
    max_batch_size: int,
) -> None:
    by_key: dict[K, list[_Call[K, I, O]]] = {}
    for call in calls:
        by_key.setdefault(call.key, []).append(call)
    for key, group in by_key.items():
        for start in range(0, len(group), max_batch_size):
            chunk = group[start : start + max_batch_size]
            outputs = await process(key, [call.item for call in chunk])
            for call, output in zip(chunk, outputs, strict=True):
                call.output = output
                call.event.set()


@asynccontextmanager
async def open_floor(
    process: Callable[[K, list[I]], Awaitable[Sequence[O]]], *, max_batch_size: int
) -> AsyncIterator[FloorBatcher[K, I, O]]:
    """Run the floor batcher for the block; leaving it processes what is queued."""
    send, receive = trio.open_memory_channel[_Call[K, I, O]](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_worker, receive, process, max_batch_size)
        async with send:
            yield FloorBatcher(send)
