"""The progress bar on stderr: tqdm's, if tqdm is installed (the ``sim`` extra).

tqdm draws only on a terminal (``disable=None``), so piped or captured output
never holds a carriage return; it stays silent for the first second
(``delay``), so short runs print nothing; it redraws at most ten times a
second; and it erases itself when done (``leave=False``). It runs no monitor
thread (``monitor_interval = 0``), so that only the main thread takes Ctrl-C. Without tqdm the
simulator runs the same, without a bar. The wall clock the bar reads is for
the display only; results never see it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["progress_bar"]

#: ``(done, total, what is running)``, as :func:`~._run.run_scenario` reports.
Report = Callable[[int, int, str], None]


@contextmanager
def progress_bar(
    stream: TextIO, *, quiet: bool, delay: float = 1.0, interval: float = 0.1
) -> Iterator[Report]:
    """A progress callback that draws on ``stream`` if it is a terminal.

    Args:
        stream: where to draw (normally ``sys.stderr``).
        quiet: draw nothing at all.
        delay: wall seconds before the first draw.
        interval: least wall seconds between two draws.
    """
    try:
        tqdm: Any = importlib.import_module("tqdm").tqdm
    except ImportError:
        tqdm = None
    if quiet or tqdm is None:
        yield lambda _done, _total, _label: None
        return

    class Bar(tqdm):  # type: ignore[misc]
        # No monitor thread: a thread that can take SIGINT would defeat the
        # signal mask that starting worker processes relies on (_parallel).
        monitor_interval = 0

    bar = Bar(
        file=stream,
        disable=None,  # only on a terminal
        delay=delay,
        mininterval=interval,
        leave=False,
        unit=" items",
        unit_scale=True,
        dynamic_ncols=True,
    )

    def report(done: int, total: int, label: str) -> None:
        if bar.disable:
            return
        if bar.total != total:
            bar.total = total
        bar.set_description_str(label, refresh=False)
        bar.update(done - bar.n)

    try:
        yield report
    finally:
        bar.close()
