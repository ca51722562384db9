"""A whole benchmark: the request stream, the default-clock reference, then every policy."""

from __future__ import annotations

import io
import multiprocessing
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np
from numpy.typing import NDArray

from bench.arrivals import Arrivals, busiest_rate_rps, load_trace, scaled_arrivals
from bench.best_static import BestStatic
from bench.best_static import search as search_best_static
from bench.capacity import Capacity, measure_capacity, scale_to_peak
from bench.cold_start import ColdStart, cold_start, short_spec
from bench.front_door import split_name
from bench.grid import clock_grid
from bench.harness import PolicyRun, RunSpec, instance_arms, new_node, run_policy
from bench.metrics import summarise
from bench.oracle import OraclePolicy, OracleSearch, OracleStep
from bench.plan import (
    DEFAULT_ATTAINMENT_SLACK,
    Table,
    Thresholds,
    table_rows,
    thresholds,
)
from bench.plan_search import PlanResult, Schedule
from bench.plan_search import execute as execute_schedule
from bench.plan_search import search as search_plan
from bench.progress import ProgressLine, note
from bench.state_plan import StateBuckets, StateMapPolicy, StatePlanResult, decision_contexts
from bench.state_plan import search as search_state_plan
from server.control.policy import ClockArms, Policy, SloTargets
from server.control.registry import make_policy

BENCH_ONLY = ("best-static", "oracle", "oracle-plan", "state-plan")
REFERENCE = "default"


@dataclass(frozen=True, slots=True)
class BenchConfig:
    trace: Path
    gpu: str = "h100-sxm"
    model: str = "llama-3.1-8b"
    rate_scale: float | None = None  # None with peak_load None: 1.0
    peak_load: float | None = None
    slo: SloTargets = field(default_factory=SloTargets)
    policies: tuple[str, ...] = ("default", "rule", "agft-paper", "best-static")
    static_clock_mhz: int | None = None
    seed: int = 0
    window_s: float = 1.0
    duration_s: float | None = None
    drain_s: float = 120.0
    min_clock_fraction: float = 0.4
    static_step_mhz: int = 90
    oracle_step_mhz: int = 90
    oracle_slowdown: float = 0.10
    # oracle-plan's attainment promise: at most this share below default's (0.01: 1 point).
    oracle_attainment_slack: float = DEFAULT_ATTAINMENT_SLACK
    oracle_lookahead: int = 2
    # oracle-plan's table: a coarser grid and a shorter horizon than the greedy oracle's,
    # because its search repairs what the table misses with real runs. Conv 2023 at 50 %
    # peak, seed 1, on this 2-core machine: 90 MHz and 2 windows 147 s for 29.5 % (the
    # search before repair), 180 MHz and 2 windows 94 s for 30.3 %, 180 MHz and 1 window
    # 60 s for 30.9 %, 270 MHz and 2 windows 64 s for 29.8 %.
    plan_step_mhz: int = 180
    plan_lookahead: int = 1
    oracle_budget: str = "cumulative"


@dataclass(slots=True)
class BenchResult:
    config: BenchConfig
    arrivals: Arrivals
    rate_scale: float
    capacity: Capacity | None
    busiest_unscaled_rps: float
    windows: int
    lease_s: float
    f_max_mhz: int
    runs: dict[str, PolicyRun]
    summaries: dict[str, dict[str, Any]]
    best_static: BestStatic | None = None
    oracle_steps: list[OracleStep] | None = None
    plan: PlanResult | None = None
    state_plan: StatePlanResult | None = None
    cold_starts: dict[str, ColdStart] = field(default_factory=dict)


def policy_for(name: str, config: BenchConfig) -> Policy:
    """A fresh server policy by name, a front-door suffix ignored (ValueError / ImportError
    surface to the CLI)."""
    return make_policy(
        split_name(name)[0],
        slo=config.slo,
        static_clock_mhz=config.static_clock_mhz,
        seed=config.seed,
    )


@dataclass(frozen=True, slots=True)
class PreparedStream:
    """The request stream every policy of the run gets."""

    arrivals: Arrivals
    rate_scale: float
    capacity: Capacity | None
    busiest_unscaled_rps: float


def prepare(config: BenchConfig, err: TextIO | None = None) -> PreparedStream:
    """Read, cut and scale the trace. Raises TraceFormatError (naming the line) or ValueError."""
    rows = load_trace(config.trace, config.duration_s)
    busiest = busiest_rate_rps(rows.t)
    if config.peak_load is None:
        scale = 1.0 if config.rate_scale is None else config.rate_scale
        return PreparedStream(scaled_arrivals(rows, scale, config.seed), scale, None, busiest)
    note(f"measuring capacity of {config.gpu}/{config.model} for this trace's mix", err)
    capacity = measure_capacity(config.gpu, config.model, rows, config.seed)
    scale, arrivals = scale_to_peak(rows, capacity.rps, config.peak_load, config.seed)
    note(
        f"capacity {capacity.rps:.2f} req/s; rate scale {scale:.4f} puts the busiest minute "
        f"at {arrivals.busiest_rate_rps():.2f} req/s ({config.peak_load:.0%} of capacity)",
        err,
    )
    return PreparedStream(arrivals, scale, capacity, busiest)


def run_bench(
    config: BenchConfig,
    workload: PreparedStream | None = None,
    err: TextIO | None = None,
    jobs: int = 1,
    plan_seeds: Mapping[str, PolicyRun] | None = None,
) -> BenchResult:
    """Every policy of config over the workload; runs are independent and deterministic, so
    `jobs` worker processes give the same numbers as one, sooner.

    plan_seeds: runs of the same arrivals made elsewhere (another benchmark of the same
    workload) that oracle-plan starts from besides this benchmark's own runs."""
    workload = workload or prepare(config, err)
    arrivals = workload.arrivals
    windows = RunSpec.windows_for(arrivals, config.window_s, config.drain_s)
    spec = RunSpec(config.gpu, config.model, arrivals, config.seed, config.window_s, windows)
    probe = new_node(spec)
    arms = instance_arms(probe, tuple(probe.instances[0].gpu_indices))
    result = BenchResult(
        config=config,
        arrivals=arrivals,
        rate_scale=workload.rate_scale,
        capacity=workload.capacity,
        busiest_unscaled_rps=workload.busiest_unscaled_rps,
        windows=windows,
        lease_s=spec.lease_s,
        f_max_mhz=arms.supported_mhz[-1],
        runs={},
        summaries={},
    )
    # Progress goes to stderr, or nowhere when the caller passed another stream (--quiet).
    tasks = _Tasks(spec, config, loud=err is None or err is sys.stderr)
    with _Pool(jobs) as pool:
        # The longest job first, so it overlaps everything else.
        oracle = pool.submit(_oracle_task, tasks, arms) if "oracle" in config.policies else None
        named = {
            name: pool.submit(_policy_task, tasks, name)
            for name in dict.fromkeys([REFERENCE, *config.policies])
            if name not in BENCH_ONLY
        }
        runs = {name: future.result() for name, future in named.items()}
        # Learners (a policy with a state) again over the first minutes, cold and warm.
        learners = [name for name, run in runs.items() if run.final_state]
        if learners:
            short_reference = pool.submit(_short_default_task, tasks).result()
            colds = {
                name: pool.submit(_cold_task, tasks, name, runs[name].final_state, short_reference)
                for name in learners
            }
            result.cold_starts = {name: future.result() for name, future in colds.items()}
        if "best-static" in config.policies:
            grid = clock_grid(arms, config.static_step_mhz, config.min_clock_fraction)

            def run_static(clocks: list[int]) -> list[PolicyRun]:
                futures = [pool.submit(_static_task, tasks, clock) for clock in clocks]
                return [f.result() for f in futures]

            best = search_best_static(grid, run_static, runs[REFERENCE], config.slo, pool.jobs)
            result.best_static = best
            if best.run is None:
                note("best-static: no clock of the grid met the SLO; default clocks", err)
            runs["best-static"] = best.run if best.run is not None else runs[REFERENCE]
        if "state-plan" in config.policies:
            state_t0 = time.perf_counter()
            result.state_plan = _state_plan(
                tasks, arms, runs[REFERENCE], pool, sys.stderr if tasks.loud else None
            )
            result.state_plan.wall_s = time.perf_counter() - state_t0
            # Before oracle-plan: its run is a schedule the bound must not end below.
            runs["state-plan"] = result.state_plan.run
        if "oracle-plan" in config.policies:
            plan_t0 = time.perf_counter()
            seeds = plan_seed_runs({**(plan_seeds or {}), **runs})
            result.plan = _plan(tasks, arms, runs[REFERENCE], seeds, pool)
            result.plan.wall_s = time.perf_counter() - plan_t0
            runs["oracle-plan"] = result.plan.run
        if oracle is not None:
            runs["oracle"], result.oracle_steps = oracle.result()
    order = [REFERENCE, *[p for p in config.policies if p != REFERENCE]]
    result.runs = {name: runs[name] for name in order}
    reference = runs[REFERENCE]
    result.summaries = {n: summarise(r, reference, config.slo) for n, r in result.runs.items()}
    return result


def plan_seed_runs(runs: Mapping[str, PolicyRun]) -> dict[str, PolicyRun]:
    """The runs oracle-plan starts from: every run of the same arrivals is a schedule, but
    for the reference and runs with the fast loop, whose clocks moved inside windows
    (outside the per-window schedules the plan is the bound of). Names may carry a
    " (... promise)" tail (bench/load_sweep.py)."""
    return {
        name: run
        for name, run in runs.items()
        if name != REFERENCE and split_name(name.split(" (")[0])[1] is None
    }


@dataclass(frozen=True, slots=True)
class _Tasks:
    """What a worker needs to run one policy (picklable for worker processes)."""

    spec: RunSpec
    config: BenchConfig
    loud: bool  # progress lines on stderr

    def progress(self, label: str) -> ProgressLine:
        trace = self.config.trace.name.split(".")[0]
        return ProgressLine(f"{label} on {trace}", sys.stderr if self.loud else io.StringIO())


def _policy_task(tasks: _Tasks, name: str) -> PolicyRun:
    # A causal controller runs as the server runs it, calibration windows included.
    base, front_door = split_name(name)
    return run_policy(
        tasks.spec,
        policy_for(base, tasks.config),
        label=name,
        progress=tasks.progress(name),
        calibrate=True,
        front_door=front_door,
    )


def _short_default_task(tasks: _Tasks) -> PolicyRun:
    return run_policy(short_spec(tasks.spec), make_policy("default"))


def _cold_task(tasks: _Tasks, name: str, state: dict[str, Any], reference: PolicyRun) -> ColdStart:
    base, front_door = split_name(name)
    return cold_start(
        tasks.spec, lambda: policy_for(base, tasks.config), state, reference, name, front_door
    )


def _static_task(tasks: _Tasks, clock: int) -> PolicyRun:
    label = f"best-static@{clock}"
    policy = make_policy("static", static_clock_mhz=clock)
    return run_policy(tasks.spec, policy, label=label, progress=tasks.progress(label))


def _oracle_task(tasks: _Tasks, arms: ClockArms) -> tuple[PolicyRun, list[OracleStep]]:
    config = tasks.config
    policy = OraclePolicy()
    search = OracleSearch(
        policy,
        new_node(tasks.spec),
        clock_grid(arms, config.oracle_step_mhz, config.min_clock_fraction),
        config.window_s,
        config.slo,
        slowdown=config.oracle_slowdown,
        lookahead=config.oracle_lookahead,
        budget=config.oracle_budget,
    )
    run = run_policy(tasks.spec, policy, advisor=search, progress=tasks.progress("oracle"))
    return run, search.steps


def _plan(
    tasks: _Tasks,
    arms: ClockArms,
    reference: PolicyRun,
    seeds: dict[str, PolicyRun],
    pool: _Pool,
) -> PlanResult:
    """oracle-plan: the table in slices across the workers, then real runs of plans."""
    config, spec = tasks.config, tasks.spec
    th = thresholds(spec, config.slo, config.oracle_slowdown, config.oracle_attainment_slack)
    table = _table(tasks, arms, th, pool)
    err = sys.stderr if tasks.loud else None
    return search_plan(
        spec,
        table,
        th,
        reference,
        config.slo,
        config.oracle_slowdown,
        seeds=seeds,
        run_batch=lambda schedules: [
            f.result() for f in [pool.submit(_schedule_task, tasks, s) for s in schedules]
        ],
        lookahead=config.plan_lookahead,
        attainment_slack=config.oracle_attainment_slack,
        err=err,
    )


def _table(tasks: _Tasks, arms: ClockArms, th: Thresholds, pool: _Pool) -> Table:
    """oracle-plan's table of tasks.spec, in slices across the workers."""
    config, spec = tasks.config, tasks.spec
    clocks = (None, *clock_grid(arms, config.plan_step_mhz, config.min_clock_fraction))
    # Decision k (1-based, as run_policy counts) is row k-1; the last decision governs
    # nothing inside the run, so it needs no row.
    rows = spec.windows - 1
    bounds = [rows * i // pool.jobs for i in range(pool.jobs + 1)]
    slices = [
        pool.submit(_plan_rows_task, tasks, clocks, th, bounds[i], bounds[i + 1])
        for i in range(pool.jobs)
    ]
    parts = [f.result() for f in slices]
    return Table(
        clocks,
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
    )


def _state_plan(
    tasks: _Tasks, arms: ClockArms, reference: PolicyRun, pool: _Pool, err: TextIO | None
) -> StatePlanResult:
    """state-plan: a map trained on the next seed's arrivals, judged on these."""
    config = tasks.config
    train_config = replace(config, seed=config.seed + 1)
    quiet = io.StringIO()
    stream = prepare(train_config, err=quiet)
    windows = RunSpec.windows_for(stream.arrivals, config.window_s, config.drain_s)
    train_spec = RunSpec(
        config.gpu, config.model, stream.arrivals, train_config.seed, config.window_s, windows
    )
    train = _Tasks(train_spec, train_config, tasks.loud)
    contexts = pool.submit(decision_contexts, train_spec)
    th = thresholds(train_spec, config.slo, config.oracle_slowdown, config.oracle_attainment_slack)
    table = _table(train, arms, th, pool)

    def run_maps(buckets: StateBuckets, maps: Sequence[tuple[int | None, ...]]) -> list[PolicyRun]:
        futures = [pool.submit(_map_task, tasks, buckets, m) for m in maps]
        return [f.result() for f in futures]

    result = search_state_plan(
        table,
        contexts.result(),
        th.slack,
        reference,
        config.slo,
        config.oracle_slowdown,
        run_maps,
        train_seed=train_config.seed,
        attainment_slack=config.oracle_attainment_slack,
    )
    if err is not None:
        for attempt in result.tries:
            verdict = "holds" if attempt.holds else "breaks a promise"
            note(
                f"state-plan: fill {attempt.fill:.2f} saves "
                f"{attempt.summary['energy_saving_pct']:.1f} %, {verdict}",
                err,
            )
    return result


def _map_task(tasks: _Tasks, buckets: StateBuckets, clocks: tuple[int | None, ...]) -> PolicyRun:
    return run_policy(tasks.spec, StateMapPolicy(buckets, clocks), label="state-plan")


def _schedule_task(tasks: _Tasks, schedule: Schedule) -> PolicyRun:
    return execute_schedule(tasks.spec, schedule, "oracle-plan")


def _plan_rows_task(
    tasks: _Tasks, clocks: tuple[int | None, ...], th: Thresholds, start: int, stop: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    label = "oracle-plan table" if start == 0 else f"oracle-plan table from {start}"
    return table_rows(
        tasks.spec,
        clocks,
        th,
        tasks.config.plan_lookahead,
        start,
        stop,
        progress=tasks.progress(label),
    )


T = TypeVar("T")


class _Pool:
    """Worker processes when jobs > 1; otherwise runs each task at once, in this process."""

    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self._executor: ProcessPoolExecutor | None = None
        if self.jobs > 1:
            # fork: workers start at once and inherit the imported modules.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self._executor = ProcessPoolExecutor(max_workers=self.jobs, mp_context=context)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: Future[T] = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
