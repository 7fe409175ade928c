"""``python -m benchmarks``: run the workloads and print the table (or JSON).

Examples::

    python -m benchmarks                 # full run, a few minutes at most
    python -m benchmarks --quick         # a few seconds, rough figures
    python -m benchmarks --only a,e --repeat 11
    python -m benchmarks --only f --plot docs/_static   # scale: 100 to 10,000 clients
    python -m benchmarks --json > bench.json
    python -m benchmarks --profile a immediate               # pyinstrument
    python -m benchmarks --profile b size --profiler cprofile
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._report import render_text, to_json
from ._suite import DEFAULT_SPREAD, Progress, SuiteResult, meta, run_once, run_workload
from ._workloads import IMPLS, SCALE_CLIENTS, Workload, build_workloads

WORKLOAD_IDS = "a,b,c,d,e,f"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "trio_batch vs a hand-written Trio batcher (the floor) vs aiodataloader, "
            "side by side in one process; ratios to the floor are the result."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--quick", action="store_true", help="small and few repetitions (--size 0.05 --repeat 3)"
    )
    parser.add_argument(
        "--size", type=float, default=None, help="scale the calls per run (default 1.0)"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="measured repetitions, at least (default 9)"
    )
    parser.add_argument(
        "--max-repeat",
        type=int,
        default=None,
        help=(
            "repeat further, up to this many in all, while a ratio's standard error "
            "exceeds --spread (default 3 x --repeat; --quick: no more)"
        ),
    )
    parser.add_argument(
        "--spread",
        type=float,
        default=DEFAULT_SPREAD,
        help=f"standard error wanted on every ratio, relative (default {DEFAULT_SPREAD})",
    )
    parser.add_argument("--warmup", type=int, default=1, help="warm-up runs (default 1)")
    parser.add_argument(
        "--clients", type=int, default=1000, help="concurrent clients (default 1000)"
    )
    parser.add_argument(
        "--scale-clients",
        default=",".join(str(n) for n in SCALE_CLIENTS),
        help="workload f's numbers of clients (default 100,1000,10000)",
    )
    parser.add_argument(
        "--only",
        default=WORKLOAD_IDS,
        help="workloads to run, e.g. 'a,c'; 'f' is every f workload, 'f1000' one (default: all)",
    )
    parser.add_argument(
        "--plot",
        metavar="DIR",
        type=Path,
        default=None,
        help="write workload f's µs per item against clients to DIR/perf_clients.png",
    )
    parser.add_argument(
        "--impls",
        default=None,
        help=f"contestants to run, e.g. 'floor,immediate' (from: {', '.join(IMPLS)})",
    )
    parser.add_argument(
        "--profile",
        nargs=2,
        metavar=("WORKLOAD", "IMPL"),
        help="profile one run of one contestant on one workload instead",
    )
    parser.add_argument("--profiler", choices=("pyinstrument", "cprofile"), default="pyinstrument")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help=(
            "time the targets are checked on (default wall); both are always shown, "
            "cpu is steadier when other processes share the machine"
        ),
    )
    return parser


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", " ").split() if part.strip()]


def _choose(
    workloads: list[Workload], wanted: str, parser: argparse.ArgumentParser
) -> list[Workload]:
    """The workload with id ``wanted``, or every workload of the group ``wanted``."""
    chosen = [w for w in workloads if wanted in (w.id, w.group)]
    if not chosen:
        ids = ", ".join(w.id for w in workloads)
        parser.error(f"unknown workload {wanted!r}; choose from {WORKLOAD_IDS} (or one of {ids})")
    return chosen


def _pick(workloads: list[Workload], wanted: str, parser: argparse.ArgumentParser) -> Workload:
    chosen = _choose(workloads, wanted, parser)
    if len(chosen) > 1:
        ids = ", ".join(w.id for w in chosen)
        parser.error(f"workload {wanted!r} runs at several sizes: choose one of {ids}")
    return chosen[0]


def _positive_ints(text: str, what: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(part) for part in _split(text)]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        parser.error(f"{what} must be whole numbers >= 1 separated by commas, got {text!r}")
    return values


def _check_plot_dir(directory: Path, parser: argparse.ArgumentParser) -> None:
    """Fail before running anything if the plot cannot be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--plot {directory}: cannot create the folder ({exc.strerror})")
    import importlib.util
    import os

    if not os.access(directory, os.W_OK):
        parser.error(f"--plot {directory}: the folder is not writable")
    if importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install -e '.[bench]'")


@contextmanager
def _progress_bar() -> Iterator[Progress]:
    """A tqdm bar on stderr, one per workload (nothing unless stderr is a terminal)."""
    from tqdm import tqdm  # type: ignore[import-untyped, import-not-found, unused-ignore]

    bar: Any = None
    current = ""

    def progress(label: str, done: int, total: int) -> None:
        nonlocal bar, current
        workload = label.split(" ", 1)[0]
        if bar is None or workload != current:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, file=sys.stderr, disable=None, leave=False, unit="run")
            current = workload
        bar.set_description(label, refresh=False)
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()


def _profile(workload: Workload, impl_id: str, profiler: str) -> None:
    run_once(workload, impl_id)  # warm-up
    if profiler == "cprofile":
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        sample = run_once(workload, impl_id)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(35)
    else:
        from pyinstrument import Profiler  # type: ignore[import-not-found, unused-ignore]

        profiler_ = Profiler(interval=0.0002, async_mode="disabled")
        profiler_.start()
        sample = run_once(workload, impl_id)
        profiler_.stop()
        print(profiler_.output_text(unicode=True, show_all=False))
    print(
        f"({workload.id}) {IMPLS[impl_id].label}: {sample.calls:,} calls in "
        f"{sample.seconds:.3f} s under the profiler "
        f"({sample.seconds / sample.calls * 1e6:.2f} µs/call)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    size = args.size if args.size is not None else (0.05 if args.quick else 1.0)
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 9)
    max_repeat = args.max_repeat
    if max_repeat is None:
        max_repeat = repeat if args.quick else 3 * repeat
    if size <= 0 or repeat < 1 or args.warmup < 0 or args.clients < 1:
        parser.error("--size must be > 0, --repeat and --clients >= 1, --warmup >= 0")
    if max_repeat < repeat or args.spread <= 0:
        parser.error("--max-repeat must be >= --repeat, --spread > 0")
    scale_clients = _positive_ints(args.scale_clients, "--scale-clients", parser)
    workloads = build_workloads(size, args.clients, scale_clients)
    impls = _split(args.impls) if args.impls else None
    for impl_id in impls or []:
        if impl_id not in IMPLS:
            parser.error(f"unknown contestant {impl_id!r}; choose from {', '.join(IMPLS)}")

    if args.profile:
        wid, impl_id = args.profile
        if impl_id not in IMPLS:
            parser.error(f"unknown contestant {impl_id!r}; choose from {', '.join(IMPLS)}")
        _profile(_pick(workloads, wid, parser), impl_id, args.profiler)
        return 0

    chosen = [w for wid in _split(args.only) for w in _choose(workloads, wid, parser)]
    if args.plot is not None:
        if not any(w.group == "f" for w in chosen):
            parser.error("--plot draws workload f: add f to --only")
        _check_plot_dir(args.plot, parser)

    results = []
    with _progress_bar() as progress:
        for workload in chosen:
            these = [i for i in impls if i in workload.impls] if impls is not None else None
            results.append(
                run_workload(
                    workload,
                    repeat=repeat,
                    warmup=args.warmup,
                    impls=these,
                    progress=progress,
                    max_repeat=max_repeat,
                    spread=args.spread,
                    clock=args.clock,
                )
            )
    suite = SuiteResult(
        meta(
            size=size,
            repeat=repeat,
            warmup=args.warmup,
            clock=args.clock,
            max_repeat=max_repeat,
            spread=args.spread,
        ),
        results,
    )
    if args.plot is not None:
        from ._plot import write_plot

        path = write_plot(
            [r for r in results if r.workload.group == "f"],
            args.plot,
            subtitle=(
                f"{suite.meta['implementation']} {suite.meta['python']}, "
                f"trio {suite.meta['trio']}, trio_batch {suite.meta['trio_batch']}"
            ),
        )
        print(f"plot written to {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(to_json(suite), indent=2))
    else:
        print(render_text(suite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
