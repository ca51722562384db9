"""Per-policy figures of a run, against the default-clock run of the same requests.

Definitions (docs/BENCHMARK.md explains each):
* TTFT = first token - arrival; TPOT = (finish - first token) / (output tokens - 1), for
  requests with more than one output token; percentiles over completed requests
  (numpy's linear interpolation);
* SLO attainment: share of the run's arrivals that completed with TTFT <= the TTFT
  objective and (for multi-token outputs) TPOT <= the TPOT objective; an unfinished
  request counts as a miss;
* delay for EDP: mean end-to-end latency of completed requests;
* decisions_to_90pct: the first decision after which the cumulative saving against the
  default run at equal virtual time stays at or above 90 % of the final saving.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.harness import PolicyRun
from server.control.policy import SloTargets
from sim.engine import RequestRecord

# Fields that measure this machine, not the policy: excluded from determinism checks.
NONDETERMINISTIC_FIELDS = ("decide_cpu_ms", "wall_s")


def _percentiles(values: NDArray[np.float64]) -> tuple[float | None, float | None, float | None]:
    if len(values) == 0:
        return None, None, None
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return float(p50), float(p90), float(p99)


def _pct_change(value: float, reference: float) -> float | None:
    return None if reference == 0 else 100.0 * (value / reference - 1.0)


def clock_switches(run: PolicyRun) -> int:
    """Commands that changed the clock: consecutive decisions that differ (start: default)."""
    previous: int | None = None
    switches = 0
    for chosen in run.clock_chosen_mhz:
        if chosen != previous:
            switches += 1
        previous = chosen
    return switches


def decisions_to_90pct(run: PolicyRun, reference: PolicyRun) -> int | None:
    """Decisions (one per window) until the cumulative saving stays >= 90 % of the final one.

    None when the final saving is not positive (there is nothing to converge to).
    """
    own = np.cumsum(np.asarray(run.energy_j, dtype=np.float64))
    ref = np.cumsum(np.asarray(reference.energy_j, dtype=np.float64))
    n = min(len(own), len(ref))
    if n == 0:
        return None
    own, ref = own[:n], ref[:n]
    with np.errstate(divide="ignore", invalid="ignore"):
        saving = np.where(ref > 0, 1.0 - own / ref, 0.0)
    final = float(saving[-1])
    if final <= 0:
        return None
    below = np.nonzero(saving < 0.9 * final)[0]
    # Window m (1-based) closes with decision m; the saving holds from the window after
    # the last one below the mark.
    return int(below[-1]) + 2 if len(below) else 1


def meets_objectives(r: RequestRecord, slo: SloTargets) -> bool:
    """Both objectives met: TTFT, and TPOT for requests with more than one output token."""
    return r.ttft_s <= slo.ttft_s and (r.output_tokens <= 1 or r.tpot_s <= slo.tpot_s)


def summarise(run: PolicyRun, reference: PolicyRun, slo: SloTargets) -> dict[str, Any]:
    reqs = run.requests
    ttft = np.asarray([r.ttft_s for r in reqs], dtype=np.float64)
    multi = [r for r in reqs if r.output_tokens > 1]
    tpot = np.asarray([r.tpot_s for r in multi], dtype=np.float64)
    met = sum(1 for r in reqs if meets_objectives(r, slo))
    energy = float(np.sum(run.energy_j))
    ref_energy = float(np.sum(reference.energy_j))
    delay = float(np.mean([r.e2e_s for r in reqs])) if reqs else None
    ref_reqs = reference.requests
    ref_delay = float(np.mean([r.e2e_s for r in ref_reqs])) if ref_reqs else None
    edp_change = None
    if delay is not None and ref_delay is not None:
        edp_change = _pct_change(energy * delay, ref_energy * ref_delay)
    saving = None if ref_energy == 0 else 100.0 * (1.0 - energy / ref_energy)
    ttft_q = _percentiles(ttft)
    tpot_q = _percentiles(tpot)
    locked = [c for c in run.clock_in_force_mhz if c is not None]
    return {
        "energy_j": energy,
        "energy_saving_pct": saving,
        "edp_change_pct": edp_change,
        "mean_e2e_s": delay,
        "ttft_p50_s": ttft_q[0],
        "ttft_p90_s": ttft_q[1],
        "ttft_p99_s": ttft_q[2],
        "tpot_p50_s": tpot_q[0],
        "tpot_p90_s": tpot_q[1],
        "tpot_p99_s": tpot_q[2],
        "slo_attainment": met / run.requests_arrived if run.requests_arrived else None,
        "clock_switches": clock_switches(run),
        "decisions": run.decisions,
        "decisions_to_90pct": decisions_to_90pct(run, reference),
        "decide_cpu_ms": float(np.mean(run.decide_cpu_ns)) / 1e6 if run.decide_cpu_ns else None,
        "requests_arrived": run.requests_arrived,
        "requests_completed": len(reqs),
        "locked_window_share": len(locked) / len(run.clock_in_force_mhz)
        if run.clock_in_force_mhz
        else 0.0,
        "mean_locked_clock_mhz": float(np.mean(locked)) if locked else None,
        "commands_failed": run.commands_failed,
        **estimated_saving(run, saving),
    }


def estimated_saving(run: PolicyRun, true_saving: float | None) -> dict[str, Any]:
    """The saving the server would report (server/energy/estimator.py) beside the true one.

    Windows without an estimate count at their own energy: no saving is claimed for them.
    """
    if not run.default_energy_j:
        # A run not made through the harness (a hand-built series): nothing was estimated.
        return {"estimated_saving_pct": None}
    own = np.asarray(run.energy_j, dtype=np.float64)
    est = np.asarray(
        [e if e is not None else o for e, o in zip(run.default_energy_j, own, strict=True)],
        dtype=np.float64,
    )
    missing = sum(1 for e in run.default_energy_j if e is None)
    total = float(est.sum())
    if total <= 0:
        return {"estimated_saving_pct": None}
    estimated = 100.0 * (1.0 - float(own.sum()) / total)
    at_default = np.asarray(
        [c is None for c in run.clock_in_force_mhz], dtype=bool
    )  # measured, not estimated
    estimated_part = float(est[~at_default].sum())
    band = run.estimate_band
    return {
        "estimated_saving_pct": estimated,
        "estimate_band_pts": 100.0 * band * estimated_part / total if band is not None else None,
        "estimate_error_pts": estimated - true_saving if true_saving is not None else None,
        "windows_not_estimated": missing,
        "calibration_windows": run.calibration_windows,
    }


def meets_slo(summary: dict[str, Any], reference: dict[str, Any], slo: SloTargets) -> bool:
    """best-static's test: attainment within 1 point of default's and p90s within the SLO."""
    attained = summary["slo_attainment"]
    ref_attained = reference["slo_attainment"]
    if attained is None or ref_attained is None:
        return False
    ttft, tpot = summary["ttft_p90_s"], summary["tpot_p90_s"]
    return (
        attained >= ref_attained - 0.01
        and (ttft is None or ttft <= slo.ttft_s)
        and (tpot is None or tpot <= slo.tpot_s)
    )
