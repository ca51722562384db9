"""What agft reads from a window: its load context and the latency histograms' figures."""

from __future__ import annotations

import bisect
import math

import numpy as np

from server.control.agft.models import FloatArray
from server.control.observation import HistogramDelta, Observation, ServingSample

# Fixed scales (not running z-scores): a feature must mean the same thing in window 10
# and window 10 000, or the regression's old evidence turns into noise.
CONTEXT_SCALE = np.array([10_000.0, 2_000.0, 64.0, 1.0, 1.0])


def context_of(obs: Observation) -> FloatArray | None:
    s = obs.serving
    if s is None:
        return None
    d = max(obs.duration_s, 1e-6)
    raw = [
        (s.prompt_tokens or 0.0) / d if s.prompt_tokens is not None else math.nan,
        (s.generation_tokens or 0.0) / d if s.generation_tokens is not None else math.nan,
        s.num_requests_running if s.num_requests_running is not None else math.nan,
        math.log1p(s.num_requests_waiting) if s.num_requests_waiting is not None else math.nan,
        s.kv_cache_usage if s.kv_cache_usage is not None else math.nan,
    ]
    x = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return None
    scaled: FloatArray = np.minimum(x / CONTEXT_SCALE, 10.0)
    return scaled


def share_above(hist: HistogramDelta | None, limit: float) -> float | None:
    """Share of a window's observations certainly above `limit` (from the first bucket
    bound at or above it); None when the window has none."""
    if hist is None or hist.count <= 0:
        return None
    first = bisect.bisect_left(hist.upper_bounds, limit)  # the first bound >= limit
    if first == len(hist.upper_bounds):
        return hist.bucket_counts[-1] / hist.count
    return sum(hist.bucket_counts[first + 1 :]) / hist.count


def is_idle(s: ServingSample) -> bool:
    return (
        (s.num_requests_running or 0.0) == 0.0
        and (s.num_requests_waiting or 0.0) == 0.0
        and (s.prompt_tokens or 0.0) == 0.0
        and (s.generation_tokens or 0.0) == 0.0
    )


def mean_and_count(h: HistogramDelta | None) -> tuple[float, float] | None:
    """A window's exact mean latency (histogram sum / count) and its observation count."""
    if h is None or h.count <= 0 or h.sum <= 0:
        return None
    return h.sum / h.count, float(h.count)
