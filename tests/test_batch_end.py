"""A batch's end is total: no error anywhere leaves a caller without its outcome.

One or more tests per defect of issue 12 ("Defects to fix", items 1 to 10), each
written against the SPEC ("A batch's end is total" and "Settled details"):

1. outputs are read by position (``outputs[i]``); an object that cannot be read
   that way, or raises while it is read, is ``ProcessorContractError`` for every
   caller of the batch, and the batcher goes on;
2. an exception whose ``str()``/``repr()`` raises still gives the right error;
3. ``outcome.Error(e)`` whose ``repr(e)`` raises gives ``ItemFailed``;
4. a 0-d numpy array is not a sequence of outputs;
5. waiters admitted together (``Overflow.WAIT``) keep their own item ids;
6. ``async def`` observer hooks are refused;
7. a ``process`` whose own cleanup raises while teardown cancels it does not
   replace the body's exception or an outer cancellation (it is logged);
8. a batcher belongs to the Trio run that opened it;
9. waiters are found by identity, never by comparing items;
10. only ``open_batcher`` makes a ``Batcher``.

Every wait is bounded: a stranded caller makes a test fail on virtual time
(``trio.fail_after`` under the ``autojump_clock`` fixture), never hang. The one
test that needs a second Trio run (8) runs the owning run in a subprocess with a
real timeout, because a wedged run cannot time itself out.
"""

from __future__ import annotations

import contextvars
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import outcome
import pytest
import trio
import trio.testing
from tutil import (
    DataFrameLikeOutputs,
    Events,
    LyingLengthOutputs,
    MappingLikeOutputs,
    TensorLikeOutputs,
    UnprintableOSError,
)

import trio_batch as tb

#: Virtual seconds after which a scenario counts as hung (each takes a few at most).
HANG_GUARD = 60.0

ZERO_STATS = tb.BatcherStatistics(0, 0, 0, 0)


class Boom(Exception):
    """Raised by the body of a block."""


# --------------------------------------------------------------------------------------
# Callers


async def _submit_one(
    batcher: tb.Batcher[Any, Any, Any], key: Any, item: Any, index: int, got: dict[int, object]
) -> None:
    try:
        got[index] = await batcher.submit(key, item)
    except trio.Cancelled as exc:
        got[index] = exc
        raise
    except Exception as exc:
        got[index] = exc


async def submit_together(
    batcher: tb.Batcher[Any, Any, Any], key: Any, items: Sequence[Any]
) -> dict[int, object]:
    """Submit every item in the same scheduling round; return ``{index: output or error}``."""
    got: dict[int, object] = {}
    async with trio.open_nursery() as nursery:
        for index, item in enumerate(items):
            nursery.start_soon(_submit_one, batcher, key, item, index, got)
    return got


def spawn_caller(
    nursery: trio.Nursery,
    batcher: tb.Batcher[Any, Any, Any],
    key: Any,
    item: Any,
    index: int,
    got: dict[int, object],
) -> trio.CancelScope:
    """Start a caller of ``submit(key, item)`` (it runs later); return its cancel scope."""
    scope = trio.CancelScope()

    async def caller() -> None:
        with scope:
            await _submit_one(batcher, key, item, index, got)

    nursery.start_soon(caller)
    return scope


def assert_distinct_errors(errors: Sequence[object]) -> None:
    assert len({id(error) for error in errors}) == len(errors), "callers share one exception"


def assert_unprintable_message(error: BaseException, type_name: str) -> None:
    """``error`` prints, with a fallback that names the unprintable exception's type."""
    message = str(error)  # must not raise
    assert type_name in message, message
    assert "unprintable" in message.lower(), message


# --------------------------------------------------------------------------------------
# 1. Outputs are read by position; anything else is a ProcessorContractError


class IterationDisagrees:
    """Reads by position consistently with ``len()``, but iteration yields one item more."""

    def __init__(self, inputs: list[str]) -> None:
        self._rows = [f"row:{x}" for x in inputs]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> str:
        return self._rows[index]

    def __iter__(self) -> Iterator[str]:
        return iter(["iterated", *self._rows])


class FrameByPosition(DataFrameLikeOutputs):
    """DataFrame-like, but ``frame[i]`` (an int) is row ``i``; iteration still yields labels."""

    def __init__(self, outputs: list[str]) -> None:
        super().__init__(outputs)
        self._row_by_position = list(outputs)

    def __getitem__(self, label: str | int) -> Any:
        if isinstance(label, int):
            return self._row_by_position[label]
        return super().__getitem__(label)


async def run_bad_then_good(
    make_outputs: Callable[[list[str]], object],
) -> tuple[dict[int, object], dict[int, object], Exception | None, tb.BatcherStatistics]:
    """A batch of ``["x", "y"]`` whose outputs are ``make_outputs(inputs)``, then a good batch.

    Returns what the two callers of each batch got (caller 0 submitted ``"x"``),
    what the block raised, and the statistics after the block. The callers start in
    the same scheduling round, so their order in the batch is Trio's: outputs made
    from each input check that output *i* goes to the caller of input *i*.
    """

    async def process(key: str, inputs: list[str]) -> Any:
        if key == "bad":
            return make_outputs(inputs)
        return [f"{key}:{x}" for x in inputs]

    return await run_bad_key_then_good_key(process, name="outputs")


async def run_bad_key_then_good_key(
    process: Callable[..., Awaitable[Any]],
    *,
    acquire: Callable[[str], AbstractAsyncContextManager[Any]] | None = None,
    name: str = "batcher",
) -> tuple[dict[int, object], dict[int, object], Exception | None, tb.BatcherStatistics]:
    """Two callers of key ``"bad"`` (``"x"``, ``"y"``), then two of ``"good"``.

    With ``Size`` and ``max_batch_size=2``: one batch per key. Returns what
    the callers of each batch got, what the block raised, and the statistics
    after the block.
    """
    first: dict[int, object] = {}
    later: dict[int, object] = {}
    escaped: Exception | None = None
    with trio.fail_after(HANG_GUARD):
        try:
            async with tb.open_batcher(
                process,
                acquire=acquire,
                policy=tb.Size(),
                limits=tb.Limits(max_batch_size=2),
                name=name,
            ) as batcher:
                first = await submit_together(batcher, "bad", ["x", "y"])
                later = await submit_together(batcher, "good", ["x", "y"])
        except Exception as exc:
            escaped = exc
    return first, later, escaped, batcher.statistics()


@pytest.mark.parametrize(
    "make_outputs",
    [
        pytest.param(MappingLikeOutputs, id="mapping-like"),
        pytest.param(
            lambda inputs: LyingLengthOutputs(f"out:{x}" for x in inputs[:-1]), id="len-too-long"
        ),
        pytest.param(DataFrameLikeOutputs, id="dataframe-like"),
        pytest.param(lambda inputs: TensorLikeOutputs(inputs, raise_at=1), id="raises-while-read"),
    ],
)
async def test_outputs_not_readable_by_position_fail_every_caller_and_the_batcher_goes_on(
    autojump_clock: trio.testing.MockClock, make_outputs: Callable[[list[str]], object]
) -> None:
    first, later, escaped, stats = await run_bad_then_good(make_outputs)
    assert escaped is None, f"the block raised {escaped!r}"
    assert sorted(first) == [0, 1], f"a caller of the bad batch got no outcome: {first}"
    for index, got in first.items():
        assert isinstance(got, tb.ProcessorContractError), f"caller {index} got {got!r}"
    assert_distinct_errors(list(first.values()))
    assert later == {0: "good:x", 1: "good:y"}
    assert stats == ZERO_STATS


@pytest.mark.parametrize(
    ("make_outputs", "expected"),
    [
        pytest.param(IterationDisagrees, ["row:x", "row:y"], id="iteration-disagrees-with-len"),
        pytest.param(
            lambda inputs: FrameByPosition([f"row:{x}" for x in inputs]),
            ["row:x", "row:y"],
            id="dataframe-like-rows-by-position",
        ),
        pytest.param(
            lambda inputs: TensorLikeOutputs([f"tensor-row:{x}" for x in inputs]),
            ["tensor-row:x", "tensor-row:y"],
            id="torch-like",
        ),
        pytest.param(
            lambda inputs: np.array([f"np:{x}" for x in inputs]), ["np:x", "np:y"], id="numpy-1d"
        ),
    ],
)
async def test_outputs_are_read_by_position(
    autojump_clock: trio.testing.MockClock,
    make_outputs: Callable[[list[str]], object],
    expected: list[str],
) -> None:
    first, later, escaped, stats = await run_bad_then_good(make_outputs)
    assert escaped is None, f"the block raised {escaped!r}"
    assert first == {0: expected[0], 1: expected[1]}
    assert later == {0: "good:x", 1: "good:y"}
    assert stats == ZERO_STATS


async def test_rows_of_a_2d_numpy_array_are_outputs(autojump_clock: trio.testing.MockClock) -> None:
    first, later, escaped, stats = await run_bad_then_good(
        lambda inputs: np.array([[x, f"{x}!"] for x in inputs])
    )
    assert escaped is None, f"the block raised {escaped!r}"
    rows = [first[0], first[1]]
    assert all(isinstance(row, np.ndarray) for row in rows), rows
    assert np.array_equal(cast(Any, rows[0]), ["x", "x!"])
    assert np.array_equal(cast(Any, rows[1]), ["y", "y!"])
    assert later == {0: "good:x", 1: "good:y"}
    assert stats == ZERO_STATS


async def test_callers_of_a_mapping_like_batch_are_not_stranded_after_the_block(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The callers live outside the block: if the batch end never reschedules them,
    # leaving the block must not leave them parked.
    async def process(key: str, inputs: list[str]) -> Any:
        return MappingLikeOutputs(inputs)

    got: dict[int, object] = {}
    escaped: Exception | None = None
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as callers:
            try:
                async with tb.open_batcher(
                    process, policy=tb.Size(), limits=tb.Limits(max_batch_size=2)
                ) as batcher:
                    spawn_caller(callers, batcher, "k", "x", 0, got)
                    spawn_caller(callers, batcher, "k", "y", 1, got)
                    await trio.testing.wait_all_tasks_blocked()
            except Exception as exc:
                escaped = exc
    assert escaped is None, f"the block raised {escaped!r}"
    assert sorted(got) == [0, 1]
    assert all(isinstance(error, tb.ProcessorContractError) for error in got.values()), got


# --------------------------------------------------------------------------------------
# 2. An exception whose str() raises, from process or from acquire


async def test_process_raising_an_unprintable_exception_gives_batch_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[UnprintableOSError] = []

    async def process(key: str, inputs: list[str]) -> list[str]:
        if key == "bad":
            errors.append(UnprintableOSError())
            raise errors[-1]
        return [f"{key}:{x}" for x in inputs]

    first, later, escaped, stats = await run_bad_key_then_good_key(process)
    assert escaped is None, f"the block raised {type(escaped).__name__}"
    assert len(errors) == 1
    assert sorted(first) == [0, 1]
    for index, got in first.items():
        assert isinstance(got, tb.BatchFailed), f"caller {index} got {type(got).__name__}"
        assert got.__cause__ is errors[0]
        assert_unprintable_message(got, "UnprintableOSError")
    assert_distinct_errors(list(first.values()))
    assert later == {0: "good:x", 1: "good:y"}
    assert stats == ZERO_STATS


async def test_acquire_raising_an_unprintable_exception_gives_resource_acquisition_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[UnprintableOSError] = []

    @asynccontextmanager
    async def acquire(key: str) -> AsyncIterator[str]:
        if key == "bad":
            errors.append(UnprintableOSError())
            raise errors[-1]
        yield f"resource-{key}"

    async def process(key: str, inputs: list[str], resource: str) -> list[str]:
        return [f"{resource}:{x}" for x in inputs]

    first, later, escaped, stats = await run_bad_key_then_good_key(process, acquire=acquire)
    assert escaped is None, f"the block raised {type(escaped).__name__}"
    assert len(errors) == 1
    assert sorted(first) == [0, 1]
    for index, got in first.items():
        assert isinstance(got, tb.ResourceAcquisitionFailed), (
            f"caller {index} got {type(got).__name__}"
        )
        assert got.__cause__ is errors[0]
        assert_unprintable_message(got, "UnprintableOSError")
    assert_distinct_errors(list(first.values()))
    assert later == {0: "resource-good:x", 1: "resource-good:y"}
    assert stats == ZERO_STATS


# --------------------------------------------------------------------------------------
# 3. outcome.Error(e) where repr(e) raises


async def test_an_item_failed_with_an_unprintable_exception_gets_item_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    error = UnprintableOSError()

    async def process(key: str, inputs: list[str]) -> list[object]:
        return [outcome.Error(error) if x == "y" else f"{key}:{x}" for x in inputs]

    escaped: Exception | None = None
    got: dict[int, object] = {}
    later: dict[int, object] = {}
    with trio.fail_after(HANG_GUARD):
        try:
            async with tb.open_batcher(
                process, policy=tb.Size(), limits=tb.Limits(max_batch_size=3)
            ) as batcher:
                got = await submit_together(batcher, "k", ["x", "y", "z"])
                later = await submit_together(batcher, "k", ["a", "b", "c"])
        except Exception as exc:
            escaped = exc
    assert escaped is None, f"the block raised {type(escaped).__name__}"
    assert got[0] == "k:x"
    assert got[2] == "k:z"
    failed = got[1]
    assert isinstance(failed, tb.ItemFailed), f"caller 1 got {type(failed).__name__}"
    assert failed.__cause__ is error
    assert_unprintable_message(failed, "UnprintableOSError")
    assert later == {0: "k:a", 1: "k:b", 2: "k:c"}
    assert batcher.statistics() == ZERO_STATS


# --------------------------------------------------------------------------------------
# 4. A 0-d numpy array is not a sequence


async def test_a_0d_numpy_array_is_a_contract_error(autojump_clock: trio.testing.MockClock) -> None:
    first, later, escaped, stats = await run_bad_then_good(lambda inputs: np.array("scalar"))
    assert escaped is None, f"the block raised {escaped!r}"
    assert sorted(first) == [0, 1]
    for index, got in first.items():
        assert isinstance(got, tb.ProcessorContractError), f"caller {index} got {got!r}"
    assert later == {0: "good:x", 1: "good:y"}
    assert stats == ZERO_STATS


# --------------------------------------------------------------------------------------
# 5. Waiters admitted together keep their own item ids


#: Which caller is running: item_accepted runs in the caller's context (for a
#: waiter, a copy taken when it began to wait), so an observer can tell callers apart.
CALLER: contextvars.ContextVar[int] = contextvars.ContextVar("caller")


#: Caller 0 processes from t=0 (1 s), callers 1 and 2 fill the one queued batch,
#: callers 3 and 4 wait for room; at t=1 both are admitted together into a new batch.
ADMIT_TWO = tb.Limits(
    max_batch_size=2, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
)


async def _sleep_then_echo(key: str, inputs: list[int]) -> list[int]:
    await trio.sleep(1)
    return inputs


async def _run_five_callers(observer: Events, cancel_at: dict[int, float]) -> dict[int, object]:
    """Five callers of one key, each parked before the next; cancel some at given times."""
    got: dict[int, object] = {}

    async def caller(index: int, scope: trio.CancelScope) -> None:
        CALLER.set(index)
        with scope:
            await _submit_one(batcher, "k", index, index, got)

    with trio.fail_after(HANG_GUARD):
        async with tb.open_batcher(
            _sleep_then_echo, policy=tb.Immediate(), limits=ADMIT_TWO, observers=[observer]
        ) as batcher:
            async with trio.open_nursery() as nursery:
                scopes = []
                for index in range(5):
                    scopes.append(trio.CancelScope())
                    nursery.start_soon(caller, index, scopes[-1])
                    await trio.testing.wait_all_tasks_blocked()
                assert batcher.statistics().waiting_submits == 2
                for index, when in sorted(cancel_at.items(), key=lambda pair: pair[1]):
                    await trio.sleep_until(when)
                    scopes[index].cancel()
    assert batcher.statistics() == ZERO_STATS
    assert observer.of(tb.ItemRejected) == []
    return got


async def test_waiters_admitted_together_keep_their_own_item_ids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    observer = Events(CALLER)
    got = await _run_five_callers(observer, {})
    assert got == {index: index for index in range(5)}
    accepted = observer.ids_by_context()
    assert sorted(accepted) == [0, 1, 2, 3, 4]
    assert len(set(accepted.values())) == 5, f"two callers were announced one id: {accepted}"
    # Each batch's events list the ids its callers were announced, in arrival order.
    assert [event.item_ids for event in observer.of(tb.BatchStarted)] == [
        (accepted[0],),
        (accepted[1], accepted[2]),
        (accepted[3], accepted[4]),
    ]
    assert [event.item_ids for event in observer.of(tb.BatchFinished)] == [
        event.item_ids for event in observer.of(tb.BatchStarted)
    ]


async def test_a_withdrawn_admitted_waiter_reports_the_id_it_was_announced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    observer = Events(CALLER)
    # At t=1.5 callers 3 and 4 are admitted (since t=1) into a batch not yet processing.
    got = await _run_five_callers(observer, {3: 1.5})
    assert isinstance(got.pop(3), trio.Cancelled)
    assert got == {0: 0, 1: 1, 2: 2, 4: 4}
    accepted = observer.ids_by_context()
    assert [(event.item_id, event.time) for event in observer.of(tb.ItemWithdrawn)] == [
        (accepted[3], 1.5)
    ]
    assert observer.of(tb.BatchStarted)[-1].item_ids == (accepted[4],)


# --------------------------------------------------------------------------------------
# 6. async def observer hooks are refused


HOOKS = ["item_accepted", "item_rejected", "item_withdrawn", "batch_started", "batch_finished"]


@pytest.mark.parametrize("hook", HOOKS)
def test_an_async_observer_hook_is_refused(hook: str) -> None:
    async def async_hook(self: object, event: object) -> None:
        return

    def sync_hook(self: object, event: object) -> None:
        return

    # Every other hook is a plain function: only the async one is at fault.
    observer_type = type(
        "AsyncObserver", (), {name: async_hook if name == hook else sync_hook for name in HOOKS}
    )
    with pytest.raises(TypeError, match=r"(?i)synchronous"):
        tb.open_batcher(_sleep_then_echo, observers=[cast(Any, observer_type())])


# --------------------------------------------------------------------------------------
# 7. A process whose own cleanup raises while teardown cancels it


class CleanupFails:
    """A ``process`` with its own nursery, whose child raises ``OSError`` when cancelled."""

    def __init__(self) -> None:
        self.processing = trio.Event()
        self.cleanup_error = OSError("cleanup failed in a child of process")

    async def _child(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise self.cleanup_error

    async def __call__(self, key: str, inputs: list[str]) -> list[str]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._child)
            self.processing.set()
            await trio.sleep_forever()
        raise AssertionError("unreachable")


def _raise(error: BaseException) -> None:
    raise error


def _cleanup_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    """Records at WARNING on the ``trio_batch`` logger that mention ``text``."""
    found = []
    formatter = logging.Formatter()
    for record in caplog.records:
        if record.name != "trio_batch" or record.levelno != logging.WARNING:
            continue
        message = record.getMessage()
        if record.exc_info is not None:
            message += formatter.formatException(record.exc_info)
        if text in message:
            found.append(record)
    return found


async def test_cleanup_error_in_a_torn_down_process_does_not_replace_the_body_exception(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_batch")
    process = CleanupFails()
    boom = Boom("from the body")
    got: dict[int, object] = {}
    escaped: BaseException | None = None
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as callers:
            try:
                async with tb.open_batcher(process, name="cleanup") as batcher:
                    spawn_caller(callers, batcher, "k", "x", 0, got)
                    await process.processing.wait()
                    _raise(boom)
            except BaseException as exc:
                escaped = exc
    assert escaped is boom, f"the block raised {escaped!r}, not the body's exception"
    assert isinstance(got[0], tb.BatcherClosed), got
    assert _cleanup_warnings(caplog, "cleanup failed in a child of process"), (
        "the cleanup error was not logged at WARNING on the trio_batch logger"
    )
    assert batcher.statistics() == ZERO_STATS


async def test_cleanup_error_in_a_torn_down_process_does_not_escape_an_outer_cancel(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_batch")
    process = CleanupFails()
    got: dict[int, object] = {}
    escaped: BaseException | None = None
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as callers:
            try:
                with trio.CancelScope() as outer:
                    async with tb.open_batcher(process, name="cleanup") as batcher:
                        spawn_caller(callers, batcher, "k", "x", 0, got)
                        await process.processing.wait()
                        outer.cancel()
                        await trio.sleep_forever()
            except BaseException as exc:
                escaped = exc
    assert escaped is None, f"{escaped!r} escaped the cancelled scope"
    assert outer.cancelled_caught
    assert isinstance(got[0], tb.BatcherClosed), got
    assert _cleanup_warnings(caplog, "cleanup failed in a child of process"), (
        "the cleanup error was not logged at WARNING on the trio_batch logger"
    )
    assert batcher.statistics() == ZERO_STATS


# --------------------------------------------------------------------------------------
# 8. A batcher belongs to the Trio run that opened it

# The owning run lives in a subprocess: on a batcher that does not check its run, the
# foreign submit wedges the owning run (its own timeouts never fire), and only a
# process can be stopped from outside. Real time: the foreign run gets 5 s.
FOREIGN_RUN_SCRIPT = """
import json
import trio
import trio.testing
import trio_batch as tb

def report(what, value):
    print(json.dumps([what, value]), flush=True)

async def main():
    release = trio.Event()

    async def process(key, inputs):
        if key == "slow":
            await release.wait()
        return [f"{key}:{x}" for x in inputs]

    def foreign():
        async def use():
            return await batcher.submit("k", "from another run")
        try:
            return ["value", repr(trio.run(use))]
        except BaseException as exc:
            return [type(exc).__name__, str(exc)]

    async def owner_caller():
        report("owner caller", await batcher.submit("slow", "parked in the owning run"))

    async with tb.open_batcher(process, name="owned-by-main") as batcher:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner_caller)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(5):
                report("foreign", await trio.to_thread.run_sync(foreign, abandon_on_cancel=True))
            release.set()
        with trio.move_on_after(5):
            report("owner", await batcher.submit("k", "from the owning run"))
    report("block", "exited")

trio.run(main)
"""


def test_submit_from_another_trio_run_raises_runtime_error() -> None:
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", textwrap.dedent(FOREIGN_RUN_SCRIPT)]
    stdout: str | bytes | None
    stderr: str | bytes | None
    returncode: int | None = None  # None: still running at the timeout (wedged)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=20, cwd=root)
    except subprocess.TimeoutExpired as exc:
        stdout, stderr = exc.stdout, exc.stderr
    else:
        stdout, stderr, returncode = result.stdout, result.stderr, result.returncode
    if isinstance(stdout, bytes):
        stdout = stdout.decode()
    report = dict(json.loads(line) for line in (stdout or "").splitlines())
    kind, message = report.get("foreign", ["no answer within 5 s", ""])
    assert kind == "RuntimeError", f"the foreign submit gave {kind}: {message}"
    assert "owned-by-main" in message, message
    assert returncode is not None, "the owning run was wedged by a submit from another run"
    assert report == {
        "foreign": ["RuntimeError", message],
        "owner caller": "slow:parked in the owning run",
        "owner": "k:from the owning run",
        "block": "exited",
    }, stderr
    assert returncode == 0, stderr


# --------------------------------------------------------------------------------------
# 9. Waiters are found by identity, never by comparing items


@pytest.mark.parametrize("cancelled", [2, 3, 4])
async def test_cancelling_a_waiter_for_room_with_numpy_items(
    autojump_clock: trio.testing.MockClock, cancelled: int
) -> None:
    # Caller 0 processes from t=0, caller 1 fills the queue; 2, 3 and 4 wait for room.
    limits = tb.Limits(
        max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
    )

    async def process(key: str, inputs: list[np.ndarray[Any, Any]]) -> list[int]:
        await trio.sleep(1)
        return [int(item.sum()) for item in inputs]

    items = [np.arange(3) + 10 * index for index in range(5)]
    got: dict[int, object] = {}
    escaped: Exception | None = None
    with trio.fail_after(HANG_GUARD):
        try:
            async with tb.open_batcher(process, limits=limits) as batcher:
                async with trio.open_nursery() as nursery:
                    scopes = []
                    for index, item in enumerate(items):
                        scopes.append(spawn_caller(nursery, batcher, "k", item, index, got))
                        await trio.testing.wait_all_tasks_blocked()
                    assert batcher.statistics().waiting_submits == 3
                    await trio.sleep(0.5)
                    scopes[cancelled].cancel()
                    await trio.testing.wait_all_tasks_blocked()
                    assert batcher.statistics().waiting_submits == 2
        except Exception as exc:
            escaped = exc
    assert escaped is None, f"the block raised {escaped!r}"
    assert isinstance(got.pop(cancelled), trio.Cancelled)
    assert got == {index: int(items[index].sum()) for index in range(5) if index != cancelled}
    assert batcher.statistics() == ZERO_STATS


# --------------------------------------------------------------------------------------
# 10. Only open_batcher makes a Batcher


def test_batcher_cannot_be_constructed_directly() -> None:
    with pytest.raises(TypeError, match=r"open_batcher"):
        cast(Any, tb.Batcher)(_sleep_then_echo, None, tb.Immediate(), tb.Limits(), "direct", ())


def test_batcher_without_arguments_points_to_open_batcher() -> None:
    with pytest.raises(TypeError, match=r"open_batcher"):
        cast(Any, tb.Batcher)()
