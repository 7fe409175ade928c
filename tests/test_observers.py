"""The observer interface of the core: events, their exact contents, and misbehaving observers."""

from __future__ import annotations

import contextvars
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import outcome
import pytest
import trio
import trio.testing
from tutil import (
    Events,
    Harness,
    MyError,
    Outcomes,
    Resources,
    harness,
    never_called_with_resource,
    raises_my_error,
    returns_too_few,
    submit_in_order,
)

import trio_batch as tb
from trio_batch import BatchOutcome as Outcome, StartReason as Reason


async def sleep_then_echo(key: str, inputs: list[str]) -> list[str]:
    await trio.sleep(0.25)
    return inputs


async def test_event_contents_of_a_run(autojump_clock: trio.abc.Clock) -> None:
    events = Events()
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1, max_batch_queue_size=1)
    async with harness(sleep_then_echo, limits=limits, name="obs", observers=[events]) as h:
        # t=0: [a] processing, [b, c] queued, d rejected.
        await h.submit_in_order("k", ["a", "b", "c", "d"])
        await trio.sleep(0.375)
        # [b, c] is processing; e queues alone, then withdraws at 0.4375.
        e = h.spawn("k", "e")
        await trio.sleep(0.0625)
        e.cancel()
    assert h.outcomes.values == {"a": "a", "b": "b", "c": "c"}
    assert h.outcomes.error_types() == {"d": tb.Rejected, "e": trio.Cancelled}

    a, b, c, e_id = events.ids()
    first, second = [event.batch_id for event in events.of(tb.BatchStarted)]
    assert events.events == [
        tb.ItemAccepted("obs", "k", a, 0.0),
        tb.BatchStarted("obs", "k", first, 1, Reason.IMMEDIATE, (a,), 0.0),
        tb.ItemAccepted("obs", "k", b, 0.0),
        tb.ItemAccepted("obs", "k", c, 0.0),
        tb.ItemRejected("obs", "k", 0.0),
        tb.BatchFinished(
            batcher="obs",
            key="k",
            batch_id=first,
            size=1,
            reason=Reason.IMMEDIATE,
            item_ids=(a,),
            queue_waits=(0.0,),
            acquire_seconds=0.0,
            process_seconds=0.25,
            outcome=Outcome.OK,
            failed_items=0,
            abandoned=0,
            time=0.25,
        ),
        tb.BatchStarted("obs", "k", second, 2, Reason.FINISH, (b, c), 0.25),
        tb.ItemAccepted("obs", "k", e_id, 0.375),
        tb.ItemWithdrawn("obs", "k", e_id, 0.4375, waited=0.0625),
        tb.BatchFinished(
            batcher="obs",
            key="k",
            batch_id=second,
            size=2,
            reason=Reason.FINISH,
            item_ids=(b, c),
            queue_waits=(0.25, 0.25),
            acquire_seconds=0.0,
            process_seconds=0.25,
            outcome=Outcome.OK,
            failed_items=0,
            abandoned=0,
            time=0.5,
        ),
    ]
    # Item and batch ids share one counter: all distinct.
    assert len({a, b, c, e_id, first, second}) == 6


async def test_acquire_time_late_joiners_and_abandoned_callers(
    autojump_clock: trio.abc.Clock,
) -> None:
    events = Events()
    resources = Resources(0.5)

    async def process(key: str, inputs: list[str], resource: str) -> list[Any]:
        await trio.sleep(1)
        return [outcome.Error(MyError()) if x == "bad" else x for x in inputs]

    async with harness(process, acquire=resources, name="obs", observers=[events]) as h:
        h.spawn("k", "a")  # starts the batch: acquiring
        await trio.sleep(0.25)
        h.spawn("k", "bad")  # joins while it acquires
        await trio.sleep(0.125)
        c = h.spawn("k", "c")
        await trio.sleep(0.625)  # processing since 0.5
        c.cancel()  # abandoned: the batch carries on
    assert h.outcomes.values == {"a": "a"}
    assert h.outcomes.error_types() == {"bad": tb.ItemFailed, "c": trio.Cancelled}

    a, bad, c_id = events.ids()
    [started] = events.of(tb.BatchStarted)
    assert started == tb.BatchStarted("obs", "k", started.batch_id, 1, Reason.IMMEDIATE, (a,), 0.0)
    [finished] = events.of(tb.BatchFinished)
    assert finished == tb.BatchFinished(
        batcher="obs",
        key="k",
        batch_id=started.batch_id,
        size=3,
        reason=Reason.IMMEDIATE,
        item_ids=(a, bad, c_id),
        # From acceptance until process was called (at 0.5).
        queue_waits=(0.5, 0.25, 0.125),
        acquire_seconds=0.5,
        process_seconds=1.0,
        outcome=Outcome.OK,
        failed_items=1,
        abandoned=1,
        time=1.5,
    )


async def test_a_caller_that_waited_for_room_is_accepted_when_admitted(
    autojump_clock: trio.abc.Clock,
) -> None:
    events = Events()
    limits = tb.Limits(
        max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
    )
    async with harness(sleep_then_echo, limits=limits, observers=[events]) as h:
        # a processes from 0; b queues; c waits for room until b begins, at 0.25.
        await h.submit_in_order("k", ["a", "b", "c"])
    assert h.outcomes.values == {"a": "a", "b": "b", "c": "c"}
    assert [event.time for event in events.of(tb.ItemAccepted)] == [0.0, 0.0, 0.25]
    assert [(event.time, event.item_ids) for event in events.of(tb.BatchStarted)] == [
        (0.0, (events.ids()[0],)),
        (0.25, (events.ids()[1],)),
        (0.5, (events.ids()[2],)),
    ]
    assert events.of(tb.ItemRejected) == []


async def _start_full(h: Harness) -> None:
    await h.submit_in_order("k", ["a", "b"])


async def _start_alone(h: Harness) -> None:
    await h.submit_in_order("k", ["a"])
    await trio.sleep(1)


async def _start_with_deadline(h: Harness) -> None:
    async def caller() -> None:
        with trio.move_on_after(0.375):
            await h.batcher.submit("k", "a")

    h.nursery.start_soon(caller)
    await trio.sleep(1)


async def _start_on_hint(h: Harness) -> None:
    # a starts at once (the key is idle); b waits; c brings b's batch to the hint.
    await h.submit_in_order("k", ["a", "b", "c"])


async def _start_on_finish(h: Harness) -> None:
    await h.submit_in_order("k", ["a", "b"])


async def _start_on_drain(h: Harness) -> None:
    await h.submit_in_order("k", ["a"])


_LIMITS = tb.Limits(max_batch_size=2, max_key_concurrency=1)


@pytest.mark.parametrize(
    ("policy", "limits", "scenario", "expected"),
    [
        pytest.param(tb.Size(), _LIMITS, _start_full, [(Reason.FULL, 0.0, 2)], id="full"),
        pytest.param(tb.Duration(0.5), _LIMITS, _start_alone, [(Reason.TIMER, 0.5, 1)], id="timer"),
        pytest.param(
            tb.Duration(0.5, deadline_margin=0.125),
            _LIMITS,
            _start_with_deadline,
            [(Reason.DEADLINE, 0.25, 1)],  # the caller's deadline 0.375, less the margin
            id="deadline",
        ),
        pytest.param(
            tb.Immediate(), _LIMITS, _start_alone, [(Reason.IMMEDIATE, 0.0, 1)], id="immediate"
        ),
        pytest.param(
            tb.Balanced(2),
            tb.Limits(max_batch_size=2, max_key_concurrency=2),
            _start_on_hint,
            [(Reason.IMMEDIATE, 0.0, 1), (Reason.HINT, 0.0, 2)],
            id="hint",
        ),
        pytest.param(
            tb.Immediate(),
            tb.Limits(max_batch_size=2, max_key_concurrency=1),
            _start_on_finish,
            [(Reason.IMMEDIATE, 0.0, 1), (Reason.FINISH, 0.05, 1)],
            id="finish",
        ),
        pytest.param(tb.Size(), _LIMITS, _start_on_drain, [(Reason.DRAIN, 0.0, 1)], id="drain"),
    ],
)
async def test_start_reasons(
    autojump_clock: trio.abc.Clock,
    policy: tb.Policy,
    limits: tb.Limits,
    scenario: Callable[[Harness], Awaitable[None]],
    expected: list[tuple[Reason, float, int]],
) -> None:
    events = Events()

    async def process(key: str, inputs: list[str]) -> list[str]:
        await trio.sleep(0.05)
        return inputs

    async with harness(
        process, policy=policy, limits=limits, observers=[events], callers_outlive_block=True
    ) as h:
        await scenario(h)
    started = events.of(tb.BatchStarted)
    assert [(event.reason, event.time, event.size) for event in started] == expected
    finished = events.of(tb.BatchFinished)
    # Every started batch finishes once, under its id, with its start reason
    # (batches started together may end in any order).
    assert len(finished) == len(started)
    assert {event.batch_id: event.reason for event in finished} == {
        event.batch_id: event.reason for event in started
    }


async def _never_returns(key: str, inputs: list[str]) -> list[str]:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("open_batcher", "status", "error", "size", "process_seconds"),
    [
        pytest.param(
            lambda events: tb.open_batcher(sleep_then_echo, observers=[events]),
            Outcome.OK,
            None,
            2,
            0.25,
            id="ok",
        ),
        pytest.param(
            lambda events: tb.open_batcher(raises_my_error(0.25), observers=[events]),
            Outcome.FAILED,
            tb.BatchFailed,
            2,
            0.25,
            id="failed",
        ),
        pytest.param(
            lambda events: tb.open_batcher(returns_too_few(0.25), observers=[events]),
            Outcome.CONTRACT_ERROR,
            tb.ProcessorContractError,
            2,
            0.25,
            id="contract_error",
        ),
        pytest.param(
            lambda events: tb.open_batcher(
                never_called_with_resource,
                acquire=Resources(0.25, enter_error=lambda: MyError("no")),
                observers=[events],
            ),
            Outcome.ACQUIRE_FAILED,
            tb.ResourceAcquisitionFailed,
            0,  # process was never called
            0.0,
            id="acquire_failed",
        ),
    ],
)
async def test_batch_outcomes(
    autojump_clock: trio.abc.Clock,
    open_batcher: Callable[[Events], Any],
    status: Outcome,
    error: type[tb.BatchError] | None,
    size: int,
    process_seconds: float,
) -> None:
    events = Events()
    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        async with open_batcher(events) as batcher:
            outcomes.spawn(nursery, batcher, "k", "a")
            outcomes.spawn(nursery, batcher, "k", "b")
            await trio.testing.wait_all_tasks_blocked()
    if error is None:
        assert outcomes.values == {"a": "a", "b": "b"}
    else:
        assert outcomes.error_types() == {"a": error, "b": error}
    [started] = events.of(tb.BatchStarted)
    # b was submitted in the round that started the batch: it has joined when
    # the batch's task begins and emits batch_started.
    assert (started.size, started.item_ids, started.time) == (2, tuple(events.ids()), 0.0)
    [finished] = events.of(tb.BatchFinished)
    assert finished.batch_id == started.batch_id
    assert finished.outcome is status
    assert finished.size == size
    assert sorted(finished.item_ids) == sorted(events.ids())
    assert finished.acquire_seconds == (0.25 if status is Outcome.ACQUIRE_FAILED else 0.0)
    assert finished.process_seconds == process_seconds
    assert finished.time == 0.25


async def test_teardown_cancels_a_processing_batch(autojump_clock: trio.abc.Clock) -> None:
    events = Events()
    outcomes = Outcomes()
    async with trio.open_nursery() as callers:
        with trio.move_on_after(1):
            async with tb.open_batcher(_never_returns, observers=[events]) as batcher:
                outcomes.spawn(callers, batcher, "k", "a")
                await trio.sleep_forever()
    assert outcomes.error_types() == {"a": tb.BatcherClosed}
    [finished] = events.of(tb.BatchFinished)
    assert finished.outcome is Outcome.CANCELLED
    assert finished.size == 1  # process was called with it
    assert finished.item_ids == tuple(events.ids())
    assert finished.process_seconds == 1.0
    assert finished.time == 1.0


async def test_batch_dropped_by_withdrawal_while_acquiring(autojump_clock: trio.abc.Clock) -> None:
    events = Events()
    async with harness(never_called_with_resource, acquire=Resources(1), observers=[events]) as h:
        a = h.spawn("k", "a")
        await trio.sleep(0.5)
        a.cancel()
    [a_id] = events.ids()
    assert events.of(tb.ItemWithdrawn) == [tb.ItemWithdrawn("batcher", "k", a_id, 0.5, 0.5)]
    [finished] = events.of(tb.BatchFinished)
    assert finished.outcome is Outcome.CANCELLED
    assert (finished.size, finished.item_ids, finished.queue_waits) == (0, (), ())
    assert finished.time == 0.5


async def test_a_batch_that_never_started_is_finished_by_teardown(
    autojump_clock: trio.abc.Clock,
) -> None:
    events = Events()
    outcomes = Outcomes()
    limits = tb.Limits(max_key_concurrency=1)
    async with trio.open_nursery() as callers:
        with pytest.raises(MyError):
            async with tb.open_batcher(
                sleep_then_echo, limits=limits, name="obs", observers=[events]
            ) as batcher:
                # [a] processing; [b, c] queued, never started.
                await submit_in_order(callers, outcomes, batcher, "k", ["a", "b", "c"])
                await trio.sleep(0.125)
                raise MyError("body failed")
    assert outcomes.error_types() == dict.fromkeys("abc", tb.BatcherClosed)

    a, b, c = events.ids()
    [started] = events.of(tb.BatchStarted)
    processing, never_started = events.of(tb.BatchFinished)
    assert processing == tb.BatchFinished(
        batcher="obs",
        key="k",
        batch_id=started.batch_id,
        size=1,
        reason=Reason.IMMEDIATE,
        item_ids=(a,),
        queue_waits=(0.0,),
        acquire_seconds=0.0,
        process_seconds=0.125,
        outcome=Outcome.CANCELLED,
        failed_items=0,
        abandoned=0,
        time=0.125,
    )
    assert never_started == tb.BatchFinished(
        batcher="obs",
        key="k",
        batch_id=never_started.batch_id,
        size=0,
        reason=None,
        item_ids=(b, c),
        queue_waits=(0.125, 0.125),  # acceptance until the batch ended
        acquire_seconds=0.0,
        process_seconds=0.0,
        outcome=Outcome.CANCELLED,
        failed_items=0,
        abandoned=0,
        time=0.125,
    )
    # A new id, and every accepted item ends in exactly one BatchFinished.
    assert len({a, b, c, started.batch_id, never_started.batch_id}) == 5
    assert sorted(processing.item_ids + never_started.item_ids) == sorted(events.ids())


_batch_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("batch_id", default=None)


class SetsContext(Events):
    """Records events, and sets ``_batch_id`` in ``batch_started``; notes tasks and values."""

    def __init__(self) -> None:
        super().__init__()
        self.started_in: dict[int, trio.lowlevel.Task] = {}
        self.finished_in: dict[int, tuple[trio.lowlevel.Task, int | None]] = {}

    def batch_started(self, event: tb.BatchStarted) -> None:
        super().batch_started(event)
        _batch_id.set(event.batch_id)
        self.started_in[event.batch_id] = trio.lowlevel.current_task()

    def batch_finished(self, event: tb.BatchFinished) -> None:
        super().batch_finished(event)
        self.finished_in[event.batch_id] = (trio.lowlevel.current_task(), _batch_id.get())


async def test_batch_started_runs_in_the_batch_task_and_its_context_reaches_acquire_and_process(
    autojump_clock: trio.abc.Clock,
) -> None:
    events = SetsContext()
    # (key, batch id seen, task) in acquire and in process.
    acquired: list[tuple[str, int | None, trio.lowlevel.Task]] = []
    processed: list[tuple[str, int | None, trio.lowlevel.Task]] = []

    @asynccontextmanager
    async def acquire(key: str) -> AsyncIterator[str]:
        acquired.append((key, _batch_id.get(), trio.lowlevel.current_task()))
        await trio.sleep(0.25)
        yield "resource"

    async def process(key: str, inputs: list[str], resource: str) -> list[str]:
        processed.append((key, _batch_id.get(), trio.lowlevel.current_task()))
        await trio.sleep(0.25)
        return inputs

    async with harness(process, acquire=acquire, observers=[events]) as h:
        # Two batches acquiring and processing at the same time.
        await h.submit_in_order("x", ["a"])
        await h.submit_in_order("y", ["b"])
        await h.wait_for_callers()
        assert _batch_id.get() is None  # nothing leaked into the block's own context
    assert h.outcomes.values == {"a": "a", "b": "b"}

    x, y = events.of(tb.BatchStarted)
    assert (x.key, y.key) == ("x", "y")
    expected = [
        ("x", x.batch_id, events.started_in[x.batch_id]),
        ("y", y.batch_id, events.started_in[y.batch_id]),
    ]
    assert acquired == expected
    # Both acquisitions end at 0.25: either batch may call process first.
    assert sorted(processed, key=lambda seen: seen[0]) == expected
    # batch_finished runs in the same task, which still sees the value.
    assert events.finished_in == {
        x.batch_id: (events.started_in[x.batch_id], x.batch_id),
        y.batch_id: (events.started_in[y.batch_id], y.batch_id),
    }


_where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")


class SeesWhere(Events):
    """Records, per hook, the value of ``_where`` that the hook sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def item_accepted(self, event: tb.ItemAccepted) -> None:
        super().item_accepted(event)
        self.seen.append(("item_accepted", _where.get()))

    def batch_started(self, event: tb.BatchStarted) -> None:
        super().batch_started(event)
        self.seen.append(("batch_started", _where.get()))

    def batch_finished(self, event: tb.BatchFinished) -> None:
        super().batch_finished(event)
        self.seen.append(("batch_finished", _where.get()))


async def test_batch_tasks_run_in_the_context_that_entered_the_block_not_a_callers(
    autojump_clock: trio.abc.Clock,
) -> None:
    observer = SeesWhere()
    seen_by_process: list[tuple[list[str], str]] = []

    async def process(key: str, inputs: list[str]) -> list[str]:
        seen_by_process.append((inputs, _where.get()))
        await trio.sleep(0.25)
        return inputs

    async def caller(h: Harness, item: str) -> None:
        _where.set(f"caller {item}")
        await h.outcomes.submit(h.batcher, "k", item)

    limits = tb.Limits(max_key_concurrency=1)
    _where.set("block")
    async with harness(process, limits=limits, observers=[observer]) as h:
        _where.set("body")  # after entering the block: batch tasks do not see it
        # a's batch starts in a's submit; b's in the task of a's batch, as it ends.
        for item in ["a", "b"]:
            h.nursery.start_soon(caller, h, item)
            await trio.testing.wait_all_tasks_blocked()
    assert h.outcomes.values == {"a": "a", "b": "b"}

    assert seen_by_process == [(["a"], "block"), (["b"], "block")]
    assert observer.seen == [
        ("item_accepted", "caller a"),
        ("batch_started", "block"),
        ("item_accepted", "caller b"),
        ("batch_finished", "block"),
        ("batch_started", "block"),
        ("batch_finished", "block"),
    ]


async def test_a_caller_admitted_from_overflow_is_accepted_in_its_own_context(
    autojump_clock: trio.abc.Clock,
) -> None:
    callers: dict[str, trio.lowlevel.Task] = {}
    accepted_in: list[trio.lowlevel.Task] = []

    class AcceptedIn(SeesWhere):
        def item_accepted(self, event: tb.ItemAccepted) -> None:
            super().item_accepted(event)
            accepted_in.append(trio.lowlevel.current_task())

    observer = AcceptedIn()

    async def caller(h: Harness, item: str) -> None:
        _where.set(item)
        callers[item] = trio.lowlevel.current_task()
        await h.outcomes.submit(h.batcher, "k", item)

    limits = tb.Limits(
        max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
    )
    async with harness(sleep_then_echo, limits=limits, observers=[observer]) as h:
        # a processes from 0; b queues; c waits for room until b begins, at 0.25.
        for item in ["a", "b", "c"]:
            h.nursery.start_soon(caller, h, item)
            await trio.testing.wait_all_tasks_blocked()
    assert h.outcomes.values == {"a": "a", "b": "b", "c": "c"}

    accepted = observer.of(tb.ItemAccepted)
    assert [event.time for event in accepted] == [0.0, 0.0, 0.25]
    assert [where for hook, where in observer.seen if hook == "item_accepted"] == ["a", "b", "c"]
    # c was admitted by b's batch task, yet its event saw c's context.
    assert accepted_in[:2] == [callers["a"], callers["b"]]
    assert accepted_in[2] not in callers.values()


class OnlyFinished(tb.Observer):
    """Subclasses the protocol: the other four hooks are inherited no-ops."""

    def __init__(self) -> None:
        self.finished: list[tb.BatchFinished] = []

    def batch_finished(self, event: tb.BatchFinished) -> None:
        self.finished.append(event)


async def test_an_observer_subclass_overrides_only_what_it_needs(
    autojump_clock: trio.abc.Clock,
) -> None:
    observer = OnlyFinished()
    async with harness(sleep_then_echo, observers=[observer]) as h:
        await h.submit_in_order("k", ["a"])
    assert h.outcomes.values == {"a": "a"}
    [finished] = observer.finished
    assert (len(finished.item_ids), finished.size, finished.outcome) == (1, 1, Outcome.OK)
    observer.item_accepted(tb.ItemAccepted("b", "k", 0, 0.0))  # inherited: does nothing


class Raising(Events):
    """Records events, and raises on the first ``item_accepted``."""

    def item_accepted(self, event: tb.ItemAccepted) -> None:
        super().item_accepted(event)
        raise MyError("observer bug")


async def test_a_raising_observer_is_logged_and_removed(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    raising = Raising()
    healthy = Events()
    async with harness(sleep_then_echo, name="obs", observers=[raising, healthy]) as h:
        await h.submit_in_order("k", ["a", "b"])
    assert h.outcomes.values == {"a": "a", "b": "b"}
    # Removed after its first failure: it saw one event, and no hook since.
    assert [type(event) for event in raising.events] == [tb.ItemAccepted]
    # The other observer, called after it for that same event, saw everything.
    assert [type(event) for event in healthy.events] == [
        tb.ItemAccepted,
        tb.BatchStarted,
        tb.ItemAccepted,
        tb.BatchStarted,
        tb.BatchFinished,
        tb.BatchFinished,
    ]
    [record] = [r for r in caplog.records if r.name == "trio_batch" and r.levelno == logging.ERROR]
    assert record.getMessage() == (
        f"batcher 'obs': observer {raising!r} raised in item_accepted and was removed"
    )
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], MyError)


def test_an_object_with_no_hook_is_refused() -> None:
    with pytest.raises(TypeError, match=r"implements none of the hooks"):
        tb.open_batcher(sleep_then_echo, observers=[object()])  # type: ignore[list-item]


def test_observers_and_heavy_dependencies_are_not_imported_with_trio_batch() -> None:
    code = (
        "import sys, trio_batch, trio_batch.contrib\n"
        "heavy = ['prometheus_client', 'opentelemetry', 'matplotlib', 'trio_batch.sim']\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout == "[]\n"


async def test_batch_tasks_see_the_context_at_block_entry_not_at_the_call() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")
    seen: list[str] = []

    async def process(key: str, inputs: list[int]) -> list[int]:
        seen.append(var.get())
        return inputs

    var.set("at the call")
    manager = tb.open_batcher(process)
    var.set("at block entry")
    async with manager as batcher:
        var.set("in the body")
        await batcher.submit("k", 1)
    assert seen == ["at block entry"]
