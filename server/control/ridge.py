"""A ridge-regression model of one bandit arm, as LinUCB needs it.

The model fits r ~ theta . x with an L2 penalty lambda. It keeps the inverse of
A = lambda*I + sum(x x^T) directly and updates it with the Sherman-Morrison
identity, so an observation costs O(d^2) and no matrix is ever inverted or solved
on the decision path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from server.control.state_schema import StateReader, pack_floats

FloatArray = NDArray[np.float64]

# A stored inverse may drift this far from symmetry through rounding and still be
# accepted; anything further off was not produced by this class.
_SYMMETRY_TOLERANCE = 1e-6


class RidgeArm:
    """Online ridge regression without an intercept (the caller decides the features)."""

    __slots__ = ("_a_inv", "_b", "_n", "_scratch", "_theta", "dim", "lam")

    def __init__(self, dim: int, lam: float = 1.0) -> None:
        if dim < 1:
            raise ValueError(f"dimension must be positive, got {dim}")
        if not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"lambda must be a positive finite number, got {lam}")
        self.dim = dim
        self.lam = float(lam)
        self._a_inv: FloatArray = np.eye(dim, dtype=np.float64) / self.lam
        self._b: FloatArray = np.zeros(dim, dtype=np.float64)
        self._theta: FloatArray = np.zeros(dim, dtype=np.float64)
        # Reused buffer for A^-1 x, so predictions allocate nothing of size d x d.
        self._scratch: FloatArray = np.zeros(dim, dtype=np.float64)
        self._n = 0

    @property
    def n(self) -> int:
        """Observations folded into the model."""
        return self._n

    @property
    def theta(self) -> FloatArray:
        """The current estimate A^-1 b (a copy: callers must not alter the model)."""
        return self._theta.copy()

    @property
    def a_inv(self) -> FloatArray:
        return self._a_inv.copy()

    def update(self, x: FloatArray, reward: float) -> None:
        """Fold in one observation (x, reward)."""
        x = self._check_x(x)
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        u = self._a_inv @ x
        denom = 1.0 + float(x @ u)
        # A^-1 stays positive definite, so denom >= 1; the outer product is the
        # rank-one correction of Sherman-Morrison.
        gain = u / denom  # = A_new^-1 x
        residual = reward - float(x @ self._theta)
        self._a_inv -= np.multiply.outer(gain, u)
        self._b += reward * x
        # theta_new = A_new^-1 (b + r x) = theta + A_new^-1 x (r - x . theta): O(d), no matvec.
        self._theta += residual * gain
        self._n += 1

    def predict(self, x: FloatArray) -> float:
        """Expected reward theta . x."""
        return float(self._theta @ x)

    def width(self, x: FloatArray) -> float:
        """Confidence width sqrt(x^T A^-1 x)."""
        np.matmul(self._a_inv, x, out=self._scratch)
        quad = float(x @ self._scratch)
        # Rounding can make a true zero slightly negative.
        return math.sqrt(quad) if quad > 0.0 else 0.0

    def predict_many(self, phi: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Means and confidence widths for each row of phi, in two matrix products."""
        mean: FloatArray = phi @ self._theta
        quad = np.einsum("ij,ij->i", phi @ self._a_inv, phi)
        width: FloatArray = np.sqrt(np.maximum(quad, 0.0))
        return mean, width

    def ucb(self, x: FloatArray, alpha: float) -> float:
        """Upper confidence bound: mean + alpha * width."""
        if alpha == 0.0:
            return self.predict(x)
        return self.predict(x) + alpha * self.width(x)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "lam": self.lam,
            "n": self._n,
            "a_inv": pack_floats(self._a_inv),
            "b": pack_floats(self._b),
        }

    @classmethod
    def from_dict(cls, data: Any) -> RidgeArm:
        """Rebuild a model from to_dict(); any malformed field raises ValueError."""
        read = StateReader("ridge state")
        data = read.mapping(data, "the model", keys={"dim", "lam", "n", "a_inv", "b"})
        dim = read.size(data.get("dim"), "dim")
        lam = read.positive(data.get("lam"), "lam")
        n = read.count(data.get("n"), "n")
        # The arrays first: their sizes check dim before anything of that size is made.
        b = read.array(data.get("b"), "b", (dim,))
        a_inv = read.array(data.get("a_inv"), "a_inv", (dim, dim))
        model = cls(dim, lam)
        _check_inverse(a_inv)
        model._a_inv = a_inv
        model._b = b
        model._theta = a_inv @ b
        model._n = n
        return model

    def _check_x(self, x: FloatArray) -> FloatArray:
        if x.shape != (self.dim,):
            raise ValueError(f"context must have shape ({self.dim},), got {x.shape}")
        # One sum is finite exactly when every term is, but for an overflow: only then
        # look closer (one reduction costs less than half of isfinite and all).
        if not math.isfinite(float(x.sum())) and not np.all(np.isfinite(x)):
            raise ValueError("context must be finite")
        return x


def _check_inverse(a_inv: FloatArray) -> None:
    """An inverse of lambda*I + sum(xx^T) is symmetric positive definite; insist on it."""
    scale = max(1.0, float(np.max(np.abs(a_inv))))
    if float(np.max(np.abs(a_inv - a_inv.T))) > _SYMMETRY_TOLERANCE * scale:
        raise ValueError("ridge state: a_inv is not symmetric")
    try:
        np.linalg.cholesky(a_inv)
    except np.linalg.LinAlgError as exc:
        raise ValueError("ridge state: a_inv is not positive definite") from exc
