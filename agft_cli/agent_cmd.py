"""`agft agent`: the node agent on NVML, or on a simulated GPU serving node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from pathlib import Path

from node_agent.agent import Agent
from node_agent.config import AgentConfig, ConfigError, load_config, parse_instance_spec
from node_agent.gpu.base import GpuBackend, GpuError


async def _run(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, agent.stop)
    await agent.run()


def run_agent(args: argparse.Namespace) -> int:
    node_id = args.node_id or socket.gethostname()
    server = args.server or "127.0.0.1:50051"
    sim_node = None
    try:
        backend: GpuBackend
        if args.backend == "sim":
            from agft_cli.simnode import agent_config_for, start_sim_node

            sim_node = start_sim_node(args, node_id, args.sim_instances, args.seed)
            backend = sim_node.backend
            config = agent_config_for(sim_node, server, node_id)
        else:
            from node_agent.gpu.nvml import NvmlBackend

            if args.config:
                config = load_config(Path(args.config), server=args.server, node_id=args.node_id)
            else:
                instances = tuple(parse_instance_spec(s) for s in args.instance)
                config = AgentConfig(server=server, node_id=node_id, instances=instances)
            if not config.instances:
                raise ConfigError("no serving instance configured (--instance or --config)")
            backend = NvmlBackend()
        asyncio.run(_run(Agent(config, backend)))
    except (ConfigError, GpuError) as err:
        print(f"agft agent: {err}")
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        if sim_node is not None:
            sim_node.stop()
    return 0
