"""What the server lets the agent's fast loop do: a Reflex on every lock of an instance with
a front door, its hold learnt from TTFT, and windows that report the loop checked."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from agft.v1 import agent_pb2 as pb
from server.control.observation import Observation
from server.control.policy import ClockArms, ClockDecision
from server.control.static import StaticPolicy
from server.fleet import validation
from server.fleet.decider import decide_window
from server.fleet.runtime import (
    REFLEX_HOLD_DEFAULT_S,
    REFLEX_HOLD_MAX_S,
    InstanceRuntime,
    ReflexPlan,
)
from server.fleet.validation import InvalidMessageError
from tests.helpers.raw_agent import window

ARMS = ClockArms((1000, 1500, 1980), 1980)


def _decide(runtime: InstanceRuntime, w: pb.InstanceWindow) -> pb.ServerMessage | None:
    return decide_window(runtime, w, now=datetime.now(UTC), lease_s=5.0).command


def _ttft(seconds: float, count: int = 4) -> pb.Histogram:
    return pb.Histogram(
        upper_bounds=[0.1, 1.0], bucket_counts=[count, 0, 0], sum=seconds * count, count=count
    )


def test_a_lock_carries_a_reflex_to_the_top_clock_only_with_a_front_door() -> None:
    plain = InstanceRuntime(1, "vllm-0", (0,), ARMS, StaticPolicy(1500))
    cmd = _decide(plain, window())
    assert cmd is not None and not cmd.set_clocks.HasField("reflex")
    door = InstanceRuntime(
        1, "vllm-0", (0,), ARMS, StaticPolicy(1500), front_door=pb.FRONT_DOOR_COUNT_QUEUED
    )
    cmd = _decide(door, window())
    assert cmd is not None
    reflex = cmd.set_clocks.reflex
    assert reflex.boost_sm_clock_mhz == 1980
    assert reflex.hold_s == REFLEX_HOLD_DEFAULT_S
    # Locked at the top clock already: nothing to boost to.
    top = InstanceRuntime(
        1, "vllm-0", (0,), ARMS, StaticPolicy(1980), front_door=pb.FRONT_DOOR_COUNT_QUEUED
    )
    cmd = _decide(top, window())
    assert cmd is not None and not cmd.set_clocks.HasField("reflex")


def test_the_hold_follows_the_windows_time_to_first_token() -> None:
    runtime = InstanceRuntime(
        1, "vllm-0", (0,), ARMS, StaticPolicy(1500), front_door=pb.FRONT_DOOR_COUNT_IN_FLIGHT
    )
    cmd = None
    for k in range(60):
        cmd = _decide(runtime, window(start=1000.0 + k, ttft_s=_ttft(0.05)))
    assert cmd is not None
    assert cmd.set_clocks.reflex.hold_s == pytest.approx(0.10)
    plan = ReflexPlan()
    for _ in range(100):
        plan.observe(30.0)
    assert plan.hold_s() == REFLEX_HOLD_MAX_S  # bounded, whatever TTFT does
    plan.observe(float("nan"))
    assert plan.hold_s() == REFLEX_HOLD_MAX_S


def test_the_clock_in_force_is_the_commands_while_the_gpu_reads_the_boost() -> None:
    w = window()
    w.gpus[0].locked_min_sm_clock_mhz, w.gpus[0].locked_max_sm_clock_mhz = 1000, 1980
    w.reflex.CopyFrom(pb.ReflexWindow(base_sm_clock_mhz=1500, boosted_s=0.3, boosts=2, polls=50))
    obs = validation.observation(w, (0,))
    assert obs.clock_in_force_mhz == 1500
    assert obs.boosted_s == pytest.approx(0.3)
    no_loop = validation.observation(window(), (0,))
    assert no_loop.boosted_s is None


@pytest.mark.parametrize(
    ("reflex", "field"),
    [
        (pb.ReflexWindow(boosted_s=float("nan")), "reflex.boosted_s"),
        (pb.ReflexWindow(boosted_s=-1.0), "reflex.boosted_s"),
        (pb.ReflexWindow(boosted_s=5.0), "reflex.boosted_s"),
        (pb.ReflexWindow(cpu_s=float("inf")), "reflex.cpu_s"),
        (pb.ReflexWindow(polls=1, polls_failed=2), "reflex.polls_failed"),
    ],
)
def test_impossible_fast_loop_figures_are_refused(reflex: pb.ReflexWindow, field: str) -> None:
    w = window()
    w.reflex.CopyFrom(reflex)
    with pytest.raises(InvalidMessageError, match=field):
        validation.observation(w, (0,))


def _hello(door: pb.FrontDoor) -> pb.Hello:
    return pb.Hello(
        node_id="n1",
        gpus=[pb.Gpu(index=0, supported_sm_clocks_mhz=[1980, 1500], default_sm_clock_mhz=1980)],
        instances=[pb.ServingInstance(name="vllm-0", gpu_indices=[0], front_door=door)],
    )


def test_hello_front_doors_are_checked() -> None:
    good = pb.FrontDoor(counts=pb.FRONT_DOOR_COUNT_QUEUED, url="http://r:8000/metrics", poll_s=0.02)
    validation.check_hello(_hello(good))
    for bad, field in (
        (
            pb.FrontDoor(counts=pb.FrontDoorCount.ValueType(7), url="http://x/load"),
            "front_door.counts",
        ),
        (pb.FrontDoor(counts=pb.FRONT_DOOR_COUNT_IN_FLIGHT, url=""), "front_door.url"),
        (
            pb.FrontDoor(counts=pb.FRONT_DOOR_COUNT_IN_FLIGHT, url="http://x", poll_s=-1.0),
            "front_door.poll_s",
        ),
    ):
        with pytest.raises(InvalidMessageError, match=field):
            validation.check_hello(_hello(bad))


class NoBoost(StaticPolicy):
    def decide(self, observation: Observation, arms: ClockArms) -> ClockDecision:
        return dataclasses.replace(super().decide(observation, arms), boost_helps=False)


def test_a_policy_that_says_first_tokens_do_not_limit_it_gets_no_boost() -> None:
    runtime = InstanceRuntime(
        1, "vllm-0", (0,), ARMS, NoBoost(1500), front_door=pb.FRONT_DOOR_COUNT_QUEUED
    )
    cmd = _decide(runtime, window())
    assert cmd is not None and cmd.set_clocks.max_sm_clock_mhz == 1500
    assert not cmd.set_clocks.HasField("reflex")
