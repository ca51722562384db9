"""`agft:name=value:...` policy names: agft with its tunables overridden."""

from __future__ import annotations

import dataclasses

import pytest

from server.control.agft import AgftPolicy, AgftTunables, tunables_from_text
from server.control.policy import SloTargets
from server.control.registry import make_policy, policy_factory
from tests.control.test_agft_policy import ARMS, run


def test_overrides_are_typed_like_the_tunable() -> None:
    got = tunables_from_text(
        "miss_share_factor=0.5:dwell_windows=3:max_slowdown=none:attainment_loss=none"
    )
    assert got == {
        "miss_share_factor": 0.5,
        "dwell_windows": 3,
        "max_slowdown": None,
        "attainment_loss": None,
    }
    assert isinstance(got["dwell_windows"], int)


def test_the_registry_builds_agft_with_the_overrides() -> None:
    policy = make_policy("agft:miss_share_factor=0.5:ttft_miss_fraction=0.6")
    assert isinstance(policy, AgftPolicy)
    assert policy.tunables.miss_share_factor == 0.5
    assert policy.tunables.ttft_miss_fraction == 0.6
    # Everything not named keeps its default, and the saved-state key stays "agft".
    assert policy.tunables.dwell_windows == AgftTunables().dwell_windows
    assert policy.name == "agft"
    # The overrides reach the saved state, so a restart under other settings can tell.
    assert policy.state()["tunables"]["miss_share_factor"] == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not name=value"),
        ("miss_share_factor", "is not name=value"),
        ("miss_share_factor=", "is not name=value"),
        ("nope=1", "unknown tunable 'nope'"),
        ("dwell_windows=2.5", "is not an integer"),
        ("miss_share_factor=abc", "is not a number"),
        ("miss_share_factor=nan", "finite"),
        ("miss_share_factor=-1", "not negative"),
        ("floor_fraction=1.5", "(0, 1]"),
        ("budget_margin=0", "must be above 0"),
        ("ridge_lambda=0", "must be above 0"),
        ("reference_windows=0", "must be above 0"),
        ("miss_share_factor=none", "is not a number"),  # only the promises may be none
        ("dwell_windows=1:dwell_windows=2", "given twice"),
    ],
)
def test_bad_overrides_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tunables_from_text(text)


def test_a_bad_policy_name_fails_when_the_server_starts() -> None:
    with pytest.raises(ValueError, match="unknown tunable"):
        policy_factory("agft:bogus=1")
    with pytest.raises(ValueError, match="unknown policy"):
        policy_factory("rule:miss_share_factor=0.5")


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(AgftTunables)])
def test_every_accepted_extreme_value_keeps_the_controller_running(field: str) -> None:
    # The smallest value the parser lets through, then a large one: decide must never raise
    # and must choose only supported clocks (the toy world of test_agft_policy).
    for raw in ("0", "0.001", "1"):
        try:
            overrides = tunables_from_text(f"{field}={raw}")
        except ValueError:
            continue
        chosen = run(AgftPolicy(SloTargets(), **overrides), 40)
        assert all(c is None or c in ARMS.supported_mhz for c in chosen)
    big = "1000000" if isinstance(getattr(AgftTunables(), field), int) else "1e6"
    if field not in ("floor_fraction", "ttft_miss_fraction"):
        chosen = run(AgftPolicy(SloTargets(), **tunables_from_text(f"{field}={big}")), 40)
        assert all(c is None or c in ARMS.supported_mhz for c in chosen)
