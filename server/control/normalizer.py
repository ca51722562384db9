"""Online per-feature standardisation (Welford) for the bandit contexts.

A NaN input means "unknown for this window": it leaves that feature's statistics
alone and maps to 0 (the running mean), so a missing metric never poses as a zero.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from server.control.state_schema import StateReader

FloatArray = NDArray[np.float64]


class Normalizer:
    """Running mean and sample variance per feature; z-scores clipped to +-clip."""

    __slots__ = ("_count", "_m2", "_mean", "clip", "dim")

    def __init__(self, dim: int, clip: float = 5.0) -> None:
        if dim < 1:
            raise ValueError(f"dimension must be positive, got {dim}")
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip must be a positive finite number, got {clip}")
        self.dim = dim
        self.clip = float(clip)
        self._count: FloatArray = np.zeros(dim, dtype=np.float64)
        self._mean: FloatArray = np.zeros(dim, dtype=np.float64)
        self._m2: FloatArray = np.zeros(dim, dtype=np.float64)

    @property
    def count(self) -> FloatArray:
        return self._count.copy()

    @property
    def mean(self) -> FloatArray:
        return self._mean.copy()

    def std(self) -> FloatArray:
        """Sample standard deviation (ddof=1); 0 where fewer than two values were seen."""
        denom = np.maximum(self._count - 1.0, 1.0)
        std: FloatArray = np.sqrt(np.where(self._count > 1.0, self._m2 / denom, 0.0))
        return std

    def update(self, x: FloatArray) -> None:
        """Fold one observation in; NaN entries are skipped feature by feature."""
        self._check_shape(x)
        known = np.isfinite(x)
        if not known.any():
            return
        # Welford's recurrence, applied only where the value is known.
        self._count += known
        delta = np.where(known, x - self._mean, 0.0)
        self._mean += np.where(known, delta / np.maximum(self._count, 1.0), 0.0)
        self._m2 += np.where(known, delta * (x - self._mean), 0.0)

    def transform(self, x: FloatArray) -> FloatArray:
        """z-scores, clipped; unknown values and near-constant features map to 0."""
        self._check_shape(x)
        std = self.std()
        # A feature that never varied carries no information about the context; a
        # tiny variance born of rounding must not blow up into a huge z-score.
        informative = std > 1e-9 * np.maximum(1.0, np.abs(self._mean))
        usable = informative & np.isfinite(x)
        safe_std = np.where(informative, std, 1.0)
        z = np.where(usable, (np.where(usable, x, 0.0) - self._mean) / safe_std, 0.0)
        clipped: FloatArray = np.clip(z, -self.clip, self.clip)
        return clipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "clip": self.clip,
            "count": self._count.tolist(),
            "mean": self._mean.tolist(),
            "m2": self._m2.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Normalizer:
        """Rebuild from to_dict(); malformed input raises ValueError."""
        read = StateReader("normalizer state")
        data = read.mapping(data, "the normalizer", keys={"dim", "clip", "count", "mean", "m2"})
        dim = read.size(data.get("dim"), "dim")
        clip = read.positive(data.get("clip"), "clip")
        count = read.array(data.get("count"), "count", (dim,))
        m2 = read.array(data.get("m2"), "m2", (dim,))
        if np.any(count < 0) or np.any(count != np.floor(count)):
            raise ValueError("normalizer state: count must hold non-negative integers")
        if np.any(m2 < 0):
            raise ValueError("normalizer state: m2 must be non-negative")
        mean = read.array(data.get("mean"), "mean", (dim,))
        norm = cls(dim, clip)
        norm._count = count
        norm._mean = mean
        norm._m2 = m2
        return norm

    def _check_shape(self, x: FloatArray) -> None:
        if x.shape != (self.dim,):
            raise ValueError(f"features must have shape ({self.dim},), got {x.shape}")
