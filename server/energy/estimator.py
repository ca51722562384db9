"""What the GPUs would have used at default clocks: the counterfactual behind every saving.

In production the default-clock run of the same traffic is never observed, so a saving
is an estimate. This one rests on a model of power at default clocks against the work
served, fitted only on windows that really ran at default clocks:

    P_default(x) = level * shape(x),   shape(x) = w . phi(x),   phi = [1, idle, g, p, g^2]

with g the generated and p the prompt tokens per second of the window and idle 1 when
it served nothing. Tokens served are what the lowered clock does not change (the traffic
is the same); the number of steps, the batch sizes and the queue are not, so none of
those enters. The model is linear in the token rates but for g^2, so the total of a run
depends on the tokens served, not on how the lowered clock shifted them between windows.

Two kinds of windows at default clocks teach it different things:
- every window at default clocks teaches the shape w (a ridge fit): how power grows with
  the work served, over every load the GPU met at default clocks;
- only windows that are a fair sample of the traffic set the level: calibration windows,
  where the decider holds default clocks for two windows in every CALIBRATION_GAP while
  the controller wanted a lower clock, and windows of the admin's observe and off modes.
  The level is their measured energy over what the shape predicts for them.
Windows the controller sent to default clocks itself are not a fair sample: it does so
under congestion, where the same tokens cost more power (conv 2023 at 85 % peak: a model
fitted only on agft's own 1,400 default windows put its saving at 12.5 % against a true
10.5 %). The calibration windows alone are a fair sample but a thin one, taken when the
controller wanted a lower clock, so at the lighter loads: a shape fitted on them alone
extrapolated to the busier windows and under-claimed rule's saving on code 2023 at 50 %
peak by 3.7 points on average (4 seeds); the shape from every default window with the
level from the calibration windows is what docs/ENERGY.md's table measures.

How sure it is: before each fair window updates the model, the model predicts it. The
mean and spread of those out-of-sample relative errors are the estimator's measured
error; a report's band is the estimate times (|mean| + 2 x standard error), and `agft
bench` checks the whole against the true default run of the same arrivals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from server.control.state_schema import StateReader

FloatArray = NDArray[np.float64]

N_FEATURES = 5
GEN_SCALE = 1_000.0  # tokens/s: features of order one
PROMPT_SCALE = 10_000.0
RIDGE_LAMBDA = 1e-3
MIN_CALIBRATION = 12  # calibrations before any estimate is made
EARLY_GAP = 5  # windows between calibrations while the model has fewer than that
# ... and after: the n-th calibration comes n windows after the last one, until one in
# every 60. A young model is the estimate's largest error: with one calibration per 60
# windows from the 12th on, rule's estimate on code 2023 at 50 % peak stayed low for the
# first half hour (seed 2: -2.4 points over the hour, its final model -0.05); the growing
# gap gives it 60 calibrations by window 1,800 instead of 42 (-2.4 -> +0.1). One in 30
# for good cost twice as much saving for no better estimate on conv 2023 at 85 % peak;
# one in 120 left rule's estimate on code 2023 4.7 points low.
CALIBRATION_GAP = 60
# A calibration holds default clocks for two windows and learns from the second: the
# first still drains the queue the lower clock built and draws less power per token than
# default clocks do in their steady state (rule on code 2023 at 50 % peak, seed 0: one
# window under-claimed its saving by 6.4 points, two windows by 2.1). The second window
# costs about 0.3-0.5 points of saving (agft on conv 2023 at 85 % peak: 10.25 -> 9.93 %).
CALIBRATION_WINDOWS = 2
# A window whose leverage ratio (below) exceeds this is not estimated: no saving is
# claimed for it. It is what keeps a model that never saw an idle window from pricing
# idle windows off its busy intercept (code 2023 at 50 % peak, agft, seed 1: +4.2 points
# of claimed saving without the limit; +0.4 below the truth at 20, +0.0 at 100).
EXTRAPOLATION_LIMIT = 20.0
# The level remembers about this many fair windows (exponential forgetting): four hours
# at one calibration a minute, long enough to average out one window's noise, short
# enough to follow a GPU that ages or a model that is swapped.
LEVEL_MEMORY = 240
STATE_VERSION = 2
ESTIMATOR_STATE = "energy-estimator"  # its key in policy_states, beside the controller's


def features(
    prompt_tokens: float | None, generation_tokens: float | None, duration_s: float
) -> FloatArray | None:
    """phi of a window; None when its served work is unknown."""
    if prompt_tokens is None or generation_tokens is None or duration_s <= 0:
        return None
    g = generation_tokens / duration_s / GEN_SCALE
    p = prompt_tokens / duration_s / PROMPT_SCALE
    # An idle window is its own case: nothing served, the GPU at its idle power, which a
    # lock holding the voltage up can raise above default's (a saving below zero).
    idle = 1.0 if generation_tokens <= 0 and prompt_tokens <= 0 else 0.0
    return np.array([1.0, idle, g, p, g * g])


@dataclass(frozen=True, slots=True)
class ErrorStats:
    """Out-of-sample relative error of the model on windows at default clocks."""

    tests: int
    mean: float  # (measured - predicted) / predicted
    sd: float

    @property
    def band(self) -> float | None:
        """The relative half-width of a total's band (None: not enough tests yet)."""
        if self.tests < 3:
            return None
        return abs(self.mean) + 2.0 * self.sd / math.sqrt(self.tests)


class DefaultEnergyEstimator:
    """One instance's model of power at default clocks, learnt online."""

    def __init__(self) -> None:
        # The shape: ridge over every window at default clocks.
        self._a = np.eye(N_FEATURES) * RIDGE_LAMBDA
        self._b = np.zeros(N_FEATURES)
        self._a_inv = np.linalg.inv(self._a)
        self.shape_windows = 0
        # The level: decayed sums of the fair windows' features and power. The shape is
        # linear in phi, so sum(shape(phi_i)) = w . sum(phi_i) and no window is kept.
        self._fair_phi = np.zeros(N_FEATURES)
        self._fair_power = 0.0
        self.calibrations = 0  # fair windows at default clocks the level learnt from
        self.forced = 0  # of which the decider forced for calibration
        self._since_calibration = 0
        # Welford over the out-of-sample relative errors.
        self._tests = 0
        self._err_mean = 0.0
        self._err_m2 = 0.0

    # ---- the model -----------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.calibrations >= MIN_CALIBRATION

    def _shape(self) -> FloatArray:
        return self._a_inv @ self._b

    def level(self) -> float:
        """Measured over shape-predicted power on the fair windows (1.0 before any)."""
        return self._level(self._shape())

    def _level(self, shape: FloatArray) -> float:
        predicted = float(shape @ self._fair_phi)
        if self._fair_power <= 0 or predicted <= 0:
            return 1.0
        return self._fair_power / predicted

    def predict_power_w(self, phi: FloatArray) -> float:
        shape = self._shape()  # once: the level is measured against the same weights
        # Power is never below zero; a wild extrapolation must not claim energy from nowhere.
        return max(self._level(shape) * float(phi @ shape), 0.0)

    def _learn_shape(self, phi: FloatArray, power_w: float) -> None:
        # Sherman-Morrison keeps the inverse current at O(d^2) per window.
        a_inv_phi = self._a_inv @ phi
        self._a_inv -= np.outer(a_inv_phi, a_inv_phi) / (1.0 + phi @ a_inv_phi)
        self._a += np.outer(phi, phi)
        self._b += power_w * phi
        self.shape_windows += 1

    def _learn_level(self, phi: FloatArray, power_w: float) -> None:
        keep = 1.0 - 1.0 / LEVEL_MEMORY
        self._fair_phi = keep * self._fair_phi + phi
        self._fair_power = keep * self._fair_power + power_w
        self.calibrations += 1
        self._since_calibration = 0

    def _test(self, phi: FloatArray, power_w: float) -> None:
        predicted = self.predict_power_w(phi)
        if predicted <= 0:
            return
        err = (power_w - predicted) / predicted
        self._tests += 1
        delta = err - self._err_mean
        self._err_mean += delta / self._tests
        self._err_m2 += delta * (err - self._err_mean)

    @property
    def errors(self) -> ErrorStats:
        sd = math.sqrt(self._err_m2 / (self._tests - 1)) if self._tests > 1 else 0.0
        return ErrorStats(self._tests, self._err_mean, sd)

    # ---- per window ----------------------------------------------------------------
    def observe(
        self,
        phi: FloatArray | None,
        energy_j: float | None,
        duration_s: float,
        at_default: bool,
        representative: bool = True,
    ) -> float | None:
        """The window's energy at default clocks: measured when it ran at default clocks,
        estimated otherwise (None: unknown, or the model is not calibrated yet).

        representative: the window is at default clocks for a reason unrelated to the
        load (a calibration window, an admin's mode), so it may set the level."""
        self._since_calibration += 1
        if energy_j is None or not math.isfinite(energy_j) or duration_s <= 0:
            return None
        if at_default:
            if phi is not None:
                power = energy_j / duration_s
                if representative and self.ready:
                    self._test(phi, power)
                self._learn_shape(phi, power)
                if representative:
                    self._learn_level(phi, power)
            return energy_j
        if phi is None or not self.ready:
            return None
        if self.leverage_ratio(phi) > EXTRAPOLATION_LIMIT:
            # Far outside the loads it was calibrated on: claim nothing rather than guess.
            return None
        return self.predict_power_w(phi) * duration_s

    def leverage_ratio(self, phi: FloatArray) -> float:
        """How far phi lies from the windows the shape was fitted on: phi' A^-1 phi over
        its mean (p / n) on them; about 1 inside the loads seen, large outside."""
        return float(phi @ self._a_inv @ phi) * max(self.shape_windows, 1) / N_FEATURES

    def wants_calibration(self, phi: FloatArray | None) -> bool:
        """Should the next window run at default clocks to keep the estimate honest?"""
        if phi is None:
            return False
        # The window it learns from comes CALIBRATION_WINDOWS windows after it asks:
        # asking that much early makes the period between calibrations exactly GAP.
        return self._since_calibration >= self.calibration_gap() - CALIBRATION_WINDOWS

    def calibration_gap(self) -> int:
        """Windows between the starts of two calibrations, growing as the model matures."""
        if not self.ready:
            return EARLY_GAP
        return max(EARLY_GAP, min(CALIBRATION_GAP, self.calibrations))

    def note_forced(self) -> None:
        self.forced += 1

    # ---- persistence ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "a": self._a.tolist(),
            "b": self._b.tolist(),
            "shape_windows": self.shape_windows,
            "fair_phi": self._fair_phi.tolist(),
            "fair_power": self._fair_power,
            "calibrations": self.calibrations,
            "forced": self.forced,
            "tests": self._tests,
            "err_mean": self._err_mean,
            "err_m2": self._err_m2,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore state(); anything malformed raises ValueError and changes nothing."""
        read = StateReader("energy estimator state")
        state = read.mapping(state, "the state")
        if read.version(state) == 1:
            state = _upgrade_v1(state)
        if read.version(state) != STATE_VERSION:
            raise read.fail("version", f"{state.get('version')!r} is not supported")
        read.mapping(state, "the state", keys=_STATE_KEYS)
        a = read.array(state["a"], "a", (N_FEATURES, N_FEATURES))
        b = read.array(state["b"], "b", (N_FEATURES,))
        fair_phi = read.array(state["fair_phi"], "fair_phi", (N_FEATURES,))
        counts = [
            read.count(state[k], k) for k in ("shape_windows", "calibrations", "forced", "tests")
        ]
        fair_power = read.bounded(state["fair_power"], "fair_power", 0.0, math.inf)
        err_mean = read.number(state["err_mean"], "err_mean")
        err_m2 = read.bounded(state["err_m2"], "err_m2", 0.0, math.inf)
        try:
            a_inv = np.linalg.inv(a)
        except np.linalg.LinAlgError:
            raise read.fail("a", "is singular") from None
        self._a, self._b, self._a_inv = a, b, a_inv
        self._fair_phi = fair_phi
        self.shape_windows, self.calibrations, self.forced, self._tests = counts
        self._fair_power = fair_power
        self._err_mean, self._err_m2 = err_mean, err_m2


_STATE_KEYS = frozenset(
    (
        *("version", "a", "b", "shape_windows", "fair_phi", "fair_power"),
        *("calibrations", "forced", "tests", "err_mean", "err_m2"),
    )
)


def _upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """Version 1 fitted one ridge on the fair windows alone: it becomes the shape, with
    no level sums yet (level 1.0, exactly what version 1 predicted), so an upgraded
    server keeps estimating instead of calibrating from scratch."""
    calibrations = state.get("calibrations")
    return {
        **{k: v for k, v in state.items() if k in _STATE_KEYS},
        "version": STATE_VERSION,
        "shape_windows": calibrations,
        "fair_phi": [0.0] * N_FEATURES,
        "fair_power": 0.0,
    }
