"""Progress lines on stderr for long runs: one per policy step of 10 %."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    def __init__(self, label: str, stream: TextIO | None = None, step_pct: int = 10) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._step = step_pct
        self._next = step_pct
        self._t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if pct < self._next and done < total:
            return
        while self._next <= pct:
            self._next += self._step
        elapsed = time.perf_counter() - self._t0
        print(
            f"agft bench: {self._label}: {pct:3d}% ({done}/{total} windows, {elapsed:.1f} s)",
            file=self._stream,
            flush=True,
        )


def note(message: str, stream: TextIO | None = None) -> None:
    print(f"agft bench: {message}", file=stream if stream is not None else sys.stderr, flush=True)
