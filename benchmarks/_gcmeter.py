"""What the garbage collector sees of a run, and what a parked caller costs.

Two measurements, both per contestant:

* :class:`GcMeter`, around a timed run (workload f): collections per
  generation, the time spent in them (``gc.callbacks``), and the number of
  GC-tracked objects allocated, *net*: CPython counts every allocation of a
  tracked object and discounts every deallocation in its young-generation
  counter (``gc.get_count()[0]``), and runs a young collection when that count
  passes its threshold (700). The meter adds up the counter as it stands when
  each collection starts, plus its change over the rest of the run. An object
  allocated and freed between two collections cancels out; what remains is what
  makes collections happen: objects that live across collections, such as the
  state of a parked caller. The meter costs two callbacks per collection, the
  same for every contestant.
* :func:`snapshot` / :func:`per_caller`, in a separate untimed probe: GC-tracked
  objects (counted by type with ``gc.get_objects()``) and tracemalloc's traced
  memory with every client parked in ``submit``, less the same before any
  client was spawned, and tracemalloc's peak in between. Divided by the number
  of clients: what one parked caller costs, its own task included (a Trio
  task with its coroutine and context is the same for every Trio contestant;
  an asyncio task differs).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

__all__ = ["GcMeter", "Parked", "Snapshot", "per_caller", "snapshot"]


class GcMeter:
    """Counts collections, their time and net tracked allocations between start and stop."""

    __slots__ = ("_began", "_count0", "allocations", "collections", "seconds")

    def __init__(self) -> None:
        #: Collections of generations 0, 1 and 2 (a collection of 2 is a full one).
        self.collections = [0, 0, 0]
        #: Seconds spent in collections, by generation.
        self.seconds = [0.0, 0.0, 0.0]
        #: GC-tracked objects allocated, net (see the module docstring).
        self.allocations = 0
        self._began = 0.0
        self._count0 = 0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.allocations += gc.get_count()[0]
            self._began = perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += perf_counter() - self._began
            self.collections[generation] += 1

    def start(self) -> None:
        """Start counting."""
        self._count0 = gc.get_count()[0]
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        """Stop counting (does nothing if not started, or stopped already)."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
            self.allocations += gc.get_count()[0] - self._count0


@dataclass(frozen=True)
class Snapshot:
    """Tracked objects by type name, and traced bytes, at one moment."""

    objects: Counter[str]
    traced_bytes: int
    #: What ``objects`` itself takes (traced later, while this snapshot is kept).
    own_bytes: int


def snapshot() -> Snapshot:
    """After a full collection: tracemalloc's current memory, and tracked objects by type."""
    gc.collect()
    traced, _ = tracemalloc.get_traced_memory()
    objects = Counter(type(obj).__name__ for obj in gc.get_objects())
    own, _ = tracemalloc.get_traced_memory()
    return Snapshot(objects, traced, own - traced)


@dataclass(frozen=True)
class Parked:
    """What one parked caller costs, its task included (probe with every client parked)."""

    clients: int
    #: GC-tracked objects per parked caller.
    objects: float
    #: Bytes per parked caller, with every caller parked (tracemalloc, after a collection).
    bytes: float
    #: tracemalloc's peak while the callers submitted and parked, per caller.
    peak_bytes: float
    #: The types that make up ``objects``, per caller, largest first.
    by_type: dict[str, float] = field(default_factory=dict)


def per_caller(before: Snapshot, after: Snapshot, peak: int, clients: int) -> Parked:
    """The difference between two snapshots, per client."""
    grown = after.objects.copy()
    grown.subtract(before.objects)
    by_type = {
        name: count / clients
        for name, count in sorted(grown.items(), key=lambda kv: (-kv[1], kv[0]))
        if count / clients >= 0.01
    }
    return Parked(
        clients=clients,
        objects=(after.objects.total() - before.objects.total()) / clients,
        bytes=(after.traced_bytes - before.own_bytes - before.traced_bytes) / clients,
        peak_bytes=(peak - before.own_bytes - before.traced_bytes) / clients,
        by_type=by_type,
    )
