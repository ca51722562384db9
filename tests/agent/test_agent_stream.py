"""The agent over real gRPC on loopback, against a scripted server: what it reports about
controllability, and what it refuses from whatever answers as the server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from agft.v1 import agent_pb2 as pb
from node_agent.agent import Agent
from node_agent.capability import MIG_ENABLED, NO_PERMISSION
from node_agent.config import AgentConfig, InstanceConfig
from node_agent.gpu.base import GpuBackend, GpuPermissionError, GpuUnavailableError
from tests.agent.scripted_server import ScriptedServer, scripted_server
from tests.fakes.backend import FakeBackend

ALL_METHODS = [
    name
    for name in dir(GpuBackend)
    if not name.startswith("_") and name not in ("device_count", "close")
]
DEAD_METRICS = "http://127.0.0.1:1/metrics"  # refused at once: serving windows are unavailable


def agent_config(server: str, gpus: int = 1, **overrides: object) -> AgentConfig:
    base = AgentConfig(
        server=server,
        node_id="stream-node",
        token="test-token",
        instances=tuple(InstanceConfig(f"vllm-{i}", DEAD_METRICS, (i,)) for i in range(gpus)),
        window_s=0.2,
        scrape_timeout_s=0.2,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        lease_check_s=0.02,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@asynccontextmanager
async def running(
    backend: GpuBackend, welcome: pb.Welcome | None = None, gpus: int = 1, **overrides: object
) -> AsyncIterator[tuple[Agent, ScriptedServer]]:
    async with scripted_server(welcome or pb.Welcome(window_s=0.2, lease_s=5)) as server:
        agent = Agent(agent_config(server.address, gpus, **overrides), backend)
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.connected.wait(), 10)
            yield agent, server
            assert not task.done(), "the agent stopped by itself"
        finally:
            agent.stop()
            await asyncio.wait_for(task, 10)


def set_clocks(instance: str, n: int, mhz: int = 1200, lease_s: float = 5.0) -> pb.SetClocks:
    return pb.SetClocks(
        command_id=f"c{n}",
        instance=instance,
        min_sm_clock_mhz=210,
        max_sm_clock_mhz=mhz,
        lease_s=lease_s,
    )


async def test_hello_says_which_gpus_are_monitor_only_and_why() -> None:
    backend = FakeBackend(gpus=3)
    backend.mig.add(1)
    backend.errors["reset_locked_sm_clocks", 2] = GpuPermissionError("Insufficient Permissions")
    async with running(backend, gpus=3) as (_agent, server):
        reasons = {g.index: g.monitor_only_reason for g in server.hellos[0].gpus}
        assert reasons == {0: "", 1: MIG_ENABLED, 2: NO_PERMISSION}
        server.send(set_clocks=set_clocks("vllm-1", 1))
        server.send(set_clocks=set_clocks("vllm-0", 2))
        await server.wait_for("ack", 2)
        refused, accepted = (m.ack for m in server.of_kind("ack"))
        assert not refused.ok and MIG_ENABLED in refused.error
        assert accepted.ok
        # Only GPU 0 was ever sent a lock.
        assert backend.calls["set_locked_sm_clocks_mhz"] == 1
        assert server.of_kind("control_status") == []  # nothing changed after Hello


async def test_permission_lost_mid_run_is_reported_once_and_never_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FakeBackend()
    async with running(backend) as (agent, server):
        server.send(set_clocks=set_clocks("vllm-0", 0))
        await server.wait_for("ack")
        assert backend.locks == {0: (210, 1200)}
        backend.errors["set_locked_sm_clocks_mhz", 0] = GpuPermissionError(
            "Insufficient Permissions"
        )
        for n in range(1, 61):
            server.send(set_clocks=set_clocks("vllm-0", n, mhz=900))
        await server.wait_for("ack", 61)
        acks = [m.ack for m in server.of_kind("ack")][1:]
        assert all(not a.ok and NO_PERMISSION in a.error for a in acks)
        assert backend.calls["set_locked_sm_clocks_mhz"] == 2  # the good one and one refusal
        status = server.of_kind("control_status")
        assert len(status) == 1
        assert [(g.index, g.monitor_only_reason) for g in status[0].control_status.gpus] == [
            (0, NO_PERMISSION)
        ]
        assert backend.locks == {} and agent.clocks.leases.get("vllm-0") is None
        lines = [r for r in caplog.records if "monitor-only from now on" in r.getMessage()]
        assert len(lines) == 1


@pytest.mark.parametrize("window_s", [-1.0, 1e-4, math.nan, math.inf, 1e9])
async def test_a_welcome_window_out_of_bounds_keeps_the_configured_rate(
    window_s: float, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    async with running(backend, pb.Welcome(window_s=window_s, lease_s=5)) as (agent, server):
        assert agent.window_s == 0.2
        await asyncio.sleep(1.0)
        telemetry = server.of_kind("telemetry")
    # 0.2 s windows for ~1 s: about 5; a spinning loop sends hundreds, a huge one none.
    assert 2 <= len(telemetry) <= 8, len(telemetry)
    assert any("outside [0.1, 60] s" in r.getMessage() for r in caplog.records)


async def test_a_welcome_window_in_bounds_is_used() -> None:
    async with running(FakeBackend(), pb.Welcome(window_s=0.1, lease_s=5)) as (agent, _server):
        assert agent.window_s == 0.1


async def test_an_unbounded_lease_is_logged_and_its_commands_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FakeBackend()
    async with running(backend, pb.Welcome(window_s=0.2, lease_s=1e9)) as (_agent, server):
        assert any("lease_s=1000000000.0" in r.getMessage() for r in caplog.records)
        for n, lease_s in enumerate([1e9, math.nan, -1.0, math.inf]):
            server.send(set_clocks=set_clocks("vllm-0", n, lease_s=lease_s))
        await server.wait_for("ack", 4)
        assert all(not m.ack.ok and "lease_s" in m.ack.error for m in server.of_kind("ack"))
        assert backend.calls["set_locked_sm_clocks_mhz"] == 0


async def test_a_gpu_lost_mid_run_is_unknown_in_windows_and_reported_monitor_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    backend = FakeBackend()
    async with running(backend) as (agent, server):
        server.send(set_clocks=set_clocks("vllm-0", 0))
        await server.wait_for("ack")
        lost = GpuUnavailableError("GPU is lost")
        for method in ALL_METHODS:
            backend.errors[method, None] = lost
        await server.wait_for("control_status")
        n = len(server.of_kind("telemetry"))
        await server.wait_for("telemetry", n + 2)
        last = server.of_kind("telemetry")[-1].telemetry.windows[0]
        gpu = last.gpus[0]
        for field in ("energy_j", "avg_power_w", "power_w", "sm_clock_mhz", "utilization_gpu_pct"):
            assert not gpu.HasField(field), field
        status = server.of_kind("control_status")
        assert len(status) == 1
        assert status[0].control_status.gpus[0].monitor_only_reason == (
            "GPU unavailable: GPU is lost"
        )
        # The lease was dropped with the GPU; later commands are refused at once.
        assert agent.clocks.leases.get("vllm-0") is None
        assert last.command_id == ""
        sets = backend.calls["set_locked_sm_clocks_mhz"]
        server.send(set_clocks=set_clocks("vllm-0", 1))
        await server.wait_for("ack", 2)
        assert not server.of_kind("ack")[-1].ack.ok
        assert backend.calls["set_locked_sm_clocks_mhz"] == sets


async def test_a_commands_message_is_applied_in_order_and_answered_with_one_acks() -> None:
    backend = FakeBackend(gpus=2)
    async with running(backend, gpus=2) as (agent, server):
        batch = pb.Commands()
        batch.commands.add(set_clocks=set_clocks("vllm-0", 1, mhz=1200))
        batch.commands.add(set_clocks=set_clocks("vllm-1", 2, mhz=1500))
        batch.commands.add(reset_clocks=pb.ResetClocks(command_id="c3", instance="vllm-0"))
        server.send(commands=batch)
        await server.wait_for("acks")
        (answer,) = server.of_kind("acks")
        assert [a.command_id for a in answer.acks.acks] == ["c1", "c2", "c3"]
        assert all(a.ok for a in answer.acks.acks)
        assert backend.locked_sm_clocks_mhz(0) is None  # locked, then reset, in that order
        assert backend.locked_sm_clocks_mhz(1) == (210, 1500)
        assert agent.acks_sent == 3
