"""The agent's fast loop: the rule, the boost under a lease, and the loop's bookkeeping."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agft.v1 import agent_pb2 as pb
from node_agent.clocks import ClockController
from node_agent.reflex import FastLoop, ReflexRule
from node_agent.serving.front_door import IN_FLIGHT, QUEUED
from sim.node import SimulatedNode
from tests.helpers.simnode import sim_node

BASE, BOOST, FLOOR = 1200, 1980, 345


class Time:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node() -> Iterator[SimulatedNode]:
    n = sim_node(instances=1)
    yield n
    n.stop()


def command(
    cid: str = "c1", *, boost: int | None = BOOST, hold_s: float = 0.1, lease_s: float = 5.0
) -> pb.SetClocks:
    cmd = pb.SetClocks(
        command_id=cid,
        instance="vllm-0",
        min_sm_clock_mhz=FLOOR,
        max_sm_clock_mhz=BASE,
        lease_s=lease_s,
    )
    if boost is not None:
        cmd.reflex.CopyFrom(pb.Reflex(boost_sm_clock_mhz=boost, hold_s=hold_s))
    return cmd


# ---- the rule -------------------------------------------------------------------------
def test_a_queued_count_boosts_exactly_while_prompts_wait() -> None:
    rule = ReflexRule(QUEUED)
    assert [rule.wants_boost(t, n, 0.5) for t, n in enumerate([0, 2, 1, 0, 0])] == [
        False,
        True,
        True,
        False,
        False,
    ]


def test_a_rise_of_the_in_flight_count_holds_the_boost_for_hold_s() -> None:
    rule = ReflexRule(IN_FLIGHT)
    assert not rule.wants_boost(0.0, 3, 0.1)  # the first reading: no rise seen yet
    assert rule.wants_boost(0.02, 4, 0.1)  # an arrival
    assert rule.wants_boost(0.10, 4, 0.1)
    assert not rule.wants_boost(0.13, 4, 0.1)  # hold over, no new arrival
    assert not rule.wants_boost(0.15, 2, 0.1)  # responses done: a fall is no arrival
    assert rule.wants_boost(0.17, 3, 0.1)


def test_an_unknown_reading_never_boosts_and_forgets_the_last_count() -> None:
    rule = ReflexRule(IN_FLIGHT)
    rule.wants_boost(0.0, 1, 1.0)
    assert rule.wants_boost(0.02, 2, 1.0)
    assert not rule.wants_boost(0.04, None, 1.0)
    # Across the gap a higher count is not an arrival we saw.
    assert not rule.wants_boost(0.06, 5, 1.0)
    assert not ReflexRule(QUEUED).wants_boost(0.0, None, 1.0)


def test_an_unknown_count_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="front-door count"):
        ReflexRule(0)


# ---- the boost under a lease ------------------------------------------------------------
def test_no_lease_no_boost_and_no_gpu_call(node: SimulatedNode) -> None:
    clocks = ClockController(node.backend, {"vllm-0": (0,)})
    assert not clocks.boost("vllm-0", True)
    assert node.backend.locked_sm_clocks_mhz(0) is None


def test_a_command_without_reflex_allows_no_boost(node: SimulatedNode) -> None:
    clocks = ClockController(node.backend, {"vllm-0": (0,)})
    assert clocks.set_clocks(command(boost=None)).ok
    assert not clocks.boost("vllm-0", True)
    assert node.backend.locked_sm_clocks_mhz(0) == (FLOOR, BASE)


def test_the_boost_lifts_the_ceiling_and_drops_back_to_the_command(node: SimulatedNode) -> None:
    t = Time()
    clocks = ClockController(node.backend, {"vllm-0": (0,)}, monotonic=t)
    assert clocks.set_clocks(command()).ok
    assert clocks.boost("vllm-0", True)
    assert node.backend.locked_sm_clocks_mhz(0) == (FLOOR, BOOST)
    t.now += 0.25
    assert not clocks.boost("vllm-0", False)
    assert node.backend.locked_sm_clocks_mhz(0) == (FLOOR, BASE)
    seconds, boosts = clocks.take_boost_window("vllm-0")
    assert seconds == pytest.approx(0.25) and boosts == 1
    assert clocks.take_boost_window("vllm-0") == (0.0, 0)


def test_a_lease_running_out_while_boosted_resets_to_default(node: SimulatedNode) -> None:
    t = Time()
    clocks = ClockController(node.backend, {"vllm-0": (0,)}, monotonic=t)
    assert clocks.set_clocks(command(lease_s=1.0)).ok
    assert clocks.boost("vllm-0", True)
    t.now += 1.5
    assert [lease.instance for lease in clocks.expire_leases()] == ["vllm-0"]
    assert node.backend.locked_sm_clocks_mhz(0) is None
    assert not clocks.boosted("vllm-0")
    assert not clocks.boost("vllm-0", True)  # and no boost without a lease
    assert node.backend.locked_sm_clocks_mhz(0) is None
    assert clocks.take_boost_window("vllm-0")[0] == pytest.approx(1.5)


def test_a_renewal_keeps_a_boost_in_progress_and_a_plain_command_ends_it(
    node: SimulatedNode,
) -> None:
    clocks = ClockController(node.backend, {"vllm-0": (0,)})
    assert clocks.set_clocks(command("c1")).ok
    assert clocks.boost("vllm-0", True)
    assert clocks.set_clocks(command("c2")).ok
    assert node.backend.locked_sm_clocks_mhz(0) == (FLOOR, BOOST)
    assert clocks.boosted("vllm-0")
    assert clocks.set_clocks(command("c3", boost=None)).ok
    assert node.backend.locked_sm_clocks_mhz(0) == (FLOOR, BASE)
    assert not clocks.boosted("vllm-0")


@pytest.mark.parametrize(
    ("boost", "hold_s", "error"),
    [
        (1110, 0.1, "below the max SM clock"),
        (1234, 0.1, "reflex boost SM clock 1234 MHz is not supported"),
        (BOOST, math.nan, "hold_s"),
        (BOOST, 11.0, "hold_s"),
        (BOOST, -0.1, "hold_s"),
    ],
)
def test_a_reflex_outside_what_the_gpu_and_the_command_allow_is_refused(
    node: SimulatedNode, boost: int, hold_s: float, error: str
) -> None:
    clocks = ClockController(node.backend, {"vllm-0": (0,)})
    ack = clocks.set_clocks(command(boost=boost, hold_s=hold_s))
    assert not ack.ok and error in ack.error
    assert node.backend.locked_sm_clocks_mhz(0) is None
    assert clocks.leases.get("vllm-0") is None


# ---- whatever happens, the lock stays within what the command allows -------------------
_ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("command"), st.sampled_from([None, BOOST, 1590])),
        st.tuples(st.just("reset"), st.none()),
        st.tuples(st.just("boost"), st.booleans()),
        st.tuples(st.just("wait"), st.floats(0.0, 3.0)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(actions=_ACTIONS)
def test_the_lock_never_leaves_the_commands_bounds(actions: list[tuple[str, object]]) -> None:
    node = SimulatedNode.create(instances=1, clock="virtual")  # idle: only the locks matter
    t = Time()
    clocks = ClockController(node.backend, {"vllm-0": (0,)}, monotonic=t)
    try:
        for k, (kind, arg) in enumerate(actions):
            if kind == "command":
                assert isinstance(arg, int | type(None))
                clocks.set_clocks(command(f"c{k}", boost=arg, lease_s=2.0))
            elif kind == "reset":
                clocks.reset_clocks(pb.ResetClocks(command_id=f"r{k}", instance="vllm-0"))
            elif kind == "boost":
                clocks.boost("vllm-0", bool(arg))
            else:
                assert isinstance(arg, float)
                t.now += arg
                clocks.expire_leases()
            lease = clocks.leases.get("vllm-0")
            lock = node.backend.locked_sm_clocks_mhz(0)
            if lease is None:
                assert lock is None  # no lock outlives its lease
                continue
            assert lock is not None and lock[0] == lease.min_mhz
            allowed = {lease.max_mhz} | ({lease.boost_mhz} if lease.boost_mhz else set())
            assert lock[1] in allowed  # the command's clock or its boost, nothing else
            assert lock[1] >= lease.max_mhz  # never below what the command set
    finally:
        node.stop()


# ---- the loop ---------------------------------------------------------------------------
class Door:
    def __init__(self, values: list[int | None]) -> None:
        self.values = values

    def read(self) -> int | None:
        return self.values.pop(0) if self.values else None


def test_the_loop_boosts_on_readings_and_reports_its_window(node: SimulatedNode) -> None:
    t = Time()
    clocks = ClockController(node.backend, {"vllm-0": (0,)}, monotonic=t)
    assert clocks.set_clocks(command()).ok
    loop = FastLoop(clocks, {"vllm-0": (Door([0, 1, 1, None, 0]), QUEUED, 0.02)}, monotonic=t)
    locks = []
    for _ in range(5):
        loop.step()
        locks.append(node.backend.locked_sm_clocks_mhz(0))
        t.now += 0.02
    assert [lk[1] if lk else None for lk in locks] == [BASE, BOOST, BOOST, BASE, BASE]
    window = loop.take_window("vllm-0")
    assert window is not None
    assert window.polls == 5 and window.polls_failed == 1
    assert window.boosts == 1 and window.boosted_s == pytest.approx(0.04)
    assert window.base_sm_clock_mhz == BASE
    assert window.cpu_s > 0
    assert loop.take_window("unknown") is None


def test_a_door_not_due_yet_is_not_read(node: SimulatedNode) -> None:
    t = Time()
    clocks = ClockController(node.backend, {"vllm-0": (0,)}, monotonic=t)
    door = Door([0, 0, 0])
    loop = FastLoop(clocks, {"vllm-0": (door, QUEUED, 1.0)}, monotonic=t)
    loop.step()
    t.now += 0.1
    loop.step()  # not due: a period of 1 s, half of it not over
    assert len(door.values) == 2
