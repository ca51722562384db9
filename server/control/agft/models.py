"""agft's models of what a clock changes: power and latency, each a ridge regression with
the clock as a feature, so every window teaches them about every clock."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from server.control.ridge import RidgeArm

FloatArray = NDArray[np.float64]

N_CONTEXT = 5  # prefill rate, decode rate, running, waiting, kv usage
POWER_SCALE_W = 100.0


def clock_basis(f_norm: float) -> tuple[float, float, float, float]:
    return (1.0, f_norm, f_norm * f_norm, f_norm * f_norm * f_norm)


class LatencyModel:
    """log L(x, f) = prior_slope * l + theta . phi(x, l), l = log(f_max / f)."""

    PRIOR_SLOPE = 1.0

    def __init__(self, lam: float) -> None:
        self.ridge = RidgeArm(2 * (N_CONTEXT + 1), lam)

    @staticmethod
    def features(context: FloatArray, ell: float) -> FloatArray:
        n = N_CONTEXT + 1
        x = np.empty(2 * n)
        x[0] = 1.0
        x[1:n] = context
        np.multiply(x[:n], ell, out=x[n:])
        return x

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
        # Filled in place: np.tile and np.hstack cost more than the products (the same
        # values to the bit).
        n = N_CONTEXT + 1
        phi = np.empty((len(ells), 2 * n))
        phi[:, 0] = 1.0
        phi[:, 1:n] = context
        np.multiply(ells[:, None], phi[:, :n], out=phi[:, n:])
        return phi


class PowerModel:
    """P(x, f) / 100 W = theta . (clock basis (x) [1, context])."""

    def __init__(self, lam: float) -> None:
        self.ridge = RidgeArm(4 * (N_CONTEXT + 1), lam)

    @staticmethod
    def features(context: FloatArray, f_norm: float) -> FloatArray:
        base = np.concatenate(([1.0], context))
        return np.outer(clock_basis(f_norm), base).ravel()

    def update(self, context: FloatArray, f_norm: float, power_w: float) -> None:
        self.ridge.update(self.features(context, f_norm), power_w / POWER_SCALE_W)

    def optimistic(self, context: FloatArray, basis: FloatArray, alpha: float) -> FloatArray:
        """Lower confidence bound on power for each row of a precomputed clock basis."""
        base = np.concatenate(([1.0], context))
        phi = (basis[:, :, None] * base[None, None, :]).reshape(len(basis), -1)
        mean, width = self.ridge.predict_many(phi)
        return (mean - alpha * width) * POWER_SCALE_W
