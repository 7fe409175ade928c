"""trio_batch.contrib.prometheus against a real batcher and a real prometheus_client."""

from __future__ import annotations

import gc
import importlib
import sys
from typing import Any

import outcome
import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from tutil import (
    MyError,
    Outcomes,
    Resources,
    harness,
    never_called_with_resource,
    returns_too_few,
    submit_in_order,
)

import trio_batch as tb
from trio_batch.contrib.prometheus import PrometheusObserver


def series(registry: CollectorRegistry, sample: str) -> dict[tuple[str, ...], float]:
    """``{label values: value}`` of every sample called ``sample``."""
    return {
        tuple(s.labels.values()): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == sample
    }


def gauges(registry: CollectorRegistry, batcher: str = "users") -> dict[str, float | None]:
    """The four statistics gauges of one batcher name."""
    return {
        field: registry.get_sample_value(f"trio_batch_{field}", {"batcher": batcher})
        for field in ("active_keys", "queued_items", "processing_batches", "waiting_submits")
    }


async def process(key: str, inputs: list[str]) -> list[Any]:
    """Takes 0.25 s; ``"boom"`` fails the batch, ``"bad"`` fails its own item."""
    await trio.sleep(0.25)
    if "boom" in inputs:
        raise MyError("boom")
    return [outcome.Error(MyError(x)) if x == "bad" else x.upper() for x in inputs]


async def test_counters_histograms_and_gauges_of_a_run(autojump_clock: trio.abc.Clock) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusObserver(registry)
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=1, max_batch_queue_size=2)
    async with harness(process, name="users", limits=limits, observers=[metrics]) as h:
        metrics.track(h.batcher)
        # t=0: [a] processing; [b, bad] and [d, boom] queued; f rejected.
        await h.submit_in_order("k", ["a", "b", "bad"])
        d = h.spawn("k", "d")
        await trio.testing.wait_all_tasks_blocked()
        await h.submit_in_order("k", ["boom", "f"])
        assert gauges(registry) == {
            "active_keys": 1,
            "queued_items": 4,
            "processing_batches": 1,
            "waiting_submits": 0,
        }
        await trio.sleep(0.1)
        d.cancel()  # withdrawn; [boom] alone runs from 0.5 to 0.75
    assert h.outcomes.values == {"a": "A", "b": "B"}
    assert h.outcomes.error_types() == {
        "bad": tb.ItemFailed,
        "d": trio.Cancelled,
        "boom": tb.BatchFailed,
        "f": tb.Rejected,
    }

    assert series(registry, "trio_batch_items_total") == {
        ("users", "accepted"): 5,
        ("users", "rejected"): 1,
        ("users", "withdrawn"): 1,
        ("users", "ok"): 2,
        ("users", "item_failed"): 1,
        ("users", "failed"): 1,
    }
    assert series(registry, "trio_batch_batches_total") == {
        ("users", "immediate", "ok"): 1,
        ("users", "finish", "ok"): 1,
        ("users", "finish", "failed"): 1,
    }
    assert series(registry, "trio_batch_abandoned_items_total") == {}
    # Batch sizes 1, 2, 1.
    assert series(registry, "trio_batch_batch_size_count") == {("users",): 3}
    assert series(registry, "trio_batch_batch_size_sum") == {("users",): 4}
    assert (
        registry.get_sample_value("trio_batch_batch_size_bucket", {"batcher": "users", "le": "1.0"})
        == 2
    )
    assert (
        registry.get_sample_value("trio_batch_batch_size_bucket", {"batcher": "users", "le": "2.0"})
        == 3
    )
    # Queue waits: a 0, b 0.25, bad 0.25, boom 0.5.
    assert series(registry, "trio_batch_queue_wait_seconds_count") == {("users",): 4}
    assert series(registry, "trio_batch_queue_wait_seconds_sum") == {("users",): 1.0}
    assert (
        registry.get_sample_value(
            "trio_batch_queue_wait_seconds_bucket", {"batcher": "users", "le": "0.25"}
        )
        == 3
    )
    assert series(registry, "trio_batch_process_seconds_count") == {("users",): 3}
    assert series(registry, "trio_batch_process_seconds_sum") == {("users",): 0.75}
    assert series(registry, "trio_batch_acquire_seconds_count") == {("users",): 3}
    assert series(registry, "trio_batch_acquire_seconds_sum") == {("users",): 0}
    assert gauges(registry) == {
        "active_keys": 0,
        "queued_items": 0,
        "processing_batches": 0,
        "waiting_submits": 0,
    }


async def _slow(key: str, inputs: list[str]) -> list[str]:
    await trio.sleep(10)
    return inputs  # pragma: no cover


async def test_contract_error_is_counted(autojump_clock: trio.abc.Clock) -> None:
    registry = CollectorRegistry()
    async with harness(returns_too_few(), observers=[PrometheusObserver(registry)]) as h:
        await h.submit_in_order("k", ["a"])
    assert h.outcomes.error_types() == {"a": tb.ProcessorContractError}
    assert series(registry, "trio_batch_items_total") == {
        ("batcher", "accepted"): 1,
        ("batcher", "contract_error"): 1,
    }
    assert series(registry, "trio_batch_batches_total") == {
        ("batcher", "immediate", "contract_error"): 1
    }
    assert series(registry, "trio_batch_batch_size_count") == {("batcher",): 1}


async def test_acquire_failure_is_counted_and_timed(autojump_clock: trio.abc.Clock) -> None:
    registry = CollectorRegistry()
    async with harness(
        never_called_with_resource,
        acquire=Resources(0.5, enter_error=lambda: MyError("no connection")),
        name="db",
        observers=[PrometheusObserver(registry)],
    ) as h:
        await h.submit_in_order("k", ["a", "b"])
    assert h.outcomes.error_types() == {
        "a": tb.ResourceAcquisitionFailed,
        "b": tb.ResourceAcquisitionFailed,
    }
    assert series(registry, "trio_batch_items_total") == {
        ("db", "accepted"): 2,
        ("db", "acquire_failed"): 2,
    }
    assert series(registry, "trio_batch_batches_total") == {
        ("db", "immediate", "acquire_failed"): 1
    }
    assert series(registry, "trio_batch_acquire_seconds_sum") == {("db",): 0.5}
    # process was never called: no size, no process time, no queue wait.
    assert series(registry, "trio_batch_batch_size_count") == {}
    assert series(registry, "trio_batch_queue_wait_seconds_count") == {}


async def test_batch_torn_down_with_the_block_is_counted(autojump_clock: trio.abc.Clock) -> None:
    registry = CollectorRegistry()
    outcomes = Outcomes()
    async with trio.open_nursery() as callers:
        with trio.move_on_after(1):  # cancels the block while [a, b] is processing
            async with tb.open_batcher(
                _slow, name="slow", observers=[PrometheusObserver(registry)]
            ) as batcher:
                outcomes.spawn(callers, batcher, "k", "a")
                outcomes.spawn(callers, batcher, "k", "b")
                await trio.sleep_forever()
    assert outcomes.error_types() == {"a": tb.BatcherClosed, "b": tb.BatcherClosed}
    assert series(registry, "trio_batch_items_total") == {
        ("slow", "accepted"): 2,
        ("slow", "cancelled"): 2,
    }
    assert series(registry, "trio_batch_batches_total") == {("slow", "immediate", "cancelled"): 1}
    # A cancelled batch is not timed; its process call never returned.
    assert series(registry, "trio_batch_acquire_seconds_count") == {}
    assert series(registry, "trio_batch_batch_size_count") == {}


async def test_batch_that_never_started_is_counted_when_torn_down(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = CollectorRegistry()
    outcomes = Outcomes()
    limits = tb.Limits(max_key_concurrency=1)
    async with trio.open_nursery() as callers:
        with pytest.raises(MyError, match=r"^body failed$"):
            async with tb.open_batcher(
                _slow, name="slow", limits=limits, observers=[PrometheusObserver(registry)]
            ) as batcher:
                # [a] processing; [b, c] queued: it never starts.
                await submit_in_order(callers, outcomes, batcher, "k", ["a", "b", "c"])
                await trio.sleep(1)
                raise MyError("body failed")
    assert outcomes.error_types() == dict.fromkeys("abc", tb.BatcherClosed)
    # Every accepted item has its outcome: the counts add up.
    assert series(registry, "trio_batch_items_total") == {
        ("slow", "accepted"): 3,
        ("slow", "cancelled"): 3,
    }
    assert series(registry, "trio_batch_batches_total") == {
        ("slow", "immediate", "cancelled"): 1,
        ("slow", "never_started", "cancelled"): 1,
    }
    assert series(registry, "trio_batch_acquire_seconds_count") == {}
    assert series(registry, "trio_batch_queue_wait_seconds_count") == {}
    assert series(registry, "trio_batch_batch_size_count") == {}


async def test_caller_cancelled_during_processing_is_abandoned(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = CollectorRegistry()

    async def process_for_1s(key: str, inputs: list[str]) -> list[str]:
        await trio.sleep(1)
        return inputs

    async with harness(process_for_1s, name="users", observers=[PrometheusObserver(registry)]) as h:
        h.spawn("k", "a")
        b = h.spawn("k", "b")
        await trio.sleep(0.5)
        b.cancel()
    assert h.outcomes.values == {"a": "a"}
    assert h.outcomes.error_types() == {"b": trio.Cancelled}
    assert series(registry, "trio_batch_items_total") == {
        ("users", "accepted"): 2,
        ("users", "ok"): 2,
    }
    assert series(registry, "trio_batch_abandoned_items_total") == {("users",): 1}
    assert series(registry, "trio_batch_process_seconds_sum") == {("users",): 1.0}


async def test_gauges_sum_batchers_of_one_name_and_forget_collected_ones(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusObserver(registry)
    size = tb.Size()  # partial batches wait: nothing runs, nothing changes
    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        async with (
            tb.open_batcher(process, policy=size, name="shared", observers=[metrics]) as one,
            tb.open_batcher(process, policy=size, name="shared", observers=[metrics]) as two,
            tb.open_batcher(process, policy=size, name="other", observers=[metrics]) as other,
        ):
            for batcher in (one, two, other):
                metrics.track(batcher)
            await submit_in_order(nursery, outcomes, one, "x", ["1", "2"])
            await submit_in_order(nursery, outcomes, two, "y", ["3"])
            await submit_in_order(nursery, outcomes, other, "z", ["4"])
            assert series(registry, "trio_batch_queued_items") == {("shared",): 3, ("other",): 1}
            assert series(registry, "trio_batch_active_keys") == {("shared",): 2, ("other",): 1}
    # Closed batchers read 0 until they are garbage; then their series go.
    assert series(registry, "trio_batch_queued_items") == {("shared",): 0, ("other",): 0}
    del one, two, other, batcher
    gc.collect()
    assert series(registry, "trio_batch_queued_items") == {}


async def test_scrape_from_another_thread_reads_in_the_trio_thread(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusObserver(registry)
    async with harness(
        process, policy=tb.Size(), name="users", observers=[metrics], callers_outlive_block=True
    ) as h:
        metrics.track(h.batcher)
        await h.submit_in_order("k", ["a", "b"])
        # As a metrics server does: generate the exposition in its own thread.
        lines = (await trio.to_thread.run_sync(generate_latest, registry)).splitlines()
        assert b'trio_batch_queued_items{batcher="users"} 2.0' in lines
        assert b'trio_batch_active_keys{batcher="users"} 1.0' in lines
    assert h.outcomes.values == {"a": "A", "b": "B"}


def test_scrape_after_the_run_skips_the_batcher() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusObserver(registry)

    async def main() -> tb.Batcher[Any, Any, Any]:
        async with tb.open_batcher(process, observers=[metrics]) as batcher:
            metrics.track(batcher)
        return batcher

    batcher = trio.run(main)
    assert series(registry, "trio_batch_queued_items") == {("batcher",): 0}  # not read
    del batcher


def test_observers_of_one_registry_and_namespace_share_metrics() -> None:
    registry = CollectorRegistry()
    first = PrometheusObserver(registry)
    second = PrometheusObserver(registry)  # no "duplicated timeseries"
    event = tb.ItemRejected(batcher="users", key="k", time=0.0)
    first.item_rejected(event)
    second.item_rejected(event)
    PrometheusObserver(registry, namespace="other").item_rejected(event)
    assert series(registry, "trio_batch_items_total") == {("users", "rejected"): 2}
    assert series(registry, "other_items_total") == {("users", "rejected"): 1}
    with pytest.raises(ValueError, match=r"^the metrics of namespace 'trio_batch' already"):
        PrometheusObserver(registry, size_buckets=(1, 10))


def test_default_registry_is_prometheus_clients() -> None:
    observer = PrometheusObserver(namespace="trio_batch_test_default")
    observer.item_rejected(tb.ItemRejected(batcher="users", key="k", time=0.0))
    value = REGISTRY.get_sample_value(
        "trio_batch_test_default_items_total", {"batcher": "users", "outcome": "rejected"}
    )
    assert value == 1


def test_track_outside_trio_raises() -> None:
    async def main() -> tb.Batcher[Any, Any, Any]:
        async with tb.open_batcher(process) as batcher:
            pass
        return batcher

    batcher = trio.run(main)
    with pytest.raises(RuntimeError, match=r"^must be called from async context$"):
        PrometheusObserver(CollectorRegistry()).track(batcher)


def test_import_without_prometheus_client_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "trio_batch.contrib.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'trio_batch\[prometheus\]'$"):
        importlib.import_module("trio_batch.contrib.prometheus")
