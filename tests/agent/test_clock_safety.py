"""ClockController: monitor-only GPUs, bounds on received commands, expiry vs commands."""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest

from agft.v1 import agent_pb2 as pb
from node_agent.capability import MIG_ENABLED, NO_PERMISSION
from node_agent.clocks import ClockController
from node_agent.gpu.base import GpuNotSupportedError, GpuPermissionError, GpuUnavailableError
from tests.fakes.backend import FakeBackend

WRITES = ("set_locked_sm_clocks_mhz", "set_locked_memory_clocks_mhz")


def lock(
    instance: str = "vllm-0",
    mhz: int = 1200,
    lease_s: float = 5.0,
    command_id: str = "c",
    min_mhz: int | None = None,
) -> pb.SetClocks:
    return pb.SetClocks(
        command_id=command_id,
        instance=instance,
        min_sm_clock_mhz=mhz if min_mhz is None else min_mhz,
        max_sm_clock_mhz=mhz,
        lease_s=lease_s,
    )


class Mono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def monitor_only_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "monitor-only" in r.getMessage()
    ]


def test_a_mig_gpu_found_at_start_is_never_sent_a_lock() -> None:
    backend = FakeBackend(gpus=2)
    backend.mig.add(1)
    clocks = ClockController(backend, {"a": (0,), "tp": (1,)})
    assert clocks.start() == {1: MIG_ENABLED}
    before = backend.calls.copy()
    ack = clocks.set_clocks(lock("tp"))
    assert not ack.ok
    assert MIG_ENABLED in ack.error and "GPU 1" in ack.error
    # Refused from what the agent knows: no NVML call at all, not even a read.
    assert backend.calls == before
    assert clocks.set_clocks(lock("a")).ok


def test_a_permission_refusal_mid_run_is_logged_once_and_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="node_agent")
    backend = FakeBackend(gpus=3)
    clocks = ClockController(backend, {"tp": (0, 1), "other": (2,)})
    clocks.start()
    assert clocks.set_clocks(lock("tp", 1500)).ok
    # The capability is dropped (a container restarted without CAP_SYS_ADMIN, say).
    backend.errors["set_locked_sm_clocks_mhz", 1] = GpuPermissionError("Insufficient Permissions")
    sets_before = backend.calls["set_locked_sm_clocks_mhz"]
    acks = [clocks.set_clocks(lock("tp", 1200, command_id=f"c{n}")) for n in range(200)]
    assert all(not a.ok for a in acks)
    assert all("GPU 1 is monitor-only" in a.error and NO_PERMISSION in a.error for a in acks)
    # One try reached NVML (GPU 0 took it, GPU 1 refused); the other 199 went nowhere.
    assert backend.calls["set_locked_sm_clocks_mhz"] - sets_before == 2
    assert len(monitor_only_lines(caplog)) == 1
    # The group went back to default and holds no lease.
    assert 0 not in backend.locks and 1 not in backend.locks
    assert clocks.leases.get("tp") is None
    assert clocks.monitor_only() == {1: NO_PERMISSION}
    # An instance on a GPU that still obeys is unaffected.
    assert clocks.set_clocks(lock("other", 900)).ok


def test_a_gpu_lost_on_a_set_becomes_monitor_only() -> None:
    backend = FakeBackend()
    clocks = ClockController(backend, {"vllm-0": (0,)})
    backend.errors["set_locked_sm_clocks_mhz", None] = GpuUnavailableError("GPU is lost")
    ack = clocks.set_clocks(lock())
    assert not ack.ok and "GPU is lost" in ack.error
    assert clocks.monitor_only() == {0: "GPU unavailable: GPU is lost"}


def test_a_gpu_without_memory_locks_keeps_sm_control() -> None:
    backend = FakeBackend()
    backend.errors["set_locked_memory_clocks_mhz", None] = GpuNotSupportedError("Not Supported")
    backend.errors["reset_locked_memory_clocks", None] = GpuNotSupportedError("Not Supported")
    clocks = ClockController(backend, {"vllm-0": (0,)})
    assert clocks.start() == {}
    cmd = lock()
    cmd.memory_clock_mhz = 1593
    assert not clocks.set_clocks(cmd).ok
    assert clocks.monitor_only() == {}
    assert clocks.set_clocks(lock()).ok
    # Nothing to undo on the memory side is not a failed reset.
    assert clocks.reset_clocks(pb.ResetClocks(command_id="r", instance="vllm-0")).ok


@pytest.mark.parametrize("lease_s", [math.nan, math.inf, -math.inf, 1e9, -1.0, 0.0, 60.001])
def test_a_lease_outside_the_bounds_is_refused_untouched(lease_s: float) -> None:
    backend = FakeBackend()
    clocks = ClockController(backend, {"vllm-0": (0,)}, max_lease_s=60.0)
    ack = clocks.set_clocks(lock(lease_s=lease_s))
    assert not ack.ok and "lease_s" in ack.error
    assert not any(backend.calls[w] for w in WRITES)
    assert backend.locks == {} and clocks.leases.get("vllm-0") is None


def test_the_longest_allowed_lease_is_accepted() -> None:
    mono = Mono()
    clocks = ClockController(FakeBackend(), {"vllm-0": (0,)}, monotonic=mono, max_lease_s=60.0)
    assert clocks.set_clocks(lock(lease_s=60.0)).ok
    lease = clocks.leases.get("vllm-0")
    assert lease is not None and lease.expires_at == 160.0


@pytest.mark.parametrize(
    ("cmd", "words"),
    [
        (lock(mhz=1201, min_mhz=210), "max SM clock 1201"),
        (lock(mhz=1200, min_mhz=1199), "min SM clock 1199"),
        (lock(mhz=900, min_mhz=1200), "above max"),
        (lock(mhz=4_000_000_000), "4000000000"),
        (pb.SetClocks(command_id="m", instance="vllm-0", min_sm_clock_mhz=210,
                      max_sm_clock_mhz=1200, lease_s=5, memory_clock_mhz=1000),
         "memory clock 1000"),
    ],
)  # fmt: skip
def test_clocks_outside_the_supported_lists_are_refused_untouched(
    cmd: pb.SetClocks, words: str
) -> None:
    backend = FakeBackend(gpus=2)
    clocks = ClockController(backend, {"vllm-0": (0, 1)})
    ack = clocks.set_clocks(cmd)
    assert not ack.ok and words in ack.error
    assert not any(backend.calls[w] for w in WRITES)


def test_supported_clocks_are_read_once_per_gpu() -> None:
    backend = FakeBackend()
    clocks = ClockController(backend, {"vllm-0": (0,)})
    for _ in range(10):
        assert clocks.set_clocks(lock()).ok
    assert backend.calls["supported_sm_clocks_mhz"] == 1


def test_expiry_cannot_interleave_with_a_command_on_the_same_instance() -> None:
    """An expiry that ran while a renewal was half applied could reset the GPU under the
    new lease, or pop the lease a lock still needs; the two must take turns."""
    mono = Mono()
    backend = FakeBackend(gpus=2)
    clocks = ClockController(backend, {"tp": (0, 1)}, monotonic=mono)
    assert clocks.set_clocks(lock("tp", 1500, lease_s=1.0, command_id="old")).ok
    mono.now += 2.0  # the old lease has run out; the renewal arrives just now
    inside, release = threading.Event(), threading.Event()

    def hold_second_gpu(index: int) -> None:
        if index == 1:
            inside.set()
            assert release.wait(5)

    backend.hooks["set_locked_sm_clocks_mhz"] = hold_second_gpu
    acks: list[pb.CommandAck] = []
    renew = threading.Thread(target=lambda: acks.append(clocks.set_clocks(lock("tp", 900))))
    renew.start()
    assert inside.wait(5)  # GPU 0 is at 900 MHz, GPU 1 not yet, no new lease yet
    expiry = threading.Thread(target=clocks.expire_leases)
    expiry.start()
    time.sleep(0.2)
    assert expiry.is_alive(), "expiry ran in the middle of a command"
    release.set()
    renew.join(5)
    expiry.join(5)
    assert acks and acks[0].ok
    # Whatever the order, the locks in force are exactly those a live lease covers.
    lease = clocks.leases.get("tp")
    assert lease is not None and lease.command_id == "c"
    assert backend.locks == {0: (900, 900), 1: (900, 900)}


def test_reset_all_resets_every_gpu_even_if_one_fails_oddly() -> None:
    backend = FakeBackend(gpus=2)
    clocks = ClockController(backend, {"a": (0,), "b": (1,)})
    assert clocks.set_clocks(lock("a")).ok and clocks.set_clocks(lock("b")).ok
    backend.errors["reset_locked_sm_clocks", 0] = RuntimeError("driver bug")
    clocks.reset_all("test")
    assert backend.locks == {0: (1200, 1200)}  # GPU 0 could not be helped, GPU 1 was
    assert clocks.leases.active() == []
