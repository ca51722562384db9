"""Normalizer against numpy's mean and standard deviation."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from server.control.normalizer import Normalizer


def _feed(rows: np.ndarray, clip: float = 5.0) -> Normalizer:
    norm = Normalizer(rows.shape[1], clip=clip)
    for row in rows:
        norm.update(row)
    return norm


def test_matches_numpy_mean_and_std() -> None:
    rng = np.random.default_rng(1)
    rows = rng.normal(loc=[0.0, 100.0, -3.0], scale=[1.0, 25.0, 0.01], size=(500, 3))
    norm = _feed(rows)
    np.testing.assert_allclose(norm.mean, rows.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(norm.std(), rows.std(axis=0, ddof=1), rtol=1e-9)
    x = np.array([0.5, 90.0, -3.005])
    expected = (x - rows.mean(axis=0)) / rows.std(axis=0, ddof=1)
    np.testing.assert_allclose(norm.transform(x), expected, rtol=1e-9)


def test_unknown_values_are_skipped_per_feature() -> None:
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(200, 2))
    rows[rng.random(200) < 0.3, 1] = np.nan
    norm = _feed(rows)
    np.testing.assert_allclose(norm.mean, np.nanmean(rows, axis=0), rtol=1e-10)
    np.testing.assert_allclose(norm.std(), np.nanstd(rows, axis=0, ddof=1), rtol=1e-9)
    assert norm.count.tolist() == [200.0, float(np.isfinite(rows[:, 1]).sum())]
    # An unknown value sits at the mean, whatever the statistics say.
    assert norm.transform(np.array([1.0, np.nan]))[1] == 0.0


def test_constant_and_unseen_features_map_to_zero() -> None:
    rows = np.array([[5.0, 1.0, np.nan], [5.0, 2.0, np.nan], [5.0, 3.0, np.nan]])
    norm = _feed(rows)
    z = norm.transform(np.array([9.0, 3.0, 4.0]))
    assert z[0] == 0.0  # never varied: no information
    assert z[1] == pytest.approx(1.0)
    assert z[2] == 0.0  # never seen
    single = _feed(np.array([[1.0, 2.0]]))
    assert single.transform(np.array([7.0, -7.0])).tolist() == [0.0, 0.0]


def test_clips_to_five_sigma() -> None:
    norm = _feed(np.array([[0.0], [1.0], [0.0], [1.0]]))
    assert norm.transform(np.array([1000.0]))[0] == 5.0
    assert norm.transform(np.array([-1000.0]))[0] == -5.0
    narrow = _feed(np.array([[0.0], [1.0], [0.0], [1.0]]), clip=2.0)
    assert narrow.transform(np.array([1000.0]))[0] == 2.0


def test_round_trip_through_json() -> None:
    rng = np.random.default_rng(3)
    norm = _feed(rng.normal(size=(50, 4)))
    restored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    x = np.array([0.1, -2.0, 3.0, np.nan])
    np.testing.assert_array_equal(restored.transform(x), norm.transform(x))
    restored.update(x)
    norm.update(x)
    np.testing.assert_array_equal(restored.mean, norm.mean)


@pytest.mark.parametrize(
    "state",
    [
        None,
        {"dim": 2, "clip": 5.0, "count": [1, 1], "mean": [0, 0]},
        {"dim": 2, "clip": 5.0, "count": [1, 1], "mean": [0, 0], "m2": [0, -1]},
        {"dim": 2, "clip": 5.0, "count": [1.5, 1], "mean": [0, 0], "m2": [0, 0]},
        {"dim": 2, "clip": 5.0, "count": [-1, 1], "mean": [0, 0], "m2": [0, 0]},
        {"dim": 2, "clip": 5.0, "count": [1, 1], "mean": [0, float("nan")], "m2": [0, 0]},
        {"dim": 2, "clip": 5.0, "count": [1, 1, 1], "mean": [0, 0], "m2": [0, 0]},
        {"dim": 0, "clip": 5.0, "count": [], "mean": [], "m2": []},
        {"dim": 2, "clip": -1.0, "count": [1, 1], "mean": [0, 0], "m2": [0, 0]},
        {"dim": 2, "clip": "5", "count": [1, 1], "mean": [0, 0], "m2": [0, 0]},
    ],
)
def test_from_dict_rejects_malformed(state: Any) -> None:
    with pytest.raises(ValueError):
        Normalizer.from_dict(state)


def test_rejects_wrong_shape() -> None:
    norm = Normalizer(3)
    with pytest.raises(ValueError):
        norm.update(np.zeros(2))
    with pytest.raises(ValueError):
        norm.transform(np.zeros(4))
