"""The default-clock energy model: learns only from fair windows, predicts what it was
taught, asks for calibration at its cadence, and refuses a state it cannot trust."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from server.energy.estimator import (
    CALIBRATION_GAP,
    CALIBRATION_WINDOWS,
    MIN_CALIBRATION,
    DefaultEnergyEstimator,
    features,
)


def true_power_w(prompt_tps: float, gen_tps: float) -> float:
    g, p = gen_tps / 1000, prompt_tps / 10_000
    return 90.0 + 120.0 * g + 100.0 * p - 15.0 * g * g


def _calibrated(n: int = 40, noise_w: float = 0.0, seed: int = 0) -> DefaultEnergyEstimator:
    rng = np.random.default_rng(seed)
    model = DefaultEnergyEstimator()
    for k in range(n):
        prompt, gen = rng.uniform(0, 20_000), rng.uniform(0, 4_000)
        if k % 5 == 0:
            prompt = gen = 0.0  # idle windows are calibrated too
        power = true_power_w(prompt, gen) + rng.normal(0, noise_w)
        model.observe(features(prompt, gen, 1.0), power, 1.0, at_default=True)
    return model


def test_it_predicts_the_power_it_was_calibrated_on() -> None:
    model = _calibrated()
    for prompt, gen in ((0.0, 0.0), (5_000.0, 1_500.0), (18_000.0, 3_500.0)):
        # A 2 s window serving these rates: features take its token counts.
        phi = features(2.0 * prompt, 2.0 * gen, 2.0)
        estimate = model.observe(phi, 123.0, 2.0, at_default=False)
        assert estimate == pytest.approx(2.0 * true_power_w(prompt, gen), rel=1e-3)


def test_loads_far_from_the_calibration_are_not_estimated() -> None:
    model = DefaultEnergyEstimator()
    rng = np.random.default_rng(1)
    for _ in range(40):  # busy windows only, never an idle one
        prompt, gen = rng.uniform(1_000, 20_000), rng.uniform(500, 4_000)
        model.observe(features(prompt, gen, 1.0), true_power_w(prompt, gen), 1.0, True)
    assert model.observe(features(0.0, 0.0, 1.0), 80.0, 1.0, at_default=False) is None
    busy = model.observe(features(8_000.0, 2_000.0, 1.0), 80.0, 1.0, at_default=False)
    assert busy == pytest.approx(true_power_w(8_000.0, 2_000.0), rel=1e-3)


def test_nothing_is_estimated_before_calibration_or_without_served_work() -> None:
    model = DefaultEnergyEstimator()
    phi = features(1000.0, 500.0, 1.0)
    for _ in range(MIN_CALIBRATION - 1):
        assert model.observe(phi, 300.0, 1.0, at_default=True) == 300.0  # measured
    assert model.observe(phi, 200.0, 1.0, at_default=False) is None
    model.observe(phi, 300.0, 1.0, at_default=True)
    assert model.ready
    assert model.observe(None, 200.0, 1.0, at_default=False) is None  # tokens unknown
    assert model.observe(phi, None, 1.0, at_default=False) is None  # energy unknown
    assert model.observe(phi, math.nan, 1.0, at_default=False) is None


def test_windows_the_controller_chose_teach_the_shape_but_not_the_level() -> None:
    # Congested windows at default clocks draw 30 % more power for the same tokens: they
    # show how power grows with the work, but what a window costs is set by fair windows.
    rng = np.random.default_rng(3)
    model = DefaultEnergyEstimator()
    for k in range(600):
        prompt, gen = rng.uniform(0, 20_000), rng.uniform(0, 4_000)
        fair = k % 10 == 0
        power = true_power_w(prompt, gen) * (1.0 if fair else 1.3)
        measured = model.observe(features(prompt, gen, 1.0), power, 1.0, True, fair)
        assert measured == power  # a window at default clocks is measured, not estimated
    assert model.calibrations == 60 and model.shape_windows == 600
    for prompt, gen in ((2_000.0, 500.0), (10_000.0, 2_000.0), (18_000.0, 3_500.0)):
        estimate = model.observe(features(prompt, gen, 1.0), 1.0, 1.0, at_default=False)
        assert estimate == pytest.approx(true_power_w(prompt, gen), rel=0.02)


def test_a_fair_window_alone_moves_the_level() -> None:
    model = _calibrated()
    phi = features(8_000.0, 2_000.0, 1.0)
    before = model.observe(phi, 1.0, 1.0, at_default=False)
    assert before is not None
    # The GPU now draws 10 % more at default clocks for the same work (a hotter room, a
    # new model): the level follows the fair windows that show it.
    for _ in range(400):
        prompt, gen = 8_000.0, 2_000.0
        model.observe(features(prompt, gen, 1.0), 1.1 * true_power_w(prompt, gen), 1.0, True)
    after = model.observe(phi, 1.0, 1.0, at_default=False)
    assert after == pytest.approx(1.1 * before, rel=0.03)


def test_its_error_statistics_come_from_windows_it_had_not_learnt() -> None:
    model = _calibrated(n=200, noise_w=10.0)
    errors = model.errors
    assert errors.tests == 200 - MIN_CALIBRATION
    assert abs(errors.mean) < 0.02 and 0.0 < errors.sd < 0.1
    assert errors.band is not None and errors.band < 0.05


def test_it_asks_for_calibration_at_its_cadence() -> None:
    # The exact period, with the decider's delay, is checked in test_calibration_windows.
    model = _calibrated()
    phi = features(1000.0, 500.0, 1.0)
    assert not model.wants_calibration(None)
    asked_after = None
    for k in range(1, 200):
        model.observe(phi, 200.0, 1.0, at_default=False)
        if model.wants_calibration(phi):
            asked_after = k
            break
    # A model with 40 calibrations asks every 40 windows; the gap grows to CALIBRATION_GAP.
    assert model.calibration_gap() == 40 < CALIBRATION_GAP
    assert asked_after == 40 - CALIBRATION_WINDOWS


def test_state_round_trips_and_bad_state_is_refused() -> None:
    model = _calibrated(n=30, noise_w=5.0)
    copy = DefaultEnergyEstimator()
    copy.load_state(model.state())
    assert copy.state() == model.state()
    phi = features(3000.0, 800.0, 1.0)
    assert copy.observe(phi, 1.0, 1.0, False) == pytest.approx(model.observe(phi, 1.0, 1.0, False))
    good = model.state()
    bad: list[dict[str, Any]] = [
        {**good, "version": 99},
        {**good, "a": [[1.0]]},
        {**good, "a": [[math.nan] * 5] * 5},
        {**good, "b": "no"},
        {**good, "calibrations": True},
        {**good, "tests": -1},
        {**good, "err_mean": math.inf},
        {**good, "a": [[0.0] * 5] * 5},
        {**good, "fair_phi": [1.0, 2.0]},
        {**good, "fair_phi": [math.nan] * 5},
        {**good, "fair_power": -1.0},
        {**good, "shape_windows": 1.5},
        {k: v for k, v in good.items() if k != "forced"},
    ]
    for state in bad:
        fresh = DefaultEnergyEstimator()
        with pytest.raises(ValueError, match="energy estimator state"):
            fresh.load_state(state)
        assert fresh.state() == DefaultEnergyEstimator().state()


def test_a_version_1_state_is_upgraded_and_predicts_as_before() -> None:
    model = _calibrated(n=30, noise_w=5.0)
    v2 = model.state()
    # What version 1 saved: one ridge over the fair windows, no level.
    v1 = {k: v2[k] for k in ("a", "b", "calibrations", "forced", "tests", "err_mean", "err_m2")}
    v1["version"] = 1
    upgraded = DefaultEnergyEstimator()
    upgraded.load_state(v1)
    assert upgraded.ready and upgraded.level() == 1.0
    phi = features(3000.0, 800.0, 1.0)
    assert phi is not None
    weights = np.linalg.solve(np.array(v1["a"]), np.array(v1["b"]))
    assert upgraded.predict_power_w(phi) == pytest.approx(float(phi @ weights))
    with pytest.raises(ValueError, match="energy estimator state"):
        DefaultEnergyEstimator().load_state({**v1, "calibrations": "many"})
