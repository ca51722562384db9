"""The real GPU backend, over NVML (the `pynvml` module of nvidia-ml-py).

NVML errors are mapped onto the few typed errors of gpu.base. NVML has no getter for
a locked-clock range, so the lock this process set is remembered here; at start-up
the agent resets every managed GPU, so no lock it does not own survives.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from node_agent.gpu.base import (
    GpuBackend,
    GpuError,
    GpuIdentity,
    GpuInvalidArgumentError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuUnavailableError,
    ThrottleReason,
    Utilization,
)

T = TypeVar("T")


class NvmlBackend(GpuBackend):
    def __init__(self, nvml: Any | None = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml = nvml
        self._lock = threading.Lock()
        self._locks: dict[int, tuple[int, int]] = {}
        self._call(self._nvml.nvmlInit)
        count: int = self._call(self._nvml.nvmlDeviceGetCount)
        self._handles: list[Any] = [self._handle_by_index(i) for i in range(count)]

    # ---- error mapping ------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        nvml = self._nvml
        try:
            return fn()
        except nvml.NVMLError as err:
            code = getattr(err, "value", None)
            if code == nvml.NVML_ERROR_NO_PERMISSION:
                raise GpuPermissionError(str(err)) from err
            if code == nvml.NVML_ERROR_NOT_SUPPORTED:
                raise GpuNotSupportedError(str(err)) from err
            if code == nvml.NVML_ERROR_INVALID_ARGUMENT:
                raise GpuInvalidArgumentError(str(err)) from err
            if code in (
                nvml.NVML_ERROR_GPU_IS_LOST,
                nvml.NVML_ERROR_UNINITIALIZED,
                nvml.NVML_ERROR_DRIVER_NOT_LOADED,
                nvml.NVML_ERROR_LIBRARY_NOT_FOUND,
            ):
                raise GpuUnavailableError(str(err)) from err
            raise GpuError(str(err)) from err

    def _handle_by_index(self, index: int) -> Any:
        return self._call(lambda: self._nvml.nvmlDeviceGetHandleByIndex(index))

    def _h(self, index: int) -> Any:
        if not 0 <= index < len(self._handles):
            raise GpuInvalidArgumentError(f"no GPU with index {index}")
        return self._handles[index]

    # ---- inventory -------------------------------------------------------------------
    def device_count(self) -> int:
        return len(self._handles)

    def identity(self, index: int) -> GpuIdentity:
        h = self._h(index)
        uuid = self._call(lambda: self._nvml.nvmlDeviceGetUUID(h))
        name = self._call(lambda: self._nvml.nvmlDeviceGetName(h))
        return GpuIdentity(index, _text(uuid), _text(name))

    def supported_memory_clocks_mhz(self, index: int) -> list[int]:
        h = self._h(index)
        return sorted(
            self._call(lambda: self._nvml.nvmlDeviceGetSupportedMemoryClocks(h)), reverse=True
        )

    def supported_sm_clocks_mhz(self, index: int, memory_clock_mhz: int) -> list[int]:
        h = self._h(index)
        clocks = self._call(
            lambda: self._nvml.nvmlDeviceGetSupportedGraphicsClocks(h, memory_clock_mhz)
        )
        return sorted(clocks, reverse=True)

    def default_sm_clock_mhz(self, index: int) -> int:
        # Under load with nothing locked, the governor boosts to the max clock.
        h = self._h(index)
        return int(
            self._call(lambda: self._nvml.nvmlDeviceGetMaxClockInfo(h, self._nvml.NVML_CLOCK_SM))
        )

    def default_memory_clock_mhz(self, index: int) -> int:
        h = self._h(index)
        return int(
            self._call(lambda: self._nvml.nvmlDeviceGetMaxClockInfo(h, self._nvml.NVML_CLOCK_MEM))
        )

    def power_limit_mw(self, index: int) -> int:
        h = self._h(index)
        return int(self._call(lambda: self._nvml.nvmlDeviceGetEnforcedPowerLimit(h)))

    # ---- reads ---------------------------------------------------------------------
    def total_energy_mj(self, index: int) -> int:
        h = self._h(index)
        return int(self._call(lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)))

    def power_usage_mw(self, index: int) -> int:
        h = self._h(index)
        return int(self._call(lambda: self._nvml.nvmlDeviceGetPowerUsage(h)))

    def mig_enabled(self, index: int) -> bool:
        h = self._h(index)
        try:
            current, _pending = self._call(lambda: self._nvml.nvmlDeviceGetMigMode(h))
        except GpuNotSupportedError:
            return False  # a GPU without MIG (pre-Ampere, consumer boards) or an old driver
        return bool(current == self._nvml.NVML_DEVICE_MIG_ENABLE)

    def sm_clock_mhz(self, index: int) -> int:
        h = self._h(index)
        return int(
            self._call(lambda: self._nvml.nvmlDeviceGetClockInfo(h, self._nvml.NVML_CLOCK_SM))
        )

    def memory_clock_mhz(self, index: int) -> int:
        h = self._h(index)
        return int(
            self._call(lambda: self._nvml.nvmlDeviceGetClockInfo(h, self._nvml.NVML_CLOCK_MEM))
        )

    def utilization(self, index: int) -> Utilization:
        h = self._h(index)
        rates = self._call(lambda: self._nvml.nvmlDeviceGetUtilizationRates(h))
        return Utilization(float(rates.gpu), float(rates.memory))

    def throttle_reasons(self, index: int) -> ThrottleReason:
        h = self._h(index)
        mask = self._call(lambda: self._nvml.nvmlDeviceGetCurrentClocksEventReasons(h))
        return ThrottleReason(int(mask) & int(sum(ThrottleReason)))

    # ---- writes (root or CAP_SYS_ADMIN) -----------------------------------------------
    def set_locked_sm_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        supported = self.supported_sm_clocks_mhz(index, self.default_memory_clock_mhz(index))
        for mhz in (min_mhz, max_mhz):
            if mhz not in supported:
                raise GpuInvalidArgumentError(f"GPU {index} does not support {mhz} MHz")
        if min_mhz > max_mhz:
            raise GpuInvalidArgumentError(f"min {min_mhz} MHz above max {max_mhz} MHz")
        h = self._h(index)
        with self._lock:
            self._call(lambda: self._nvml.nvmlDeviceSetGpuLockedClocks(h, min_mhz, max_mhz))
            self._locks[index] = (min_mhz, max_mhz)

    def reset_locked_sm_clocks(self, index: int) -> None:
        h = self._h(index)
        with self._lock:
            self._call(lambda: self._nvml.nvmlDeviceResetGpuLockedClocks(h))
            self._locks.pop(index, None)

    def set_locked_memory_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        supported = self.supported_memory_clocks_mhz(index)
        for mhz in (min_mhz, max_mhz):
            if mhz not in supported:
                raise GpuInvalidArgumentError(f"GPU {index} does not support memory {mhz} MHz")
        h = self._h(index)
        self._call(lambda: self._nvml.nvmlDeviceSetMemoryLockedClocks(h, min_mhz, max_mhz))

    def reset_locked_memory_clocks(self, index: int) -> None:
        h = self._h(index)
        self._call(lambda: self._nvml.nvmlDeviceResetMemoryLockedClocks(h))

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        self._h(index)
        with self._lock:
            return self._locks.get(index)

    def close(self) -> None:
        with contextlib.suppress(GpuError):
            self._call(self._nvml.nvmlShutdown)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
