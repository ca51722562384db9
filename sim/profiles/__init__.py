"""GPU and model profiles, loaded from the JSON data files beside this module.

Every constant in a profile file is an object ``{"value": ..., "source": "..."}`` so that
the origin of each number travels with it; the loader refuses a constant without a source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "GpuProfile",
    "ModelProfile",
    "ProfileError",
    "gpu_profile",
    "gpu_profile_names",
    "model_profile",
    "model_profile_names",
    "profile_sources",
]


class ProfileError(ValueError):
    """A profile name that does not exist, or a profile file that is malformed."""


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """One GPU model: inventory, clocks, roofline and power constants."""

    key: str
    nvml_name: str
    memory_total_mib: int
    sm_clock_max_mhz: int
    sm_clock_min_mhz: int
    sm_clock_step_mhz: int
    idle_sm_clock_mhz: int
    memory_clocks_mhz: tuple[int, ...]
    tdp_w: float
    idle_w: float
    peak_tflops: float
    hbm_bandwidth_gbs: float
    memory_efficiency: float
    compute_efficiency: float
    roofline_p: float
    memory_knee_mhz: float
    knee_sharpness: float
    voltage_floor_mhz: float
    power_active_w: float
    power_sm_w: float
    power_mem_w: float
    power_link_w: float
    idle_clock_w: float
    allreduce_bus_gbs: float
    allreduce_latency_us: float
    clock_switch_base_ms: float
    clock_switch_per_ghz_ms: float
    energy_update_ms: float
    power_reading: str
    vllm_max_num_batched_tokens: int
    vllm_max_num_seqs: int

    @property
    def default_memory_clock_mhz(self) -> int:
        return max(self.memory_clocks_mhz)

    def supported_sm_clocks_mhz(self) -> list[int]:
        """The 15 MHz grid, highest first (NVML order)."""
        return list(
            range(self.sm_clock_max_mhz, self.sm_clock_min_mhz - 1, -self.sm_clock_step_mhz)
        )


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """One served model at a fixed tensor-parallel degree."""

    key: str
    hf_id: str
    tensor_parallel: int
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    total_params: float
    dtype_bytes: int
    max_model_len: int
    step_overhead_ms: float
    per_seq_overhead_us: float

    @property
    def linear_params(self) -> float:
        """Parameters of the per-layer matmuls (QKV, O, gate/up/down), all layers."""
        h = self.hidden_size
        qkv = h * (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        o = self.num_heads * self.head_dim * h
        mlp = 3 * h * self.intermediate_size
        return float(self.num_layers * (qkv + o + mlp))

    @property
    def lm_head_params(self) -> float:
        return float(self.hidden_size * self.vocab_size)

    @property
    def weight_bytes(self) -> float:
        return self.total_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V for one token across all layers (all TP ranks together)."""
        return float(2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes)


def _load(kind: str, name: str) -> dict[str, Any]:
    path = resources.files(__package__).joinpath(kind, f"{name}.json")
    if not path.is_file():
        raise ProfileError(f"unknown {kind[:-1]} profile {name!r}; known: {_names(kind)}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("constants"), dict):
        raise ProfileError(f"{kind}/{name}.json: no 'constants' object")
    return data


def _names(kind: str) -> list[str]:
    root = resources.files(__package__).joinpath(kind)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def _values(kind: str, name: str, cls: type) -> dict[str, Any]:
    consts: dict[str, Any] = _load(kind, name)["constants"]
    wanted = {f.name for f in fields(cls)} - {"key"}
    missing = wanted - consts.keys()
    extra = consts.keys() - wanted
    if missing or extra:
        raise ProfileError(
            f"{kind}/{name}.json: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    out: dict[str, Any] = {"key": name}
    for k, entry in consts.items():
        if not isinstance(entry, dict) or "value" not in entry or not entry.get("source"):
            raise ProfileError(f"{kind}/{name}.json: constant {k!r} needs a value and a source")
        v = entry["value"]
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


@cache
def gpu_profile(name: str) -> GpuProfile:
    return GpuProfile(**_values("gpus", name, GpuProfile))


@cache
def model_profile(name: str) -> ModelProfile:
    return ModelProfile(**_values("models", name, ModelProfile))


def gpu_profile_names() -> list[str]:
    return _names("gpus")


def model_profile_names() -> list[str]:
    return _names("models")


def profile_sources(kind: str, name: str) -> dict[str, str]:
    """Constant name -> its cited source, for docs and tests."""
    consts: dict[str, Any] = _load(kind, name)["constants"]
    return {k: str(v["source"]) for k, v in consts.items()}
