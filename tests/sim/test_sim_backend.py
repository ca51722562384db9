"""The simulated node's GPUs behind the agent's GpuBackend interface (NVML semantics)."""

from __future__ import annotations

import itertools

import pytest

from node_agent.gpu.base import GpuInvalidArgumentError, ThrottleReason
from sim.engine import EngineConfig
from sim.node import SimulatedNode
from sim.sweep import LOADS, SteadyWorkload
from sim.workload import FixedLengths, PoissonWorkload


def _node(gpu: str = "h100-sxm", model: str = "llama-3.1-8b", instances: int = 1,
          load: str | None = "decode-heavy") -> SimulatedNode:  # fmt: skip
    """A virtual node under one of the sweep's steady loads (or idle)."""
    wl = SteadyWorkload(LOADS[load], 2000) if load else None
    cfg = EngineConfig(max_num_seqs=LOADS[load].concurrency if load else None)
    return SimulatedNode.create(
        gpu=gpu, model=model, instances=instances, workload=wl, clock="virtual",
        engine_config=cfg,
    )  # fmt: skip


def _mean_step_s(node: SimulatedNode, seconds: float) -> float:
    eng = node.instances[0].sim_engine
    steps0, busy0 = eng.steps, eng.busy_s
    node.advance(seconds)
    return (eng.busy_s - busy0) / (eng.steps - steps0)


@pytest.mark.parametrize(
    ("gpu", "name", "lo", "hi", "mem"),
    [
        ("h100-sxm", "NVIDIA H100 80GB HBM3", 345, 1980, [2619]),
        ("a100-sxm", "NVIDIA A100-SXM4-80GB", 210, 1410, [1593]),
        ("h100-nvl", "NVIDIA H100 NVL", 345, 1785, [2619, 1593]),
    ],
)
def test_inventory(gpu: str, name: str, lo: int, hi: int, mem: list[int]) -> None:
    b = _node(gpu, load=None).backend
    assert b.identity(0).name == name
    assert b.identity(0).uuid.startswith("GPU-")
    assert b.supported_memory_clocks_mhz(0) == mem
    clocks = b.supported_sm_clocks_mhz(0, mem[0])
    assert clocks[0] == hi and clocks[-1] == lo
    assert all(a - b_ == 15 for a, b_ in itertools.pairwise(clocks))
    assert b.default_sm_clock_mhz(0) == hi
    assert b.default_memory_clock_mhz(0) == mem[0]


def test_identities_are_distinct_and_stable() -> None:
    a = _node(instances=3, load=None).backend
    b = _node(instances=3, load=None).backend
    uuids = [a.identity(i).uuid for i in range(3)]
    assert len(set(uuids)) == 3
    assert uuids == [b.identity(i).uuid for i in range(3)]


def test_rejects_unsupported_clocks_and_indices() -> None:
    b = _node(load=None).backend
    for lo, hi in [(1000, 1000), (1980, 1995), (330, 345), (1200, 1005), (0, 0)]:
        with pytest.raises(GpuInvalidArgumentError):
            b.set_locked_sm_clocks_mhz(0, lo, hi)
    assert b.locked_sm_clocks_mhz(0) is None
    for call in (b.total_energy_mj, b.power_usage_mw, b.sm_clock_mhz, b.reset_locked_sm_clocks):
        with pytest.raises(GpuInvalidArgumentError):
            call(1)
        with pytest.raises(GpuInvalidArgumentError):
            call(-1)
    with pytest.raises(GpuInvalidArgumentError):
        b.supported_sm_clocks_mhz(0, 1234)


def test_lock_and_reset_change_the_clock_after_a_switch_delay() -> None:
    node = _node()
    b = node.backend
    node.advance(10.0)  # past the first wave of prefills (power-capped), into steady decode
    assert b.sm_clock_mhz(0) == 1980
    b.set_locked_sm_clocks_mhz(0, 1200, 1200)
    assert b.locked_sm_clocks_mhz(0) == (1200, 1200)
    # The switch takes tens of ms; a step that started before keeps its clock.
    node.advance(0.005)
    assert b.sm_clock_mhz(0) == 1980
    node.advance(0.2)
    assert b.sm_clock_mhz(0) == 1200
    assert ThrottleReason.APPLICATIONS_CLOCKS_SETTING in b.throttle_reasons(0)
    b.reset_locked_sm_clocks(0)
    assert b.locked_sm_clocks_mhz(0) is None
    node.advance(0.2)
    assert b.sm_clock_mhz(0) == 1980


def test_lower_clock_lowers_power_and_slows_steps_from_the_next_step_on() -> None:
    node = _node(load="mixed")
    b = node.backend
    node.advance(20.0)
    e0 = b.total_energy_mj(0)
    fast_step = _mean_step_s(node, 10.0)
    fast_w = (b.total_energy_mj(0) - e0) / 10_000
    b.set_locked_sm_clocks_mhz(0, 990, 990)
    node.advance(1.0)
    e0 = b.total_energy_mj(0)
    slow_step = _mean_step_s(node, 10.0)
    slow_w = (b.total_energy_mj(0) - e0) / 10_000
    assert slow_step > 1.1 * fast_step
    assert slow_w < 0.7 * fast_w


def test_energy_counter_is_monotonic_and_steps_like_nvml() -> None:
    node = _node()
    b = node.backend
    readings = []
    for _ in range(400):
        node.advance(0.005)
        readings.append(b.total_energy_mj(0))
    assert readings == sorted(readings)
    # NVML refreshes the counter every 20-100 ms; here every 50 ms, so over 2 s about 40
    # distinct values, each jump the energy of one update period.
    distinct = sorted(set(readings))
    assert 35 <= len(distinct) <= 45
    jumps = [b_ - a for a, b_ in itertools.pairwise(distinct)]
    assert min(jumps) > 0
    assert max(jumps) < 700 * 0.05 * 1000 * 1.05


def test_power_reading_is_a_one_second_average_on_h100() -> None:
    node = _node()
    b = node.backend
    node.advance(5.0)
    e0 = b.total_energy_mj(0)
    node.advance(1.0)
    avg = (b.total_energy_mj(0) - e0) / 1000
    assert b.power_usage_mw(0) / 1000 == pytest.approx(avg, rel=0.05)
    assert 75 < avg < 700


def test_idle_gpu_reports_idle() -> None:
    node = SimulatedNode.create(
        gpu="a100-sxm",
        workload=PoissonWorkload(0.2, FixedLengths(100, 10)),
        clock="virtual",
        seed=4,
    )
    b = node.backend
    node.advance(3600.0)
    # Find an idle moment: at 0.2 req/s the GPU is idle almost all the time.
    for _ in range(200):
        node.advance(0.1)
        if b.throttle_reasons(0) == ThrottleReason.GPU_IDLE:
            break
    assert b.throttle_reasons(0) == ThrottleReason.GPU_IDLE
    assert b.sm_clock_mhz(0) == 210
    assert b.power_usage_mw(0) < 100_000
    assert b.utilization(0).gpu_pct < 20


def test_utilization_under_load() -> None:
    node = _node()
    node.advance(5.0)
    u = node.backend.utilization(0)
    assert 60 < u.gpu_pct <= 100
    assert 30 < u.memory_pct <= 100


def test_tensor_parallel_group_runs_at_its_slowest_gpu() -> None:
    def step_ms(lock_one: bool) -> float:
        node = _node(model="llama-2-70b", load="prefill-heavy")
        if lock_one:
            node.backend.set_locked_sm_clocks_mhz(2, 990, 990)
        node.advance(2.0)
        return _mean_step_s(node, 10.0)

    node = _node(model="llama-2-70b", instances=2, load=None)
    assert [i.gpu_indices for i in node.instances] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert node.backend.device_count() == 8
    assert step_ms(True) > 1.3 * step_ms(False)


def test_memory_clock_on_h100_nvl_slows_memory_bound_steps() -> None:
    def step_ms(mem: int) -> float:
        node = _node("h100-nvl")
        node.backend.set_memory_clock_mhz(0, mem)
        node.advance(10.0)
        assert node.backend.memory_clock_mhz(0) == mem
        return _mean_step_s(node, 5.0)

    assert step_ms(1593) > 1.3 * step_ms(2619)


def test_idle_gpu_holds_a_locked_clock_and_pays_for_it() -> None:
    node = _node(load=None)
    b = node.backend
    node.advance(2.0)
    assert b.sm_clock_mhz(0) == 345
    assert b.power_usage_mw(0) == pytest.approx(75_000, rel=0.01)
    b.set_locked_sm_clocks_mhz(0, 1980, 1980)
    assert b.sm_clock_mhz(0) == 345  # the switch has not happened yet
    node.advance(2.0)
    assert b.sm_clock_mhz(0) == 1980
    assert b.throttle_reasons(0) == ThrottleReason.GPU_IDLE
    # Held voltage costs idle power: the reason an idle GPU should not sit at a high lock.
    assert 80_000 < b.power_usage_mw(0) < 130_000


def test_readings_right_after_creation_are_sane() -> None:
    b = _node("a100-sxm", load=None).backend
    assert b.power_usage_mw(0) == pytest.approx(63_000, rel=0.01)
    assert b.utilization(0).gpu_pct == 0
    assert b.throttle_reasons(0) == ThrottleReason.GPU_IDLE
    assert b.total_energy_mj(0) > 0
    assert b.power_limit_mw(0) == 400_000
