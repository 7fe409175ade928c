"""Helpers for the tests: fakes, a harness, values shared by several files.

Trio keeps its test helpers in a module of their own (``_core/_tests/tutil.py``)
rather than in ``conftest.py``; so do we. Import them with ``from tutil import ...``
(pytest puts ``tests/`` on ``sys.path``). ``conftest.py`` holds only fixtures and
hooks.

Every example-based test runs on virtual time (the ``autojump_clock`` fixture),
so the fakes record ``trio.current_time()`` and the tests assert exact instants.

- :func:`harness` opens a batcher and a nursery for its callers and collects
  each caller's outcome in an :class:`Outcomes`; most tests start there.
- :class:`Recorder` is a fake ``process``, :class:`Resources` a fake
  ``acquire``, :class:`ResourceRecorder` a fake ``process`` for use with it,
  :class:`Events` a recording observer; :func:`raises_my_error`,
  :func:`returns_too_few` and :func:`never_called_with_resource` are the
  misbehaving ``process`` functions several files need.
- :class:`MappingLikeOutputs`, :class:`DataFrameLikeOutputs`,
  :class:`TensorLikeOutputs` and :class:`LyingLengthOutputs` are outputs that
  ``process`` may hand back in other shapes than a list (some readable by
  position, some not); :class:`UnprintableMixin` makes an exception whose
  ``str()`` and ``repr()`` raise, and :func:`safe_repr` prints anything.
- :func:`policies` is the one Hypothesis strategy for drawing a policy.
"""

from __future__ import annotations

import contextvars
import os
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeAlias

import outcome
import pytest
import trio
import trio.testing
from hypothesis import strategies as st

import trio_batch as tb

AnyPolicy: TypeAlias = tb.Immediate | tb.Size | tb.Duration | tb.Balanced | tb.Adaptive
AnyBatcher: TypeAlias = tb.Batcher[Any, Any, Any]

#: One of each policy, for a test body whose behaviour every policy shares.
ALL_POLICIES = [
    pytest.param(tb.Immediate(), id="immediate"),
    pytest.param(tb.Size(), id="size"),
    pytest.param(tb.Duration(0.5), id="duration"),
    pytest.param(tb.Duration(0.5, on_full=tb.OnFull.REJECT), id="duration-reject"),
    pytest.param(tb.Balanced(2), id="balanced"),
    pytest.param(tb.Adaptive(), id="adaptive"),
    pytest.param(tb.Adaptive(target_latency=0.2), id="adaptive-target"),
]


#: The same, for ``max_batch_size=1`` (a ``Balanced`` hint may not exceed it).
ALL_POLICIES_SIZE_ONE = [
    *(p for p in ALL_POLICIES if p.id != "balanced"),
    pytest.param(tb.Balanced(1), id="balanced"),
]


def rejects_when_full(policy: AnyPolicy) -> bool:
    """Whether ``policy`` rejects an item that finds the newest batch full."""
    return isinstance(policy, tb.Duration) and policy.on_full is tb.OnFull.REJECT


class MyError(Exception):
    """An error raised by user code in the tests."""


class MarkedFailures:
    """A fake ``process`` that records ``(key, inputs, start)`` and answers ``f"{key}:{x}"``
    after ``delay``; an input ``"x"`` fails alone (``outcome.Error(MyError("x"))``) and
    an input ``"boom"`` fails its whole batch (``MyError``)."""

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        self.calls: list[tuple[Any, list[Any], float]] = []

    async def __call__(self, key: Any, inputs: list[Any]) -> list[Any]:
        self.calls.append((key, list(inputs), trio.current_time()))
        await trio.sleep(self.delay)
        if "boom" in inputs:
            raise MyError("batch failed")
        return [outcome.Error(MyError(x)) if x == "x" else f"{key}:{x}" for x in inputs]


Call: TypeAlias = tuple[Hashable, list[Any], float]


class Recorder:
    """A fake ``process``: records every call and answers ``f"{key}:{x}"``.

    ``calls`` holds ``(key, inputs, start time)`` in the order calls began,
    ``finished`` the same with the end time, ``cancelled`` those cancelled while
    running. ``max_running[key]`` is the most calls of ``key`` seen at once.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[Call] = []
        self.finished: list[Call] = []
        self.cancelled: list[Call] = []
        self.running: Counter[Hashable] = Counter()
        self.max_running: Counter[Hashable] = Counter()
        self.max_running_total = 0

    async def __call__(self, key: Any, inputs: list[Any]) -> list[str]:
        self.calls.append((key, list(inputs), trio.current_time()))
        self.running[key] += 1
        self.max_running[key] = max(self.max_running[key], self.running[key])
        self.max_running_total = max(self.max_running_total, self.running.total())
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled.append((key, list(inputs), trio.current_time()))
            raise
        finally:
            self.running[key] -= 1
        self.finished.append((key, list(inputs), trio.current_time()))
        return [f"{key}:{x}" for x in inputs]

    def inputs(self, key: Hashable | None = None) -> list[list[Any]]:
        """The inputs of every call (of ``key`` if given), in start order."""
        return [inputs for k, inputs, _ in self.calls if key is None or k == key]

    def processed(self) -> list[Any]:
        """Every input ever passed to ``process``, flattened, in start order."""
        return [x for _, inputs, _ in self.calls for x in inputs]


class Outcomes:
    """Runs callers of ``submit`` and keeps what each one got, and when.

    Items must be unique and hashable across one ``Outcomes``.
    """

    def __init__(self) -> None:
        self.values: dict[Any, Any] = {}
        self.errors: dict[Any, BaseException] = {}
        self.times: dict[Any, float] = {}

    def spawn(
        self, nursery: trio.Nursery, batcher: AnyBatcher, key: Any, item: Any
    ) -> trio.CancelScope:
        """Start a caller now; return the cancel scope that wraps its ``submit``."""
        scope = trio.CancelScope()
        nursery.start_soon(self.submit, batcher, key, item, scope)
        return scope

    async def submit(
        self, batcher: AnyBatcher, key: Any, item: Any, scope: trio.CancelScope | None = None
    ) -> None:
        """Call ``batcher.submit(key, item)`` and record its outcome."""
        assert item not in self.times, f"item {item!r} submitted twice"
        with scope if scope is not None else trio.CancelScope():
            try:
                self.values[item] = await batcher.submit(key, item)
            except (tb.BatchError, TypeError) as exc:
                self.errors[item] = exc
            except trio.Cancelled as exc:
                self.errors[item] = exc
                raise
            finally:
                self.times[item] = trio.current_time()

    def error_types(self) -> dict[Any, type[BaseException]]:
        """``{item: type of its error}`` for the callers that got an error."""
        return {item: type(exc) for item, exc in self.errors.items()}


async def submit_in_order(
    nursery: trio.Nursery, outcomes: Outcomes, batcher: AnyBatcher, key: Any, items: Sequence[Any]
) -> None:
    """Spawn one caller per item, each parked before the next arrives (a known order)."""
    for item in items:
        outcomes.spawn(nursery, batcher, key, item)
        await trio.testing.wait_all_tasks_blocked()


def stats(batcher: AnyBatcher) -> tuple[int, int, int]:
    """``(active_keys, queued_items, processing_batches)`` right now."""
    s = batcher.statistics()
    return (s.active_keys, s.queued_items, s.processing_batches)


async def sleep_until(t: float) -> None:
    """Sleep until virtual time ``t``."""
    await trio.sleep_until(t)


Event: TypeAlias = tuple[str, Hashable, float]


class Resources:
    """A fake ``acquire``: records ``(what, key, time)`` events.

    ``what`` is ``"enter"`` when entering starts, ``"acquired"`` when the resource
    is handed out, ``"release"`` when the context manager exits normally and
    ``"release:<ExceptionType>"`` when it exits with an exception.
    ``held[key]`` counts resources of ``key`` that are being acquired or held.
    """

    def __init__(
        self,
        delay: float = 0.0,
        *,
        enter_error: Callable[[], BaseException] | None = None,
        exit_error: Callable[[], BaseException] | None = None,
    ) -> None:
        self.delay = delay
        self.enter_error = enter_error
        self.exit_error = exit_error
        self.events: list[Event] = []
        self.tasks: list[trio.lowlevel.Task] = []
        self.held: Counter[Hashable] = Counter()
        self.max_held: Counter[Hashable] = Counter()
        self._serial = 0

    def kinds(self) -> list[str]:
        return [what for what, _, _ in self.events]

    def times(self, what: str) -> list[float]:
        return [t for w, _, t in self.events if w == what]

    @asynccontextmanager
    async def __call__(self, key: Any) -> AsyncIterator[str]:
        self.tasks.append(trio.lowlevel.current_task())
        self.events.append(("enter", key, trio.current_time()))
        self.held[key] += 1
        self.max_held[key] = max(self.max_held[key], self.held[key])
        try:
            await trio.sleep(self.delay)
            if self.enter_error is not None:
                raise self.enter_error()
            self._serial += 1
            resource = f"resource-{key}-{self._serial}"
            self.events.append(("acquired", key, trio.current_time()))
            try:
                yield resource
            except BaseException as exc:
                self.events.append((f"release:{type(exc).__name__}", key, trio.current_time()))
                raise
            self.events.append(("release", key, trio.current_time()))
            if self.exit_error is not None:
                raise self.exit_error()
        finally:
            self.held[key] -= 1


class ResourceRecorder(Recorder):
    """A fake ``process(key, inputs, resource)`` that also records the resource."""

    def __init__(self, resources: Resources, delay: float = 0.0) -> None:
        super().__init__(delay)
        self.resources = resources
        self.seen: list[tuple[str, list[str]]] = []
        self.tasks: list[trio.lowlevel.Task] = []

    async def with_resource(self, key: Any, inputs: list[Any], resource: str) -> list[str]:
        # The resource must be acquired and not yet released when process runs.
        self.seen.append((resource, self.resources.kinds()))
        self.tasks.append(trio.lowlevel.current_task())
        return await self(key, inputs)


# --- a harness for the usual scaffolding ---------------------------------------


class Harness:
    """A batcher, a nursery for its callers, and what each caller got.

    Made by :func:`harness`. ``spawn`` and ``submit_in_order`` start callers in
    ``nursery``; each caller's outcome lands in ``outcomes``.
    """

    def __init__(self, batcher: AnyBatcher, nursery: trio.Nursery) -> None:
        self.batcher = batcher
        self.nursery = nursery
        self.outcomes = Outcomes()
        self._pending = 0
        self._all_done = trio.lowlevel.ParkingLot()

    def spawn(self, key: Any, item: Any) -> trio.CancelScope:
        """Start a caller now; return the cancel scope that wraps its ``submit``."""
        scope = trio.CancelScope()
        self._pending += 1
        self.nursery.start_soon(self._caller, key, item, scope)
        return scope

    async def _caller(self, key: Any, item: Any, scope: trio.CancelScope) -> None:
        try:
            await self.outcomes.submit(self.batcher, key, item, scope)
        finally:
            self._pending -= 1
            if not self._pending:
                self._all_done.unpark_all()

    async def submit_in_order(self, key: Any, items: Sequence[Any]) -> None:
        """Start one caller per item, each parked before the next arrives (a known order)."""
        for item in items:
            self.spawn(key, item)
            await trio.testing.wait_all_tasks_blocked()

    async def wait_for_callers(self) -> None:
        """Wait until every caller started so far has its outcome (always a checkpoint).

        What leaving a nursery of the callers would wait for, with the block
        still open: the test can go on using the batcher.
        """
        if not self._pending:
            await trio.lowlevel.checkpoint()
        while self._pending:
            await self._all_done.park()

    def stats(self) -> tuple[int, int, int]:
        """``(active_keys, queued_items, processing_batches)`` right now."""
        return stats(self.batcher)


@asynccontextmanager
async def harness(
    process: Callable[..., Awaitable[Any]],
    *,
    acquire: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
    policy: tb.Policy = tb.Immediate(),  # noqa: B008 - frozen value, safe to share
    limits: tb.Limits = tb.Limits(),  # noqa: B008 - frozen value, safe to share
    name: str = "batcher",
    observers: Iterable[tb.Observer] = (),
    callers_outlive_block: bool = False,
) -> AsyncIterator[Harness]:
    """Open a batcher (the arguments are :func:`trio_batch.open_batcher`'s) and a nursery.

    By default the callers' nursery is inside the batcher's block: leaving the
    harness waits for every caller, then leaves the block (nothing is left to
    drain). With ``callers_outlive_block=True`` the nursery is outside: leaving
    the harness leaves the block first (a drain with callers still waiting, or a
    teardown if the body raised), then waits for the callers.

    An exception raised out of the body comes out of the harness inside the
    nursery's ``ExceptionGroup``; tests of what leaving the block by an
    exception does open the batcher and the callers' nursery themselves.
    """
    kwargs: dict[str, Any] = {
        "acquire": acquire,
        "policy": policy,
        "limits": limits,
        "name": name,
        "observers": observers,
    }
    if callers_outlive_block:
        async with trio.open_nursery() as nursery:
            async with tb.open_batcher(process, **kwargs) as batcher:
                yield Harness(batcher, nursery)
    else:
        async with tb.open_batcher(process, **kwargs) as batcher:
            async with trio.open_nursery() as nursery:
                yield Harness(batcher, nursery)


# --- misbehaving process functions, and a recording observer --------------------

Process: TypeAlias = Callable[[Any, list[Any]], Awaitable[list[Any]]]


def raises_my_error(delay: float = 0.0) -> Process:
    """A ``process`` that sleeps ``delay`` seconds, then raises ``MyError("down")``."""

    async def process(key: Any, inputs: list[Any]) -> list[Any]:
        await trio.sleep(delay)
        raise MyError("down")

    return process


def returns_too_few(delay: float = 0.0) -> Process:
    """A ``process`` that sleeps ``delay`` seconds, then returns no outputs at all."""

    async def process(key: Any, inputs: list[Any]) -> list[Any]:
        await trio.sleep(delay)
        return []

    return process


async def never_called_with_resource(key: Any, inputs: list[Any], resource: Any) -> list[Any]:
    """A ``process(key, inputs, resource)`` for tests in which it must never run.

    (``acquire`` fails, or every batch ends before its resource is acquired.)
    """
    raise AssertionError("process ran, but the test expects it never to")


ObserverEvent: TypeAlias = (
    tb.ItemAccepted
    | tb.ItemRejected
    | tb.ItemWithdrawn
    | tb.BatchStarted
    | tb.BatchFinished
    | tb.CacheHit
)


class Events:
    """An observer that records every event, in order.

    With ``context``, it also records the value of that context variable when
    each hook ran (``None`` where it is unset), in ``contexts``, parallel to
    ``events``: ``item_accepted`` runs in the caller's context, so a test can
    tell callers apart by setting the variable in each caller.
    """

    def __init__(self, context: contextvars.ContextVar[Any] | None = None) -> None:
        self.events: list[ObserverEvent] = []
        self.contexts: list[Any] = []
        self._context = context

    def _record(self, event: ObserverEvent) -> None:
        # A hook that raised would only be logged: record, never assert, here.
        self.events.append(event)
        self.contexts.append(None if self._context is None else self._context.get(None))

    def item_accepted(self, event: tb.ItemAccepted) -> None:
        self._record(event)

    def item_rejected(self, event: tb.ItemRejected) -> None:
        self._record(event)

    def item_withdrawn(self, event: tb.ItemWithdrawn) -> None:
        self._record(event)

    def batch_started(self, event: tb.BatchStarted) -> None:
        self._record(event)

    def batch_finished(self, event: tb.BatchFinished) -> None:
        self._record(event)

    def cache_hit(self, event: tb.CacheHit) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        """The events of type ``kind``, in order."""
        return [event for event in self.events if type(event) is kind]

    def ids(self) -> list[int]:
        """Item ids, in order of acceptance."""
        return [event.item_id for event in self.of(tb.ItemAccepted)]

    def ids_by_context(self) -> dict[Any, int]:
        """``{context value: item id}`` of every acceptance; each value is accepted once."""
        pairs = [
            (context, event.item_id)
            for event, context in zip(self.events, self.contexts, strict=True)
            if type(event) is tb.ItemAccepted
        ]
        contexts = [context for context, _ in pairs]
        assert len(set(contexts)) == len(contexts), f"a context accepted twice: {contexts}"
        return dict(pairs)


# --- outputs and exceptions that misbehave ------------------------------------------
#
# What ``process`` may hand back instead of a list, and exceptions that cannot be
# printed: the end of a batch must give every caller its outcome whatever they do
# (SPEC, "A batch's end is total"). Each output fake takes the outputs it stands for.


class MappingLikeOutputs:
    """Not readable by position: a length, and ``__getitem__`` by label
    (``"label-0"``, ...), so ``obj[0]`` is ``KeyError(0)``."""

    def __init__(self, outputs: Sequence[Any]) -> None:
        self._by_label = {f"label-{i}": output for i, output in enumerate(outputs)}

    def __len__(self) -> int:
        return len(self._by_label)

    def __getitem__(self, label: str) -> Any:
        return self._by_label[label]


class DataFrameLikeOutputs:
    """Not readable by position, as a pandas DataFrame: ``len()`` is rows, iteration
    yields column labels, ``[]`` takes a column by label (``frame[0]`` is ``KeyError(0)``).

    It has as many columns as rows (each column holds every output), so zipping
    the callers with it would seem to fit.
    """

    def __init__(self, outputs: Sequence[Any]) -> None:
        self._columns = {f"col{j}": list(outputs) for j in range(len(outputs))}
        self._rows = len(outputs)

    def __len__(self) -> int:
        return self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __getitem__(self, label: str) -> list[Any]:
        return self._columns[label]


class TensorLikeOutputs:
    """Readable by position, as torch rows: ``__len__`` and ``__getitem__`` by index
    (``0 <= index < len``; anything else is ``IndexError``), no ``__iter__``.

    With ``raise_at``, reading that position raises ``RuntimeError`` (a lazy
    array whose read fails): then it is not readable, and every caller of the
    batch gets a ``ProcessorContractError``.
    """

    def __init__(self, outputs: Sequence[Any], raise_at: int | None = None) -> None:
        self._outputs = list(outputs)
        self._raise_at = raise_at

    def __len__(self) -> int:
        return len(self._outputs)

    def __getitem__(self, index: int) -> Any:
        if index == self._raise_at:
            raise RuntimeError(f"cannot read output {index}")
        if not 0 <= index < len(self._outputs):
            raise IndexError(index)
        return self._outputs[index]


class LyingLengthOutputs(list[Any]):
    """A list whose ``len()`` claims one output more than it holds (and iterates
    over): reading the last position it claims is ``IndexError``."""

    def __len__(self) -> int:
        return super().__len__() + 1


class UnprintableMixin:
    """Mixed into an exception class (first), makes its ``str()`` and ``repr()`` raise."""

    def __str__(self) -> str:
        raise RuntimeError(f"str() of {type(self).__name__} raised")

    def __repr__(self) -> str:
        raise RuntimeError(f"repr() of {type(self).__name__} raised")


class UnprintableOSError(UnprintableMixin, OSError):
    """An ``OSError`` whose ``str()`` and ``repr()`` both raise."""


def safe_repr(value: object) -> str:
    """``repr(value)``, or a placeholder if it raises (for assertion messages)."""
    try:
        return repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


# --- property tests ---------------------------------------------------------------

#: Property tests run a quick profile by default (what CI runs);
#: ``HYPOTHESIS_PROFILE=thorough`` runs ten times as many examples.
EXAMPLE_SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1


def policies(
    max_batch_size: int,
    *,
    delays: st.SearchStrategy[float],
    deadline_margins: st.SearchStrategy[float | None] = st.none(),  # noqa: B008
) -> st.SearchStrategy[tb.Policy]:
    """Every kind of policy, valid with ``max_batch_size`` (a ``Balanced`` hint fits it)."""
    return st.one_of(
        st.just(tb.Immediate()),
        st.just(tb.Size()),
        st.builds(
            tb.Duration,
            delays,
            st.sampled_from(tb.OnFull),
            deadline_margin=deadline_margins,
        ),
        st.builds(tb.Balanced, st.integers(1, max_batch_size)),
    )
