"""From the wire to the store: an agent's Hello as the typed inventory storage keeps."""

from __future__ import annotations

from agft.engines import engine_from_wire
from agft.v1 import agent_pb2 as pb
from server.store.inventory import GpuInventory, InstanceInventory, NodeInventory


def inventory_of(hello: pb.Hello) -> NodeInventory:
    """hello has passed validation.check_hello."""
    return NodeInventory(
        node_id=hello.node_id,
        hostname=hello.hostname or hello.node_id,
        agent_version=hello.agent_version,
        gpus=tuple(
            GpuInventory(
                index=g.index,
                uuid=g.uuid,
                name=g.name,
                supported_sm_clocks_mhz=tuple(g.supported_sm_clocks_mhz),
                supported_memory_clocks_mhz=tuple(g.supported_memory_clocks_mhz),
                default_sm_clock_mhz=g.default_sm_clock_mhz,
                default_memory_clock_mhz=g.default_memory_clock_mhz,
                power_limit_mw=g.power_limit_mw,
                monitor_only_reason=g.monitor_only_reason,
            )
            for g in hello.gpus
        ),
        instances=tuple(
            InstanceInventory(
                name=i.name,
                engine=engine_from_wire(i.engine),
                metrics_url=i.metrics_url,
                model_name=i.model_name,
                gpu_indices=tuple(i.gpu_indices),
                labels=dict(i.labels),
            )
            for i in hello.instances
        ),
        boot_id=hello.boot_id,
    )
