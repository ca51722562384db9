"""Capped exponential backoff with full jitter, so a fleet does not reconnect in lockstep."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._initial = initial_s
        self._max = max_s
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        cap = min(self._max, self._initial * (2**self._attempt))
        self._attempt += 1
        return self._rng.uniform(cap / 2, cap)

    def reset(self) -> None:
        self._attempt = 0
