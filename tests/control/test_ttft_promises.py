"""agft's first-token promises held on counts: the pooled reference, the counted integrator
and their saved state."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from server.control.agft.tail import (
    GRID_EDGES,
    CountedShare,
    PooledLatencies,
    TtftPromises,
    shaped_cdf,
)
from server.control.observation import HistogramDelta
from server.control.state_schema import StateReader, pack_floats

# vLLM's TTFT buckets (vllm/v1/metrics/loggers.py).
VLLM_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)


def histogram(values: np.ndarray, bounds: tuple[float, ...] = VLLM_TTFT) -> HistogramDelta:
    idx = np.searchsorted(np.asarray(bounds), values, side="left")
    counts = np.bincount(idx, minlength=len(bounds) + 1)
    return HistogramDelta(bounds, tuple(int(c) for c in counts), float(values.sum()), len(values))


def test_without_a_pooled_shape_the_cdf_is_the_histograms_own() -> None:
    rng = np.random.default_rng(0)
    hist = histogram(rng.lognormal(math.log(0.08), 0.8, size=500))
    at = np.array([0.0005, 0.03, 0.1, 0.17, 0.3, 4.0, 50.0])
    assert np.allclose(shaped_cdf(hist, at, None), [hist.count_at_most(x) for x in at])


def test_the_pool_finds_a_request_percentile_across_windows_of_different_load() -> None:
    # Quiet windows are fast, busy ones slow: the requests' p90 is not any window's p90,
    # and it is what the pool must find (to the grid's and the buckets' resolution).
    rng = np.random.default_rng(1)
    pool = PooledLatencies(windows=10_000)
    everything = []
    for w in range(600):
        busy = w % 3 == 0
        values = rng.lognormal(math.log(0.15 if busy else 0.05), 0.6, size=30 if busy else 8)
        everything.append(values)
        pool.add(histogram(values), 1.0)
    # The requests' own p90 (it lies inside vLLM's 0.25-0.5 s bucket, where the pool reads
    # between the bounds as a power law).
    truth = float(np.quantile(np.concatenate(everything), 0.9))
    found = pool.quantile(0.9)
    assert found is not None
    assert abs(found / truth - 1.0) < 0.05
    share = pool.share_above(truth)
    assert share is not None and abs(share - 0.10) < 0.01
    # The p90 of per-window p90s (the statistic the pool replaced) is far off.
    assert share is not None
    per_window = [histogram(v).quantile(0.9) for v in everything]
    assert float(np.quantile([q for q in per_window if q is not None], 0.9)) > 1.1 * truth


def test_a_tail_inside_a_coarse_bucket_is_read_as_a_power_law() -> None:
    # Windows of a few requests each, whose p90 falls inside vLLM's 0.1-0.25 s bucket (as
    # conv 2023's does at default clocks): spread evenly, that bucket puts the p90 far
    # too high; read between the buckets' own bounds as a power law, close to the truth.
    rng = np.random.default_rng(7)
    pool = PooledLatencies(windows=10**9)
    everything = rng.lognormal(math.log(0.04), 0.85, size=7 * 3000)
    for chunk in everything.reshape(3000, 7):
        pool.add(histogram(chunk), 1.0)
    truth = float(np.quantile(everything, 0.9))
    assert 0.1 < truth < 0.25  # the case in point
    found = pool.quantile(0.9)
    assert found is not None and abs(found / truth - 1.0) < 0.05
    share = pool.share_above(truth)
    assert share is not None and abs(share - 0.10) < 0.01
    # Spread evenly inside the bucket (as HistogramDelta reads it), even every request in
    # one histogram is far off.
    spread = histogram(everything).quantile(0.9)
    assert spread is not None and spread > 1.15 * truth


def test_a_windows_count_inside_a_bucket_follows_the_pools_shape() -> None:
    rng = np.random.default_rng(8)
    pool = PooledLatencies(windows=10**9)
    for _ in range(2000):
        pool.add(histogram(rng.lognormal(math.log(0.04), 0.85, size=7)), 1.0)
    window = histogram(np.array([0.03, 0.05, 0.07, 0.11, 0.12, 0.2, 0.3]))
    # Exact at the bounds, whatever the shape.
    for bound in (0.08, 0.1, 0.25, 0.5):
        assert pool.at_most(window, bound) == pytest.approx(window.count_at_most(bound))
    inside = [pool.at_most(window, x) for x in (0.11, 0.13, 0.16, 0.2, 0.24)]
    assert all(b >= a for a, b in itertools.pairwise(inside))
    # A falling tail puts more of the bucket near its lower bound than an even spread.
    assert inside[1] > window.count_at_most(0.13)
    # The one-point reading is the vectorised one's.
    points = np.array([0.003, 0.07, 0.11, 0.13, 0.16, 0.2, 0.24, 0.4, 3.0])
    assert np.allclose(
        [pool.at_most(window, float(x)) for x in points],
        shaped_cdf(window, points, pool.mass_above_bounds()),
    )


def test_a_windows_scale_moves_its_requests() -> None:
    values = np.full(100, 0.2)
    slow, fast = PooledLatencies(100), PooledLatencies(100)
    slow.add(histogram(values), 1.0)
    fast.add(histogram(values), 0.5)
    q_slow, q_fast = slow.quantile(0.5), fast.quantile(0.5)
    assert q_slow is not None and q_fast is not None
    assert q_fast == pytest.approx(q_slow * 0.5, rel=0.07)
    assert slow.total == pytest.approx(100.0) and fast.total == pytest.approx(100.0)


def test_old_windows_fade() -> None:
    pool = PooledLatencies(windows=50)
    for _ in range(50):
        pool.add(histogram(np.full(10, 0.03)), 1.0)
    for _ in range(300):
        pool.add(histogram(np.full(10, 0.3)), 1.0)
    share = pool.share_above(0.1)
    assert share is not None and share > 0.99


def test_counted_share_holds_the_long_run_share_where_the_plant_lets_it() -> None:
    # A plant where a looser budget (a higher gain) lets more requests over the line.
    rng = np.random.default_rng(2)
    share = CountedShare()
    over_total = n_total = 0.0
    for w in range(6_000):
        n = int(rng.poisson(9))
        over = float(rng.binomial(n, min(1.0, 0.06 * share.gain**2)))
        share.add(over, float(n), 0.10)
        if w >= 1_000:
            over_total += over
            n_total += n
    assert abs(over_total / n_total - 0.10) < 0.01
    # And where even the tightest gain lets too many over, it stays at its tightest.
    stuck = CountedShare()
    for _ in range(2_000):
        stuck.add(5.0, 10.0, 0.10)
    assert stuck.gain == pytest.approx(CountedShare.GAIN_MIN)


def test_a_burst_of_misses_is_paid_back_later() -> None:
    share = CountedShare()
    for _ in range(50):
        share.add(5.0, 10.0, 0.10)  # half the requests over, five times the allowance
    tight = share.gain
    assert tight < 0.5
    for _ in range(20):
        share.add(0.0, 10.0, 0.10)
    # Still in debt: the gain recovers only as fast as windows below the allowance repay.
    assert tight < share.gain < 1.0


def test_no_requests_moves_nothing() -> None:
    share = CountedShare()
    share.add(0.0, 0.0, 0.10)
    share.add(math.nan, 10.0, 0.10)
    assert share.gain == 1.0 and share.mean_requests == 0.0


def test_the_limit_is_the_slo_until_there_is_a_reference_and_tightens_on_what_we_added() -> None:
    promises = TtftPromises(windows=900)
    assert promises.limit(0.9, 0.05, 0.5, 0.005) == pytest.approx(0.5)
    rng = np.random.default_rng(3)

    def window(median_s: float) -> HistogramDelta:
        return histogram(rng.lognormal(math.log(median_s), 0.5, 10))

    for _ in range(100):
        promises.add(window(0.05), 1.0, 0.9, 0.05, 0.5, 0.005)
    ref = promises.default_quantile(0.9)
    assert ref is not None and 0.05 < ref < 0.15
    loose = promises.limit(0.9, 0.05, 0.5, 0.005)
    # A busy spell at default clocks (speedup 1) is over the line, but not by our doing:
    # it is not charged, and the limit does not tighten.
    for _ in range(100):
        promises.add(window(0.1), 1.0, 0.9, 0.05, 0.5, 0.005)
    assert promises.tail.gain >= 1.0
    # The same latencies at a clock the model says doubles them: what default clocks
    # would have kept under the line is over it, and the limit tightens.
    for _ in range(100):
        promises.add(window(0.1), 0.5, 0.9, 0.05, 0.5, 0.005)
    assert promises.tail.gain < 0.5
    assert promises.limit(0.9, 0.05, 0.5, 0.005) < loose
    # Without a relative promise only the SLO (and the attainment gain) sets it.
    assert promises.limit(0.9, None, 0.5, None) == pytest.approx(0.5)


def test_misses_we_caused_tighten_the_attainment_gain() -> None:
    promises = TtftPromises(windows=900)
    slow = histogram(np.full(10, 0.4))  # under the 0.5 s objective
    for _ in range(30):
        promises.add(slow, 1.0, 0.9, None, 0.5, 0.005)
    assert promises.misses.gain > 1.0  # at default: nothing added, the allowance accrues
    late = histogram(np.full(10, 0.7))  # over it, where default (x 0.6) would be under
    for _ in range(60):
        promises.add(late, 0.6, 0.9, None, 0.5, 0.005)
    assert promises.misses.gain < 0.5
    assert promises.limit(0.9, None, 0.5, 0.005) < 0.25


def test_room_under_the_attainment_promise_does_not_loosen_the_slowdown_promise() -> None:
    promises = TtftPromises(windows=900)
    rng = np.random.default_rng(5)
    for _ in range(100):
        promises.add(histogram(rng.lognormal(math.log(0.05), 0.5, 10)), 1.0, 0.9, 0.05, 0.5, 0.005)
    ref = promises.default_quantile(0.9)
    assert ref is not None
    # Few first tokens near the objective: the attainment gain rises to its ceiling.
    # The tail integrator has charged the slowdown promise and tightened.
    promises.misses.log_gain = math.log(CountedShare.GAIN_MAX)
    promises.tail.log_gain = math.log(0.5)
    # The slowdown limit is the tail gain's alone (it was once multiplied by the
    # attainment gain, which cancelled the tightening and let p90 TTFT drift up).
    assert promises.limit(0.9, 0.05, 0.5, 0.005) == pytest.approx(0.5 * 1.05 * ref)
    # The attainment gain still moves the SLO's own limit when it is the tighter one.
    promises.misses.log_gain = math.log(0.2)
    assert promises.limit(0.9, 0.05, 0.5, 0.005) == pytest.approx(min(0.1, 0.5 * 1.05 * ref))
    assert promises.limit(0.9, None, 0.5, 0.005) == pytest.approx(0.1)


def test_the_promises_state_round_trips_and_refuses_what_it_should() -> None:
    promises = TtftPromises(windows=900)
    rng = np.random.default_rng(4)
    for _ in range(40):
        promises.add(histogram(rng.lognormal(math.log(0.2), 0.7, 12)), 0.8, 0.9, 0.05, 0.5, 0.005)
    saved = json.loads(json.dumps(promises.to_dict()))
    read = StateReader("test")
    back = TtftPromises.from_dict(saved, 900, read, "p")
    assert back.to_dict() == promises.to_dict()
    assert back.limit(0.9, 0.05, 0.5, 0.005) == promises.limit(0.9, 0.05, 0.5, 0.005)
    ref = read.floats(saved["reference"], "reference").tolist()
    assert len(ref) == len(GRID_EDGES) - 1
    # The lists an older build wrote read as the same state.
    assert TtftPromises.from_dict({**saved, "reference": ref}, 900, read, "p").to_dict() == saved
    for bad in (
        {**saved, "reference": ref[:-1]},
        {**saved, "reference": [-1.0, *ref[1:]]},
        {**saved, "reference": [math.nan, *ref[1:]]},
        {**saved, "reference": pack_floats(ref[:-1])},
        {**saved, "reference": pack_floats([-1.0, *ref[1:]])},
        {**saved, "reference": pack_floats([math.nan, *ref[1:]])},
        {**saved, "reference": saved["reference"][3:]},  # no "f8:"
        {**saved, "reference": saved["reference"][:-2]},  # cut inside a float
        {**saved, "reference": saved["reference"] + "?"},
        {**saved, "tail": {"log_gain": 9.0, "mean_requests": 1.0}},
        {**saved, "tail": {"log_gain": 0.0}},
        {**saved, "misses": {"log_gain": 0.0, "mean_requests": "many"}},
        {**saved, "reference_buckets": {"bounds": [0.1, 0.05], "mass": [1.0, 1.0, 1.0]}},
        {**saved, "reference_buckets": {"bounds": [0.1, 0.2], "mass": [1.0, -1.0, 1.0]}},
        {**saved, "reference_buckets": {"bounds": [0.1, 0.2], "mass": [1.0, 1.0]}},
        {**saved, "reference_buckets": {"bounds": [0.1, 0.2], "mass": pack_floats([1.0, 1.0])}},
        {key: value for key, value in saved.items() if key != "reference_buckets"},
        {**saved, "extra": 1},
    ):
        with pytest.raises(ValueError):
            TtftPromises.from_dict(bad, 900, read, "p")
