"""Invariants of the `agft` controller on synthetic windows (no simulator, no server)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any

import pytest

from server.control.agft import AgftPolicy
from server.control.agft.budget import RESUME_WINDOWS
from server.control.observation import GpuSample, HistogramDelta, Observation, ServingSample
from server.control.policy import ClockArms, SloTargets
from server.control.state_schema import PACKED_PREFIX, StateReader

F_MAX = 1980
ARMS = ClockArms(tuple(range(345, F_MAX + 1, 15)), F_MAX)
ITL_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1)
TTFT_BOUNDS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5)


def _hist(bounds: tuple[float, ...], value: float, count: int) -> HistogramDelta:
    counts = [0] * (len(bounds) + 1)
    index = next((i for i, b in enumerate(bounds) if value <= b), len(bounds))
    counts[index] = count
    return HistogramDelta(bounds, tuple(counts), value * count, count)


def world(clock: int | None, load: float = 1.0) -> tuple[float, float, float]:
    """A toy GPU: power falls with clock; ITL is memory-bound; TTFT compute-bound."""
    f = (clock or F_MAX) / F_MAX
    power = 80 + load * 300 * f**2.5
    itl = 0.010 * (0.85 + 0.15 / f)
    ttft = 0.05 / f
    return power, itl, ttft


def obs(
    clock: int | None,
    t: float,
    *,
    load: float = 1.0,
    waiting: float = 0.0,
    serving: bool = True,
    energy: bool = True,
) -> Observation:
    power, itl, ttft = world(clock, load)
    lock = None if clock is None else (clock, clock)
    gpu = GpuSample(0, power if energy else None, power, clock or F_MAX, 80.0, 0, lock)
    sample = ServingSample(
        num_requests_running=20 * load,
        num_requests_waiting=waiting,
        kv_cache_usage=0.2 * load,
        prompt_tokens=3000 * load,
        generation_tokens=800 * load,
        preemptions=0.0,
        requests_finished=4.0,
        ttft_s=_hist(TTFT_BOUNDS, ttft, 5),
        inter_token_latency_s=_hist(ITL_BOUNDS, itl, int(800 * load)),
    )
    return Observation(t, t + 1.0, (gpu,), sample if serving else None, clock)


def run(policy: AgftPolicy, windows: int, load: float = 1.0) -> list[int | None]:
    clock: int | None = None
    chosen: list[int | None] = []
    for i in range(windows):
        decision = policy.decide(obs(clock, 1000.0 + i, load=load), ARMS)
        assert decision.sm_clock_mhz is None or decision.sm_clock_mhz in ARMS.supported_mhz
        clock = decision.sm_clock_mhz
        chosen.append(clock)
    return chosen


def test_missing_telemetry_means_default_clocks() -> None:
    policy = AgftPolicy(SloTargets())
    run(policy, 60)
    assert policy.decide(obs(1500, 5000.0, serving=False), ARMS).sm_clock_mhz is None
    assert policy.decide(obs(1500, 5001.0, energy=False), ARMS).sm_clock_mhz is None


def test_learns_to_lower_the_clock_when_latency_allows() -> None:
    policy = AgftPolicy(SloTargets(ttft_s=1.0, tpot_s=0.1), max_slowdown=None)
    chosen = run(policy, 300)
    late = [c or F_MAX for c in chosen[-50:]]
    assert max(late) < F_MAX, "never left the max clock with lax SLOs"
    assert sum(late) / len(late) < 0.85 * F_MAX


def test_no_choice_past_a_predicted_slo_breach() -> None:
    # TTFT = 50 ms / f: an SLO of 60 ms (p90) with tail ratio ~1 allows f >= ~0.87 f_max.
    slo = SloTargets(ttft_s=0.060, tpot_s=0.1)
    policy = AgftPolicy(slo, max_slowdown=None)
    chosen = run(policy, 300)
    breach_below = 0.05 / 0.060 * F_MAX
    assert all((c or F_MAX) >= breach_below - 15 for c in chosen)


def test_action_set_never_empty_even_when_nothing_meets_the_slo() -> None:
    policy = AgftPolicy(SloTargets(ttft_s=0.001, tpot_s=0.0001))
    chosen = run(policy, 100)
    assert all(c is None for c in chosen)  # the max clock (default) is always allowed


def test_growing_queue_jumps_to_max_clock_at_once() -> None:
    policy = AgftPolicy(SloTargets(ttft_s=1.0, tpot_s=0.1), max_slowdown=None)
    chosen = run(policy, 200)
    low = chosen[-1]
    assert low is not None
    decision = policy.decide(obs(low, 9000.0, waiting=8.0), ARMS)
    assert decision.sm_clock_mhz is None and "queue" in decision.reason


def test_downward_steps_are_capped() -> None:
    policy = AgftPolicy(SloTargets(ttft_s=1.0, tpot_s=0.1), max_slowdown=None, down_step_mhz=90)
    chosen = [c or F_MAX for c in run(policy, 200)]
    drops = [a - b for a, b in itertools.pairwise(chosen)]
    assert max(drops) <= 90


def test_state_survives_a_json_round_trip() -> None:
    policy = AgftPolicy(SloTargets(ttft_s=1.0, tpot_s=0.1), max_slowdown=None)
    chosen = run(policy, 150)
    restored = AgftPolicy(SloTargets(ttft_s=1.0, tpot_s=0.1), max_slowdown=None)
    restored.load_state(json.loads(json.dumps(policy.state())))
    nxt = obs(chosen[-1], 9999.0)
    a, b = policy.decide(nxt, ARMS), restored.decide(nxt, ARMS)
    assert (a.sm_clock_mhz, a.reason) == (b.sm_clock_mhz, b.reason)
    assert "warm-up" not in b.reason


def test_a_restored_state_keeps_the_running_policys_tunables() -> None:
    # An upgrade that retunes the controller must reach instances whose state is older.
    old = AgftPolicy(SloTargets(), max_slowdown=0.07, down_step_mhz=60)
    run(old, 50)
    upgraded = AgftPolicy(SloTargets())
    upgraded.load_state(json.loads(json.dumps(old.state())))
    assert upgraded.tunables == AgftPolicy(SloTargets()).tunables
    assert upgraded.state()["windows"] == 50  # what it learned did come back


def test_an_idle_hold_below_a_raised_floor_is_not_held() -> None:
    old = AgftPolicy(SloTargets(ttft_s=1.0, tpot_s=0.1), max_slowdown=None)
    run(old, 200)
    state = json.loads(json.dumps(old.state()))
    state["last_busy_choice"] = 705  # above the old floor (35 % of 1980 MHz)
    raised = AgftPolicy(SloTargets(ttft_s=1.0, tpot_s=0.1), max_slowdown=None, floor_fraction=0.5)
    raised.load_state(state)
    decision = raised.decide(obs(705, 9000.0, load=0.0), ARMS)
    assert "idle" in decision.reason
    assert decision.sm_clock_mhz is None


@pytest.mark.parametrize(
    "bad",
    [{}, {"version": 99}, {"version": 3, "power": "x"}, {"version": 3, "windows": math.nan}],
)
def test_malformed_state_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        AgftPolicy(SloTargets()).load_state(bad)


def test_idle_holds_the_last_busy_clock_instead_of_drifting_down() -> None:
    policy = AgftPolicy(SloTargets(ttft_s=1.0, tpot_s=0.1), max_slowdown=None)
    busy = run(policy, 200)[-1]
    held = [policy.decide(obs(busy, 8000.0 + i, load=0.0), ARMS) for i in range(30)]
    assert all(d.sm_clock_mhz == busy for d in held)
    assert all("idle" in d.reason for d in held)


def test_a_window_with_too_many_slo_misses_moves_the_clock_up() -> None:
    policy = AgftPolicy(SloTargets(ttft_s=1.0, tpot_s=0.1), max_slowdown=None)
    low = run(policy, 200)[-1]
    assert low is not None
    missing = obs(low, 9000.0)
    assert missing.serving is not None
    # A fifth of the window's first tokens came after the 1 s objective.
    ttft = HistogramDelta((0.5, 1.0, 2.5), (8, 0, 2, 0), 4.0, 10)
    serving = dataclasses.replace(missing.serving, ttft_s=ttft)
    decision = policy.decide(dataclasses.replace(missing, serving=serving), ARMS)
    assert (decision.sm_clock_mhz or F_MAX) > low
    assert "over budget" in decision.reason


@pytest.mark.parametrize(("near_share", "moves_up"), [(0.2, True), (0.0, False)])
def test_near_misses_past_half_the_ttft_objective_count_as_misses(
    near_share: float, moves_up: bool
) -> None:
    policy = AgftPolicy(SloTargets(ttft_s=1.0, tpot_s=0.1), max_slowdown=None)
    low = run(policy, 200)[-1]
    assert low is not None
    window = obs(low, 9000.0)
    assert window.serving is not None
    # No first token missed the 1 s objective; a share of them took more than half of it.
    near = round(10 * near_share)
    ttft = HistogramDelta(
        (0.5, 1.0, 2.5), (10 - near, near, 0, 0), 0.1 * (10 - near) + 0.7 * near, 10
    )
    serving = dataclasses.replace(window.serving, ttft_s=ttft)
    decision = policy.decide(dataclasses.replace(window, serving=serving), ARMS)
    assert ("over budget" in decision.reason) is moves_up
    if moves_up:
        assert (decision.sm_clock_mhz or F_MAX) > low


def test_resuming_a_saved_state_forgets_the_budget_of_its_load_and_keeps_the_models() -> None:
    policy = AgftPolicy(SloTargets())  # the relative budgets: references and gains
    run(policy, 300)
    saved = json.loads(json.dumps(policy.state()))
    saved["relative_itl"]["gain"] = 0.48  # tuned to the load of when it was saved
    saved["ttft_promises"]["tail"]["log_gain"] = -0.7
    floats = StateReader("test").floats
    assert len(floats(saved["relative_itl"]["reference"][0], "reference")) > RESUME_WINDOWS
    resumed = AgftPolicy(SloTargets())
    resumed.load_state(saved)
    assert resumed.state() == saved  # load_state alone restores exactly
    resumed.resume()
    state = resumed.state()
    assert state["relative_itl"]["gain"] == 1.0
    for part in ("reference", "seen"):
        values = floats(state["relative_itl"][part][0], part).tolist()
        assert values == floats(saved["relative_itl"][part][0], part)[-RESUME_WINDOWS:].tolist()
    assert state["ttft_promises"]["tail"]["log_gain"] == 0.0
    assert state["ttft_promises"]["misses"]["log_gain"] == 0.0
    # The pooled reference fades on its own as the new load's windows come.
    assert state["ttft_promises"]["reference"] == saved["ttft_promises"]["reference"]
    for key in ("power", "itl", "ttft", "windows", "ttft_tail_ratio"):
        assert state[key] == saved[key]  # what it learnt of the GPU stays


def _as_lists(value: Any, key: str = "") -> Any:
    """A state as version 6 wrote it: every packed array a JSON list (matrices nested)."""
    if isinstance(value, str) and value.startswith(PACKED_PREFIX):
        floats = StateReader("test").floats(value, key)
        if key == "a_inv":
            side = math.isqrt(len(floats))
            return floats.reshape(side, side).tolist()
        return floats.tolist()
    if isinstance(value, dict):
        return {k: _as_lists(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_lists(v, key) for v in value]
    return value


def test_a_state_saved_as_lists_by_version_6_is_read_as_the_same_state() -> None:
    policy = AgftPolicy(SloTargets())
    run(policy, 300)
    saved = json.loads(json.dumps(policy.state()))
    old = _as_lists(saved)
    old["version"] = 6
    assert "f8:" not in json.dumps(old)
    restored = AgftPolicy(SloTargets())
    restored.load_state(old)
    assert restored.state() == saved  # written back packed, as version 7
    for version in (5, 8):
        with pytest.raises(ValueError, match="version"):
            AgftPolicy(SloTargets()).load_state({**saved, "version": version})
