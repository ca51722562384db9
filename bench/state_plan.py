"""state-plan: the best clock map from observed state, tuned in hindsight: a causal yardstick.

oracle-plan knows every arrival of the run it plans, so the gap between it and a causal
controller mixes two things: what no causal controller can know (which second brings the
next long prompt) and what a causal controller could have done better with what it saw.
This policy separates them. It is causal: each window's clock is a function of what the
server saw in the window before (requests waiting, requests running, prompt tokens per
second, the features agft reads), through a fixed map from state buckets to clocks. The
map is the best one for another realisation of the same trace, found as oracle-plan finds
its schedule, but per bucket instead of per window:

1. Train on other arrivals: the same trace and load with the next seed (another draw of
   the same arrival process and request mix). Its default-clock run gives each decision's
   state, its oracle-plan table (bench/plan.py) each window's energy and promise counts
   at every candidate clock.
2. Buckets: waiting (none, one or two, more) and prompt tokens per second (split at
   quantiles of the training run's busy windows), idle windows apart; running requests
   can be split too (RUNNING_SPLITS).
3. The map at price lam: per bucket, the clock minimising the bucket's summed
   dE + lam x sum_k dn_k / allowance_k; a bisection on lam finds the cheapest map the
   training table predicts to spend at most `fill` of every promise's slack.
4. The maps of a ladder of fills run on the judged arrivals, through the same harness as
   every policy (higher fills too when the ladder's top holds); the best that keeps every
   promise is the result (default clocks if none).

What is tuned on the judged run is one number, the fill, as an admin tunes one aim. The
result is what a controller that reads these features could reach with a perfect model of
the trace's statistics: not an upper bound on every causal controller (finer features or a
forecast could do better), but a measured point no causal controller of this kind needs
clairvoyance to reach. The share of oracle-plan it reaches is the share of the bound that
does not need to know the future.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.harness import PolicyRun, RunSpec, run_policy
from bench.metrics import summarise
from bench.plan import Table
from bench.plan_search import excess
from server.control.agft.signals import context_of
from server.control.features import window_features
from server.control.observation import Observation
from server.control.policy import ClockArms, ClockDecision, Policy, SloTargets

FloatArray = NDArray[np.float64]

# The fills tried on the judged arrivals: the training table's predicted share of each
# promise's slack. Above 1 the table itself predicts a broken promise on the training run,
# which the judged run may still keep (windows interact; the map is coarse).
FILLS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.85, 1.0, 1.2)
# Tried when the largest of FILLS keeps every promise: a loose promise (the SLO-only one at
# low load) can leave room above it (conv 2023, 30 % peak, seed 0: 1.2 held at 42.2 %).
MORE_FILLS = (1.6, 2.4, 3.6)
# Prompt tokens per second of the window before, split at quantiles of the training run's
# busy windows; running requests not split. A finer map fits the training arrivals' noise:
# with running in 5 quantile bins too it saved less on the judged arrivals (conv 2023, seed
# 1 judged, 30 % peak: 23.7 % against 25.1 %; 50 % peak: 13.7 % against 16.3 %), and 8
# prompt bins saved no more than 4 at 50 % peak.
RUNNING_SPLITS = 1
PROMPT_SPLITS = 4
_WAITING_BINS = 3  # none, one or two, more
_BISECTION_STEPS = 40
# Context columns (server/control/agft/signals.py): prompt tokens/s, generated tokens/s,
# running, log1p(waiting), KV usage, each on its fixed scale.
_PROMPT, _RUNNING, _WAITING = 0, 2, 3
_UNKNOWN, _IDLE, _FIRST_BUSY = 0, 1, 2


@dataclass(frozen=True, slots=True)
class StateBuckets:
    """Where a window's state falls: unknown telemetry, idle, or a busy bucket."""

    running_edges: tuple[float, ...]  # on the context's scale
    prompt_edges: tuple[float, ...]

    @property
    def count(self) -> int:
        busy = _WAITING_BINS * (len(self.running_edges) + 1) * (len(self.prompt_edges) + 1)
        return _FIRST_BUSY + busy

    @staticmethod
    def from_contexts(
        contexts: Sequence[FloatArray | None],
        running_splits: int = RUNNING_SPLITS,
        prompt_splits: int = PROMPT_SPLITS,
    ) -> StateBuckets:
        busy = [c for c in contexts if c is not None and float(np.sum(c)) > 0.0]

        def edges(column: int, splits: int) -> tuple[float, ...]:
            if not busy or splits <= 1:
                return ()
            values = np.asarray([c[column] for c in busy])
            inner = np.quantile(values, np.linspace(0.0, 1.0, splits + 1)[1:-1])
            return tuple(float(v) for v in np.unique(inner))

        return StateBuckets(edges(_RUNNING, running_splits), edges(_PROMPT, prompt_splits))

    def of(self, context: FloatArray | None) -> int:
        if context is None:
            return _UNKNOWN
        if float(np.sum(context)) == 0.0:
            return _IDLE
        waiting = float(context[_WAITING])
        w = 0 if waiting < math.log1p(0.5) else (1 if waiting < math.log1p(2.5) else 2)
        r = int(np.searchsorted(self.running_edges, context[_RUNNING], side="right"))
        p = int(np.searchsorted(self.prompt_edges, context[_PROMPT], side="right"))
        runs, prompts = len(self.running_edges) + 1, len(self.prompt_edges) + 1
        return _FIRST_BUSY + (w * runs + r) * prompts + p


class StateMapPolicy(Policy):
    """Each window's clock from the bucket of the window before (None: default clocks)."""

    name = "state-plan"

    def __init__(self, buckets: StateBuckets, clocks: Sequence[int | None]) -> None:
        if len(clocks) != buckets.count:
            raise ValueError(f"a map of {len(clocks)} clocks for {buckets.count} buckets")
        self.buckets = buckets
        self.clocks = tuple(clocks)

    def decide(self, observation: Observation, arms: ClockArms) -> ClockDecision:
        bucket = self.buckets.of(context_of(observation))
        clock = self.clocks[bucket]
        features = window_features(observation)
        if clock is None:
            return ClockDecision(None, f"state-plan: bucket {bucket}, default clocks", features)
        return ClockDecision(clock, f"state-plan: bucket {bucket}, {clock} MHz", features)


class _Recorder(Policy):
    """Default clocks, keeping each decision's context."""

    name = "default"

    def __init__(self) -> None:
        self.contexts: list[FloatArray | None] = []

    def decide(self, observation: Observation, arms: ClockArms) -> ClockDecision:
        self.contexts.append(context_of(observation))
        return ClockDecision(None, "default clocks", window_features(observation))


def decision_contexts(spec: RunSpec) -> list[FloatArray | None]:
    """Every decision's context along the default-clock trajectory (row r: decision r+1,
    the row numbering of the oracle-plan table)."""
    recorder = _Recorder()
    run_policy(spec, recorder)
    return recorder.contexts


def plan_map(
    table: Table, buckets: NDArray[np.int64], count: int, slack: Sequence[float], fill: float
) -> NDArray[np.int64]:
    """Per bucket, the table column of the cheapest map predicted to spend at most `fill`
    of every slack (buckets[r]: the bucket of table row r)."""
    if len(buckets) != len(table.d_energy_j):
        raise ValueError(f"{len(buckets)} buckets for {len(table.d_energy_j)} table rows")
    allowance = np.asarray([max(fill * s, 1e-6) for s in slack])
    columns = table.d_energy_j.shape[1]
    energy = np.zeros((count, columns))
    counts = np.zeros((count, columns, table.d_counts.shape[2]))
    np.add.at(energy, buckets, table.d_energy_j)
    np.add.at(counts, buckets, table.d_counts)
    priced = (counts / allowance).sum(axis=2)
    rows = np.arange(count)

    def pick(price: float) -> tuple[NDArray[np.int64], float]:
        picks: NDArray[np.int64] = np.argmin(energy + price * priced, axis=1).astype(np.int64)
        spend = float((counts[rows, picks] / allowance).sum(axis=0).max())
        return picks, spend

    picks, spend = pick(0.0)
    if spend <= 1.0:
        return picks
    hi = max(1.0, float(np.abs(energy).sum()))
    while pick(hi)[1] > 1.0:
        hi *= 4.0
        if not math.isfinite(hi):
            raise RuntimeError("no price makes the map fit its budget")
    lo = 0.0
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if pick(mid)[1] > 1.0:
            lo = mid
        else:
            hi = mid
    return pick(hi)[0]


@dataclass(frozen=True, slots=True)
class MapTry:
    fill: float
    clocks: tuple[int | None, ...]  # per bucket
    summary: dict[str, Any]
    excess: tuple[float, float, float]  # per promise (bench/plan_search.excess)
    holds: bool


@dataclass(slots=True)
class StatePlanResult:
    run: PolicyRun
    buckets: StateBuckets
    train_seed: int
    bucket_windows: list[int]  # training decisions per bucket
    tries: list[MapTry] = field(default_factory=list)
    chosen: MapTry | None = None  # None: no map kept every promise; default clocks
    wall_s: float = 0.0


def _saving(attempt: MapTry) -> float:
    value = attempt.summary["energy_saving_pct"]
    return float(value) if isinstance(value, float) else -math.inf


def search(
    train_table: Table,
    train_contexts: Sequence[FloatArray | None],
    slack: Sequence[float],
    reference: PolicyRun,
    slo: SloTargets,
    slowdown: float,
    run_maps: Callable[[StateBuckets, Sequence[tuple[int | None, ...]]], list[PolicyRun]],
    *,
    train_seed: int,
    attainment_slack: float,
    fills: Sequence[float] = FILLS,
    more_fills: Sequence[float] = MORE_FILLS,
) -> StatePlanResult:
    """The best map of the ladder that keeps every promise on the judged arrivals.

    run_maps runs maps on the judged arrivals (the caller's workers); reference is the
    default-clock run of those arrivals."""
    rows = len(train_table.d_energy_j)
    contexts = list(train_contexts[:rows])
    if len(contexts) < rows:
        raise ValueError(f"{len(contexts)} contexts for {rows} table rows")
    buckets = StateBuckets.from_contexts(contexts)
    of_row = np.asarray([buckets.of(c) for c in contexts], dtype=np.int64)
    ref_summary = summarise(reference, reference, slo)
    result = StatePlanResult(
        reference,
        buckets,
        train_seed,
        [int(n) for n in np.bincount(of_row, minlength=buckets.count)],
    )
    runs: dict[tuple[int | None, ...], PolicyRun] = {}

    def try_fills(ladder: Sequence[float]) -> None:
        maps = [
            tuple(
                train_table.clocks[int(p)]
                for p in plan_map(train_table, of_row, buckets.count, slack, f)
            )
            for f in ladder
        ]
        fresh = [m for m in dict.fromkeys(maps) if m not in runs]
        runs.update(zip(fresh, run_maps(buckets, fresh), strict=True))
        for fill, clocks in zip(ladder, maps, strict=True):
            summary = summarise(runs[clocks], reference, slo)
            over = excess(summary, ref_summary, slowdown, attainment_slack)
            attempt = MapTry(fill, clocks, summary, over, all(x <= 0 for x in over))
            result.tries.append(attempt)
            best = result.chosen
            if attempt.holds and (best is None or _saving(attempt) > _saving(best)):
                result.run, result.chosen = runs[clocks], attempt

    try_fills(fills)
    if more_fills and result.tries and result.tries[-1].holds:
        try_fills(more_fills)
    return result
