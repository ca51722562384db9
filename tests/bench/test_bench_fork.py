"""A fork of the simulated node continues exactly as the original would, and independently."""

from __future__ import annotations

import pytest

from bench.arrivals import Arrivals, FixedArrivals
from bench.fork import NodeImage, fork_node
from sim.engine import RequestRecord
from sim.node import SimulatedNode


def _node(arrivals: Arrivals) -> SimulatedNode:
    return SimulatedNode.create(workload=FixedArrivals(arrivals), clock="virtual", seed=3)


def _energy_mj(node: SimulatedNode) -> int:
    return node.backend.total_energy_mj(0)


def _finished_after(node: SimulatedNode, t: float) -> list[RequestRecord]:
    return [r for r in node.instances[0].completed_requests() if r.finish_s > t]


def _lock(node: SimulatedNode, mhz: int) -> None:
    node.backend.set_locked_sm_clocks_mhz(0, mhz, mhz)


def test_fork_and_original_match_a_fresh_run_exactly(arrivals_90s: Arrivals) -> None:
    original = _node(arrivals_90s)
    t0 = original.now()
    original.advance_to(t0 + 30.0)
    fork = fork_node(original)
    # Same steps on all three: the fork, the original, and a run that never forked.
    fresh = _node(arrivals_90s)
    fresh.advance_to(t0 + 30.0)
    for node in (fork, original, fresh):
        _lock(node, 1200)
        node.advance_to(t0 + 60.0)

    assert _energy_mj(fork) == _energy_mj(original) == _energy_mj(fresh)
    done = _finished_after(fresh, t0 + 30.0)
    assert len(done) > 50  # the comparison covers real work
    assert fork.instances[0].completed_requests() == done
    assert _finished_after(original, t0 + 30.0) == done
    assert fork.instances[0].render_metrics() == fresh.instances[0].render_metrics()


def test_forks_of_one_image_are_each_the_node_as_imaged(arrivals_90s: Arrivals) -> None:
    original = _node(arrivals_90s)
    t0 = original.now()
    original.advance_to(t0 + 30.0)
    image = NodeImage(original)
    original.advance_to(t0 + 45.0)  # the image keeps the instant it was taken at
    first, second = image.fork(), image.fork()
    fresh = _node(arrivals_90s)
    fresh.advance_to(t0 + 30.0)
    _lock(first, 900)  # one fork's clock is its own
    for node in (first, second, fresh):
        node.advance_to(t0 + 60.0)

    assert second.backend.locked_sm_clocks_mhz(0) is None
    assert _energy_mj(second) == _energy_mj(fresh)
    assert second.instances[0].completed_requests() == _finished_after(fresh, t0 + 30.0)
    assert _energy_mj(first) != _energy_mj(second)
    # The image outlives the original's progress: a third fork still starts at 30 s.
    assert image.fork().now() == pytest.approx(t0 + 30.0)


def test_a_fork_does_not_consume_the_originals_arrivals(arrivals_90s: Arrivals) -> None:
    original = _node(arrivals_90s)
    t0 = original.now()
    original.advance_to(t0 + 10.0)
    fork = fork_node(original)
    # Run the fork past the end of the trace: it pulls every remaining arrival.
    fork.advance_to(t0 + 200.0)
    original.advance_to(t0 + 200.0)

    fresh = _node(arrivals_90s)
    fresh.advance_to(t0 + 200.0)
    total = len(arrivals_90s)
    assert len(fresh.instances[0].completed_requests()) == total
    assert len(original.instances[0].completed_requests()) == total
    assert _energy_mj(original) == _energy_mj(fresh)
    # The fork's history starts empty: it holds exactly the requests it finished itself.
    forked = fork.instances[0].completed_requests()
    assert forked == _finished_after(fresh, t0 + 10.0)


def test_a_fork_has_its_own_lock_and_clocks(arrivals_90s: Arrivals) -> None:
    original = _node(arrivals_90s)
    fork = fork_node(original)
    assert fork.lock is not original.lock
    _lock(fork, 900)
    assert fork.backend.locked_sm_clocks_mhz(0) == (900, 900)
    assert original.backend.locked_sm_clocks_mhz(0) is None
    fork.advance(5.0)
    assert original.now() < fork.now()


def test_only_a_virtual_node_can_be_forked() -> None:
    node = SimulatedNode.create(clock="realtime")
    with pytest.raises(ValueError, match="virtual"):
        fork_node(node)
