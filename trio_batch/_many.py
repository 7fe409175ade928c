"""``submit_many``: many items, one parked caller.

:meth:`Batcher.submit_many <trio_batch.Batcher.submit_many>` must behave as
consecutive ``submit`` calls made in one scheduling round by different tasks
(same batches, same order, same rejection and waiting rules), without a task
per item: the caller parks once, however many items it has.

So each item is placed in its key's queue exactly as a ``submit`` would place
it, but stands for its caller with a *group item* (a waiter whose ``task`` is
always ``None``, so the batch's ordinary delivery skips it). When a batch
ends, the batcher settles each group item of it into its :class:`Group`
(:meth:`Group.settle`, with :func:`outcome_of` turning an output or a failed
batch into the item's own ``outcome.Outcome``). The group reschedules its
caller once, when its last item has settled. A cancelled caller withdraws every
item not yet processing, exactly as its own ``submit`` would have; items
already processing are abandoned, their outcomes dropped as they settle.

Rejected alternatives: a task per item in a nursery of the call (a spawn and
a park per item, the very cost batching is meant to avoid); a
``trio.Event`` per item (a park per item again, and the group would wake its
caller as many times); settling through ``deliver`` with a fake task (the
hot path would pay a type test per caller for a feature it does not use).
"""

from __future__ import annotations

from typing import Any, final

import outcome
import trio

from ._outcomes import Failure, item_failure

__all__ = ["Group", "outcome_of"]


def outcome_of(output: Any) -> outcome.Outcome[Any]:
    """The outcome a caller gets for ``output`` (a value, or an ``outcome`` of one)."""
    kind = type(output)
    if kind is outcome.Value:
        return outcome.Value(output.value)
    if kind is outcome.Error:
        return outcome.Error(item_failure(output.error))
    if kind is Failure:
        return outcome.Error(output.new_error())
    return outcome.Value(output)


@final
class Group:
    """The items of one ``submit_many`` call and its parked caller.

    ``task`` is ``None`` before the caller parks, and again once it has been
    woken or cancelled.
    """

    __slots__ = ("cancelled", "outcomes", "pending", "task")

    def __init__(self, size: int) -> None:
        self.task: trio.lowlevel.Task | None = None
        #: The caller was cancelled: outcomes still to come are dropped.
        self.cancelled = False
        self.outcomes: list[outcome.Outcome[Any] | None] = [None] * size
        #: Items without an outcome yet.
        self.pending = size

    def settle(self, index: int, result: outcome.Outcome[Any]) -> None:
        """Item ``index`` has its outcome; wake the caller when it was the last."""
        if self.outcomes[index] is not None:
            return
        self.outcomes[index] = result
        self.pending -= 1
        if not self.pending and self.task is not None:
            task, self.task = self.task, None
            trio.lowlevel.reschedule(task, outcome.Value(None))

    def results(self) -> list[outcome.Outcome[Any]]:
        """Every item's outcome, in item order (all settled)."""
        assert not self.pending
        return self.outcomes  # type: ignore[return-value]
