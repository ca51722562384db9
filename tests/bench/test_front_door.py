"""The fast loop in `agft bench`: the same agent code in virtual time, with and without a
front door, on the same arrivals."""

from __future__ import annotations

import numpy as np
import pytest

from bench.front_door import FrontDoorSetup, SimFrontDoorReader, split_name
from bench.harness import PolicyRun, RunSpec, run_policy
from bench.metrics import summarise
from bench.runner import plan_seed_runs
from server.control.policy import SloTargets
from server.control.registry import make_policy


def test_a_suffix_names_the_front_door() -> None:
    assert split_name("agft") == ("agft", None)
    assert split_name("agft+router") == ("agft", FrontDoorSetup("router"))
    assert split_name("agft:max_slowdown=none+load") == (
        "agft:max_slowdown=none",
        FrontDoorSetup("load"),
    )
    with pytest.raises(ValueError, match="unknown front door 'udp'"):
        split_name("agft+udp")


def _static(spec: RunSpec, front_door: FrontDoorSetup | None) -> PolicyRun:
    return run_policy(
        spec, make_policy("static", static_clock_mhz=1005), label="static", front_door=front_door
    )


def test_an_unreadable_front_door_is_todays_behaviour(
    spec_90s: RunSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    today = run_policy(spec_90s, make_policy("agft"), calibrate=True)
    monkeypatch.setattr(SimFrontDoorReader, "read", lambda self: None)
    blind = run_policy(
        spec_90s, make_policy("agft"), calibrate=True, front_door=FrontDoorSetup("router")
    )
    assert blind.clock_chosen_mhz == today.clock_chosen_mhz
    assert blind.clock_in_force_mhz == today.clock_in_force_mhz
    np.testing.assert_allclose(blind.energy_j, today.energy_j, rtol=1e-9)
    assert [r.first_token_s for r in blind.requests] == pytest.approx(
        [r.first_token_s for r in today.requests], abs=1e-9
    )
    assert blind.boosted_s == 0 and blind.fast_loop_polls > 0


def test_the_fast_loop_is_deterministic(spec_90s: RunSpec) -> None:
    a = _static(spec_90s, FrontDoorSetup("router"))
    b = _static(spec_90s, FrontDoorSetup("router"))
    assert a.energy_j == b.energy_j
    assert a.boosted_s == b.boosted_s > 0
    assert [r.first_token_s for r in a.requests] == [r.first_token_s for r in b.requests]


@pytest.mark.parametrize("source", ["router", "load"])
def test_prompts_get_their_first_token_sooner_for_some_energy(
    spec_90s: RunSpec, source: str
) -> None:
    # A low static clock, so prefills are slow: the boost must shorten TTFT, and it costs
    # energy (it runs at the top clock), but less than default clocks all along.
    slo = SloTargets()
    default = run_policy(spec_90s, make_policy("default"))
    plain = summarise(_static(spec_90s, None), default, slo)
    boosted_run = _static(spec_90s, FrontDoorSetup(source))
    boosted = summarise(boosted_run, default, slo)
    assert boosted["ttft_p90_s"] < 0.9 * plain["ttft_p90_s"]
    assert 0 < boosted["energy_saving_pct"] < plain["energy_saving_pct"]
    # The server's record of the clock in force stays the command's, not the boost.
    assert {c for c in boosted_run.clock_in_force_mhz if c is not None} == {1005}


def test_a_slower_poll_catches_fewer_prompts(spec_90s: RunSpec) -> None:
    fast = _static(spec_90s, FrontDoorSetup("router", poll_s=0.01))
    slow = _static(spec_90s, FrontDoorSetup("router", poll_s=0.2))
    ttft = [np.percentile([r.ttft_s for r in run.requests], 90) for run in (fast, slow)]
    assert ttft[0] < ttft[1]
    assert fast.fast_loop_polls > 10 * slow.fast_loop_polls


def test_runs_with_the_fast_loop_do_not_seed_the_per_window_bound() -> None:
    run = PolicyRun(policy="x", window_s=1.0, f_max_mhz=1980)
    runs = {
        "default": run,
        "agft": run,
        "agft+router": run,
        "agft (default promise)": run,
        "agft+load (slo-only promise)": run,
    }
    assert sorted(plan_seed_runs(runs)) == ["agft", "agft (default promise)"]
