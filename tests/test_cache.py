"""``open_batcher(cache=...)``: outputs kept under ``(key, identity)``.

One test (or a few) per sentence of the issue's "Cache" section.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import outcome
import pytest
import trio
import trio.testing
from tutil import MarkedFailures as Process

import trio_batch as tb


class Hits(tb.Observer):
    def __init__(self) -> None:
        self.hits: list[tb.CacheHit] = []
        self.accepted: list[tb.ItemAccepted] = []

    def cache_hit(self, event: tb.CacheHit) -> None:
        self.hits.append(event)

    def item_accepted(self, event: tb.ItemAccepted) -> None:
        self.accepted.append(event)


class LRU(MutableMapping[Any, Any]):
    """A bounded mapping, as ``cachetools.LRUCache`` would be."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[Any, Any] = OrderedDict()

    def __getitem__(self, key: Any) -> Any:
        self.data.move_to_end(key)
        return self.data[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)

    def __delitem__(self, key: Any) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


async def test_a_hit_returns_the_output_without_queueing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    cache: dict[Any, Any] = {}
    hits = Hits()
    async with tb.open_batcher(process, cache=cache, observers=[hits]) as b:
        assert await b.submit("k", 1) == "k:1"
        assert cache == {("k", 1): "k:1"}
        start = trio.current_time()
        with trio.testing.assert_checkpoints():
            assert await b.submit("k", 1) == "k:1"
        assert trio.current_time() == start
        assert b.statistics().active_keys == 0
    assert [inputs for _, inputs, _ in process.calls] == [[1]]
    assert [(h.key, h.time) for h in hits.hits] == [("k", 1.0)]
    assert len(hits.accepted) == 1


async def test_a_hit_in_a_cancelled_scope_raises_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache: dict[Any, Any] = {("k", 1): "cached"}
    async with tb.open_batcher(Process(), cache=cache) as b:
        with trio.CancelScope() as scope:
            scope.cancel()
            await b.submit("k", 1)
            raise AssertionError("submit is a checkpoint")
        assert scope.cancelled_caught


async def test_keys_are_key_and_identity(autojump_clock: trio.testing.MockClock) -> None:
    process = Process()
    cache: dict[Any, Any] = {}
    async with tb.open_batcher(process, cache=cache, dedupe=lambda s: s.lower()) as b:
        assert await b.submit("k", "A") == "k:A"
        assert await b.submit("k", "a") == "k:A"
        assert await b.submit("other", "a") == "other:a"
    assert cache == {("k", "a"): "k:A", ("other", "a"): "other:a"}
    assert len(process.calls) == 2


async def test_the_item_is_its_identity_without_dedupe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    cache: dict[Any, Any] = {}
    async with tb.open_batcher(process, cache=cache) as b:
        async with trio.open_nursery() as nursery:
            # Without dedupe two equal items in flight are two inputs.
            nursery.start_soon(b.submit, "k", 1)
            nursery.start_soon(b.submit, "k", 1)
        with pytest.raises(TypeError, match=r"^item must be hashable"):
            await b.submit("k", [1])
        assert b.statistics().active_keys == 0
    assert sorted(len(inputs) for _, inputs, _ in process.calls) in ([1, 1], [2])
    assert sum(len(inputs) for _, inputs, _ in process.calls) == 2
    assert cache == {("k", 1): "k:1"}


async def test_outputs_are_stored_when_their_batch_finishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache: dict[Any, Any] = {}
    async with tb.open_batcher(Process(), cache=cache) as b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.submit, "k", 1)
            await trio.sleep(0.5)
            assert cache == {}  # processing, not finished
        assert cache == {("k", 1): "k:1"}


async def test_failures_are_never_stored(autojump_clock: trio.testing.MockClock) -> None:
    cache: dict[Any, Any] = {}
    async with tb.open_batcher(Process(), cache=cache, policy=tb.Duration(0.5)) as b:
        async with trio.open_nursery() as nursery:
            results: dict[Any, outcome.Outcome[Any]] = {}

            async def one(key: str, item: Any) -> None:
                results[key, item] = await outcome.acapture(b.submit, key, item)

            nursery.start_soon(one, "failed", "boom")
            nursery.start_soon(one, "failed", 1)
            nursery.start_soon(one, "item", "x")
            nursery.start_soon(one, "item", 2)
    assert type(results["failed", 1]) is outcome.Error
    assert type(results["item", "x"]) is outcome.Error
    # Only the one success: not the failed batch, not the failed item.
    assert cache == {("item", 2): "item:2"}


async def test_withdrawn_items_are_never_stored(autojump_clock: trio.testing.MockClock) -> None:
    cache: dict[Any, Any] = {}
    process = Process()
    async with tb.open_batcher(process, cache=cache, policy=tb.Duration(1.0)) as b:
        with trio.move_on_after(0.5):
            await b.submit("k", 1)
        assert await b.submit("k", 2) == "k:2"
    assert [inputs for _, inputs, _ in process.calls] == [[2]]
    assert cache == {("k", 2): "k:2"}


async def test_outcome_values_are_stored_unwrapped(autojump_clock: trio.testing.MockClock) -> None:
    async def process(key: str, inputs: list[int]) -> list[outcome.Outcome[int]]:
        return [outcome.Value(x * 10) for x in inputs]

    cache: dict[Any, Any] = {}
    async with tb.open_batcher(process, cache=cache) as b:
        assert await b.submit("k", 1) == 10  # type: ignore[comparison-overlap]
    assert cache == {("k", 1): 10}


async def test_priming_and_clearing_are_mapping_operations(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    cache = LRU(2)
    cache["k", 1] = "primed"
    async with tb.open_batcher(process, cache=cache) as b:
        assert await b.submit("k", 1) == "primed"
        assert process.calls == []
        cache.clear()
        assert await b.submit("k", 1) == "k:1"
        assert await b.submit("k", 2) == "k:2"
        assert await b.submit("k", 3) == "k:3"
        # Bounded by the mapping itself: 1 was evicted.
        assert await b.submit("k", 1) == "k:1"
    assert [inputs for _, inputs, _ in process.calls] == [[1], [2], [3], [1]]


async def test_a_cache_that_raises_on_store_breaks_nothing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Full(dict[Any, Any]):
        def __setitem__(self, key: Any, value: Any) -> None:
            raise ValueError("value too large")

    async with tb.open_batcher(Process(), cache=Full()) as b:
        assert await b.submit("k", 1) == "k:1"
        assert await b.submit("k", 1) == "k:1"
    assert "storing an output in the cache raised" in caplog.text


async def test_dedupe_and_cache_together(autojump_clock: trio.testing.MockClock) -> None:
    process = Process()
    cache: dict[Any, Any] = {}

    @asynccontextmanager
    async def acquire(key: str) -> AsyncIterator[str]:
        yield "connection"

    async def with_resource(key: str, inputs: list[int], resource: str) -> list[Any]:
        return await process(key, inputs)

    async with tb.open_batcher(with_resource, acquire=acquire, cache=cache, dedupe=True) as b:
        assert await b.submit_many("k", [1, 1, 2]) == ["k:1", "k:1", "k:2"]
        assert await b.submit_many("k", [2, 3, 1]) == ["k:2", "k:3", "k:1"]
    assert [inputs for _, inputs, _ in process.calls] == [[1, 2], [3]]


def test_cache_must_be_a_mutable_mapping() -> None:
    with pytest.raises(TypeError, match=r"^cache must be None or a mutable mapping"):
        tb.open_batcher(Process(), cache=[])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"^cancel_abandoned must be a bool"):
        tb.open_batcher(Process(), cancel_abandoned=1)  # type: ignore[call-overload]
