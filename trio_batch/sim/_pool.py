"""A simulated connection pool: the batcher's ``acquire``.

It behaves like a typical database pool: at most ``size`` connections exist;
a batch takes an idle one at once, or opens a new one (``connect`` seconds of
simulated time) while fewer than ``size`` exist, or waits for one to be
returned. Waiters are served first come, first served (a
:class:`trio.Semaphore` parks them in a FIFO :class:`trio.lowlevel.ParkingLot`).
Connections stay open once made; idle ones are reused most recently used first.

A batch whose callers all withdraw while it waits or connects is cancelled by
the batcher: the semaphore is released and a half-opened connection is
abandoned, so nothing leaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import final

import trio

__all__ = ["ConnectionPool"]


@final
class ConnectionPool:
    """Connections shared by all keys. Create one per Trio run.

    Args:
        size: the most connections open at once.
        connect_seconds: how long opening a connection takes.
    """

    def __init__(
        self,
        size: int,
        connect_seconds: float,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    ) -> None:
        self._sleep = sleep
        self._slots = trio.Semaphore(size)
        self._connect_seconds = connect_seconds
        self._idle: list[int] = []
        #: Times a batch obtained a connection.
        self.acquisitions = 0
        #: Connections opened (never more than ``size``).
        self.opened = 0

    @asynccontextmanager
    async def connection(self, key: object) -> AsyncIterator[int]:
        """Hold a connection (its number) for the duration of the block.

        ``key`` is the batch's key; every key shares the same connections.
        """
        async with self._slots:
            if self._idle:
                connection = self._idle.pop()
            else:
                await self._sleep(self._connect_seconds)
                connection = self.opened
                self.opened += 1
            self.acquisitions += 1
            try:
                yield connection
            finally:
                self._idle.append(connection)
