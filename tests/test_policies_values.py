"""Limits and policies are validated, immutable values, equal and hashable by value."""

from __future__ import annotations

import math
import re
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from tutil import Recorder

import trio_batch as tb

LIMIT_FIELDS = ["max_batch_size", "max_key_concurrency", "max_batch_queue_size"]
#: What attrs says when a frozen instance is assigned to.
FROZEN = r"^can't set attribute$"


# --- Limits -----------------------------------------------------------------


def test_limits_defaults() -> None:
    limits = tb.Limits()
    assert limits.max_batch_size == 100
    assert limits.max_key_concurrency == 10
    assert limits.max_batch_queue_size == 20


def test_limits_queue_size_is_derived_from_concurrency_at_construction() -> None:
    assert tb.Limits(max_key_concurrency=3).max_batch_queue_size == 6
    assert tb.Limits(max_key_concurrency=1).max_batch_queue_size == 2
    # The resolved value is the value: equal to the same limits spelled out.
    assert tb.Limits(max_key_concurrency=3) == tb.Limits(
        max_key_concurrency=3, max_batch_queue_size=6
    )


def test_limits_explicit_queue_size_is_kept() -> None:
    assert tb.Limits(max_key_concurrency=3, max_batch_queue_size=1).max_batch_queue_size == 1
    assert tb.Limits(max_batch_queue_size=50).max_batch_queue_size == 50


def test_limits_are_keyword_only() -> None:
    limits_cls: Any = tb.Limits
    with pytest.raises(TypeError, match=r"takes 1 positional argument but 2 were given$"):
        limits_cls(5)
    with pytest.raises(TypeError, match=r"takes 1 positional argument but 4 were given$"):
        limits_cls(5, 2, 4)


@pytest.mark.parametrize("field", LIMIT_FIELDS)
@pytest.mark.parametrize("value", [0, -1, -100])
def test_limits_values_below_one_are_rejected(field: str, value: int) -> None:
    limits_cls: Any = tb.Limits
    with pytest.raises(ValueError, match=rf"^{field} must be >= 1, got {value}$"):
        limits_cls(**{field: value})


@pytest.mark.parametrize("field", LIMIT_FIELDS)
def test_limits_value_one_is_accepted(field: str) -> None:
    limits_cls: Any = tb.Limits
    assert getattr(limits_cls(**{field: 1}), field) == 1


@pytest.mark.parametrize("field", LIMIT_FIELDS)
@pytest.mark.parametrize("value", [1.5, "2", 2.0])
def test_limits_non_int_is_a_type_error(field: str, value: object) -> None:
    limits_cls: Any = tb.Limits
    with pytest.raises(TypeError, match=rf"^{field} must be an int, got {re.escape(repr(value))}$"):
        limits_cls(**{field: value})


def test_limits_are_frozen() -> None:
    limits = tb.Limits()
    with pytest.raises(attrs.exceptions.FrozenInstanceError, match=FROZEN):
        limits.max_batch_size = 5  # type: ignore[misc]
    assert limits.max_batch_size == 100


def test_limits_equal_and_hashable_by_value() -> None:
    assert tb.Limits(max_batch_size=5) == tb.Limits(max_batch_size=5)
    assert tb.Limits(max_batch_size=5) != tb.Limits(max_batch_size=6)
    assert hash(tb.Limits(max_batch_size=5)) == hash(tb.Limits(max_batch_size=5))
    assert len({tb.Limits(), tb.Limits(), tb.Limits(max_batch_size=1)}) == 2


# --- Limits: cost bound (issue 14) -------------------------------------------


def test_limits_cost_defaults() -> None:
    # No cost bound and oversize items rejected, unless asked otherwise.
    limits = tb.Limits()
    assert limits.max_batch_cost is None
    assert limits.oversize is tb.Oversize.REJECT


def test_oversize_members() -> None:
    assert {m.name for m in tb.Oversize} == {"REJECT", "ALONE"}
    assert len(tb.Oversize) == 2
    assert tb.Oversize.__module__ == "trio_batch"
    assert "Oversize" in tb.__all__


@pytest.mark.parametrize("value", [1, 4096, 0.5, 2.5, 1e-9, 10**30])
def test_limits_max_batch_cost_accepts_finite_positive_numbers(value: float) -> None:
    limits = tb.Limits(max_batch_cost=value)
    assert limits.max_batch_cost == value
    assert type(limits.max_batch_cost) is type(value)  # kept as given, not converted


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, -math.inf])
def test_limits_max_batch_cost_not_positive_is_a_value_error(value: float) -> None:
    with pytest.raises(
        ValueError, match=rf"^max_batch_cost must be a finite number > 0, got {value!r}$"
    ):
        tb.Limits(max_batch_cost=value)


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_limits_max_batch_cost_not_finite_is_a_value_error(value: float) -> None:
    with pytest.raises(
        ValueError, match=rf"^max_batch_cost must be a finite number > 0, got {value!r}$"
    ):
        tb.Limits(max_batch_cost=value)


@pytest.mark.parametrize("value", [True, False, "10", b"10", [10], object()])
def test_limits_max_batch_cost_not_a_number_is_a_type_error(value: object) -> None:
    # bool is an int to Python, but not a number here.
    limits_cls: Any = tb.Limits
    with pytest.raises(TypeError, match=r"^max_batch_cost must be None or a number, got "):
        limits_cls(max_batch_cost=value)


@pytest.mark.parametrize("value", ["alone", "REJECT", None, 1, tb.Overflow.REJECT])
def test_limits_oversize_must_be_an_oversize(value: object) -> None:
    limits_cls: Any = tb.Limits
    with pytest.raises(TypeError, match=r"oversize"):
        limits_cls(oversize=value)


def test_limits_oversize_alone_is_kept() -> None:
    limits = tb.Limits(max_batch_cost=10, oversize=tb.Oversize.ALONE)
    assert limits.oversize is tb.Oversize.ALONE
    assert limits.max_batch_cost == 10


def test_limits_cost_fields_are_values() -> None:
    a = tb.Limits(max_batch_cost=10)
    assert a == tb.Limits(max_batch_cost=10)
    assert a != tb.Limits(max_batch_cost=11)
    assert a != tb.Limits(max_batch_cost=10, oversize=tb.Oversize.ALONE)
    assert hash(a) == hash(tb.Limits(max_batch_cost=10))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.max_batch_cost = 5  # type: ignore[misc]
    # evolve re-validates, as for every other field.
    assert attrs.evolve(a, max_batch_cost=2.5).max_batch_cost == 2.5
    with pytest.raises(ValueError, match=r"^max_batch_cost must be a finite number > 0"):
        attrs.evolve(a, max_batch_cost=-1)


def test_limits_cost_fields_are_keyword_only() -> None:
    limits_cls: Any = tb.Limits
    with pytest.raises(TypeError):
        limits_cls(100, 10, 20, tb.Overflow.REJECT, 4096)


# --- Policies ---------------------------------------------------------------


def test_on_full_members() -> None:
    assert {m.name for m in tb.OnFull} == {"PROCESS", "REJECT"}
    assert len(tb.OnFull) == 2


def test_duration_defaults_to_on_full_process() -> None:
    policy = tb.Duration(0.5)
    assert policy.delay_seconds == 0.5
    assert policy.on_full is tb.OnFull.PROCESS
    assert tb.Duration(0.5, on_full=tb.OnFull.REJECT).on_full is tb.OnFull.REJECT


def test_policies_equal_by_value() -> None:
    assert tb.Immediate() == tb.Immediate()
    assert tb.Size() == tb.Size()
    assert tb.Duration(0.5) == tb.Duration(0.5, on_full=tb.OnFull.PROCESS)
    assert tb.Duration(0.5) != tb.Duration(0.25)
    assert tb.Duration(0.5) != tb.Duration(0.5, on_full=tb.OnFull.REJECT)
    assert tb.Balanced(3) == tb.Balanced(3)
    assert tb.Balanced(3) != tb.Balanced(4)
    distinct: list[object] = [tb.Immediate(), tb.Size(), tb.Balanced(1)]
    assert distinct[0] != distinct[1]
    assert distinct[2] != distinct[0]


def test_policies_hashable_by_value() -> None:
    policies = [
        tb.Immediate(),
        tb.Immediate(),
        tb.Size(),
        tb.Size(),
        tb.Duration(0.5),
        tb.Duration(0.5),
        tb.Duration(0.5, on_full=tb.OnFull.REJECT),
        tb.Balanced(3),
        tb.Balanced(3),
        tb.Balanced(4),
    ]
    assert len(set(policies)) == 6
    assert hash(tb.Duration(0.5)) == hash(tb.Duration(0.5))
    assert hash(tb.Balanced(3)) == hash(tb.Balanced(3))
    assert {tb.Duration(1.0): "x"}[tb.Duration(1.0)] == "x"


def test_policies_are_frozen() -> None:
    duration = tb.Duration(0.5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError, match=FROZEN):
        duration.delay_seconds = 1.0  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError, match=FROZEN):
        duration.on_full = tb.OnFull.REJECT  # type: ignore[misc]
    balanced = tb.Balanced(3)
    with pytest.raises(attrs.exceptions.FrozenInstanceError, match=FROZEN):
        balanced.min_size_hint = 4  # type: ignore[misc]
    assert duration == tb.Duration(0.5)
    assert balanced.min_size_hint == 3


@pytest.mark.parametrize("policy_cls", [tb.Immediate, tb.Size])
def test_stateless_policies_are_frozen(policy_cls: type[Any]) -> None:
    policy = policy_cls()
    with pytest.raises(attrs.exceptions.FrozenInstanceError, match=FROZEN):
        policy.anything = 1


@pytest.mark.parametrize("delay", [-1, -0.001, -math.inf])
def test_duration_negative_delay_is_rejected(delay: float) -> None:
    with pytest.raises(ValueError, match=r"^delay_seconds must be >= 0, got "):
        tb.Duration(delay)


def test_duration_negative_delay_message() -> None:
    with pytest.raises(ValueError, match=r"^delay_seconds must be >= 0, got -1$"):
        tb.Duration(-1)


def test_duration_nan_delay_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"^delay_seconds must be >= 0, got nan$"):
        tb.Duration(math.nan)


@pytest.mark.parametrize("delay", [0, 0.0, 0.25, 10, math.inf])
def test_duration_accepts_non_negative_delay(delay: float) -> None:
    assert tb.Duration(delay).delay_seconds == delay


@pytest.mark.parametrize("hint", [0, -1])
def test_balanced_hint_below_one_is_rejected(hint: int) -> None:
    with pytest.raises(ValueError, match=rf"^min_size_hint must be >= 1, got {hint}$"):
        tb.Balanced(hint)


def test_balanced_non_int_hint_is_a_type_error() -> None:
    balanced: Any = tb.Balanced
    with pytest.raises(TypeError, match=r"^min_size_hint must be an int, got 2\.5$"):
        balanced(2.5)


async def test_balanced_hint_above_max_batch_size_rejected_by_open_batcher() -> None:
    process = Recorder()
    with pytest.raises(
        ValueError,
        match=r"^Balanced\.min_size_hint must be <= max_batch_size, got 200 > 100$",
    ):
        async with tb.open_batcher(process, policy=tb.Balanced(200)):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match=r"got 6 > 5$"):
        async with tb.open_batcher(
            process, policy=tb.Balanced(6), limits=tb.Limits(max_batch_size=5)
        ):
            pass  # pragma: no cover
    assert process.calls == []


async def test_balanced_hint_equal_to_max_batch_size_is_accepted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with tb.open_batcher(
        process, policy=tb.Balanced(5), limits=tb.Limits(max_batch_size=5)
    ) as batcher:
        assert await batcher.submit("k", 1) == "k:1"


class _Facts:
    """A batch as the policies see it."""

    def __init__(self, size: int, *, filled: bool, expired: bool, early: bool = False) -> None:
        self.size = size
        self.filled = filled
        self.expired = expired
        self.early = early


@pytest.mark.parametrize(
    "policy",
    [tb.Immediate(), tb.Size(), tb.Duration(0.5), tb.Duration(0.5, on_full=tb.OnFull.REJECT)]
    + [tb.Balanced(hint) for hint in (1, 2, 4)],
    ids=repr,
)
def test_fill_only_on_arrival_says_whether_an_arrival_can_start_a_batch_it_does_not_fill(
    policy: Any,
) -> None:
    # The batcher skips the readiness check of an arrival that does not fill its
    # batch when this flag is set; it must agree with the policy's own rule. An
    # arrival never expires a timer and is never a finish.
    can = any(
        policy._may_start(
            _Facts(size, filled=False, expired=False), started=started, after_finish=False
        )
        for size in range(1, 5)
        for started in range(3)
    )
    assert policy._fill_only_on_arrival is not can
