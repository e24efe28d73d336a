"""A dependency-free progress line on stderr for long work (calibration, benchmarks)."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress("calibrating", total) as p: p.advance(n)``; silent when ``enabled`` is False."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.done, self._last, self._start = 0, 0.0, time.perf_counter()
        self._drawn = False

    def __enter__(self) -> "Progress":
        return self

    def advance(self, n: int = 1) -> None:
        """Record ``n`` more units of work and redraw at most 10 times a second."""
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            width = 24
            filled = width * self.done // self.total
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done}/{self.total} {now - self._start:5.1f}s")
            sys.stderr.flush()
            self._drawn = True

    def __exit__(self, *exc) -> None:
        if self._drawn:  # end the bar's line; an error before the first draw stays a single line
            sys.stderr.write("\n")
            sys.stderr.flush()
