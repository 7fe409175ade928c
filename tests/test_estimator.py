"""The estimators behind tb.Adaptive, on synthetic timings (no Trio, no clock)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, strategies as st

from trio_batch._estimator import CostEstimator, RateEstimator


def feed(
    estimator: CostEstimator, a: float, b: float, sizes: list[int], noise: float = 0.0
) -> None:
    rng = random.Random(1)
    for n in sizes:
        estimator.add(n, (a + b * n) * (1 + noise * (rng.random() - 0.5)))


def test_empty_estimator_knows_nothing() -> None:
    estimator = CostEstimator()
    assert estimator.samples == 0
    assert estimator.seconds(10) == 0.0


def test_converges_on_exact_linear_timings() -> None:
    estimator = CostEstimator()
    feed(estimator, 0.005, 0.0001, [1, 4, 9, 16, 2, 30, 7] * 10)
    assert estimator.per_batch == pytest.approx(0.005, rel=1e-6)
    assert estimator.per_item == pytest.approx(0.0001, rel=1e-6)
    assert estimator.seconds(20) == pytest.approx(0.007, rel=1e-6)


@pytest.mark.parametrize(("weight", "rel"), [(0.1, 0.15), (0.03, 0.08)])
def test_converges_on_noisy_timings(weight: float, rel: float) -> None:
    # Erlang jitter with a coefficient of variation of 0.25 (the ml-inference
    # scenario). The default weight forgets fast, so its prediction is looser.
    estimator = CostEstimator(weight=weight)
    rng = random.Random(7)
    for _ in range(400):
        n = rng.randint(1, 64)
        estimator.add(n, (0.025 + 0.0004 * n) * rng.gammavariate(16, 1 / 16))
    assert estimator.seconds(32) == pytest.approx(0.0378, rel=rel)
    assert estimator.seconds(64) == pytest.approx(0.0506, rel=rel)
    if weight < 0.1:
        assert estimator.per_batch == pytest.approx(0.025, rel=0.2)
        assert estimator.per_item == pytest.approx(0.0004, rel=0.35)


def test_one_size_only_gives_the_mean_as_fixed_cost() -> None:
    estimator = CostEstimator()
    feed(estimator, 0.01, 0.0, [3] * 20)
    assert estimator.seconds(3) == pytest.approx(0.01)
    assert estimator.per_item == 0.0


def test_outliers_move_the_fit_little() -> None:
    clean = CostEstimator()
    dirty = CostEstimator()
    sizes = [1, 2, 5, 8, 3] * 20
    feed(clean, 0.005, 0.0002, sizes, noise=0.1)
    feed(dirty, 0.005, 0.0002, sizes, noise=0.1)
    # A 100x pause (GC, a lock convoy) now and then.
    for n in (4, 6, 2):
        dirty.add(n, 100 * (0.005 + 0.0002 * n))
        feed(dirty, 0.005, 0.0002, sizes[:10], noise=0.1)
    assert dirty.seconds(5) == pytest.approx(clean.seconds(5), rel=0.2)


def test_without_clipping_an_outlier_would_dominate() -> None:
    # The mutant check for the test above: a fit that takes samples as they are.
    naive = CostEstimator(clip=1e9)
    feed(naive, 0.005, 0.0002, [1, 2, 5, 8, 3] * 20, noise=0.1)
    naive.add(4, 100 * (0.005 + 0.0002 * 4))
    assert naive.seconds(5) > 2 * 0.006


def test_tracks_a_processing_time_that_changes_mid_run() -> None:
    estimator = CostEstimator()
    sizes = [1, 3, 6, 10, 2, 8] * 10
    feed(estimator, 0.005, 0.0001, sizes)
    assert estimator.seconds(5) == pytest.approx(0.0055, rel=0.01)
    # The database gets four times slower, and stays so.
    feed(estimator, 0.02, 0.0004, sizes * 2)
    assert estimator.seconds(5) == pytest.approx(0.022, rel=0.05)
    # And faster again.
    feed(estimator, 0.002, 0.00005, sizes * 2)
    assert estimator.seconds(5) == pytest.approx(0.00225, rel=0.05)


def test_ignores_samples_it_cannot_learn_from() -> None:
    estimator = CostEstimator()
    for n, seconds in ((0, 1.0), (3, math.nan), (3, -1.0), (3, math.inf)):
        estimator.add(n, seconds)
    assert estimator.samples == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": 0.0}, r"^weight must be in \(0, 1\], got 0.0"),
        ({"weight": 1.5}, r"^weight must be in \(0, 1\], got 1.5"),
        ({"clip": 0.0}, r"^clip must be > 0, got 0.0"),
    ],
)
def test_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CostEstimator(**kwargs)  # type: ignore[arg-type]


@given(
    a=st.floats(0.0, 1.0),
    b=st.floats(0.0, 0.01),
    sizes=st.lists(st.integers(1, 100), min_size=1, max_size=60),
    times=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=60),
)
def test_fit_is_never_negative_or_nan(
    a: float, b: float, sizes: list[int], times: list[float]
) -> None:
    estimator = CostEstimator()
    for n, t in zip(sizes, times, strict=False):
        estimator.add(n, t)
    assert estimator.per_batch >= 0
    assert estimator.per_item >= 0
    assert math.isfinite(estimator.seconds(50))


def test_rate_estimator() -> None:
    rate = RateEstimator()
    assert rate.rate == 0.0
    rate.arrived(1.0)
    assert rate.rate == 0.0
    assert rate.gaps == 0
    for i in range(1, 200):
        rate.arrived(1.0 + i * 0.002)
    assert rate.rate == pytest.approx(500)
    # The load drops to 50/s: followed within a few dozen arrivals.
    now = 1.0 + 199 * 0.002
    for _ in range(60):
        now += 0.02
        rate.arrived(now)
    assert rate.rate == pytest.approx(50, rel=0.05)
    rate.arrived(now)
    assert math.isfinite(rate.rate)


def test_rate_of_simultaneous_arrivals_is_infinite() -> None:
    rate = RateEstimator()
    rate.arrived(0.0)
    rate.arrived(0.0)
    assert rate.rate == math.inf
