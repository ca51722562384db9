"""The API's view of an instance: what is stored, joined with what the live fleet knows."""

from __future__ import annotations

from typing import Any

from server.api.schemas import InstanceOut, LiveOut
from server.fleet.service import FleetService
from server.slo.spec import SloSpec


def _control(row: dict[str, Any], spec_text: str, controller: str) -> tuple[str, str]:
    note = f" ({row['mode_note']})" if row.get("mode_note") else ""
    by = f" by {row['mode_changed_by']}" if row.get("mode_changed_by") else ""
    if row.get("monitor_only_reason"):
        return "monitor-only", (
            f"the agent cannot lock its clocks: {row['monitor_only_reason']}; decisions are "
            "recorded, never sent"
        )
    mode = row["mode"]
    if mode == "observe":
        return mode, f"set to observe{by}{note}: {controller} decides, clocks stay at default"
    if mode == "pinned":
        return mode, f"pinned at {row['pinned_sm_clock_mhz']} MHz{by}{note}"
    if mode == "off":
        return mode, f"control off{by}{note}: default clocks"
    return mode, f"{controller} keeps {spec_text}"


def spec_in_force(row: dict[str, Any], fleet: FleetService) -> SloSpec:
    """The live controller's policy, or the one it would get on connecting."""
    live = fleet.live.get(row["id"])
    if live is not None and live[1].spec is not None:
        return live[1].spec
    return fleet.steering.spec_for(row["id"], row.get("labels") or {})


def instance_out(row: dict[str, Any], fleet: FleetService) -> InstanceOut:
    live = fleet.live.get(row["id"])
    runtime = live[1] if live is not None else None
    spec = spec_in_force(row, fleet)
    controller = runtime.policy.name if runtime is not None else spec.controller.split(":")[0]
    spec_text = (
        f"SLO policy {spec.name!r} ({spec.describe_scope()})"
        if spec.id is not None
        else "the server's default SLO"
    )
    control, reason = _control(row, spec_text, controller)
    live_out = None
    if runtime is not None:
        live_out = LiveOut(
            last_window_at=runtime.last_window_at,
            sm_clock_mhz=runtime.last_clock_mhz,
            power_w=runtime.last_power_w,
            energy_j=runtime.energy_total_j,
            controller=controller,
            slo_policy_id=spec.id,
            slo_scope=spec.describe_scope(),
            last_decided_at=runtime.last_window_at,  # each window is decided on arrival
            last_reason=runtime.last_reason,
            decisions=runtime.decisions,
        )
    return InstanceOut.model_validate(
        {**row, "control": control, "control_reason": reason, "live": live_out}
    )
