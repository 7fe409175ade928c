"""Errors: each type, its ``__cause__``, and that a failure stays within its batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from tutil import (
    ALL_POLICIES_SIZE_ONE,
    AnyPolicy,
    MyError,
    Recorder,
    Resources,
    harness,
    stats,
)

import trio_batch as tb


@pytest.mark.parametrize(
    "error",
    [
        tb.Rejected,
        tb.BatchFailed,
        tb.ResourceAcquisitionFailed,
        tb.ProcessorContractError,
        tb.BatcherClosed,
    ],
)
def test_every_error_is_a_batch_error(error: type[tb.BatchError]) -> None:
    assert issubclass(error, tb.BatchError)
    assert issubclass(tb.BatchError, Exception)


# --- BatchFailed ------------------------------------------------------------


async def test_batch_failed_to_every_caller_with_the_process_error_as_cause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    raised: list[MyError] = []

    async def process(key: str, inputs: list[int]) -> list[int]:
        await trio.sleep(1.0)
        raised.append(MyError(f"boom {inputs}"))
        raise raised[-1]

    async with harness(process) as h:
        for item in range(3):
            h.spawn("k", item)
    assert len(raised) == 1
    assert h.outcomes.values == {}
    assert set(h.outcomes.errors) == {0, 1, 2}
    errors = list(h.outcomes.errors.values())
    for error in errors:
        assert type(error) is tb.BatchFailed
        assert error.__cause__ is raised[0]
    # Each caller got its own BatchFailed instance.
    assert len({id(error) for error in errors}) == 3
    assert h.outcomes.times == {0: 1.0, 1: 1.0, 2: 1.0}


@pytest.mark.parametrize("policy", ALL_POLICIES_SIZE_ONE)
async def test_later_batches_work_after_a_failure(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    calls: list[list[str]] = []

    async def process(key: str, inputs: list[str]) -> list[str]:
        calls.append(inputs)
        if "bad" in inputs:
            raise MyError("bad input")
        return [x.upper() for x in inputs]

    limits = tb.Limits(max_batch_size=1)
    async with tb.open_batcher(process, policy=policy, limits=limits) as batcher:
        with pytest.raises(tb.BatchFailed) as exc_info:
            await batcher.submit("k", "bad")
        assert isinstance(exc_info.value.__cause__, MyError)
        assert await batcher.submit("k", "good") == "GOOD"
        assert await batcher.submit("other", "fine") == "FINE"
        await trio.testing.wait_all_tasks_blocked()
        assert stats(batcher) == (0, 0, 0)
    assert calls == [["bad"], ["good"], ["fine"]]


async def test_a_failure_does_not_affect_a_concurrent_batch_of_the_same_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def process(key: str, inputs: list[str]) -> list[str]:
        await trio.sleep(1.0 if "bad" in inputs else 2.0)
        if "bad" in inputs:
            raise MyError
        return inputs

    async with harness(process, policy=tb.Immediate()) as h:
        await h.submit_in_order("k", ["good", "bad"])
    assert h.outcomes.values == {"good": "good"}
    assert h.outcomes.error_types() == {"bad": tb.BatchFailed}
    assert h.outcomes.times == {"bad": 1.0, "good": 2.0}


# --- ProcessorContractError -------------------------------------------------


@pytest.mark.parametrize("delta", [-1, +1, -3])
async def test_wrong_number_of_outputs_is_a_contract_error_for_every_caller(
    autojump_clock: trio.testing.MockClock, delta: int
) -> None:
    async def process(key: str, inputs: list[int]) -> list[int]:
        if key == "ok":
            return inputs
        return list(range(max(0, len(inputs) + delta)))

    async with harness(process) as h:
        for item in range(3):
            h.spawn("k", item)
        await h.wait_for_callers()
        # The h.batcher carries on.
        assert await h.batcher.submit("ok", 7) == 7
    assert h.outcomes.values == {}
    assert h.outcomes.error_types() == dict.fromkeys(range(3), tb.ProcessorContractError)


def _gen(inputs: list[int]) -> Any:
    return (x for x in inputs)


@pytest.mark.parametrize(
    "make_result",
    [
        pytest.param(lambda inputs: None, id="none"),
        pytest.param(lambda inputs: 42, id="int"),
        pytest.param(lambda inputs: set(inputs), id="set"),
        pytest.param(lambda inputs: dict.fromkeys(inputs), id="dict"),
        pytest.param(_gen, id="generator"),
    ],
)
async def test_non_sequence_result_is_a_contract_error(
    autojump_clock: trio.testing.MockClock, make_result: Callable[[list[int]], Any]
) -> None:
    async def process(key: str, inputs: list[int]) -> Any:
        return make_result(inputs)

    async with harness(process) as h:
        for item in range(3):
            h.spawn("k", item)
    assert h.outcomes.values == {}
    assert h.outcomes.error_types() == dict.fromkeys(range(3), tb.ProcessorContractError)


async def test_any_sequence_of_the_right_length_is_accepted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def process(key: str, inputs: list[int]) -> tuple[int, ...]:
        return tuple(x * 10 for x in inputs)

    async with harness(process) as h:
        for item in range(3):
            h.spawn("k", item)
    assert h.outcomes.values == {0: 0, 1: 10, 2: 20}


async def test_process_that_is_not_async_is_a_contract_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[list[int]] = []

    def sync_process(key: str, inputs: list[int]) -> list[int]:
        calls.append(inputs)
        return inputs

    process: Any = sync_process
    async with harness(process) as h:
        for item in range(3):
            h.spawn("k", item)
        await h.wait_for_callers()
        await trio.testing.wait_all_tasks_blocked()
        assert h.stats() == (0, 0, 0)
    assert h.outcomes.values == {}
    assert h.outcomes.error_types() == dict.fromkeys(range(3), tb.ProcessorContractError)


# --- Rejected ---------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(tb.Immediate(), id="immediate"),
        pytest.param(tb.Size(), id="size"),
        pytest.param(tb.Duration(0.5), id="duration"),
        pytest.param(tb.Balanced(1), id="balanced"),
    ],
)
async def test_rejected_when_the_queue_holds_max_batch_queue_size_batches(
    autojump_clock: trio.testing.MockClock, policy: AnyPolicy
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=2)
    async with harness(process, policy=policy, limits=limits) as h:
        # [a] runs; [b] and [c] fill the queue.
        await h.submit_in_order("k", ["a", "b", "c"])
        assert h.stats() == (1, 2, 1)
        await h.submit_in_order("k", ["d"])
        assert h.outcomes.error_types() == {"d": tb.Rejected}
        assert h.outcomes.times["d"] == 0.0
        assert h.stats() == (1, 2, 1)  # nothing changed
        # Another key is not affected.
        await h.submit_in_order("other", ["e"])
        assert "e" not in h.outcomes.errors
    assert process.calls == [
        ("k", ["a"], 0.0),
        ("other", ["e"], 0.0),
        ("k", ["b"], 1.0),
        ("k", ["c"], 2.0),
    ]
    assert "d" not in process.processed()


async def test_rejected_until_a_batch_begins_processing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1)
    async with harness(process, policy=tb.Immediate(), limits=limits) as h:
        await h.submit_in_order("k", ["a", "b", "c"])
        await trio.sleep(1.5)  # [b] began processing at 1.0: the queue has room
        await h.submit_in_order("k", ["d"])
    assert h.outcomes.error_types() == {"c": tb.Rejected}
    assert process.inputs() == [["a"], ["b"], ["d"]]


async def test_item_joining_a_batch_with_room_is_not_rejected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_batch_size=3, max_key_concurrency=1, max_batch_queue_size=1)
    async with harness(process, policy=tb.Immediate(), limits=limits) as h:
        await h.submit_in_order("k", list("abcdef"))
    # [a] runs; [b, c, d] is the one queued batch; e and f would need a second one.
    assert h.outcomes.error_types() == {"e": tb.Rejected, "f": tb.Rejected}
    assert process.inputs() == [["a"], ["b", "c", "d"]]


# --- BaseException ----------------------------------------------------------


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_contains(e, kind) for e in exc.exceptions)
    return isinstance(exc, kind)


class MyBaseException(BaseException):
    pass


@pytest.mark.parametrize("kind", [KeyboardInterrupt, MyBaseException])
async def test_base_exception_from_process_is_not_swallowed(
    autojump_clock: trio.testing.MockClock, kind: type[BaseException]
) -> None:
    async def process(key: str, inputs: list[int]) -> list[int]:
        await trio.sleep(1.0)
        raise kind

    caught: BaseException | None = None
    try:
        async with harness(process, callers_outlive_block=True) as h:
            h.spawn("k", 1)
            await trio.sleep(5.0)
    except BaseException as exc:
        caught = exc
    assert caught is not None
    assert _contains(caught, kind)
    assert trio.current_time() == 1.0


@pytest.mark.parametrize("kind", [KeyboardInterrupt, MyBaseException])
async def test_base_exception_from_acquire_is_not_swallowed(
    autojump_clock: trio.testing.MockClock, kind: type[BaseException]
) -> None:
    resources = Resources(delay=1.0, enter_error=kind)

    async def process(key: str, inputs: list[int], resource: str) -> list[int]:
        return inputs  # pragma: no cover

    caught: BaseException | None = None
    try:
        async with harness(process, acquire=resources, callers_outlive_block=True) as h:
            h.spawn("k", 1)
            await trio.sleep(5.0)
    except BaseException as exc:
        caught = exc
    assert caught is not None
    assert _contains(caught, kind)
    assert trio.current_time() == 1.0
