"""Start a simulated GPU serving node for the agent and the demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from node_agent.config import AgentConfig, InstanceConfig
from node_agent.serving.front_door import IN_FLIGHT, QUEUED, FrontDoorSpec
from sim.node import SimInstance, SimulatedNode
from sim.workload import TraceWorkload, shipped_trace_path


def start_sim_node(
    args: argparse.Namespace, node_name: str, instances: int, seed: int
) -> SimulatedNode:
    trace = Path(args.trace) if args.trace else shipped_trace_path("azure_conv_2023")
    workload = TraceWorkload.from_csv(trace, rate_scale=args.rate_scale)
    node = SimulatedNode.create(
        gpu=args.gpu,
        model=args.model,
        instances=instances,
        workload=workload,
        clock="realtime",
        seed=seed,
        node_name=node_name,
    )
    node.start()
    return node


def front_door_for(instance: SimInstance, source: str) -> FrontDoorSpec | None:
    """The simulated instance's front door: none, its GET /load, or its router gauge."""
    if source == "load":
        return FrontDoorSpec(IN_FLIGHT, instance.load_url)
    if source == "router":
        return FrontDoorSpec(QUEUED, instance.router_metrics_url, "dynamo_frontend_queued_requests")
    return None


def agent_config_for(
    node: SimulatedNode, server: str, node_id: str, front_door: str = "none"
) -> AgentConfig:
    return AgentConfig(
        server=server,
        node_id=node_id,
        instances=tuple(
            InstanceConfig(
                name=i.name,
                metrics_url=i.metrics_url,
                gpu_indices=tuple(i.gpu_indices),
                engine=i.engine,
                model_name=i.model_name,
                # Two pools, so pool SLO policies have something to select in the demo.
                labels=(("pool", "chat" if k % 2 == 0 else "batch"),),
                front_door=front_door_for(i, front_door),
            )
            for k, i in enumerate(node.instances)
        ),
    )
