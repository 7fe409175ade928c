"""Point-in-time snapshots of a batcher's state."""

from __future__ import annotations

from typing import final

import attrs

__all__ = ["BatcherStatistics"]


@final
@attrs.frozen
class BatcherStatistics:
    """What :meth:`Batcher.statistics` returns: a snapshot, not a live view.

    Every field is computed from the batcher's live structures when the snapshot
    is taken, so counts cannot drift: after all callers have their outcomes and
    no batch is running, every field is 0.
    """

    #: Keys with at least one batch queued or started. An idle key is forgotten
    #: at once, so this never grows with the number of keys ever seen.
    active_keys: int
    #: Items in batches that have not begun processing (waiting to start, or
    #: started and still acquiring their resource).
    queued_items: int
    #: Started batches: acquiring their resource or processing.
    processing_batches: int
    #: Callers waiting for room in their key's queue (``Overflow.WAIT``).
    waiting_submits: int
    #: Total cost of the items counted in ``queued_items``, with
    #: ``open_batcher(cost=...)``; 0 without a cost function.
    queued_cost: float = 0
