"""A fake `pynvml` module that behaves like nvidia-ml-py's, for tests without a GPU.

What it copies from the real module (nvidia-ml-py 13.x, pynvml.py), because the backend
depends on it:
- NVMLError(value) constructs the NVMLError_* subclass for the code (NVMLError(4) is an
  NVMLError_NoPermission), carries `.value`, and str() is NVML's error string;
- the NVML_ERROR_*, NVML_CLOCK_*, NVML_VALUE_TYPE_*, NVML_DEVICE_MIG_* and
  NVML_FI_DEV_POWER_INSTANT numbers (a test checks them against the installed pynvml);
- return types and units: MHz/mW/mJ as ints, names and UUIDs as str (or bytes, as
  pynvml before 11.515 returned them), a utilization struct with .gpu/.memory, MIG mode
  as [current, pending], field values as a ctypes array of c_nvmlFieldValue_t whose own
  nvmlReturn says whether that field was read;
- a function the driver lacks raises NVMLError_FunctionNotFound when called; a symbol
  the installed pynvml lacks is simply not an attribute (AttributeError);
- nvmlInit with no driver raises NVMLError_LibraryNotFound; calls before nvmlInit raise
  NVMLError_Uninitialized.
Faults a test can switch on: a lost GPU (every call on it raises GPU_IS_LOST from then
on), MIG enabled, no permission for clock writes, missing functions or symbols.
"""

from __future__ import annotations

import ctypes
import string
import types
from dataclasses import dataclass, field
from typing import Any, NoReturn

# Numbers copied from nvidia-ml-py's pynvml.py (tests/agent/test_fake_pynvml.py checks).
ERRORS = {
    "NVML_ERROR_UNINITIALIZED": 1,
    "NVML_ERROR_INVALID_ARGUMENT": 2,
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_NO_PERMISSION": 4,
    "NVML_ERROR_ALREADY_INITIALIZED": 5,
    "NVML_ERROR_NOT_FOUND": 6,
    "NVML_ERROR_INSUFFICIENT_SIZE": 7,
    "NVML_ERROR_INSUFFICIENT_POWER": 8,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_TIMEOUT": 10,
    "NVML_ERROR_IRQ_ISSUE": 11,
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_FUNCTION_NOT_FOUND": 13,
    "NVML_ERROR_CORRUPTED_INFOROM": 14,
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_ERROR_RESET_REQUIRED": 16,
    "NVML_ERROR_OPERATING_SYSTEM": 17,
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": 18,
    "NVML_ERROR_IN_USE": 19,
    "NVML_ERROR_MEMORY": 20,
    "NVML_ERROR_NO_DATA": 21,
    "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED": 22,
    "NVML_ERROR_INSUFFICIENT_RESOURCES": 23,
    "NVML_ERROR_FREQ_NOT_SUPPORTED": 24,
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": 25,
    "NVML_ERROR_DEPRECATED": 26,
    "NVML_ERROR_NOT_READY": 27,
    "NVML_ERROR_GPU_NOT_FOUND": 28,
    "NVML_ERROR_INVALID_STATE": 29,
    "NVML_ERROR_RESET_TYPE_NOT_SUPPORTED": 30,
    "NVML_ERROR_UNKNOWN": 999,
}
CONSTANTS = {
    "NVML_SUCCESS": 0,
    "NVML_CLOCK_GRAPHICS": 0,
    "NVML_CLOCK_SM": 1,
    "NVML_CLOCK_MEM": 2,
    "NVML_CLOCK_VIDEO": 3,
    "NVML_VALUE_TYPE_DOUBLE": 0,
    "NVML_VALUE_TYPE_UNSIGNED_INT": 1,
    "NVML_VALUE_TYPE_UNSIGNED_LONG": 2,
    "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG": 3,
    "NVML_VALUE_TYPE_SIGNED_LONG_LONG": 4,
    "NVML_VALUE_TYPE_SIGNED_INT": 5,
    "NVML_VALUE_TYPE_UNSIGNED_SHORT": 6,
    "NVML_DEVICE_MIG_DISABLE": 0,
    "NVML_DEVICE_MIG_ENABLE": 1,
    "NVML_FI_DEV_POWER_INSTANT": 186,
}
# NVML's strings for the codes the real NVMLError knows by heart.
_STRINGS = {
    1: "Uninitialized",
    2: "Invalid Argument",
    3: "Not Supported",
    4: "Insufficient Permissions",
    6: "Not Found",
    9: "Driver Not Loaded",
    10: "Timeout",
    12: "NVML Shared Library Not Found",
    13: "Function Not Found",
    15: "GPU is lost",
    16: "GPU requires restart",
    999: "Unknown Error",
}

E = types.SimpleNamespace(**{k.removeprefix("NVML_ERROR_"): v for k, v in ERRORS.items()})


class c_nvmlValue_t(ctypes.Union):
    _fields_ = [
        ("dVal", ctypes.c_double),
        ("uiVal", ctypes.c_uint),
        ("ulVal", ctypes.c_ulong),
        ("ullVal", ctypes.c_ulonglong),
        ("sllVal", ctypes.c_longlong),
        ("siVal", ctypes.c_int),
        ("usVal", ctypes.c_ushort),
    ]


class c_nvmlFieldValue_t(ctypes.Structure):
    _fields_ = [
        ("fieldId", ctypes.c_uint32),
        ("scopeId", ctypes.c_uint32),
        ("timestamp", ctypes.c_int64),
        ("latencyUsec", ctypes.c_int64),
        ("valueType", ctypes.c_uint),
        ("nvmlReturn", ctypes.c_uint),
        ("value", c_nvmlValue_t),
    ]


class c_nvmlUtilization_t(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


@dataclass
class FakeGpu:
    """One device's state; every unit as NVML reports it."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-3f1a2b4c-0000-1111-2222-333344445555"
    # NVML's order is highest first; a test may scramble it to check the backend sorts.
    sm_clocks_mhz: list[int] = field(default_factory=lambda: list(range(1980, 344, -15)))
    memory_clocks_mhz: list[int] = field(default_factory=lambda: [2619])
    sm_clock_mhz: int = 1980
    memory_clock_mhz: int = 2619
    energy_mj: int = 123_456_789
    power_mw: int = 312_500  # nvmlDeviceGetPowerUsage: averaged
    instant_power_mw: int | None = 401_250  # None: the field reads NOT_SUPPORTED
    power_limit_mw: int = 700_000
    utilization: tuple[int, int] = (87, 41)  # (gpu %, memory %)
    reasons: int = 0x1 | 0x4  # GpuIdle | SwPowerCap
    mig: int | None = 0  # current MIG mode; None: the GPU has no MIG (NOT_SUPPORTED)
    permission: bool = True  # False: clock writes raise NO_PERMISSION
    lost: bool = False  # True: every call on this GPU raises GPU_IS_LOST
    locked_sm: tuple[int, int] | None = None
    locked_memory: tuple[int, int] | None = None


class _Handle:
    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<c_nvmlDevice_t {self.index}>"


class FakeNvml:
    """Build with the GPUs and faults wanted; pass `.module` to NvmlBackend(nvml=...)."""

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        driver: bool = True,
        bytes_names: bool = False,
        missing_functions: frozenset[str] = frozenset(),
        absent_symbols: frozenset[str] = frozenset(),
    ) -> None:
        self.gpus = gpus if gpus is not None else [FakeGpu()]
        self.driver = driver
        self.bytes_names = bytes_names
        self.missing_functions = set(missing_functions)
        self.initialized = False
        self.calls: list[str] = []
        self.module = self._build(absent_symbols)

    # ---- the module ---------------------------------------------------------------------
    def _build(self, absent: frozenset[str]) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        for name, value in {**ERRORS, **CONSTANTS}.items():
            setattr(m, name, value)
        m.__dict__.update(
            NVMLError=_error_classes(m),
            c_nvmlFieldValue_t=c_nvmlFieldValue_t,
            c_nvmlUtilization_t=c_nvmlUtilization_t,
        )
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(m, name, self._wrap(name, getattr(self, name)))
        for name in absent:
            delattr(m, name)
        return m

    def _wrap(self, name: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            self.calls.append(name)
            if name in self.missing_functions:
                self._raise(E.FUNCTION_NOT_FOUND)  # real pynvml: _nvmlGetFunctionPointer
            if name not in ("nvmlInit", "nvmlInitWithFlags") and not self.initialized:
                self._raise(E.UNINITIALIZED)
            return fn(*args)

        call.__name__ = name
        return call

    def _raise(self, code: int) -> NoReturn:
        raise self.module.NVMLError(code)

    def _gpu(self, handle: object) -> FakeGpu:
        if not isinstance(handle, _Handle) or not 0 <= handle.index < len(self.gpus):
            self._raise(E.INVALID_ARGUMENT)
        gpu = self.gpus[handle.index]
        if gpu.lost:
            self._raise(E.GPU_IS_LOST)
        return gpu

    def _write(self, handle: object) -> FakeGpu:
        gpu = self._gpu(handle)
        if not gpu.permission:
            self._raise(E.NO_PERMISSION)
        return gpu

    def _text(self, value: str) -> str | bytes:
        return value.encode() if self.bytes_names else value

    # ---- NVML functions (names and signatures as in pynvml) ------------------------------
    def nvmlInit(self) -> None:
        if not self.driver:
            self._raise(E.LIBRARY_NOT_FOUND)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if not 0 <= index < len(self.gpus):
            self._raise(E.INVALID_ARGUMENT)
        return _Handle(index)

    def nvmlDeviceGetName(self, handle: object) -> str | bytes:
        return self._text(self._gpu(handle).name)

    def nvmlDeviceGetUUID(self, handle: object) -> str | bytes:
        return self._text(self._gpu(handle).uuid)

    def nvmlDeviceGetSupportedMemoryClocks(self, handle: object) -> list[int]:
        return list(self._gpu(handle).memory_clocks_mhz)

    def nvmlDeviceGetSupportedGraphicsClocks(
        self, handle: object, memory_clock_mhz: int
    ) -> list[int]:
        gpu = self._gpu(handle)
        if memory_clock_mhz not in gpu.memory_clocks_mhz:
            self._raise(E.NOT_FOUND)  # NVML: "memoryClockMHz is not a supported frequency"
        return list(gpu.sm_clocks_mhz)

    def nvmlDeviceGetMaxClockInfo(self, handle: object, clock_type: int) -> int:
        gpu = self._gpu(handle)
        if clock_type in (CONSTANTS["NVML_CLOCK_SM"], CONSTANTS["NVML_CLOCK_GRAPHICS"]):
            return max(gpu.sm_clocks_mhz)
        if clock_type == CONSTANTS["NVML_CLOCK_MEM"]:
            return max(gpu.memory_clocks_mhz)
        self._raise(E.INVALID_ARGUMENT)

    def nvmlDeviceGetClockInfo(self, handle: object, clock_type: int) -> int:
        gpu = self._gpu(handle)
        if clock_type in (CONSTANTS["NVML_CLOCK_SM"], CONSTANTS["NVML_CLOCK_GRAPHICS"]):
            return gpu.sm_clock_mhz
        if clock_type == CONSTANTS["NVML_CLOCK_MEM"]:
            return gpu.memory_clock_mhz
        self._raise(E.INVALID_ARGUMENT)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object) -> int:
        return self._gpu(handle).power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        return self._gpu(handle).energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        return self._gpu(handle).power_mw

    def nvmlDeviceGetFieldValues(self, handle: object, field_ids: list[Any]) -> Any:
        gpu = self._gpu(handle)
        values = (c_nvmlFieldValue_t * len(field_ids))()
        for i, field_id in enumerate(field_ids):
            try:
                values[i].fieldId, values[i].scopeId = field_id
            except TypeError:
                values[i].fieldId = field_id
            if (
                field_id == CONSTANTS["NVML_FI_DEV_POWER_INSTANT"]
                and gpu.instant_power_mw is not None
            ):
                values[i].valueType = CONSTANTS["NVML_VALUE_TYPE_UNSIGNED_INT"]
                values[i].value.uiVal = gpu.instant_power_mw
                values[i].nvmlReturn = 0
            else:
                values[i].nvmlReturn = E.NOT_SUPPORTED
        return values

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> c_nvmlUtilization_t:
        gpu_pct, memory_pct = self._gpu(handle).utilization
        return c_nvmlUtilization_t(gpu_pct, memory_pct)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: object) -> int:
        return self._gpu(handle).reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: object) -> int:
        return self._gpu(handle).reasons

    def nvmlDeviceGetMigMode(self, handle: object) -> list[int]:
        gpu = self._gpu(handle)
        if gpu.mig is None:
            self._raise(E.NOT_SUPPORTED)
        return [gpu.mig, gpu.mig]

    def nvmlDeviceSetGpuLockedClocks(self, handle: object, lo: int, hi: int) -> None:
        gpu = self._write(handle)
        if lo > hi:
            self._raise(E.INVALID_ARGUMENT)
        gpu.locked_sm = (lo, hi)

    def nvmlDeviceResetGpuLockedClocks(self, handle: object) -> None:
        self._write(handle).locked_sm = None

    def nvmlDeviceSetMemoryLockedClocks(self, handle: object, lo: int, hi: int) -> None:
        gpu = self._write(handle)
        if lo > hi:
            self._raise(E.INVALID_ARGUMENT)
        gpu.locked_memory = (lo, hi)

    def nvmlDeviceResetMemoryLockedClocks(self, handle: object) -> None:
        self._write(handle).locked_memory = None


def _error_classes(module: types.ModuleType) -> type[Exception]:
    """NVMLError and its NVMLError_* subclasses, made as pynvml's
    _extractNVMLErrorsAsClasses makes them (NVML_ERROR_NO_PERMISSION ->
    NVMLError_NoPermission), each constructing itself from the code alone."""

    class NVMLError(Exception):
        _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: RUF012 - pynvml's
        value: int

        def __new__(cls, value: int) -> NVMLError:
            if cls is NVMLError:
                cls = NVMLError._valClassMapping.get(value, cls)
            obj = Exception.__new__(cls)
            obj.value = value
            return obj

        def __init__(self, *args: object) -> None:
            super().__init__()

        def __str__(self) -> str:
            return _STRINGS.get(self.value, f"NVML Error with code {self.value}")

        def __eq__(self, other: object) -> bool:
            return isinstance(other, NVMLError) and self.value == other.value

        __hash__ = Exception.__hash__

    for err_name, err_val in ERRORS.items():
        class_name = "NVMLError_" + string.capwords(
            err_name.replace("NVML_ERROR_", ""), "_"
        ).replace("_", "")

        def gen_new(val: int) -> Any:
            def new(typ: type[NVMLError], *args: object) -> NVMLError:
                return NVMLError.__new__(typ, val)

            return new

        subclass = type(class_name, (NVMLError,), {"__new__": gen_new(err_val)})
        subclass.__module__ = "pynvml"
        setattr(module, class_name, subclass)
        NVMLError._valClassMapping[err_val] = subclass
    NVMLError.__module__ = "pynvml"
    return NVMLError
