"""Backoff: doubles to its cap, never overflows, starts over on reset."""

from __future__ import annotations

import random

from node_agent.backoff import Backoff


def test_delays_double_up_to_the_cap_with_jitter() -> None:
    b = Backoff(0.5, 30.0, random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    caps = [min(30.0, 0.5 * 2**n) for n in range(12)]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))


def test_thousands_of_attempts_stay_at_the_cap() -> None:
    b = Backoff(1e-6, 30.0, random.Random(2))
    delays = [b.next_delay() for _ in range(5000)]  # 2**1100 used to raise OverflowError
    assert all(15.0 <= d <= 30.0 for d in delays[-100:])


def test_reset_starts_from_the_initial_delay() -> None:
    b = Backoff(0.5, 30.0, random.Random(3))
    for _ in range(10):
        b.next_delay()
    b.reset()
    assert 0.25 <= b.next_delay() <= 0.5
