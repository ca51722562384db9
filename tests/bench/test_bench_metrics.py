"""The per-policy figures, on hand-made runs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from bench.harness import PolicyRun
from bench.metrics import clock_switches, decisions_to_90pct, meets_slo, summarise
from bench.samples import RunningQuantiles, Samples, weighted_quantile
from server.control.policy import SloTargets
from sim.engine import RequestRecord

SLO = SloTargets()


def _request(rid: int, ttft: float, tpot: float, output: int = 11) -> RequestRecord:
    arrival = float(rid)
    first = arrival + ttft
    return RequestRecord(
        request_id=rid,
        arrival_s=arrival,
        first_scheduled_s=arrival,
        first_token_s=first,
        finish_s=first + tpot * (output - 1),
        prompt_tokens=100,
        output_tokens=output,
        cached_tokens=0,
        preemptions=0,
        finished_reason="stop",
    )


def _run(energy: list[float], clocks: list[int | None], requests: list[RequestRecord]) -> PolicyRun:
    run = PolicyRun(policy="p", window_s=1.0, f_max_mhz=1980)
    run.energy_j = energy
    run.clock_in_force_mhz = [None, *clocks[:-1]]
    run.clock_chosen_mhz = clocks
    run.decide_cpu_ns = [1_000_000] * len(energy)
    run.requests = requests
    run.requests_arrived = len(requests) + 1  # one never finished
    return run


def test_summary_against_reference() -> None:
    good = [_request(i, ttft=0.1, tpot=0.02) for i in range(8)]
    slow_first = _request(8, ttft=0.9, tpot=0.02)
    slow_decode = _request(9, ttft=0.1, tpot=0.08)
    one_token = _request(10, ttft=0.2, tpot=5.0, output=1)  # TPOT undefined: not judged
    reference = _run([100.0] * 4, [None] * 4, [*good, slow_first, slow_decode, one_token])
    run = _run([80.0] * 4, [1200, 1200, None, None], [*good, slow_first, slow_decode, one_token])

    s = summarise(run, reference, SLO)
    assert s["energy_j"] == 320.0
    assert s["energy_saving_pct"] == pytest.approx(20.0)
    assert s["edp_change_pct"] == pytest.approx(-20.0)  # same delay
    assert s["slo_attainment"] == pytest.approx(9 / 12)  # 8 good + one-token, of 12 arrivals
    assert s["ttft_p50_s"] == pytest.approx(0.1)
    assert s["tpot_p99_s"] > 0.05 > s["tpot_p50_s"]
    assert s["clock_switches"] == 2
    assert s["decide_cpu_ms"] == pytest.approx(1.0)
    assert s["requests_completed"] == 11
    assert not meets_slo(s, summarise(reference, reference, SLO), SloTargets(ttft_s=0.05))


def test_clock_switches_counts_changes_of_the_commanded_clock() -> None:
    run = _run([1.0] * 6, [None, 1200, 1200, 900, None, None], [])
    assert clock_switches(run) == 3


def test_decisions_to_90pct_is_when_the_cumulative_saving_settles() -> None:
    reference = _run([100.0] * 10, [None] * 10, [])
    # Nothing saved for 4 windows, then 50 % per window: the cumulative saving climbs.
    run = _run([100.0] * 4 + [50.0] * 6, [None] * 10, [])
    # Cumulative saving after 10 windows: 1 - 700/1000 = 30 %; after 9: 1 - 650/900 =
    # 27.8 %, the first at or above 90 % of 30 % (27 %); after 8: 1 - 600/800 = 25 %.
    assert decisions_to_90pct(run, reference) == 9
    # A run that saves from the start has converged at once.
    assert decisions_to_90pct(_run([50.0] * 10, [None] * 10, []), reference) == 1
    # No saving: nothing to converge to.
    assert decisions_to_90pct(reference, reference) is None


def test_weighted_quantile_counts_weights() -> None:
    assert weighted_quantile([1.0, 2.0, 3.0], [1, 1, 8], 0.5) == 3.0
    assert weighted_quantile([1.0, 2.0, 3.0], [8, 1, 1], 0.5) == 1.0
    assert weighted_quantile([], [], 0.9) is None


def test_running_quantiles_match_exact_ones_within_the_bin_width() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(mean=-3.0, sigma=1.0, size=5000)
    weights = rng.integers(1, 50, size=5000)
    running = RunningQuantiles()
    running.add(Samples(tuple(values[:2500].tolist()), tuple(weights[:2500].tolist())))
    running.add(Samples(tuple(values[2500:].tolist()), tuple(weights[2500:].tolist())))
    for q in (0.5, 0.9, 0.99):
        exact = weighted_quantile(values.tolist(), weights.tolist(), q)
        assert exact is not None
        assert running.quantile(q) == pytest.approx(exact, rel=0.0025)
    assert RunningQuantiles().quantile(0.9) is None
