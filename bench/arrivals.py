"""The request stream of one benchmark run: a trace, cut and rate-scaled, fixed in advance.

The arrivals are materialised once (numpy arrays) so every policy sees exactly the same
requests, and the stream the simulator pulls them from can be forked cheaply: its only
state is a read position, and the arrays travel to a fork as out-of-band pickle buffers
(shared memory, never copied, never written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from sim.workload import ArrivalStream, Chunk, TraceRows, TraceWorkload, Workload, read_trace_csv

# Arrivals handed to the simulator per refill: small, so a fork copies little stream state.
_CHUNK = 64
BUSIEST_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Arrivals:
    """Requests in arrival order; t in seconds from the start of the run."""

    t: NDArray[np.float64]
    prompt: NDArray[np.int64]
    output: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.t)

    @property
    def last_s(self) -> float:
        return float(self.t[-1]) if len(self.t) else 0.0

    def busiest_rate_rps(self, window_s: float = BUSIEST_WINDOW_S) -> float:
        return busiest_rate_rps(self.t, window_s)

    def per_window_counts(self, window_s: float, windows: int) -> NDArray[np.int64]:
        """Arrivals in each run window [k w, (k+1) w), k = 0..windows-1."""
        edges = np.arange(windows + 1, dtype=np.float64) * window_s
        return np.diff(np.searchsorted(self.t, edges, side="left")).astype(np.int64)


def busiest_rate_rps(t: NDArray[np.float64], window_s: float = BUSIEST_WINDOW_S) -> float:
    """Most arrivals in any window_s-long interval (sliding by 1 s), as requests per second.

    A trace shorter than the window counts as one window of that length, so a short cut
    is not credited with a rate it never sustained.
    """
    if len(t) == 0:
        return 0.0
    span = float(t[-1])
    if span <= window_s:
        return len(t) / window_s
    starts = np.arange(0.0, span - window_s + 1.0, 1.0)
    counts = np.searchsorted(t, starts + window_s, side="left") - np.searchsorted(
        t, starts, side="left"
    )
    return float(counts.max()) / window_s


def load_trace(path: Path, duration_s: float | None = None) -> TraceRows:
    """An Azure-schema trace (TraceFormatError names a bad line), cut to its first duration_s."""
    rows = read_trace_csv(path)
    if duration_s is None:
        return rows
    keep = rows.t < duration_s
    if not keep.any():
        raise ValueError(f"{path}: no request in the first {duration_s:g} s")
    return TraceRows(
        t=rows.t[keep],
        prompt=rows.prompt[keep],
        output=rows.output[keep],
        start_epoch_s=rows.start_epoch_s,
    )


def scaled_arrivals(rows: TraceRows, rate_scale: float, seed: int) -> Arrivals:
    """The trace's requests at rate_scale x its rate, by the simulator's own (seeded) scaling."""
    workload = TraceWorkload(rows, rate_scale=rate_scale, loop=False, start_offset_s=0.0)
    (stream,) = workload.streams(1, seed)
    t: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    for at, p, o in stream:
        t.append(at)
        prompt.append(p)
        output.append(o)
    return Arrivals(
        t=np.asarray(t, dtype=np.float64),
        prompt=np.asarray(prompt, dtype=np.int64),
        output=np.asarray(output, dtype=np.int64),
    )


class _Cursor:
    """Refill source of one ArrivalStream: the arrays plus a read position (forkable state)."""

    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals
        self.pos = 0

    def next_chunk(self) -> Chunk | None:
        a = self.arrivals
        if self.pos >= len(a):
            return None
        lo, hi = self.pos, min(self.pos + _CHUNK, len(a))
        self.pos = hi
        return a.t[lo:hi].tolist(), a.prompt[lo:hi].tolist(), a.output[lo:hi].tolist()


class FixedArrivals(Workload):
    """A workload of one node instance replaying exactly the given arrivals."""

    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals

    def streams(self, n: int, seed: int) -> list[ArrivalStream]:
        if n != 1:
            raise ValueError("the benchmark runs one serving instance per node")
        # A bound method, not a closure: pickling the node (a fork) then copies the cursor,
        # so a fork's arrivals never advance the original's.
        return [ArrivalStream(_Cursor(self.arrivals).next_chunk)]
