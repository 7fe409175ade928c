"""Runs of the simulator: reproducible, consistent counts, and the model it claims."""

from __future__ import annotations

import itertools
import math
import random
import statistics
import sys
from collections import Counter
from typing import Any

import attrs
import pytest
import trio

import trio_batch as tb
from trio_batch.sim import (
    Arrivals,
    Burst,
    KeyDistribution,
    Pool,
    ProcessModel,
    Scenario,
    Timeouts,
    generate_workload,
    load_scenario,
    run_scenario,
)
from trio_batch.sim._report import render_json, render_table
from trio_batch.sim._results import percentile, percentiles
from trio_batch.sim._workload import batch_cost, batch_random

ALL_POLICIES = ("immediate", "size", "duration:0.004", "duration:0.004:reject", "balanced:3")


def tiny(**changes: Any) -> Scenario:
    """A few hundred items that exercise every outcome: rejections, failures, timeouts."""
    scenario = Scenario(
        name="tiny",
        seed=5,
        items=400,
        policies=ALL_POLICIES,
        keys=KeyDistribution(distribution="zipf", count=6, exponent=1.3),
        arrivals=Arrivals(rate=2000, burst=Burst(every=0.05, length=0.01, factor=5)),
        process=ProcessModel(
            per_batch=0.004, per_item=0.0002, jitter="lognormal", sigma=0.5, error_rate=0.05
        ),
        pool=Pool(size=3, connect=0.002),
        limits=tb.Limits(max_batch_size=6, max_key_concurrency=2, max_batch_queue_size=2),
        timeouts=Timeouts(fraction=0.2, after=0.01),
    )
    return attrs.evolve(scenario, **changes)


def test_same_seed_same_numbers_byte_for_byte() -> None:
    first = render_json(run_scenario(tiny()))
    second = render_json(run_scenario(tiny()))
    assert first == second
    assert render_json(run_scenario(tiny(seed=6))) != first


def test_the_scheduler_is_left_as_it_was() -> None:
    run_module: Any = sys.modules["trio._core._run"]
    flag = run_module._ALLOW_DETERMINISTIC_SCHEDULING
    state = run_module._r.getstate()
    run_scenario(tiny(items=50))
    assert flag == run_module._ALLOW_DETERMINISTIC_SCHEDULING
    assert run_module._r.getstate() == state


def test_every_item_has_exactly_one_outcome() -> None:
    result = run_scenario(tiny())
    for r in result.results:
        assert r.anomalies == ()
        assert r.ok + r.rejected + r.failed + r.withdrawn + r.late + r.closed == r.items == 400
        assert r.closed == 0
        assert len(r.ok_latencies) == len(r.ok_arrivals) == r.ok
        assert sum(r.batch_sizes) >= r.ok + r.late  # failed batches hold items too
        assert max(r.batch_sizes) <= 6
        assert r.acquisitions >= r.batches  # every process call held a connection
        assert 1 <= r.connections <= 3
    outcomes = {r.policy: r for r in result.results}
    # The tiny scenario exercises every outcome somewhere.
    assert sum(r.rejected for r in result.results) > 0
    assert sum(r.failed for r in result.results) > 0
    assert sum(r.withdrawn for r in result.results) > 0
    assert outcomes["size"].withdrawn > 0  # partial batches wait past the timeout


def test_summary_numbers_come_from_the_raw_observations() -> None:
    r = run_scenario(tiny(policies=("duration:0.004",))).results[0]
    latencies = sorted(r.ok_latencies)
    assert r.latency(50) == statistics.median(latencies)
    assert r.latency(99) == statistics.quantiles(latencies, n=100, method="inclusive")[98]
    assert r.latency(0) == latencies[0]
    assert r.max_latency == r.latency(100) == latencies[-1]
    assert r.mean_batch_size == sum(r.batch_sizes) / len(r.batch_sizes)
    assert r.fill_ratio == pytest.approx(r.mean_batch_size / 6)
    assert r.throughput == r.ok / r.elapsed
    assert r.elapsed >= r.ok_arrivals[-1]
    # A Duration batch is at least 4 ms old when it starts unless it filled
    # (or a caller's deadline moved its timer): latency >= the cheapest call.
    assert min(latencies) >= 0.004 * math.exp(-5) > 0
    summary = r.summary()
    assert summary["latency_ms"] == {
        "p50": round(statistics.median(latencies) * 1000, 6),
        "p90": round(r.latency(90) * 1000, 6),  # type: ignore[operator]
        "p99": round(r.latency(99) * 1000, 6),  # type: ignore[operator]
        "max": round(latencies[-1] * 1000, 6),
    }


def test_immediate_with_a_free_slot_costs_exactly_the_process_time() -> None:
    # One key, no jitter, arrivals far apart: every item is a batch of one that
    # starts the instant it arrives, so latency is per_batch + per_item exactly.
    scenario = Scenario(
        seed=1,
        items=20,
        policies=("immediate",),
        arrivals=Arrivals(rate=10),
        process=ProcessModel(per_batch=0.003, per_item=0.001),
    )
    r = run_scenario(scenario).results[0]
    assert r.batch_sizes == (1,) * 20
    assert r.ok_latencies == pytest.approx([0.004] * 20, abs=1e-9)


def test_size_waits_for_full_batches_and_the_drain_flushes_the_rest() -> None:
    scenario = Scenario(
        seed=2,
        items=23,
        policies=("size",),
        arrivals=Arrivals(rate=100),
        process=ProcessModel(per_batch=0.001),
        limits=tb.Limits(max_batch_size=5, max_key_concurrency=1, max_batch_queue_size=10),
    )
    r = run_scenario(scenario).results[0]
    assert r.batch_sizes == (5, 5, 5, 5, 3)
    assert r.ok == 23


def test_workload_is_a_function_of_the_seed() -> None:
    scenario = tiny(items=2000)
    first, second = generate_workload(scenario), generate_workload(scenario)
    assert first.times == second.times
    assert first.keys == second.keys
    assert first.timeouts == second.timeouts
    assert generate_workload(tiny(items=2000, seed=6)).times != first.times
    assert list(first.times) == sorted(first.times)
    # Zipf: key 0 is the most popular, and every key is in range.
    counts = Counter(first.keys)
    assert counts.most_common(1)[0][0] == 0
    assert set(counts) <= set(range(6))
    # About a fifth of the callers are impatient.
    impatient = sum(1 for timeout in first.timeouts if timeout == 0.01)
    assert 300 < impatient < 500
    assert all(timeout in (0.01, math.inf) for timeout in first.timeouts)


def test_bursts_multiply_the_arrival_rate() -> None:
    scenario = Scenario(
        seed=3,
        duration=20.0,
        policies=("immediate",),
        arrivals=Arrivals(rate=100, burst=Burst(every=2.0, length=0.5, factor=10, start=1.0)),
    )
    times = generate_workload(scenario).times
    assert times[-1] < 20.0
    in_burst = sum(1 for t in times if (t - 1.0) % 2.0 < 0.5 and t >= 1.0)
    outside = len(times) - in_burst
    # 10 bursts of 0.5 s at 1000/s, and 15 s at 100/s.
    assert 4500 < in_burst < 5500
    assert 1200 < outside < 1800


def test_batch_randomness_depends_on_the_batch_not_on_the_order() -> None:
    model = ProcessModel(per_batch=0.01, jitter="erlang", erlang_k=3)
    first = batch_cost(model, 4, batch_random(7, 123))
    assert batch_cost(model, 4, batch_random(7, 123)) == first
    assert batch_cost(model, 4, batch_random(7, 124)) != first
    rng = random.Random(0)
    factors = [batch_cost(model, 0, rng) / 0.01 for _ in range(20000)]
    assert sum(factors) / len(factors) == pytest.approx(1.0, abs=0.02)
    lognormal = ProcessModel(per_batch=0.01, jitter="lognormal", sigma=0.8)
    factors = [batch_cost(lognormal, 0, rng) / 0.01 for _ in range(20000)]
    assert sum(factors) / len(factors) == pytest.approx(1.0, abs=0.05)


def test_percentiles_interpolate_linearly_as_numpy_does() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # any order
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 10) == pytest.approx(1.3)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    table = percentiles([float(v) for v in range(1, 102)])
    assert table == tuple(float(v) for v in range(1, 102))
    for bad in (101, -1, 50.5, True):
        with pytest.raises(ValueError, match=r"^p must be an integer from 0 to 100, got "):
            percentile(values, bad)  # type: ignore[arg-type]


def test_percentiles_match_numpy_linear() -> None:
    numpy = pytest.importorskip("numpy")
    rng = random.Random(3)
    values = [rng.lognormvariate(0, 1) for _ in range(997)]
    ours = percentiles(values)
    theirs = numpy.percentile(values, range(101), method="linear")
    assert list(ours) == pytest.approx(list(theirs), rel=1e-12)


def test_a_run_with_no_arrivals_reports_dashes() -> None:
    result = run_scenario(tiny(items=None, duration=1e-6))
    for r in result.results:
        assert (r.items, r.ok, r.batches) == (0, 0, 0)
        assert r.latency(50) is None
        assert r.mean_batch_size is None
    table = render_table(result)
    assert "immediate" in table
    assert " - " in table


@pytest.mark.parametrize("name", ["default", "web-db", "burst", "ml-inference"])
def test_builtin_scenarios_run_cleanly_when_cut_short(name: str) -> None:
    result = run_scenario(load_scenario(name, ["items=150"]))
    assert len(result.results) == len(result.scenario.policies)
    for r in result.results:
        assert r.anomalies == ()
        assert r.ok + r.rejected + r.failed + r.withdrawn + r.late == r.items == 150


def test_worker_processes_give_the_very_same_numbers() -> None:
    scenario = tiny(items=300)
    alone = render_json(run_scenario(scenario))
    reports: list[tuple[int, int, str]] = []
    side_by_side = run_scenario(
        scenario, jobs=2, on_progress=lambda *report: reports.append(report)
    )
    assert render_json(side_by_side) == alone
    assert reports[-1] == (300 * 5, 300 * 5, "5/5 policies")
    with pytest.raises(ValueError, match=r"^jobs must be an integer >= 1, got 0$"):
        run_scenario(scenario, jobs=0)


def test_a_long_drain_keeps_samples_bounded_and_evenly_spaced() -> None:
    # Five arrivals in 5 ms, sampled every 0.5 us, then 10 s of draining: 20
    # million samples at that rate. The sampler halves its rate instead.
    scenario = Scenario(
        seed=1,
        items=5,
        policies=("size",),
        arrivals=Arrivals(rate=1000),
        process=ProcessModel(per_batch=2.0),
        limits=tb.Limits(max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=10),
        sample_interval=5e-7,
    )
    r = run_scenario(scenario).results[0]
    assert r.elapsed == pytest.approx(10.0, abs=0.01)
    assert 10_000 <= len(r.samples) < 20_000
    times = [sample.time for sample in r.samples]
    gaps = {round(b - a, 12) for a, b in itertools.pairwise(times)}
    assert len(gaps) == 1  # evenly spaced
    assert times[-1] + gaps.pop() > r.elapsed - 1e-9  # up to the end of the run


def test_a_run_that_can_never_end_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hang(self: Any, key: int, inputs: list[int]) -> list[int]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr("trio_batch.sim._run._Simulation._process", hang)
    scenario = tiny(items=20, policies=("immediate",), pool=None, timeouts=None)
    r = run_scenario(scenario).results[0]
    stalled, never = r.anomalies
    assert stalled.startswith("the run stalled: 1 time(s), first at simulated time ")
    assert never.startswith("a caller never got an outcome: 20 time(s)")
