"""What the controller sees of one window: plain numbers, no protobuf, no database.

Every field that could not be measured is None ("unknown"), never 0.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class HistogramDelta:
    """Observations of one histogram that fell inside a window."""

    upper_bounds: tuple[float, ...]
    bucket_counts: tuple[int, ...]  # per bucket, len(upper_bounds) + 1 (+Inf last)
    sum: float
    count: int

    def quantile(self, q: float) -> float | None:
        """Prometheus-style linear interpolation inside the bucket; None when empty."""
        if self.count <= 0:
            return None
        rank = q * self.count
        seen = 0
        lower = 0.0
        for i, n in enumerate(self.bucket_counts):
            upper = self.upper_bounds[i] if i < len(self.upper_bounds) else math.inf
            if n > 0 and seen + n >= rank:
                if math.isinf(upper):
                    # Beyond the last bound the best honest answer is that bound.
                    return lower
                return lower + (upper - lower) * (rank - seen) / n
            seen += n
            lower = upper
        return lower

    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def count_at_most(self, x: float) -> float:
        """How many observations were at most x, interpolated inside x's bucket."""
        if x != x:  # NaN: at most nothing, as no bucket holds it
            return 0.0
        bounds, counts = self.upper_bounds, self.bucket_counts
        k = bisect.bisect_right(bounds, x)  # buckets wholly at most x (bounds rise)
        if k >= len(counts) or x == math.inf:  # at most +inf: every observation
            return sum(counts, 0.0)
        seen = sum(counts[:k], 0.0)
        n = counts[k]
        lower = bounds[k - 1] if k > 0 else 0.0
        if n > 0 and x > lower and k < len(bounds):  # x inside bucket k, interpolated
            seen += n * (x - lower) / (bounds[k] - lower)
        return seen


@dataclass(frozen=True, slots=True)
class GpuSample:
    index: int
    energy_j: float | None
    avg_power_w: float | None
    sm_clock_mhz: int | None
    utilization_gpu_pct: float | None
    throttle_reasons: int | None
    locked_sm_clock_mhz: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class ServingSample:
    num_requests_running: float | None
    num_requests_waiting: float | None
    kv_cache_usage: float | None
    prompt_tokens: float | None
    generation_tokens: float | None
    preemptions: float | None
    requests_finished: float | None
    ttft_s: HistogramDelta | None
    inter_token_latency_s: HistogramDelta | None
    prefix_cache_queries: float | None = None
    prefix_cache_hits: float | None = None
    e2e_latency_s: HistogramDelta | None = None
    iteration_tokens: HistogramDelta | None = None
    # Per finished request, its mean time per output token (what a TPOT SLO is about;
    # inter_token_latency_s holds every gap of every request instead).
    request_tpot_s: HistogramDelta | None = None
    counters_reset: bool = False


@dataclass(frozen=True, slots=True)
class Observation:
    """One instance's window as the controller sees it."""

    window_start_s: float
    window_end_s: float
    gpus: Sequence[GpuSample]
    serving: ServingSample | None  # None: /metrics unavailable -> unknown, not idle
    clock_in_force_mhz: int | None  # None: default clocks (no lock)
    extras: dict[str, float] = field(default_factory=dict)
    # The window ran at default clocks because the server held them for the energy
    # estimate (server/energy), not because the controller chose them: a controller
    # resumes from its own last choice rather than from the max clock.
    calibration: bool = False
    # Seconds of the window the agent's fast loop held its boost (None: no fast loop).
    boosted_s: float | None = None

    @property
    def duration_s(self) -> float:
        return self.window_end_s - self.window_start_s

    @property
    def energy_j(self) -> float | None:
        """Energy of the whole instance; unknown if any of its GPUs is unknown."""
        values = [g.energy_j for g in self.gpus]
        if not values or any(v is None for v in values):
            return None
        return math.fsum(v for v in values if v is not None)
