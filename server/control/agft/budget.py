"""agft's latency budget relative to default clocks: a reference of what default clocks
would have given, and the closed loop that holds the measured percentile to the promise."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from server.control.state_schema import StateReader, pack_floats

# A reconnect within a minute keeps its reference; after a longer gap the budget rebuilds
# from the load of now within a minute.
RESUME_WINDOWS = 60


class Reference:
    """Recent latencies as default clocks would have given them (for the relative budget).

    The percentile is recomputed every `refresh` additions, not per decision: it moves
    slowly and sorting hundreds of values each window would dominate the decision cost.
    """

    def __init__(self, size: int, refresh: int = 20) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.weights: deque[float] = deque(maxlen=size)
        self._refresh = refresh
        self._since = refresh
        self._cached: dict[float, float | None] = {}

    def add(self, value: float, weight: float) -> None:
        if math.isfinite(value) and value > 0 and weight > 0:
            self.values.append(value)
            self.weights.append(weight)
            self._since += 1

    def invalidate(self) -> None:
        self._since = self._refresh
        self._cached.clear()

    def percentile(self, q: float) -> float | None:
        if self._since >= self._refresh or q not in self._cached:
            self._cached[q] = self._compute(q)
            self._since = 0
        return self._cached[q]

    def _compute(self, q: float) -> float | None:
        if len(self.values) < 5:
            return None
        vals = np.asarray(self.values)
        order = np.argsort(vals)
        cum = np.cumsum(np.asarray(self.weights)[order])
        idx = int(np.searchsorted(cum, q / 100.0 * cum[-1]))
        return float(vals[order][min(idx, len(vals) - 1)])


class RelativeBudget:
    """ "At most (1 + slowdown) x what default clocks would give", closed-loop.

    `reference` holds each window's latency statistic scaled to the max clock by the
    latency model; `seen` holds the same statistic as measured. The model's scaling can
    be wrong (queueing makes latency grow faster than any per-window model says), so the
    limit is multiplied by a gain that integral control steers until the measured
    percentile sits at (1 + slowdown) x the reference percentile.
    """

    # A slow integrator: per-window tails read off coarse buckets are noisy, and at a rate
    # of 0.5 the gain swung between its bounds every few minutes (conv 2023, H100, 85 %
    # peak), so the controller alternated between too tight and too loose; at 0.1 it saves
    # 10.6 % instead of 8.2 % there, and holds the promise at 50 % peak.
    GAIN_MIN, GAIN_MAX, GAIN_RATE = 0.3, 1.5, 0.1

    def __init__(self, size: int) -> None:
        self.reference = Reference(size)
        self.seen = Reference(size)
        self.gain = 1.0
        self._since_adapt = 0

    def add(self, measured: float, speedup: float, weight: float) -> None:
        self.reference.add(measured * speedup, weight)
        self.seen.add(measured, weight)
        self._since_adapt += 1

    def limit(self, q: float, slowdown: float) -> float | None:
        ref = self.reference.percentile(q)
        if ref is None:
            return None
        if self._since_adapt >= 20:
            self._adapt(q, slowdown, ref)
        return self.gain * (1.0 + slowdown) * ref

    def _adapt(self, q: float, slowdown: float, ref: float) -> None:
        self._since_adapt = 0
        seen = self.seen.percentile(q)
        if seen is None or seen <= 0:
            return
        error = (1.0 + slowdown) * ref / seen  # > 1: room left; < 1: over the promise
        self.gain = min(self.GAIN_MAX, max(self.GAIN_MIN, self.gain * error**self.GAIN_RATE))

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": [pack_floats(self.reference.values), pack_floats(self.reference.weights)],
            "seen": [pack_floats(self.seen.values), pack_floats(self.seen.weights)],
            "gain": self.gain,
        }

    def resume(self) -> None:
        """After a restore: the gain and all but the newest RESUME_WINDOWS windows were
        tuned to the load of when the state was saved. A warm state from the end of conv
        2023 (50 % peak, seed 1) kept its gain of 0.48 and its 900-window reference and
        saved 0.8 % over the next run's first ten minutes, against 17.6 % from cold;
        resumed this way it saves 16.5 %."""
        for ref in (self.reference, self.seen):
            keep = list(zip(ref.values, ref.weights, strict=True))[-RESUME_WINDOWS:]
            ref.values.clear()
            ref.weights.clear()
            ref.invalidate()
            for value, weight in keep:
                ref.add(value, weight)
        self.gain = 1.0
        self._since_adapt = 0

    @classmethod
    def from_dict(cls, data: Any, size: int, read: StateReader, name: str) -> RelativeBudget:
        """Rebuild to_dict(); what add() would have refused is refused, not dropped."""
        data = read.mapping(data, name, keys={"reference", "seen", "gain"})
        budget = cls(size)
        for key in ("reference", "seen"):
            where = f"{name}.{key}"
            pair = data.get(key)
            if not isinstance(pair, list) or len(pair) != 2:
                raise read.fail(where, "must be [values, weights]")
            values = read.floats(pair[0], f"{where}[0]")
            weights = read.floats(pair[1], f"{where}[1]", length=len(values))
            if len(values) > size:
                raise read.fail(where, f"holds {len(values)} windows, more than {size}")
            if np.any(values <= 0) or np.any(weights <= 0):
                raise read.fail(where, "values and weights must be above 0")
            target = getattr(budget, key)
            for v, w in zip(values.tolist(), weights.tolist(), strict=True):
                target.add(v, w)
        budget.gain = read.bounded(data.get("gain"), f"{name}.gain", cls.GAIN_MIN, cls.GAIN_MAX)
        return budget
