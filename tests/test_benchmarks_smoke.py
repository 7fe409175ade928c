"""Smoke test of the benchmarks: every workload at a tiny size, so they cannot rot.

Nothing here checks speed (CI machines are noisy and the benchmarks are not part
of the suite); it checks that every workload runs, counts right, reports
positive ratios, and that memory returns to its baseline once keys are gone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# The benchmarks package sits at the repository root, next to tests/.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks import Sample, Workload, build_workloads, run_once, run_workload  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402
from benchmarks._report import retained_block_budget  # noqa: E402

TINY_SIZE = 0.002
TINY_CLIENTS = 20
TRIO_IMPLS = ("floor", "immediate", "size", "duration", "balanced")


def tiny() -> dict[str, Workload]:
    return {w.id: w for w in build_workloads(TINY_SIZE, TINY_CLIENTS)}


def check_counts(workload: Workload, impl: str, sample: Sample) -> None:
    assert sample.calls == workload.calls > 0
    assert sample.wrong == 0, "a caller got someone else's output"
    assert sample.errors == 0
    assert sample.seconds > 0
    if workload.kind == "latency":
        assert sample.completed == sample.processed == workload.calls
        return
    assert sample.completed + sample.cancelled == workload.calls
    if workload.kind == "throughput":
        assert sample.cpu_seconds > 0
    if impl == "floor":
        assert sample.processed == workload.calls  # the floor cannot withdraw
    else:
        # Withdrawn items are never processed; a caller cancelled after its
        # batch began processing is processed but sees Cancelled.
        assert sample.completed <= sample.processed <= workload.calls
    if workload.cancel_percent and impl != "floor":
        assert sample.cancelled > 0
        assert sample.processed < workload.calls
    if not workload.cancel_percent:
        assert sample.cancelled == 0
        assert sample.processed == workload.calls
    assert 1 <= sample.batches <= sample.processed


@pytest.mark.parametrize(("spread", "runs"), [(1e-12, 4), (1e12, 2)])
def test_repetitions_go_on_while_a_ratio_is_not_steady_up_to_the_maximum(
    spread: float, runs: int
) -> None:
    workload = tiny()["b"]
    result = run_workload(
        workload, repeat=2, max_repeat=4, spread=spread, warmup=0, impls=["floor", "immediate"]
    )
    assert [len(row.samples) for row in result.rows] == [runs, runs]


@pytest.mark.parametrize("workload_id", ["a", "b", "c", "d", "e"])
def test_workload_runs_and_counts_right(workload_id: str) -> None:
    workload = tiny()[workload_id]
    impls = [i for i in workload.impls if i in TRIO_IMPLS]
    # A tiny spread asks for more repetitions, but the memory workload runs once.
    result = run_workload(workload, repeat=2, max_repeat=2, spread=1e-12, warmup=0, impls=impls)
    assert [row.impl for row in result.rows] == impls
    for row in result.rows:
        assert len(row.samples) == (1 if workload.kind == "memory" else 2)
        for sample in row.samples:
            check_counts(workload, row.impl, sample)
        ratio = row.ratio("wall")
        assert ratio is not None
        assert ratio > 0
        if row.impl == "floor":
            assert ratio == pytest.approx(1.0)
        if workload.kind == "throughput":
            cpu_ratio = row.ratio("cpu")
            assert cpu_ratio is not None
            assert cpu_ratio > 0


def test_memory_returns_to_baseline() -> None:
    workload = tiny()["d"]
    budget = retained_block_budget(workload.distinct_keys)
    # Duration is left out: its timer heap holds each batch until the timer
    # fires, which is bounded by the delay, not by the keys seen.
    for impl in ("floor", "immediate", "size"):
        sample = run_once(workload, impl)
        assert sample.leftover_keys == 0
        assert sample.peak_bytes > 0
        assert sample.retained_blocks <= budget, (impl, sample.retained_blocks)


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--size", str(TINY_SIZE), "--clients", str(TINY_CLIENTS), "--repeat", "1"]
    assert main([*argv, "--warmup", "0", "--impls", "floor,immediate", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [w["id"] for w in report["workloads"]] == ["a", "b", "c", "d", "e"]
    for workload in report["workloads"]:
        assert [r["impl"] for r in workload["results"]] == ["floor", "immediate"]
        for result in workload["results"]:
            assert result["ratio"] > 0
    found = {(t["workload"], t["impl"]) for t in report["targets"]}
    assert found == {(w, "immediate") for w in "abcd"}


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--size", str(TINY_SIZE), "--clients", str(TINY_CLIENTS), "--repeat", "2"]
    assert main([*argv, "--only", "a,e", "--impls", "floor,size,immediate"]) == 0
    out = capsys.readouterr().out
    assert "(a) one key" in out
    assert "(e) idle latency" in out
    assert "trio_batch Size" in out
    assert "vs floor" in out


def test_cli_profile(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--size", str(TINY_SIZE), "--clients", str(TINY_CLIENTS)]
    assert main([*argv, "--profile", "b", "immediate", "--profiler", "cprofile"]) == 0
    assert "µs/call" in capsys.readouterr().out
    pytest.importorskip("pyinstrument")
    assert main([*argv, "--profile", "c", "size"]) == 0
    assert "µs/call" in capsys.readouterr().out


def test_aiodataloader_peer() -> None:
    pytest.importorskip("aiodataloader")
    workloads = tiny()
    for wid in ("a", "e"):
        workload = workloads[wid]
        result = run_workload(workload, repeat=1, warmup=0, impls=["floor", "aiodataloader"])
        row = result.rows[1]
        assert row.impl == "aiodataloader"
        check_counts(workload, "floor", row.samples[0])
        ratio = row.ratio("wall")
        assert ratio is not None
        assert ratio > 0
