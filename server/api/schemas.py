"""Response shapes of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class GpuOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    index: int
    uuid: str
    name: str
    default_sm_clock_mhz: int
    default_memory_clock_mhz: int
    power_limit_mw: int
    supported_sm_clocks_mhz: list[int]


class NodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    node_id: str
    hostname: str
    agent_version: str
    connected: bool
    first_seen_at: datetime
    last_seen_at: datetime
    gpus: list[GpuOut]


class InstanceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    node_id: str
    name: str
    engine: str
    model_name: str
    metrics_url: str
    gpu_indices: list[int]
    connected: bool
    last_seen_at: datetime


class DecisionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    instance_id: int
    decided_at: datetime
    window_start: datetime
    window_end: datetime
    policy: str
    features: dict[str, Any]
    clock_in_force_mhz: int | None
    clock_chosen_mhz: int | None
    reason: str
    command_id: str | None
    reward: float | None
    energy_j: float | None
    prompt_tokens: float | None
    generation_tokens: float | None
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    itl_p50_s: float | None
    itl_p90_s: float | None


class DecisionPage(BaseModel):
    items: list[DecisionOut]
    # Pass as before_id to get the next (older) page; null on the last page.
    next_before_id: int | None


class Health(BaseModel):
    status: str
    database: str
    agents_connected: int
