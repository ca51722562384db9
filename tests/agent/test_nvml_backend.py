"""NvmlBackend against the fake pynvml: reads and units, error mapping, clock lists, the
lock bookkeeping, old drivers and old pynvml, no driver, a lost GPU, MIG, permission."""

from __future__ import annotations

import asyncio
import sys

import pytest

from agft.v1 import agent_pb2 as pb
from node_agent.agent import Agent
from node_agent.capability import MIG_ENABLED, NO_PERMISSION, monitor_only_reason
from node_agent.config import AgentConfig, InstanceConfig
from node_agent.gpu.base import (
    GpuError,
    GpuInvalidArgumentError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuUnavailableError,
    ThrottleReason,
    Utilization,
)
from node_agent.gpu.nvml import NvmlBackend
from node_agent.window import GpuWindowSampler
from tests.agent.scripted_server import scripted_server
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml


def backend(*gpus: FakeGpu, **options: object) -> tuple[NvmlBackend, FakeNvml]:
    fake = FakeNvml(list(gpus) or [FakeGpu()], **options)  # type: ignore[arg-type]
    return NvmlBackend(nvml=fake.module), fake


# ---- reads, with units ------------------------------------------------------------------
def test_inventory_reads() -> None:
    b, _ = backend(FakeGpu(), FakeGpu(uuid="GPU-second", memory_clocks_mhz=[2619, 1593]))
    assert b.device_count() == 2
    ident = b.identity(1)
    assert (ident.index, ident.uuid, ident.name) == (1, "GPU-second", "NVIDIA H100 80GB HBM3")
    assert b.default_sm_clock_mhz(0) == 1980
    assert b.default_memory_clock_mhz(1) == 2619
    assert b.power_limit_mw(0) == 700_000
    assert b.supported_memory_clocks_mhz(1) == [2619, 1593]


def test_names_as_bytes_from_an_old_pynvml_become_text() -> None:
    b, _ = backend(bytes_names=True)
    ident = b.identity(0)
    assert ident.name == "NVIDIA H100 80GB HBM3" and isinstance(ident.name, str)
    assert ident.uuid.startswith("GPU-")


def test_telemetry_reads_keep_nvml_units() -> None:
    b, fake = backend()
    gpu = fake.gpus[0]
    assert b.total_energy_mj(0) == 123_456_789  # mJ
    assert b.power_usage_mw(0) == 312_500  # mW
    assert b.instant_power_mw(0) == 401_250  # mW
    assert b.sm_clock_mhz(0) == 1980 and b.memory_clock_mhz(0) == 2619  # MHz
    assert b.utilization(0) == Utilization(87.0, 41.0)
    assert b.throttle_reasons(0) == ThrottleReason.GPU_IDLE | ThrottleReason.SW_POWER_CAP
    gpu.reasons = 0x4 | (1 << 40)  # a bit this agent does not know is dropped, not an error
    assert b.throttle_reasons(0) == ThrottleReason.SW_POWER_CAP


def test_sampled_window_converts_to_watts_and_joules() -> None:
    b, fake = backend()
    now = [0.0]
    sampler = GpuWindowSampler(b, [0], lambda: now[0])
    sampler.prime()
    fake.gpus[0].energy_mj += 350_000
    now[0] = 1.0
    _, _, windows = sampler.sample()
    w = windows[0]
    assert (w.energy_j, w.avg_power_w, w.power_w) == (350.0, 350.0, 401.25)
    fake.gpus[0].instant_power_mw = None  # a GPU without the field: the averaged reading
    _, _, windows = GpuWindowSampler(b, [0], lambda: now[0]).sample()
    assert windows[0].power_w == 312.5


def test_supported_clocks_are_highest_first_whatever_nvml_order() -> None:
    scrambled = [900, 1980, 345, 1500, 1200]
    b, _ = backend(FakeGpu(sm_clocks_mhz=scrambled, memory_clocks_mhz=[1593, 2619]))
    assert b.supported_sm_clocks_mhz(0, 2619) == [1980, 1500, 1200, 900, 345]
    assert b.supported_memory_clocks_mhz(0) == [2619, 1593]
    with pytest.raises(GpuInvalidArgumentError):
        b.supported_sm_clocks_mhz(0, 1234)  # NVML_ERROR_NOT_FOUND: not a memory clock


def test_mig_mode() -> None:
    b, fake = backend(FakeGpu(mig=1), FakeGpu(mig=0), FakeGpu(mig=None))
    assert [b.mig_enabled(i) for i in range(3)] == [True, False, False]
    assert monitor_only_reason(b, 0) == MIG_ENABLED
    assert fake.calls.count("nvmlDeviceResetGpuLockedClocks") == 0


# ---- writes and the lock bookkeeping -----------------------------------------------------
def test_lock_bookkeeping_follows_what_nvml_accepted() -> None:
    b, fake = backend()
    assert b.locked_sm_clocks_mhz(0) is None
    b.set_locked_sm_clocks_mhz(0, 345, 1200)
    assert fake.gpus[0].locked_sm == (345, 1200)
    assert b.locked_sm_clocks_mhz(0) == (345, 1200)
    with pytest.raises(GpuInvalidArgumentError):
        b.set_locked_sm_clocks_mhz(0, 345, 1201)  # not a supported clock: never sent
    with pytest.raises(GpuInvalidArgumentError):
        b.set_locked_sm_clocks_mhz(0, 1200, 345)
    assert b.locked_sm_clocks_mhz(0) == (345, 1200)
    # A refused set keeps the record of the lock that is still in force.
    fake.gpus[0].permission = False
    with pytest.raises(GpuPermissionError):
        b.set_locked_sm_clocks_mhz(0, 345, 900)
    assert b.locked_sm_clocks_mhz(0) == (345, 1200)
    fake.gpus[0].permission = True
    b.reset_locked_sm_clocks(0)
    assert fake.gpus[0].locked_sm is None and b.locked_sm_clocks_mhz(0) is None


def test_memory_locks() -> None:
    b, fake = backend(FakeGpu(memory_clocks_mhz=[2619, 1593]))
    b.set_locked_memory_clocks_mhz(0, 1593, 1593)
    assert fake.gpus[0].locked_memory == (1593, 1593)
    with pytest.raises(GpuInvalidArgumentError):
        b.set_locked_memory_clocks_mhz(0, 1000, 1000)
    b.reset_locked_memory_clocks(0)
    assert fake.gpus[0].locked_memory is None


def test_no_permission_on_writes() -> None:
    b, _ = backend(FakeGpu(permission=False))
    with pytest.raises(GpuPermissionError, match="Insufficient Permissions"):
        b.set_locked_sm_clocks_mhz(0, 345, 1200)
    with pytest.raises(GpuPermissionError):
        b.reset_locked_sm_clocks(0)
    assert monitor_only_reason(b, 0) == NO_PERMISSION
    assert b.total_energy_mj(0) > 0  # reads need no privilege


def test_an_unknown_index_is_an_invalid_argument() -> None:
    b, _ = backend()
    with pytest.raises(GpuInvalidArgumentError):
        b.sm_clock_mhz(1)
    with pytest.raises(GpuInvalidArgumentError):
        b.locked_sm_clocks_mhz(-1)


# ---- error mapping -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "typed"),
    [
        ("NO_PERMISSION", GpuPermissionError),
        ("NOT_SUPPORTED", GpuNotSupportedError),
        ("FUNCTION_NOT_FOUND", GpuNotSupportedError),
        ("INVALID_ARGUMENT", GpuInvalidArgumentError),
        ("NOT_FOUND", GpuInvalidArgumentError),
        ("GPU_IS_LOST", GpuUnavailableError),
        ("UNINITIALIZED", GpuUnavailableError),
        ("DRIVER_NOT_LOADED", GpuUnavailableError),
        ("RESET_REQUIRED", GpuUnavailableError),
        ("TIMEOUT", GpuError),
        ("UNKNOWN", GpuError),
    ],
)
def test_every_nvml_error_maps_to_a_typed_error(code: str, typed: type[GpuError]) -> None:
    b, fake = backend()
    nvml_error = fake.module.NVMLError(getattr(fake.module, f"NVML_ERROR_{code}"))

    def failing(*_args: object) -> int:
        raise nvml_error

    setattr(fake.module, "nvmlDeviceGetPowerUsage", failing)  # noqa: B010 - a module attribute
    with pytest.raises(typed) as caught:
        b.power_usage_mw(0)
    assert type(caught.value) is typed  # exactly that type, not only a GpuError
    assert caught.value.__cause__ is nvml_error
    assert "nvmlDeviceGetPowerUsage" in str(caught.value)


def test_a_function_the_old_driver_lacks_is_not_supported() -> None:
    b, _ = backend(
        missing_functions=frozenset(
            {"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetFieldValues"}
        )
    )
    with pytest.raises(GpuNotSupportedError, match="Function Not Found"):
        b.total_energy_mj(0)  # pre-Volta: no energy counter
    with pytest.raises(GpuNotSupportedError):
        b.instant_power_mw(0)
    assert b.power_usage_mw(0) == 312_500  # the rest still works


def test_a_symbol_the_old_pynvml_lacks_is_not_supported() -> None:
    b, _ = backend(
        absent_symbols=frozenset(
            {
                "nvmlDeviceGetMigMode",
                "NVML_FI_DEV_POWER_INSTANT",
                "nvmlDeviceGetCurrentClocksEventReasons",
            }
        )
    )
    assert b.mig_enabled(0) is False
    with pytest.raises(GpuNotSupportedError):
        b.instant_power_mw(0)
    # The older name of the clocks-event-reasons call still answers.
    assert b.throttle_reasons(0) == ThrottleReason.GPU_IDLE | ThrottleReason.SW_POWER_CAP


def test_an_unreadable_instant_power_field_maps_its_own_status() -> None:
    b, fake = backend(FakeGpu(instant_power_mw=None))
    with pytest.raises(GpuNotSupportedError):
        b.instant_power_mw(0)
    assert fake.calls.count("nvmlDeviceGetFieldValues") == 1


# ---- no driver, no pynvml -----------------------------------------------------------------
def test_no_driver_says_what_to_do() -> None:
    with pytest.raises(GpuUnavailableError) as caught:
        backend(driver=False)
    message = str(caught.value)
    assert "no NVIDIA driver on this machine (NVML library not found)" in message
    assert "agft agent --backend sim" in message


def test_no_pynvml_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with pytest.raises(GpuUnavailableError, match="nvidia-ml-py"):
        NvmlBackend()


def test_the_real_pynvml_on_a_machine_without_a_gpu() -> None:
    pytest.importorskip("pynvml")
    try:
        real = NvmlBackend()
    except GpuUnavailableError as err:
        assert "--backend sim" in str(err)
    else:  # a GPU node: nothing to check here
        real.close()
        pytest.skip("NVML is present on this machine")


# ---- a GPU lost mid-run ------------------------------------------------------------------
def test_a_lost_gpu_makes_every_read_unavailable_and_the_window_unknown() -> None:
    b, fake = backend()
    sampler = GpuWindowSampler(b, [0], lambda: 0.0)
    sampler.prime()
    fake.gpus[0].lost = True
    _, _, windows = sampler.sample()
    w = windows[0]
    assert {f.name for f, _ in w.ListFields()} <= {"index"}  # all unknown, never 0
    assert sampler.unavailable and "GPU is lost" in sampler.unavailable[0]
    with pytest.raises(GpuUnavailableError):
        b.reset_locked_sm_clocks(0)


async def test_an_agent_on_nvml_survives_a_lost_gpu_and_reports_it_monitor_only() -> None:
    b, fake = backend(FakeGpu(), FakeGpu(uuid="GPU-second"))
    async with scripted_server(pb.Welcome(window_s=0.1, lease_s=5)) as server:
        config = AgentConfig(
            server=server.address,
            node_id="nvml-node",
            token="t",
            instances=(
                InstanceConfig("vllm-0", "http://127.0.0.1:1/metrics", (0,)),
                InstanceConfig("vllm-1", "http://127.0.0.1:1/metrics", (1,)),
            ),
            scrape_timeout_s=0.2,
            lease_check_s=0.02,
        )
        agent = Agent(config, b)
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.connected.wait(), 10)
        assert [g.monitor_only_reason for g in server.hellos[0].gpus] == ["", ""]
        server.send(
            set_clocks=pb.SetClocks(
                command_id="c0",
                instance="vllm-0",
                min_sm_clock_mhz=345,
                max_sm_clock_mhz=1200,
                lease_s=5,
            )
        )
        await server.wait_for("ack")
        assert fake.gpus[0].locked_sm == (345, 1200)
        fake.gpus[0].lost = True
        await server.wait_for("control_status", timeout_s=10)
        (status,) = server.of_kind("control_status")
        assert [(g.index, g.monitor_only_reason) for g in status.control_status.gpus] == [
            (0, "GPU unavailable: nvmlDeviceGetTotalEnergyConsumption: GPU is lost")
        ]
        n = len(server.of_kind("telemetry"))
        await server.wait_for("telemetry", n + 2)
        windows = server.of_kind("telemetry")[-1].telemetry.windows
        lost, healthy = windows[0].gpus[0], windows[1].gpus[0]
        assert not lost.HasField("energy_j") and not lost.HasField("sm_clock_mhz")
        assert healthy.HasField("sm_clock_mhz") and healthy.HasField("power_w")
        assert not task.done()
        agent.stop()
        await asyncio.wait_for(task, 10)
    # Shutdown reset the healthy GPU; the lost one could not be reached, and that is logged.
    assert fake.gpus[1].locked_sm is None
