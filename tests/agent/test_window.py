"""GpuWindowSampler: energy over a monotonic interval, wall-clock bounds, power sources."""

from __future__ import annotations

from node_agent.gpu.base import GpuError, GpuNotSupportedError
from node_agent.window import GpuWindowSampler, next_window_tick
from tests.fakes.backend import FakeBackend


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_average_power_uses_the_monotonic_interval_when_the_wall_clock_jumps() -> None:
    backend = FakeBackend()
    wall, mono = Clock(1_700_000_000.0), Clock(50.0)
    sampler = GpuWindowSampler(backend, [0], wall, monotonic=mono)
    sampler.prime()
    # One real second, 400 J; meanwhile NTP steps the wall clock back an hour.
    mono.now += 1.0
    wall.now -= 3600.0
    backend.energy_mj[0] += 400_000
    start, end, windows = sampler.sample()
    assert (start, end) == (1_700_000_000.0, 1_700_000_000.0 - 3600.0)  # as the server sees it
    assert windows[0].energy_j == 400.0
    assert windows[0].avg_power_w == 400.0
    # And a forward jump of a day during the next 0.5 s window changes nothing either.
    mono.now += 0.5
    wall.now += 86_400.0
    backend.energy_mj[0] += 100_000
    _, _, windows = sampler.sample()
    assert windows[0].avg_power_w == 200.0


def test_a_virtual_clock_serves_as_both_when_no_monotonic_is_given() -> None:
    backend = FakeBackend()
    virtual = Clock(10.0)
    sampler = GpuWindowSampler(backend, [0], virtual)
    sampler.prime()
    virtual.now += 2.0
    backend.energy_mj[0] += 600_000
    start, end, windows = sampler.sample()
    assert (start, end) == (10.0, 12.0)
    assert windows[0].avg_power_w == 300.0


def test_power_is_the_instant_field_where_the_gpu_has_it() -> None:
    backend = FakeBackend(gpus=2)
    backend.instant_mw[0] = 412_345  # GPU 1 has no instantaneous field
    backend.power_mw = 250_000
    sampler = GpuWindowSampler(backend, [0, 1], Clock(0.0))
    for _ in range(3):
        _, _, windows = sampler.sample()
        assert windows[0].power_w == 412.345
        assert windows[1].power_w == 250.0  # the averaged reading instead
    # Unsupported is remembered: asked for GPU 1 once, not every window.
    assert backend.calls["instant_power_mw"] == 3 + 1


def test_power_is_unknown_when_both_readings_fail() -> None:
    backend = FakeBackend()
    backend.errors["instant_power_mw", 0] = GpuNotSupportedError("Not Supported")
    backend.errors["power_usage_mw", 0] = GpuError("Unknown Error")
    sampler = GpuWindowSampler(backend, [0], Clock(0.0))
    _, _, windows = sampler.sample()
    assert not windows[0].HasField("power_w")
    assert windows[0].HasField("sm_clock_mhz")  # the rest of the window survives


def test_a_transient_instant_power_failure_falls_back_and_asks_again() -> None:
    backend = FakeBackend()
    backend.instant_mw[0] = 300_000
    backend.errors["instant_power_mw", 0] = GpuError("Timeout")
    sampler = GpuWindowSampler(backend, [0], Clock(0.0))
    _, _, windows = sampler.sample()
    assert windows[0].power_w == 250.0
    del backend.errors["instant_power_mw", 0]
    _, _, windows = sampler.sample()
    assert windows[0].power_w == 300.0


def test_a_counter_that_has_not_refreshed_gives_unknown_energy_and_loses_none() -> None:
    backend = FakeBackend()
    mono = Clock(0.0)
    sampler = GpuWindowSampler(backend, [0], mono)
    sampler.prime()
    # 30 ms later the counter (refreshed every 20-100 ms) still reads the same.
    mono.now += 0.03
    _, _, windows = sampler.sample()
    assert not windows[0].HasField("energy_j")  # unknown, never a 0 W window
    assert not windows[0].HasField("avg_power_w")
    assert windows[0].HasField("sm_clock_mhz")  # the rest of the window is there
    # The next window carries what the counter shows since the last figure, over the
    # time since then: 0.03 + 0.97 s, 300 J, so 300 W and no joule lost.
    mono.now += 0.97
    backend.energy_mj[0] += 300_000
    _, _, windows = sampler.sample()
    assert windows[0].energy_j == 300.0
    assert windows[0].avg_power_w == 300.0


def test_windows_close_on_a_grid_and_a_stall_drops_the_ticks_it_missed() -> None:
    # On time or a little late: the next grid point, so lateness does not accumulate.
    assert next_window_tick(10.0, 10.05, 1.0) == 11.0
    assert next_window_tick(10.0, 11.0, 1.0) == 11.0
    # A stall of 2.5 windows: the next close is the first grid point after now, not
    # three windows closed back to back a few milliseconds apart.
    assert next_window_tick(10.0, 12.5, 1.0) == 13.0
    assert next_window_tick(10.0, 11.000001, 1.0) == 12.0
