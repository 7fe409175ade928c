"""The error family.

Every failure that a batcher reports to a caller is a :exc:`BatchError`, so an
application can catch "the batcher could not give me an output" in one place and
still tell the reasons apart. Each caller receives its *own* exception instance
(never one object raised in many tasks, whose traceback would be shared); where
user code failed, that failure is the ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BatchError",
    "BatchFailed",
    "BatcherClosed",
    "ItemFailed",
    "ProcessorContractError",
    "Rejected",
    "ResourceAcquisitionFailed",
]


class BatchError(Exception):
    """Base class of every error a batcher raises from :meth:`Batcher.submit`.

    It does not cover :exc:`TypeError` for an unhashable key (a programming error
    at the call site) or :exc:`trio.Cancelled` for the caller's own cancellation.
    """


class Rejected(BatchError):
    """The key's queue was full, so the item was not accepted.

    Nothing was queued: the item will never be passed to ``process``. Raised when
    a new batch would be needed and the key already holds
    ``max_batch_queue_size`` batches that have not begun processing, or, with
    ``Duration(..., on_full=OnFull.REJECT)``, when the newest batch is full.
    """


class BatchFailed(BatchError):
    """``process`` raised (or releasing the batch's resource raised).

    ``__cause__`` is the exception from user code. Every caller of the batch gets
    its own :exc:`BatchFailed`; other batches are not affected.
    """


class ItemFailed(BatchError):
    """``process`` failed this caller's item alone.

    ``process`` returned ``outcome.Error(exc)`` at this item's position (instead
    of an output); ``__cause__`` is ``exc``. The other callers of the batch got
    their outputs: one bad item does not fail the batch.
    """


class ResourceAcquisitionFailed(BatchError):
    """Entering the ``acquire(key)`` context manager raised.

    ``__cause__`` is that exception. ``process`` was not called for this batch.
    """


class ProcessorContractError(BatchError):
    """``process`` broke its contract.

    It returned something that is not a sequence, a sequence whose length is not
    the number of inputs, or it was not an async function. Every caller of the
    batch gets this error, because no output can be matched to its input.
    """


class BatcherClosed(BatchError):
    """The batcher is closed, draining, or was torn down.

    Raised by :meth:`Batcher.submit` called after the ``async with`` block has
    exited or while it drains, and delivered to callers whose item was still
    waiting when the block was left by an exception or a cancellation. Like
    tower-batch's ``Closed``: the item's batch did not complete.
    """
