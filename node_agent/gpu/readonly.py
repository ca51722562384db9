"""A read-only view of a GPU backend: every read passes through, every write is refused.

`agft agent --check` and `--observe-s N` run on this wrapper, so neither can change a
clock, a power limit or a mode, whatever the code above it asks: a write raises
ObserveOnlyError (a GpuPermissionError) without reaching the backend. The refusals
are counted, so a caller can tell "we refused" from "the driver refused".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from node_agent.gpu.base import (
    GpuBackend,
    GpuIdentity,
    GpuPermissionError,
    ThrottleReason,
    Utilization,
)

# Method names that change GPU state. Any other name a backend grows with one of these
# prefixes is refused too (see __getattr__), so a new write is never let through by
# accident.
WRITE_PREFIXES = ("set_", "reset_", "clear_", "enable_", "disable_")


class ObserveOnlyError(GpuPermissionError):
    """A write refused by the read-only wrapper (the driver was never asked)."""


class ReadOnlyGpuBackend(GpuBackend):
    def __init__(self, inner: GpuBackend) -> None:
        self._inner = inner
        self._mutex = threading.Lock()
        self.refused: list[str] = []  # "set_locked_sm_clocks_mhz(0, 210, 1980)", in order

    @property
    def inner(self) -> GpuBackend:
        return self._inner

    def _refuse(self, method: str, *args: object) -> None:
        call = f"{method}({', '.join(repr(a) for a in args)})"
        with self._mutex:
            self.refused.append(call)
        raise ObserveOnlyError(f"observe-only: {call} refused, no clock or mode is changed")

    # ---- reads pass through -----------------------------------------------------------
    def device_count(self) -> int:
        return self._inner.device_count()

    def identity(self, index: int) -> GpuIdentity:
        return self._inner.identity(index)

    def supported_memory_clocks_mhz(self, index: int) -> list[int]:
        return self._inner.supported_memory_clocks_mhz(index)

    def supported_sm_clocks_mhz(self, index: int, memory_clock_mhz: int) -> list[int]:
        return self._inner.supported_sm_clocks_mhz(index, memory_clock_mhz)

    def default_sm_clock_mhz(self, index: int) -> int:
        return self._inner.default_sm_clock_mhz(index)

    def default_memory_clock_mhz(self, index: int) -> int:
        return self._inner.default_memory_clock_mhz(index)

    def power_limit_mw(self, index: int) -> int:
        return self._inner.power_limit_mw(index)

    def total_energy_mj(self, index: int) -> int:
        return self._inner.total_energy_mj(index)

    def power_usage_mw(self, index: int) -> int:
        return self._inner.power_usage_mw(index)

    def instant_power_mw(self, index: int) -> int:
        return self._inner.instant_power_mw(index)

    def mig_enabled(self, index: int) -> bool:
        return self._inner.mig_enabled(index)

    def sm_clock_mhz(self, index: int) -> int:
        return self._inner.sm_clock_mhz(index)

    def memory_clock_mhz(self, index: int) -> int:
        return self._inner.memory_clock_mhz(index)

    def utilization(self, index: int) -> Utilization:
        return self._inner.utilization(index)

    def throttle_reasons(self, index: int) -> ThrottleReason:
        return self._inner.throttle_reasons(index)

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        return self._inner.locked_sm_clocks_mhz(index)

    # ---- writes are refused -----------------------------------------------------------
    def set_locked_sm_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        self._refuse("set_locked_sm_clocks_mhz", index, min_mhz, max_mhz)

    def reset_locked_sm_clocks(self, index: int) -> None:
        self._refuse("reset_locked_sm_clocks", index)

    def set_locked_memory_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        self._refuse("set_locked_memory_clocks_mhz", index, min_mhz, max_mhz)

    def reset_locked_memory_clocks(self, index: int) -> None:
        self._refuse("reset_locked_memory_clocks", index)

    def close(self) -> None:
        self._inner.close()

    # ---- whatever else a backend offers --------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class does not define: a backend's extra method.
        if name.startswith("_"):
            raise AttributeError(name)
        if name.startswith(WRITE_PREFIXES):

            def refused(*args: object) -> None:
                self._refuse(name, *args)

            return refused
        attr: Callable[..., Any] = getattr(self._inner, name)
        return attr
