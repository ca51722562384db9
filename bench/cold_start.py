"""How fast a controller learns, isolated from how the load changes.

decisions_to_90pct (bench/metrics.py) counts windows until the cumulative saving reaches
90 % of its final value, which mostly measures when the trace's load changes: 3,284 of
3,622 windows for agft on conv 2023. This compares the same controller twice over the
same first COLD_WINDOWS windows of the same arrivals: cold (a fresh state) and warm
(restored from the state it ended the whole run with). Both run as the server runs them,
calibration windows included, against the default run of the same windows. The figure is
the cold controller's saving over the warm one's, after the first AFTER_WINDOWS windows:
1.0 means it has nothing left to learn by then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.front_door import FrontDoorSetup
from bench.harness import PolicyRun, RunSpec, run_policy
from server.control.policy import Policy

COLD_WINDOWS = 600  # ten minutes of one-second windows
AFTER_WINDOWS = 300  # judged after five


@dataclass(frozen=True, slots=True)
class ColdStart:
    windows: int  # compared over windows [after, windows)
    after: int
    cold_saving_pct: float | None
    warm_saving_pct: float | None
    # Over every window from the first: what the cold controller's warm-up costs as well.
    cold_from_start_pct: float | None = None
    warm_from_start_pct: float | None = None

    @property
    def share(self) -> float | None:
        """The cold controller's saving over the warm one's (None: warm saves nothing)."""
        if self.cold_saving_pct is None or self.warm_saving_pct is None:
            return None
        if self.warm_saving_pct <= 0:
            return None
        return self.cold_saving_pct / self.warm_saving_pct


def short_spec(spec: RunSpec) -> RunSpec:
    return dataclasses.replace(spec, windows=min(spec.windows, COLD_WINDOWS))


def _saving(run: PolicyRun, reference: PolicyRun, after: int) -> float | None:
    used = float(np.sum(run.energy_j[after:]))
    base = float(np.sum(reference.energy_j[after:]))
    return 100.0 * (1.0 - used / base) if base > 0 else None


def cold_start(
    spec: RunSpec,
    make: Callable[[], Policy],
    trained_state: dict[str, Any],
    reference: PolicyRun,
    label: str,
    front_door: FrontDoorSetup | None = None,
) -> ColdStart:
    """reference: the default run of short_spec(spec)."""
    short = short_spec(spec)
    after = min(AFTER_WINDOWS, short.windows // 2)
    warm_policy = make()
    warm_policy.load_state(trained_state)
    warm_policy.resume()  # as the server resumes a saved state
    warm = run_policy(
        short, warm_policy, label=f"{label} (warm)", calibrate=True, front_door=front_door
    )
    cold = run_policy(short, make(), label=f"{label} (cold)", calibrate=True, front_door=front_door)
    return ColdStart(
        windows=short.windows,
        after=after,
        cold_saving_pct=_saving(cold, reference, after),
        warm_saving_pct=_saving(warm, reference, after),
        cold_from_start_pct=_saving(cold, reference, 0),
        warm_from_start_pct=_saving(warm, reference, 0),
    )
