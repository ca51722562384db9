"""An in-memory GpuBackend for agent tests: call counts, injectable errors and hooks.

Lighter than the simulator (no physics, no threads of its own) and lets a test make any
one call fail or block, which the simulator cannot.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from node_agent.gpu.base import (
    GpuBackend,
    GpuError,
    GpuIdentity,
    GpuInvalidArgumentError,
    ThrottleReason,
    Utilization,
)

SM_CLOCKS = [1980, 1500, 1200, 900, 600, 210]
MEMORY_CLOCKS = [2619, 1593]


class FakeBackend(GpuBackend):
    def __init__(self, gpus: int = 1) -> None:
        self.gpus = gpus
        self.calls: Counter[str] = Counter()
        # (method, index) -> exception raised by that call; index None matches any GPU.
        self.errors: dict[tuple[str, int | None], BaseException] = {}
        # method -> called with the index before the call does anything (to block, count...).
        self.hooks: dict[str, Callable[[int], None]] = {}
        self.mig: set[int] = set()
        self.locks: dict[int, tuple[int, int]] = {}
        self.memory_locks: dict[int, tuple[int, int]] = {}
        self.energy_mj: dict[int, int] = dict.fromkeys(range(gpus), 1_000_000)
        self.instant_mw: dict[int, int] = {}
        self.power_mw = 250_000
        self._mutex = threading.Lock()

    def _enter(self, method: str, index: int) -> None:
        with self._mutex:
            self.calls[method] += 1
        hook = self.hooks.get(method)
        if hook is not None:
            hook(index)
        err = self.errors.get((method, index)) or self.errors.get((method, None))
        if err is not None:
            raise err
        if not 0 <= index < self.gpus:
            raise GpuInvalidArgumentError(f"no GPU {index}")

    # ---- inventory ---------------------------------------------------------------------
    def device_count(self) -> int:
        return self.gpus

    def identity(self, index: int) -> GpuIdentity:
        self._enter("identity", index)
        return GpuIdentity(index, f"GPU-fake-{index}", "Fake H100")

    def supported_memory_clocks_mhz(self, index: int) -> list[int]:
        self._enter("supported_memory_clocks_mhz", index)
        return list(MEMORY_CLOCKS)

    def supported_sm_clocks_mhz(self, index: int, memory_clock_mhz: int) -> list[int]:
        self._enter("supported_sm_clocks_mhz", index)
        if memory_clock_mhz not in MEMORY_CLOCKS:
            raise GpuInvalidArgumentError(f"memory clock {memory_clock_mhz}")
        return list(SM_CLOCKS)

    def default_sm_clock_mhz(self, index: int) -> int:
        self._enter("default_sm_clock_mhz", index)
        return SM_CLOCKS[0]

    def default_memory_clock_mhz(self, index: int) -> int:
        self._enter("default_memory_clock_mhz", index)
        return MEMORY_CLOCKS[0]

    def power_limit_mw(self, index: int) -> int:
        self._enter("power_limit_mw", index)
        return 700_000

    # ---- reads -------------------------------------------------------------------------
    def total_energy_mj(self, index: int) -> int:
        self._enter("total_energy_mj", index)
        return self.energy_mj[index]

    def power_usage_mw(self, index: int) -> int:
        self._enter("power_usage_mw", index)
        return self.power_mw

    def instant_power_mw(self, index: int) -> int:
        self._enter("instant_power_mw", index)
        if index not in self.instant_mw:
            return super().instant_power_mw(index)
        return self.instant_mw[index]

    def mig_enabled(self, index: int) -> bool:
        self._enter("mig_enabled", index)
        return index in self.mig

    def sm_clock_mhz(self, index: int) -> int:
        self._enter("sm_clock_mhz", index)
        lock = self.locks.get(index)
        return SM_CLOCKS[0] if lock is None else lock[1]

    def memory_clock_mhz(self, index: int) -> int:
        self._enter("memory_clock_mhz", index)
        return MEMORY_CLOCKS[0]

    def utilization(self, index: int) -> Utilization:
        self._enter("utilization", index)
        return Utilization(50.0, 30.0)

    def throttle_reasons(self, index: int) -> ThrottleReason:
        self._enter("throttle_reasons", index)
        return ThrottleReason.NONE

    # ---- writes ------------------------------------------------------------------------
    def set_locked_sm_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        self._enter("set_locked_sm_clocks_mhz", index)
        self.locks[index] = (min_mhz, max_mhz)

    def reset_locked_sm_clocks(self, index: int) -> None:
        self._enter("reset_locked_sm_clocks", index)
        self.locks.pop(index, None)

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        self._enter("locked_sm_clocks_mhz", index)
        return self.locks.get(index)

    def set_locked_memory_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        self._enter("set_locked_memory_clocks_mhz", index)
        self.memory_locks[index] = (min_mhz, max_mhz)

    def reset_locked_memory_clocks(self, index: int) -> None:
        self._enter("reset_locked_memory_clocks", index)
        self.memory_locks.pop(index, None)


class DelegatingBackend(GpuBackend):
    """Another backend (the simulator, say) with faults injected into its writes."""

    def __init__(self, inner: GpuBackend) -> None:
        self.inner = inner
        self.set_calls = 0
        self.refuse_sets: GpuError | None = None  # raised by every lock from now on

    def device_count(self) -> int:
        return self.inner.device_count()

    def identity(self, index: int) -> GpuIdentity:
        return self.inner.identity(index)

    def supported_memory_clocks_mhz(self, index: int) -> list[int]:
        return self.inner.supported_memory_clocks_mhz(index)

    def supported_sm_clocks_mhz(self, index: int, memory_clock_mhz: int) -> list[int]:
        return self.inner.supported_sm_clocks_mhz(index, memory_clock_mhz)

    def default_sm_clock_mhz(self, index: int) -> int:
        return self.inner.default_sm_clock_mhz(index)

    def default_memory_clock_mhz(self, index: int) -> int:
        return self.inner.default_memory_clock_mhz(index)

    def power_limit_mw(self, index: int) -> int:
        return self.inner.power_limit_mw(index)

    def total_energy_mj(self, index: int) -> int:
        return self.inner.total_energy_mj(index)

    def power_usage_mw(self, index: int) -> int:
        return self.inner.power_usage_mw(index)

    def instant_power_mw(self, index: int) -> int:
        return self.inner.instant_power_mw(index)

    def mig_enabled(self, index: int) -> bool:
        return self.inner.mig_enabled(index)

    def sm_clock_mhz(self, index: int) -> int:
        return self.inner.sm_clock_mhz(index)

    def memory_clock_mhz(self, index: int) -> int:
        return self.inner.memory_clock_mhz(index)

    def utilization(self, index: int) -> Utilization:
        return self.inner.utilization(index)

    def throttle_reasons(self, index: int) -> ThrottleReason:
        return self.inner.throttle_reasons(index)

    def set_locked_sm_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        self.set_calls += 1
        if self.refuse_sets is not None:
            raise self.refuse_sets
        self.inner.set_locked_sm_clocks_mhz(index, min_mhz, max_mhz)

    def reset_locked_sm_clocks(self, index: int) -> None:
        self.inner.reset_locked_sm_clocks(index)

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        return self.inner.locked_sm_clocks_mhz(index)
