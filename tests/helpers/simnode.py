"""Simulated GPU serving nodes wired to real agents, for loop tests."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from agft_cli.simnode import agent_config_for
from node_agent.agent import Agent
from node_agent.config import AgentConfig
from sim.node import SimulatedNode
from sim.workload import TraceWorkload, shipped_trace_path
from tests.helpers.running import RunningServer


def sim_node(name: str = "test-node", instances: int = 2, rate_scale: float = 1.0) -> SimulatedNode:
    workload = TraceWorkload.from_csv(shipped_trace_path("azure_conv_2023"), rate_scale=rate_scale)
    node = SimulatedNode.create(
        gpu="h100-sxm",
        model="llama-3.1-8b",
        instances=instances,
        workload=workload,
        clock="realtime",
        seed=0,
        node_name=name,
    )
    node.start()
    return node


def agent_config(
    node: SimulatedNode, server: str, node_id: str, front_door: str = "none"
) -> AgentConfig:
    """The demo's agent configuration, with fast reconnects and lease checks for tests."""
    return dataclasses.replace(
        agent_config_for(node, server, node_id, front_door),
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
        lease_check_s=0.05,
    )


@dataclass
class RunningAgent:
    agent: Agent
    node: SimulatedNode
    task: asyncio.Task[None]


@asynccontextmanager
async def running_agent(
    server: RunningServer,
    name: str = "test-node",
    instances: int = 2,
    front_door: str = "none",
    rate_scale: float = 1.0,
) -> AsyncIterator[RunningAgent]:
    """A simulated node and its agent, with a node token the server just made for it."""
    token = server.node_token(name)
    async with agent_at(server.grpc_address, name, token, instances, front_door, rate_scale) as ra:
        yield ra


@asynccontextmanager
async def agent_at(
    address: str,
    name: str,
    token: str,
    instances: int = 2,
    front_door: str = "none",
    rate_scale: float = 1.0,
) -> AsyncIterator[RunningAgent]:
    """A simulated node and its agent on a server address (which may come and go)."""
    node = await asyncio.to_thread(sim_node, name, instances, rate_scale)
    config = dataclasses.replace(agent_config(node, address, name, front_door), token=token)
    agent = Agent(config, node.backend)
    task = asyncio.create_task(agent.run())
    try:
        yield RunningAgent(agent, node, task)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)
        node.stop()


async def eventually(predicate: object, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll a sync or async predicate until it is true."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def free_port() -> int:
    """A loopback port nothing listens on now (for restarting a server on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
