"""What a node says about itself, as the store keeps it: typed rows, no wire contract.

server/fleet/inventory.py builds these from an agent's Hello; storage never sees protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class GpuInventory:
    index: int
    uuid: str
    name: str
    supported_sm_clocks_mhz: tuple[int, ...]
    supported_memory_clocks_mhz: tuple[int, ...]
    default_sm_clock_mhz: int
    default_memory_clock_mhz: int
    power_limit_mw: int
    monitor_only_reason: str = ""  # empty: controllable


@dataclass(frozen=True, slots=True)
class InstanceInventory:
    name: str
    engine: str  # agft.engines name
    metrics_url: str
    model_name: str
    gpu_indices: tuple[int, ...]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeInventory:
    node_id: str
    hostname: str
    agent_version: str
    gpus: tuple[GpuInventory, ...]
    instances: tuple[InstanceInventory, ...]
    # The agent process speaking (0: an agent that numbers no windows).
    boot_id: int = 0

    def monitor_only_reason(self, instance: InstanceInventory) -> str:
        """Why the instance's GPUs cannot be locked, GPU by GPU (empty: they can)."""
        gpus = {g.index: g for g in self.gpus}
        return "; ".join(
            f"GPU {i}: {gpus[i].monitor_only_reason}"
            for i in instance.gpu_indices
            if i in gpus and gpus[i].monitor_only_reason
        )
