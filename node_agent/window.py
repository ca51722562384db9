"""GPU side of a measurement window: energy from the counter over the measured interval.

Each read is wrapped so one failing NVML call makes that one field unknown instead of
zero, and never loses the rest of the window.

Two clocks: window_start_s/window_end_s are wall-clock unix seconds (the server lines
windows up across nodes with them), but the interval that turns energy into average
power is measured on a monotonic clock, so an NTP step or a manual clock change cannot
make a window look 0 s or an hour long.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from agft.v1 import agent_pb2 as pb
from node_agent.gpu.base import GpuBackend, GpuError, GpuNotSupportedError, GpuUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class _EnergyMark:
    time_s: float  # on the monotonic clock
    energy_mj: int | None


class GpuWindowSampler:
    """Differences each GPU's total-energy counter between consecutive sample() calls.

    `clock` gives the wall-clock window bounds; `monotonic` measures the interval. A
    caller whose `clock` is already monotonic (a simulation's virtual time) may leave
    `monotonic` out and both come from `clock`.
    """

    def __init__(
        self,
        backend: GpuBackend,
        indices: Iterable[int],
        clock: Callable[[], float],
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._backend = backend
        self._indices = sorted(set(indices))
        self._clock = clock
        self._monotonic = monotonic or clock
        self._marks: dict[int, _EnergyMark] = {}
        # GPUs with no instantaneous power field: asked once, then the averaged reading.
        self._no_instant_power: set[int] = set()
        self.window_start_s: float | None = None
        # GPU index -> error, for GPUs that answered "unavailable" (lost, driver gone)
        # during the last sample(); the agent stops controlling them.
        self.unavailable: dict[int, str] = {}

    def _try(self, index: int, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except GpuUnavailableError as err:
            self.unavailable.setdefault(index, str(err))  # the first failure says it best
            log.debug("GPU %d unavailable: %s", index, err)
            return None
        except GpuError as err:
            log.debug("GPU %d read failed: %s", index, err)
            return None

    def prime(self) -> None:
        """Start a fresh window now (at start-up and after a reconnect)."""
        self.window_start_s = self._clock()
        mono = self._monotonic()
        for index in self._indices:
            self._marks[index] = _EnergyMark(mono, self._energy_mj(index))

    def _energy_mj(self, index: int) -> int | None:
        return self._try(index, lambda: self._backend.total_energy_mj(index))

    def sample(self) -> tuple[float, float, dict[int, pb.GpuWindow]]:
        """Close the current window: (start_s, end_s, per-GPU window); the next one starts now."""
        if self.window_start_s is None:
            self.prime()
        assert self.window_start_s is not None
        self.unavailable = {}
        start = self.window_start_s
        end = self._clock()
        mono = self._monotonic()
        out: dict[int, pb.GpuWindow] = {}
        for index in self._indices:
            out[index] = self._gpu_window(index, mono)
        self.window_start_s = end
        return start, end, out

    def _gpu_window(self, index: int, mono_end: float) -> pb.GpuWindow:
        w = pb.GpuWindow(index=index)
        energy = self._energy_mj(index)
        mark = self._marks.get(index)
        if energy is not None and mark is not None and mark.energy_mj is not None:
            delta_mj = energy - mark.energy_mj
            interval = mono_end - mark.time_s
            if delta_mj == 0 and interval > 0:
                # The counter refreshes every 20-100 ms, and a GPU that is on never draws
                # 0 W: it has not refreshed since the mark, so this window's energy is
                # unknown, not zero. The mark stays, so the next window's figure covers
                # both intervals and its average power is still energy over time.
                return self._gpu_readings(index, w)
            # A counter that went backwards (driver reload) gives no honest figure.
            if delta_mj > 0 and interval > 0:
                w.energy_j = delta_mj / 1000.0
                w.avg_power_w = w.energy_j / interval
        self._marks[index] = _EnergyMark(mono_end, energy)
        return self._gpu_readings(index, w)

    def _gpu_readings(self, index: int, w: pb.GpuWindow) -> pb.GpuWindow:
        """The instant readings of a window: power, clocks, utilisation, throttling."""
        b = self._backend
        power_mw = self._power_mw(index)
        if power_mw is not None:
            w.power_w = power_mw / 1000.0
        sm = self._try(index, lambda: b.sm_clock_mhz(index))
        if sm is not None:
            w.sm_clock_mhz = sm
        mem = self._try(index, lambda: b.memory_clock_mhz(index))
        if mem is not None:
            w.memory_clock_mhz = mem
        util = self._try(index, lambda: b.utilization(index))
        if util is not None:
            w.utilization_gpu_pct = util.gpu_pct
            w.utilization_memory_pct = util.memory_pct
        reasons = self._try(index, lambda: b.throttle_reasons(index))
        if reasons is not None:
            w.throttle_reasons = int(reasons)
        lock = self._try(index, lambda: b.locked_sm_clocks_mhz(index))
        if lock is not None:
            w.locked_min_sm_clock_mhz, w.locked_max_sm_clock_mhz = lock
        return w

    def _power_mw(self, index: int) -> int | None:
        """Instantaneous power where the GPU has the field, else the averaged reading."""
        if index not in self._no_instant_power:
            try:
                return self._backend.instant_power_mw(index)
            except GpuNotSupportedError:
                self._no_instant_power.add(index)
            except GpuUnavailableError as err:
                self.unavailable.setdefault(index, str(err))
                return None
            except GpuError as err:
                log.debug("GPU %d instantaneous power failed: %s", index, err)
        return self._try(index, lambda: self._backend.power_usage_mw(index))


def next_window_tick(previous_tick_s: float, now_s: float, window_s: float) -> float:
    """When the next window closes, on the monotonic clock.

    Windows close on a fixed grid, so a late close does not stretch every later window.
    After a stall longer than a window (a busy host, a slow NVML call) the ticks that
    were missed are dropped rather than run back to back: a burst of windows a few
    milliseconds long would carry no requests and an energy counter that had not moved.
    """
    tick = previous_tick_s + window_s
    if now_s > tick:
        missed = math.floor((now_s - previous_tick_s) / window_s)
        tick = previous_tick_s + (missed + 1) * window_s
    return tick
