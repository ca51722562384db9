"""Steady-load measurements against SM clock: the numbers behind ``sim sweep`` and the
calibration tests.

A steady load is a pool of identical-ish requests all queued at t=0; ``max_num_seqs`` caps how
many run at once, so the engine stays saturated in a fixed regime (closed loop). Output
lengths are spread +-50 % around the mean so sequences finish at different times and the batch
does not move in lock-step waves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.engine import Engine, EngineConfig
from sim.node import SimulatedNode
from sim.profiles import gpu_profile
from sim.workload import ArrivalStream, Chunk, Workload

_MAX_WARMUP_S = 120.0
_MAX_WINDOW_S = 180.0

__all__ = ["LOADS", "SteadyLoad", "SteadyWorkload", "SweepPoint", "measure", "sweep"]


@dataclass(frozen=True, slots=True)
class SteadyLoad:
    name: str
    prompt_tokens: int
    output_tokens: int
    concurrency: int | None  # max_num_seqs; None keeps vLLM's default
    description: str


LOADS: dict[str, SteadyLoad] = {
    "prefill-heavy": SteadyLoad(
        "prefill-heavy", 2048, 1, None, "2048-token prompts, 1 output token: full prefill batches"
    ),
    "decode-heavy": SteadyLoad(
        "decode-heavy", 256, 1024, 32, "32 sequences decoding ~1024 tokens after 256-token prompts"
    ),
    "mixed": SteadyLoad(
        "mixed",
        1024,
        256,
        64,
        "64 sequences, 1024-token prompts, ~256 output: chunked prefill + decode",
    ),
}


class SteadyWorkload(Workload):
    """``count`` requests per stream, all arriving at t=0; outputs spread +-``spread``."""

    def __init__(self, load: SteadyLoad, count: int, spread: float = 0.5) -> None:
        self.load = load
        self.count = count
        self.spread = spread

    def streams(self, n: int, seed: int) -> list[ArrivalStream]:
        out: list[ArrivalStream] = []
        for child in np.random.SeedSequence(seed).spawn(n):
            rng = np.random.default_rng(child)
            lo = max(1.0, self.load.output_tokens * (1 - self.spread))
            hi = self.load.output_tokens * (1 + self.spread)
            outs = (
                [self.load.output_tokens] * self.count
                if self.load.output_tokens <= 1
                else np.round(rng.uniform(lo, hi, self.count)).astype(int).tolist()
            )
            chunk: Chunk = ([0.0] * self.count, [self.load.prompt_tokens] * self.count, outs)
            pending: list[Chunk] = [chunk]

            def refill(pending: list[Chunk] = pending) -> Chunk | None:
                return pending.pop() if pending else None

            out.append(ArrivalStream(refill))
        return out


@dataclass(frozen=True, slots=True)
class SweepPoint:
    gpu: str
    model: str
    load: str
    sm_clock_mhz: int
    effective_clock_mhz: float  # mean clock over the window's steps (below the lock if capped)
    step_time_ms: float  # mean engine step
    tokens_per_step: float
    power_w: float  # mean per GPU over the window
    j_per_token: float  # per GPU-group energy / (prompt + generated tokens) processed
    j_per_output_token: float  # group energy / generated tokens
    power_capped_share: float  # share of the window's time with SwPowerCap set
    steps: int


def measure(
    gpu: str,
    model: str,
    load: SteadyLoad,
    sm_clock_mhz: int | None = None,
    warmup_s: float = 3.0,
    window_s: float = 10.0,
    seed: int = 0,
) -> SweepPoint:
    """Run one steady load at one locked clock (None: unlocked) and measure a window."""
    cfg = EngineConfig(max_num_seqs=load.concurrency)
    # Enough requests to stay saturated through warm-up and window at any clock.
    count = 3_000 if load.output_tokens <= 1 else max(4 * (load.concurrency or 64), 400)
    node = SimulatedNode.create(
        gpu=gpu,
        model=model,
        instances=1,
        workload=SteadyWorkload(load, count),
        clock="virtual",
        seed=seed,
        engine_config=cfg,
    )
    b = node.backend
    inst = node.instances[0]
    if sm_clock_mhz is not None:
        for i in inst.gpu_indices:
            b.set_locked_sm_clocks_mhz(i, sm_clock_mhz, sm_clock_mhz)
    eng = inst.sim_engine
    gpus = [node.gpu(i) for i in inst.gpu_indices]
    m = eng.metrics
    # Warm up past the first wave of admissions: until a batch's worth of requests finished.
    turnover = load.concurrency or 4
    node.advance(warmup_s)
    while m.requests_finished < turnover and node.now() - node.clock_start < _MAX_WARMUP_S:
        node.advance(1.0)
    _to_step_boundary(node, eng)
    t0 = node.now()
    e0 = sum(g.energy_j_at(t0) for g in gpus)
    steps0, busy0 = eng.steps, eng.busy_s
    gen0 = m.generation_tokens
    iter0 = m.iteration_tokens.total
    clk0, cap0 = eng.clock_time_integral, eng.capped_s
    done0 = m.requests_finished
    node.advance(window_s)
    # Long enough to see the batch turn over once, so the mix of step kinds is the steady one.
    while m.requests_finished - done0 < turnover and node.now() - t0 < _MAX_WINDOW_S:
        node.advance(1.0)
    # Whole steps only: tokens are counted per step, energy per second.
    _to_step_boundary(node, eng)
    t1 = node.now()
    e = sum(g.energy_j_at(t1) for g in gpus) - e0
    steps = eng.steps - steps0
    busy = eng.busy_s - busy0
    gen = m.generation_tokens - gen0
    toks = m.iteration_tokens.total - iter0
    return SweepPoint(
        gpu=gpu,
        model=model,
        load=load.name,
        sm_clock_mhz=sm_clock_mhz or gpu_profile(gpu).sm_clock_max_mhz,
        effective_clock_mhz=(eng.clock_time_integral - clk0) / busy if busy else 0.0,
        step_time_ms=1000.0 * busy / steps if steps else 0.0,
        tokens_per_step=toks / steps if steps else 0.0,
        power_w=e / len(gpus) / (t1 - t0),
        j_per_token=e / toks if toks else float("inf"),
        j_per_output_token=e / gen if gen else float("inf"),
        power_capped_share=(eng.capped_s - cap0) / (t1 - t0),
        steps=steps,
    )


def _to_step_boundary(node: SimulatedNode, eng: Engine) -> None:
    end = eng.inflight_until
    if end is not None:
        node.advance_to(end)


def sweep(
    gpu: str,
    model: str,
    loads: list[str] | None = None,
    clocks_mhz: list[int] | None = None,
    warmup_s: float = 3.0,
    window_s: float = 10.0,
) -> list[SweepPoint]:
    """Every load at every clock (default: every 4th supported clock, 60 MHz apart)."""
    gp = gpu_profile(gpu)
    grid = gp.supported_sm_clocks_mhz()
    if clocks_mhz is None:
        clocks_mhz = sorted(grid[::4])
    out: list[SweepPoint] = []
    for name in loads or list(LOADS):
        for f in clocks_mhz:
            out.append(measure(gpu, model, LOADS[name], f, warmup_s, window_s))
    return out
