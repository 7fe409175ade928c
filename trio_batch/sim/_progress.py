"""A one-line progress bar on a terminal, with no dependency.

It stays silent for the first second, so short runs print nothing, and it
redraws at most ten times a second, so it costs nothing measurable. It draws
only on a TTY: piped or captured output never contains carriage returns.
The wall clock it reads is for the display only; results never see it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO, final

__all__ = ["ProgressBar"]


@final
class ProgressBar:
    """``[#######-------]  52%  size (2/4)`` on one line of ``stream``.

    Args:
        stream: where to draw (normally ``sys.stderr``).
        enabled: draw at all; :meth:`for_stream` decides from the stream.
        delay: wall seconds to wait before the first draw.
        interval: least wall seconds between two draws.
        width: characters of the bar itself.
        clock: the wall clock (a parameter so tests can drive it).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        enabled: bool,
        delay: float = 1.0,
        interval: float = 0.1,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._enabled = enabled
        self._interval = interval
        self._width = width
        self._clock = clock
        self._first_draw = clock() + delay
        self._next_draw = self._first_draw
        self._drawn_width = 0

    @classmethod
    def for_stream(cls, stream: TextIO, *, quiet: bool) -> ProgressBar:
        """A bar that draws only if ``stream`` is a terminal and not ``quiet``."""
        is_tty = getattr(stream, "isatty", None)
        return cls(stream, enabled=not quiet and callable(is_tty) and bool(is_tty()))

    def update(self, done: int, total: int, label: str) -> None:
        """Report ``done`` of ``total`` units, currently working on ``label``."""
        if not self._enabled:
            return
        now = self._clock()
        if now < self._next_draw and done < total:
            return
        if now < self._first_draw:
            return
        self._next_draw = now + self._interval
        fraction = done / total if total else 1.0
        filled = round(fraction * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        line = f"[{bar}] {fraction:4.0%}  {label}"
        padding = " " * max(0, self._drawn_width - len(line))
        self._stream.write(f"\r{line}{padding}")
        self._stream.flush()
        self._drawn_width = len(line)

    def close(self) -> None:
        """Erase the bar, if it was drawn, leaving the cursor at the line start."""
        if self._drawn_width:
            self._stream.write("\r" + " " * self._drawn_width + "\r")
            self._stream.flush()
            self._drawn_width = 0
