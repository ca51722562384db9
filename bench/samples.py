"""Latency observations and their percentiles, exact for a window and fine-binned for a run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sim.metrics import Histogram


class Recorder(Histogram):
    """Stands in for one of a forked engine's histograms and keeps every observation
    (value, weight) instead of binning it, so a fork's percentiles are exact."""

    def __init__(self) -> None:
        super().__init__(buckets=())
        self.values: list[float] = []
        self.weights: list[int] = []

    def observe(self, value: float, n: int = 1) -> None:
        self.values.append(value)
        self.weights.append(n)

    def since(self, mark: int) -> Samples:
        return Samples(tuple(self.values[mark:]), tuple(self.weights[mark:]))


@dataclass(frozen=True, slots=True)
class Samples:
    """Weighted observations (inter-token latencies weigh one per sequence in the step)."""

    values: tuple[float, ...]
    weights: tuple[int, ...]

    def quantile(self, q: float) -> float | None:
        return weighted_quantile(self.values, self.weights, q)


def weighted_quantile(
    values: tuple[float, ...] | list[float], weights: tuple[int, ...] | list[int], q: float
) -> float | None:
    """Smallest value whose cumulative weight reaches q of the total (None when empty)."""
    total = sum(weights)
    if total <= 0:
        return None
    need = q * total - 1e-9
    seen = 0
    for value, weight in sorted(zip(values, weights, strict=True)):
        seen += weight
        if seen >= need:
            return value
    return max(values)


# Log-spaced bins, 0.2 % wide, from 10 us to ~3 h: fine enough to compare against a 10 %
# budget, small enough (under 10 000 bins) to copy and scan once per candidate.
_LO_S = 1e-5
_RATIO = 1.002
_BINS = math.ceil(math.log(1e4 / _LO_S) / math.log(_RATIO)) + 2


def _bin_of(values: NDArray[np.float64]) -> NDArray[np.int64]:
    idx = np.floor(np.log(np.maximum(values, _LO_S) / _LO_S) / math.log(_RATIO)) + 1
    out: NDArray[np.int64] = np.clip(idx, 0, _BINS - 1).astype(np.int64)
    return out


def _upper_edge(index: int) -> float:
    return float(_LO_S * _RATIO**index)


class RunningQuantiles:
    """All observations of a run so far, binned finely; quantiles to within 0.2 %."""

    def __init__(self, counts: NDArray[np.float64] | None = None) -> None:
        self.counts = np.zeros(_BINS) if counts is None else counts

    def copy(self) -> RunningQuantiles:
        return RunningQuantiles(self.counts.copy())

    def add(self, samples: Samples) -> None:
        if samples.values:
            np.add.at(
                self.counts,
                _bin_of(np.asarray(samples.values, dtype=np.float64)),
                np.asarray(samples.weights, dtype=np.float64),
            )

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bin holding the q-quantile (None when empty)."""
        cumulative = np.cumsum(self.counts)
        total = float(cumulative[-1])
        if total <= 0:
            return None
        index = int(np.searchsorted(cumulative, q * total - 1e-9, side="left"))
        return _upper_edge(index)
