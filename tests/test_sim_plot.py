"""What the plots promise: losses show, one scale per figure, distinct styles, whole counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

import trio_batch as tb
from trio_batch.sim import (
    PLOT_FILES,
    Arrivals,
    KeyDistribution,
    ProcessModel,
    Scenario,
    SimulationResult,
    Timeouts,
    run_scenario,
    write_plots,
)
from trio_batch.sim._plot import _batch_sizes, _latency_cdf, _queued_items, _styles


def shedding_run() -> SimulationResult:
    """Two identical policies and one that sheds load (impatient callers, Size)."""
    scenario = Scenario(
        seed=4,
        items=400,
        policies=("immediate", "balanced:1", "size"),
        keys=KeyDistribution(distribution="uniform", count=20),
        arrivals=Arrivals(rate=2000),
        process=ProcessModel(per_batch=0.002),
        limits=tb.Limits(max_batch_size=8, max_key_concurrency=2),
        timeouts=Timeouts(fraction=0.3, after=0.01),
    )
    return run_scenario(scenario)


@pytest.fixture(scope="module")
def result() -> SimulationResult:
    return shedding_run()


def test_the_cdf_counts_every_caller_so_losses_show(result: SimulationResult) -> None:
    figure = _latency_cdf(result, _styles(len(result.results)))
    (axes,) = figure.axes
    ends: dict[str, float] = {}
    for line in axes.get_lines():
        label = str(line.get_label())
        if " served" in label:
            ydata: Any = line.get_ydata()
            ends[label.split(": ")[0]] = float(ydata[-1])
            assert label.startswith(label.split(": ")[0] + ": ")
    assert list(ends) == ["immediate", "balanced:1", "size"]
    for r in result.results:
        assert ends[r.policy] == pytest.approx(r.ok / r.items)
    size = result.results[2]
    assert size.ok < size.items
    assert ends["size"] < 0.95  # the shedding policy ends visibly below 1.0


def test_identical_curves_get_different_line_styles(result: SimulationResult) -> None:
    immediate, balanced = result.results[0], result.results[1]
    assert list(immediate.ok_latencies) == list(balanced.ok_latencies)  # they coincide
    figure = _latency_cdf(result, _styles(3))
    lines = figure.axes[0].get_lines()
    assert lines[0].get_linestyle() != lines[2].get_linestyle()  # [1] is the end marker


def test_no_colour_repeats_up_to_20_policies_and_styles_stay_distinct() -> None:
    styles = _styles(20)
    assert len({style.colour for style in styles}) == 20
    assert styles[:10] == _styles(10)  # adding policies never restyles the first ones
    many = _styles(80)
    assert len(set(many)) == 80


def test_batch_size_panels_share_one_scale_and_count_in_whole_numbers(
    result: SimulationResult,
) -> None:
    figure = _batch_sizes(result, _styles(3))
    scales = {axes.get_yscale() for axes in figure.axes}
    assert len(scales) == 1
    limits = {axes.get_ylim() for axes in figure.axes}
    assert len(limits) == 1  # one shared y axis
    if scales == {"linear"}:
        for axes in figure.axes:
            assert all(tick == int(tick) for tick in axes.get_yticks())
    assert all(tick == int(tick) for tick in figure.axes[-1].get_xticks())


def test_statistics_panels_count_in_whole_numbers(result: SimulationResult) -> None:
    figure = _queued_items(result, _styles(3))
    for axes in figure.axes:
        if axes.get_yscale() == "linear":
            assert all(tick == int(tick) for tick in axes.get_yticks())


def test_write_plots_takes_a_str_path(result: SimulationResult, tmp_path: Path) -> None:
    folder = tmp_path / "as-text"
    paths = write_plots(result, str(folder))
    assert [path.name for path in paths] == list(PLOT_FILES)
    assert all(path.parent == folder and path.read_bytes()[:4] == b"\x89PNG" for path in paths)


def test_twenty_policies_plot(tmp_path: Path) -> None:
    policies: Any = [f"duration:{0.001 * (index + 1):g}" for index in range(20)]
    scenario = Scenario(
        seed=2,
        items=60,
        policies=policies,
        arrivals=Arrivals(rate=3000),
        process=ProcessModel(per_batch=0.001),
    )
    paths = write_plots(run_scenario(scenario), tmp_path)
    assert len(paths) == len(PLOT_FILES)
