"""``--tune``: the grid, the Pareto front, the best static policy and the bar."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest

import trio_batch as tb
from trio_batch.sim import builtin_scenarios, load_scenario
from trio_batch.sim.__main__ import main
from trio_batch.sim._tune import (
    TunePoint,
    TuneRate,
    parse_rates,
    policy_grid,
    summary_markdown,
    tune,
)

TINY = """
name = "tiny-tune"
seed = 5
items = 240
policies = ["immediate"]

[keys]
distribution = "uniform"
count = 2

[arrivals]
rate = 800

[process]
per_batch = 0.004
per_item = 0.0002

[limits]
max_batch_size = 8
max_key_concurrency = 2
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_grid_is_static_policies_within_the_limits_then_adaptive() -> None:
    scenario = load_scenario("ml-inference")  # 25 ms + 0.4 ms per item, batches of 64
    assert policy_grid(scenario) == (
        tb.Immediate(),
        tb.Size(),
        tb.Duration(0.00254),
        tb.Duration(0.00635),
        tb.Duration(0.0127),
        tb.Duration(0.0254),
        tb.Duration(0.0508),
        tb.Balanced(2),
        tb.Balanced(4),
        tb.Balanced(8),
        tb.Balanced(16),
        tb.Balanced(32),
        tb.Adaptive(),
    )
    burst = load_scenario("burst")  # batches of 16
    hints = [p.min_size_hint for p in policy_grid(burst) if isinstance(p, tb.Balanced)]
    assert hints == [2, 4, 8, 16]


def test_grid_delays_count_a_typical_item_cost() -> None:
    # llm-tokens: 30 ms per call + 5 us per token, median prompt 250 tokens.
    scenario = load_scenario("llm-tokens")
    delays = [p.delay_seconds for p in policy_grid(scenario) if isinstance(p, tb.Duration)]
    assert delays == [0.00313, 0.00781, 0.0156, 0.0312, 0.0625]


def test_every_builtin_scenario_compares_adaptive() -> None:
    for name in builtin_scenarios():
        assert tb.Adaptive() in load_scenario(name).policies, name


def test_grid_for_a_process_that_costs_nothing() -> None:
    scenario = attrs.evolve(
        load_scenario("default"),
        process=attrs.evolve(load_scenario("default").process, per_batch=0.0, per_item=0.0),
    )
    delays = [p.delay_seconds for p in policy_grid(scenario) if isinstance(p, tb.Duration)]
    assert delays == [0.001, 0.002, 0.005, 0.01, 0.02]


def test_parse_rates() -> None:
    assert parse_rates("0.25,1,4") == (0.25, 1.0, 4.0)
    assert parse_rates(" 2 ") == (2.0,)
    for bad, message in (
        ("fast", r"^--rates must be numbers separated by commas, got 'fast'"),
        ("1,,2", r"^--rates must be numbers separated by commas"),
        ("0", r"^--rates must be finite and > 0, got '0'"),
        ("1,inf", r"^--rates must be finite and > 0, got 'inf'"),
        ("1,1.0", r"^--rates repeats a rate"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_rates(bad)


def point(policy: str, throughput: float, p99: float | None, *, lost: int = 0) -> TunePoint:
    return TunePoint(
        policy=policy,
        adaptive=policy.startswith("adaptive"),
        throughput=throughput,
        p99=p99,
        rejected=lost,
        withdrawn=0,
        failed=0,
        late=0,
        anomalies=(),
    )


def rate_of(*points: TunePoint) -> TuneRate:
    return TuneRate(multiplier=1.0, rate=1000.0, items=1000, points=points)


def test_front_best_static_and_bar() -> None:
    rate = rate_of(
        point("immediate", 1000, 0.010),
        point("size", 900, 0.500, lost=100),
        point("duration:0.005", 1000, 0.012),  # dominated by immediate
        point("balanced:8", 980, 0.009),  # within 0.97x: lower p99 wins "best"
        point("balanced:2", 960, 0.005),  # below 0.97x of 1000: not eligible
        point("adaptive", 990, 0.0100),
    )
    # adaptive is dominated by immediate (more throughput, the same p99).
    assert [p.policy for p in rate.front] == ["immediate", "balanced:8", "balanced:2"]
    assert rate.best_static.policy == "balanced:8"
    ratios = rate.ratios()
    assert ratios is not None
    assert ratios[0] == pytest.approx(0.99)
    assert ratios[1] == pytest.approx(0.010 / 0.009)
    assert rate.meets_bar()


@pytest.mark.parametrize(
    ("adaptive", "meets"),
    [
        (point("adaptive", 969, 0.005), False),  # throughput below 0.97x
        (point("adaptive", 970, 0.0115), True),  # exactly on the bar
        (point("adaptive", 1000, 0.0116), False),  # p99 above 1.15x
        (point("adaptive", 1000, None), False),  # no output at all
    ],
)
def test_bar_edges(adaptive: TunePoint, meets: bool) -> None:
    rate = rate_of(point("immediate", 1000, 0.010), adaptive)
    assert rate.meets_bar() is meets


def test_no_adaptive_point() -> None:
    rate = rate_of(point("immediate", 1000, 0.010))
    assert rate.adaptive is None
    assert rate.ratios() is None
    assert rate.meets_bar() is None


def test_tune_runs_the_grid_at_each_rate(tiny: Path) -> None:
    scenario = load_scenario(str(tiny))
    progress: list[tuple[int, int, str]] = []
    result = tune(
        scenario,
        (0.5, 2.0),
        on_progress=lambda done, total, label: progress.append((done, total, label)),
    )
    grid = policy_grid(scenario)
    assert [r.multiplier for r in result.rates] == [0.5, 2.0]
    assert [r.rate for r in result.rates] == [400.0, 1600.0]
    for rate in result.rates:
        assert rate.items == 240
        assert [p.policy for p in rate.points] == [
            "immediate", "size", "duration:0.00042", "duration:0.00105", "duration:0.0021",
            "duration:0.0042", "duration:0.0084", "balanced:2", "balanced:4", "balanced:8",
            "adaptive",
        ]  # fmt: skip
        assert len(rate.points) == len(grid)
        assert all(p.anomalies == () for p in rate.points)
        assert rate.adaptive is not None
        assert rate.best_static.policy in {p.policy for p in rate.points}
    # Progress counts across both rates, to the end.
    assert progress[-1][0] == progress[-1][1] == 2 * 240 * len(grid)
    assert progress[-1][2].startswith("x2 ")
    table = summary_markdown([result])
    assert table.count("| tiny-tune | x") == 2


def test_cli_table(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-s", str(tiny), "--tune", "--rates", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scenario tiny-tune (seed 5), rate x1 = 800/s, 240 items\n")
    assert "best static" in out
    assert "front" in out
    assert "\nadaptive: throughput " in out
    assert "| scenario | rate | best static |" in out


def test_cli_json(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-s", str(tiny), "--tune", "--rates", "0.5,1", "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["scenario"] for d in data] == ["tiny-tune"]
    assert data[0]["bar"] == {"throughput_share": 0.97, "p99_factor": 1.15}
    rates = data[0]["rates"]
    assert [r["multiplier"] for r in rates] == [0.5, 1.0]
    for rate in rates:
        policies = [p["policy"] for p in rate["points"]]
        assert rate["best_static"] in policies
        assert set(rate["front"]) == {p["policy"] for p in rate["points"] if p["on_front"]}
        assert rate["adaptive"]["meets_bar"] in (True, False)
        assert math.isfinite(rate["adaptive"]["throughput_ratio"])


def test_cli_plot(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "plots"
    assert main(["-s", str(tiny), "--tune", "--rates", "1", "-q", "--plot", str(out_dir)]) == 0
    written = out_dir / "tune-tiny-tune.png"
    assert written.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tune", "--policy", "size"], "--tune runs its own grid of policies; drop --policy"),
        (["--tune", "--rates", "0"], "--rates must be finite and > 0, got '0'"),
        (["--tune", "-s", "nowhere"], "nowhere"),
    ],
)
def test_cli_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("trio-batch-sim: error: ")
    assert message in err
    assert err.count("\n") == 1
