"""Response shapes of the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


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
    first_seen_at: UtcDatetime
    last_seen_at: UtcDatetime
    gpus: list[GpuOut]


class LiveOut(BaseModel):
    """What the server knows of a connected instance now (from its last window)."""

    last_window_at: UtcDatetime | None = Field(description="when its last telemetry arrived")
    sm_clock_mhz: int | None = Field(description="the clock its GPUs ran at (slowest GPU)")
    power_w: float | None = Field(description="its GPUs' mean power over the last window")
    energy_j: float = Field(description="GPU energy measured since this connection began")
    controller: str
    slo_policy_id: int | None = Field(description="null: the server's default policy")
    slo_scope: str
    last_decided_at: UtcDatetime | None
    last_reason: str
    decisions: int = Field(description="decisions since this connection began")


class InstanceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    node_id: str
    name: str
    engine: str
    model_name: str
    metrics_url: str
    gpu_indices: list[int]
    labels: dict[str, str]
    connected: bool
    last_seen_at: UtcDatetime = Field(description="last telemetry (or Hello) stored")
    monitor_only_reason: str | None = None  # set: decided for, never commanded
    mode: str = Field(description="auto, observe, pinned or off, as an admin set it")
    pinned_sm_clock_mhz: int | None
    mode_note: str | None
    mode_changed_at: UtcDatetime | None
    mode_changed_by: str | None
    control: str = Field(
        description="what governs the clock now: auto, observe, pinned, off, or "
        "monitor-only when the agent cannot lock this instance's clocks"
    )
    control_reason: str = Field(description="why, in words")
    live: LiveOut | None = Field(description="null while its agent is not connected")


class DecisionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    instance_id: int
    decided_at: UtcDatetime
    window_start: UtcDatetime
    window_end: UtcDatetime
    policy: str = Field(description="the controller that decided")
    slo_policy_id: int | None = Field(description="the SLO policy in force; null: default")
    mode: str = Field(description="the instance's mode when it was decided")
    features: dict[str, Any]
    clock_in_force_mhz: int | None
    clock_chosen_mhz: int | None = Field(
        description="the clock this decision stands for: applied in auto and pinned; only "
        "what the controller would do in observe or when monitor-only; null: default"
    )
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
    status: str  # "ok" or "degraded"
    database: str
    writer: str  # "ok", or why persistence is not keeping up
    rows_queued: int
    rows_set_aside: int  # rows the database refused for good (see persist_failures)
    agents_connected: int
