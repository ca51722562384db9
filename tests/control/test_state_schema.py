"""Every saved controller state either comes back exactly or is refused, for agft,
agft-paper and the energy estimator: hypothesis rewrites one field of a real state at a
time with values of every JSON type (NaN, infinities, booleans, strings, lists, maps)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.control.agft import AgftPolicy
from server.control.paper import PaperPolicy
from server.control.policy import SloTargets
from server.control.state_schema import PACKED_PREFIX, StateReader, pack_floats
from server.energy.estimator import DefaultEnergyEstimator, features
from tests.control.test_agft_policy import run as run_agft
from tests.control.test_paper_policy import run_env

SLO = SloTargets(ttft_s=1.0, tpot_s=0.1)


def _agft() -> AgftPolicy:
    return AgftPolicy(SLO, max_slowdown=None)


def _paper() -> PaperPolicy:
    return PaperPolicy(SLO)


def _estimator() -> DefaultEnergyEstimator:
    return DefaultEnergyEstimator()


def _trained_agft() -> dict[str, Any]:
    policy = _agft()
    run_agft(policy, 120)
    out: dict[str, Any] = json.loads(json.dumps(policy.state()))
    return out


def _trained_paper() -> dict[str, Any]:
    policy = _paper()
    run_env(policy, 400)
    out: dict[str, Any] = json.loads(json.dumps(policy.state()))
    return out


def _trained_estimator() -> dict[str, Any]:
    model = DefaultEnergyEstimator()
    rng = np.random.default_rng(0)
    for k in range(40):
        prompt, gen = rng.uniform(0, 20_000), rng.uniform(0, 4_000)
        model.observe(features(prompt, gen, 1.0), 100 + gen / 20, 1.0, True, k % 3 == 0)
    out: dict[str, Any] = json.loads(json.dumps(model.state()))
    return out


Kind = tuple[Callable[[], Any], dict[str, Any], tuple[str, ...]]
KINDS: dict[str, Kind] = {
    # (a fresh one, a trained state, top-level keys that are a record, not restored)
    "agft": (_agft, _trained_agft(), ("tunables",)),
    "agft-paper": (_paper, _trained_paper(), ("tunables",)),
    "energy-estimator": (_estimator, _trained_estimator(), ()),
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document: keys of maps, indices of lists (the first few)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:3]):
            out += _paths(item, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    if value is _DELETE:
        if isinstance(doc, dict):
            del doc[path[-1]]
        else:
            doc.pop(path[-1])
    else:
        doc[path[-1]] = value


_DELETE = object()
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(_DELETE),
)


def _unpacked(value: Any) -> Any:
    """Packed arrays as the lists they hold: a list where a packed array was is read as
    the same floats (older builds wrote lists) and comes back packed."""
    if isinstance(value, str) and value.startswith(PACKED_PREFIX):
        return StateReader("test").floats(value, "packed").tolist()
    if isinstance(value, dict):
        return {k: _unpacked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpacked(v) for v in value]
    return value


def _comparable(state: dict[str, Any], skip: tuple[str, ...]) -> dict[str, Any]:
    # Compared with ==, so 3 and 3.0 are the same number; NaN equals nothing, so a NaN
    # that got in is caught.
    return {k: _unpacked(v) for k, v in state.items() if k not in skip}


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_state_round_trips_or_is_refused(kind: str, data: st.DataObject) -> None:
    fresh, trained, record_only = KINDS[kind]
    paths = _paths(trained)
    path = data.draw(st.sampled_from(paths), label="field")
    value = data.draw(JSON_VALUES, label="new value")
    state = copy.deepcopy(trained)
    _set(state, path, value)
    target = fresh()
    untouched = _comparable(target.state(), ())
    try:
        target.load_state(state)
    except ValueError as err:
        assert str(err)  # a refusal says why
        # ... and changes nothing.
        assert _comparable(target.state(), ()) == untouched
        return
    restored = json.loads(json.dumps(target.state()))
    assert _comparable(restored, record_only) == _comparable(
        json.loads(json.dumps(state)), record_only
    ), f"{kind}: {path} = {value!r} was accepted but did not come back"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_real_state_round_trips(kind: str) -> None:
    fresh, trained, _ = KINDS[kind]
    target = fresh()
    target.load_state(copy.deepcopy(trained))
    assert json.loads(json.dumps(target.state())) == trained


def test_the_reader_refuses_what_json_or_numpy_would_coerce() -> None:
    read = StateReader("x state")
    for bad in (True, "1.5", math.nan, math.inf, None, [1.0]):
        with pytest.raises(ValueError, match="x state: f must be a finite number"):
            read.number(bad, "f")
    with pytest.raises(ValueError, match="must be an integer"):
        read.count(2.0, "n")
    with pytest.raises(ValueError, match=r"x state: a\[1\]\[0\] must be a finite number"):
        read.array([[1.0, 2.0], ["3", 4.0]], "a", (2, 2))
    with pytest.raises(ValueError, match="must be a list of 2 items"):
        read.array([[1.0, 2.0]], "a", (2, 2))
    assert read.array([[1, 2.5]], "a", (1, 2)).tolist() == [[1.0, 2.5]]


@pytest.mark.parametrize(
    ("field", "value"),
    [("ttft_tail_ratio", math.nan), ("windows", True), ("last_waiting", "inf"), ("dwell", 1.5)],
)
def test_agft_refuses_what_it_once_accepted(field: str, value: object) -> None:
    state = copy.deepcopy(KINDS["agft"][1])
    state[field] = value
    with pytest.raises(ValueError, match=f"agft state: {field}"):
        _agft().load_state(state)


def test_packed_floats_come_back_to_the_bit_and_nothing_else_is_read_as_them() -> None:
    read = StateReader("x state")
    values = [0.0, -0.0, 5e-324, 1.0 / 3.0, -1.7976931348623157e308, 12345.678]
    back = read.floats(pack_floats(values), "f")
    assert back.tobytes() == np.asarray(values, dtype=np.float64).tobytes()
    assert back.flags.writeable  # a model updates its arrays in place
    assert read.floats(pack_floats([]), "f").size == 0
    matrix = np.arange(6.0).reshape(2, 3)
    assert (read.array(pack_floats(matrix), "m", (2, 3)) == matrix).all()
    good = pack_floats([1.0, 2.0])  # 16 bytes: "...QA==", "A" holding 4 bits of padding
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    padded = good[:-3] + alphabet[alphabet.index(good[-3]) + 1] + "=="
    assert read.floats(good, "f").tolist() == [1.0, 2.0]
    for bad, why in (
        ("AAAAAAAA8D8=", "must be a list or f8:-packed floats"),  # no prefix
        ("f8:not base64!", "is not valid base64"),
        (good[:-4], "is not packed float64"),  # cut inside a float
        (padded, "is not packed float64"),  # a second spelling of the same bytes
        (pack_floats([1.0, math.nan]), "must hold finite numbers only"),
        (pack_floats([math.inf]), "must hold finite numbers only"),
    ):
        with pytest.raises(ValueError, match=f"x state: f {why}"):
            read.floats(bad, "f")
    with pytest.raises(ValueError, match="must have 3 items, not 2"):
        read.floats(good, "f", length=3)
    with pytest.raises(ValueError, match="must have 6 items, not 2"):
        read.array(good, "f", (2, 3))
