"""The simulator with item costs (issue 14): cost distributions, a process time
per unit of cost, ``limits.max_batch_cost`` and ``limits.oversize`` as scenario
fields, the built-in ``llm-tokens`` scenario, and plots of batch cost."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import attrs
import pytest

import trio_batch as tb
from trio_batch.sim import (
    Arrivals,
    ItemCosts,
    ProcessModel,
    Scenario,
    ScenarioError,
    builtin_scenarios,
    generate_workload,
    load_scenario,
    run_scenario,
)
from trio_batch.sim._loading import scenario_from_data, scenario_to_data
from trio_batch.sim._report import describe_scenario, render_table
from trio_batch.sim._workload import batch_cost

TOKENS = """
name = "tokens"
seed = 3
items = 400
policies = ["immediate", "duration:0.01"]

[arrivals]
rate = 500

[costs]
distribution = "lognormal"
median = 100
sigma = 1.0
integer = true

[process]
per_batch = 0.002
per_cost = 0.00001

[limits]
max_batch_size = 32
max_key_concurrency = 2
max_batch_cost = 1000
oversize = "alone"
"""


def tokens(**changes: Any) -> Scenario:
    return attrs.evolve(scenario_from_data(tomllib.loads(TOKENS)), **changes)


# --- ItemCosts ---------------------------------------------------------------------


def test_item_costs_defaults_to_a_constant_cost_of_one() -> None:
    assert ItemCosts() == ItemCosts(distribution="constant", value=1.0)
    assert ItemCosts(distribution="lognormal", median=5).sigma == 1.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"distribution": "gamma"}, r"^distribution must be one of"),
        ({"value": -1}, r"^value must be >= 0, got -1.0$"),
        ({"distribution": "uniform"}, r"^low and high are required"),
        ({"distribution": "uniform", "low": 5, "high": 2}, r"^high must be >= low"),
        ({"distribution": "lognormal"}, r"^median is required"),
        ({"distribution": "lognormal", "median": 0}, r"^median must be > 0"),
        ({"distribution": "lognormal", "median": 1, "sigma": 0}, r"^sigma must be > 0"),
        ({"median": 3}, r"^median applies only to distribution 'lognormal'"),
        ({"distribution": "uniform", "low": 1, "high": 2, "value": 1}, r"^value applies only"),
    ],
)
def test_item_costs_are_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ItemCosts(**fields)


def test_item_costs_integer_must_be_a_bool() -> None:
    with pytest.raises(TypeError):
        ItemCosts(integer=1)  # type: ignore[arg-type]


def test_max_batch_cost_and_per_cost_need_item_costs() -> None:
    base = {"items": 10, "policies": ("immediate",), "arrivals": Arrivals(rate=1)}
    with pytest.raises(ValueError, match=r"^limits.max_batch_cost needs item costs"):
        Scenario(**base, limits=tb.Limits(max_batch_cost=10))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^process.per_cost needs item costs"):
        Scenario(**base, process=ProcessModel(per_cost=0.1))  # type: ignore[arg-type]
    # Costs without a bound are allowed: they are only reported.
    assert Scenario(**base, costs=ItemCosts()).limits.max_batch_cost is None  # type: ignore[arg-type]


# --- TOML ----------------------------------------------------------------------------


def test_costs_and_cost_limits_load_from_toml_and_come_back_as_data() -> None:
    scenario = tokens()
    assert scenario.costs == ItemCosts(distribution="lognormal", median=100, sigma=1, integer=True)
    assert scenario.process.per_cost == 0.00001
    assert scenario.limits.max_batch_cost == 1000
    assert scenario.limits.oversize is tb.Oversize.ALONE
    data = scenario_to_data(scenario)
    assert data["costs"] == {
        "distribution": "lognormal",
        "value": None,
        "low": None,
        "high": None,
        "median": 100.0,
        "sigma": 1.0,
        "integer": True,
    }
    limits = data["limits"]
    assert isinstance(limits, dict)
    assert (limits["max_batch_cost"], limits["oversize"]) == (1000, "alone")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("limits.oversize=split", r"^limits.oversize must be one of 'reject', 'alone'"),
        ("limits.max_batch_cost=0", r"^limits.max_batch_cost must be a finite number > 0"),
        ("costs.distribution=pareto", r"^costs.distribution must be one of"),
        ("costs.shape=2", r"^unknown field costs.shape"),
    ],
)
def test_bad_cost_fields_are_named(tmp_path: Any, override: str, message: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(str(path), [override])


def test_removing_the_cost_bound_from_the_command_line() -> None:
    scenario = load_scenario("llm-tokens", ["limits.max_batch_cost="])
    assert scenario.limits.max_batch_cost is None
    assert scenario.costs is not None


# --- the workload ------------------------------------------------------------------


def test_costs_are_drawn_from_their_own_stream() -> None:
    with_costs = generate_workload(tokens())
    without = generate_workload(tokens(costs=None, limits=tb.Limits(), process=ProcessModel()))
    assert without.costs is None
    assert with_costs.costs is not None
    # Adding costs does not reshuffle arrivals or keys.
    assert with_costs.times == without.times
    assert with_costs.keys == without.keys
    assert generate_workload(tokens()).costs == with_costs.costs  # same seed, same costs
    assert all(cost == math.ceil(cost) and cost >= 1 for cost in with_costs.costs)
    # Log-normal: a median near 100, and a long tail.
    ordered = sorted(with_costs.costs)
    assert 70 <= ordered[len(ordered) // 2] <= 140
    assert ordered[-1] > 5 * ordered[len(ordered) // 2]


@pytest.mark.parametrize(
    ("costs", "check"),
    [
        (ItemCosts(value=7), lambda c: c == 7),
        (ItemCosts(distribution="uniform", low=2, high=3), lambda c: 2 <= c <= 3),
        (ItemCosts(distribution="uniform", low=2, high=3, integer=True), lambda c: c == 3),
    ],
)
def test_constant_and_uniform_costs(costs: ItemCosts, check: Any) -> None:
    workload = generate_workload(tokens(costs=costs))
    assert workload.costs is not None
    assert all(check(cost) for cost in workload.costs)


def test_process_time_grows_with_the_batch_cost() -> None:
    model = ProcessModel(per_batch=0.01, per_item=0.001, per_cost=0.0001)
    assert batch_cost(model, 3, rng=None, cost=500) == pytest.approx(0.01 + 0.003 + 0.05)  # type: ignore[arg-type]
    assert batch_cost(model, 3, rng=None) == pytest.approx(0.013)  # type: ignore[arg-type]


# --- runs --------------------------------------------------------------------------


@pytest.mark.parametrize("oversize", list(tb.Oversize))
def test_every_simulated_batch_respects_the_cost_bound(oversize: tb.Oversize) -> None:
    limits = attrs.evolve(
        tokens().limits, oversize=oversize, overflow=tb.Overflow.WAIT, max_batch_queue_size=64
    )
    scenario = tokens(limits=limits)
    workload = generate_workload(scenario)
    assert workload.costs is not None
    oversize_items = sum(1 for cost in workload.costs if cost > 1000)
    assert oversize_items  # the long tail reaches past the bound
    result = run_scenario(scenario)
    for r in result.results:
        assert r.anomalies == ()
        assert len(r.batch_costs) == len(r.batch_sizes) == r.batches
        over = [cost for cost in r.batch_costs if cost > 1000]
        if oversize is tb.Oversize.ALONE:
            assert r.ok == r.items
            assert len(over) == oversize_items
            assert sum(r.batch_costs) == pytest.approx(math.fsum(workload.costs))
        else:
            assert over == []
            assert r.rejected == oversize_items
        assert r.max_batch_cost == 1000
        assert r.mean_batch_cost == pytest.approx(sum(r.batch_costs) / r.batches)
        summary = r.summary()
        assert r.mean_batch_cost is not None
        assert summary["mean_batch_cost"] == pytest.approx(r.mean_batch_cost, abs=1e-6)
        assert summary["cost_fill_ratio"] == pytest.approx(r.mean_batch_cost / 1000, abs=1e-6)


def test_per_cost_makes_costly_batches_slower() -> None:
    cheap = run_scenario(tokens(process=ProcessModel(per_batch=0.002))).results[0]
    costly = run_scenario(tokens()).results[0]
    assert costly.latency(50) > cheap.latency(50)  # type: ignore[operator]


def test_without_costs_results_have_none() -> None:
    r = run_scenario(tokens(costs=None, limits=tb.Limits(), process=ProcessModel())).results[0]
    assert r.batch_costs == ()
    assert r.mean_batch_cost is None
    assert r.max_batch_cost is None
    assert r.summary()["mean_batch_cost"] is None


def test_the_report_shows_costs_only_when_there_are_some() -> None:
    with_costs = run_scenario(tokens())
    text = render_table(with_costs, wide=True)
    assert " cost " in text.splitlines()[5] or " cost" in text
    assert "batch cost 1000 (oversize items: alone)" in " ".join(
        describe_scenario(with_costs.scenario)
    )
    assert "item costs: log-normal, median 100, sigma 1" in " ".join(
        describe_scenario(with_costs.scenario)
    )
    plain = run_scenario(tokens(costs=None, limits=tb.Limits(), process=ProcessModel()))
    header = next(line for line in render_table(plain, wide=True).splitlines() if "policy" in line)
    assert " cost" not in header
    header = next(
        line for line in render_table(with_costs, wide=True).splitlines() if "policy" in line
    )
    assert " cost" in header


# --- the built-in scenario and the plots -------------------------------------------


def test_llm_tokens_is_built_in_and_runs_cleanly() -> None:
    assert "llm-tokens" in builtin_scenarios()
    scenario = load_scenario("llm-tokens", ["items=1500"])
    assert scenario.costs is not None
    assert scenario.costs.distribution == "lognormal"
    assert scenario.limits.max_batch_cost is not None
    assert scenario.process.per_cost > 0
    bound = scenario.limits.max_batch_cost
    for r in run_scenario(scenario).results:
        assert r.anomalies == ()
        assert all(
            cost <= bound or size == 1
            for cost, size in zip(r.batch_costs, r.batch_sizes, strict=True)
        )


def test_batch_size_plot_shows_batch_costs_alongside() -> None:
    pytest.importorskip("matplotlib")
    from trio_batch.sim._plot import _batch_sizes, _styles

    result = run_scenario(tokens())
    figure = _batch_sizes(result, _styles(len(result.results)))
    axes = figure.axes
    assert len(axes) == 2 * len(result.results)  # sizes on the left, costs on the right
    assert "max_batch_cost 1000" in axes[-1].get_xlabel()
    assert axes[1].get_title(loc="left").startswith("mean cost")
    plain = run_scenario(tokens(costs=None, limits=tb.Limits(), process=ProcessModel()))
    assert len(_batch_sizes(plain, _styles(2)).axes) == 2  # one column without costs


def test_costs_give_the_same_numbers_in_worker_processes() -> None:
    scenario = load_scenario("llm-tokens", ["items=400"])
    assert run_scenario(scenario, jobs=2).to_data() == run_scenario(scenario).to_data()
