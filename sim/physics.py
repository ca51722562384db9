"""Step time and power of one engine step on one tensor-parallel group, from the profiles.

The shape follows BRIEF §4 and the calibration data (docs/SIMULATOR.md has the derivation):

* memory time  = bytes / (HBM bandwidth x efficiency), nearly clock-independent above a knee
  (the SMs must issue loads fast enough; below the knee it grows like knee/f);
* compute time = FLOPs / (peak x efficiency) x f_max / f;
* the two overlap as a soft roofline: t_gpu = (t_mem^p + t_cmp^p)^(1/p); Vidur's per-operation
  profiles put the transition at ~128-256 batched tokens, which p ~ 1.5 reproduces;
* tensor-parallel all-reduces and a fixed CPU/scheduling overhead add clock-independent time;
* power = idle + active power x g(f) + energy per FLOP x g-scaled compute + energy per byte,
  with g(f) = (f/f_max)(V(f)/V_max)^2 and a voltage floor below ``voltage_floor_mhz``: linear in
  f at low clocks and ~f^3 above; clipped at TDP by lowering the effective clock (SwPowerCap).

Everything here is pure arithmetic on floats: the engine calls it once per step, so it stays
allocation-free on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.profiles import GpuProfile, ModelProfile

__all__ = ["StepCost", "StepModel", "StepOutcome"]

# Bisection steps when the power cap bites: 2^-14 of the clock range is < 0.2 MHz.
_CAP_ITERATIONS = 14


@dataclass(frozen=True, slots=True)
class StepCost:
    """Clock-independent description of one step's work, times at f_max and max memory clock."""

    t_mem0_s: float  # bytes moved / effective HBM bandwidth
    t_cmp0_s: float  # FLOPs / effective tensor throughput at f_max
    t_link_s: float  # tensor-parallel all-reduce time
    t_cpu_s: float  # scheduling, sampling, Python: GPU mostly idle


@dataclass(frozen=True, slots=True)
class StepOutcome:
    duration_s: float
    gpu_busy_s: float  # time with kernels (incl. all-reduces) running
    clock_mhz: float  # the effective SM clock of the group, after any power cap
    power_capped: bool
    energy_j: float  # per GPU of the group (all ranks carry the same work)
    mem_busy_s: float  # time the memory system was saturated (for "memory utilisation")


class StepModel:
    """Step time and energy for one (GPU, model) pair."""

    def __init__(self, gpu: GpuProfile, model: ModelProfile) -> None:
        self.gpu = gpu
        self.model = model
        tp = model.tensor_parallel
        self.f_max = float(gpu.sm_clock_max_mhz)
        self.f_min = float(gpu.sm_clock_min_mhz)
        self.mem_clock_max = float(gpu.default_memory_clock_mhz)
        self._bw = gpu.hbm_bandwidth_gbs * 1e9 * gpu.memory_efficiency  # bytes/s
        self._flops = gpu.peak_tflops * 1e12 * gpu.compute_efficiency  # FLOP/s at f_max
        self._weight_bytes = model.weight_bytes / tp
        self._kv_bytes_tok = model.kv_bytes_per_token / tp
        self._flop_tok = 2.0 * model.linear_params / tp
        self._flop_logit = 2.0 * model.lm_head_params / tp
        # QK^T and PV: 2 matmuls x 2 FLOP per (query, key) pair per head dimension and layer.
        self._flop_pair = 4.0 * model.num_layers * model.num_heads * model.head_dim / tp
        self._p = gpu.roofline_p
        self._inv_p = 1.0 / gpu.roofline_p
        self._knee = gpu.memory_knee_mhz
        self._sharp = gpu.knee_sharpness
        self._knee_norm = self._knee_factor_raw(self.f_max)
        if tp > 1:
            ring = 2.0 * (tp - 1) / tp  # ring all-reduce sends 2(n-1)/n of the buffer
            self._ar_per_tok = (
                2.0
                * model.num_layers
                * model.hidden_size
                * model.dtype_bytes
                * ring
                / (gpu.allreduce_bus_gbs * 1e9)
            )
            self._ar_fixed = 2.0 * model.num_layers * gpu.allreduce_latency_us * 1e-6
        else:
            self._ar_per_tok = 0.0
            self._ar_fixed = 0.0
        self._cpu_fixed = model.step_overhead_ms * 1e-3
        self._cpu_seq = model.per_seq_overhead_us * 1e-6
        self._v_floor = gpu.voltage_floor_mhz
        self._p_idle = gpu.idle_w
        self._p_active = gpu.power_active_w
        self._p_sm = gpu.power_sm_w
        self._p_mem = gpu.power_mem_w
        self._p_link = gpu.power_link_w
        self._tdp = gpu.tdp_w

    # ---- work -> times at f_max -----------------------------------------------------
    def cost(
        self,
        new_tokens: int,
        attn_pairs: float,
        kv_read_tokens: float,
        num_seqs: int,
        num_logits: int,
    ) -> StepCost:
        """The work of one step.

        new_tokens: tokens computed this step (prefill chunks + one per decoding sequence);
        attn_pairs: (query, key) pairs of attention over all sequences;
        kv_read_tokens: KV-cache tokens read by attention (context of every sequence);
        num_seqs: sequences in the batch; num_logits: sequences that sample a token.
        """
        t_mem = (self._weight_bytes + kv_read_tokens * self._kv_bytes_tok) / self._bw
        flops = (
            new_tokens * self._flop_tok
            + num_logits * self._flop_logit
            + attn_pairs * self._flop_pair
        )
        t_cmp = flops / self._flops
        t_link = (self._ar_fixed + new_tokens * self._ar_per_tok) if new_tokens else 0.0
        t_cpu = self._cpu_fixed + num_seqs * self._cpu_seq
        return StepCost(t_mem, t_cmp, t_link, t_cpu)

    # ---- clock dependence -------------------------------------------------------------
    def _knee_factor_raw(self, f: float) -> float:
        return float((1.0 + (self._knee / f) ** self._sharp) ** (1.0 / self._sharp))

    def gpu_time(self, cost: StepCost, f: float, mem_clock: float | None = None) -> float:
        """Kernel time at SM clock f (MHz): the soft roofline of memory and compute."""
        t_mem = cost.t_mem0_s * self._knee_factor_raw(f) / self._knee_norm
        if mem_clock is not None and mem_clock < self.mem_clock_max:
            t_mem *= self.mem_clock_max / mem_clock
        t_cmp = cost.t_cmp0_s * self.f_max / f
        p = self._p
        return float((t_mem**p + t_cmp**p) ** self._inv_p)

    def step_time(self, cost: StepCost, f: float, mem_clock: float | None = None) -> float:
        return self.gpu_time(cost, f, mem_clock) + cost.t_link_s + cost.t_cpu_s

    def voltage_scale(self, f: float) -> float:
        """g(f) = (f/f_max) (V/V_max)^2, with V proportional to f above the voltage floor."""
        v = (f if f > self._v_floor else self._v_floor) / self.f_max
        return f / self.f_max * v * v

    def step_energy(self, cost: StepCost, f: float, duration: float) -> float:
        """Energy of one GPU over a step of ``duration`` at clock f (J)."""
        g = self.voltage_scale(f)
        v2 = g * self.f_max / f  # (V/V_max)^2: energy per FLOP scales with V^2
        return (
            (self._p_idle + self._p_active * g) * duration
            + self._p_sm * v2 * cost.t_cmp0_s
            + self._p_mem * cost.t_mem0_s
            + self._p_link * cost.t_link_s
        )

    def idle_power(self, held_clock: float) -> float:
        """Power of an idle GPU holding ``held_clock`` (locked clocks do not drop when idle)."""
        g_idle = self.voltage_scale(float(self.gpu.idle_sm_clock_mhz))
        extra = self.gpu.idle_clock_w * max(0.0, self.voltage_scale(held_clock) - g_idle)
        return self._p_idle + extra

    # ---- one step ---------------------------------------------------------------------
    def run(self, cost: StepCost, f_req: float, mem_clock: float | None = None) -> StepOutcome:
        """Time and energy of the step at the requested clock, clipped at TDP."""
        t = self.step_time(cost, f_req, mem_clock)
        e = self.step_energy(cost, f_req, t)
        f = f_req
        capped = False
        if e > self._tdp * t:
            # The power controller lowers the clock until average power meets the limit.
            capped = True
            lo, hi = self.f_min, f_req
            for _ in range(_CAP_ITERATIONS):
                mid = 0.5 * (lo + hi)
                tm = self.step_time(cost, mid, mem_clock)
                if self.step_energy(cost, mid, tm) > self._tdp * tm:
                    hi = mid
                else:
                    lo = mid
            f = lo
            t = self.step_time(cost, f, mem_clock)
            e = self.step_energy(cost, f, t)
        busy = t - cost.t_cpu_s
        return StepOutcome(
            duration_s=t,
            gpu_busy_s=busy,
            clock_mhz=f,
            power_capped=capped,
            energy_j=e,
            mem_busy_s=min(busy, cost.t_mem0_s),
        )
