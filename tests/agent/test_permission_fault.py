"""Fault test on real parts (server, gRPC on loopback, simulated node): NVML starts
refusing clock locks for lack of permission while the server keeps renewing one."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from node_agent.agent import Agent
from node_agent.capability import NO_PERMISSION
from node_agent.gpu.base import GpuPermissionError
from tests.fakes.backend import DelegatingBackend
from tests.helpers.running import running_server
from tests.helpers.simnode import agent_config, eventually, sim_node

FIXED_MHZ = 1410
LOWEST_MHZ = 345


async def test_a_permission_refusal_is_reported_once_and_leaves_no_lock(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="node_agent")
    node = await asyncio.to_thread(sim_node, "perm-node", 1)
    backend = DelegatingBackend(node.backend)
    try:
        async with running_server(
            database_url, window_s=0.2, lease_s=2.0, static_clock_mhz=FIXED_MHZ
        ) as srv:
            config = dataclasses.replace(
                agent_config(node, srv.grpc_address, "perm-node"),
                token=srv.node_token("perm-node"),
            )
            agent = Agent(config, backend)
            task = asyncio.create_task(agent.run())
            try:
                await eventually(
                    lambda: node.backend.locked_sm_clocks_mhz(0) == (LOWEST_MHZ, FIXED_MHZ),
                    20,
                    "the server's lock on GPU 0",
                )
                # The agent loses CAP_SYS_ADMIN's effect: every new lock is refused.
                backend.refuse_sets = GpuPermissionError("Insufficient Permissions")
                sets_before = backend.set_calls
                await eventually(lambda: agent.control_status_sent == 1, 10, "ControlStatus")
                await asyncio.sleep(2.0)  # ten more windows, each one a chance to retry
                assert backend.set_calls - sets_before == 1  # one refusal, no retry storm
                assert agent.control_status_sent == 1
                assert agent.clocks.monitor_only() == {0: NO_PERMISSION}
                assert node.backend.locked_sm_clocks_mhz(0) is None  # back at default
                assert agent.clocks.leases.get("vllm-0") is None
                assert not task.done()
            finally:
                agent.stop()
                await asyncio.wait_for(task, 10)
    finally:
        node.stop()
    lines = [r for r in caplog.records if "monitor-only from now on" in r.getMessage()]
    assert len(lines) == 1
