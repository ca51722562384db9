"""An SLO policy's promises become agft's aims, each inside the promise it serves."""

from __future__ import annotations

import pytest

from server.control.agft import AgftPolicy
from server.control.policy import SloTargets
from server.slo.controllers import ATTAINMENT_AIM, SLOWDOWN_AIM, controller_factory
from server.slo.spec import SloSpec


def _agft(**promises: float | None) -> AgftPolicy:
    spec = SloSpec(id=1, name="p", scope="fleet", targets=SloTargets(), **promises)  # type: ignore[arg-type]
    policy = controller_factory(spec)()
    assert isinstance(policy, AgftPolicy)
    return policy


def test_the_promises_are_aimed_inside() -> None:
    policy = _agft(max_p90_slowdown=0.2, max_attainment_loss_points=2.0)
    assert policy.tunables.max_slowdown == pytest.approx(0.2 * SLOWDOWN_AIM)
    assert policy.tunables.attainment_loss == pytest.approx(0.02 * ATTAINMENT_AIM)
    assert 0 < SLOWDOWN_AIM < 1 and 0 < ATTAINMENT_AIM < 1


def test_a_promise_left_out_is_not_held() -> None:
    policy = _agft(max_p90_slowdown=None, max_attainment_loss_points=None)
    assert policy.tunables.max_slowdown is None
    assert policy.tunables.attainment_loss is None
