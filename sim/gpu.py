"""One simulated GPU: its clock state (locks, switch delay) and its energy/activity timeline.

The timeline is a short list of breakpoints with cumulative energy, busy time and
memory-busy time, so any reading (energy counter, 1 s average power, utilisation) at any
instant is an interpolation, whatever order steps and readings come in.
"""

from __future__ import annotations

import math
import uuid
from bisect import bisect_left, bisect_right

from node_agent.gpu.base import ThrottleReason
from sim.physics import StepCost, StepModel, StepOutcome
from sim.profiles import GpuProfile

__all__ = ["GpuGroup", "SimGpu"]

# Keep this much history; the longest window anyone reads is the 1 s power average.
_HISTORY_S = 3.0
_TRIM_EVERY = 512


class SimGpu:
    """State of one GPU. Not thread-safe: the node serialises access under its lock."""

    def __init__(
        self,
        index: int,
        profile: GpuProfile,
        physics: StepModel,
        t0: float,
        node_name: str,
        energy_offset_mj: int,
    ) -> None:
        self.index = index
        self.profile = profile
        self.physics = physics
        self.uuid = "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"agft-sim/{node_name}/{index}"))
        self._energy_offset_mj = energy_offset_mj
        self._grid = profile.supported_sm_clocks_mhz()
        self._f_max = float(profile.sm_clock_max_mhz)
        self._f_idle = float(profile.idle_sm_clock_mhz)
        self.lock: tuple[int, int] | None = None
        self.memory_clock_mhz = profile.default_memory_clock_mhz
        # Clock under load and clock held while idle, and a pending switch to new values
        # (effective time, load clock, held clock): a lock takes tens of ms to take hold.
        self._load_clock = self._f_max
        self._held_clock = self._f_idle
        self._pending: tuple[float, float, float] | None = None
        # Timeline breakpoints: time, cumulative J, busy s, memory-busy s.
        self._ts: list[float] = [t0]
        self._e: list[float] = [0.0]
        self._b: list[float] = [0.0]
        self._m: list[float] = [0.0]
        self._appends = 0
        # The latest step: [start, end), its effective clock, and whether the cap bit.
        self._step_t0 = -math.inf
        self._step_t1 = -math.inf
        self._step_clock = self._f_max
        self._step_capped = False

    # ---- clocks ---------------------------------------------------------------------------
    def _apply_pending(self, t: float) -> None:
        p = self._pending
        if p is not None and p[0] <= t:
            self._load_clock, self._held_clock = p[1], p[2]
            self._pending = None

    def load_clock_at(self, t: float) -> float:
        """The SM clock a step starting at t runs at (before any power cap)."""
        self._apply_pending(t)
        return self._load_clock

    def held_clock_at(self, t: float) -> float:
        """The clock while idle: a lock's lower bound holds it up, else the idle clock."""
        self._apply_pending(t)
        return self._held_clock

    def set_lock(self, t: float, lo: int, hi: int) -> None:
        """Lock into [lo, hi]: under load the governor runs at hi, idle it holds lo."""
        self._request(t, float(hi), float(lo))
        self.lock = (lo, hi)

    def reset_lock(self, t: float) -> None:
        self._request(t, self._f_max, self._f_idle)
        self.lock = None

    def _request(self, t: float, load: float, held: float) -> None:
        # The switch takes tens of ms, more for a bigger jump (arXiv 2502.20075).
        current = self.load_clock_at(t)
        delay_ms = (
            self.profile.clock_switch_base_ms
            + self.profile.clock_switch_per_ghz_ms * abs(load - current) / 1000.0
        )
        self._pending = (t + delay_ms / 1000.0, load, held)

    # ---- timeline -------------------------------------------------------------------------
    @property
    def last_t(self) -> float:
        return self._ts[-1]

    def _append(self, t1: float, e: float, busy: float, mem: float) -> None:
        self._ts.append(t1)
        self._e.append(self._e[-1] + e)
        self._b.append(self._b[-1] + busy)
        self._m.append(self._m[-1] + mem)
        self._appends += 1
        if self._appends >= _TRIM_EVERY:
            self._appends = 0
            cut = bisect_left(self._ts, t1 - _HISTORY_S) - 1
            if cut > 0:
                del self._ts[:cut], self._e[:cut], self._b[:cut], self._m[:cut]

    def record_step(
        self, t0: float, t1: float, energy_j: float, busy_s: float, mem_s: float, clock: float,
        capped: bool,
    ) -> None:  # fmt: skip
        if t0 > self._ts[-1]:
            self.record_idle(t0)
        self._append(t1, energy_j, busy_s, mem_s)
        self._step_t0, self._step_t1 = t0, t1
        self._step_clock, self._step_capped = clock, capped

    def record_idle(self, t1: float) -> None:
        """Idle from the end of the timeline to t1, splitting at a clock switch."""
        t0 = self._ts[-1]
        if t1 <= t0:
            return
        p = self._pending
        if p is not None and t0 < p[0] < t1:
            self._append(p[0], self.physics.idle_power(self.held_clock_at(t0)) * (p[0] - t0), 0, 0)
            t0 = p[0]
        self._append(t1, self.physics.idle_power(self.held_clock_at(t0)) * (t1 - t0), 0.0, 0.0)

    def _interp(self, series: list[float], t: float) -> float:
        ts = self._ts
        if t >= ts[-1]:
            if series is self._e:
                return series[-1] + self.physics.idle_power(self.held_clock_at(ts[-1])) * (
                    t - ts[-1]
                )
            return series[-1]
        i = bisect_right(ts, t)
        if i == 0:
            if series is self._e:
                # Before the node existed (or before trimmed history) the GPU sat idle, so a
                # 1 s average read just after creation is idle power, not a partial window.
                return series[0] - self.physics.idle_power(self._f_idle) * (ts[0] - t)
            return series[0]
        ta, tb = ts[i - 1], ts[i]
        a, b = series[i - 1], series[i]
        return a + (b - a) * (t - ta) / (tb - ta)

    # ---- readings ---------------------------------------------------------------------------
    def energy_j_at(self, t: float) -> float:
        return self._interp(self._e, t)

    def total_energy_mj(self, t: float) -> int:
        """The NVML counter: refreshed on a fixed tick, so it moves in steps."""
        tick = self.profile.energy_update_ms / 1000.0
        tq = math.floor(t / tick) * tick
        return self._energy_offset_mj + int(self.energy_j_at(tq) * 1000.0)

    def power_w(self, t: float) -> float:
        """The NVML power reading: 1 s trailing average, or instantaneous (GA100)."""
        if self.profile.power_reading == "instant":
            return self.instant_power_w(t)
        return self.energy_j_at(t) - self.energy_j_at(t - 1.0)

    def instant_power_w(self, t: float) -> float:
        dt = 0.002
        return (self.energy_j_at(t) - self.energy_j_at(t - dt)) / dt

    def utilization(self, t: float) -> tuple[float, float]:
        """Percent of the last second with kernels running / with memory saturated."""
        b = self._interp(self._b, t) - self._interp(self._b, t - 1.0)
        m = self._interp(self._m, t) - self._interp(self._m, t - 1.0)
        return 100.0 * min(1.0, b), 100.0 * min(1.0, m)

    def busy_at(self, t: float) -> bool:
        return self._step_t0 <= t < self._step_t1

    def sm_clock_mhz(self, t: float) -> int:
        if self.busy_at(t):
            return self._on_grid(self._step_clock)
        return self._on_grid(self.held_clock_at(t))

    def _on_grid(self, f: float) -> int:
        # Grid is highest first; report the highest supported clock not above f.
        for g in self._grid:
            if g <= f + 1e-6:
                return g
        return self._grid[-1]

    def throttle_reasons(self, t: float) -> ThrottleReason:
        if not self.busy_at(t):
            return ThrottleReason.GPU_IDLE
        reasons = ThrottleReason.NONE
        if self._step_capped:
            reasons |= ThrottleReason.SW_POWER_CAP
        if self.lock is not None and self.lock[1] < self.profile.sm_clock_max_mhz:
            reasons |= ThrottleReason.APPLICATIONS_CLOCKS_SETTING
        return reasons


class GpuGroup:
    """The GPUs of one tensor-parallel group: they step together at the slowest one's pace."""

    def __init__(self, gpus: list[SimGpu], physics: StepModel) -> None:
        if not gpus:
            raise ValueError("a group needs at least one GPU")
        self.gpus = gpus
        self.physics = physics

    def run_step(self, t: float, cost: StepCost) -> StepOutcome:
        gpus = self.gpus
        if len(gpus) == 1:
            # Hot path of every TP1 step.
            g = gpus[0]
            mem = g.memory_clock_mhz
            out = self.physics.run(
                cost, g.load_clock_at(t), None if mem >= self.physics.mem_clock_max else mem
            )
            g.record_step(
                t, t + out.duration_s, out.energy_j, out.gpu_busy_s, out.mem_busy_s,
                out.clock_mhz, out.power_capped,
            )  # fmt: skip
            return out
        f = min(g.load_clock_at(t) for g in gpus)
        mem = min(g.memory_clock_mhz for g in gpus)
        mem_arg = None if mem >= self.physics.mem_clock_max else float(mem)
        out = self.physics.run(cost, f, mem_arg)
        t1 = t + out.duration_s
        for g in gpus:
            own = g.load_clock_at(t)
            if own > f + 1e-9 and not out.power_capped:
                # A faster rank finishes early and waits; it still burns power at its own clock.
                e = self.physics.step_energy(cost, own, out.duration_s)
                g.record_step(t, t1, e, out.gpu_busy_s, out.mem_busy_s, own, False)
            else:
                g.record_step(
                    t, t1, out.energy_j, out.gpu_busy_s, out.mem_busy_s, out.clock_mhz,
                    out.power_capped,
                )  # fmt: skip
        return out

    def idle_until(self, t: float) -> None:
        for g in self.gpus:
            g.record_idle(t)
