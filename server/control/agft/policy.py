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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from server.control.agft.budget import RelativeBudget
from server.control.agft.models import POWER_SCALE_W, FloatArray, LatencyModel, PowerModel
from server.control.agft.signals import context_of, is_idle, mean_and_count, share_above
from server.control.agft.tail import TtftPromises
from server.control.agft.tpot import TpotMisses
from server.control.agft.tunables import AgftTunables
from server.control.features import window_features
from server.control.observation import HistogramDelta, Observation, ServingSample
from server.control.policy import ClockArms, ClockDecision, Policy, SloTargets
from server.control.ridge import RidgeArm
from server.control.state_schema import StateReader

STATE_VERSION = 7
# Version 6 is version 7 with its float arrays as JSON lists: read alike.
READABLE_VERSIONS = (6, STATE_VERSION)
_STATE_KEYS = frozenset(
    (
        "version",
        "tunables",
        "windows",
        "last_choice",
        "last_waiting",
        "dwell",
        "last_busy_choice",
        "ttft_tail_ratio",
        "power",
        "itl",
        "ttft",
        "relative_itl",
        "ttft_promises",
        "tpot_misses",
    )
)


@dataclass(frozen=True, slots=True)
class Candidates:
    """The clocks considered for one instance, with their precomputed model inputs."""

    arms: ClockArms
    clocks: FloatArray
    ells: FloatArray
    basis: FloatArray


class AgftPolicy(Policy):
    name = "agft"

    def __init__(self, slo: SloTargets, seed: int = 0, **tunables: Any) -> None:
        self.slo = slo
        self.seed = seed
        self.tunables = AgftTunables(**tunables)
        t = self.tunables
        self._power = PowerModel(t.ridge_lambda)
        self._itl = LatencyModel(t.ridge_lambda)
        self._ttft = LatencyModel(t.ridge_lambda)
        self._rel_itl = RelativeBudget(t.reference_windows)
        self._ttft_promises = TtftPromises(t.reference_windows)
        self._tpot_misses = TpotMisses(t.reference_windows)
        # p-th percentile over mean, per metric: the SLO is on a percentile, the models on means.
        self._ttft_tail_ratio = 2.0
        self._windows = 0
        self._last_choice: int | None = None
        self._last_waiting = 0.0
        self._dwell = 0
        self._last_busy_choice: int | None = None
        self._grid: Candidates | None = None
        self._last_context: FloatArray | None = None  # for beliefs(), never for deciding

    # ---- the decision ------------------------------------------------------------------
    def decide(self, observation: Observation, arms: ClockArms) -> ClockDecision:
        features = window_features(observation)
        f_max = arms.supported_mhz[-1] if arms.supported_mhz else arms.default_mhz
        context = context_of(observation)
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
        if is_idle(serving):
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
        clock, why, ttft_binds = self._cheapest_safe(context, arms, f_max, base)
        if clock < base:
            if self._dwell > 0:
                # Hold after a move so the models see the clock before moving on down.
                self._dwell -= 1
                return self._choose(
                    base, f"agft: hold {base} MHz (dwell)", features, f_max, ttft_binds
                )
            self._dwell = self.tunables.dwell_windows
        return self._choose(clock, why, features, f_max, ttft_binds)

    def resume(self) -> None:
        self._rel_itl.resume()
        self._ttft_promises.resume()
        self._tpot_misses.resume()

    def _choose(
        self,
        clock: int | None,
        reason: str,
        features: dict[str, float],
        f_max: int,
        boost_helps: bool = True,
    ) -> ClockDecision:
        # Locking at the max clock is what default clocks do under load; say "default".
        if clock is not None and clock >= f_max:
            clock = None
        self._last_choice = clock
        if not reason.startswith("agft: idle"):
            self._last_busy_choice = clock
        return ClockDecision(clock, reason, features, boost_helps=boost_helps)

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
            if rel_itl is not None:
                itl_limit = min(itl_limit, rel_itl)
        itl_limit *= self._tpot_gain()
        ttft_limit = self._ttft_promises.limit(
            q / 100.0, slowdown, ttft_limit, self.tunables.attainment_loss
        )
        m = self.tunables.budget_margin
        return itl_limit * m, ttft_limit / self._ttft_ratio() * m

    def _tpot_gain(self) -> float:
        """The attainment promise's hold on token gaps (1: none; below: tighter)."""
        return self._tpot_misses.gain if self.tunables.attainment_loss is not None else 1.0

    def _ttft_ratio(self) -> float:
        """p-th percentile over mean TTFT: of the pooled requests once there are enough,
        else the windows' running ratio."""
        pooled = self._ttft_promises.tail_ratio(self.slo.percentile / 100.0)
        return pooled if pooled is not None else self._ttft_tail_ratio

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
        ref = self._rel_itl.reference.percentile(q)
        limits["itl_relative_s"] = (
            self._rel_itl.gain * (1.0 + t.max_slowdown) * ref
            if ref is not None and t.max_slowdown is not None
            else None
        )
        ttft_relative = self._ttft_promises.limit(
            q / 100.0, t.max_slowdown, math.inf, t.attainment_loss
        )
        limits["ttft_relative_s"] = None if math.isinf(ttft_relative) else ttft_relative
        itl_mean_budget = (
            min(v for v in (limits["itl_slo_s"], limits["itl_relative_s"]) if v is not None)
            * self._tpot_gain()
            * t.budget_margin
        )
        ttft_budget = (
            min(v for v in (limits["ttft_slo_s"], limits["ttft_relative_s"]) if v is not None)
            * t.budget_margin
        )
        itl_upper = np.exp(self._itl.upper_log(context, grid.ells, t.latency_alpha))
        ttft_upper = np.exp(self._ttft.upper_log(context, grid.ells, t.latency_alpha))
        ttft_upper_q = ttft_upper * self._ttft_ratio()
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
            "tpot_attainment_gain": self._tpot_gain(),
            "last_choice_mhz": self._last_choice,
            "clocks": clocks,
        }

    def _candidates(self, arms: ClockArms, f_max: int) -> Candidates:
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
        self._grid = Candidates(
            arms=arms,
            clocks=clocks,
            ells=np.log(f_max / clocks),
            basis=np.stack([np.ones_like(f_norm), f_norm, f_norm**2, f_norm**3], axis=1),
        )
        return self._grid

    def _cheapest_safe(
        self, context: FloatArray, arms: ClockArms, f_max: int, in_force: int
    ) -> tuple[int, str, bool]:
        """The clock, why, and whether first tokens limit it (a cheaper clock would keep
        the token gaps in budget): only then can the fast loop's boost buy a lower clock."""
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
        itl_only = itl_ok & (clocks >= in_force - t.down_step_mhz)
        itl_only[0] = True
        ttft_binds = bool(np.min(np.where(itl_only, power, np.inf)) < power[best])
        current = np.nonzero(clocks == in_force)[0]
        if current.size and safe[current[0]]:
            here = power[current[0]]
            # Switching cost: stay unless the move saves enough.
            if power[best] > here * (1.0 - t.min_saving_fraction):
                return in_force, f"agft: hold {in_force} MHz (~{here:.0f} W)", ttft_binds
        chosen = int(clocks[best])
        return (
            chosen,
            f"agft: {chosen} MHz cheapest within budget "
            f"(~{power[best]:.0f} W; ITL<{itl_budget * 1e3:.1f} ms, "
            f"TTFT<{ttft_budget * 1e3:.0f} ms)",
            ttft_binds,
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
        itl = mean_and_count(serving.inter_token_latency_s)
        if itl is not None and itl[1] >= self.tunables.min_tokens_for_itl:
            self._itl.update(context, ell, itl[0])
            speedup = self._itl.speedup_to_max(context, ell)
            self._rel_itl.add(itl[0], speedup, itl[1])
            if itl[0] > itl_budget * self.tunables.breach_factor:
                over.append(f"mean ITL {itl[0] * 1e3:.1f} ms")
        loss = self.tunables.attainment_loss
        tpot = serving.request_tpot_s
        tpot_misses = 0.0
        if loss is not None and tpot is not None:
            tpot_misses = self._tpot_misses.excess(
                tpot, self._itl.speedup_to_max(context, ell), self.slo.tpot_s
            )
        ttft_misses = 0.0
        ttft = mean_and_count(serving.ttft_s)
        if ttft is not None:
            self._ttft.update(context, ell, ttft[0])
            self._track_ttft_tail(serving.ttft_s, ttft[0])
            if serving.ttft_s is not None:
                ttft_misses = self._ttft_promises.add(
                    serving.ttft_s,
                    self._ttft.speedup_to_max(context, ell),
                    self.slo.percentile / 100.0,
                    self.tunables.max_slowdown,
                    self.slo.ttft_s,
                    loss,
                    other_misses=tpot_misses,
                )
            if ttft[0] > ttft_budget * self.tunables.breach_factor:
                over.append(f"mean TTFT {ttft[0] * 1e3:.0f} ms")
        if loss is not None and tpot is not None:
            self._tpot_misses.add(tpot, tpot_misses + ttft_misses, loss)
        # SLO misses are counted exactly where the limit is a bucket bound (vLLM has 0.25 s
        # and 0.5 s for TTFT and 0.05 s for inter-token latency): a window that already lets
        # more requests (nearly) miss than the percentile allows must not be slowed further.
        allowed = self.tunables.miss_share_factor * (1.0 - self.slo.percentile / 100.0)
        for what, hist, limit in (
            ("TTFT", serving.ttft_s, self.tunables.ttft_miss_fraction * self.slo.ttft_s),
            ("ITL", serving.inter_token_latency_s, self.tunables.itl_miss_factor * self.slo.tpot_s),
        ):
            share = share_above(hist, limit)
            if share is not None and share > allowed:
                over.append(f"{share:.0%} of {what} over {limit * 1e3:.0f} ms")
        return "; ".join(over) if over else None

    def _track_ttft_tail(self, hist: HistogramDelta | None, mean: float) -> None:
        """Track the windows' p-th percentile over mean TTFT: the budget's ratio until the
        pooled reference holds enough requests to give its own."""
        q = hist.quantile(self.slo.percentile / 100.0) if hist is not None else None
        if q is not None and q > 0 and hist is not None and hist.count >= 10:
            ratio = max(1.0, q / mean)
            self._ttft_tail_ratio = 0.98 * self._ttft_tail_ratio + 0.02 * ratio

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
            "ttft_promises": self._ttft_promises.to_dict(),
            "tpot_misses": self._tpot_misses.to_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore state(); anything malformed raises ValueError and changes nothing."""
        read = StateReader("agft state")
        state = read.mapping(state, "the state")
        if read.version(state) not in READABLE_VERSIONS:
            raise read.fail(
                "version", f"{state.get('version')!r} is not one of {list(READABLE_VERSIONS)}"
            )
        read.mapping(state, "the state", keys=_STATE_KEYS)
        # The tunables in force are this policy's own (code defaults and settings), not
        # the saved ones: otherwise an upgrade that retunes the controller would never
        # reach an instance whose state predates it. The saved ones are a record.
        read.mapping(state.get("tunables"), "tunables")
        models = {}
        for key, current in (("power", self._power), ("itl", self._itl), ("ttft", self._ttft)):
            try:
                models[key] = RidgeArm.from_dict(state.get(key))
            except ValueError as err:
                raise read.fail(key, str(err)) from None
            if models[key].dim != current.ridge.dim:
                raise read.fail(key, f"has dimension {models[key].dim}, not {current.ridge.dim}")
        size = self.tunables.reference_windows
        rel_itl = RelativeBudget.from_dict(state.get("relative_itl"), size, read, "relative_itl")
        promises = TtftPromises.from_dict(state.get("ttft_promises"), size, read, "ttft_promises")
        tpot_misses = TpotMisses.from_dict(state.get("tpot_misses"), size, read, "tpot_misses")
        tail = read.bounded(state.get("ttft_tail_ratio"), "ttft_tail_ratio", 1.0, math.inf)
        windows = read.count(state.get("windows"), "windows")
        last_choice = read.optional_integer(state.get("last_choice"), "last_choice")
        last_waiting = read.bounded(state.get("last_waiting"), "last_waiting", 0.0, math.inf)
        dwell = read.count(state.get("dwell"), "dwell")
        last_busy = read.optional_integer(state.get("last_busy_choice"), "last_busy_choice")
        self._power.ridge, self._itl.ridge, self._ttft.ridge = (
            models["power"],
            models["itl"],
            models["ttft"],
        )
        self._rel_itl, self._ttft_promises = rel_itl, promises
        self._tpot_misses = tpot_misses
        self._ttft_tail_ratio = tail
        self._windows = windows
        self._last_choice = last_choice
        self._last_waiting = last_waiting
        self._dwell = dwell
        self._last_busy_choice = last_busy
