"""The command line: ``python -m trio_batch.sim`` or ``trio-batch-sim``.

Exit status: 0 on success; 1 if the run observed a broken library guarantee
(reported as ANOMALY lines) or plots could not be written; 2 for bad input
(unknown flag, bad scenario, a size that does not fit, ``--plot`` without
matplotlib or into a place that cannot be written), always with a one-line
message on stderr and no traceback, before anything runs; 130 if interrupted
(Ctrl-C), with the one line ``interrupted`` and no traceback, wherever the
interrupt lands: it may come out of ``trio.run`` inside an exception group.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn

import attrs

from ._loading import (
    ScenarioError,
    apply_override,
    builtin_scenarios,
    read_scenario_data,
    scenario_from_data,
    set_field,
)
from ._parallel import available_cpus
from ._plot import PlottingUnavailable, check_plot_directory, require_matplotlib, write_plots
from ._progress import progress_bar
from ._report import TABLE_WIDTH, render_json, render_table
from ._run import run_scenario
from ._scenario import POLICY_SYNTAX, Scenario
from ._tune import (
    TuneResult,
    parse_rates,
    policy_grid,
    render_tune_json,
    render_tune_table,
    tune,
    write_tune_plot,
)

__all__ = ["main"]

PROG = "trio-batch-sim"
#: Below this many items x policies, worker processes cost more than they save.
_PARALLEL_FROM: Final = 200_000


class _UsageError(Exception):
    """A bad command line; the message is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the usage and exits; we want one line and our exit path.
        raise _UsageError(f"{message} (see {PROG} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Simulate trio_batch policies on a workload in Trio's virtual time, "
            "running the real batcher, and compare latency and throughput."
        ),
        epilog=(
            "Scenario fields are documented in docs/simulator.md. "
            f"Policies: {POLICY_SYNTAX}. "
            "Exit status: 0 ok, 1 anomaly or write error, 2 bad input."
        ),
    )
    parser.add_argument(
        "--scenario",
        "-s",
        default="default",
        metavar="NAME|PATH",
        help="a built-in scenario (see --list) or a TOML file (default: %(default)s)",
    )
    parser.add_argument("--list", action="store_true", help="list the built-in scenarios")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    parser.add_argument("--items", type=int, help="stop after N arrivals (replaces duration)")
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop arrivals after SECONDS (replaces items)",
    )
    parser.add_argument("--rate", type=float, help="arrivals per simulated second (arrivals.rate)")
    parser.add_argument(
        "--policy",
        action="append",
        metavar="SPEC",
        help="a policy to simulate; repeat to compare several (replaces the scenario's)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any scenario field, e.g. --set pool.size=4 (VALUE in TOML syntax)",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help=(
            "run a grid of static policies and adaptive, print the Pareto front of "
            "throughput against p99 and where adaptive lands (-s all: every built-in scenario)"
        ),
    )
    parser.add_argument(
        "--rates",
        default="1",
        metavar="X,Y,...",
        help="with --tune: multiples of the arrival rate to run (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--wide",
        action="store_true",
        help=f"show every column of the table (by default it fits {TABLE_WIDTH} columns)",
    )
    parser.add_argument(
        "--jobs",
        "-j",
        type=_jobs,
        default=None,
        metavar="N",
        help="run up to N policies at once in worker processes (default: one per CPU "
        "for long runs, else 1); the numbers do not change",
    )
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar, no timing on stderr"
    )
    return parser


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return jobs


def _default_jobs(scenario: Scenario) -> int:
    if scenario.expected_items * len(scenario.policies) < _PARALLEL_FROM:
        return 1
    return min(available_cpus(), len(scenario.policies))


def _scenario(args: argparse.Namespace, name: str | None = None) -> Scenario:
    data, default_name = read_scenario_data(args.scenario if name is None else name)
    for flag, path in (("seed", "seed"), ("items", "items"), ("duration", "duration")):
        value = getattr(args, flag)
        if value is not None:
            set_field(data, path, value)
    if args.rate is not None:
        set_field(data, "arrivals.rate", args.rate)
    if args.policy:
        set_field(data, "policies", list(args.policy))
    for assignment in args.set:
        apply_override(data, assignment)
    return scenario_from_data(data, default_name=default_name)


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, alone or inside an exception group (as it leaves a Trio run)."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None


def main(argv: list[str] | None = None) -> int:
    """Run the simulator CLI; returns the exit status.

    Args:
        argv: the arguments (without the program name); ``sys.argv[1:]`` if None.
    """
    try:
        return _main(argv)
    except BaseException as exc:
        if not _is_interrupt(exc):
            raise
        sys.stdout.flush()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        return _error(str(exc))
    if args.list:
        for name, description in builtin_scenarios().items():
            print(f"{name:14} {description}")
        return 0
    if args.tune:
        return _main_tune(args)
    try:
        scenario = _scenario(args)
        if args.plot is not None:
            require_matplotlib()
            check_plot_directory(args.plot)
    except (ScenarioError, PlottingUnavailable) as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"--plot {args.plot}: {exc}")

    jobs = args.jobs or _default_jobs(scenario)
    if not args.quiet:
        in_processes = f" in {jobs} processes" if jobs > 1 else ""
        print(
            f"simulating scenario {scenario.name}: {len(scenario.policies)} policies x about "
            f"{scenario.expected_items:,.0f} items{in_processes}",
            file=sys.stderr,
            flush=True,
        )
    started = time.monotonic()
    with progress_bar(sys.stderr, quiet=args.quiet) as report:
        result = run_scenario(scenario, on_progress=report, jobs=jobs)
    wall = time.monotonic() - started

    sys.stdout.write(render_json(result) if args.json else render_table(result, wide=args.wide))
    sys.stdout.flush()
    status = 0
    if args.plot is not None:
        status = _plot(args, lambda: write_plots(result, args.plot))
    anomalies = [(r.policy, a) for r in result.results for a in r.anomalies]
    for policy, anomaly in anomalies:
        print(f"{PROG}: library guarantee broken ({policy}): {anomaly}", file=sys.stderr)
    if anomalies:
        status = 1
    if not args.quiet:
        items = result.results[0].items if result.results else 0
        print(
            f"simulated {len(result.results)} policies x {items} items "
            f"in {wall:.1f} s of wall time",
            file=sys.stderr,
        )
    return status


def _plot(args: argparse.Namespace, write: Callable[[], list[Path]]) -> int:
    """Write the plots with ``write()``; the exit status (1 if they could not be written)."""
    try:
        paths = write()
    except OSError as exc:
        print(f"{PROG}: error: cannot write plots to {args.plot}: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"wrote {', '.join(str(path) for path in paths)}", file=sys.stderr)
    return 0


def _main_tune(args: argparse.Namespace) -> int:
    """``--tune``: the grid, its front and the bar, per scenario and rate."""
    if args.policy:
        return _error("--tune runs its own grid of policies; drop --policy")
    try:
        multipliers = parse_rates(args.rates)
        names = list(builtin_scenarios()) if args.scenario == "all" else [args.scenario]
        scenarios = [_scenario(args, name) for name in names]
        if args.plot is not None:
            require_matplotlib()
            check_plot_directory(args.plot)
    except (ScenarioError, PlottingUnavailable, ValueError) as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"--plot {args.plot}: {exc}")
    started = time.monotonic()
    results: list[TuneResult] = []
    with progress_bar(sys.stderr, quiet=args.quiet) as progress:
        for scenario in scenarios:
            grid = attrs.evolve(scenario, policies=policy_grid(scenario))
            jobs = args.jobs or _default_jobs(grid)

            def report(done: int, total: int, label: str, name: str = scenario.name) -> None:
                progress(done, total, f"{name} {label}")

            results.append(tune(scenario, multipliers, on_progress=report, jobs=jobs))
    sys.stdout.write(render_tune_json(results) if args.json else render_tune_table(results))
    sys.stdout.flush()
    status = 0
    if args.plot is not None:
        status = _plot(args, lambda: write_tune_plot(results, args.plot))
    anomalies = [
        (rate.multiplier, point.policy, anomaly)
        for result in results
        for rate in result.rates
        for point in rate.points
        for anomaly in point.anomalies
    ]
    for multiplier, policy, anomaly in anomalies:
        print(
            f"{PROG}: library guarantee broken ({policy}, rate x{multiplier:g}): {anomaly}",
            file=sys.stderr,
        )
    if anomalies:
        status = 1
    if not args.quiet:
        print(f"tuned in {time.monotonic() - started:.1f} s of wall time", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
