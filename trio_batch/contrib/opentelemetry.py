"""OpenTelemetry tracing for batchers: one span per batch, linked to its callers' spans.

One line turns it on::

    from trio_batch.contrib.opentelemetry import OpenTelemetryObserver

    async with tb.open_batcher(process, name="users", observers=[OpenTelemetryObserver()]) as b:
        ...

A batch serves many requests, so its span cannot be the child of any one of
them. It is a root span with a *link* to the span of every caller whose item is
in it (the span that was current when the caller called
:meth:`~trio_batch.Batcher.submit`), the shape OpenTelemetry recommends for
batch processing: from a request's trace you can follow the link to the batch
that served it, and from the batch to every request it served.

Spans your code creates inside ``acquire`` and ``process`` are children of the
batch span: ``batch_started`` runs in the batch's own context, before
``acquire``, and makes the batch span current there.

Design: ``item_accepted`` runs in the caller's context (for ``Overflow.WAIT``, a
copy taken when the caller began to wait for room), so it can read the caller's
current span; it keeps that span's context (only if valid), keyed by the
item's id. ``batch_started`` opens the batch span with links to the items in the
batch at that moment and attaches it as the current context of the batch's
task; ``batch_finished``, in the same task, finds the span by ``batch_id``, adds
links for items that joined while the batch's resource was being acquired,
sets the outcome, ends the span and detaches it. A context is dropped when its
item is withdrawn or its batch ends (also a batch that never started because
the block was torn down: it gets no span), so memory holds only items and
batches in flight.

Events carry Trio's clock (:func:`trio.current_time`, virtual in tests), not
wall-clock time, so spans use the SDK's own clock: a span starts when the
batch's task begins and ends when the batch ends.
"""

from __future__ import annotations

from contextvars import Token
from typing import final

try:
    from opentelemetry import context as otel_context, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised with the module hidden
    raise ImportError(
        "trio_batch.contrib.opentelemetry needs opentelemetry-api: "
        "pip install 'trio_batch[opentelemetry]'"
    ) from exc

from .. import __version__
from .._observe import (
    BatchFinished,
    BatchOutcome,
    BatchStarted,
    CacheHit,
    ItemAccepted,
    ItemRejected,
    ItemWithdrawn,
)

__all__ = ["OpenTelemetryObserver"]

# An empty context: a batch span has no parent, whatever span was current when
# the block was entered (the batch's task runs in a copy of that context).
_ROOT = Context()

_ERRORS = frozenset({BatchOutcome.FAILED, BatchOutcome.CONTRACT_ERROR, BatchOutcome.ACQUIRE_FAILED})


@final
class _OpenBatch:
    """A batch span between ``batch_started`` and ``batch_finished``."""

    __slots__ = ("item_ids", "span", "token")

    def __init__(self, span: Span, item_ids: tuple[int, ...], token: Token[Context]) -> None:
        self.span = span
        #: The items in the batch when it started (they are linked already).
        self.item_ids = item_ids
        #: Restores the batch task's context that was current before the span.
        self.token = token


@final
class OpenTelemetryObserver:
    """An :class:`~trio_batch.Observer` that traces every batch as an OpenTelemetry span.

    Each started batch gets one span, named ``"batch <batcher name>"``, of kind
    ``INTERNAL`` and with no parent. It is linked to the span that was current
    in each caller whose item the batch holds: the items in it when its task
    began, and those that joined it while its resource was being acquired
    (a caller with no valid current span gets no link). It starts when the
    batch's task begins and ends when every caller of the batch has its
    outcome. In between it is the current span of the batch's task, so spans
    created in ``acquire`` and ``process`` are its children. It carries the
    attributes:

    * ``trio_batch.batcher``: the batcher's ``name``;
    * ``trio_batch.batch.size``: items in the batch when its task began, then,
      when it ends, the number passed to ``process`` (0 if it was never called);
    * ``trio_batch.batch.start_reason``: a :class:`~trio_batch.StartReason`
      value (``"full"``, ``"timer"``, ...);
    * ``trio_batch.batch.outcome``: a :class:`~trio_batch.BatchOutcome` value;
    * ``trio_batch.batch.failed_items`` and ``trio_batch.batch.abandoned_items``:
      items ``process`` failed alone, and callers cancelled after processing
      began.

    The span's status is ``ERROR`` (described by the outcome) when ``process``
    or ``acquire`` raised or ``process`` broke its contract; otherwise it is
    left unset. A batch that never started (its block was torn down first) gets
    no span.

    One observer may serve any number of batchers: items and batches are told
    apart by their ids, unique within the process. It holds a caller's span
    context only while the item is in flight. The SDK keeps at most 128 links
    per span by default; for larger batches raise
    ``OTEL_SPAN_LINK_COUNT_LIMIT`` (or ``SpanLimits(max_links=...)``).

    Args:
        tracer_provider: where spans go; the default is the global provider
            (:func:`opentelemetry.trace.get_tracer_provider`), so with no SDK
            configured the observer records nothing and costs little.
    """

    __slots__ = ("_batches", "_callers", "_tracer")

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("trio_batch", __version__, tracer_provider)
        # Item id -> its caller's span context, from acceptance until its batch
        # ends or it is withdrawn.
        self._callers: dict[int, SpanContext] = {}
        # Batch id -> its span, from batch_started until batch_finished.
        self._batches: dict[int, _OpenBatch] = {}

    # -- Observer hooks (called by the batcher) ----------------------------------

    def item_accepted(self, event: ItemAccepted) -> None:
        """Remember the caller's current span context, if it is valid."""
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            self._callers[event.item_id] = context

    def item_rejected(self, event: ItemRejected) -> None:
        """Nothing: a rejected item is in no batch."""

    def cache_hit(self, event: CacheHit) -> None:
        """Nothing: an item answered from the cache is in no batch."""

    def item_withdrawn(self, event: ItemWithdrawn) -> None:
        """Forget the withdrawn item's context."""
        self._callers.pop(event.item_id, None)

    def batch_started(self, event: BatchStarted) -> None:
        """Open the batch's span, linked to its callers' spans; make it current in its task."""
        callers = self._callers
        links = []
        for item_id in event.item_ids:
            context = callers.get(item_id)
            if context is not None:
                links.append(Link(context))
        span = self._tracer.start_span(
            f"batch {event.batcher}",
            context=_ROOT,
            links=links,
            attributes={
                "trio_batch.batcher": event.batcher,
                "trio_batch.batch.size": event.size,
                "trio_batch.batch.start_reason": event.reason.value,
            },
        )
        # This runs in the batch's own context, before acquire: the span is the
        # parent of whatever acquire and process trace. batch_finished, in the
        # same context, detaches it.
        token = otel_context.attach(trace.set_span_in_context(span))
        self._batches[event.batch_id] = _OpenBatch(span, event.item_ids, token)

    def batch_finished(self, event: BatchFinished) -> None:
        """Link late joiners, record the outcome, end the span; forget the batch's items."""
        callers = self._callers
        batch = self._batches.pop(event.batch_id, None)
        if batch is None:  # never started (torn down with the block): no span
            for item_id in event.item_ids:
                callers.pop(item_id, None)
            return
        span = batch.span
        try:
            linked = frozenset(batch.item_ids)
            for item_id in event.item_ids:
                context = callers.pop(item_id, None)
                if context is not None and item_id not in linked:
                    span.add_link(context)
            span.set_attributes(
                {
                    "trio_batch.batch.size": event.size,
                    "trio_batch.batch.outcome": event.outcome.value,
                    "trio_batch.batch.failed_items": event.failed_items,
                    "trio_batch.batch.abandoned_items": event.abandoned,
                }
            )
            if event.outcome in _ERRORS:
                span.set_status(Status(StatusCode.ERROR, event.outcome.value))
            span.end()
        finally:
            otel_context.detach(batch.token)

    def __repr__(self) -> str:
        return f"<trio_batch.contrib.opentelemetry.OpenTelemetryObserver {id(self):#x}>"
