"""Capacity of the simulated instance and --peak-load scaling."""

from __future__ import annotations

import numpy as np
import pytest

from bench.arrivals import busiest_rate_rps, scaled_arrivals
from bench.capacity import measure_capacity, scale_to_peak
from sim.workload import TraceRows


def test_busiest_rate_is_the_densest_minute() -> None:
    # One request every 20 s (3 in any minute), plus a burst of 90 within [100, 130).
    t = np.sort(np.concatenate([np.arange(0.0, 301.0, 20.0), 100 + np.arange(90) / 3]))
    assert busiest_rate_rps(t) == pytest.approx((90 + 3) / 60.0)
    # A trace shorter than a minute is one minute of that many requests.
    assert busiest_rate_rps(np.asarray([0.0, 1.0, 2.0])) == pytest.approx(3 / 60.0)


@pytest.fixture(scope="module")
def capacity_rps(rows_90s: TraceRows) -> float:
    return measure_capacity("h100-sxm", "llama-3.1-8b", rows_90s, seed=0).rps


def test_capacity_is_reproducible_and_follows_the_hardware(
    rows_90s: TraceRows, capacity_rps: float
) -> None:
    assert measure_capacity("h100-sxm", "llama-3.1-8b", rows_90s, seed=0).rps == capacity_rps
    # An A100 serves the same mix more slowly than an H100.
    a100 = measure_capacity("a100-sxm", "llama-3.1-8b", rows_90s, seed=0).rps
    assert 0 < a100 < capacity_rps


@pytest.mark.parametrize("peak", [0.5, 0.85])
def test_peak_load_puts_the_busiest_minute_at_that_share_of_capacity(
    rows_90s: TraceRows, capacity_rps: float, peak: float
) -> None:
    scale, arrivals = scale_to_peak(rows_90s, capacity_rps, peak, seed=0)
    assert arrivals.busiest_rate_rps() / capacity_rps == pytest.approx(peak, rel=0.01)
    # The arrivals are the simulator's own scaling of the trace at that rate scale.
    again = scaled_arrivals(rows_90s, scale, seed=0)
    assert np.array_equal(again.t, arrivals.t)
