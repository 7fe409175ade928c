"""process may return outcome.Value / outcome.Error per item: one bad item fails alone."""

from __future__ import annotations

from typing import Any

import outcome
import pytest
import trio
import trio.testing

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
    got: dict[int, object] = {}

    async with tb.open_batcher(lookup, policy=tb.Size(), limits=tb.Limits(max_batch_size=6)) as b:

        async def call(item: int) -> None:
            try:
                got[item] = await b.submit("k", item)
            except tb.ItemFailed as exc:
                got[item] = exc

        async with trio.open_nursery() as nursery:
            for item in range(6):
                nursery.start_soon(call, item)
    assert got[0] == "v0"
    assert got[2] == "p2"
    assert got[4] == "v4"
    for item in (1, 3, 5):
        error = got[item]
        assert isinstance(error, tb.ItemFailed)
        assert isinstance(error, tb.BatchError)
        assert isinstance(error.__cause__, NotFound)
        assert error.__cause__.args == (item,)


async def test_item_failed_is_distinct_per_caller(autojump_clock: trio.testing.MockClock) -> None:
    shared = NotFound("gone")

    async def all_fail(key: str, inputs: list[int]) -> list[outcome.Outcome[str]]:
        return [outcome.Error(shared) for _ in inputs]

    errors: list[tb.ItemFailed] = []
    async with tb.open_batcher(all_fail, policy=tb.Size(), limits=tb.Limits(max_batch_size=3)) as b:

        async def call(item: int) -> None:
            with pytest.raises(tb.ItemFailed) as info:
                await b.submit("k", item)
            errors.append(info.value)

        async with trio.open_nursery() as nursery:
            for item in range(3):
                nursery.start_soon(call, item)
    assert len({id(e) for e in errors}) == 3
    assert all(e.__cause__ is shared for e in errors)


async def test_later_batches_unaffected(autojump_clock: trio.testing.MockClock) -> None:
    async with tb.open_batcher(lookup) as b:
        with pytest.raises(tb.ItemFailed):
            await b.submit("k", 1)
        assert await b.submit("k", 2) == "p2"
    assert b.statistics() == tb.BatcherStatistics(0, 0, 0, 0)
