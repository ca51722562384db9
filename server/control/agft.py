"""`agft`: our clock controller. The cheapest clock predicted to keep latency in budget.

Where the paper's design learns one reward per clock arm, this controller models the two
things a clock changes, separately and with the clock as a feature, so every window
teaches it about every clock:

* power  P(x, f)  — ridge regression on a cubic clock basis crossed with the load context;
* latency log L(x, f) for inter-token latency and TTFT — ridge regression on
  log(f_max / f) crossed with the load context, shrunk towards slope 1 (fully
  compute-bound: the slowest latency can grow when the clock drops), so a clock is
  only believed to be cheap in latency once windows near it have shown it.

Each window it picks, among the clocks whose *upper* latency bound stays within budget,
the one with the lowest predicted power. The budget is the SLO, and optionally a
slowdown budget relative to what default clocks would give (estimated from its own
latency model over recent windows), so the product can promise "p90 at most 10 % slower".

Safety rules come before the model and cannot be learned away:
* missing telemetry (no /metrics, unknown energy) -> default clocks;
* a growing queue, or a window that broke its budget -> straight up (max clock / a big step);
* downward moves are capped per window; upward moves are not;
* the max clock is always allowed, so the action set is never empty;
* a switch needs a predicted saving worth it (switching cost).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from server.control.features import window_features
from server.control.observation import HistogramDelta, Observation, ServingSample
from server.control.policy import ClockArms, ClockDecision, Policy, SloTargets
from server.control.ridge import RidgeArm

FloatArray = NDArray[np.float64]

STATE_VERSION = 3
N_CONTEXT = 5  # prefill rate, decode rate, running, waiting, kv usage
# Fixed scales (not running z-scores): a feature must mean the same thing in window 10
# and window 10 000, or the regression's old evidence turns into noise.
CONTEXT_SCALE = np.array([10_000.0, 2_000.0, 64.0, 1.0, 1.0])
POWER_SCALE_W = 100.0


@dataclass(frozen=True, slots=True)
class AgftTunables:
    # Aim at 5 % so the measured p90 lands within the promised 10 %: the controller sees
    # per-window statistics on vLLM's coarse buckets, not per-request latencies (at 7 %
    # conv 2023 at 50 % peak ended at +10.4 % p90 TTFT; at 5 %, +8.0 %).
    max_slowdown: float | None = 0.05  # relative p-th percentile budget vs default clocks
    budget_margin: float = 1.0  # aim this far inside the budget
    grid_step_mhz: int = 30
    floor_fraction: float = 0.35  # never below this share of the max clock
    down_step_mhz: int = 90  # largest downward move per window
    violation_step_mhz: int = 240  # upward jump after a window over budget
    queue_jump_waiting: float = 4.0  # this many waiting requests -> max clock
    min_saving_fraction: float = 0.03  # switching cost: predicted power saving to move
    latency_alpha: float = 0.5  # width multiplier on the latency upper bound
    power_alpha: float = 0.3  # optimism on power (exploration inside the safe set)
    ridge_lambda: float = 1.0
    reference_windows: int = 900  # windows behind the relative budget's reference
    min_tokens_for_itl: float = 20.0
    warmup_windows: int = 10  # at default clocks first: the reference needs data
    dwell_windows: int = 2  # windows to hold after a move down before the next one
    breach_factor: float = 1.25  # observed mean this far over budget is a breach
    miss_share_factor: float = 1.0  # SLO misses in a window above this x (100 - p) % -> up
    # A first token slower than this share of the TTFT objective counts as a near miss in
    # the miss rule. A window where a tenth of first tokens already take half the objective
    # is congested: slowing it turns those into real misses (measured: conv 2023 on H100 at
    # 85 % peak, 61 of agft's 74 extra misses had default TTFTs of 0.25-0.49 s; code 2023
    # at 50 % peak lost 2.3 points of attainment without this rule and none with it).
    ttft_miss_fraction: float = 0.5
    itl_miss_factor: float = 1.0  # an inter-token gap counts as a miss above this x TPOT


_FRACTIONS = ("floor_fraction", "ttft_miss_fraction")
# Zero would divide by zero or empty a budget (a margin of 0 is a log of 0 at decide time).
_POSITIVE = ("budget_margin", "ridge_lambda", "breach_factor", "grid_step_mhz", "reference_windows")


def tunables_from_text(text: str) -> dict[str, Any]:
    """Overrides of AgftTunables from "name=value:name=value" (`agft:...` policy names).

    Lets an operator move the controller along its saving/attainment frontier (for example
    `miss_share_factor=0.5`, docs/BENCHMARK.md) without a code change. Raises ValueError
    naming the offending part."""
    known = {f.name: f for f in fields(AgftTunables)}
    out: dict[str, Any] = {}
    for part in text.split(":"):
        name, sep, raw = part.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise ValueError(f"tunable {part!r} is not name=value")
        if name not in known:
            raise ValueError(f"unknown tunable {name!r}; known: {', '.join(sorted(known))}")
        if name in out:
            raise ValueError(f"tunable {name!r} given twice")
        default = known[name].default
        if raw.lower() == "none" and name == "max_slowdown":
            out[name] = None
            continue
        try:
            value: float = int(raw) if isinstance(default, int) else float(raw)
        except ValueError:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"tunable {name}={raw!r} is not {kind}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"tunable {name}={raw} must be finite and not negative")
        if name in _POSITIVE and value <= 0:
            raise ValueError(f"tunable {name}={raw} must be above 0")
        if name in _FRACTIONS and not 0 < value <= 1:
            raise ValueError(f"tunable {name}={raw} must be in (0, 1]")
        out[name] = value
    return out


def _clock_basis(f_norm: float) -> tuple[float, float, float, float]:
    return (1.0, f_norm, f_norm * f_norm, f_norm * f_norm * f_norm)


class _LatencyModel:
    """log L(x, f) = prior_slope * l + theta . phi(x, l), l = log(f_max / f)."""

    PRIOR_SLOPE = 1.0

    def __init__(self, lam: float) -> None:
        self.ridge = RidgeArm(2 * (N_CONTEXT + 1), lam)

    @staticmethod
    def features(context: FloatArray, ell: float) -> FloatArray:
        base = np.concatenate(([1.0], context))
        return np.concatenate((base, ell * base))

    def update(self, context: FloatArray, ell: float, latency_s: float) -> None:
        target = math.log(latency_s) - self.PRIOR_SLOPE * ell
        self.ridge.update(self.features(context, ell), target)

    def upper_log(self, context: FloatArray, ells: FloatArray, alpha: float) -> FloatArray:
        phi = self._matrix(context, ells)
        mean, width = self.ridge.predict_many(phi)
        return mean + alpha * width + self.PRIOR_SLOPE * ells

    def mean_log(self, context: FloatArray, ell: float) -> float:
        return self.ridge.predict(self.features(context, ell)) + self.PRIOR_SLOPE * ell

    def speedup_to_max(self, context: FloatArray, ell: float) -> float:
        """Predicted latency at the max clock over latency at this clock (<= 1 when slower)."""
        if ell == 0.0:
            return 1.0
        return min(1.0, math.exp(self.mean_log(context, 0.0) - self.mean_log(context, ell)))

    def _matrix(self, context: FloatArray, ells: FloatArray) -> FloatArray:
        base = np.concatenate(([1.0], context))
        return np.hstack((np.tile(base, (len(ells), 1)), ells[:, None] * base[None, :]))


class _PowerModel:
    """P(x, f) / 100 W = theta . (clock basis (x) [1, context])."""

    def __init__(self, lam: float) -> None:
        self.ridge = RidgeArm(4 * (N_CONTEXT + 1), lam)

    @staticmethod
    def features(context: FloatArray, f_norm: float) -> FloatArray:
        base = np.concatenate(([1.0], context))
        return np.outer(_clock_basis(f_norm), base).ravel()

    def update(self, context: FloatArray, f_norm: float, power_w: float) -> None:
        self.ridge.update(self.features(context, f_norm), power_w / POWER_SCALE_W)

    def optimistic(self, context: FloatArray, basis: FloatArray, alpha: float) -> FloatArray:
        """Lower confidence bound on power for each row of a precomputed clock basis."""
        base = np.concatenate(([1.0], context))
        phi = (basis[:, :, None] * base[None, None, :]).reshape(len(basis), -1)
        mean, width = self.ridge.predict_many(phi)
        return (mean - alpha * width) * POWER_SCALE_W


class _Reference:
    """Recent latencies as default clocks would have given them (for the relative budget).

    The percentile is recomputed every `refresh` additions, not per decision: it moves
    slowly and sorting hundreds of values each window would dominate the decision cost.
    """

    def __init__(self, size: int, refresh: int = 20) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.weights: deque[float] = deque(maxlen=size)
        self._refresh = refresh
        self._since = refresh
        self._cached: dict[float, float | None] = {}

    def add(self, value: float, weight: float) -> None:
        if math.isfinite(value) and value > 0 and weight > 0:
            self.values.append(value)
            self.weights.append(weight)
            self._since += 1

    def percentile(self, q: float) -> float | None:
        if self._since >= self._refresh or q not in self._cached:
            self._cached[q] = self._compute(q)
            self._since = 0
        return self._cached[q]

    def _compute(self, q: float) -> float | None:
        if len(self.values) < 5:
            return None
        vals = np.asarray(self.values)
        order = np.argsort(vals)
        cum = np.cumsum(np.asarray(self.weights)[order])
        idx = int(np.searchsorted(cum, q / 100.0 * cum[-1]))
        return float(vals[order][min(idx, len(vals) - 1)])


class _RelativeBudget:
    """ "At most (1 + slowdown) x what default clocks would give", closed-loop.

    `reference` holds each window's latency statistic scaled to the max clock by the
    latency model; `seen` holds the same statistic as measured. The model's scaling can
    be wrong (queueing makes latency grow faster than any per-window model says), so the
    limit is multiplied by a gain that integral control steers until the measured
    percentile sits at (1 + slowdown) x the reference percentile.
    """

    # A slow integrator: per-window tails read off coarse buckets are noisy, and at a rate
    # of 0.5 the gain swung between its bounds every few minutes (conv 2023, H100, 85 %
    # peak), so the controller alternated between too tight and too loose; at 0.1 it saves
    # 10.6 % instead of 8.2 % there, and holds the promise at 50 % peak.
    GAIN_MIN, GAIN_MAX, GAIN_RATE = 0.3, 1.5, 0.1

    def __init__(self, size: int) -> None:
        self.reference = _Reference(size)
        self.seen = _Reference(size)
        self.gain = 1.0
        self._since_adapt = 0

    def add(self, measured: float, speedup: float, weight: float) -> None:
        self.reference.add(measured * speedup, weight)
        self.seen.add(measured, weight)
        self._since_adapt += 1

    def limit(self, q: float, slowdown: float) -> float | None:
        ref = self.reference.percentile(q)
        if ref is None:
            return None
        if self._since_adapt >= 20:
            self._adapt(q, slowdown, ref)
        return self.gain * (1.0 + slowdown) * ref

    def _adapt(self, q: float, slowdown: float, ref: float) -> None:
        self._since_adapt = 0
        seen = self.seen.percentile(q)
        if seen is None or seen <= 0:
            return
        error = (1.0 + slowdown) * ref / seen  # > 1: room left; < 1: over the promise
        self.gain = min(self.GAIN_MAX, max(self.GAIN_MIN, self.gain * error**self.GAIN_RATE))

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": [list(self.reference.values), list(self.reference.weights)],
            "seen": [list(self.seen.values), list(self.seen.weights)],
            "gain": self.gain,
        }

    @classmethod
    def from_dict(cls, data: Any, size: int) -> _RelativeBudget:
        budget = cls(size)
        for key in ("reference", "seen"):
            values, weights = data[key]
            target = getattr(budget, key)
            for v, w in zip(values, weights, strict=True):
                target.add(float(v), float(w))
        gain = float(data["gain"])
        if not cls.GAIN_MIN <= gain <= cls.GAIN_MAX:
            raise ValueError(f"budget gain {gain} out of range")
        budget.gain = gain
        return budget


@dataclass(frozen=True, slots=True)
class _Candidates:
    """The clocks considered for one instance, with their precomputed model inputs."""

    arms: ClockArms
    clocks: FloatArray
    ells: FloatArray
    basis: FloatArray


def _context(obs: Observation) -> FloatArray | None:
    s = obs.serving
    if s is None:
        return None
    d = max(obs.duration_s, 1e-6)
    raw = [
        (s.prompt_tokens or 0.0) / d if s.prompt_tokens is not None else math.nan,
        (s.generation_tokens or 0.0) / d if s.generation_tokens is not None else math.nan,
        s.num_requests_running if s.num_requests_running is not None else math.nan,
        math.log1p(s.num_requests_waiting) if s.num_requests_waiting is not None else math.nan,
        s.kv_cache_usage if s.kv_cache_usage is not None else math.nan,
    ]
    x = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return None
    scaled: FloatArray = np.minimum(x / CONTEXT_SCALE, 10.0)
    return scaled


def _share_above(hist: HistogramDelta | None, limit: float) -> float | None:
    """Share of a window's observations certainly above `limit` (from the first bucket
    bound at or above it); None when the window has none."""
    if hist is None or hist.count <= 0:
        return None
    first = next((i for i, b in enumerate(hist.upper_bounds) if b >= limit), None)
    if first is None:
        return hist.bucket_counts[-1] / hist.count
    return sum(hist.bucket_counts[first + 1 :]) / hist.count


def _idle(s: ServingSample) -> bool:
    return (
        (s.num_requests_running or 0.0) == 0.0
        and (s.num_requests_waiting or 0.0) == 0.0
        and (s.prompt_tokens or 0.0) == 0.0
        and (s.generation_tokens or 0.0) == 0.0
    )


def _mean_and_count(h: HistogramDelta | None) -> tuple[float, float] | None:
    """A window's exact mean latency (histogram sum / count) and its observation count."""
    if h is None or h.count <= 0 or h.sum <= 0:
        return None
    return h.sum / h.count, float(h.count)


class AgftPolicy(Policy):
    name = "agft"

    def __init__(self, slo: SloTargets, seed: int = 0, **tunables: Any) -> None:
        self.slo = slo
        self.seed = seed
        self.tunables = AgftTunables(**tunables)
        t = self.tunables
        self._power = _PowerModel(t.ridge_lambda)
        self._itl = _LatencyModel(t.ridge_lambda)
        self._ttft = _LatencyModel(t.ridge_lambda)
        self._rel_itl = _RelativeBudget(t.reference_windows)
        self._rel_ttft = _RelativeBudget(t.reference_windows)
        # p-th percentile over mean, per metric: the SLO is on a percentile, the models on means.
        self._ttft_tail_ratio = 2.0
        self._windows = 0
        self._last_choice: int | None = None
        self._last_waiting = 0.0
        self._dwell = 0
        self._last_busy_choice: int | None = None
        self._grid: _Candidates | None = None
        self._last_context: FloatArray | None = None  # for beliefs(), never for deciding

    # ---- the decision ------------------------------------------------------------------
    def decide(self, observation: Observation, arms: ClockArms) -> ClockDecision:
        features = window_features(observation)
        f_max = arms.supported_mhz[-1] if arms.supported_mhz else arms.default_mhz
        context = _context(observation)
        self._last_context = context
        energy = observation.energy_j
        if context is None or energy is None or observation.serving is None:
            self._last_choice = None
            return ClockDecision(None, "agft: telemetry unknown, default clocks", features)
        in_force = observation.clock_in_force_mhz or f_max
        # After a window the server held at default clocks (energy calibration), move on
        # from where this controller was, not from the max clock it did not choose.
        base = in_force
        if observation.calibration and self._last_choice is not None:
            base = self._last_choice
        serving = observation.serving
        over = self._learn(
            context, in_force, f_max, energy / max(observation.duration_s, 1e-6), serving
        )
        self._windows += 1
        waiting = serving.num_requests_waiting or 0.0
        growing = waiting >= 1.0 and waiting > self._last_waiting
        self._last_waiting = waiting
        if self._windows <= self.tunables.warmup_windows:
            return self._choose(
                None, f"agft: warm-up {self._windows} at default clocks", features, f_max
            )
        if waiting >= self.tunables.queue_jump_waiting or (growing and waiting >= 2.0):
            return self._choose(None, f"agft: queue of {waiting:.0f}, max clock", features, f_max)
        if _idle(serving):
            # Idle: hold the clock last chosen under load. Drifting down while nothing
            # runs would make the next burst pay for it (the reference design's fault);
            # a lock costs nothing while the GPU idles, and waking is one window away.
            held = self._last_busy_choice
            if held is not None and held < self.tunables.floor_fraction * f_max:
                # Chosen under other tunables (a state restored after a retune): not held.
                held = None
            return self._choose(held, "agft: idle, holding the last busy clock", features, f_max)
        if over is not None:
            target = min(f_max, in_force + self.tunables.violation_step_mhz)
            clock = arms.snap_down(target) or f_max
            self._dwell = self.tunables.dwell_windows
            return self._choose(
                clock, f"agft: over budget at {in_force} MHz ({over}), up", features, f_max
            )
        clock, why = self._cheapest_safe(context, arms, f_max, base)
        if clock < base:
            if self._dwell > 0:
                # Hold after a move so the models see the clock before moving on down.
                self._dwell -= 1
                return self._choose(base, f"agft: hold {base} MHz (dwell)", features, f_max)
            self._dwell = self.tunables.dwell_windows
        return self._choose(clock, why, features, f_max)

    def _choose(
        self, clock: int | None, reason: str, features: dict[str, float], f_max: int
    ) -> ClockDecision:
        # Locking at the max clock is what default clocks do under load; say "default".
        if clock is not None and clock >= f_max:
            clock = None
        self._last_choice = clock
        if not reason.startswith("agft: idle"):
            self._last_busy_choice = clock
        return ClockDecision(clock, reason, features)

    def _budgets(self, f_max: int) -> tuple[float, float]:
        """Budgets on the *mean* latency of a window, for ITL and TTFT."""
        # A request's TPOT averages the step times of the windows it lives through, so the
        # p-th percentile of per-window mean ITL tracks the p-th percentile of TPOT. TTFT is
        # one value per request: its percentile is the window's quantile, which the model
        # reaches through the window's quantile/mean ratio.
        q = self.slo.percentile
        itl_limit, ttft_limit = self.slo.tpot_s, self.slo.ttft_s
        slowdown = self.tunables.max_slowdown
        if slowdown is not None:
            rel_itl = self._rel_itl.limit(q, slowdown)
            rel_ttft = self._rel_ttft.limit(q, slowdown)
            if rel_itl is not None:
                itl_limit = min(itl_limit, rel_itl)
            if rel_ttft is not None:
                ttft_limit = min(ttft_limit, rel_ttft)
        m = self.tunables.budget_margin
        return itl_limit * m, ttft_limit / self._ttft_tail_ratio * m

    def beliefs(self, arms: ClockArms) -> dict[str, Any] | None:
        """Per candidate clock: predicted power and latency for the last window's load,
        and whether the latency bounds allow it (read-only: nothing here is learnt)."""
        context = self._last_context
        if context is None or not arms.supported_mhz:
            return None
        t = self.tunables
        f_max = arms.supported_mhz[-1]
        grid = self._candidates(arms, f_max)
        q = self.slo.percentile
        limits: dict[str, float | None] = {
            "itl_slo_s": self.slo.tpot_s,
            "ttft_slo_s": self.slo.ttft_s,
        }
        for key, budget in (("itl", self._rel_itl), ("ttft", self._rel_ttft)):
            ref = budget.reference.percentile(q)
            slowdown = t.max_slowdown
            limits[f"{key}_relative_s"] = (
                budget.gain * (1.0 + slowdown) * ref
                if ref is not None and slowdown is not None
                else None
            )
        itl_mean_budget = (
            min(v for v in (limits["itl_slo_s"], limits["itl_relative_s"]) if v is not None)
            * t.budget_margin
        )
        ttft_budget = (
            min(v for v in (limits["ttft_slo_s"], limits["ttft_relative_s"]) if v is not None)
            * t.budget_margin
        )
        itl_upper = np.exp(self._itl.upper_log(context, grid.ells, t.latency_alpha))
        ttft_upper = np.exp(self._ttft.upper_log(context, grid.ells, t.latency_alpha))
        ttft_upper_q = ttft_upper * self._ttft_tail_ratio
        base = np.concatenate(([1.0], context))
        phi = (grid.basis[:, :, None] * base[None, None, :]).reshape(len(grid.basis), -1)
        power, _width = self._power.ridge.predict_many(phi)
        clocks = []
        for i, clock in enumerate(grid.clocks):
            why = []
            if itl_upper[i] > itl_mean_budget:
                why.append("token gaps over budget")
            if ttft_upper_q[i] > ttft_budget:
                why.append("first tokens over budget")
            allowed = i == 0 or not why  # the max clock is always allowed
            clocks.append(
                {
                    "clock_mhz": int(clock),
                    "power_w": float(power[i] * POWER_SCALE_W),
                    "itl_upper_s": float(itl_upper[i]),
                    "ttft_upper_s": float(ttft_upper_q[i]),
                    "allowed": allowed,
                    "why_not": "; ".join(why) if not allowed else "",
                }
            )
        return {
            "windows_learnt": self._windows,
            "percentile": q,
            "itl_budget_s": itl_mean_budget,
            "ttft_budget_s": ttft_budget,
            **limits,
            "max_slowdown": t.max_slowdown,
            "last_choice_mhz": self._last_choice,
            "clocks": clocks,
        }

    def _candidates(self, arms: ClockArms, f_max: int) -> _Candidates:
        if self._grid is not None and self._grid.arms is arms:
            return self._grid
        floor = self.tunables.floor_fraction * f_max
        step = self.tunables.grid_step_mhz
        picked: list[int] = []
        for clock in reversed(arms.supported_mhz):
            if clock < floor:
                break
            if not picked or picked[-1] - clock >= step:
                picked.append(clock)
        clocks = np.asarray(picked, dtype=np.float64)  # descending, starts at f_max
        f_norm = clocks / f_max
        self._grid = _Candidates(
            arms=arms,
            clocks=clocks,
            ells=np.log(f_max / clocks),
            basis=np.stack([np.ones_like(f_norm), f_norm, f_norm**2, f_norm**3], axis=1),
        )
        return self._grid

    def _cheapest_safe(
        self, context: FloatArray, arms: ClockArms, f_max: int, in_force: int
    ) -> tuple[int, str]:
        t = self.tunables
        grid = self._candidates(arms, f_max)
        clocks, ells = grid.clocks, grid.ells
        itl_budget, ttft_budget = self._budgets(f_max)
        itl_ok = self._itl.upper_log(context, ells, t.latency_alpha) <= math.log(itl_budget)
        ttft_ok = self._ttft.upper_log(context, ells, t.latency_alpha) <= math.log(ttft_budget)
        safe = itl_ok & ttft_ok
        safe[0] = True  # the max clock is always allowed: never an empty action set
        # Downward moves are capped; upward moves are free.
        safe &= clocks >= in_force - t.down_step_mhz
        safe[0] = True
        power = self._power.optimistic(context, grid.basis, t.power_alpha)
        power_safe = np.where(safe, power, np.inf)
        best = int(np.argmin(power_safe))
        current = np.nonzero(clocks == in_force)[0]
        if current.size and safe[current[0]]:
            here = power[current[0]]
            # Switching cost: stay unless the move saves enough.
            if power[best] > here * (1.0 - t.min_saving_fraction):
                return in_force, f"agft: hold {in_force} MHz (~{here:.0f} W)"
        chosen = int(clocks[best])
        return chosen, (
            f"agft: {chosen} MHz cheapest within budget "
            f"(~{power[best]:.0f} W; ITL<{itl_budget * 1e3:.1f} ms, "
            f"TTFT<{ttft_budget * 1e3:.0f} ms)"
        )

    # ---- learning -----------------------------------------------------------------------
    def _learn(
        self,
        context: FloatArray,
        in_force: int,
        f_max: int,
        power_w: float,
        serving: ServingSample,
    ) -> str | None:
        """Fold the window into the models; says why when it broke its budget, else None."""
        f_norm = in_force / f_max
        ell = math.log(f_max / in_force)
        if math.isfinite(power_w) and power_w >= 0:
            self._power.update(context, f_norm, power_w)
        over: list[str] = []
        itl_budget, ttft_budget = self._budgets(f_max)
        itl = _mean_and_count(serving.inter_token_latency_s)
        if itl is not None and itl[1] >= self.tunables.min_tokens_for_itl:
            self._itl.update(context, ell, itl[0])
            speedup = self._itl.speedup_to_max(context, ell)
            self._rel_itl.add(itl[0], speedup, itl[1])
            if itl[0] > itl_budget * self.tunables.breach_factor:
                over.append(f"mean ITL {itl[0] * 1e3:.1f} ms")
        ttft = _mean_and_count(serving.ttft_s)
        if ttft is not None:
            self._ttft.update(context, ell, ttft[0])
            tail = self._track_ttft_tail(serving.ttft_s, ttft[0])
            speedup = self._ttft.speedup_to_max(context, ell)
            self._rel_ttft.add(tail, speedup, ttft[1])
            if ttft[0] > ttft_budget * self.tunables.breach_factor:
                over.append(f"mean TTFT {ttft[0] * 1e3:.0f} ms")
        # SLO misses are counted exactly where the limit is a bucket bound (vLLM has 0.25 s
        # and 0.5 s for TTFT and 0.05 s for inter-token latency): a window that already lets
        # more requests (nearly) miss than the percentile allows must not be slowed further.
        allowed = self.tunables.miss_share_factor * (1.0 - self.slo.percentile / 100.0)
        for what, hist, limit in (
            ("TTFT", serving.ttft_s, self.tunables.ttft_miss_fraction * self.slo.ttft_s),
            ("ITL", serving.inter_token_latency_s, self.tunables.itl_miss_factor * self.slo.tpot_s),
        ):
            share = _share_above(hist, limit)
            if share is not None and share > allowed:
                over.append(f"{share:.0%} of {what} over {limit * 1e3:.0f} ms")
        return "; ".join(over) if over else None

    def _track_ttft_tail(self, hist: HistogramDelta | None, mean: float) -> float:
        """The window's p-th percentile TTFT (from its histogram), tracking percentile/mean."""
        q = hist.quantile(self.slo.percentile / 100.0) if hist is not None else None
        if q is None or q <= 0:
            return mean * self._ttft_tail_ratio
        if hist is not None and hist.count >= 10:
            ratio = max(1.0, q / mean)
            self._ttft_tail_ratio = 0.98 * self._ttft_tail_ratio + 0.02 * ratio
        return max(q, mean)

    # ---- persistence --------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "tunables": asdict(self.tunables),
            "windows": self._windows,
            "last_choice": self._last_choice,
            "last_waiting": self._last_waiting,
            "dwell": self._dwell,
            "last_busy_choice": self._last_busy_choice,
            "ttft_tail_ratio": self._ttft_tail_ratio,
            "power": self._power.ridge.to_dict(),
            "itl": self._itl.ridge.to_dict(),
            "ttft": self._ttft.ridge.to_dict(),
            "relative_itl": self._rel_itl.to_dict(),
            "relative_ttft": self._rel_ttft.to_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"agft state: unsupported version {state.get('version')!r}")
        try:
            # The tunables in force are this policy's own (code defaults and settings), not
            # the saved ones: otherwise an upgrade that retunes the controller would never
            # reach an instance whose state predates it. The saved ones are a record.
            if not isinstance(state["tunables"], dict):
                raise ValueError("tunables must be an object")
            power = RidgeArm.from_dict(state["power"])
            itl = RidgeArm.from_dict(state["itl"])
            ttft = RidgeArm.from_dict(state["ttft"])
            if (power.dim, itl.dim, ttft.dim) != (
                self._power.ridge.dim,
                self._itl.ridge.dim,
                self._ttft.ridge.dim,
            ):
                raise ValueError("model dimensions differ")
            size = self.tunables.reference_windows
            rel_itl = _RelativeBudget.from_dict(state["relative_itl"], size)
            rel_ttft = _RelativeBudget.from_dict(state["relative_ttft"], size)
            tail = float(state["ttft_tail_ratio"])
            windows = int(state["windows"])
            last_choice = state["last_choice"]
            last_waiting = float(state["last_waiting"])
            dwell = int(state["dwell"])
            last_busy = state["last_busy_choice"]
            if last_busy is not None and not isinstance(last_busy, int):
                raise ValueError("last_busy_choice must be an int or null")
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"agft state: {err}") from err
        if last_choice is not None and not isinstance(last_choice, int):
            raise ValueError("agft state: last_choice must be an int or null")
        self._power.ridge, self._itl.ridge, self._ttft.ridge = power, itl, ttft
        self._rel_itl, self._rel_ttft = rel_itl, rel_ttft
        self._ttft_tail_ratio = tail
        self._windows = windows
        self._last_choice = last_choice
        self._last_waiting = last_waiting
        self._dwell = dwell
        self._last_busy_choice = last_busy
