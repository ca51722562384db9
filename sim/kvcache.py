"""KV-cache capacity and block accounting of one engine (vLLM's paged KV cache).

vLLM sizes the cache after loading the weights and profiling a forward pass: whatever is left
of ``gpu_memory_utilization`` x device memory becomes fixed-size blocks of ``block_size``
tokens. Usage is blocks held / blocks total, which is what vllm:kv_cache_usage_perc reports.
"""

from __future__ import annotations

from sim.profiles import GpuProfile, ModelProfile

__all__ = ["KvCache", "kv_capacity_blocks"]

# Activations, CUDA graphs and the sampler's buffers that vLLM's profiling run reserves on
# each GPU besides the weights (a few GiB for 8k-token batches); our estimate.
ACTIVATION_RESERVE_GIB = 3.0


def kv_capacity_blocks(
    gpu: GpuProfile, model: ModelProfile, gpu_memory_utilization: float, block_size: int
) -> int:
    budget = gpu.memory_total_mib * 2**20 * gpu_memory_utilization
    free = budget - model.weight_bytes / model.tensor_parallel - ACTIVATION_RESERVE_GIB * 2**30
    per_block = block_size * model.kv_bytes_per_token / model.tensor_parallel
    blocks = int(free // per_block)
    if blocks < 1:
        raise ValueError(f"{model.key} does not fit on {gpu.key} x{model.tensor_parallel}")
    return blocks


class KvCache:
    """Free-block counter; the engine tracks which request holds how many blocks."""

    __slots__ = ("block_size", "free", "num_blocks")

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @property
    def usage(self) -> float:
        return (self.num_blocks - self.free) / self.num_blocks

    def allocate(self, n: int) -> None:
        if n > self.free:
            raise RuntimeError(f"KV cache over-allocated: want {n}, free {self.free}")
        self.free -= n

    def release(self, n: int) -> None:
        self.free += n
