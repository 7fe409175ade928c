"""process may return outcome.Value / outcome.Error per item: one bad item fails alone."""

from __future__ import annotations

from typing import Any

import outcome
import pytest
import trio
import trio.testing
from tutil import harness

import trio_batch as tb


class NotFound(Exception):
    pass


async def lookup(key: str, inputs: list[int]) -> list[Any]:
    # Odd ids do not exist; even ids are wrapped in Value or returned plainly.
    results: list[Any] = []
    for item in inputs:
        if item % 2:
            results.append(outcome.Error(NotFound(item)))
        elif item % 4 == 0:
            results.append(outcome.Value(f"v{item}"))
        else:
            results.append(f"p{item}")
    return results


async def test_each_caller_gets_its_own_outcome(autojump_clock: trio.testing.MockClock) -> None:
    async with harness(lookup, policy=tb.Size(), limits=tb.Limits(max_batch_size=6)) as h:
        for item in range(6):
            h.spawn("k", item)
    assert h.outcomes.values == {0: "v0", 2: "p2", 4: "v4"}
    assert h.outcomes.error_types() == dict.fromkeys((1, 3, 5), tb.ItemFailed)
    for item in (1, 3, 5):
        error = h.outcomes.errors[item]
        assert isinstance(error, tb.ItemFailed)
        assert isinstance(error, tb.BatchError)
        assert isinstance(error.__cause__, NotFound)
        assert error.__cause__.args == (item,)


async def test_item_failed_is_distinct_per_caller(autojump_clock: trio.testing.MockClock) -> None:
    shared = NotFound("gone")

    async def all_fail(key: str, inputs: list[int]) -> list[outcome.Outcome[str]]:
        return [outcome.Error(shared) for _ in inputs]

    async with harness(all_fail, policy=tb.Size(), limits=tb.Limits(max_batch_size=3)) as h:
        for item in range(3):
            h.spawn("k", item)
    assert h.outcomes.error_types() == dict.fromkeys(range(3), tb.ItemFailed)
    errors = list(h.outcomes.errors.values())
    assert len({id(e) for e in errors}) == 3
    assert all(e.__cause__ is shared for e in errors)


async def test_later_batches_unaffected(autojump_clock: trio.testing.MockClock) -> None:
    async with tb.open_batcher(lookup) as b:
        with pytest.raises(tb.ItemFailed):
            await b.submit("k", 1)
        assert await b.submit("k", 2) == "p2"
    assert b.statistics() == tb.BatcherStatistics(0, 0, 0, 0)
