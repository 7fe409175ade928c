"""``open_batcher``: the one way in, and the way out of the block.

:func:`open_batcher` checks every argument at the boundary (a wrong type or an
impossible combination is an error here, never under load) and returns
:func:`_open`, an async context manager that opens the batcher's nursery and
only then builds the :class:`~trio_batch.Batcher` inside it, so the batcher
never has a field that is ``None`` "until later".

Leaving the block is shutdown, decided here: a body that returns starts the
drain and waits in the nursery's exit; a body that raises (or a cancellation
from outside) tears the batcher down. Because the nursery is hidden inside a
context manager, what leaves the block must be what the body raised, never an
exception group made by our own nursery: a group of only ``Cancelled`` comes
out as one ``Cancelled`` (the body's own exception wins over it), and a single
``KeyboardInterrupt`` or ``SystemExit`` from ``process`` as itself. After the
nursery, :meth:`Batcher._close` gives every caller still parked its
``BatcherClosed``.

Rejected alternative: a ``Batcher`` that is its own async context manager
(``async with Batcher(...)``): it would need a constructor that leaves the
nursery unset until ``__aenter__``, and two ways to make one.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    MutableMapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, overload

import trio

from ._batcher import Batcher, _Options
from ._observe import Dispatch, Observer
from ._policies import POLICY_TYPES, Immediate, Limits, Policy, check_compatible

__all__ = ["open_batcher"]

K = TypeVar("K")
I = TypeVar("I")  # noqa: E741 - conventional name for the input type
O = TypeVar("O")  # noqa: E741 - conventional name for the output type
R = TypeVar("R")


@overload
def open_batcher(
    process: Callable[[K, list[I]], Awaitable[Sequence[O]]],
    *,
    acquire: None = None,
    policy: Policy = ...,
    limits: Limits = ...,
    name: str = ...,
    observers: Iterable[Observer] = ...,
    cost: Callable[[I], float] | None = ...,
    dedupe: bool | Callable[[I], Hashable] = ...,
    cache: MutableMapping[Any, Any] | None = ...,
    cancel_abandoned: bool = ...,
) -> AbstractAsyncContextManager[Batcher[K, I, O]]: ...


@overload
def open_batcher(
    process: Callable[[K, list[I], R], Awaitable[Sequence[O]]],
    *,
    acquire: Callable[[K], AbstractAsyncContextManager[R]],
    policy: Policy = ...,
    limits: Limits = ...,
    name: str = ...,
    observers: Iterable[Observer] = ...,
    cost: Callable[[I], float] | None = ...,
    dedupe: bool | Callable[[I], Hashable] = ...,
    cache: MutableMapping[Any, Any] | None = ...,
    cancel_abandoned: bool = ...,
) -> AbstractAsyncContextManager[Batcher[K, I, O]]: ...


def open_batcher(
    process: Callable[..., Awaitable[Sequence[O]]],
    *,
    acquire: Callable[[K], AbstractAsyncContextManager[Any]] | None = None,
    policy: Policy = Immediate(),  # noqa: B008 - frozen value, safe to share
    limits: Limits = Limits(),  # noqa: B008 - frozen value, safe to share
    name: str = "batcher",
    observers: Iterable[Observer] = (),
    cost: Callable[[Any], float] | None = None,
    dedupe: bool | Callable[[Any], Hashable] = False,
    cache: MutableMapping[Any, Any] | None = None,
    cancel_abandoned: bool = False,
) -> AbstractAsyncContextManager[Batcher[Any, Any, O]]:
    """Open a batcher whose tasks live inside the ``async with`` block.

    ::

        async with trio_batch.open_batcher(process, policy=trio_batch.Size()) as batcher:
            output = await batcher.submit(key, item)

    Args:
        process: ``async (key, inputs) -> outputs``, or ``async (key, inputs,
            resource) -> outputs`` when ``acquire`` is given. ``inputs`` is a new
            list, in arrival order, that ``process`` may keep; it must return a
            sequence of exactly ``len(inputs)`` outputs, output *i* going to the
            caller of input *i*. Blocking or CPU-bound work belongs in
            :func:`trio.to_thread.run_sync` inside it.
        acquire: optional ``(key) -> async context manager``. It is entered in
            the batch's task before ``process`` is called and exited after
            ``process`` returns or fails (seeing its exception, so a transaction
            can roll back); the value it yields is passed as ``resource``.
        policy: when batches start: :class:`Immediate` (default), :class:`Size`,
            :class:`Duration`, :class:`Balanced` or :class:`Adaptive`.
        limits: a :class:`Limits` value.
        name: used in logs, error messages, metrics and ``repr``.
        observers: objects implementing any of the :class:`Observer` hooks
            (plain functions, not coroutines); each receives an event for every
            decision the batcher makes. With none (the default), observation
            costs nothing.
        cost: optional ``(item) -> int | float``, the cost of an item (its
            tokens, bytes, rows), called once per item inside
            :meth:`~Batcher.submit`, in the caller's task, before the item is
            queued; it is synchronous and should be quick (tokenize, measure).
            It must return a finite ``int`` or ``float`` >= 0 (``bool`` is not
            a number here; other real numbers, such as numpy's, are read as
            an ``int`` or ``float``); if it raises, ``submit`` raises that
            exception unchanged, and if it returns anything else, ``submit``
            raises :exc:`TypeError` or :exc:`ValueError`; either way nothing is
            queued and the batcher goes on. ``Limits(max_batch_cost=...)``
            bounds a batch's total cost: an item joins the newest batch only
            if it fits by count and by cost, and ``Limits(oversize=...)`` says
            what happens to an item whose cost alone exceeds the bound.
            Without ``max_batch_cost``, costs are only reported (observers,
            :meth:`~Batcher.statistics`). ``None`` (the default): no costs,
            at no cost.
        dedupe: ``True`` to let callers whose items are equal share one input
            of a batch, or a function ``(item) -> identity`` (e.g. ``lambda q:
            q.id``) to compare items by identity. An item whose identity is in
            a batch of its key that has not finished (queued, acquiring or
            processing) shares that input: ``process`` sees it once, every
            sharer gets the same output (or its own instance of the same
            error), and the shared input counts once toward every limit. A
            sharer never opens a batch and is never rejected for room.
        cache: a mutable mapping (a ``dict``, ``cachetools.LRUCache`` ...)
            holding outputs under ``(key, identity)`` (identity as for
            ``dedupe``; the item itself without it). A hit returns the output
            without queueing. Only successful outputs are stored, when their
            batch finishes; prime or clear it with mapping operations.
        cancel_abandoned: if true, a batch that is acquiring or processing is
            cancelled once every caller of it (every sharer included) has been
            cancelled: ``acquire`` and ``process`` see :exc:`trio.Cancelled`,
            the batch ends as cancelled, nothing of it is cached and its slot
            frees. By default such a batch runs to completion.

    Leaving the block is shutdown. If the body returns normally, the batcher
    *drains*: new :meth:`~Batcher.submit` calls raise :exc:`BatcherClosed`,
    every queued batch becomes ready at once whatever the policy (a partial
    ``Size`` batch is flushed, a ``Duration`` timer is not waited out) within
    ``max_key_concurrency``, and the block exits when every caller has its
    outcome. If the body raises or the block is cancelled, every batch task is
    cancelled at once, callers still waiting get :exc:`BatcherClosed`, and the
    body's exception propagates as itself, not wrapped in an exception group.

    A batcher belongs to the Trio run that opened it: :meth:`~Batcher.submit`
    from another run raises :exc:`RuntimeError`.

    Raises:
        TypeError: an argument has the wrong type (an observer hook that is an
            ``async def`` function included: hooks are synchronous).
        ValueError: ``policy`` cannot work within ``limits`` (``Balanced``
            with ``min_size_hint > max_batch_size``), or ``limits`` has a
            ``max_batch_cost`` but there is no ``cost`` function.
    """
    if not callable(process):
        raise TypeError(f"process must be an async callable, got {process!r}")
    if acquire is not None and not callable(acquire):
        raise TypeError(
            f"acquire must be None or a callable returning an async context manager, "
            f"got {acquire!r}"
        )
    if not isinstance(policy, POLICY_TYPES):
        raise TypeError(
            "policy must be Immediate(), Size(), Duration(...), Balanced(...) or "
            f"Adaptive(...), got {policy!r}"
        )
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a trio_batch.Limits, got {limits!r}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r}")
    check_compatible(policy, limits)
    if cost is not None and not callable(cost):
        raise TypeError(f"cost must be None or a callable (item) -> int | float, got {cost!r}")
    if cost is None and limits.max_batch_cost is not None:
        raise ValueError(
            f"max_batch_cost={limits.max_batch_cost!r} needs a cost function: pass "
            "open_batcher(cost=...), or leave max_batch_cost=None (there is nothing to bound)"
        )
    if not isinstance(observers, Iterable):
        raise TypeError(f"observers must be an iterable of observers, got {observers!r}")
    if not isinstance(dedupe, bool) and not callable(dedupe):
        raise TypeError(
            f"dedupe must be True, False or a function (item) -> identity, got {dedupe!r}"
        )
    if cache is not None and not isinstance(cache, MutableMapping):
        raise TypeError(
            f"cache must be None or a mutable mapping (a dict, a cachetools cache), got {cache!r}"
        )
    if not isinstance(cancel_abandoned, bool):
        raise TypeError(f"cancel_abandoned must be a bool, got {cancel_abandoned!r}")
    observers = tuple(observers)
    dispatch = Dispatch(name, observers) if observers else None
    options = _Options(
        process, acquire, policy, limits, name, dispatch, cost, dedupe, cache, cancel_abandoned
    )
    return _open(options)


@asynccontextmanager
async def _open(options: _Options) -> AsyncIterator[Batcher[Any, Any, Any]]:
    body_error: BaseException | None = None
    created: Batcher[Any, Any, Any] | None = None
    try:
        async with trio.open_nursery() as nursery:
            # Built once its nursery exists: no field is None "until later".
            batcher: Batcher[Any, Any, Any] = Batcher._create(options, nursery)
            created = batcher
            if batcher._timers is not None:
                await nursery.start(batcher._timers.run)
            try:
                yield batcher
            except BaseException as exc:
                body_error = exc
                batcher._tear_down()
            else:
                batcher._begin_drain()
    except BaseExceptionGroup as group:
        # Our nursery's own tasks only raise BaseExceptions that are not
        # Exceptions (process raised KeyboardInterrupt, or a cancellation from
        # outside reached them). Never hand the caller a group made by our nursery.
        _, rest = group.split(trio.Cancelled)
        if rest is None:
            # Only cancellations: the body's own error wins; otherwise one
            # Cancelled stands for all (the enclosing scope catches it the same).
            _reraise(body_error if body_error is not None else _first_leaf(group))
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            _reraise(group.exceptions[0])
        raise
    finally:
        if created is not None:
            created._close()
    if body_error is not None:
        raise body_error


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _reraise(error: BaseException) -> None:
    """Raise ``error`` as itself, keeping the ``__context__`` it already had."""
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error, context
