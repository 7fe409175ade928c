"""``submit_many``: many items, one parked caller.

:meth:`Batcher.submit_many <trio_batch.Batcher.submit_many>` must behave as
consecutive ``submit`` calls made in one scheduling round by different tasks
(same batches, same order, same rejection and waiting rules), without a task
per item: the caller parks once, however many items it has.

So each item is placed in its key's queue exactly as a ``submit`` would place
it, but stands for its caller with a *group item* (a waiter whose ``task`` is
always ``None``, so the batch's ordinary delivery skips it). When a batch
ends, the batcher settles each group item of it into its :class:`Group`
(:meth:`Group.settle_output`, or :meth:`Group.fail` with the item's own
exception for a failed batch). The group reschedules its
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

from ._outcomes import item_failure

__all__ = ["PENDING", "Group"]

#: An item of a group that has no output yet.
PENDING: Any = object()


@final
class Group:
    """The items of one ``submit_many`` call and its parked caller.

    Outputs and errors are kept raw (an ``outcome.Value`` per item would cost
    more than the rest of the item's way through the batcher); :meth:`results`
    builds outcomes only when the caller asked for them.
    """

    __slots__ = ("cancelled", "errors", "pending", "task", "values")

    def __init__(self, size: int) -> None:
        #: The parked caller; ``None`` before it parks and once it is woken.
        self.task: trio.lowlevel.Task | None = None
        #: The caller was cancelled: outcomes still to come are dropped.
        self.cancelled = False
        #: Each item's output; ``PENDING`` until it settles (or if it failed).
        self.values: list[Any] = [PENDING] * size
        #: Item index -> the exception its caller gets.
        self.errors: dict[int, BaseException] = {}
        #: Items without an outcome yet.
        self.pending = size

    def settled(self, index: int) -> bool:
        """Whether item ``index`` has its outcome."""
        return self.values[index] is not PENDING or index in self.errors

    def settle(self, index: int, value: Any) -> None:
        """Item ``index`` has its output; wake the caller when it was the last."""
        self.values[index] = value
        self._one_less()

    def fail(self, index: int, error: BaseException) -> None:
        """Item ``index`` failed with ``error`` (its own instance)."""
        self.errors[index] = error
        self._one_less()

    def settle_output(self, index: int, output: Any) -> None:
        """Item ``index`` got ``output`` from ``process`` (a value, or an outcome of one)."""
        kind = type(output)
        if kind is outcome.Value:
            self.settle(index, output.value)
        elif kind is outcome.Error:
            self.fail(index, item_failure(output.error))
        else:
            self.settle(index, output)

    def _one_less(self) -> None:
        self.pending -= 1
        if not self.pending and self.task is not None:
            task, self.task = self.task, None
            trio.lowlevel.reschedule(task, outcome.Value(None))

    def outcomes(self) -> list[outcome.Outcome[Any]]:
        """Every item's outcome, in item order (all settled)."""
        assert not self.pending
        errors = self.errors
        return [
            outcome.Error(errors[index]) if index in errors else outcome.Value(value)
            for index, value in enumerate(self.values)
        ]

    def outputs(self) -> list[Any]:
        """Every item's output, in item order; raise the first failure in item order."""
        assert not self.pending
        if self.errors:
            error = self.errors[min(self.errors)]
            try:
                raise error
            finally:
                del error
        return self.values
