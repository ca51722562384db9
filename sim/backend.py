"""The simulated node's GPUs behind the agent's ``GpuBackend`` interface.

Every call first brings the simulation up to the node's clock (``sync``), under the node's
lock, so readings are always current and the backend is safe to call from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from node_agent.gpu.base import (
    GpuBackend,
    GpuIdentity,
    GpuInvalidArgumentError,
    ThrottleReason,
    Utilization,
)
from sim.gpu import SimGpu

__all__ = ["SimulatedGpuBackend"]


class SimulatedGpuBackend(GpuBackend):
    def __init__(
        self, gpus: list[SimGpu], lock: threading.RLock, sync: Callable[[], float]
    ) -> None:
        self._gpus = gpus
        self._lock = lock
        self._sync = sync

    def _gpu(self, index: int) -> SimGpu:
        if not isinstance(index, int) or isinstance(index, bool):
            raise GpuInvalidArgumentError(f"GPU index must be an int, got {index!r}")
        if not 0 <= index < len(self._gpus):
            raise GpuInvalidArgumentError(
                f"no GPU {index}: this node has {len(self._gpus)} (0..{len(self._gpus) - 1})"
            )
        return self._gpus[index]

    # ---- inventory -------------------------------------------------------------------------
    def device_count(self) -> int:
        return len(self._gpus)

    def identity(self, index: int) -> GpuIdentity:
        g = self._gpu(index)
        return GpuIdentity(index=index, uuid=g.uuid, name=g.profile.nvml_name)

    def supported_memory_clocks_mhz(self, index: int) -> list[int]:
        return sorted(self._gpu(index).profile.memory_clocks_mhz, reverse=True)

    def supported_sm_clocks_mhz(self, index: int, memory_clock_mhz: int) -> list[int]:
        g = self._gpu(index)
        if memory_clock_mhz not in g.profile.memory_clocks_mhz:
            raise GpuInvalidArgumentError(
                f"memory clock {memory_clock_mhz} MHz not supported on GPU {index}; "
                f"supported: {sorted(g.profile.memory_clocks_mhz, reverse=True)}"
            )
        return g.profile.supported_sm_clocks_mhz()

    def default_sm_clock_mhz(self, index: int) -> int:
        return self._gpu(index).profile.sm_clock_max_mhz

    def default_memory_clock_mhz(self, index: int) -> int:
        return self._gpu(index).profile.default_memory_clock_mhz

    def power_limit_mw(self, index: int) -> int:
        return int(self._gpu(index).profile.tdp_w * 1000)

    # ---- reads -------------------------------------------------------------------------------
    def total_energy_mj(self, index: int) -> int:
        with self._lock:
            g = self._gpu(index)
            return g.total_energy_mj(self._sync())

    def power_usage_mw(self, index: int) -> int:
        with self._lock:
            g = self._gpu(index)
            return round(g.power_w(self._sync()) * 1000)

    def instant_power_mw(self, index: int) -> int:
        """Not in NVML's API: the power of the step running now (handy in tests and plots)."""
        with self._lock:
            g = self._gpu(index)
            return round(g.instant_power_w(self._sync()) * 1000)

    def sm_clock_mhz(self, index: int) -> int:
        with self._lock:
            g = self._gpu(index)
            return g.sm_clock_mhz(self._sync())

    def memory_clock_mhz(self, index: int) -> int:
        with self._lock:
            return self._gpu(index).memory_clock_mhz

    def utilization(self, index: int) -> Utilization:
        with self._lock:
            g = self._gpu(index)
            busy, mem = g.utilization(self._sync())
            return Utilization(gpu_pct=round(busy, 1), memory_pct=round(mem, 1))

    def throttle_reasons(self, index: int) -> ThrottleReason:
        with self._lock:
            g = self._gpu(index)
            return g.throttle_reasons(self._sync())

    # ---- writes ------------------------------------------------------------------------------
    def set_locked_sm_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        with self._lock:
            g = self._gpu(index)
            grid = g.profile.supported_sm_clocks_mhz()
            for name, v in (("min", min_mhz), ("max", max_mhz)):
                if v not in grid:
                    raise GpuInvalidArgumentError(
                        f"{name} clock {v} MHz is not a supported SM clock of GPU {index} "
                        f"({grid[-1]}-{grid[0]} MHz in {g.profile.sm_clock_step_mhz} MHz steps)"
                    )
            if min_mhz > max_mhz:
                raise GpuInvalidArgumentError(f"min {min_mhz} MHz above max {max_mhz} MHz")
            g.set_lock(self._sync(), min_mhz, max_mhz)

    def reset_locked_sm_clocks(self, index: int) -> None:
        with self._lock:
            g = self._gpu(index)
            g.reset_lock(self._sync())

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        with self._lock:
            return self._gpu(index).lock

    def set_memory_clock_mhz(self, index: int, memory_clock_mhz: int) -> None:
        """Not in the agent's interface: move the memory clock (H100 NVL has two)."""
        with self._lock:
            g = self._gpu(index)
            if memory_clock_mhz not in g.profile.memory_clocks_mhz:
                raise GpuInvalidArgumentError(
                    f"memory clock {memory_clock_mhz} MHz not supported on GPU {index}"
                )
            self._sync()
            g.memory_clock_mhz = memory_clock_mhz
