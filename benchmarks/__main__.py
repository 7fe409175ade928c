"""``python -m benchmarks``: run the workloads and print the table (or JSON).

Examples::

    python -m benchmarks                 # full run, a few minutes at most
    python -m benchmarks --quick         # a few seconds, rough figures
    python -m benchmarks --only a,e --repeat 11
    python -m benchmarks --json > bench.json
    python -m benchmarks --profile a immediate               # pyinstrument
    python -m benchmarks --profile b size --profiler cprofile
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ._report import render_text, to_json
from ._suite import DEFAULT_SPREAD, SuiteResult, meta, run_once, run_workload
from ._workloads import IMPLS, Workload, build_workloads

WORKLOAD_IDS = "a,b,c,d,e"


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
        "--only", default=WORKLOAD_IDS, help="workloads to run, e.g. 'a,c' (default: all)"
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


def _pick(workloads: list[Workload], wanted: str, parser: argparse.ArgumentParser) -> Workload:
    by_id = {workload.id: workload for workload in workloads}
    if wanted not in by_id:
        parser.error(f"unknown workload {wanted!r}; choose from {WORKLOAD_IDS}")
    return by_id[wanted]


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
    workloads = build_workloads(size, args.clients)
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

    chosen = [_pick(workloads, wid, parser) for wid in _split(args.only)]
    progress_to_tty = sys.stderr.isatty()

    def progress(message: str) -> None:
        if progress_to_tty:
            print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True)

    results = []
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
    progress("")
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
    if args.json:
        print(json.dumps(to_json(suite), indent=2))
    else:
        print(render_text(suite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
