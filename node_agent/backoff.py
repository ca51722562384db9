"""Capped exponential backoff with full jitter, so a fleet does not reconnect in lockstep."""

from __future__ import annotations

import random

# 2**attempt stays a small int: the cap is reached long before, and an agent that has
# failed for days must not crash on float(2**1100) ("int too large to convert to float").
_MAX_EXPONENT = 62


class Backoff:
    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._initial = initial_s
        self._max = max_s
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        cap = min(self._max, self._initial * (2 ** min(self._attempt, _MAX_EXPONENT)))
        self._attempt = min(self._attempt + 1, _MAX_EXPONENT)
        return self._rng.uniform(cap / 2, cap)

    def reset(self) -> None:
        self._attempt = 0
