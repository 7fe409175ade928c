"""Smoke test of the benchmarks: every workload at a tiny size, so they cannot rot.

Nothing here checks speed (CI machines are noisy and the benchmarks are not part
of the suite); it checks that every workload runs, counts right, reports
positive ratios, that memory returns to its baseline once keys are gone, and
that workload (f) reports its GC figures and draws its plot.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

# The benchmarks package sits at the repository root, next to tests/.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks import Sample, Workload, build_workloads, run_once, run_workload  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402
from benchmarks._report import retained_block_budget  # noqa: E402
from benchmarks._stats import percentile  # noqa: E402
from benchmarks._workloads import limits_for, scale_workload  # noqa: E402
from benchmarks._yardsticks import open_bare_limit, open_lean_floor  # noqa: E402

TINY_SIZE = 0.002
TINY_CLIENTS = 20
TINY_SCALE = (30, 250)
TRIO_IMPLS = ("lean", "bare", "floor", "immediate", "size", "duration", "balanced")


def tiny() -> dict[str, Workload]:
    return {w.id: w for w in build_workloads(TINY_SIZE, TINY_CLIENTS, TINY_SCALE)}


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
    if impl in ("floor", "lean", "bare"):
        assert sample.processed == workload.calls  # the yardsticks cannot withdraw
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


@pytest.mark.parametrize("workload_id", ["a", "b", "c", "d", "e", "f30"])
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
        if row.impl == workload.baseline:
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
    argv += ["--scale-clients", "30"]
    assert main([*argv, "--warmup", "0", "--impls", "lean,floor,immediate", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [w["id"] for w in report["workloads"]] == ["a", "b", "c", "d", "e", "f30"]
    for workload in report["workloads"]:
        # The lean floor runs only in workload f.
        expected = (
            ["lean", "floor", "immediate"] if workload["id"] == "f30" else ["floor", "immediate"]
        )
        assert [r["impl"] for r in workload["results"]] == expected
        for result in workload["results"]:
            assert result["ratio"] > 0
            assert result["baseline"] == ("lean" if workload["id"] == "f30" else "floor")
    scale = report["workloads"][-1]
    assert scale["group"] == "f"
    assert scale["max_key_concurrency"] == 1
    for result in scale["results"]:
        assert result["gc_allocations_per_item"] is not None
        assert result["gc_us_per_item"] >= 0
        assert result["parked"]["clients"] == 30
        assert result["parked"]["objects"] > 0
        assert result["parked"]["peak_bytes"] > 0
    found = {(t["workload"], t["impl"]) for t in report["targets"]}
    assert found == {(w, "immediate") for w in ["a", "b", "c", "d", "f30"]}


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
    for wid in ("a", "e", "f30"):
        workload = workloads[wid]
        impls = [workload.baseline, "aiodataloader"]
        result = run_workload(workload, repeat=1, warmup=0, impls=impls)
        row = result.rows[1]
        assert row.impl == "aiodataloader"
        check_counts(workload, "floor", row.samples[0])
        ratio = row.ratio("wall")
        assert ratio is not None
        assert ratio > 0
        if workload.gc_aware:
            assert row.parked is not None
            assert row.parked.objects > 0


def test_scale_workload_has_the_issue_shape() -> None:
    workload = scale_workload(10_000)
    assert workload.group == "f"
    assert workload.impls == ("lean", "bare", "floor", "immediate", "size", "aiodataloader")
    assert (workload.baseline, workload.second_baseline) == ("lean", "bare")
    assert workload.items_per_key == 0
    assert workload.max_batch_size == 100
    assert workload.calls_per_client >= 10
    limits = limits_for(workload)
    assert limits.max_key_concurrency == 1
    # Room in the queue for every client: nothing is ever rejected.
    assert limits.max_batch_queue_size >= workload.clients // workload.max_batch_size
    assert [w.clients for w in build_workloads() if w.group == "f"] == [100, 1000, 10_000]


def test_scale_workload_measures_gc_and_parked_callers() -> None:
    workload = tiny()["f250"]
    assert workload.clients == 250
    impls = ["lean", "bare", "immediate", "size"]
    result = run_workload(workload, repeat=2, max_repeat=2, warmup=0, impls=impls)
    for row in result.rows:
        for sample in row.samples:
            check_counts(workload, row.impl, sample)
            assert sample.processed / sample.batches <= workload.max_batch_size
            assert all(seconds >= 0 for seconds in sample.gc_seconds)
        # Ratios to the lean floor, and to the bare limit.
        assert len(row.ratios["wall"]) == len(row.second_ratios) == 2
        assert row.second_ratio() is not None
        if row.impl == "bare":
            assert row.second_ratio() == pytest.approx(1.0)
        parked = row.parked
        assert parked is not None
        assert parked.clients == 250
        # A parked caller holds at least its task and coroutine, in memory and as
        # tracked objects; the types add up to the total.
        assert parked.objects >= 2
        assert parked.bytes > 0
        assert parked.peak_bytes >= parked.bytes
        assert sum(parked.by_type.values()) == pytest.approx(parked.objects, abs=0.5)


@pytest.mark.parametrize("open_yardstick", [open_lean_floor, open_bare_limit])
def test_yardsticks_give_each_caller_its_output_in_batches_of_at_most_the_limit(
    open_yardstick: Any,
) -> None:
    batches: list[tuple[int, list[int]]] = []

    async def process(key: int, inputs: list[int]) -> list[int]:
        batches.append((key, list(inputs)))
        return [i * 2 for i in inputs]

    async def run() -> list[int]:
        differences: list[int] = []
        async with trio.open_nursery() as nursery:
            async with open_yardstick(process, key=7, max_batch_size=4) as batcher:

                async def client(i: int) -> None:
                    differences.append(await batcher.submit(0, i) - 2 * i)

                for i in range(10):
                    nursery.start_soon(client, i)
                await trio.testing.wait_all_tasks_blocked()
        return differences

    assert trio.run(run) == [0] * 10
    assert sorted(i for _, inputs in batches for i in inputs) == list(range(10))
    assert all(key == 7 and 1 <= len(inputs) <= 4 for key, inputs in batches)
    assert len(batches) >= 3


def test_percentile_is_the_inclusive_definition() -> None:
    data = [4.0, 1.0, 3.0, 2.0]
    assert percentile(data, 0) == 1.0
    assert percentile(data, 100) == 4.0
    assert percentile(data, 50) == statistics.median(data)
    assert percentile(data, 90) == pytest.approx(3.7)  # 0.9 * 3 = 2.7 -> 3 + 0.7
    assert percentile([5.0], 90) == 5.0
    with pytest.raises(ValueError, match=r"^p must be between 0 and 100, got 101"):
        percentile(data, 101)


def test_progress_reports_every_run() -> None:
    calls: list[tuple[str, int, int]] = []
    workload = tiny()["f30"]
    run_workload(
        workload,
        repeat=2,
        warmup=1,
        impls=["lean", "bare"],
        progress=lambda label, done, total: calls.append((label, done, total)),
    )
    assert calls[0] == ("(f30) warm-up", 0, 1)
    runs = [c for c in calls if "repetition" in c[0]]
    assert [done for _, done, _ in runs] == [0, 1, 2, 3]
    assert all(total == 2 * 2 + 2 for _, _, total in runs)  # two probes follow
    assert [c[0] for c in calls[-2:]] == ["(f30) parked callers"] * 2


def test_cli_scale_table_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    argv = ["--size", str(TINY_SIZE), "--scale-clients", "30,60", "--repeat", "1"]
    argv += ["--max-repeat", "1", "--impls", "lean,bare,immediate"]
    plots = tmp_path / "plots"
    assert main([*argv, "--warmup", "0", "--only", "f", "--plot", str(plots)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "(f30) scale" in out
    assert "(f60) scale" in out
    assert "(f) summary" in out
    for heading in ("vs lean", "vs bare", "gc allocs/item", "objs/parked", "peak B/parked"):
        assert heading in out
    assert "issue" not in out
    png = plots / "perf_clients.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in captured.err


def test_cli_plot_is_checked_before_running(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["--only", "f", "--plot", str(a_file / "sub")])
    assert exc.value.code == 2
    assert "--plot" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--only", "a", "--plot", str(tmp_path)])
    assert exc.value.code == 2
    assert "add f to --only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--only", "f", "--scale-clients", "0,10"])
    assert exc.value.code == 2
    assert "--scale-clients must be whole numbers >= 1" in capsys.readouterr().err
