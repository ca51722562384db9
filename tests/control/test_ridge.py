"""RidgeArm against a direct numpy solve of the same ridge problem."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from server.control.ridge import RidgeArm


def _fit(dim: int, lam: float, n: int, seed: int = 0) -> tuple[RidgeArm, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n, dim))
    rs = xs @ rng.normal(size=dim) + 0.1 * rng.normal(size=n)
    model = RidgeArm(dim, lam)
    for x, r in zip(xs, rs, strict=True):
        model.update(x, float(r))
    return model, xs, rs


@pytest.mark.parametrize(("dim", "lam", "n"), [(1, 1.0, 5), (7, 1.0, 200), (8, 0.3, 40)])
def test_matches_direct_solve(dim: int, lam: float, n: int) -> None:
    model, xs, rs = _fit(dim, lam, n)
    a = lam * np.eye(dim) + xs.T @ xs
    b = xs.T @ rs
    np.testing.assert_allclose(model.theta, np.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.a_inv, np.linalg.inv(a), rtol=1e-8, atol=1e-12)
    assert model.n == n
    x = np.linspace(-1.0, 1.0, dim)
    mean = float(np.linalg.solve(a, b) @ x)
    width = math.sqrt(float(x @ np.linalg.solve(a, x)))
    assert model.predict(x) == pytest.approx(mean, rel=1e-8, abs=1e-10)
    assert model.width(x) == pytest.approx(width, rel=1e-8)
    assert model.ucb(x, 2.5) == pytest.approx(mean + 2.5 * width, rel=1e-8, abs=1e-10)
    assert model.ucb(x, 0.0) == pytest.approx(mean, rel=1e-8, abs=1e-10)


def test_predict_many_matches_row_by_row() -> None:
    model, _, _ = _fit(5, 0.7, 60)
    phi = np.random.default_rng(9).normal(size=(12, 5))
    means, widths = model.predict_many(phi)
    assert means.shape == widths.shape == (12,)
    for row, mean, width in zip(phi, means, widths, strict=True):
        assert mean == pytest.approx(model.predict(row), rel=1e-10, abs=1e-12)
        assert width == pytest.approx(model.width(row), rel=1e-10, abs=1e-12)


def test_prior_before_any_observation() -> None:
    model = RidgeArm(3, lam=4.0)
    x = np.array([1.0, 2.0, 2.0])
    assert model.predict(x) == 0.0
    assert model.width(x) == pytest.approx(3.0 / 2.0)  # |x| / sqrt(lambda)
    assert model.n == 0


def test_theta_is_a_copy() -> None:
    model, _, _ = _fit(3, 1.0, 10)
    theta = model.theta
    theta[:] = 99.0
    assert not np.allclose(model.theta, 99.0)


def test_round_trip_through_json() -> None:
    model, _, _ = _fit(7, 1.0, 50)
    restored = RidgeArm.from_dict(json.loads(json.dumps(model.to_dict())))
    x = np.arange(7, dtype=np.float64) / 7.0
    assert restored.n == model.n
    assert restored.predict(x) == pytest.approx(model.predict(x), rel=1e-12)
    assert restored.width(x) == pytest.approx(model.width(x), rel=1e-12)
    restored.update(x, 1.0)
    model.update(x, 1.0)
    np.testing.assert_allclose(restored.theta, model.theta, rtol=1e-12)


def _bad_states() -> list[Any]:
    good = _fit(2, 1.0, 5)[0].to_dict()
    return [
        None,
        [],
        {**good, "dim": 0},
        {**good, "dim": True},
        {**good, "dim": 3},
        {**good, "lam": 0.0},
        {**good, "lam": "1"},
        {**good, "n": -1},
        {**good, "n": 1.5},
        {**good, "a_inv": [[1.0, 0.0]]},
        {**good, "a_inv": [[1.0, 0.0], [0.0, float("nan")]]},
        {**good, "a_inv": [[1.0, 0.5], [0.0, 1.0]]},  # not symmetric
        {**good, "a_inv": [[1.0, 0.0], [0.0, -1.0]]},  # not positive definite
        {**good, "a_inv": "eye"},
        {**good, "b": [1.0]},
        {**good, "b": [1.0, float("inf")]},
        {k: v for k, v in good.items() if k != "b"},
    ]


@pytest.mark.parametrize("state", _bad_states())
def test_from_dict_rejects_malformed(state: Any) -> None:
    with pytest.raises(ValueError):
        RidgeArm.from_dict(state)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RidgeArm(0)
    with pytest.raises(ValueError):
        RidgeArm(3, lam=0.0)
    model = RidgeArm(3)
    with pytest.raises(ValueError):
        model.update(np.zeros(4), 1.0)
    with pytest.raises(ValueError):
        model.update(np.array([0.0, np.nan, 0.0]), 1.0)
    with pytest.raises(ValueError):
        model.update(np.zeros(3), float("nan"))
    assert model.n == 0
