"""state-plan: the causal yardstick, a state-to-clock map trained on other arrivals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from bench.arrivals import scaled_arrivals
from bench.grid import clock_grid
from bench.harness import PolicyRun, RunSpec, instance_arms, new_node, run_policy
from bench.metrics import summarise
from bench.plan import Table, table_rows, thresholds
from bench.plan_search import broken
from bench.report import results_dict, results_markdown
from bench.runner import BenchConfig, run_bench
from bench.state_plan import (
    FILLS,
    MORE_FILLS,
    StateBuckets,
    StateMapPolicy,
    decision_contexts,
    plan_map,
    search,
)
from server.control.agft.signals import CONTEXT_SCALE
from server.control.policy import SloTargets
from server.control.registry import make_policy
from sim.workload import TraceRows, shipped_trace_path

SLO = SloTargets()


def _context(prompt_tps: float, running: float, waiting: float) -> np.ndarray:
    raw = np.array([prompt_tps, 100.0 * running, running, math.log1p(waiting), 0.1])
    out: np.ndarray = raw / CONTEXT_SCALE
    return out


def test_buckets_part_unknown_idle_and_busy_states_by_waiting_running_and_prompts() -> None:
    busy = [_context(1000.0 * (i % 8), 1 + i % 16, 0.0) for i in range(64)]
    buckets = StateBuckets.from_contexts([*busy, None], running_splits=4, prompt_splits=2)
    assert len(buckets.running_edges) == 3 and len(buckets.prompt_edges) == 1
    assert buckets.count == 2 + 3 * 4 * 2
    assert buckets.of(None) == 0
    assert buckets.of(np.zeros(5)) == 1
    quiet = buckets.of(_context(0.0, 1, 0.0))
    assert quiet == 2  # no waiting, fewest running, fewest prompts
    assert buckets.of(_context(7000.0, 1, 0.0)) == quiet + 1  # more prompts
    assert buckets.of(_context(0.0, 16, 0.0)) == quiet + 3 * 2  # most running
    one_waiting = buckets.of(_context(0.0, 1, 1.0))
    many_waiting = buckets.of(_context(0.0, 1, 5.0))
    assert quiet < one_waiting < many_waiting < buckets.count
    # Too few splits asked: one bucket per waiting level.
    flat = StateBuckets.from_contexts(busy, running_splits=1, prompt_splits=1)
    assert flat.count == 2 + 3 and flat.of(_context(7000.0, 16, 0.0)) == 2


def test_the_map_spends_the_budget_in_the_buckets_where_it_saves_most() -> None:
    # Columns: default, one slower clock. Bucket 2's rows save 10 J for one count each;
    # bucket 3's save 2 J for the same count. The slack allows three counts.
    rows = [2, 2, 2, 3, 3, 3]
    d_energy = np.array([[0.0, -10.0]] * 3 + [[0.0, -2.0]] * 3)
    d_counts = np.zeros((6, 2, 3))
    d_counts[:, 1, 0] = 1.0
    table = Table((None, 1200), d_energy, d_counts)
    buckets = np.asarray(rows, dtype=np.int64)
    picks = plan_map(table, buckets, 4, (3.0, 1.0, 1.0), fill=1.0)
    assert picks[2] == 1 and picks[3] == 0
    # The whole bucket moves together: a fill for two counts buys neither bucket.
    assert list(plan_map(table, buckets, 4, (3.0, 1.0, 1.0), fill=2.0 / 3.0)) == [0, 0, 0, 0]
    # Room for both: both slower.
    assert list(plan_map(table, buckets, 4, (6.0, 1.0, 1.0), fill=1.0)[2:]) == [1, 1]
    with pytest.raises(ValueError, match="buckets for"):
        plan_map(table, buckets[:3], 4, (3.0, 1.0, 1.0), fill=1.0)


def test_the_map_policy_locks_the_clock_of_the_window_before_its_bucket(
    spec_90s: RunSpec,
) -> None:
    buckets = StateBuckets((), ())  # unknown, idle, one bucket per waiting level
    clocks = (None, None, 1200, 1500, None)
    run = run_policy(spec_90s, StateMapPolicy(buckets, clocks))
    chosen = set(run.clock_chosen_mhz)
    assert 1200 in chosen and chosen <= {None, 1200, 1500}
    contexts = decision_contexts(spec_90s)
    assert len(contexts) == spec_90s.windows
    # The first decision's window is the same in both runs: its bucket gives its clock.
    assert run.clock_chosen_mhz[0] == clocks[buckets.of(contexts[0])]
    with pytest.raises(ValueError, match="for 5 buckets"):
        StateMapPolicy(buckets, (None, 1200))


def test_state_plan_is_a_causal_run_on_arrivals_it_was_not_trained_on(
    rows_90s: TraceRows, spec_90s: RunSpec
) -> None:
    other = scaled_arrivals(rows_90s, rate_scale=2.0, seed=1)
    train = RunSpec(
        spec_90s.gpu,
        spec_90s.model,
        other,
        1,
        spec_90s.window_s,
        RunSpec.windows_for(other, 1.0, 20.0),
    )
    assert not np.array_equal(train.arrivals.t, spec_90s.arrivals.t)
    node = new_node(train)
    arms = instance_arms(node, tuple(node.instances[0].gpu_indices))
    th = thresholds(train, SLO, 0.10)
    clocks = (None, *clock_grid(arms, 270, 0.4))
    rows = train.windows - 1
    d_energy, d_counts = table_rows(train, clocks, th, 1, 0, rows)
    table = Table(clocks, d_energy, d_counts)
    reference = run_policy(spec_90s, make_policy("default"))
    ran: list[tuple[int | None, ...]] = []

    def run_maps(buckets: StateBuckets, maps: Sequence[tuple[int | None, ...]]) -> list[PolicyRun]:
        ran.extend(maps)
        return [run_policy(spec_90s, StateMapPolicy(buckets, m)) for m in maps]

    result = search(
        table,
        decision_contexts(train),
        th.slack,
        reference,
        SLO,
        0.10,
        run_maps,
        train_seed=1,
        attainment_slack=0.01,
    )
    assert len(ran) == len(set(ran)) and len(ran) <= len(result.tries)
    assert result.chosen is not None and result.chosen.holds
    summary = summarise(result.run, reference, SLO)
    assert summary == result.chosen.summary
    ref = summarise(reference, reference, SLO)
    assert broken(summary, ref, 0.10) == (False, False, False)
    assert summary["energy_saving_pct"] > 0.0
    held = [t.summary["energy_saving_pct"] for t in result.tries if t.holds]
    assert summary["energy_saving_pct"] == max(held)
    assert sum(result.bucket_windows) == rows
    # Fills above the ladder only when its top kept every promise.
    top_held = result.tries[len(FILLS) - 1].holds
    assert len(result.tries) == len(FILLS) + (len(MORE_FILLS) if top_held else 0)


def test_the_benchmark_reports_state_plan_trained_on_the_next_seed() -> None:
    config = BenchConfig(
        trace=shipped_trace_path("azure_conv_2023"),
        rate_scale=2.0,
        policies=("default", "state-plan", "oracle-plan"),
        duration_s=45.0,
        drain_s=15.0,
        plan_step_mhz=450,
    )
    result = run_bench(config)
    data = results_dict(result)
    entry = data["policies"]["state-plan"]
    assert entry["state_plan_train_seed"] == 1
    section = data["state_plan"]
    assert section["train_seed"] == 1 and section["tries"]
    assert entry["state_plan_held"] == (section["chosen_fill"] is not None)
    if entry["state_plan_held"]:
        chosen = next(t for t in section["tries"] if t["fill"] == section["chosen_fill"])
        assert chosen["holds"] and chosen["energy_saving_pct"] == entry["energy_saving_pct"]
    assert "## state-plan" in results_markdown(data, [])
    # state-plan's run seeds oracle-plan: the bound never ends below it.
    plan = data["policies"]["oracle-plan"]["energy_saving_pct"]
    assert plan >= entry["energy_saving_pct"] or not entry["state_plan_held"]
    sources = [t["source"] for t in data["oracle_plan"]["tries"]]
    assert "state-plan's run" in sources
    assert data["timing"]["wall_s"]["state-plan"] > 0
