"""Replay a whole trace on one simulated instance in virtual time, and summarise it."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sim.node import SimulatedNode
from sim.workload import TraceWorkload, shipped_trace_path

__all__ = ["ReplaySummary", "replay_trace"]


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    gpu: str
    model: str
    sm_clock_mhz: int | None
    requests_in_trace: int
    requests_completed: int
    simulated_s: float
    wall_s: float
    steps: int
    energy_j: float  # all GPUs of the instance
    mean_power_w: float  # per GPU
    j_per_output_token: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p90_s: float
    tpot_p99_s: float
    e2e_p50_s: float
    preemptions: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def replay_trace(
    gpu: str = "h100-sxm",
    model: str = "llama-3.1-8b",
    trace: Path | None = None,
    clock_mhz: int | None = None,
    rate_scale: float = 1.0,
    seed: int = 0,
) -> ReplaySummary:
    """Every row of the trace, once, from its first row; runs until the last request is done."""
    wl = TraceWorkload.from_csv(
        trace or shipped_trace_path("azure_conv_2023"),
        rate_scale=rate_scale,
        loop=False,
        start_offset_s=0.0,
    )
    wall0 = time.perf_counter()
    node = SimulatedNode.create(
        gpu=gpu, model=model, instances=1, workload=wl, clock="virtual", seed=seed
    )
    inst = node.instances[0]
    if clock_mhz is not None:
        for i in inst.gpu_indices:
            node.backend.set_locked_sm_clocks_mhz(i, clock_mhz, clock_mhz)
    eng = inst.sim_engine
    t0 = node.now()
    e0 = sum(node.backend.total_energy_mj(i) for i in inst.gpu_indices)
    node.advance_to(t0 + wl.period_s)
    while not (eng.idle and eng.next_arrival_s == math.inf):
        node.advance(60.0)
    t1 = node.now()
    e1 = sum(node.backend.total_energy_mj(i) for i in inst.gpu_indices)
    wall = time.perf_counter() - wall0
    done = list(eng.completed)
    ttft = np.array([r.ttft_s for r in done]) if done else np.zeros(1)
    tpot = np.array([r.tpot_s for r in done if r.output_tokens > 1]) if done else np.zeros(1)
    e2e = np.array([r.e2e_s for r in done]) if done else np.zeros(1)
    energy = (e1 - e0) / 1000.0
    gen = eng.metrics.generation_tokens
    return ReplaySummary(
        gpu=gpu,
        model=model,
        sm_clock_mhz=clock_mhz,
        requests_in_trace=wl.num_requests,
        requests_completed=len(done),
        simulated_s=t1 - t0,
        wall_s=wall,
        steps=eng.steps,
        energy_j=energy,
        mean_power_w=energy / len(inst.gpu_indices) / (t1 - t0),
        j_per_output_token=energy / gen if gen else math.inf,
        ttft_p50_s=float(np.percentile(ttft, 50)),
        ttft_p90_s=float(np.percentile(ttft, 90)),
        ttft_p99_s=float(np.percentile(ttft, 99)),
        tpot_p50_s=float(np.percentile(tpot, 50)),
        tpot_p90_s=float(np.percentile(tpot, 90)),
        tpot_p99_s=float(np.percentile(tpot, 99)),
        e2e_p50_s=float(np.percentile(e2e, 50)),
        preemptions=eng.metrics.num_preemptions,
    )
