"""The real GPU backend, over NVML (the `pynvml` module of nvidia-ml-py).

NVML errors are mapped onto the few typed errors of gpu.base. NVML has no getter for
a locked-clock range, so the lock this process set is remembered here; at start-up
the agent resets every managed GPU, so no lock it does not own survives.

Every NVML function is looked up by name at call time: a pynvml too old to have the
symbol (AttributeError) and a driver too old to have the function
(NVML_ERROR_FUNCTION_NOT_FOUND) both mean "not supported here", never a crash.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

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

NO_DRIVER = (
    "no NVIDIA driver on this machine (NVML library not found): run the agent on a GPU "
    "node, or use `agft agent --backend sim` for a simulated node"
)
DRIVER_NOT_LOADED = (
    "the NVIDIA driver is installed but not loaded (NVML: Driver Not Loaded): check "
    "`nvidia-smi` on this node, or use `agft agent --backend sim` for a simulated node"
)
NO_PYNVML = (
    "the nvidia-ml-py package (module pynvml) is not installed: install it on a GPU node, "
    "or use `agft agent --backend sim` for a simulated node"
)

# Error names -> typed error; looked up with getattr because old pynvml lacks some codes.
_PERMISSION = ("NVML_ERROR_NO_PERMISSION",)
_NOT_SUPPORTED = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND")
_INVALID = ("NVML_ERROR_INVALID_ARGUMENT", "NVML_ERROR_NOT_FOUND")
_UNAVAILABLE = (
    "NVML_ERROR_GPU_IS_LOST",
    "NVML_ERROR_UNINITIALIZED",
    "NVML_ERROR_DRIVER_NOT_LOADED",
    "NVML_ERROR_LIBRARY_NOT_FOUND",
    "NVML_ERROR_RESET_REQUIRED",
    "NVML_ERROR_GPU_NOT_FOUND",
)


class NvmlBackend(GpuBackend):
    def __init__(self, nvml: Any | None = None) -> None:
        if nvml is None:
            try:
                import pynvml
            except ImportError as err:
                raise GpuUnavailableError(NO_PYNVML) from err
            nvml = pynvml
        self._nvml = nvml
        self._codes = {
            name: getattr(nvml, name)
            for name in (*_PERMISSION, *_NOT_SUPPORTED, *_INVALID, *_UNAVAILABLE)
            if hasattr(nvml, name)
        }
        self._lock = threading.Lock()
        self._locks: dict[int, tuple[int, int]] = {}
        self._no_instant_power: set[int] = set()
        try:
            self._call("nvmlInit")
        except GpuUnavailableError as err:
            code = getattr(err.__cause__, "value", None)
            if code == self._codes.get("NVML_ERROR_LIBRARY_NOT_FOUND"):
                raise GpuUnavailableError(NO_DRIVER) from err
            if code == self._codes.get("NVML_ERROR_DRIVER_NOT_LOADED"):
                raise GpuUnavailableError(DRIVER_NOT_LOADED) from err
            raise
        count = int(self._call("nvmlDeviceGetCount"))
        self._handles: list[Any] = [
            self._call("nvmlDeviceGetHandleByIndex", i) for i in range(count)
        ]

    # ---- error mapping ------------------------------------------------------------
    def _call(self, name: str, *args: Any) -> Any:
        nvml = self._nvml
        fn = getattr(nvml, name, None)
        if fn is None:
            raise GpuNotSupportedError(f"{name} is missing from this pynvml (nvidia-ml-py too old)")
        try:
            return fn(*args)
        except nvml.NVMLError as err:
            raise self._typed(getattr(err, "value", None), f"{name}: {err}") from err

    def _typed(self, code: object, message: str) -> GpuError:
        def matches(names: tuple[str, ...]) -> bool:
            return any(self._codes.get(n) == code for n in names if n in self._codes)

        if matches(_PERMISSION):
            return GpuPermissionError(message)
        if matches(_NOT_SUPPORTED):
            return GpuNotSupportedError(message)
        if matches(_INVALID):
            return GpuInvalidArgumentError(message)
        if matches(_UNAVAILABLE):
            return GpuUnavailableError(message)
        return GpuError(message)

    def _h(self, index: int) -> Any:
        if not 0 <= index < len(self._handles):
            raise GpuInvalidArgumentError(f"no GPU with index {index}")
        return self._handles[index]

    # ---- inventory -------------------------------------------------------------------
    def device_count(self) -> int:
        return len(self._handles)

    def identity(self, index: int) -> GpuIdentity:
        h = self._h(index)
        uuid = self._call("nvmlDeviceGetUUID", h)
        name = self._call("nvmlDeviceGetName", h)
        return GpuIdentity(index, _text(uuid), _text(name))

    def supported_memory_clocks_mhz(self, index: int) -> list[int]:
        clocks = self._call("nvmlDeviceGetSupportedMemoryClocks", self._h(index))
        return sorted((int(c) for c in clocks), reverse=True)

    def supported_sm_clocks_mhz(self, index: int, memory_clock_mhz: int) -> list[int]:
        clocks = self._call(
            "nvmlDeviceGetSupportedGraphicsClocks", self._h(index), memory_clock_mhz
        )
        return sorted((int(c) for c in clocks), reverse=True)

    def default_sm_clock_mhz(self, index: int) -> int:
        # Under load with nothing locked, the governor boosts to the max clock.
        return int(
            self._call("nvmlDeviceGetMaxClockInfo", self._h(index), self._nvml.NVML_CLOCK_SM)
        )

    def default_memory_clock_mhz(self, index: int) -> int:
        h = self._h(index)
        return int(self._call("nvmlDeviceGetMaxClockInfo", h, self._nvml.NVML_CLOCK_MEM))

    def power_limit_mw(self, index: int) -> int:
        return int(self._call("nvmlDeviceGetEnforcedPowerLimit", self._h(index)))

    def mig_enabled(self, index: int) -> bool:
        try:
            current, _pending = self._call("nvmlDeviceGetMigMode", self._h(index))
        except GpuNotSupportedError:
            return False  # a GPU without MIG (pre-Ampere, consumer boards) or an old driver
        return bool(current == self._nvml.NVML_DEVICE_MIG_ENABLE)

    # ---- reads ---------------------------------------------------------------------
    def total_energy_mj(self, index: int) -> int:
        return int(self._call("nvmlDeviceGetTotalEnergyConsumption", self._h(index)))

    def power_usage_mw(self, index: int) -> int:
        return int(self._call("nvmlDeviceGetPowerUsage", self._h(index)))

    def instant_power_mw(self, index: int) -> int:
        h = self._h(index)
        field = getattr(self._nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field is None:
            raise GpuNotSupportedError("this pynvml has no NVML_FI_DEV_POWER_INSTANT")
        (value,) = self._call("nvmlDeviceGetFieldValues", h, [field])
        # Each field carries its own status: the call succeeds even when the field does not.
        ret = int(value.nvmlReturn)
        if ret != self._nvml.NVML_SUCCESS:
            raise self._typed(ret, f"GPU {index}: NVML_FI_DEV_POWER_INSTANT: error {ret}")
        return int(_field_value(self._nvml, value))

    def sm_clock_mhz(self, index: int) -> int:
        return int(self._call("nvmlDeviceGetClockInfo", self._h(index), self._nvml.NVML_CLOCK_SM))

    def memory_clock_mhz(self, index: int) -> int:
        h = self._h(index)
        return int(self._call("nvmlDeviceGetClockInfo", h, self._nvml.NVML_CLOCK_MEM))

    def utilization(self, index: int) -> Utilization:
        rates = self._call("nvmlDeviceGetUtilizationRates", self._h(index))
        return Utilization(float(rates.gpu), float(rates.memory))

    def throttle_reasons(self, index: int) -> ThrottleReason:
        h = self._h(index)
        try:
            mask = self._call("nvmlDeviceGetCurrentClocksEventReasons", h)
        except GpuNotSupportedError:
            # Older pynvml and drivers have only this name for the same bits.
            mask = self._call("nvmlDeviceGetCurrentClocksThrottleReasons", h)
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
            self._call("nvmlDeviceSetGpuLockedClocks", h, min_mhz, max_mhz)
            self._locks[index] = (min_mhz, max_mhz)

    def reset_locked_sm_clocks(self, index: int) -> None:
        h = self._h(index)
        with self._lock:
            self._call("nvmlDeviceResetGpuLockedClocks", h)
            self._locks.pop(index, None)

    def set_locked_memory_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        supported = self.supported_memory_clocks_mhz(index)
        for mhz in (min_mhz, max_mhz):
            if mhz not in supported:
                raise GpuInvalidArgumentError(f"GPU {index} does not support memory {mhz} MHz")
        self._call("nvmlDeviceSetMemoryLockedClocks", self._h(index), min_mhz, max_mhz)

    def reset_locked_memory_clocks(self, index: int) -> None:
        self._call("nvmlDeviceResetMemoryLockedClocks", self._h(index))

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        self._h(index)
        with self._lock:
            return self._locks.get(index)

    def close(self) -> None:
        with contextlib.suppress(GpuError):
            self._call("nvmlShutdown")


def _field_value(nvml: Any, value: Any) -> float | int:
    """The member of NVML's value union that the field's valueType names."""
    members = {
        "NVML_VALUE_TYPE_DOUBLE": "dVal",
        "NVML_VALUE_TYPE_UNSIGNED_INT": "uiVal",
        "NVML_VALUE_TYPE_UNSIGNED_LONG": "ulVal",
        "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG": "ullVal",
        "NVML_VALUE_TYPE_SIGNED_LONG_LONG": "sllVal",
        "NVML_VALUE_TYPE_SIGNED_INT": "siVal",
        "NVML_VALUE_TYPE_UNSIGNED_SHORT": "usVal",
    }
    for type_name, member in members.items():
        if getattr(nvml, type_name, None) == value.valueType:
            result: float | int = getattr(value.value, member)
            return result
    return int(value.value.uiVal)  # power fields are documented as unsigned int (mW)


def _text(value: object) -> str:
    # nvidia-ml-py returns str since 11.515 and bytes before.
    return value.decode() if isinstance(value, bytes) else str(value)
