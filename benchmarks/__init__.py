"""Benchmarks for trio_batch: ``python -m benchmarks`` (or ``nox -s bench``).

In one process, on the same workloads, side by side: trio_batch with each
policy, a minimal hand-written Trio batcher as the floor (``_floor``), and
aiodataloader under asyncio where it applies (``_peers``). Results are reported
as absolute figures and as ratios to the floor measured in the same run. Not
part of the test suite; ``tests/test_benchmarks_smoke.py`` runs every workload
at a tiny size so this package cannot rot. See ``docs/performance.md``.
The DataLoader workloads (deduplication, ``submit_many``) are in ``_dataloader``:
``python -m benchmarks._dataloader``.
"""

from ._floor import FloorBatcher, open_floor
from ._suite import SuiteResult, WorkloadResult, run_once, run_workload
from ._workloads import IMPLS, Sample, Workload, build_workloads

__all__ = [
    "IMPLS",
    "FloorBatcher",
    "Sample",
    "SuiteResult",
    "Workload",
    "WorkloadResult",
    "build_workloads",
    "open_floor",
    "run_once",
    "run_workload",
]
