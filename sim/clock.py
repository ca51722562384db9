"""The node's two clocks: wall time (demo, live agents) and virtual time (benchmarks)."""

from __future__ import annotations

import time

__all__ = ["VIRTUAL_EPOCH_S", "Clock", "RealtimeClock", "VirtualClock"]

# Virtual runs start at a fixed unix-like time so they are reproducible to the bit.
VIRTUAL_EPOCH_S = 1_700_000_000.0


class Clock:
    realtime: bool = False

    def now(self) -> float:
        raise NotImplementedError


class RealtimeClock(Clock):
    realtime = True

    def now(self) -> float:
        return time.time()


class VirtualClock(Clock):
    """Moves only when told to; never backwards."""

    def __init__(self, start: float = VIRTUAL_EPOCH_S) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError(f"virtual time cannot go back ({t} < {self._t})")
        self._t = t
