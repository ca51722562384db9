"""Our reproduction of the published AGFT controller (arXiv 2508.01744).

It follows the design of the reference implementation on purpose, weaknesses
included, so that benchmarks can compare against the paper as published:

* 7 z-scored workload features and disjoint LinUCB, one ridge model per clock
  arm, with NO intercept term (for an average context every arm predicts ~0);
* alpha = max(10 * exp(-0.02 t), 0.1), t = rewarded rounds so far;
* reward r = 2 * (1 - min(2, EDP / baseline)), EDP = window energy x mean TPOT,
  the baseline EDP measured at default clocks during the first windows;
* arms: a 90 MHz grid swept once from the top clock down, later re-centred on
  the best arm at +-150 MHz in 15 MHz steps; extreme, statistical and cascade
  pruning; greedy choice once the choices have converged;
* an SLO violation at a locked clock bans that clock and every clock below it,
  for good (a ratchet).

Deviations, all of them fail-safes: it never raises on odd telemetry and never
stops controlling. Missing serving metrics or energy, or an empty action set,
give default clocks (ClockDecision(None, ...)); unknown metrics are unknown (NaN,
which the normaliser maps to the mean), never zero; and the baseline is part of
the persisted state, so a restart does not zero every reward.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from server.control.features import window_features
from server.control.normalizer import Normalizer
from server.control.observation import Observation, ServingSample
from server.control.policy import ClockArms, ClockDecision, Policy, SloTargets
from server.control.ridge import RidgeArm
from server.control.state_schema import StateReader

FloatArray = NDArray[np.float64]

FEATURE_NAMES: tuple[str, ...] = (
    "has_queue",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
    "tokens_per_iteration",
    "running",
    "kv_cache_usage",
    "prefix_cache_hit_rate",
)
N_FEATURES = len(FEATURE_NAMES)
STATE_VERSION = 2
# Version 1 is version 2 with its models' arrays as JSON lists: read alike.
READABLE_VERSIONS = (1, STATE_VERSION)
_READ = StateReader("paper state")
_STATE_KEYS = frozenset(
    (
        *("version", "phase", "normalizer", "baseline", "arms", "grid_built", "active"),
        *("sweep", "sweep_attempts", "pruned", "cascade_floor_mhz", "ban_boundary_mhz"),
        *("rounds", "last_prune_round", "last_refine_round", "recent", "rng"),
    )
)

BASELINE, SWEEP, LINUCB, GREEDY = "baseline", "sweep", "linucb", "greedy"
PHASES = (BASELINE, SWEEP, LINUCB, GREEDY)


@dataclass(frozen=True, slots=True)
class PaperTunables:
    """Knobs of the paper policy; defaults follow the reference configuration."""

    lambda_reg: float = 1.0
    alpha_initial: float = 10.0
    alpha_decay: float = 0.02
    alpha_min: float = 0.1
    # Windows with a measurable EDP at default clocks averaged into the baseline.
    baseline_windows: int = 10
    coarse_step_mhz: int = 90
    fine_step_mhz: int = 15
    refine_span_mhz: int = 150
    refine_start_round: int = 80
    refine_interval_rounds: int = 20
    refine_min_samples: int = 3
    # Windows the sweep waits for its requested clock to be in force before moving on.
    sweep_patience: int = 3
    extreme_reward_threshold: float = -1.2
    extreme_min_samples: int = 3
    extreme_max_round: int = 60
    prune_start_round: int = 30
    prune_interval_rounds: int = 20
    prune_min_samples: int = 6
    prune_std_multiplier: float = 4.0
    # Floor of the statistical-pruning gap, in units of the baseline EDP.
    prune_min_gap: float = 0.01
    prune_keep_arms: int = 2
    # Cascade pruning fires for a pruned clock below this fraction of the top clock.
    cascade_fraction: float = 0.5
    convergence_min_round: int = 100
    convergence_window: int = 100
    convergence_top_k: int = 3
    convergence_share: float = 0.6
    feature_clip: float = 5.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"tunable {f.name} must be a number")
            if not math.isfinite(value):
                raise ValueError(f"tunable {f.name} must be finite")
            if f.type == "int" and not isinstance(value, int):
                raise ValueError(f"tunable {f.name} must be an integer")
        positive = (
            "lambda_reg",
            "alpha_initial",
            "baseline_windows",
            "coarse_step_mhz",
            "fine_step_mhz",
            "sweep_patience",
            "convergence_window",
            "convergence_top_k",
            "feature_clip",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"tunable {name} must be positive")
        if not 0.0 <= self.convergence_share <= 1.0:
            raise ValueError("tunable convergence_share must lie in [0, 1]")
        if self.alpha_min < 0 or self.alpha_decay < 0 or self.refine_span_mhz < 0:
            raise ValueError("alpha_min, alpha_decay and refine_span_mhz must be >= 0")


@dataclass(slots=True)
class _Arm:
    """One clock's ridge model plus the plain averages that pruning and refinement use."""

    model: RidgeArm
    reward_sum: float = 0.0
    ratio_sum: float = 0.0  # sum of EDP / baseline

    @property
    def n(self) -> int:
        return self.model.n

    def mean_reward(self) -> float:
        return self.reward_sum / self.n if self.n else 0.0

    def mean_ratio(self) -> float:
        return self.ratio_sum / self.n if self.n else math.inf


def paper_features(obs: Observation) -> FloatArray:
    """The 7 raw context features of the paper; NaN marks a value we do not know."""
    serving = obs.serving
    out = np.full(N_FEATURES, np.nan, dtype=np.float64)
    if serving is None:
        return out
    duration = obs.duration_s
    waiting = serving.num_requests_waiting
    if waiting is not None:
        out[0] = 1.0 if waiting > 0 else 0.0
    if duration > 0:
        # Rates rather than per-window counts, so a longer window is not a busier one.
        out[1] = _ratio(serving.prompt_tokens, duration)
        out[2] = _ratio(serving.generation_tokens, duration)
    if serving.iteration_tokens is not None:
        out[3] = _num(serving.iteration_tokens.mean())
    out[4] = _num(serving.num_requests_running)
    out[5] = _num(serving.kv_cache_usage)
    if serving.prefix_cache_queries is not None and serving.prefix_cache_queries > 0:
        # No queries in the window: the hit rate is unknown, not 0.
        out[6] = _ratio(serving.prefix_cache_hits, serving.prefix_cache_queries)
    return out


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _ratio(num: float | None, den: float) -> float:
    return float("nan") if num is None else num / den


class PaperPolicy(Policy):
    """Disjoint LinUCB over clock arms, as the AGFT paper describes it."""

    name = "agft-paper"

    def __init__(self, slo: SloTargets, seed: int = 0, **tunables: Any) -> None:
        self.slo = slo
        self.seed = seed
        self.tunables = PaperTunables(**tunables)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        t = self.tunables
        self._norm = Normalizer(N_FEATURES, clip=t.feature_clip)
        self._phase = BASELINE
        self._baseline_sum = 0.0
        self._baseline_count = 0
        self._baseline_edp: float | None = None
        self._arms: dict[int, _Arm] = {}
        self._active: list[int] = []  # the arm set: coarse grid, later the refined one
        self._grid_built = False
        self._sweep: list[int] = []  # clocks still to visit, highest first
        self._sweep_attempts = 0
        self._pruned: set[int] = set()
        self._cascade_floor: int | None = None  # clocks <= this are cascade-pruned
        self._ban_boundary: int | None = None  # clocks <= this broke the SLO (ratchet)
        self._rounds = 0  # rewarded windows: the t of the alpha schedule
        self._last_prune_round = 0
        self._last_refine_round: int | None = None
        self._recent: list[int] = []  # latest LinUCB choices, for the convergence test

    # ------------------------------------------------------------------ decide

    def decide(self, observation: Observation, arms: ClockArms) -> ClockDecision:
        features = window_features(observation)
        raw = paper_features(observation)
        for key, value in zip(FEATURE_NAMES, raw.tolist(), strict=True):
            if math.isfinite(value):
                features[key] = value
        if not self._grid_built:
            self._build_grid(arms)
        serving = observation.serving
        energy = observation.energy_j
        if serving is None or energy is None or not (math.isfinite(energy) and energy > 0):
            # Unknown is not idle: without the window's telemetry we neither learn
            # nor guess a low clock, we release the lock.
            return ClockDecision(None, f"{self.name}: telemetry missing, default clocks", features)

        reward: float | None = None
        if not serving.counters_reset:
            # Deltas across a counter reset are not this window's work: learn nothing.
            self._norm.update(raw)
            context = self._norm.transform(raw)
            credit = self._learn(observation, serving, energy, context, arms)
            if credit is not None:
                reward, features["edp_ratio"] = credit
        else:
            context = self._norm.transform(raw)
        clock, reason = self._choose(context, arms, observation.clock_in_force_mhz)
        return ClockDecision(clock, f"{self.name}: {reason}", features, reward)

    def _learn(
        self,
        obs: Observation,
        serving: ServingSample,
        energy_j: float,
        context: FloatArray,
        arms: ClockArms,
    ) -> tuple[float, float] | None:
        """Baseline, reward credit, bans and pruning for one window.

        Returns (reward, EDP / baseline) when the window earned a reward.
        """
        edp = _window_edp(energy_j, serving)
        credit: tuple[float, float] | None = None
        if self._phase == BASELINE:
            if obs.clock_in_force_mhz is None and edp is not None:
                self._add_baseline(edp)
        elif edp is not None and self._baseline_edp is not None:
            credited = self._credited_clock(obs.clock_in_force_mhz, arms)
            if credited is not None:
                ratio = edp / self._baseline_edp
                credit = (self._credit(credited, context, ratio, arms), ratio)
        if obs.clock_in_force_mhz is not None and self._slo_violated(serving):
            self._ban(obs.clock_in_force_mhz)
        self._statistical_pruning(arms)
        self._maybe_refine(arms)
        return credit

    def _add_baseline(self, edp: float) -> None:
        self._baseline_sum += edp
        self._baseline_count += 1
        if self._baseline_count >= self.tunables.baseline_windows:
            self._baseline_edp = self._baseline_sum / self._baseline_count
            self._phase = SWEEP

    def _credit(self, clock: int, context: FloatArray, ratio: float, arms: ClockArms) -> float:
        """Credit the window's reward to the clock that was in force during it."""
        reward = 2.0 * (1.0 - min(2.0, ratio))
        arm = self._arm(clock)
        # The window's own context: it is the load under which this reward was earned.
        arm.model.update(context, reward)
        arm.reward_sum += reward
        arm.ratio_sum += ratio
        self._rounds += 1
        if self._sweep and self._sweep[0] == clock:
            self._sweep.pop(0)  # measured: the sweep moves on
            self._sweep_attempts = 0
        self._extreme_pruning(clock, arm, arms)
        return reward

    # ------------------------------------------------------------------ choose

    def _choose(
        self, context: FloatArray, arms: ClockArms, in_force: int | None
    ) -> tuple[int | None, str]:
        if self._phase == BASELINE:
            done, need = self._baseline_count, self.tunables.baseline_windows
            return None, f"baseline {done}/{need} at default clocks"
        if not self._grid_built:
            # No clock list yet: the sweep must not be used up before it exists.
            return None, "no supported clocks known, default clocks"
        supported = frozenset(arms.supported_mhz)
        if self._phase == SWEEP:
            clock = self._next_sweep_arm(supported, in_force)
            if clock is not None:
                return clock, f"sweep {clock} MHz"
            self._phase = LINUCB
        eligible = [c for c in self._active if c in supported and not self._excluded(c)]
        if not eligible:
            # The ratchet and the pruning may leave nothing; control goes on at default.
            return None, "no arm left (banned or pruned), default clocks"
        alpha = 0.0 if self._phase == GREEDY else self._alpha()
        clock = self._argmax(eligible, context, alpha)
        if self._phase == LINUCB:
            self._note_choice(clock)
            return clock, f"linucb {clock} MHz (alpha {alpha:.2f})"
        return clock, f"greedy {clock} MHz"

    def _next_sweep_arm(self, supported: frozenset[int], in_force: int | None) -> int | None:
        while self._sweep:
            head = self._sweep[0]
            stalled = self._sweep_attempts >= self.tunables.sweep_patience
            if stalled or head not in supported or self._excluded(head):
                self._sweep.pop(0)
                self._sweep_attempts = 0
                continue
            if in_force != head:
                # Counted only while the clock is not in force: an idle window at the
                # right clock is not the agent failing to apply it.
                self._sweep_attempts += 1
            return head
        return None

    def _argmax(self, eligible: list[int], context: FloatArray, alpha: float) -> int:
        scores = [self._arm(c).model.ucb(context, alpha) for c in eligible]
        best = max(scores)
        tolerance = 1e-12 * max(1.0, abs(best))
        ties = [c for c, s in zip(eligible, scores, strict=True) if s >= best - tolerance]
        if len(ties) == 1:
            return ties[0]
        # With no information to separate arms the seeded generator picks.
        return ties[int(self._rng.integers(len(ties)))]

    def _alpha(self) -> float:
        t = self.tunables
        return max(t.alpha_initial * math.exp(-t.alpha_decay * self._rounds), t.alpha_min)

    def _note_choice(self, clock: int) -> None:
        """Convergence: once a few arms take most of the recent choices, go greedy."""
        t = self.tunables
        self._recent.append(clock)
        if len(self._recent) > t.convergence_window:
            del self._recent[0]
        if self._rounds < t.convergence_min_round or len(self._recent) < t.convergence_window:
            return
        top = Counter(self._recent).most_common(t.convergence_top_k)
        if sum(n for _, n in top) >= t.convergence_share * len(self._recent):
            self._phase = GREEDY

    # ------------------------------------------------------------ arm space

    def _build_grid(self, arms: ClockArms) -> None:
        """The coarse grid: every 90 MHz from the top clock down, plus the lowest clock."""
        if not arms.supported_mhz:
            return  # nothing to lock to yet; build on the first window that has clocks
        self._grid_built = True
        top, bottom = arms.supported_mhz[-1], arms.supported_mhz[0]
        grid: set[int] = {bottom}
        target = top
        while target >= bottom:
            snapped = arms.snap_down(target)
            if snapped is not None:
                grid.add(snapped)
            target -= self.tunables.coarse_step_mhz
        self._active = sorted(grid)
        self._sweep = sorted(grid, reverse=True)

    def _arm(self, clock: int) -> _Arm:
        arm = self._arms.get(clock)
        if arm is None:
            arm = _Arm(RidgeArm(N_FEATURES, self.tunables.lambda_reg))
            self._arms[clock] = arm
        return arm

    def _credited_clock(self, in_force: int | None, arms: ClockArms) -> int | None:
        """The supported clock a window ran at; None in force means the default clock."""
        clock = arms.default_mhz if in_force is None else in_force
        if clock in arms.supported_mhz:
            return clock
        return arms.snap_down(clock)

    def _excluded(self, clock: int) -> bool:
        if clock in self._pruned:
            return True
        if self._ban_boundary is not None and clock <= self._ban_boundary:
            return True
        return self._cascade_floor is not None and clock <= self._cascade_floor

    def _slo_violated(self, serving: ServingSample) -> bool:
        q = self.slo.percentile / 100.0
        ttft = serving.ttft_s.quantile(q) if serving.ttft_s is not None else None
        tpot = (
            serving.inter_token_latency_s.quantile(q)
            if serving.inter_token_latency_s is not None
            else None
        )
        return (ttft is not None and ttft > self.slo.ttft_s) or (
            tpot is not None and tpot > self.slo.tpot_s
        )

    def _ban(self, clock: int) -> None:
        """The paper's SLO rule: this clock and all below it are out, permanently.

        Only windows at a clock we locked are judged; a violation at default clocks
        says nothing about our choice (the paper runs at default only for its baseline).
        """
        if self._ban_boundary is None or clock > self._ban_boundary:
            self._ban_boundary = clock

    # -------------------------------------------------------------- pruning

    def _extreme_pruning(self, clock: int, arm: _Arm, arms: ClockArms) -> None:
        """Extreme pruning: early on, drop at once an arm whose rewards are dreadful.

        Within the first rounds, an arm with a few samples whose average reward is
        at or below the threshold (EDP well above the baseline) is not worth more
        exploration; removing it spares the windows LinUCB would spend on it.
        """
        t = self.tunables
        if self._rounds > t.extreme_max_round or clock in self._pruned:
            return
        if arm.n >= t.extreme_min_samples and arm.mean_reward() <= t.extreme_reward_threshold:
            self._prune(clock, arms)

    def _statistical_pruning(self, arms: ClockArms) -> None:
        """Statistical pruning: every few rounds, drop arms far worse than the best.

        Among the live arms with enough samples, the one with the lowest average EDP
        ratio is the reference; any other whose average exceeds it by more than a
        multiple of the spread (standard deviation) of the arms' averages is pruned,
        keeping at least a couple of arms alive.
        """
        t = self.tunables
        if self._rounds < t.prune_start_round:
            return
        if self._rounds - self._last_prune_round < t.prune_interval_rounds:
            return
        self._last_prune_round = self._rounds
        supported = frozenset(arms.supported_mhz)
        live = [c for c in self._active if c in supported and not self._excluded(c)]
        means = {
            c: self._arms[c].mean_ratio()
            for c in live
            if c in self._arms and self._arms[c].n >= t.prune_min_samples
        }
        if len(means) < 2:
            return
        best = min(means, key=means.__getitem__)
        spread = float(np.std(list(means.values())))
        threshold = t.prune_std_multiplier * max(spread, t.prune_min_gap)
        remaining = len(live)
        for clock in sorted(means, key=means.__getitem__, reverse=True):
            if remaining <= t.prune_keep_arms:
                break
            if clock != best and means[clock] - means[best] > threshold:
                self._prune(clock, arms)
                remaining = sum(1 for c in live if not self._excluded(c))

    def _prune(self, clock: int, arms: ClockArms) -> None:
        """Prune one arm; a low one also triggers cascade pruning.

        Cascade pruning: when a clock in the lower part of the range (below a
        fraction of the top clock) proves bad, the clocks beneath it are assumed
        worse still and go with it, so the search stops wandering down there.
        """
        self._pruned.add(clock)
        if not arms.supported_mhz:
            return
        low = clock < self.tunables.cascade_fraction * arms.supported_mhz[-1]
        if low and (self._cascade_floor is None or clock > self._cascade_floor):
            self._cascade_floor = clock

    def _maybe_refine(self, arms: ClockArms) -> None:
        """Re-centre the arm set on the best arm: +-150 MHz in 15 MHz steps."""
        t = self.tunables
        if self._phase != LINUCB or self._rounds < t.refine_start_round:
            return
        if (
            self._last_refine_round is not None
            and self._rounds - self._last_refine_round < t.refine_interval_rounds
        ):
            return
        anchor = self._refine_anchor(arms)
        if anchor is None:
            return  # not enough evidence yet; try again on the next round
        self._last_refine_round = self._rounds
        refined = {anchor}
        target = anchor - t.refine_span_mhz
        while target <= anchor + t.refine_span_mhz:
            snapped = arms.snap_down(target)
            if snapped is not None and not self._excluded(snapped):
                refined.add(snapped)
            target += t.fine_step_mhz
        self._active = sorted(refined)

    def _refine_anchor(self, arms: ClockArms) -> int | None:
        """The explored, still allowed clock with the lowest average EDP ratio."""
        supported = frozenset(arms.supported_mhz)
        candidates = [
            c
            for c, arm in self._arms.items()
            if c in supported
            and not self._excluded(c)
            and arm.n >= self.tunables.refine_min_samples
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda c: (self._arms[c].mean_ratio(), -c))

    # ---------------------------------------------------------------- state

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def baseline_edp(self) -> float | None:
        return self._baseline_edp

    @property
    def banned_below_mhz(self) -> int | None:
        """Clocks at or below this broke the SLO and are banned."""
        return self._ban_boundary

    @property
    def active_arms(self) -> tuple[int, ...]:
        return tuple(self._active)

    @property
    def pruned_arms(self) -> tuple[int, ...]:
        return tuple(sorted(self._pruned))

    @property
    def cascade_floor_mhz(self) -> int | None:
        """Clocks at or below this were removed by cascade pruning."""
        return self._cascade_floor

    @property
    def rounds(self) -> int:
        """Rewarded windows so far (the t of the alpha schedule)."""
        return self._rounds

    def arm_counts(self) -> dict[int, int]:
        """Rewarded windows credited to each clock."""
        return {clock: arm.n for clock, arm in sorted(self._arms.items())}

    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "phase": self._phase,
            "normalizer": self._norm.to_dict(),
            "baseline": {
                "sum": self._baseline_sum,
                "count": self._baseline_count,
                "edp": self._baseline_edp,
            },
            "arms": {
                str(clock): {
                    "model": arm.model.to_dict(),
                    "reward_sum": arm.reward_sum,
                    "ratio_sum": arm.ratio_sum,
                }
                for clock, arm in sorted(self._arms.items())
            },
            "grid_built": self._grid_built,
            "active": list(self._active),
            "sweep": list(self._sweep),
            "sweep_attempts": self._sweep_attempts,
            "pruned": sorted(self._pruned),
            "cascade_floor_mhz": self._cascade_floor,
            "ban_boundary_mhz": self._ban_boundary,
            "rounds": self._rounds,
            "last_prune_round": self._last_prune_round,
            "last_refine_round": self._last_refine_round,
            "recent": list(self._recent),
            "rng": self._rng.bit_generator.state,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore state(); validates everything first and changes nothing on error."""
        loaded = _LoadedState.parse(state, self.tunables)
        rng = np.random.Generator(np.random.PCG64(self.seed))
        try:
            rng.bit_generator.state = loaded.rng
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise ValueError("paper state: bad rng state") from exc
        self._rng = rng
        self._norm = loaded.normalizer
        self._phase = loaded.phase
        self._baseline_sum = loaded.baseline_sum
        self._baseline_count = loaded.baseline_count
        self._baseline_edp = loaded.baseline_edp
        self._arms = loaded.arms
        self._grid_built = loaded.grid_built
        self._active = loaded.active
        self._sweep = loaded.sweep
        self._sweep_attempts = loaded.sweep_attempts
        self._pruned = loaded.pruned
        self._cascade_floor = loaded.cascade_floor
        self._ban_boundary = loaded.ban_boundary
        self._rounds = loaded.rounds
        self._last_prune_round = loaded.last_prune_round
        self._last_refine_round = loaded.last_refine_round
        self._recent = loaded.recent


def _window_edp(energy_j: float, serving: ServingSample) -> float | None:
    """Energy x mean TPOT of the window; None when no token was decoded in it."""
    hist = serving.inter_token_latency_s
    tpot = hist.mean() if hist is not None else None
    if tpot is None or not math.isfinite(tpot) or tpot <= 0:
        return None
    return energy_j * tpot


# ------------------------------------------------------------------ state parsing


@dataclass(slots=True)
class _LoadedState:
    normalizer: Normalizer
    phase: str
    baseline_sum: float
    baseline_count: int
    baseline_edp: float | None
    arms: dict[int, _Arm]
    grid_built: bool
    active: list[int]
    sweep: list[int]
    sweep_attempts: int
    pruned: set[int]
    cascade_floor: int | None
    ban_boundary: int | None
    rounds: int
    last_prune_round: int
    last_refine_round: int | None
    recent: list[int]
    rng: dict[str, Any]

    @classmethod
    def parse(cls, state: Any, tunables: PaperTunables) -> _LoadedState:
        state = _READ.mapping(state, "the state")
        if _READ.version(state) not in READABLE_VERSIONS:
            raise ValueError(f"paper state: unsupported version {state.get('version')!r}")
        _READ.mapping(state, "the state", keys=_STATE_KEYS)
        phase = state.get("phase")
        if phase not in PHASES:
            raise ValueError(f"paper state: unknown phase {phase!r}")
        normalizer = Normalizer.from_dict(state.get("normalizer"))
        if normalizer.dim != N_FEATURES:
            raise ValueError("paper state: normalizer has the wrong dimension")
        baseline = _READ.mapping(state.get("baseline"), "baseline", keys={"sum", "count", "edp"})
        baseline_edp = _READ.optional_number(baseline.get("edp"), "baseline.edp")
        if baseline_edp is not None and baseline_edp <= 0:
            raise ValueError("paper state: baseline.edp must be positive")
        if phase != BASELINE and baseline_edp is None:
            raise ValueError("paper state: a baseline is required after the baseline phase")
        rng = _parse_rng(state.get("rng"))
        recent = _READ.integers(state.get("recent"), "recent")
        if len(recent) > tunables.convergence_window:
            raise ValueError("paper state: recent is longer than the convergence window")
        grid_built = _READ.boolean(state.get("grid_built"), "grid_built")

        def optional_integer(key: str) -> int | None:
            return _READ.optional_integer(state.get(key), key)

        return cls(
            normalizer=normalizer,
            phase=phase,
            baseline_sum=_READ.number(baseline.get("sum"), "baseline.sum"),
            baseline_count=_READ.count(baseline.get("count"), "baseline.count"),
            baseline_edp=baseline_edp,
            arms=_parse_arms(state.get("arms")),
            grid_built=grid_built,
            active=_READ.integers(state.get("active"), "active"),
            sweep=_READ.integers(state.get("sweep"), "sweep"),
            sweep_attempts=_READ.count(state.get("sweep_attempts"), "sweep_attempts"),
            pruned=set(_READ.integers(state.get("pruned"), "pruned")),
            cascade_floor=optional_integer("cascade_floor_mhz"),
            ban_boundary=optional_integer("ban_boundary_mhz"),
            rounds=_READ.count(state.get("rounds"), "rounds"),
            last_prune_round=_READ.count(state.get("last_prune_round"), "last_prune_round"),
            last_refine_round=optional_integer("last_refine_round"),
            recent=recent,
            rng=rng,
        )


def _parse_rng(value: Any) -> dict[str, Any]:
    """A PCG64 state as numpy writes it, checked field by field (numpy accepts floats)."""
    rng = _READ.mapping(value, "rng")
    inner = _READ.mapping(rng.get("state"), "rng.state")
    if rng.get("bit_generator") != "PCG64":
        raise ValueError("paper state: rng must be a PCG64 state")
    for name, number, limit in (
        ("rng.state.state", inner.get("state"), 1 << 128),
        ("rng.state.inc", inner.get("inc"), 1 << 128),
        ("rng.has_uint32", rng.get("has_uint32"), 2),
        ("rng.uinteger", rng.get("uinteger"), 1 << 32),
    ):
        if _READ.count(number, name) >= limit:
            raise ValueError(f"paper state: {name} is out of range")
    return rng


def _parse_arms(value: Any) -> dict[int, _Arm]:
    raw = _READ.mapping(value, "arms")
    arms: dict[int, _Arm] = {}
    for key, entry in raw.items():
        try:
            clock = int(key)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"paper state: arm key {key!r} is not a clock") from exc
        if clock <= 0:
            raise ValueError(f"paper state: arm key {key!r} is not a clock")
        item = _READ.mapping(entry, f"arms[{key}]", keys={"model", "reward_sum", "ratio_sum"})
        model = RidgeArm.from_dict(item.get("model"))
        if model.dim != N_FEATURES:
            raise ValueError(f"paper state: arms[{key}] has the wrong dimension")
        arms[clock] = _Arm(
            model,
            _READ.number(item.get("reward_sum"), f"arms[{key}].reward_sum"),
            _READ.number(item.get("ratio_sum"), f"arms[{key}].ratio_sum"),
        )
    return arms
