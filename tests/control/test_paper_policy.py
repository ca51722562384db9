"""The paper policy on synthetic windows built by hand (no simulator, no agent)."""

from __future__ import annotations

import copy
import itertools
import json
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from server.control import paper
from server.control.observation import GpuSample, HistogramDelta, Observation, ServingSample
from server.control.paper import FEATURE_NAMES, PaperPolicy
from server.control.policy import ClockArms, ClockDecision, SloTargets
from server.control.state_schema import pack_floats

SUPPORTED = tuple(range(210, 1981, 15))  # an H100's 15 MHz grid
ARMS = ClockArms(SUPPORTED, default_mhz=1980)
SLO = SloTargets(ttft_s=2.0, tpot_s=0.0225, percentile=90.0)
COARSE_SWEEP = [*range(1980, 209, -90), 210]  # 1980, 1890, ..., 270, then the lowest


def _hist(value: float, count: int) -> HistogramDelta:
    """All observations just below value: mean = value, 90th percentile ~ value."""
    return HistogramDelta((0.99 * value, value), (0, count, 0), value * count, count)


def make_obs(
    t: float,
    clock: int | None,
    *,
    energy: float | None = 300.0,
    tpot: float | None = 0.02,
    ttft: float = 0.2,
    load: float = 1.0,
    waiting: float = 1.0,
    serving: bool = True,
) -> Observation:
    sample = None
    if serving:
        sample = ServingSample(
            num_requests_running=20.0 * load,
            num_requests_waiting=waiting,
            kv_cache_usage=0.3 * load,
            prompt_tokens=500.0 * load,
            generation_tokens=1000.0 * load,
            preemptions=0.0,
            requests_finished=5.0,
            ttft_s=_hist(ttft, 5),
            inter_token_latency_s=None if tpot is None else _hist(tpot, 100),
            prefix_cache_queries=100.0,
            prefix_cache_hits=30.0 * load,
            iteration_tokens=_hist(40.0 * load, 25),
        )
    gpu = GpuSample(0, energy, energy, clock, 50.0, 0, None)
    return Observation(t, t + 1.0, [gpu], sample, clock)


def env_physics(clock: int | None, load: float) -> tuple[float, float]:
    """Energy falls with the clock; TPOT is flat above 1100 MHz and rises below it."""
    f = 1980 if clock is None else clock
    energy = load * (60.0 + 300.0 * (f / 1980.0) ** 2)
    tpot = 0.02 * max(1.0, 1100.0 / f)
    return energy, tpot


def env_obs(t: int, clock: int | None, rng: np.random.Generator) -> Observation:
    load = float(rng.uniform(0.5, 1.5))
    energy, tpot = env_physics(clock, load)
    noisy = energy * (1.0 + 0.03 * float(rng.standard_normal()))
    waiting = float(rng.integers(0, 3))
    return make_obs(float(t), clock, energy=noisy, tpot=tpot, load=load, waiting=waiting)


def run_env(
    policy: PaperPolicy, windows: int, seed: int = 100, arms: ClockArms = ARMS
) -> list[ClockDecision]:
    """Closed loop: every decision is in force during the next window."""
    rng = np.random.default_rng(seed)
    clock: int | None = None
    decisions = []
    for t in range(windows):
        decision = policy.decide(env_obs(t, clock, rng), arms)
        decisions.append(decision)
        clock = decision.sm_clock_mhz
    return decisions


def finish_baseline(policy: PaperPolicy, energy: float = 300.0, tpot: float = 0.02) -> None:
    for t in range(policy.tunables.baseline_windows):
        policy.decide(make_obs(float(t), None, energy=energy, tpot=tpot), ARMS)
    assert policy.phase == "sweep"


# ---------------------------------------------------------------- baseline


def test_measures_the_baseline_at_default_clocks_first() -> None:
    policy = PaperPolicy(SLO)
    edps = []
    for t in range(9):
        energy = 300.0 + 10.0 * t
        decision = policy.decide(make_obs(float(t), None, energy=energy), ARMS)
        edps.append(energy * 0.02)
        assert decision.sm_clock_mhz is None
        assert decision.reward is None
        assert policy.phase == "baseline"
    # Neither a window at a locked clock nor one without decoding is a baseline sample.
    policy.decide(make_obs(9.0, 1500, energy=1.0), ARMS)
    policy.decide(make_obs(10.0, None, energy=1.0, tpot=None), ARMS)
    assert policy.baseline_edp is None
    last = policy.decide(make_obs(11.0, None, energy=400.0), ARMS)
    edps.append(400.0 * 0.02)
    assert policy.baseline_edp == pytest.approx(statistics.fmean(edps))
    assert last.sm_clock_mhz == 1980  # the sweep starts at the top
    assert policy.phase == "sweep"


def test_baseline_length_is_a_tunable() -> None:
    policy = PaperPolicy(SLO, baseline_windows=3)
    decisions = [policy.decide(make_obs(float(t), None), ARMS) for t in range(3)]
    assert [d.sm_clock_mhz for d in decisions] == [None, None, 1980]


# ------------------------------------------------------------------- sweep


def test_sweeps_once_from_high_to_low_on_a_90_mhz_grid() -> None:
    policy = PaperPolicy(SLO)
    finish_baseline(policy)
    clock: int | None = 1980
    swept = [1980]
    for t in range(100):
        decision = policy.decide(make_obs(100.0 + t, clock), ARMS)
        if policy.phase != "sweep":
            break
        clock = decision.sm_clock_mhz
        assert clock is not None
        swept.append(clock)
    assert swept == COARSE_SWEEP
    assert all(a - b == 90 for a, b in itertools.pairwise(swept[:-1]))
    assert set(swept) <= set(SUPPORTED)
    assert policy.phase == "linucb"
    assert policy.arm_counts() == {c: 1 for c in COARSE_SWEEP}


def test_sweep_waits_for_its_clock_then_moves_on() -> None:
    policy = PaperPolicy(SLO, sweep_patience=3)
    finish_baseline(policy)
    # The agent lags: the window still ran at default clocks, so 1980 is asked again...
    assert policy.decide(make_obs(20.0, 1500), ARMS).sm_clock_mhz == 1980
    assert policy.decide(make_obs(21.0, 1500), ARMS).sm_clock_mhz == 1980
    # ...until patience runs out and the sweep goes on without it.
    assert policy.decide(make_obs(22.0, 1500), ARMS).sm_clock_mhz == 1890


# ------------------------------------------------------------------ credit


def test_reward_goes_to_the_clock_in_force_not_the_one_chosen() -> None:
    policy = PaperPolicy(SLO)
    finish_baseline(policy, energy=300.0, tpot=0.02)  # baseline EDP 6.0
    # The policy asked for 1980, but the window ran at 1500.
    decision = policy.decide(make_obs(20.0, 1500, energy=150.0, tpot=0.02), ARMS)
    assert decision.reward == pytest.approx(2.0 * (1.0 - 0.5))
    assert decision.features["edp_ratio"] == pytest.approx(0.5)
    assert policy.arm_counts() == {1500: 1}
    # Default clocks (no lock) are the default clock's arm.
    policy.decide(make_obs(21.0, None), ARMS)
    assert policy.arm_counts() == {1500: 1, 1980: 1}


def test_reward_is_clipped_at_twice_the_baseline() -> None:
    policy = PaperPolicy(SLO)
    finish_baseline(policy)
    decision = policy.decide(make_obs(20.0, 1980, energy=3000.0), ARMS)
    assert decision.reward == pytest.approx(-2.0)


def test_features_are_the_raw_paper_features() -> None:
    policy = PaperPolicy(SLO)
    decision = policy.decide(make_obs(0.0, None, load=2.0, waiting=3.0), ARMS)
    expected = {
        "has_queue": 1.0,
        "prefill_tokens_per_s": 1000.0,
        "decode_tokens_per_s": 2000.0,
        "tokens_per_iteration": 80.0,
        "running": 40.0,
        "kv_cache_usage": 0.6,
        "prefix_cache_hit_rate": 0.6,
    }
    assert set(FEATURE_NAMES) == set(expected)
    for key, value in expected.items():
        assert decision.features[key] == pytest.approx(value)
    json.dumps(decision.features)


def test_unknown_metrics_are_left_out_not_zeroed() -> None:
    policy = PaperPolicy(SLO)
    finish_baseline(policy)
    sparse = ServingSample(
        num_requests_running=None,
        num_requests_waiting=None,
        kv_cache_usage=None,
        prompt_tokens=None,
        generation_tokens=None,
        preemptions=None,
        requests_finished=None,
        ttft_s=None,
        inter_token_latency_s=_hist(0.02, 10),
        prefix_cache_queries=0.0,
        prefix_cache_hits=0.0,
    )
    gpu = GpuSample(0, 300.0, 300.0, 1980, 50.0, 0, None)
    decision = policy.decide(Observation(20.0, 21.0, [gpu], sparse, 1980), ARMS)
    assert not set(FEATURE_NAMES) & set(decision.features)
    assert decision.reward is not None
    assert decision.sm_clock_mhz == 1890


# -------------------------------------------------------------------- SLO


@pytest.mark.parametrize(("tpot", "ttft"), [(0.03, 0.2), (0.02, 3.0)])
def test_slo_violation_bans_the_clock_and_all_below(tpot: float, ttft: float) -> None:
    policy = PaperPolicy(SLO)
    finish_baseline(policy)
    clock: int | None = 1980
    for t in range(5):  # 1980, 1890, 1800, 1710, 1620 measured cleanly
        clock = policy.decide(make_obs(20.0 + t, clock), ARMS).sm_clock_mhz
    assert clock == 1530
    decision = policy.decide(make_obs(30.0, 1530, tpot=tpot, ttft=ttft), ARMS)
    assert policy.banned_below_mhz == 1530
    # The sweep stops: every clock left to visit is below the ban.
    assert decision.sm_clock_mhz is not None and decision.sm_clock_mhz > 1530
    rng = np.random.default_rng(0)
    for t in range(300):
        clock = decision.sm_clock_mhz
        obs = make_obs(40.0 + t, clock, load=float(rng.uniform(0.5, 1.5)))
        decision = policy.decide(obs, ARMS)
        assert decision.sm_clock_mhz is not None and decision.sm_clock_mhz > 1530


def test_violation_at_default_clocks_bans_nothing() -> None:
    policy = PaperPolicy(SLO)
    finish_baseline(policy)
    policy.decide(make_obs(20.0, None, tpot=0.5), ARMS)
    assert policy.banned_below_mhz is None


def test_top_clock_banned_gives_default_clocks_and_control_goes_on() -> None:
    policy = PaperPolicy(SLO)
    finish_baseline(policy)
    decision = policy.decide(make_obs(20.0, 1980, tpot=0.5), ARMS)
    assert policy.banned_below_mhz == 1980
    assert decision.sm_clock_mhz is None
    assert "no arm left" in decision.reason
    rng = np.random.default_rng(1)
    for t in range(200):
        obs = make_obs(21.0 + t, None, load=float(rng.uniform(0.5, 1.5)), tpot=0.5)
        decision = policy.decide(obs, ARMS)
        assert decision.sm_clock_mhz is None
        assert decision.reward is not None  # it still learns at default clocks


# ------------------------------------------------------------ missing data


@pytest.mark.parametrize(
    "broken",
    [
        lambda t, c: make_obs(t, c, serving=False),
        lambda t, c: make_obs(t, c, energy=None),
        lambda t, c: make_obs(t, c, energy=float("nan")),
        lambda t, c: make_obs(t, c, energy=0.0),
    ],
)
def test_missing_telemetry_gives_default_clocks(
    broken: Callable[[float, int | None], Observation],
) -> None:
    policy = PaperPolicy(SLO)
    decisions = run_env(policy, 60)
    assert policy.phase == "linucb"
    before = json.dumps(policy.state(), sort_keys=True)
    decision = policy.decide(broken(100.0, decisions[-1].sm_clock_mhz), ARMS)
    assert decision.sm_clock_mhz is None
    assert "telemetry missing" in decision.reason
    assert decision.reward is None
    assert json.dumps(policy.state(), sort_keys=True) == before  # nothing learnt
    # The next complete window is controlled again.
    assert policy.decide(make_obs(101.0, None), ARMS).sm_clock_mhz is not None


def test_missing_serving_during_baseline_is_not_idle() -> None:
    policy = PaperPolicy(SLO)
    for t in range(30):
        decision = policy.decide(make_obs(float(t), None, serving=False), ARMS)
        assert decision.sm_clock_mhz is None
    assert policy.phase == "baseline"


def test_counter_reset_window_teaches_nothing() -> None:
    policy = PaperPolicy(SLO)
    finish_baseline(policy)
    obs = make_obs(20.0, 1980, tpot=0.5)
    assert obs.serving is not None
    reset = Observation(
        obs.window_start_s,
        obs.window_end_s,
        obs.gpus,
        ServingSample(**{**_fields(obs.serving), "counters_reset": True}),
        obs.clock_in_force_mhz,
    )
    decision = policy.decide(reset, ARMS)
    assert decision.reward is None
    assert policy.banned_below_mhz is None
    assert policy.arm_counts() == {}


def _fields(sample: ServingSample) -> dict[str, Any]:
    return {name: getattr(sample, name) for name in ServingSample.__slots__}


# ---------------------------------------------------------------- pruning


def test_extreme_pruning_removes_a_dreadful_arm_and_cascades_below_half() -> None:
    policy = PaperPolicy(SLO, extreme_min_samples=1)
    finish_baseline(policy)  # baseline EDP 6.0
    clock: int | None = 1980
    while clock is not None and clock > 900:
        clock = policy.decide(make_obs(20.0, clock), ARMS).sm_clock_mhz
    assert clock == 900
    # EDP 1.8x the baseline: reward -1.6, below the -1.2 threshold.
    decision = policy.decide(make_obs(30.0, 900, energy=540.0), ARMS)
    assert 900 in policy.pruned_arms
    assert policy.cascade_floor_mhz == 900  # 900 < 1980 / 2: everything below goes too
    assert policy.phase == "linucb"
    for t in range(100):
        clock = decision.sm_clock_mhz
        assert clock is not None and clock > 900
        decision = policy.decide(make_obs(40.0 + t, clock, load=1.0 + 0.01 * (t % 7)), ARMS)


def test_extreme_pruning_high_up_does_not_cascade() -> None:
    policy = PaperPolicy(SLO, extreme_min_samples=1)
    finish_baseline(policy)
    decision = policy.decide(make_obs(20.0, 1980, energy=540.0), ARMS)
    assert policy.pruned_arms == (1980,)
    assert policy.cascade_floor_mhz is None
    assert decision.sm_clock_mhz == 1890


def test_statistical_pruning_drops_an_arm_far_worse_than_the_rest() -> None:
    policy = PaperPolicy(
        SLO,
        extreme_min_samples=1000,  # isolate the statistical rule
        prune_start_round=1,
        prune_interval_rounds=1,
        prune_min_samples=1,
    )
    finish_baseline(policy)
    clock: int | None = 1980
    while policy.phase == "sweep":
        energy = 570.0 if clock == 1530 else 300.0  # 1530 at 1.9x the baseline
        assert clock is not None
        clock = policy.decide(make_obs(30.0, clock, energy=energy), ARMS).sm_clock_mhz
    assert policy.pruned_arms == (1530,)
    assert policy.cascade_floor_mhz is None  # 1530 is in the upper half


def test_refinement_recentres_on_the_best_arm_in_15_mhz_steps() -> None:
    policy = PaperPolicy(SLO, refine_start_round=30, refine_min_samples=1)
    rng = np.random.default_rng(3)
    clock: int | None = None
    for t in range(200):
        if policy.active_arms and policy.active_arms != tuple(sorted(COARSE_SWEEP)):
            break
        load = float(rng.uniform(0.5, 1.5))
        f = 1980 if clock is None else clock
        # EDP has a clear minimum at 1170 MHz, whatever the load.
        energy = 300.0 * (1.0 + abs(f - 1170) / 1000.0)
        obs = make_obs(float(t), clock, energy=energy, load=load)
        clock = policy.decide(obs, ARMS).sm_clock_mhz
    assert policy.rounds >= 30
    assert policy.active_arms == tuple(range(1020, 1321, 15))


# ----------------------------------------------------------- convergence


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converges_near_the_best_feasible_clock(seed: int) -> None:
    def edp(clock: int) -> float:
        energy, tpot = env_physics(clock, 1.0)
        return energy * tpot

    feasible = [c for c in SUPPORTED if 0.999 * env_physics(c, 1.0)[1] <= SLO.tpot_s]
    best = min(feasible, key=edp)
    assert best == 990  # the SLO binds: below 990 MHz TPOT is too slow

    policy = PaperPolicy(SLO, seed=seed)
    decisions = run_env(policy, 800, seed=seed + 100)
    last = [d.sm_clock_mhz for d in decisions[-200:]]
    assert all(c is not None for c in last)
    clocks = [c for c in last if c is not None]
    assert best <= statistics.median(clocks) <= best + 240
    assert min(clocks) >= best  # nothing infeasible any more
    # Default clocks would cost 2.4x the best EDP; the reproduction gets within 10 %.
    assert statistics.fmean(edp(c) for c in clocks) <= 1.10 * edp(best)
    assert policy.phase == "greedy"


def test_never_returns_an_unsupported_clock() -> None:
    policy = PaperPolicy(SLO)
    decisions = run_env(policy, 300)
    assert all(d.sm_clock_mhz is None or d.sm_clock_mhz in SUPPORTED for d in decisions)
    # The instance's clocks shrink (a GPU of another model joins the TP group).
    narrow = ClockArms(tuple(range(600, 1501, 30)), default_mhz=1500)
    for d in run_env(policy, 100, seed=7, arms=narrow):
        assert d.sm_clock_mhz is None or d.sm_clock_mhz in narrow.supported_mhz


def test_no_clocks_known_yet_does_not_stop_control() -> None:
    policy = PaperPolicy(SLO, baseline_windows=2)
    empty = ClockArms((), default_mhz=1980)
    for t in range(3):
        assert policy.decide(make_obs(float(t), None), empty).sm_clock_mhz is None
    # This window ran at default clocks, i.e. at 1980 MHz: the sweep counts it as
    # measured and goes on to the next clock.
    decision = policy.decide(make_obs(3.0, None), ARMS)
    assert decision.sm_clock_mhz == 1890
    assert policy.arm_counts() == {1980: 1}


def test_deterministic_for_a_seed() -> None:
    first = run_env(PaperPolicy(SLO, seed=5), 400)
    second = run_env(PaperPolicy(SLO, seed=5), 400)
    assert first == second


# ------------------------------------------------------------------ state


@pytest.mark.parametrize("windows", [5, 15, 40, 150, 600])
def test_state_round_trips_and_the_restored_policy_decides_the_same(windows: int) -> None:
    original = PaperPolicy(SLO, seed=3)
    decisions = run_env(original, windows)
    state = json.loads(json.dumps(original.state()))
    assert state["version"] == paper.STATE_VERSION
    restored = PaperPolicy(SLO, seed=3)
    restored.load_state(state)
    assert restored.phase == original.phase
    assert restored.baseline_edp == original.baseline_edp
    rng = np.random.default_rng(99)
    clock = decisions[-1].sm_clock_mhz
    for t in range(60):
        obs = env_obs(windows + t, clock, rng)
        a, b = original.decide(obs, ARMS), restored.decide(obs, ARMS)
        assert a == b
        clock = a.sm_clock_mhz
    assert json.dumps(original.state()) == json.dumps(restored.state())


def test_restart_keeps_the_baseline_so_rewards_are_not_zero() -> None:
    original = PaperPolicy(SLO)
    run_env(original, 50)
    restored = PaperPolicy(SLO)
    restored.load_state(json.loads(json.dumps(original.state())))
    decision = restored.decide(make_obs(60.0, 1500, energy=100.0, tpot=0.02), ARMS)
    assert decision.reward is not None and decision.reward > 0.5


def _mutations() -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
    def setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
        def apply(state: dict[str, Any]) -> None:
            *parents, leaf = path.split(".")
            node: Any = state
            for key in parents:
                node = node[key]
            node[leaf] = value

        return apply

    def first_arm(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
        def apply(state: dict[str, Any]) -> None:
            arm = next(iter(state["arms"].values()))
            if field in arm:
                arm[field] = value
            else:
                arm["model"][field] = value

        return apply

    return [
        ("no version", lambda s: s.pop("version")),
        ("future version", setter("version", paper.STATE_VERSION + 1)),
        ("unknown phase", setter("phase", "exploring")),
        ("no normalizer", lambda s: s.pop("normalizer")),
        ("normalizer dim", setter("normalizer.dim", 3)),
        ("baseline lost", setter("baseline.edp", None)),
        ("baseline negative", setter("baseline.edp", -1.0)),
        ("baseline count", setter("baseline.count", -2)),
        ("arms not a mapping", setter("arms", [])),
        ("arm key", lambda s: s["arms"].update({"fast": s["arms"][next(iter(s["arms"]))]})),
        ("arm model shape", first_arm("b", [0.0, 0.0])),
        ("arm model nan", first_arm("a_inv", [[float("nan")] * 7] * 7)),
        ("arm model packed nan", first_arm("a_inv", pack_floats([float("nan")] * 49))),
        ("arm model packed short", first_arm("b", pack_floats([0.0] * 6))),
        ("arm reward", first_arm("reward_sum", "lots")),
        ("arm dim", first_arm("dim", 8)),
        ("active not list", setter("active", "1980")),
        ("active floats", setter("active", [1980.5])),
        ("sweep bools", setter("sweep", [True])),
        ("pruned", setter("pruned", None)),
        ("ban boundary", setter("ban_boundary_mhz", "high")),
        ("rounds negative", setter("rounds", -1)),
        ("recent too long", setter("recent", [1980] * 101)),
        ("grid flag", setter("grid_built", 1)),
        ("rng missing", lambda s: s.pop("rng")),
        ("rng generator", setter("rng.bit_generator", "MT19937")),
        ("rng float", setter("rng.state.state", 1.5)),
        ("rng range", setter("rng.state.inc", -1)),
        ("rng overflow", setter("rng.state.inc", 1 << 130)),
        ("not a mapping", lambda s: s.clear()),
    ]


@pytest.mark.parametrize(("label", "mutate"), _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_state_raises_and_changes_nothing(
    label: str, mutate: Callable[[dict[str, Any]], None]
) -> None:
    source = PaperPolicy(SLO)
    run_env(source, 120)
    state = json.loads(json.dumps(source.state()))
    mutate(state)
    target = PaperPolicy(SLO)
    run_env(target, 30, seed=5)
    before = json.dumps(target.state(), sort_keys=True)
    with pytest.raises(ValueError):
        target.load_state(state)
    assert json.dumps(target.state(), sort_keys=True) == before


def test_state_is_not_shared_with_the_caller() -> None:
    policy = PaperPolicy(SLO)
    run_env(policy, 50)
    state = policy.state()
    snapshot = copy.deepcopy(state)
    state["active"].clear()
    state["rng"]["state"]["state"] = 0
    assert policy.state() == snapshot


def test_unknown_or_bad_tunables_are_refused() -> None:
    with pytest.raises(TypeError):
        PaperPolicy(SLO, alpha=3.0)
    with pytest.raises(ValueError):
        PaperPolicy(SLO, baseline_windows=0)
    with pytest.raises(ValueError):
        PaperPolicy(SLO, baseline_windows=2.5)
    with pytest.raises(ValueError):
        PaperPolicy(SLO, alpha_decay=float("nan"))
