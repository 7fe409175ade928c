"""Scenarios: what to simulate, as immutable, validated values.

A :class:`Scenario` says everything a run needs: the seed, when arrivals stop,
how keys and arrival times are drawn, what each item costs (optional: tokens,
bytes, rows, for ``open_batcher(cost=...)``), what ``process`` takes and how
often it fails, an optional connection pool, the limits, impatient callers, and
the policies to compare. Every value is an attrs frozen class validated at
construction, so a scenario that exists is a scenario that can run.

The values' validators check types and ranges, with messages that start with
the field's name (``rate must be > 0, got -1.0``); ``_loading`` reads TOML,
checks its shape and prefixes the table, so the CLI can print
``arrivals.rate must be > 0, got -1.0`` as it is.

Policies are written as short specs, the same in TOML and on the command line:
``immediate``, ``size``, ``duration:SECONDS[:reject][:margin=SECONDS|none]``,
``balanced:MIN_SIZE_HINT``, ``adaptive[:TARGET_SECONDS]``.

Rejected alternative: one table per policy in TOML (``[[policy]] kind = ...``).
It is longer to read and cannot be typed as a single ``--policy`` flag, and a
policy has at most two parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, Literal, final

import attrs

import trio_batch as tb

__all__ = [
    "POLICY_SYNTAX",
    "Arrivals",
    "Burst",
    "ItemCosts",
    "KeyDistribution",
    "Pool",
    "ProcessModel",
    "Scenario",
    "Timeouts",
    "parse_policy",
    "policy_label",
]


# -- validators ----------------------------------------------------------------
#
# attrs' own bounds and type validators (``gt``, ``instance_of``) word their
# messages their way ("'rate' must be > 0: -1.0"); ours follow the project's
# ("rate must be > 0, got -1.0"), which the loader prefixes with the table. So
# the checks below are ours, and attrs supplies the combinators (``optional``).

#: The most arrivals a run may expect: every latency is kept, for exact
#: percentiles, so memory grows with the arrivals: 24 bytes per item for the
#: workload, about 30 per item and policy for the results, twice that at the
#: peak while a result is built (measured: 200,000 items, two policies, 72 MB
#: at the peak). At this limit, with four policies, about half a gigabyte.
MAX_ITEMS: Final = 2_000_000
#: The most keys: a Zipf draw keeps a table of cumulative weights, one per key.
MAX_KEYS: Final = 1_000_000
#: The most statistics samples a run may ask for over its arrivals.
MAX_SAMPLES: Final = 10_000
#: The most burst periods over the arrivals (each is a period of its own rate).
MAX_BURSTS: Final = 1_000_000


def _to_float(value: float) -> float:
    # TOML writes 2 for 2.0. Anything else stays as it is, for the validator to judge.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _optional_float(value: float | None) -> float | None:
    return None if value is None else _to_float(value)


Validator = Callable[[object, "attrs.Attribute[Any]", object], None]


def _number(
    *, gt: float | None = None, ge: float | None = None, le: float | None = None
) -> Validator:
    """A validator for a finite number with optional bounds."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, float):
            raise TypeError(f"{attribute.name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{attribute.name} must be finite, got {value!r}")
        if gt is not None and not value > gt:
            raise ValueError(f"{attribute.name} must be > {gt:g}, got {value!r}")
        if ge is not None and not value >= ge:
            raise ValueError(f"{attribute.name} must be >= {ge:g}, got {value!r}")
        if le is not None and not value <= le:
            raise ValueError(f"{attribute.name} must be <= {le:g}, got {value!r}")

    return check


def _integer(*, ge: int, le: int | None = None, why: str = "") -> Validator:
    """A validator for an int (not a bool) from ``ge`` to ``le``; ``why`` explains ``le``."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be an integer, got {value!r}")
        if value < ge:
            raise ValueError(f"{attribute.name} must be >= {ge}, got {value!r}")
        if le is not None and value > le:
            reason = f" ({why})" if why else ""
            raise ValueError(f"{attribute.name} must be <= {le}{reason}, got {value!r}")

    return check


def _choice(*choices: str) -> Validator:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            allowed = ", ".join(repr(choice) for choice in choices)
            raise ValueError(f"{attribute.name} must be one of {allowed}, got {value!r}")

    return check


def _text(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a string, got {value!r}")


_optional = attrs.validators.optional

#: Samples of the batcher's statistics over the expected arrival span, by default.
DEFAULT_SAMPLES: Final = 200

# -- the values ----------------------------------------------------------------

#: How keys are drawn.
Distribution = Literal["single", "uniform", "zipf"]
#: The random factor applied to a batch's cost.
Jitter = Literal["none", "erlang", "lognormal"]
#: How item costs are drawn.
CostDistribution = Literal["constant", "uniform", "lognormal"]


@final
@attrs.frozen(kw_only=True)
class KeyDistribution:
    """Which key each item is submitted under.

    Args:
        distribution: ``"single"`` (every item under key 0), ``"uniform"`` (keys
            ``0 .. count-1`` equally likely) or ``"zipf"`` (key ``k`` has weight
            ``1 / (k + 1) ** exponent``: a few hot keys and a long tail).
        count: the number of distinct keys (1 for ``"single"``).
        exponent: the Zipf exponent ``s`` (> 0; only for ``"zipf"``).
    """

    distribution: Distribution = attrs.field(
        default="single", validator=_choice("single", "uniform", "zipf")
    )
    count: int = attrs.field(
        default=1, validator=_integer(ge=1, le=MAX_KEYS, why="a Zipf table holds a weight per key")
    )
    exponent: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_optional(_number(gt=0))
    )

    def __attrs_post_init__(self) -> None:
        if self.distribution == "single" and self.count != 1:
            raise ValueError(f"count must be 1 for distribution 'single', got {self.count}")
        if self.distribution == "zipf":
            if self.exponent is None:
                object.__setattr__(self, "exponent", 1.0)
        elif self.exponent is not None:
            raise ValueError(
                f"exponent applies only to distribution 'zipf', not {self.distribution!r}"
            )


@final
@attrs.frozen(kw_only=True)
class Burst:
    """Periods of heavier traffic: the arrival rate is multiplied by ``factor``.

    Bursts last ``length`` seconds and begin at ``start``, ``start + every``,
    ``start + 2 * every``, and so on.

    Args:
        every: seconds from the start of one burst to the start of the next (> 0).
        length: seconds a burst lasts (> 0 and < ``every``).
        factor: the rate multiplier during a burst (> 0).
        start: when the first burst begins (>= 0; defaults to ``every``).
    """

    every: float = attrs.field(converter=_to_float, validator=_number(gt=0))
    length: float = attrs.field(converter=_to_float, validator=_number(gt=0))
    factor: float = attrs.field(converter=_to_float, validator=_number(gt=0))
    start: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_optional(_number(ge=0))
    )

    def __attrs_post_init__(self) -> None:
        if self.length >= self.every:
            raise ValueError(f"length must be < every ({self.every!r}), got {self.length!r}")
        if self.start is None:
            object.__setattr__(self, "start", self.every)


@final
@attrs.frozen(kw_only=True)
class Arrivals:
    """When items arrive: a Poisson process, optionally with bursts.

    Args:
        rate: mean arrivals per simulated second outside bursts (> 0).
        burst: optional :class:`Burst` periods at a multiplied rate.
    """

    rate: float = attrs.field(converter=_to_float, validator=_number(gt=0))
    burst: Burst | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(Burst)),
        metadata={"table": Burst},
    )


@final
@attrs.frozen(kw_only=True)
class ItemCosts:
    """What each item costs (its tokens, bytes or rows): the batcher's ``cost=``.

    With costs, the batcher is opened with ``cost=`` returning each item's
    drawn cost, so ``limits.max_batch_cost`` and ``limits.oversize`` apply, and
    ``process.per_cost`` charges simulated time per unit of a batch's cost.

    Args:
        distribution: ``"constant"`` (every item costs ``value``),
            ``"uniform"`` (from ``low`` to ``high``) or ``"lognormal"``
            (median ``median``, shape ``sigma``: most items are cheap, a few
            cost many times the median, as prompts' token counts do).
        value: the cost of every item (>= 0; defaults to 1; only for ``"constant"``).
        low: the smallest cost (>= 0; only for ``"uniform"``, required).
        high: the largest cost (>= ``low``; only for ``"uniform"``, required).
        median: the median cost (> 0; only for ``"lognormal"``, required).
        sigma: the log-normal shape (> 0; defaults to 1; only for ``"lognormal"``).
        integer: round every cost up to a whole number (tokens, rows).
    """

    distribution: CostDistribution = attrs.field(
        default="constant", validator=_choice("constant", "uniform", "lognormal")
    )
    value: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_optional(_number(ge=0))
    )
    low: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_optional(_number(ge=0))
    )
    high: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_optional(_number(ge=0))
    )
    median: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_optional(_number(gt=0))
    )
    sigma: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_optional(_number(gt=0))
    )
    integer: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def __attrs_post_init__(self) -> None:
        owners = {
            "value": "constant",
            "low": "uniform",
            "high": "uniform",
            "median": "lognormal",
            "sigma": "lognormal",
        }
        for name, owner in owners.items():
            if owner != self.distribution and getattr(self, name) is not None:
                raise ValueError(
                    f"{name} applies only to distribution {owner!r}, not {self.distribution!r}"
                )
        if self.distribution == "constant" and self.value is None:
            object.__setattr__(self, "value", 1.0)
        elif self.distribution == "uniform":
            if self.low is None or self.high is None:
                raise ValueError("low and high are required for distribution 'uniform'")
            if self.high < self.low:
                raise ValueError(f"high must be >= low ({self.low!r}), got {self.high!r}")
        elif self.distribution == "lognormal":
            if self.median is None:
                raise ValueError("median is required for distribution 'lognormal'")
            if self.sigma is None:
                object.__setattr__(self, "sigma", 1.0)


@final
@attrs.frozen(kw_only=True)
class ProcessModel:
    """What one ``process`` call costs in simulated time, and how often it fails.

    A batch of ``n`` items of total cost ``c`` takes ``(per_batch + per_item * n +
    per_cost * c) * J`` seconds (``c`` is 0 without item costs), where ``J`` is
    a random factor with mean 1: exactly 1 for ``"none"``, Erlang with
    shape ``erlang_k`` (coefficient of variation ``1 / sqrt(erlang_k)``), or
    log-normal with shape ``sigma`` (a long right tail).

    Args:
        per_batch: the fixed cost of a call, in seconds (>= 0), e.g. a round trip.
        per_item: the extra cost of each item, in seconds (>= 0).
        per_cost: the extra cost of each unit of item cost (each token, each
            byte), in seconds (>= 0; needs ``costs``).
        jitter: ``"none"``, ``"erlang"`` or ``"lognormal"``.
        erlang_k: the Erlang shape (integer >= 1; defaults to 4; only for ``"erlang"``).
        sigma: the log-normal shape (> 0; defaults to 0.5; only for ``"lognormal"``).
        error_rate: the probability that a call fails after taking its time
            (0 to 1); every caller of a failed batch gets ``BatchFailed``.
    """

    per_batch: float = attrs.field(default=0.0, converter=_to_float, validator=_number(ge=0))
    per_item: float = attrs.field(default=0.0, converter=_to_float, validator=_number(ge=0))
    per_cost: float = attrs.field(default=0.0, converter=_to_float, validator=_number(ge=0))
    jitter: Jitter = attrs.field(default="none", validator=_choice("none", "erlang", "lognormal"))
    erlang_k: int | None = attrs.field(default=None, validator=_optional(_integer(ge=1)))
    sigma: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_optional(_number(gt=0))
    )
    error_rate: float = attrs.field(default=0.0, converter=_to_float, validator=_number(ge=0, le=1))

    def __attrs_post_init__(self) -> None:
        for name, owner, default in (("erlang_k", "erlang", 4), ("sigma", "lognormal", 0.5)):
            if self.jitter == owner:
                if getattr(self, name) is None:
                    object.__setattr__(self, name, default)
            elif getattr(self, name) is not None:
                raise ValueError(f"{name} applies only to jitter {owner!r}, not {self.jitter!r}")


@final
@attrs.frozen(kw_only=True)
class Pool:
    """A connection pool shared by all keys, used as the batcher's ``acquire``.

    A batch takes an idle connection, or opens one (``connect`` seconds) if fewer
    than ``size`` exist, or waits in FIFO order for one to be returned.

    Args:
        size: the most connections open at once (integer >= 1).
        connect: seconds to open a connection (>= 0).
    """

    size: int = attrs.field(validator=_integer(ge=1))
    connect: float = attrs.field(default=0.0, converter=_to_float, validator=_number(ge=0))


@final
@attrs.frozen(kw_only=True)
class Timeouts:
    """Impatient callers: a fraction of them give up after ``after`` seconds.

    A caller that gives up before its batch begins processing *withdraws* its
    item (it is never processed); one that gives up later is counted *late*.

    Args:
        fraction: the share of callers that have a timeout (0 to 1).
        after: the timeout, in seconds from the caller's arrival (> 0).
    """

    fraction: float = attrs.field(converter=_to_float, validator=_number(ge=0, le=1))
    after: float = attrs.field(converter=_to_float, validator=_number(gt=0))


def _check_policies(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{attribute.name} must list at least one policy, got {value!r}")
    seen: set[str] = set()
    for index, policy in enumerate(value):
        if not isinstance(policy, tb.Immediate | tb.Size | tb.Duration | tb.Balanced | tb.Adaptive):
            raise TypeError(
                f"{attribute.name}[{index}] must be a trio_batch policy, got {policy!r}"
            )
        label = policy_label(policy)
        if label in seen:
            raise ValueError(f"{attribute.name}[{index}] repeats {label!r}")
        seen.add(label)


def _to_policies(value: object) -> object:
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple):
        return tuple(parse_policy(item) if isinstance(item, str) else item for item in value)
    return value


@final
@attrs.frozen(kw_only=True)
class Scenario:
    """Everything one simulator run needs. Build variants with ``attrs.evolve``.

    Args:
        name: a short name, shown in reports.
        description: one sentence on what the scenario models.
        seed: the seed of every random choice (integer >= 0). The same scenario
            with the same seed gives the same numbers, byte for byte.
        items: stop arrivals after this many items (integer >= 1), or
        duration: stop arrivals after this many simulated seconds (> 0).
            Exactly one of ``items`` and ``duration`` must be given. After the
            last arrival the batcher drains, so every item gets its outcome.
        policies: the policies to compare, as ``trio_batch`` policy values or
            specs (``"immediate"``, ``"size"``, ``"duration:0.005"``,
            ``"duration:0.005:reject"``, ``"duration:0.005:margin=none"``,
            ``"balanced:8"``, ``"adaptive"``, ``"adaptive:0.05"``).
        keys: a :class:`KeyDistribution`.
        arrivals: an :class:`Arrivals`.
        costs: optional :class:`ItemCosts`; without it, items have no cost
            (and ``limits.max_batch_cost`` and ``process.per_cost`` cannot be set).
        process: a :class:`ProcessModel`.
        pool: an optional :class:`Pool`; without one, no ``acquire`` is used.
        limits: a :class:`trio_batch.Limits`.
        timeouts: optional :class:`Timeouts` (impatient callers).
        sample_interval: simulated seconds between samples of the batcher's
            statistics (> 0); defaults to 1/200 of the expected arrival span.
    """

    name: str = attrs.field(default="custom", validator=_text)
    description: str = attrs.field(default="", validator=_text)
    seed: int = attrs.field(default=0, validator=_integer(ge=0))
    items: int | None = attrs.field(
        default=None,
        validator=_optional(_integer(ge=1, le=MAX_ITEMS, why="every latency is kept in memory")),
    )
    duration: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_optional(_number(gt=0))
    )
    policies: tuple[tb.Policy, ...] = attrs.field(converter=_to_policies, validator=_check_policies)
    keys: KeyDistribution = attrs.field(
        factory=KeyDistribution,
        validator=attrs.validators.instance_of(KeyDistribution),
        metadata={"table": KeyDistribution},
    )
    arrivals: Arrivals = attrs.field(
        validator=attrs.validators.instance_of(Arrivals), metadata={"table": Arrivals}
    )
    costs: ItemCosts | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(ItemCosts)),
        metadata={"table": ItemCosts},
    )
    process: ProcessModel = attrs.field(
        factory=ProcessModel,
        validator=attrs.validators.instance_of(ProcessModel),
        metadata={"table": ProcessModel},
    )
    pool: Pool | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(Pool)),
        metadata={"table": Pool},
    )
    limits: tb.Limits = attrs.field(
        factory=tb.Limits, validator=attrs.validators.instance_of(tb.Limits)
    )
    timeouts: Timeouts | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(Timeouts)),
        metadata={"table": Timeouts},
    )
    sample_interval: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_optional(_number(gt=0))
    )

    def __attrs_post_init__(self) -> None:
        if (self.items is None) == (self.duration is None):
            raise ValueError(
                "items or duration must be given (exactly one), "
                f"got items={self.items!r}, duration={self.duration!r}"
            )
        if self.costs is None:
            if self.limits.max_batch_cost is not None:
                raise ValueError(
                    "limits.max_batch_cost needs item costs: add a [costs] table "
                    "(there is nothing to bound)"
                )
            if self.process.per_cost:
                raise ValueError("process.per_cost needs item costs: add a [costs] table")
        for index, policy in enumerate(self.policies):
            if (
                isinstance(policy, tb.Balanced)
                and policy.min_size_hint > self.limits.max_batch_size
            ):
                raise ValueError(
                    f"policies[{index}] ({policy_label(policy)}) needs min_size_hint <= "
                    f"limits.max_batch_size ({self.limits.max_batch_size})"
                )
        self._check_size()

    def _check_size(self) -> None:
        """Refuse runs that would not fit in memory or would never end, before they start."""
        span = self.expected_span
        if self.duration is not None and self.expected_items > MAX_ITEMS:
            raise ValueError(
                f"duration {self.duration:g} s at arrivals.rate {self.arrivals.rate:g}/s means "
                f"about {self.expected_items:,.0f} arrivals; at most {MAX_ITEMS:,} fit (every "
                "latency is kept in memory): shorten duration or lower the rate"
            )
        burst = self.arrivals.burst
        if burst is not None and span / burst.every > MAX_BURSTS:
            raise ValueError(
                f"arrivals.burst.every must be >= {span / MAX_BURSTS:.3g} "
                f"(at most {MAX_BURSTS:,} bursts over {span:g} s of arrivals), "
                f"got {burst.every!r}"
            )
        if self.sample_interval is not None and span / self.sample_interval > MAX_SAMPLES:
            raise ValueError(
                f"sample_interval must be >= {span / MAX_SAMPLES:.3g} "
                f"(at most {MAX_SAMPLES:,} samples over {span:g} s of arrivals), "
                f"got {self.sample_interval!r}"
            )

    @property
    def resolved_sample_interval(self) -> float:
        """``sample_interval``, or its default: 1/200 of :attr:`expected_span`."""
        if self.sample_interval is not None:
            return self.sample_interval
        return self.expected_span / DEFAULT_SAMPLES

    @property
    def expected_span(self) -> float:
        """Roughly how many simulated seconds arrivals last (ignoring bursts)."""
        if self.duration is not None:
            return self.duration
        assert self.items is not None
        return self.items / self.arrivals.rate

    @property
    def expected_items(self) -> float:
        """The mean number of arrivals (``items``, or the rate over ``duration``)."""
        if self.items is not None:
            return self.items
        assert self.duration is not None
        arrivals = self.arrivals
        burst = arrivals.burst
        in_bursts = 0.0
        if burst is not None:
            assert burst.start is not None
            if self.duration > burst.start:
                periods, rest = divmod(self.duration - burst.start, burst.every)
                in_bursts = periods * burst.length + min(rest, burst.length)
        return arrivals.rate * (self.duration + in_bursts * (burst.factor - 1 if burst else 0))


# -- policies as text ----------------------------------------------------------

POLICY_SYNTAX: Final = (
    "immediate, size, duration:SECONDS[:reject][:margin=SECONDS|none], balanced:MIN_SIZE_HINT, "
    "adaptive or adaptive:TARGET_SECONDS"
)


def parse_policy(spec: str) -> tb.Policy:
    """Parse a policy spec such as ``"duration:0.005"`` into a policy value.

    Raises:
        ValueError: the spec is not one of the forms in :data:`POLICY_SYNTAX`,
            or the policy rejects its parameter.
    """
    kind, *args = spec.strip().lower().split(":")
    on_full = {"process": tb.OnFull.PROCESS, "reject": tb.OnFull.REJECT}
    build: Callable[[], tb.Policy] | None = None
    if kind == "immediate" and not args:
        build = tb.Immediate
    elif kind == "size" and not args:
        build = tb.Size
    elif kind == "duration" and 1 <= len(args) <= 3:
        mode = tb.OnFull.PROCESS
        margin = "none"  # as in the library: deadline awareness is opt-in
        for option in args[1:]:
            if option in on_full:
                mode = on_full[option]
            elif option.startswith("margin="):
                margin = option.removeprefix("margin=")
            else:
                raise ValueError(
                    f"bad policy {spec!r}: after the delay, expected 'process', 'reject' "
                    f"or 'margin=SECONDS|none', got {option!r}"
                )
        build = lambda: tb.Duration(  # noqa: E731
            float(args[0]),
            mode,
            deadline_margin=None if margin == "none" else float(margin),
        )
    elif kind == "balanced" and len(args) == 1:
        build = lambda: tb.Balanced(int(args[0]))  # noqa: E731
    elif kind == "adaptive" and len(args) <= 1:
        build = lambda: tb.Adaptive(float(args[0]) if args else None)  # noqa: E731
    if build is None:
        raise ValueError(f"unknown policy {spec!r} (expected {POLICY_SYNTAX})")
    try:
        return build()
    except ValueError as exc:
        raise ValueError(f"bad policy {spec!r}: {exc}") from None


def policy_label(policy: tb.Policy) -> str:
    """The spec that :func:`parse_policy` turns back into ``policy``."""
    if isinstance(policy, tb.Immediate):
        return "immediate"
    if isinstance(policy, tb.Size):
        return "size"
    if isinstance(policy, tb.Duration):
        label = f"duration:{float(policy.delay_seconds)!r}"
        if policy.on_full is tb.OnFull.REJECT:
            label += ":reject"
        margin = policy.deadline_margin
        if margin is not None:
            label += f":margin={float(margin)!r}"
        return label
    if isinstance(policy, tb.Adaptive):
        target = policy.target_latency
        return "adaptive" if target is None else f"adaptive:{float(target)!r}"
    return f"balanced:{policy.min_size_hint}"
