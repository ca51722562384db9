"""best-static: the one fixed clock that, in hindsight, saves most while meeting the SLO.

"Meeting" (metrics.meets_slo): SLO attainment at least default's minus one point, and p90
TTFT and TPOT within the objectives. Clocks are tried from the top down; once two clocks in
a row fail, lower ones are not tried (latency only grows as the clock falls). With several
worker processes, clocks run a batch at a time, so a batch may run one clock past the stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.harness import PolicyRun
from bench.metrics import meets_slo, summarise
from server.control.policy import SloTargets

_FAILURES_TO_STOP = 2


@dataclass(frozen=True, slots=True)
class GridPoint:
    clock_mhz: int
    summary: dict[str, Any]
    meets: bool
    wall_s: float


@dataclass(frozen=True, slots=True)
class BestStatic:
    run: PolicyRun | None  # None: no clock of the grid met the SLO
    clock_mhz: int | None
    grid: list[GridPoint]

    @property
    def wall_s(self) -> float:
        """The whole search: every clock run."""
        return sum(p.wall_s for p in self.grid)


def search(
    grid_mhz: list[int],
    run_static: Callable[[list[int]], list[PolicyRun]],
    reference: PolicyRun,
    slo: SloTargets,
    batch: int = 1,
) -> BestStatic:
    """Walk the grid down, running `batch` clocks at a time (in parallel, if run_static can)."""
    ref_summary = summarise(reference, reference, slo)
    points: list[GridPoint] = []
    best: tuple[float, int, PolicyRun] | None = None
    failures = 0
    clocks = sorted(grid_mhz, reverse=True)
    for i in range(0, len(clocks), max(1, batch)):
        chunk = clocks[i : i + max(1, batch)]
        for clock, run in zip(chunk, run_static(chunk), strict=True):
            summary = summarise(run, reference, slo)
            ok = meets_slo(summary, ref_summary, slo)
            points.append(GridPoint(clock, summary, ok, run.wall_s))
            failures = 0 if ok else failures + 1
            if ok and (best is None or summary["energy_j"] < best[0]):
                best = (summary["energy_j"], clock, run)
            if failures >= _FAILURES_TO_STOP:
                break
        if failures >= _FAILURES_TO_STOP:
            break
    if best is None:
        return BestStatic(None, None, points)
    return BestStatic(best[2], best[1], points)
