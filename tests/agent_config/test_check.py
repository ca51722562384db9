"""`agft agent --check` and `--observe-s`: every value printed with its unit, problems and
warnings told apart, and no write ever reaching the GPU (the read-only wrapper)."""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agft_cli.main import main
from node_agent import check
from node_agent.capability import NO_PERMISSION
from node_agent.check import run_check
from node_agent.config import AgentConfig, InstanceConfig
from node_agent.gpu.base import GpuBackend, GpuIdentity, GpuPermissionError, ThrottleReason
from node_agent.gpu.nvml import NvmlBackend
from node_agent.gpu.readonly import ObserveOnlyError, ReadOnlyGpuBackend
from tests.fakes.backend import FakeBackend

# ---- a minimal pynvml: records every call; any Set*/Reset* fails the test ------------------


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml:
    NVMLError = NVMLError
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_UNINITIALIZED = 1
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, gpus: int = 2) -> None:
        self.gpus = gpus
        self.calls: list[str] = []
        self.fail: dict[str, int] = {}  # NVML function -> error code it raises
        self.mig: set[int] = set()
        self.throttle = 0x1 | 0x4  # GPU_IDLE | SW_POWER_CAP
        self.energy = 5_000_000

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("nvmlDeviceSet", "nvmlDeviceReset")):
            raise AssertionError(f"{name} reached NVML: a write during a read-only check")
        raise AttributeError(name)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise NVMLError(self.fail[name])

    def nvmlInit(self) -> None:
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        self._call("nvmlDeviceGetHandleByIndex")
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        self._call("nvmlDeviceGetUUID")
        return f"GPU-0000-{h}".encode()

    def nvmlDeviceGetName(self, h: int) -> str:
        self._call("nvmlDeviceGetName")
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetSupportedMemoryClocks(self, h: int) -> list[int]:
        self._call("nvmlDeviceGetSupportedMemoryClocks")
        return [2619, 1593]

    def nvmlDeviceGetSupportedGraphicsClocks(self, h: int, mem: int) -> list[int]:
        self._call("nvmlDeviceGetSupportedGraphicsClocks")
        return list(range(1980, 344, -15))

    def nvmlDeviceGetMaxClockInfo(self, h: int, kind: int) -> int:
        self._call("nvmlDeviceGetMaxClockInfo")
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        self._call("nvmlDeviceGetEnforcedPowerLimit")
        return 700_000

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self._call("nvmlDeviceGetTotalEnergyConsumption")
        self.energy += 17_500  # 70 W over the check's 0.25 s
        return self.energy

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._call("nvmlDeviceGetPowerUsage")
        return 71_250

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        self._call("nvmlDeviceGetClockInfo")
        return 345 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        self._call("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=0, memory=1)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        self._call("nvmlDeviceGetCurrentClocksEventReasons")
        return self.throttle

    def nvmlDeviceGetMigMode(self, h: int) -> tuple[int, int]:
        self._call("nvmlDeviceGetMigMode")
        return (1, 1) if h in self.mig else (0, 0)


@pytest.fixture
def metrics_url() -> Iterator[str]:
    """A vLLM-like /metrics endpoint on a loopback port."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = (
        b"# TYPE vllm:num_requests_running gauge\n"
        b'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        b"# TYPE vllm:num_requests_waiting gauge\n"
        b'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0\n'
        b"# TYPE vllm:kv_cache_usage_perc gauge\n"
        b'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/metrics"
    httpd.shutdown()


def config_for(url: str, gpus: tuple[int, ...] = (0, 1), **kw: Any) -> AgentConfig:
    if "token_file" not in kw:
        kw.setdefault("token", "test-token")
    return AgentConfig(
        server="127.0.0.1:1",  # nothing listens: a warning, not a problem
        node_id="gpu-node-7",
        instances=(InstanceConfig("vllm-0", url, gpus),),
        **kw,
    )


def checked(config: AgentConfig, backend: GpuBackend | None, **kw: Any) -> tuple[str, Any]:
    out = io.StringIO()
    result, _ = run_check(config, backend, source="test", needs_privilege=True, out=out, **kw)
    return out.getvalue(), result


# ---- the read-only wrapper ------------------------------------------------------------------


class Recording(FakeBackend):
    """FakeBackend whose writes fail the test if they are ever reached."""

    def set_locked_sm_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        raise AssertionError("set_locked_sm_clocks_mhz reached the backend")

    def reset_locked_sm_clocks(self, index: int) -> None:
        raise AssertionError("reset_locked_sm_clocks reached the backend")

    def set_locked_memory_clocks_mhz(self, index: int, min_mhz: int, max_mhz: int) -> None:
        raise AssertionError("set_locked_memory_clocks_mhz reached the backend")

    def reset_locked_memory_clocks(self, index: int) -> None:
        raise AssertionError("reset_locked_memory_clocks reached the backend")

    def set_power_limit_mw(self, index: int, mw: int) -> None:  # a write base does not have
        raise AssertionError("set_power_limit_mw reached the backend")

    def serial_number(self, index: int) -> str:  # a read base does not have
        return f"SN{index}"


def test_the_wrapper_refuses_every_write_without_calling_through() -> None:
    ro = ReadOnlyGpuBackend(Recording(gpus=2))
    writes: list[Callable[[], object]] = [
        lambda: ro.set_locked_sm_clocks_mhz(0, 210, 1980),
        lambda: ro.reset_locked_sm_clocks(1),
        lambda: ro.set_locked_memory_clocks_mhz(0, 1593, 1593),
        lambda: ro.reset_locked_memory_clocks(0),
        lambda: ro.set_power_limit_mw(0, 300_000),
    ]
    for write in writes:
        with pytest.raises(ObserveOnlyError) as info:
            write()
        assert isinstance(info.value, GpuPermissionError)  # the agent's permission path
        assert str(info.value).startswith("observe-only: ")
    assert ro.refused == [
        "set_locked_sm_clocks_mhz(0, 210, 1980)",
        "reset_locked_sm_clocks(1)",
        "set_locked_memory_clocks_mhz(0, 1593, 1593)",
        "reset_locked_memory_clocks(0)",
        "set_power_limit_mw(0, 300000)",
    ]


def test_the_wrapper_passes_every_read_through() -> None:
    inner = Recording(gpus=2)
    inner.mig.add(1)
    ro = ReadOnlyGpuBackend(inner)
    assert ro.device_count() == 2
    assert ro.identity(1) == GpuIdentity(1, "GPU-fake-1", "Fake H100")
    assert ro.supported_memory_clocks_mhz(0) == inner.supported_memory_clocks_mhz(0)
    assert ro.supported_sm_clocks_mhz(0, 2619)[0] == 1980
    assert ro.total_energy_mj(0) == inner.total_energy_mj(0)
    assert ro.mig_enabled(1) is True and ro.mig_enabled(0) is False
    assert ro.serial_number(0) == "SN0"  # a backend's own extra read
    assert ro.locked_sm_clocks_mhz(0) is None
    assert ro.refused == []


# ---- --check on NVML (a fake pynvml) -------------------------------------------------------


def test_check_prints_every_nvml_value_with_its_unit(metrics_url: str) -> None:
    nvml = FakeNvml(gpus=2)
    text, result = checked(config_for(metrics_url), NvmlBackend(nvml))
    gpu0 = text[text.index("GPU 0: ") : text.index("GPU 1: ")]
    for expected in (
        "GPU 0: NVIDIA H100 80GB HBM3 (GPU-0000-0), used by vllm-0",
        "supported memory clocks    2 clocks, 1593-2619 MHz",
        "supported SM clocks        110 clocks, 345-1980 MHz, 15 MHz steps (at memory 2619 MHz)",
        "default SM clock           1980 MHz",
        "default memory clock       2619 MHz",
        "power limit                700.0 W",
        "total energy               5,0",
        " mJ (counter since the driver loaded)",
        " mJ in 0.2",  # the counter moved between two reads
        "power (NVML average)       71.2 W",
        "SM clock                   345 MHz",
        "memory clock               2619 MHz",
        "utilisation                GPU 0 %, memory 1 %",
        "throttle reasons           GPU_IDLE, SW_POWER_CAP (0x5)",
        "MIG mode                   disabled",
        "power (instantaneous)      unavailable: GpuNotSupportedError",
    ):
        assert expected in gpu0, f"{expected!r} not in:\n{gpu0}"
    assert "scrape                     ok in " in text
    assert "3 running, 1 waiting, KV cache 25.0 %" in text
    assert result.ok, result.problems
    assert text.rstrip().splitlines()[-1].startswith("agft agent --check: ready (")
    assert not [c for c in nvml.calls if c.startswith(("nvmlDeviceSet", "nvmlDeviceReset"))]


def test_controllability_follows_mig_and_cap_sys_admin(
    metrics_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = FakeNvml(gpus=2)
    nvml.mig.add(1)
    monkeypatch.setattr(check, "cap_sys_admin", lambda: True)
    text, result = checked(config_for(metrics_url), NvmlBackend(nvml))
    gpu0, gpu1 = text.split("\nGPU 1: ", 1)
    assert (
        "clock control              controllable (this process has CAP_SYS_ADMIN; not probed"
        in gpu0
    )
    assert "MIG mode                   enabled" in gpu1
    assert "clock control              MONITOR-ONLY: MIG mode is enabled" in gpu1
    assert any("GPU 1: monitor-only: MIG mode" in w for w in result.warnings)
    assert result.ok  # a monitor-only GPU is a warning: the agent still runs

    monkeypatch.setattr(check, "cap_sys_admin", lambda: False)
    text, result = checked(config_for(metrics_url), NvmlBackend(FakeNvml(gpus=2)))
    assert f"MONITOR-ONLY: {NO_PERMISSION}" in text
    assert "this process lacks CAP_SYS_ADMIN; not probed: --check resets no clock" in text
    assert result.ok and len([w for w in result.warnings if "monitor-only" in w]) == 2


def test_a_failed_required_read_is_a_problem_and_an_optional_one_a_warning(
    metrics_url: str,
) -> None:
    nvml = FakeNvml(gpus=2)
    nvml.fail["nvmlDeviceGetTotalEnergyConsumption"] = FakeNvml.NVML_ERROR_NOT_SUPPORTED
    nvml.fail["nvmlDeviceGetUtilizationRates"] = FakeNvml.NVML_ERROR_NOT_SUPPORTED
    text, result = checked(config_for(metrics_url, gpus=(0,)), NvmlBackend(nvml))
    assert "total energy               FAILED: GpuNotSupportedError" in text
    assert "utilisation                unavailable: GpuNotSupportedError" in text
    # The backend names the NVML call that failed; the check keeps its words.
    assert len(result.problems) == 1
    assert result.problems[0].startswith("GPU 0: total energy: GpuNotSupportedError: ")
    assert result.problems[0].endswith("NVML error 3")
    # GPU 1 is used by no instance: its failed energy read is only a warning.
    assert any(
        w.startswith("GPU 1 (unused): total energy: GpuNotSupportedError: ")
        and w.endswith("NVML error 3")
        for w in result.warnings
    )
    assert text.rstrip().splitlines()[-1] == "agft agent --check: NOT READY: 1 problem, 3 warnings"


def test_a_gpu_the_node_does_not_have_is_a_problem(metrics_url: str) -> None:
    _, result = checked(config_for(metrics_url, gpus=(0, 5)), NvmlBackend(FakeNvml(gpus=2)))
    assert "instance vllm-0 uses GPU 5, but this node has 2 GPUs (0-1)" in result.problems


def test_no_nvml_is_a_problem_and_the_rest_is_still_checked(metrics_url: str) -> None:
    text, result = checked(config_for(metrics_url), None, backend_error="NVML: not found")
    assert result.problems == ["GPU backend: NVML: not found"]
    assert "scrape                     ok in " in text  # endpoints still checked


def test_an_unreachable_endpoint_is_a_problem() -> None:
    url = "http://127.0.0.1:9/metrics"  # discard port: nothing answers
    text, result = checked(config_for(url), NvmlBackend(FakeNvml()))
    assert "scrape                     FAILED after " in text
    assert any(p.startswith(f"instance vllm-0: {url}: ConnectError") for p in result.problems)


# ---- token and TLS files ---------------------------------------------------------------------


def test_a_token_file_is_checked_but_never_printed(metrics_url: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("agft_n0de_s3cret\n")
    token.chmod(0o600)
    text, result = checked(config_for(metrics_url, token_file=str(token)), NvmlBackend(FakeNvml()))
    assert f"token                      {token}: readable, 16 bytes (not shown), mode 0600" in text
    assert "s3cret" not in text
    assert result.ok and not [w for w in result.warnings if "token" in w]

    token.chmod(0o644)
    text, result = checked(config_for(metrics_url, token_file=str(token)), NvmlBackend(FakeNvml()))
    assert (
        "chmod 600" in text and f"token_file {token} is readable by other users" in result.warnings
    )


def test_an_unreadable_or_empty_token_file_is_a_problem(metrics_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    _, result = checked(config_for(metrics_url, token_file=str(missing)), NvmlBackend(FakeNvml()))
    assert result.problems == [f"token_file {missing}: cannot read: No such file or directory"]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    _, result = checked(config_for(metrics_url, token_file=str(empty)), NvmlBackend(FakeNvml()))
    assert result.problems == [f"token_file {empty} is empty"]


def test_an_inline_token_is_not_shown_and_no_token_is_a_problem(metrics_url: str) -> None:
    text, _ = checked(config_for(metrics_url, token="agft_n0de_s3cret"), NvmlBackend(FakeNvml()))
    assert "from AGFT_AGENT_TOKEN (16 characters, not shown)" in text and "s3cret" not in text
    _, result = checked(config_for(metrics_url, token=None), NvmlBackend(FakeNvml()))
    assert [p for p in result.problems if p.startswith("no node token: ")]


def test_plaintext_to_a_remote_server_is_a_problem(metrics_url: str) -> None:
    config = dataclasses.replace(config_for(metrics_url), server="agft.example.com:50051")
    text, result = checked(config, NvmlBackend(FakeNvml()))
    assert (
        "TLS                        FAILED: off, and agft.example.com:50051 is not on loopback"
        in text
    )
    assert any("set tls_ca_file" in p for p in result.problems)


def test_tls_files_must_be_pem(metrics_url: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    config = config_for(
        metrics_url, tls_ca_file=str(ca), tls_cert_file=str(ca), tls_key_file=str(key)
    )
    text, result = checked(config, NvmlBackend(FakeNvml()))
    assert f"TLS CA file                {ca}: readable" in text
    assert result.problems == [f"TLS client key {key} has no PEM private key"]


# ---- the command itself, on the simulated node ----------------------------------------------


def test_check_on_the_simulated_node_exits_0(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGFT_AGENT_TOKEN", "test-token")
    assert main(["agent", "--backend", "sim", "--check", "--server", "127.0.0.1:1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "agft agent --check: reads only; no clock, power limit or mode is changed"
    )
    for gpu in (0, 1):
        assert f"GPU {gpu}: NVIDIA H100 80GB HBM3" in out
    assert out.count("clock control              controllable (simulated GPU") == 2
    assert out.count("scrape                     ok in ") == 2
    assert out.rstrip().splitlines()[-1].startswith("agft agent --check: ready (")


def test_check_exits_1_on_problems(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "agent",
            "--check",
            "--server",
            "127.0.0.1:1",
            "--instance",
            "name=v,url=http://127.0.0.1:9/metrics,gpus=0",
        ]
    )
    assert code == 1
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.startswith("agft agent --check: NOT READY: ")


# ---- --observe-s: the real agent, on the wrapper, against a real server ------------------------


WRITES = (
    "set_locked_sm_clocks_mhz",
    "reset_locked_sm_clocks",
    "set_locked_memory_clocks_mhz",
    "reset_locked_memory_clocks",
)


async def test_observe_streams_telemetry_and_never_writes(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.running import running_server
    from tests.helpers.simnode import agent_config, sim_node

    node = sim_node("observe-node", instances=2)
    writes: list[str] = []
    for name in WRITES:
        monkeypatch.setattr(node.backend, name, lambda *a, name=name: writes.append(name))
    try:
        ro = ReadOnlyGpuBackend(node.backend)
        # A static policy at a low clock: the server would lock it if it could.
        async with running_server(sqlite_url, static_clock_mhz=1200) as srv:
            out = io.StringIO()
            config = dataclasses.replace(
                agent_config(node, srv.grpc_address, "observe-node"),
                token=srv.node_token("observe-node"),
            )
            ok = await check.observe(config, ro, 3.0, out=out)
        text = out.getvalue()
        assert ok, text
        assert "agft agent --observe-s: ok: connected and streamed telemetry" in text
        assert writes == [], "a write reached the GPU backend"
        assert ro.refused, "the agent's start-up reset was refused by the wrapper"
        for gpu in (0, 1):
            assert node.backend.locked_sm_clocks_mhz(gpu) is None
    finally:
        node.stop()


def test_cap_sys_admin_reads_this_process() -> None:
    status = Path("/proc/self/status").read_text()
    cap_eff = int(
        next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16
    )
    assert check.cap_sys_admin() is bool(cap_eff >> 21 & 1)
    assert os.geteuid() >= 0


def test_throttle_names_decode_every_reason() -> None:
    every = ThrottleReason(sum(ThrottleReason))
    text = check.throttle_names(every)
    for reason in ThrottleReason:
        if reason:
            assert reason.name is not None and reason.name in text
    assert check.throttle_names(ThrottleReason.NONE) == "none (0x0)"
