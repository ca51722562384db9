"""The agent's clock application on a simulated GPU: TP groups, bad clocks, leases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agft.v1 import agent_pb2 as pb
from node_agent.clocks import ClockController
from node_agent.gpu.base import GpuError
from sim.node import SimulatedNode
from tests.fakes.backend import FakeBackend
from tests.helpers.simnode import sim_node


@pytest.fixture
def node1() -> Iterator[SimulatedNode]:
    node = sim_node(instances=1)
    yield node
    node.stop()


@pytest.fixture
def node2() -> Iterator[SimulatedNode]:
    node = sim_node(instances=2)
    yield node
    node.stop()


def lock(command_id: str, instance: str, mhz: int, lease_s: float) -> pb.SetClocks:
    """A SetClocks pinning one clock, as a test command."""
    return pb.SetClocks(
        command_id=command_id,
        instance=instance,
        min_sm_clock_mhz=mhz,
        max_sm_clock_mhz=mhz,
        lease_s=lease_s,
    )


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_clock_outside_supported_list_is_refused_and_nothing_changes(node1: SimulatedNode) -> None:
    clocks = ClockController(node1.backend, {"vllm-0": (0,)})
    ack = clocks.set_clocks(lock("c1", "vllm-0", 1234, lease_s=5))
    assert not ack.ok
    assert "1234" in ack.error
    assert node1.backend.locked_sm_clocks_mhz(0) is None
    assert clocks.leases.get("vllm-0") is None


def test_unknown_instance_is_refused(node1: SimulatedNode) -> None:
    clocks = ClockController(node1.backend, {"vllm-0": (0,)})
    ack = clocks.reset_clocks(pb.ResetClocks(command_id="c2", instance="nope"))
    assert not ack.ok and "nope" in ack.error


def test_lease_runs_out_on_the_agents_clock(node1: SimulatedNode) -> None:
    mono = FakeMonotonic()
    clocks = ClockController(node1.backend, {"vllm-0": (0,)}, monotonic=mono)
    ack = clocks.set_clocks(lock("c3", "vllm-0", 1200, lease_s=2.0))
    assert ack.ok
    assert ack.applied[0].locked_max_sm_clock_mhz == 1200
    mono.now += 1.9
    assert clocks.expire_leases() == []
    assert node1.backend.locked_sm_clocks_mhz(0) == (1200, 1200)
    mono.now += 0.2
    assert [lease.instance for lease in clocks.expire_leases()] == ["vllm-0"]
    assert node1.backend.locked_sm_clocks_mhz(0) is None


def test_renewal_extends_the_lease(node1: SimulatedNode) -> None:
    mono = FakeMonotonic()
    clocks = ClockController(node1.backend, {"vllm-0": (0,)}, monotonic=mono)
    cmd = lock("c4", "vllm-0", 1200, lease_s=2.0)
    clocks.set_clocks(cmd)
    mono.now += 1.5
    clocks.set_clocks(cmd)
    mono.now += 1.5
    assert clocks.expire_leases() == []
    assert node1.backend.locked_sm_clocks_mhz(0) == (1200, 1200)


def test_an_unsupported_clock_is_refused_before_any_gpu_is_touched(node2: SimulatedNode) -> None:
    clocks = ClockController(node2.backend, {"tp": (0, 1)})
    ok = clocks.set_clocks(lock("a", "tp", 1200, lease_s=5))
    assert ok.ok and [a.gpu_index for a in ok.applied] == [0, 1]
    bad = clocks.set_clocks(lock("b", "tp", 1201, lease_s=5))
    assert not bad.ok and "1201" in bad.error
    # The earlier lock and the lease covering it stand, untouched.
    assert node2.backend.locked_sm_clocks_mhz(0) == (1200, 1200)
    assert node2.backend.locked_sm_clocks_mhz(1) == (1200, 1200)
    lease = clocks.leases.get("tp")
    assert lease is not None and lease.command_id == "a"


def test_a_gpu_refusing_the_lock_resets_the_whole_tp_group() -> None:
    backend = FakeBackend(gpus=2)
    clocks = ClockController(backend, {"tp": (0, 1)})
    assert clocks.set_clocks(lock("a", "tp", 1200, lease_s=5)).ok
    # GPU 1 refuses for a reason retrying may cure: the group is reset, GPU stays ours.
    backend.errors["set_locked_sm_clocks_mhz", 1] = GpuError("Timeout")
    bad = clocks.set_clocks(lock("b", "tp", 900, lease_s=5))
    assert not bad.ok and "GPU 1" in bad.error and "Timeout" in bad.error
    # No GPU of the group keeps a lock that no lease covers.
    assert backend.locks == {}
    assert clocks.leases.get("tp") is None
    assert clocks.monitor_only() == {}
