"""agft's tunables: its defaults, and overrides from `agft:name=value:...` policy names."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class AgftTunables:
    # Aim at 4.5 % so the measured p90 lands within the promised 10 %: the first tokens'
    # reference comes from the latency model's speed-up, which underestimates the tail's
    # gain from the max clock as load rises (at 5.5 %, conv 2023 at 70 % peak ended at
    # +8.2-9.7 % p90 TTFT over seeds 0-3; at 4.5 %, +6.7-8.9 %; docs/CONTROLLER.md).
    max_slowdown: float | None = 0.045  # relative p-th percentile budget vs default clocks
    # The share of requests that may newly miss the TTFT or the TPOT objective against
    # default clocks, one budget for both (None: only the per-window miss rule guards
    # attainment): half the promised point (server/slo/controllers.py ATTAINMENT_AIM).
    attainment_loss: float | None = 0.005
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
_OPTIONAL = ("max_slowdown", "attainment_loss")  # "none" turns the promise off
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
        if raw.lower() == "none" and name in _OPTIONAL:
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
