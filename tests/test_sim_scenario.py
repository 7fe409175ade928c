"""Scenario values, policy specs and TOML loading: good input builds, bad input is named."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

import trio_batch as tb
from trio_batch.sim import (
    Arrivals,
    KeyDistribution,
    ProcessModel,
    Scenario,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    parse_policy,
    policy_label,
)
from trio_batch.sim._loading import apply_override, scenario_from_data, scenario_to_data

GOOD = """
name = "tiny"
description = "a small scenario"
seed = 42
items = 100
policies = ["immediate", "size", "duration:0.01:reject", "balanced:4"]

[keys]
distribution = "zipf"
count = 5
exponent = 1.5

[arrivals]
rate = 1000

[arrivals.burst]
every = 0.05
length = 0.01
factor = 4

[process]
per_batch = 0.002
per_item = 0.0001
jitter = "erlang"
erlang_k = 2
error_rate = 0.05

[pool]
size = 2
connect = 0.003

[limits]
max_batch_size = 8
max_key_concurrency = 2
overflow = "wait"

[timeouts]
fraction = 0.1
after = 0.02
"""


def good_data() -> dict[str, Any]:
    return tomllib.loads(GOOD)


def test_a_full_scenario_builds_with_every_field() -> None:
    scenario = scenario_from_data(good_data())
    assert scenario.name == "tiny"
    assert scenario.seed == 42
    assert scenario.items == 100
    assert scenario.duration is None
    assert scenario.policies == (
        tb.Immediate(),
        tb.Size(),
        tb.Duration(0.01, tb.OnFull.REJECT),
        tb.Balanced(4),
    )
    assert scenario.keys == KeyDistribution(distribution="zipf", count=5, exponent=1.5)
    assert scenario.arrivals.rate == 1000.0
    assert isinstance(scenario.arrivals.rate, float)
    assert scenario.arrivals.burst is not None
    assert scenario.arrivals.burst.start == 0.05  # defaults to `every`
    assert scenario.process.erlang_k == 2
    assert scenario.process.sigma is None
    assert scenario.pool is not None
    assert scenario.pool.size == 2
    assert scenario.limits == tb.Limits(
        max_batch_size=8, max_key_concurrency=2, overflow=tb.Overflow.WAIT
    )
    assert scenario.timeouts is not None
    assert scenario.timeouts.after == 0.02


def test_defaults_are_resolved_at_construction() -> None:
    scenario = Scenario(duration=1, policies=["size"], arrivals=Arrivals(rate=5))
    assert scenario.keys == KeyDistribution()
    assert scenario.process == ProcessModel()
    assert scenario.limits == tb.Limits()
    assert scenario.pool is None
    assert scenario.timeouts is None
    assert KeyDistribution(distribution="zipf", count=3).exponent == 1.0
    assert ProcessModel(jitter="lognormal").sigma == 0.5
    assert ProcessModel(jitter="erlang").erlang_k == 4


def test_scenarios_are_frozen_values_and_evolve_revalidates() -> None:
    scenario = scenario_from_data(good_data())
    assert scenario == scenario_from_data(good_data())
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        scenario.seed = 1  # type: ignore[misc]
    assert attrs.evolve(scenario, seed=1).seed == 1
    with pytest.raises(ValueError, match=r"^seed must be >= 0, got -1$"):
        attrs.evolve(scenario, seed=-1)


def test_scenario_to_data_round_trips() -> None:
    scenario = scenario_from_data(good_data())
    data = scenario_to_data(scenario)

    def without_none(value: object) -> object:
        if isinstance(value, dict):
            return {k: without_none(v) for k, v in value.items() if v is not None}
        return value

    rebuilt = without_none(data)
    assert isinstance(rebuilt, dict)
    # The data holds the interval in force (1/200 of 100 items at 1000/s), not null.
    assert data["sample_interval"] == scenario.resolved_sample_interval == 0.1 / 200
    assert scenario.sample_interval is None
    resolved = attrs.evolve(scenario, sample_interval=scenario.resolved_sample_interval)
    assert scenario_from_data(rebuilt) == resolved


@pytest.mark.parametrize(
    ("spec", "policy"),
    [
        ("immediate", tb.Immediate()),
        ("SIZE", tb.Size()),
        ("duration:0.005", tb.Duration(0.005)),
        ("duration:0.005:process", tb.Duration(0.005)),
        ("duration:1:reject", tb.Duration(1.0, tb.OnFull.REJECT)),
        ("duration:0.01:margin=0.002", tb.Duration(0.01, deadline_margin=0.002)),
        (
            "duration:0.01:reject:margin=none",
            tb.Duration(0.01, tb.OnFull.REJECT, deadline_margin=None),
        ),
        ("duration:inf", tb.Duration(math.inf)),
        ("balanced:16", tb.Balanced(16)),
        ("adaptive", tb.Adaptive()),
        ("Adaptive:0.05", tb.Adaptive(0.05)),
        ("adaptive:2", tb.Adaptive(2.0)),
    ],
)
def test_policy_specs_parse_and_labels_round_trip(spec: str, policy: tb.Policy) -> None:
    assert parse_policy(spec) == policy
    assert parse_policy(policy_label(policy)) == policy


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fastest", r"^unknown policy 'fastest' \(expected immediate, size, duration"),
        ("size:3", r"^unknown policy 'size:3'"),
        ("duration", r"^unknown policy 'duration'"),
        ("duration:-1", r"^bad policy 'duration:-1': delay_seconds must be >= 0"),
        ("duration:soon", r"^bad policy 'duration:soon': could not convert"),
        ("duration:1:later", r"^bad policy 'duration:1:later': after the delay, expected"),
        ("balanced:0", r"^bad policy 'balanced:0': min_size_hint must be >= 1"),
        ("adaptive:0", r"^bad policy 'adaptive:0': target_latency must be None or finite and > 0"),
        ("adaptive:inf", r"^bad policy 'adaptive:inf': target_latency must be None or finite"),
        ("adaptive:1:2", r"^unknown policy 'adaptive:1:2' \(expected .*adaptive:TARGET_SECONDS"),
        ("adaptive:soon", r"^bad policy 'adaptive:soon': could not convert"),
    ],
)
def test_bad_policy_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_policy(spec)


def _set(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    *tables, leaf = path.split(".")
    target = data
    for table in tables:
        target = target.setdefault(table, {})
    target[leaf] = value
    return data


def _drop(data: dict[str, Any], path: str) -> dict[str, Any]:
    *tables, leaf = path.split(".")
    target = data
    for table in tables:
        target = target[table]
    del target[leaf]
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _set(d, "arrivals.rate", -1), r"^arrivals\.rate must be > 0, got -1\.0$"),
        (
            lambda d: _set(d, "arrivals.rate", "fast"),
            r"^arrivals\.rate must be a number, got 'fast'$",
        ),
        (lambda d: _set(d, "arrivals.rate", math.nan), r"^arrivals\.rate must be finite"),
        (lambda d: _drop(d, "arrivals.rate"), r"^arrivals\.rate is required$"),
        (lambda d: _drop(d, "arrivals"), r"^arrivals is required"),
        (lambda d: _drop(d, "policies"), r"^policies is required$"),
        (lambda d: _set(d, "arrivals", 5), r"^arrivals must be a table, got 5$"),
        (
            lambda d: _set(d, "arrivals.burst.length", 1),
            r"^arrivals\.burst\.length must be < every",
        ),
        (lambda d: _set(d, "arrivals.burst.colour", 1), r"^unknown field arrivals\.burst\.colour"),
        (lambda d: _set(d, "speed", 1), r"^unknown field speed \(expected one of: name, "),
        (lambda d: _set(d, "policies", ["fastest"]), r"^policies\[0\]: unknown policy 'fastest'"),
        (lambda d: _set(d, "policies", []), r"^policies must be a non-empty list"),
        (lambda d: _set(d, "policies", [3]), r"^policies\[0\] must be a string"),
        (lambda d: _set(d, "policies", ["size", "size"]), r"^policies\[1\] repeats 'size'$"),
        (lambda d: _set(d, "policies", ["balanced:9"]), r"^policies\[0\] \(balanced:9\) needs"),
        (lambda d: _set(d, "duration", 1.0), r"^items or duration must be given \(exactly one\)"),
        (lambda d: _drop(d, "items"), r"^items or duration must be given \(exactly one\)"),
        (lambda d: _set(d, "items", 0), r"^items must be >= 1, got 0$"),
        (lambda d: _set(d, "items", 2.5), r"^items must be an integer, got 2\.5$"),
        (lambda d: _set(d, "items", True), r"^items must be an integer, got True$"),
        (lambda d: _set(d, "seed", -1), r"^seed must be >= 0, got -1$"),
        (lambda d: _set(d, "keys.distribution", "normal"), r"^keys\.distribution must be one of"),
        (lambda d: _set(d, "keys.count", 0), r"^keys\.count must be >= 1, got 0$"),
        (
            lambda d: _set(d, "keys", {"distribution": "uniform", "count": 3, "exponent": 1}),
            r"^keys\.exponent applies only to distribution 'zipf'",
        ),
        (
            lambda d: _set(d, "keys", {"distribution": "single", "count": 3}),
            r"^keys\.count must be 1 for distribution 'single', got 3$",
        ),
        (lambda d: _set(d, "process.per_item", -0.1), r"^process\.per_item must be >= 0"),
        (lambda d: _set(d, "process.error_rate", 1.5), r"^process\.error_rate must be <= 1"),
        (lambda d: _set(d, "process.sigma", 0.5), r"^process\.sigma applies only to jitter"),
        (lambda d: _set(d, "process.jitter", "gauss"), r"^process\.jitter must be one of"),
        (lambda d: _set(d, "pool.size", "x"), r"^pool\.size must be an integer, got 'x'$"),
        (lambda d: _drop(d, "pool.size"), r"^pool\.size is required$"),
        (lambda d: _set(d, "limits.max_batch_size", 0), r"^limits\.max_batch_size must be >= 1"),
        (lambda d: _set(d, "limits.overflow", "block"), r"^limits\.overflow must be one of"),
        (lambda d: _set(d, "limits.size", 3), r"^unknown field limits\.size"),
        (lambda d: _set(d, "timeouts.fraction", 2), r"^timeouts\.fraction must be <= 1"),
        (lambda d: _drop(d, "timeouts.after"), r"^timeouts\.after is required$"),
        (lambda d: _set(d, "sample_interval", 0), r"^sample_interval must be > 0"),
        # Sizes that would not fit in memory or never end are refused up front.
        (
            lambda d: _set(d, "items", 10**9),
            r"^items must be <= 2000000 \(every latency is kept in memory\), got 1000000000$",
        ),
        (
            lambda d: _set(_drop(d, "items"), "duration", 1e6),
            r"^duration 1e\+06 s at arrivals\.rate 1000/s means about 1,59\d,\d{3},\d{3} arrivals; "
            r"at most 2,000,000 fit",
        ),
        (
            lambda d: _set(d, "keys.count", 10**9),
            r"^keys\.count must be <= 1000000 \(a Zipf table holds a weight per key\)",
        ),
        (
            lambda d: _set(d, "sample_interval", 1e-9),
            r"^sample_interval must be >= 1e-05 \(at most 10,000 samples over 0\.1 s of "
            r"arrivals\), got 1e-09$",
        ),
        (
            lambda d: _set(d, "arrivals.burst", {"every": 1e-9, "length": 1e-10, "factor": 2}),
            r"^arrivals\.burst\.every must be >= 1e-07 \(at most 1,000,000 bursts",
        ),
    ],
)
def test_bad_fields_are_named_in_one_line(change: Any, message: str) -> None:
    with pytest.raises(ScenarioError, match=message) as caught:
        scenario_from_data(change(good_data()))
    assert "\n" not in str(caught.value)


def test_every_builtin_scenario_loads_and_is_described() -> None:
    found = builtin_scenarios()
    assert {"default", "web-db", "burst", "ml-inference"} <= set(found)
    for name, description in found.items():
        scenario = load_scenario(name)
        assert scenario.name == name
        assert description == scenario.description != ""
    assert len(load_scenario("default").policies) == 5


def test_load_from_a_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(GOOD.replace('name = "tiny"\n', ""))
    scenario = load_scenario(
        str(path),
        [
            "arrivals.rate=250",
            "duration=0.5",  # replaces items
            "keys.distribution=uniform",  # a bare word is a string
            "keys.exponent=",  # an empty value removes the field
            'policies=["size"]',
            "timeouts={fraction = 0.5, after = 1}",
        ],
    )
    assert scenario.name == "mine"  # the file's stem
    assert scenario.arrivals.rate == 250.0
    assert (scenario.items, scenario.duration) == (None, 0.5)
    assert scenario.keys == KeyDistribution(distribution="uniform", count=5)
    assert scenario.policies == (tb.Size(),)
    assert scenario.timeouts is not None
    assert scenario.timeouts.fraction == 0.5


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("=3", r"^--set expects FIELD=VALUE, got '=3'$"),
        ("rate", r"^--set expects FIELD=VALUE"),
        ("arrivals.rate.x=1", r"^arrivals\.rate is not a table$"),
        ("a..b=1", r"^bad field name 'a\.\.b'$"),
    ],
)
def test_bad_overrides(assignment: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        apply_override(good_data(), assignment)


def test_unknown_scenarios_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(
        ScenarioError, match=r"^unknown scenario 'nope': not a built-in \(.*default"
    ):
        load_scenario("nope")
    with pytest.raises(ScenarioError, match=r"^cannot read scenario .*missing\.toml"):
        load_scenario(str(tmp_path / "missing.toml"))
    malformed = tmp_path / "bad.toml"
    malformed.write_text("seed = 1\nitems = \n")
    with pytest.raises(ScenarioError, match=r"bad\.toml: malformed TOML: .*line 2"):
        load_scenario(str(malformed))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ScenarioError, match=r"not UTF-8 text$"):
        load_scenario(str(binary))
