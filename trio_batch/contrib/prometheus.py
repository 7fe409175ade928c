"""Prometheus metrics for batchers, with ``prometheus_client``.

One line turns them on::

    from trio_batch.contrib.prometheus import PrometheusObserver

    async with tb.open_batcher(process, name="users", observers=[PrometheusObserver()]) as b:
        ...

and one more exports :meth:`~trio_batch.Batcher.statistics` as gauges::

    metrics = PrometheusObserver()
    async with tb.open_batcher(process, name="users", observers=[metrics]) as b:
        metrics.track(b)

Every metric is labelled by the batcher's ``name``, never by key: keys are
unbounded, and a label per key would be a memory leak in the Prometheus server.
Give each batcher its own name; batchers that share a name share their series.

Observers built for the same registry and namespace share one set of metrics,
so ``PrometheusObserver()`` may be written wherever a batcher is opened, as
often as needed, without "duplicated timeseries" errors.

Design: counters and histograms are fed by the observer hooks (a labelled
child is looked up once per batcher name and outcome, then cached, so an item
costs a dict lookup and an increment). Gauges are not fed by events: the
observer does not know the batcher object, and a gauge kept up to date by
events would be a second set of counters that can drift. Instead
:meth:`PrometheusObserver.track` registers the batcher (by weak reference) with
a collector that calls :meth:`~trio_batch.Batcher.statistics` at scrape time, in
the batcher's own Trio thread, since its state is not safe to read from the
thread of a metrics server.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, final

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised with the module hidden
    raise ImportError(
        "trio_batch.contrib.prometheus needs prometheus_client: "
        "pip install 'trio_batch[prometheus]'"
    ) from exc

import trio

from .._batcher import Batcher
from .._observe import (
    BatchFinished,
    BatchOutcome,
    BatchStarted,
    CacheHit,
    ItemAccepted,
    ItemRejected,
    ItemWithdrawn,
)
from .._statistics import BatcherStatistics

__all__ = [
    "DEFAULT_COST_BUCKETS",
    "DEFAULT_SECONDS_BUCKETS",
    "DEFAULT_SIZE_BUCKETS",
    "PrometheusObserver",
]

#: Bucket bounds of the ``batch_size`` histogram.
DEFAULT_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: Bucket bounds of the ``*_seconds`` histograms: batching waits are short, so
#: they start at half a millisecond.
DEFAULT_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Bucket bounds of the ``batch_cost`` histogram (batchers with a cost function):
#: powers of 4, for costs counted in tokens, rows or bytes.
DEFAULT_COST_BUCKETS: tuple[float, ...] = tuple(4.0**n for n in range(11))

# The ``reason`` label of ``batches_total`` for a batch that never started: the
# block was torn down while it waited (``BatchFinished.reason`` is ``None``).
_NEVER_STARTED = "never_started"

# The statistics() fields exported as gauges, with their help text.
_GAUGES = (
    ("active_keys", "Keys with at least one batch queued or started."),
    ("queued_items", "Items in batches that have not begun processing."),
    ("processing_batches", "Started batches: acquiring their resource or processing."),
    ("waiting_submits", "Callers waiting for room in their key's queue (Overflow.WAIT)."),
    ("queued_cost", "Total cost of the queued items (0 without a cost function)."),
)


@final
class _StatisticsCollector:
    """Reads ``statistics()`` of the tracked batchers when the registry is scraped."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._lock = threading.Lock()
        # Batcher name -> live batchers of that name -> the Trio run they live in.
        self._tracked: dict[str, weakref.WeakKeyDictionary[Batcher[Any, Any, Any], Any]] = {}

    def track(self, batcher: Batcher[Any, Any, Any]) -> None:
        token = trio.lowlevel.current_trio_token()
        with self._lock:
            self._tracked.setdefault(batcher.name, weakref.WeakKeyDictionary())[batcher] = token

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(f"{self._namespace}_{field}", help, labels=["batcher"])
            for field, help in _GAUGES
        ]

    def describe(self) -> Iterable[Metric]:
        # Lets the registry detect a clash of names without scraping.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            for name in [name for name, live in self._tracked.items() if not live]:
                del self._tracked[name]
            tracked = [(name, list(live.items())) for name, live in self._tracked.items()]
        families = self._families()
        for name, batchers in tracked:
            totals: list[float] = [0] * len(_GAUGES)
            for batcher, token in batchers:
                stats = _read_statistics(batcher, token)
                if stats is None:
                    continue
                for index, (field, _) in enumerate(_GAUGES):
                    totals[index] += getattr(stats, field)
            for family, total in zip(families, totals, strict=True):
                family.add_metric([name], total)
        return families


def _read_statistics(batcher: Batcher[Any, Any, Any], token: Any) -> BatcherStatistics | None:
    """``batcher.statistics()``, read in the batcher's Trio thread; None if its run is over."""
    try:
        here = trio.lowlevel.current_trio_token()
    except RuntimeError:
        here = None
    if here is token:
        return batcher.statistics()
    try:
        return trio.from_thread.run_sync(batcher.statistics, trio_token=token)
    except (trio.RunFinishedError, RuntimeError):
        return None


@final
class _Metrics:
    """The metrics of one (registry, namespace): shared by every observer built for them."""

    def __init__(
        self,
        registry: CollectorRegistry,
        namespace: str,
        size_buckets: Sequence[float],
        seconds_buckets: Sequence[float],
        cost_buckets: Sequence[float],
    ) -> None:
        self.key = (tuple(size_buckets), tuple(seconds_buckets), tuple(cost_buckets))
        common: dict[str, Any] = {"namespace": namespace, "registry": registry}
        self.items = Counter(
            "items",
            "Items by outcome. Every accepted item is counted once more under exactly one "
            "of withdrawn, ok, item_failed, failed, contract_error, acquire_failed, cancelled; "
            "rejected and cache_hit items (answered from the cache) were never accepted.",
            ["batcher", "outcome"],
            **common,
        )
        self.abandoned = Counter(
            "abandoned_items",
            "Items whose caller was cancelled after processing began (output discarded).",
            ["batcher"],
            **common,
        )
        self.batches = Counter(
            "batches",
            "Batches that ended, by start reason (never_started for a batch torn down with "
            "the block before it started) and outcome.",
            ["batcher", "reason", "outcome"],
            **common,
        )
        self.batch_size = Histogram(
            "batch_size",
            "Items passed to one process call (batches not cancelled).",
            ["batcher"],
            buckets=tuple(size_buckets),
            **common,
        )
        self.batch_cost = Histogram(
            "batch_cost",
            "Total cost of the items passed to one process call (batches not cancelled), "
            "for batchers with a cost function.",
            ["batcher"],
            buckets=tuple(cost_buckets),
            **common,
        )
        self.queue_wait = Histogram(
            "queue_wait_seconds",
            "Per processed item, seconds from its acceptance until process was called with it.",
            ["batcher"],
            buckets=tuple(seconds_buckets),
            **common,
        )
        self.acquire = Histogram(
            "acquire_seconds",
            "Per batch, seconds from its start until process was called (acquiring the "
            "resource) or acquisition failed.",
            ["batcher"],
            buckets=tuple(seconds_buckets),
            **common,
        )
        self.process = Histogram(
            "process_seconds",
            "Per processed batch, seconds that process (and releasing the resource) took.",
            ["batcher"],
            buckets=tuple(seconds_buckets),
            **common,
        )
        self.statistics = _StatisticsCollector(namespace)
        registry.register(self.statistics)
        # Labelled children, looked up once: labels() takes a lock and builds a tuple.
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


_lock = threading.Lock()
_shared: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Metrics]] = (
    weakref.WeakKeyDictionary()
)


def _metrics_for(
    registry: CollectorRegistry,
    namespace: str,
    size_buckets: Sequence[float],
    seconds_buckets: Sequence[float],
    cost_buckets: Sequence[float],
) -> _Metrics:
    with _lock:
        by_namespace = _shared.setdefault(registry, {})
        metrics = by_namespace.get(namespace)
        if metrics is None:
            metrics = by_namespace[namespace] = _Metrics(
                registry, namespace, size_buckets, seconds_buckets, cost_buckets
            )
        elif metrics.key != (tuple(size_buckets), tuple(seconds_buckets), tuple(cost_buckets)):
            raise ValueError(
                f"the metrics of namespace {namespace!r} already exist in this registry "
                "with other buckets"
            )
        return metrics


@final
class PrometheusObserver:
    """An :class:`~trio_batch.Observer` that records a batcher's work as Prometheus metrics.

    Pass it in ``observers=[...]``; one observer may serve many batchers. Each
    metric has a ``batcher`` label (the batcher's ``name``); none is labelled
    by key. With the default namespace the series are:

    * ``trio_batch_items_total{batcher, outcome}``: ``accepted``, ``rejected``,
      ``withdrawn``, and, when the item's batch ends, ``ok``, ``item_failed``
      (``process`` returned ``outcome.Error`` for it), ``failed``,
      ``contract_error``, ``acquire_failed`` or ``cancelled``. An accepted item
      is counted once more, under exactly one of those last seven, once its
      outcome is known.
    * ``trio_batch_abandoned_items_total{batcher}``: callers cancelled after
      processing began; their outputs were discarded.
    * ``trio_batch_batches_total{batcher, reason, outcome}``: batches that
      ended, by :class:`~trio_batch.StartReason` and
      :class:`~trio_batch.BatchOutcome` values. A batch that never started
      (the block was torn down while it waited; its callers got
      :exc:`~trio_batch.BatcherClosed`) is counted with reason
      ``never_started`` and outcome ``cancelled``.
    * Histograms, for batches that were not cancelled (a batch dropped by
      withdrawals or torn down with the block measures the shutdown, not the
      work): ``trio_batch_batch_size`` and ``trio_batch_process_seconds`` per
      batch that ``process`` was called for, ``trio_batch_queue_wait_seconds``
      per item of such a batch (acceptance until ``process`` was called with
      it), and ``trio_batch_acquire_seconds`` per batch (start until
      ``process`` was called, or until ``acquire`` failed).
      ``trio_batch_batch_cost`` per batch that ``process`` was called for,
      only for batchers with a cost function (``open_batcher(cost=...)``):
      the total cost of its items.
    * Gauges ``trio_batch_active_keys``, ``trio_batch_queued_items``,
      ``trio_batch_processing_batches``, ``trio_batch_waiting_submits`` and
      ``trio_batch_queued_cost``,
      for batchers passed to :meth:`track`: the fields of
      :meth:`~trio_batch.Batcher.statistics`, read at scrape time and summed
      over the live batchers of each name.

    Times are Trio's clock (:func:`trio.current_time`), so tests on virtual
    time see exact values.

    Observers built for the same registry and namespace share their metrics
    (and must agree on the buckets). Building one never raises "duplicated
    timeseries" for that reason, but it does if other metrics of the same
    names exist in the registry.

    Args:
        registry: where the metrics are registered; the default is
            ``prometheus_client.REGISTRY``, the one that
            ``prometheus_client.start_http_server`` serves.
        namespace: the prefix of every metric name.
        size_buckets: bucket bounds of ``batch_size``.
        seconds_buckets: bucket bounds of the ``*_seconds`` histograms.
        cost_buckets: bucket bounds of ``batch_cost``.

    Raises:
        ValueError: the registry already holds metrics of these names that this
            module did not create, or created with other buckets.
    """

    __slots__ = ("_abandoned", "_items", "_metrics")

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "trio_batch",
        *,
        size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
        seconds_buckets: Sequence[float] = DEFAULT_SECONDS_BUCKETS,
        cost_buckets: Sequence[float] = DEFAULT_COST_BUCKETS,
    ) -> None:
        self._metrics = _metrics_for(
            REGISTRY if registry is None else registry,
            namespace,
            size_buckets,
            seconds_buckets,
            cost_buckets,
        )
        self._items = self._metrics.items
        self._abandoned = self._metrics.abandoned

    def track(self, batcher: Batcher[Any, Any, Any]) -> None:
        """Export ``batcher.statistics()`` as gauges, read whenever the registry is scraped.

        Call it inside the batcher's ``async with`` block (in its Trio run). The
        batcher is held by weak reference: once it is garbage, its samples go.
        A scrape from another thread (a metrics server) reads the statistics
        in the batcher's Trio thread through :func:`trio.from_thread.run_sync`,
        so it waits for the event loop; a scrape after the run has ended skips
        the batcher.

        Raises:
            RuntimeError: called outside a Trio run.
        """
        self._metrics.statistics.track(batcher)

    # -- Observer hooks (called by the batcher) ----------------------------------

    def item_accepted(self, event: ItemAccepted) -> None:
        """Count the item as ``accepted``."""
        self._metrics.child(self._items, event.batcher, "accepted").inc()

    def item_rejected(self, event: ItemRejected) -> None:
        """Count the item as ``rejected``."""
        self._metrics.child(self._items, event.batcher, "rejected").inc()

    def cache_hit(self, event: CacheHit) -> None:
        """Count the item as ``cache_hit``."""
        self._metrics.child(self._items, event.batcher, "cache_hit").inc()

    def item_withdrawn(self, event: ItemWithdrawn) -> None:
        """Count the item as ``withdrawn``."""
        self._metrics.child(self._items, event.batcher, "withdrawn").inc()

    def batch_started(self, event: BatchStarted) -> None:
        """Nothing: a batch is counted when it ends, with its outcome."""

    def batch_finished(self, event: BatchFinished) -> None:
        """Count the batch and its items' outcomes; observe its sizes and times."""
        metrics = self._metrics
        child = metrics.child
        name = event.batcher
        status = event.outcome
        items = len(event.item_ids)
        if status is BatchOutcome.OK:
            failed = event.failed_items
            if items > failed:
                child(self._items, name, "ok").inc(items - failed)
            if failed:
                child(self._items, name, "item_failed").inc(failed)
        elif items:
            child(self._items, name, status.value).inc(items)
        if event.abandoned:
            child(self._abandoned, name).inc(event.abandoned)
        reason = _NEVER_STARTED if event.reason is None else event.reason.value
        child(metrics.batches, name, reason, status.value).inc()
        if status is BatchOutcome.CANCELLED:
            return  # torn down or dropped: its times measure the shutdown, not the work
        child(metrics.acquire, name).observe(event.acquire_seconds)
        if event.size:  # process was called
            child(metrics.batch_size, name).observe(event.size)
            if event.cost is not None:
                child(metrics.batch_cost, name).observe(event.cost)
            child(metrics.process, name).observe(event.process_seconds)
            queue_wait = child(metrics.queue_wait, name)
            for seconds in event.queue_waits:
                queue_wait.observe(seconds)

    def __repr__(self) -> str:
        return f"<trio_batch.contrib.prometheus.PrometheusObserver {id(self):#x}>"
