"""Store rows for tests: one decision with every optional field empty, the rest given."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from server.store.rows import DecisionRow


def decision_row(
    instance_id: int, window_end: datetime, window_s: float = 1.0, **extra: Any
) -> DecisionRow:
    """A decision for the window ending at `window_end`, decided then; `extra` sets any
    other field (policy, energy_j, ...)."""
    row = DecisionRow(
        instance_id=instance_id,
        decided_at=window_end,
        window_start=window_end - timedelta(seconds=window_s),
        window_end=window_end,
        policy="agft",
        slo_policy_id=None,
        mode="auto",
        features={},
        clock_in_force_mhz=None,
        clock_chosen_mhz=None,
        reason="r",
        command_id=None,
        reward=None,
        energy_j=None,
        prompt_tokens=None,
        generation_tokens=None,
        ttft_p50_s=None,
        ttft_p90_s=None,
        itl_p50_s=None,
        itl_p90_s=None,
        default_energy_j=None,
    )
    return dataclasses.replace(row, **extra)
