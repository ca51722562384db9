"""GPU side of a measurement window: energy from the counter over the measured interval.

Each read is wrapped so one failing NVML call makes that one field unknown instead of
zero, and never loses the rest of the window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from agft.v1 import agent_pb2 as pb
from node_agent.gpu.base import GpuBackend, GpuError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _try(read: Callable[[], T]) -> T | None:
    try:
        return read()
    except GpuError as err:
        log.debug("GPU read failed: %s", err)
        return None


@dataclass(slots=True)
class _EnergyMark:
    time_s: float
    energy_mj: int | None


class GpuWindowSampler:
    """Differences each GPU's total-energy counter between consecutive sample() calls."""

    def __init__(
        self, backend: GpuBackend, indices: Iterable[int], clock: Callable[[], float]
    ) -> None:
        self._backend = backend
        self._indices = sorted(set(indices))
        self._clock = clock
        self._marks: dict[int, _EnergyMark] = {}
        self.window_start_s: float | None = None

    def prime(self) -> None:
        """Start a fresh window now (at start-up and after a reconnect)."""
        now = self._clock()
        self.window_start_s = now
        for index in self._indices:
            self._marks[index] = _EnergyMark(now, self._energy_mj(index))

    def _energy_mj(self, index: int) -> int | None:
        return _try(lambda: self._backend.total_energy_mj(index))

    def sample(self) -> tuple[float, float, dict[int, pb.GpuWindow]]:
        """Close the current window: (start_s, end_s, per-GPU window); the next one starts now."""
        if self.window_start_s is None:
            self.prime()
        assert self.window_start_s is not None
        start = self.window_start_s
        end = self._clock()
        out: dict[int, pb.GpuWindow] = {}
        for index in self._indices:
            out[index] = self._gpu_window(index, end)
        self.window_start_s = end
        return start, end, out

    def _gpu_window(self, index: int, end: float) -> pb.GpuWindow:
        b = self._backend
        w = pb.GpuWindow(index=index)
        energy = self._energy_mj(index)
        mark = self._marks.get(index)
        if energy is not None and mark is not None and mark.energy_mj is not None:
            delta_mj = energy - mark.energy_mj
            interval = end - mark.time_s
            # A counter that went backwards (driver reload) gives no honest figure.
            if delta_mj >= 0 and interval > 0:
                w.energy_j = delta_mj / 1000.0
                w.avg_power_w = w.energy_j / interval
        self._marks[index] = _EnergyMark(end, energy)
        sm = _try(lambda: b.sm_clock_mhz(index))
        if sm is not None:
            w.sm_clock_mhz = sm
        mem = _try(lambda: b.memory_clock_mhz(index))
        if mem is not None:
            w.memory_clock_mhz = mem
        util = _try(lambda: b.utilization(index))
        if util is not None:
            w.utilization_gpu_pct = util.gpu_pct
            w.utilization_memory_pct = util.memory_pct
        reasons = _try(lambda: b.throttle_reasons(index))
        if reasons is not None:
            w.throttle_reasons = int(reasons)
        lock = _try(lambda: b.locked_sm_clocks_mhz(index))
        if lock is not None:
            w.locked_min_sm_clock_mhz, w.locked_max_sm_clock_mhz = lock
        return w
