"""Deduplication: callers whose items have the same identity share one input slot.

This is the pure part of ``open_batcher(dedupe=...)``, as plain data with no
Trio and no clock, like :mod:`trio_batch._key_state` which it extends. In the
order things happen:

* The batcher computes an item's *identity* (the item itself for
  ``dedupe=True``, ``dedupe(item)`` for a function) and hashes it, in the
  caller's task, before anything is queued: an identity function that raises
  or an unhashable identity fails that submit only (:func:`identity_of`).
* :meth:`SharingKeyState.share` looks the identity up among the slots of the
  key's *unfinished* batches (queued, acquiring or processing). If there is
  one, the caller joins it as one more member: the batch does not change, so
  nothing is counted, started, rejected or opened.
* Otherwise the caller's item goes into the queue as usual, in a new
  :class:`Slot` with the caller as its only member. A batch's ``waiters`` are
  slots, so ``inputs[i]`` belongs to ``waiters[i].members``: a shared slot is
  one input, and counts once toward ``max_batch_size``, ``max_batch_cost``
  (its cost is its first item's; the batcher never calls ``cost`` for a
  sharer) and the queue bound.
* A member cancelled before processing leaves its slot
  (:meth:`SharingKeyState.leave`); the slot is withdrawn from its batch only
  when its last member leaves.
* When the batch finishes (or is withdrawn whole, or cancelled because every
  caller gave up), its slots stop being shareable. The batcher then hands
  output *i* to every member of slot *i* (:func:`spread`).

Items waiting for room (``Overflow.WAIT``) are in no batch, so nobody shares
with them; when one is admitted it shares a slot that appeared meanwhile
(:meth:`SharingKeyState.admit_shared`), as a submit arriving then would.

Invariants (checked by the state machine in ``tests/test_properties_key_state.py``):

* ``slots`` maps each identity to the one slot of an unfinished batch that
  has it, and every slot of an unfinished batch with members is in ``slots``,
  unless that batch has been given up (:meth:`SharingKeyState.unshare`).
* A slot in a batch that has not begun processing has at least one member.

Rejected alternatives: a ``_Waiter`` that points to its sharers (withdrawing
the first caller would mean promoting another into the batch's lists);
deduplicating inside a batch only, when ``process`` is called (a duplicate
would still count toward the size and queue limits, could be rejected, and
would not share with a batch that is already processing); and a slot object
per item when ``dedupe`` is off (the plain hot path keeps its own waiters).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from ._key_state import Batch, KeyState
from ._policies import Limits, Policy

__all__ = ["SharingKeyState", "Slot", "forget_slots", "identity_of", "members", "spread"]

I = TypeVar("I")  # noqa: E741 - conventional name for the input type
W = TypeVar("W")


def identity_of(dedupe: Callable[[Any], Hashable] | None, item: Any) -> Hashable:
    """The item's identity, checked to be hashable.

    ``dedupe`` is ``None`` when the item itself is its identity. An exception
    from ``dedupe`` propagates unchanged.

    Raises:
        TypeError: the identity is not hashable.
    """
    identity = item if dedupe is None else dedupe(item)
    try:
        hash(identity)
    except TypeError:
        what = "item" if dedupe is None else "identity returned by dedupe"
        raise TypeError(
            f"{what} must be hashable to be deduplicated or cached, got {type(identity).__name__}"
        ) from None
    return identity


class Slot(Generic[W]):
    """One input of a batch, and every caller waiting for its output."""

    __slots__ = ("batch", "identity", "members")

    def __init__(self, identity: Hashable, first: W) -> None:
        self.identity = identity
        #: The callers sharing this input, in arrival order (found by identity).
        self.members: list[W] = [first]
        #: The batch it is in; ``None`` while it waits for room.
        self.batch: Batch[Any, Slot[W]] | None = None

    def __repr__(self) -> str:
        return f"<Slot members={len(self.members)}>"


class SharingKeyState(KeyState[I, Slot[W]]):
    """A key's queue whose batches hold :class:`Slot` s that callers can share."""

    __slots__ = ("slots",)

    def __init__(self) -> None:
        super().__init__()
        # Identity -> its slot in an unfinished batch of this key.
        self.slots: dict[Hashable, Slot[W]] = {}

    def share(self, identity: Hashable, waiter: W) -> Slot[W] | None:
        """Add ``waiter`` to the slot with this identity, if an unfinished batch has one."""
        slot = self.slots.get(identity)
        if slot is not None:
            slot.members.append(waiter)
        return slot

    def add(
        self, item: I, waiter: Slot[W], policy: Policy, limits: Limits
    ) -> Batch[I, Slot[W]] | None:
        """Queue a new slot as :meth:`KeyState.add` does, and make it shareable."""
        batch = super().add(item, waiter, policy, limits)
        if batch is not None:
            waiter.batch = batch
            self.slots[waiter.identity] = waiter
        return batch

    def add_costed(
        self, item: I, waiter: Slot[W], cost: float, policy: Policy, limits: Limits
    ) -> Batch[I, Slot[W]] | None:
        """Queue a new slot as :meth:`KeyState.add_costed` does, and make it shareable.

        The slot's cost is its first item's: sharers add none.
        """
        batch = super().add_costed(item, waiter, cost, policy, limits)
        if batch is not None:
            waiter.batch = batch
            self.slots[waiter.identity] = waiter
        return batch

    def leave(self, slot: Slot[W], waiter: W) -> bool:
        """A member of a slot not yet processing gave up; ``True`` if it was the last.

        The caller must then withdraw the slot from its batch
        (:meth:`KeyState.withdraw`).
        """
        members = slot.members
        for index, member in enumerate(members):
            if member is waiter:
                del members[index]
                return not members
        raise ValueError("not a member of this slot")

    def withdraw(self, batch: Batch[I, Slot[W]], waiter: Slot[W]) -> bool:
        """Withdraw a slot whose members have all left; it is no longer shareable."""
        self._forget(waiter)
        return super().withdraw(batch, waiter)

    def finish(
        self, batch: Batch[I, Slot[W]], *, now: float = 0.0, timed: bool = False
    ) -> list[Slot[W]]:
        """End a started batch as :meth:`KeyState.finish` does; its slots are no longer shared."""
        self.unshare(batch)
        return super().finish(batch, now=now, timed=timed)

    def unshare(self, batch: Batch[I, Slot[W]]) -> None:
        """Nobody may join ``batch`` any more (it ends, or was given up)."""
        slots = self.slots
        for slot in batch.waiters:
            if slots.get(slot.identity) is slot:
                del slots[slot.identity]

    def admit_shared(
        self, policy: Policy, limits: Limits
    ) -> list[tuple[W, Slot[W], Batch[I, Slot[W]], bool]]:
        """Admit callers waiting for room, oldest first, as :meth:`KeyState.admit`.

        Each waiting entry is a one-member slot. An admitted caller whose
        identity is now in an unfinished batch joins that slot instead of
        taking room. Returns ``(waiter, slot, batch, shared)`` per admitted caller.
        """
        admitted: list[tuple[W, Slot[W], Batch[I, Slot[W]], bool]] = []
        overflow = self.overflow
        while overflow:
            item, slot, cost = overflow[0]
            waiter = slot.members[0]
            existing = self.share(slot.identity, waiter)
            if existing is not None:
                assert existing.batch is not None
                overflow.popleft()
                admitted.append((waiter, existing, existing.batch, True))
                continue
            if cost is None:
                batch = self.add(item, slot, policy, limits)
            else:
                batch = self.add_costed(item, slot, cost, policy, limits)
            if batch is None:
                break
            overflow.popleft()
            admitted.append((waiter, slot, batch, False))
        return admitted

    def _forget(self, slot: Slot[W]) -> None:
        if self.slots.get(slot.identity) is slot:
            del self.slots[slot.identity]


def members(slots: Iterable[Slot[W]]) -> list[W]:
    """Every caller of these slots, slot by slot."""
    return [waiter for slot in slots for waiter in slot.members]


def spread(slots: Sequence[Slot[W]], outputs: Sequence[Any]) -> tuple[list[W], list[Any]]:
    """Output *i* for every member of slot *i*: aligned lists of callers and outputs."""
    callers: list[W] = []
    values: list[Any] = []
    for slot, output in zip(slots, outputs, strict=True):
        for waiter in slot.members:
            callers.append(waiter)
            values.append(output)
    return callers, values


def forget_slots(slots: Iterable[Slot[Any]]) -> None:
    """A batch has ended: break the cycles between its slots, their members and it.

    A member refers to its slot and the slot to its members and its batch;
    breaking the cycles lets reference counting free them all as the callers
    resume, instead of leaving them to the garbage collector.
    """
    for slot in slots:
        slot.members = []
        slot.batch = None
