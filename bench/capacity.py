"""Capacity of the simulated instance for a trace's request mix, and --peak-load scaling.

Capacity is the sustainable request rate at maximum clock: the completion rate of one
simulated instance at default clocks (which run at f_max under load) while its queue never
empties. A seeded sample (with replacement) of SAMPLE_REQUESTS of the trace's own
(prompt, output) pairs all arrive at t = 0; the rate is measured between the 10th and the
90th percentile of completion times, which leaves out the ramp-up (an empty batch filling)
and the tail (a draining batch). The sample is large so that steady state dominates: on the
Azure conv 2023 mix, 1 000 requests read 24.8 req/s, 4 000 read 21.9 and 16 000 read 21.2.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from bench.arrivals import Arrivals, FixedArrivals, busiest_rate_rps, scaled_arrivals
from sim.engine import EngineConfig
from sim.node import SimulatedNode
from sim.workload import TraceRows

SAMPLE_REQUESTS = 16_000
_MAX_SIM_S = 24 * 3600.0
_PEAK_TOLERANCE = 0.005
_PEAK_ITERATIONS = 6


@dataclass(frozen=True, slots=True)
class Capacity:
    rps: float
    sample_requests: int
    measured_s: float  # virtual time between the 10th and 90th percentile completions
    wall_s: float


def measure_capacity(gpu: str, model: str, rows: TraceRows, seed: int) -> Capacity:
    wall0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0xCA9])
    n = SAMPLE_REQUESTS
    pick = rng.choice(len(rows.t), size=n, replace=True)
    burst = Arrivals(
        t=np.zeros(n, dtype=np.float64), prompt=rows.prompt[pick], output=rows.output[pick]
    )
    node = SimulatedNode.create(
        gpu=gpu,
        model=model,
        workload=FixedArrivals(burst),
        clock="virtual",
        seed=seed,
        engine_config=EngineConfig(completed_history=n + 1),
    )
    engine = node.instances[0].sim_engine
    t0 = node.now()
    while not (engine.idle and engine.next_arrival_s == math.inf):
        if node.now() - t0 > _MAX_SIM_S:
            raise RuntimeError("capacity run did not drain; the request mix cannot be served")
        node.advance(10.0)
    finish = np.sort(np.asarray([r.finish_s for r in engine.completed], dtype=np.float64))
    if len(finish) < 10:
        raise RuntimeError(f"capacity run completed only {len(finish)} requests")
    lo, hi = int(0.1 * len(finish)), int(0.9 * len(finish))
    span = float(finish[hi] - finish[lo])
    if span <= 0:
        raise RuntimeError("capacity run finished its requests all at once")
    return Capacity(
        rps=(hi - lo) / span,
        sample_requests=n,
        measured_s=span,
        wall_s=time.perf_counter() - wall0,
    )


def scale_to_peak(
    rows: TraceRows, capacity_rps: float, peak_load: float, seed: int
) -> tuple[float, Arrivals]:
    """The rate scale (and its arrivals) whose busiest minute is peak_load x capacity.

    Starts from the ratio of busiest minutes and corrects on the realised arrivals: rate
    scaling thins or copies rows at random, so the busiest minute moves not quite in
    proportion.
    """
    if peak_load <= 0:
        raise ValueError("--peak-load must be positive")
    target = peak_load * capacity_rps
    base = busiest_rate_rps(rows.t)
    if base <= 0:
        raise ValueError("the trace has no requests")
    scale = target / base
    arrivals = scaled_arrivals(rows, scale, seed)
    for _ in range(_PEAK_ITERATIONS):
        realised = arrivals.busiest_rate_rps()
        if realised > 0 and abs(realised / target - 1.0) <= _PEAK_TOLERANCE:
            break
        scale *= target / max(realised, 1e-9)
        arrivals = scaled_arrivals(rows, scale, seed)
    return scale, arrivals
