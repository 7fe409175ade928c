"""Observers: a typed hook for every decision a batcher makes, free when unused.

A batcher built with ``observers=()`` (the default) builds no event and reads
no clock for observation: the hot path pays one truth test. With observers, each
hook receives an immutable event synchronously: ``item_accepted`` and
``item_rejected`` in the caller's task (so an observer can read the caller's
context, e.g. its tracing span); ``item_withdrawn`` while Trio delivers the
caller's cancellation (in whichever task caused it); ``batch_started``
in the task that runs the batch, as it begins (before ``acquire``), and
``batch_finished`` in that task after every caller has its outcome.

An observer that raises is logged (``trio_batch`` logger, with traceback) and
removed from that batcher: observation can never break batching. Hooks must
not block; they are plain functions, not coroutines.

Items and batches are identified by ``item_id`` and ``batch_id``, integers unique
within the process, so an observer (even one shared by several batchers) can
connect an item's acceptance with the batch it ends up in, and a batch's start
with its end.

Contexts: ``item_accepted`` runs in the caller's context (for ``Overflow.WAIT``,
a copy of the caller's context taken when it began to wait). ``batch_started``
and ``batch_finished`` run in the batch's own context, a fresh copy of the
context that entered the ``async with`` block, never a caller's and never
another batch's; a contextvar that ``batch_started`` sets is seen by
``acquire`` and ``process`` of that batch only.
"""

from __future__ import annotations

import enum
import inspect
import itertools
import logging
from collections.abc import Iterable
from typing import Any, Protocol, final

import attrs

from ._outcomes import safe_repr
from ._policies import StartReason

__all__ = [
    "BatchFinished",
    "BatchOutcome",
    "BatchStarted",
    "CacheHit",
    "ItemAccepted",
    "ItemRejected",
    "ItemWithdrawn",
    "Observer",
]

logger = logging.getLogger("trio_batch")

#: Ids of items and batches, unique within the process.
new_id = itertools.count().__next__


class BatchOutcome(enum.Enum):
    """How a started batch ended (in :class:`BatchFinished`)."""

    #: ``process`` returned a valid sequence (some items may still have failed
    #: individually; see :attr:`BatchFinished.failed_items`).
    OK = "ok"
    #: ``process`` (or releasing the resource) raised: callers got BatchFailed.
    FAILED = "failed"
    #: ``process`` broke its contract: callers got ProcessorContractError.
    CONTRACT_ERROR = "contract_error"
    #: Entering ``acquire(key)`` raised: callers got ResourceAcquisitionFailed.
    ACQUIRE_FAILED = "acquire_failed"
    #: The batch was dropped (every caller withdrew while it was acquiring) or
    #: torn down with the block (its callers got BatcherClosed).
    CANCELLED = "cancelled"


@final
@attrs.frozen
class ItemAccepted:
    """An item joined a batch (for ``Overflow.WAIT``: when it was admitted)."""

    #: The batcher's ``name``.
    batcher: str
    #: The key the item was submitted under.
    key: Any
    #: Identifies the item in later events; unique within the process.
    item_id: int
    #: ``trio.current_time()`` when it was accepted.
    time: float
    #: With ``dedupe``: the ``item_id`` of the item whose input this one shares
    #: (it joined that item's batch without adding an input); ``None`` for an
    #: item that brought its own input.
    shares_with: int | None = None


@final
@attrs.frozen
class CacheHit:
    """``submit`` found the item's output in the ``cache``; nothing was queued."""

    #: The batcher's ``name``.
    batcher: str
    #: The key the item was submitted under.
    key: Any
    #: Identifies the item; unique within the process.
    item_id: int
    #: ``trio.current_time()`` when it was answered.
    time: float


@final
@attrs.frozen
class ItemRejected:
    """An item was rejected with :exc:`~trio_batch.Rejected`; nothing was queued."""

    #: The batcher's ``name``.
    batcher: str
    #: The key the item was submitted under.
    key: Any
    #: ``trio.current_time()`` when it was rejected.
    time: float


@final
@attrs.frozen
class ItemWithdrawn:
    """A caller was cancelled before its item's batch began processing."""

    #: The batcher's ``name``.
    batcher: str
    #: The key the item was submitted under.
    key: Any
    #: The id it was accepted with.
    item_id: int
    #: ``trio.current_time()`` when it was withdrawn.
    time: float
    #: Seconds between the item's acceptance and its withdrawal.
    waited: float


@final
@attrs.frozen
class BatchStarted:
    """A batch started: it will now acquire its resource (if any) and be processed.

    Emitted in the task that runs the batch, in the batch's own context, as it
    begins, before ``acquire``.
    """

    #: The batcher's ``name``.
    batcher: str
    #: The key of every item in the batch.
    key: Any
    #: Identifies the batch in its :class:`BatchFinished`; unique within the process.
    batch_id: int
    #: Items in the batch as its task begins (it may still grow while acquiring);
    #: with ``dedupe``, inputs (a shared input counts once).
    size: int
    #: The rule that started it.
    reason: StartReason
    #: The ids of its items so far, in arrival order; with ``dedupe``, input by
    #: input, each followed by the items that share it.
    item_ids: tuple[int, ...]
    #: ``trio.current_time()`` when the policy started it.
    time: float
    #: The total cost of its items so far, with ``open_batcher(cost=...)``;
    #: ``None`` without a cost function.
    cost: float | None = None


@final
@attrs.frozen
class BatchFinished:
    """A batch ended; every caller of it has its outcome.

    Emitted for every batch that emitted :class:`BatchStarted`, and also, with
    ``reason=None`` and outcome ``CANCELLED``, for a batch that never started
    because the block was torn down (its callers got ``BatcherClosed``).
    """

    #: The batcher's ``name``.
    batcher: str
    #: The key of every item in the batch.
    key: Any
    #: The id of its :class:`BatchStarted` (or a new one if it never started).
    batch_id: int
    #: Items passed to ``process`` (0 if it never got that far).
    size: int
    #: The rule that started it; ``None`` if it never started.
    reason: StartReason | None
    #: The ids of its items, in arrival order (withdrawn items excluded); with
    #: ``dedupe``, input by input, each followed by the items that share it.
    item_ids: tuple[int, ...]
    #: Per item, seconds from acceptance until ``process`` was called (or until
    #: the batch ended, if ``process`` never was); 0 for an item that shared an
    #: input after processing began.
    queue_waits: tuple[float, ...]
    #: Seconds from start until ``process`` was called (acquiring the resource).
    acquire_seconds: float
    #: Seconds ``process`` (and releasing the resource) took; 0 if not called.
    process_seconds: float
    #: How it ended.
    outcome: BatchOutcome
    #: Items that ``process`` failed individually (``outcome.Error`` outputs).
    failed_items: int
    #: Callers cancelled after processing began (their outputs were discarded).
    abandoned: int
    #: ``trio.current_time()`` when it ended.
    time: float
    #: The total cost of the items passed to ``process`` (0 if it never got
    #: that far), with ``open_batcher(cost=...)``; ``None`` without a cost function.
    cost: float | None = None


class Observer(Protocol):
    """Receives a batcher's events.

    Subclass it to inherit no-op hooks and override only those you need, or
    implement the methods you need structurally (any that is missing is not
    called). Hooks run synchronously and must
    not block. See :mod:`trio_batch.contrib` for Prometheus and OpenTelemetry.
    """

    def item_accepted(self, event: ItemAccepted) -> None:
        """An item joined a batch."""
        return

    def item_rejected(self, event: ItemRejected) -> None:
        """An item was rejected."""
        return

    def item_withdrawn(self, event: ItemWithdrawn) -> None:
        """A caller withdrew its item before processing began."""
        return

    def batch_started(self, event: BatchStarted) -> None:
        """A batch started."""
        return

    def batch_finished(self, event: BatchFinished) -> None:
        """A batch ended."""
        return

    def cache_hit(self, event: CacheHit) -> None:
        """An item's output came from the cache (nothing was queued)."""
        return


def _is_async(hook: object) -> bool:
    """``async def`` hooks (or callables whose ``__call__`` is one) would never run."""
    call = getattr(type(hook), "__call__", None)  # noqa: B004 - we want the async check
    return (
        inspect.iscoroutinefunction(hook)
        or inspect.isasyncgenfunction(hook)
        or inspect.iscoroutinefunction(call)
    )


_HOOKS = (
    "item_accepted",
    "item_rejected",
    "item_withdrawn",
    "batch_started",
    "batch_finished",
    "cache_hit",
)


@final
class Dispatch:
    """The observers of one batcher, as a list of bound hooks per event."""

    __slots__ = ("_hooks", "_name")

    def __init__(self, name: str, observers: Iterable[object]) -> None:
        self._name = name
        self._hooks: dict[str, list[tuple[object, Any]]] = {hook: [] for hook in _HOOKS}
        for observer in observers:
            found = False
            for hook in _HOOKS:
                method = getattr(observer, hook, None)
                if method is not None:
                    if not callable(method):
                        raise TypeError(f"observer {safe_repr(observer)}: {hook} must be callable")
                    if _is_async(method):
                        raise TypeError(
                            f"observer {safe_repr(observer)}: {hook} is an async function, but "
                            "observer hooks are synchronous (they are called, never awaited); "
                            "make it a plain def, and start any async work elsewhere"
                        )
                    self._hooks[hook].append((observer, method))
                    found = True
            if not found:
                raise TypeError(
                    f"observer {safe_repr(observer)} implements none of the hooks "
                    f"{', '.join(_HOOKS)}"
                )

    def emit(self, hook: str, event: object) -> None:
        """Call every observer's ``hook``; one that raises is logged and removed."""
        for observer, method in self._hooks[hook]:
            try:
                method(event)
            except Exception:
                logger.exception(
                    "batcher %r: observer %s raised in %s and was removed",
                    self._name,
                    safe_repr(observer),
                    hook,
                )
                self._remove(observer)

    def _remove(self, observer: object) -> None:
        for hook, entries in self._hooks.items():
            self._hooks[hook] = [entry for entry in entries if entry[0] is not observer]
