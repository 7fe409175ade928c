"""trio_batch.contrib.opentelemetry against a real batcher and the OpenTelemetry SDK.

Every caller runs inside its own span; the SDK's in-memory exporter receives
the spans, and the tests assert the batch spans' exact links and attributes.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import outcome
import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode
from tutil import MyError, Outcomes, Resources, harness, raises_my_error, returns_too_few

import trio_batch as tb
from trio_batch.contrib.opentelemetry import OpenTelemetryObserver


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


class Requests:
    """Callers of ``submit``, each inside its own span ``"request <item>"``."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("tests")
        self.outcomes = Outcomes()
        self.contexts: dict[str, SpanContext] = {}

    def spawn(
        self, nursery: trio.Nursery, batcher: tb.Batcher[Any, Any, Any], key: str, item: str
    ) -> trio.CancelScope:
        scope = trio.CancelScope()
        nursery.start_soon(self._request, batcher, key, item, scope)
        return scope

    async def _request(
        self, batcher: tb.Batcher[Any, Any, Any], key: str, item: str, scope: trio.CancelScope
    ) -> None:
        with self.tracer.start_as_current_span(f"request {item}") as span:
            self.contexts[item] = span.get_span_context()
            await self.outcomes.submit(batcher, key, item, scope)

    def links(self, *items: str) -> list[SpanContext]:
        return [self.contexts[item] for item in items]


def batch_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name.startswith("batch ")]


def links(span: ReadableSpan) -> list[SpanContext]:
    return [link.context for link in span.links]


def assert_forgotten(observer: OpenTelemetryObserver) -> None:
    """The observer holds nothing once no item is in flight."""
    assert observer._callers == {}
    assert observer._batches == {}


async def echo(key: str, inputs: list[str]) -> list[str]:
    await trio.sleep(0.25)
    return inputs


async def echo_with(key: str, inputs: list[str], resource: str) -> list[str]:
    return await echo(key, inputs)


async def test_batch_span_links_every_traced_caller(
    autojump_clock: trio.abc.Clock, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    observer = OpenTelemetryObserver(provider)
    requests = Requests(provider)
    limits = tb.Limits(max_batch_size=3)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            echo, policy=tb.Size(), limits=limits, name="users", observers=[observer]
        ) as batcher:
            # "plain" has no span; the batch fills, and starts, in c's submit.
            nursery.start_soon(requests.outcomes.submit, batcher, "k", "plain")
            await trio.testing.wait_all_tasks_blocked()
            for item in ["a", "c"]:
                requests.spawn(nursery, batcher, "k", item)
                await trio.testing.wait_all_tasks_blocked()
    assert requests.outcomes.values == {"plain": "plain", "a": "a", "c": "c"}

    [span] = batch_spans(exporter)
    assert span.name == "batch users"
    assert span.kind is SpanKind.INTERNAL
    assert span.parent is None  # not the child of c's span, current where it started
    assert span.context is not None
    assert span.context.trace_id not in {ctx.trace_id for ctx in requests.contexts.values()}
    assert links(span) == requests.links("a", "c")
    assert dict(span.attributes or {}) == {
        "trio_batch.batcher": "users",
        "trio_batch.batch.size": 3,
        "trio_batch.batch.start_reason": "full",
        "trio_batch.batch.outcome": "ok",
        "trio_batch.batch.failed_items": 0,
        "trio_batch.batch.abandoned_items": 0,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert_forgotten(observer)


async def test_items_joining_while_acquiring_are_linked_withdrawn_ones_are_not(
    autojump_clock: trio.abc.Clock, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    observer = OpenTelemetryObserver(provider)
    requests = Requests(provider)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            echo_with, acquire=Resources(0.5), name="db", observers=[observer]
        ) as batcher:
            requests.spawn(nursery, batcher, "k", "a")  # starts the batch: acquiring
            await trio.sleep(0.1)
            requests.spawn(nursery, batcher, "k", "b")  # joins it
            await trio.sleep(0.1)
            c = requests.spawn(nursery, batcher, "k", "c")  # joins it, then withdraws
            await trio.sleep(0.1)
            c.cancel()
    assert requests.outcomes.values == {"a": "a", "b": "b"}
    assert requests.outcomes.error_types() == {"c": trio.Cancelled}

    [span] = batch_spans(exporter)
    assert links(span) == requests.links("a", "b")
    assert span.attributes is not None
    assert span.attributes["trio_batch.batch.size"] == 2
    assert span.attributes["trio_batch.batch.start_reason"] == "immediate"
    assert_forgotten(observer)


async def test_batches_whose_first_items_all_withdrew_are_found_by_their_ids(
    autojump_clock: trio.abc.Clock, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    observer = OpenTelemetryObserver(provider)
    requests = Requests(provider)
    limits = tb.Limits(max_key_concurrency=1)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            echo_with, acquire=Resources(0.5), limits=limits, name="db", observers=[observer]
        ) as batcher:
            # Batch 1 starts with a; b joins; a withdraws; b is processed alone.
            a = requests.spawn(nursery, batcher, "k", "a")
            await trio.sleep(0.1)
            requests.spawn(nursery, batcher, "k", "b")
            await trio.sleep(0.1)
            a.cancel()
            await trio.sleep(1)
            # Batch 2 starts with c; c withdraws: the batch is dropped.
            c = requests.spawn(nursery, batcher, "k", "c")
            await trio.sleep(0.1)
            c.cancel()
    assert requests.outcomes.values == {"b": "b"}
    assert requests.outcomes.error_types() == {"a": trio.Cancelled, "c": trio.Cancelled}

    first, dropped = batch_spans(exporter)
    # a's link was made when the batch started; it stays.
    assert links(first) == requests.links("a", "b")
    assert first.attributes is not None
    assert first.attributes["trio_batch.batch.size"] == 1
    assert first.attributes["trio_batch.batch.outcome"] == "ok"
    assert links(dropped) == requests.links("c")
    assert dropped.attributes is not None
    assert dropped.attributes["trio_batch.batch.size"] == 0
    assert dropped.attributes["trio_batch.batch.outcome"] == "cancelled"
    assert dropped.status.status_code is StatusCode.UNSET
    assert_forgotten(observer)


async def _fails_item(key: str, inputs: list[str]) -> list[Any]:
    return [outcome.Error(MyError(x)) if x == "b" else x for x in inputs]


@pytest.mark.parametrize(
    ("make_batcher", "status", "description", "failed_items"),
    [
        pytest.param(
            lambda o: tb.open_batcher(raises_my_error(), observers=[o]), "failed", True, 0
        ),
        pytest.param(
            lambda o: tb.open_batcher(returns_too_few(), observers=[o]), "contract_error", True, 0
        ),
        pytest.param(
            lambda o: tb.open_batcher(
                echo_with, acquire=Resources(enter_error=lambda: MyError("x")), observers=[o]
            ),
            "acquire_failed",
            True,
            0,
        ),
        pytest.param(lambda o: tb.open_batcher(_fails_item, observers=[o]), "ok", False, 1),
    ],
)
async def test_outcome_and_error_status(
    autojump_clock: trio.abc.Clock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    make_batcher: Callable[[OpenTelemetryObserver], Any],
    status: str,
    description: bool,
    failed_items: int,
) -> None:
    observer = OpenTelemetryObserver(provider)
    requests = Requests(provider)
    async with trio.open_nursery() as nursery:
        async with make_batcher(observer) as batcher:
            requests.spawn(nursery, batcher, "k", "a")
            requests.spawn(nursery, batcher, "k", "b")
            await trio.testing.wait_all_tasks_blocked()
    [span] = batch_spans(exporter)
    # a and b were spawned in the same round: Trio may run either first.
    assert sorted(ctx.span_id for ctx in links(span)) == sorted(
        ctx.span_id for ctx in requests.links("a", "b")
    )
    assert span.attributes is not None
    assert span.attributes["trio_batch.batch.outcome"] == status
    assert span.attributes["trio_batch.batch.failed_items"] == failed_items
    if description:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == status
    else:
        assert span.status.status_code is StatusCode.UNSET
    assert_forgotten(observer)


async def test_memory_does_not_grow_with_traffic(
    autojump_clock: trio.abc.Clock, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    observer = OpenTelemetryObserver(provider)
    requests = Requests(provider)
    limits = tb.Limits(max_batch_size=4, max_key_concurrency=2)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            echo_with, acquire=Resources(0.1), limits=limits, observers=[observer]
        ) as batcher:
            for round in range(20):
                scopes = [
                    requests.spawn(nursery, batcher, f"key{round % 3}", f"{round}-{i}")
                    for i in range(6)
                ]
                await trio.sleep(0.05)  # the first batches are acquiring
                scopes[0].cancel()
                scopes[5].cancel()
                await trio.sleep(0.05)
            in_flight = len(observer._callers)
            assert in_flight > 0
    assert len(requests.outcomes.errors) == 40  # two withdrawn per round
    assert len(requests.outcomes.values) == 80
    assert_forgotten(observer)


@pytest.mark.parametrize("same_name", [False, True])
async def test_one_observer_serves_several_batchers(
    autojump_clock: trio.abc.Clock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    same_name: bool,
) -> None:
    observer = OpenTelemetryObserver(provider)
    requests = Requests(provider)
    names = ("same", "same") if same_name else ("one", "two")
    async with (
        trio.open_nursery() as nursery,
        tb.open_batcher(echo, name=names[0], observers=[observer]) as one,
        tb.open_batcher(echo, name=names[1], observers=[observer]) as two,
    ):
        # Item and batch ids are unique in the process, whatever the names.
        requests.spawn(nursery, one, "k", "a")
        requests.spawn(nursery, two, "k", "b")
        await trio.testing.wait_all_tasks_blocked()
    spans = batch_spans(exporter)
    assert sorted(span.name for span in spans) == sorted(f"batch {name}" for name in names)
    assert sorted(str((span.attributes or {})["trio_batch.batcher"]) for span in spans) == sorted(
        names
    )
    # Each span links one caller, and each caller is linked once.
    assert sorted(ctx.span_id for span in spans for ctx in links(span)) == sorted(
        ctx.span_id for ctx in requests.links("a", "b")
    )
    assert all(len(span.links) == 1 for span in spans)
    if not same_name:
        by_name = {span.name: span for span in spans}
        assert links(by_name["batch one"]) == requests.links("a")
        assert links(by_name["batch two"]) == requests.links("b")
    assert_forgotten(observer)


async def test_spans_made_in_acquire_and_process_are_children_of_the_batch_span(
    autojump_clock: trio.abc.Clock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = OpenTelemetryObserver(provider)
    requests = Requests(provider)
    tracer = provider.get_tracer("tests")

    @asynccontextmanager
    async def acquire(key: str) -> AsyncIterator[str]:
        with tracer.start_as_current_span("connect"):
            await trio.sleep(0.25)
        yield "connection"

    async def process(key: str, inputs: list[str], resource: str) -> list[str]:
        with tracer.start_as_current_span(f"query {key}"):
            return await echo(key, inputs)

    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, acquire=acquire, name="db", observers=[observer]
        ) as batcher:
            # Two batches at once: each child goes to its own batch.
            requests.spawn(nursery, batcher, "x", "a")
            requests.spawn(nursery, batcher, "y", "b")
            await trio.testing.wait_all_tasks_blocked()
    assert requests.outcomes.values == {"a": "a", "b": "b"}

    finished = exporter.get_finished_spans()
    by_name = {span.name: span for span in finished}
    batches = {links(span)[0].span_id: span for span in batch_spans(exporter)}
    batch_a = batches[requests.contexts["a"].span_id]
    batch_b = batches[requests.contexts["b"].span_id]
    assert batch_a.parent is None
    assert batch_b.parent is None
    assert batch_a.context is not None
    assert batch_b.context is not None
    query_x, query_y = by_name["query x"], by_name["query y"]
    assert query_x.parent is not None
    assert query_x.parent.span_id == batch_a.context.span_id
    assert query_x.context is not None
    assert query_x.context.trace_id == batch_a.context.trace_id
    assert query_y.parent is not None
    assert query_y.parent.span_id == batch_b.context.span_id
    connects = [span for span in finished if span.name == "connect"]
    assert sorted(span.parent.span_id for span in connects if span.parent is not None) == sorted(
        [batch_a.context.span_id, batch_b.context.span_id]
    )
    # The request spans stay where they were: roots of their own traces.
    assert by_name["request a"].parent is None
    assert by_name["request b"].parent is None
    # Attaching and detaching the batch span's context made OpenTelemetry complain of nothing.
    assert [r for r in caplog.records if r.name.startswith("opentelemetry")] == []
    assert_forgotten(observer)


async def test_a_caller_admitted_from_overflow_is_linked_to_its_own_span(
    autojump_clock: trio.abc.Clock, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    observer = OpenTelemetryObserver(provider)
    requests = Requests(provider)
    limits = tb.Limits(
        max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
    )
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(echo, limits=limits, observers=[observer]) as batcher:
            # a processes from 0; b queues; c waits for room and is admitted by
            # b's batch task at 0.25, with c's own span context.
            for item in ["a", "b", "c"]:
                requests.spawn(nursery, batcher, "k", item)
                await trio.testing.wait_all_tasks_blocked()
    assert requests.outcomes.values == {"a": "a", "b": "b", "c": "c"}
    assert [links(span) for span in batch_spans(exporter)] == [
        requests.links("a"),
        requests.links("b"),
        requests.links("c"),
    ]
    assert_forgotten(observer)


async def test_a_batch_torn_down_before_it_started_has_no_span_and_is_forgotten(
    autojump_clock: trio.abc.Clock, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    observer = OpenTelemetryObserver(provider)
    requests = Requests(provider)
    limits = tb.Limits(max_key_concurrency=1)
    async with trio.open_nursery() as nursery:
        with pytest.raises(MyError):
            async with tb.open_batcher(echo, limits=limits, observers=[observer]) as batcher:
                # [a] processing; [b, c] queued: it never starts.
                for item in ["a", "b", "c"]:
                    requests.spawn(nursery, batcher, "k", item)
                    await trio.testing.wait_all_tasks_blocked()
                await trio.sleep(0.125)
                raise MyError("body failed")
    assert requests.outcomes.error_types() == dict.fromkeys("abc", tb.BatcherClosed)
    [span] = batch_spans(exporter)
    assert links(span) == requests.links("a")
    assert span.attributes is not None
    assert span.attributes["trio_batch.batch.outcome"] == "cancelled"
    assert_forgotten(observer)  # b's and c's contexts were dropped too


async def test_without_a_configured_sdk_nothing_is_kept(autojump_clock: trio.abc.Clock) -> None:
    observer = OpenTelemetryObserver()  # the global provider: a no-op unless configured
    async with harness(echo, observers=[observer], callers_outlive_block=True) as h:
        h.spawn("k", "a")
        await trio.testing.wait_all_tasks_blocked()
        assert observer._callers == {}
    assert h.outcomes.values == {"a": "a"}
    assert_forgotten(observer)


def test_import_without_opentelemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "trio_batch.contrib.opentelemetry")
    with pytest.raises(ImportError, match=r"pip install 'trio_batch\[opentelemetry\]'$"):
        importlib.import_module("trio_batch.contrib.opentelemetry")
