"""The GPU interface the agent drives: one class per backend (NVML, simulated).

Units are in the method names (MHz, mW, mJ) so a caller can never mix them up.
Reads need no privilege; the two writes (lock / reset clocks) do on real hardware,
and are kept apart so a read-only deployment can refuse them in one place.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass


class GpuError(Exception):
    """Base of every error a GPU backend raises."""


class GpuNotSupportedError(GpuError):
    """The device or driver cannot do this (e.g. clock locks on a MIG slice)."""


class GpuPermissionError(GpuError):
    """The call needs root or CAP_SYS_ADMIN."""


class GpuInvalidArgumentError(GpuError):
    """A clock outside the supported list, an unknown index, and the like."""


class GpuUnavailableError(GpuError):
    """The device is gone, the driver is not loaded, or the GPU fell off the bus."""


class ThrottleReason(enum.IntFlag):
    """Clock event reasons, bit-compatible with NVML's nvmlClocksEventReason* masks."""

    NONE = 0
    GPU_IDLE = 0x1
    APPLICATIONS_CLOCKS_SETTING = 0x2
    SW_POWER_CAP = 0x4
    HW_SLOWDOWN = 0x8
    SYNC_BOOST = 0x10
    SW_THERMAL_SLOWDOWN = 0x20
    HW_THERMAL_SLOWDOWN = 0x40
    HW_POWER_BRAKE_SLOWDOWN = 0x80
    DISPLAY_CLOCK_SETTING = 0x100


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    index: int
    uuid: str
    name: str


@dataclass(frozen=True, slots=True)
class Utilization:
    gpu_pct: float
    memory_pct: float


class GpuBackend(abc.ABC):
    """One node's GPUs. Every index is the NVML device index."""

    # ---- inventory -------------------------------------------------------------
    @abc.abstractmethod
    def device_count(self) -> int: ...

    @abc.abstractmethod
    def identity(self, index: int) -> GpuIdentity: ...

    @abc.abstractmethod
    def supported_memory_clocks_mhz(self, index: int) -> list[int]:
        """Supported memory clocks, highest first (NVML order)."""

    @abc.abstractmethod
    def supported_sm_clocks_mhz(self, index: int, memory_clock_mhz: int) -> list[int]:
        """Supported graphics (SM) clocks at a memory clock, highest first."""

    @abc.abstractmethod
    def default_sm_clock_mhz(self, index: int) -> int:
        """The clock the GPU's own governor runs at under load when nothing is locked."""

    @abc.abstractmethod
    def default_memory_clock_mhz(self, index: int) -> int: ...

    @abc.abstractmethod
    def power_limit_mw(self, index: int) -> int: ...

    # ---- unprivileged reads -----------------------------------------------------
    @abc.abstractmethod
    def total_energy_mj(self, index: int) -> int:
        """Energy consumed since the driver loaded, in mJ (monotonic; difference it)."""

    @abc.abstractmethod
    def power_usage_mw(self, index: int) -> int:
        """NVML power reading (a 1 s average on Ampere+ except A100)."""

    def instant_power_mw(self, index: int) -> int:
        """Instantaneous power (NVML's NVML_FI_DEV_POWER_INSTANT field), where the GPU has it."""
        raise GpuNotSupportedError(f"GPU {index}: no instantaneous power reading")

    def mig_enabled(self, index: int) -> bool:
        """Whether MIG mode is on: a MIG GPU's clocks are not ours to lock (monitor only)."""
        return False

    @abc.abstractmethod
    def sm_clock_mhz(self, index: int) -> int:
        """The SM clock the GPU actually runs at now."""

    @abc.abstractmethod
    def memory_clock_mhz(self, index: int) -> int: ...

    @abc.abstractmethod
    def utilization(self, index: int) -> Utilization: ...

    @abc.abstractmethod
    def throttle_reasons(self, index: int) -> ThrottleReason: ...

    # ---- privileged writes ------------------------------------------------------
    @abc.abstractmethod
    def set_locked_sm_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock into [min, max]; both must be supported clocks."""

    @abc.abstractmethod
    def reset_locked_sm_clocks(self, index: int) -> None:
        """Give the SM clock back to the GPU's own governor."""

    @abc.abstractmethod
    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        """The lock this backend knows is in force, or None when the governor is free."""

    def set_locked_memory_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        """Lock the memory clock (Ampere and newer); backends without it refuse."""
        raise GpuNotSupportedError(f"GPU {index}: memory clock locks are not supported")

    def reset_locked_memory_clocks(self, index: int) -> None:  # noqa: B027 - optional hook
        """Undo set_locked_memory_clocks_mhz (a no-op where memory locks are unsupported)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release driver handles."""
