"""SimulatedNode: the two clocks, lifecycle, per-instance streams, thread safety."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest

from sim.node import SimulatedNode
from sim.workload import FixedLengths, PoissonWorkload, TraceWorkload


def test_virtual_clock_skips_idle_time_quickly() -> None:
    wl = PoissonWorkload(0.01, FixedLengths(200, 20))
    node = SimulatedNode.create(workload=wl, clock="virtual", seed=2)
    t0 = node.now()
    e0 = node.backend.total_energy_mj(0)
    wall = time.perf_counter()
    node.advance_to(t0 + 86_400.0)
    assert time.perf_counter() - wall < 2.0
    assert node.now() == t0 + 86_400.0
    done = node.instances[0].completed_requests()
    assert len(done) == pytest.approx(864, rel=0.15)
    # A day of mostly idle H100: about 75 W on average.
    e = node.backend.total_energy_mj(0) - e0
    assert e / 1000 / 86_400 == pytest.approx(75.0, rel=0.02)
    with pytest.raises(ValueError):
        node.advance_to(t0)


def test_realtime_follows_the_wall_clock() -> None:
    node = SimulatedNode.create(clock="realtime")
    assert node.now() == pytest.approx(time.time(), abs=0.5)
    with pytest.raises(RuntimeError):
        node.advance_to(node.now() + 1)
    with pytest.raises(RuntimeError):
        _ = node.instances[0].metrics_url  # no server before start()
    b = node.backend
    e0 = b.total_energy_mj(0)
    time.sleep(0.3)
    # Idle at 75 W: 0.3 s is ~22 J (the counter moves in 50 ms ticks).
    assert (b.total_energy_mj(0) - e0) / 1000 == pytest.approx(75 * 0.3, abs=8)


def test_each_instance_gets_its_own_stream_and_gpus() -> None:
    wl = TraceWorkload.shipped(start_offset_s=0.0, loop=False)
    node = SimulatedNode.create(instances=3, workload=wl, clock="virtual", node_name="n1")
    node.advance(300.0)
    insts = node.instances
    assert [i.name for i in insts] == ["vllm-0", "vllm-1", "vllm-2"]
    assert [i.gpu_indices for i in insts] == [[0], [1], [2]]
    counts = [len(i.completed_requests()) for i in insts]
    assert max(counts) - min(counts) <= 0.05 * max(counts)
    arrivals = [{r.arrival_s for r in i.completed_requests()} for i in insts]
    assert not arrivals[0] & arrivals[1]


def test_realtime_http_and_backend_are_thread_safe() -> None:
    wl = TraceWorkload.shipped(rate_scale=3.0)
    node = SimulatedNode.create(instances=2, workload=wl, clock="realtime", seed=1)
    node.start()
    errors: list[BaseException] = []
    energies: list[list[int]] = [[], []]

    def scrape(url: str) -> None:
        try:
            for _ in range(15):
                with urllib.request.urlopen(url, timeout=5) as resp:
                    assert resp.status == 200
                    resp.read()
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    def read(i: int) -> None:
        try:
            for _ in range(300):
                energies[i].append(node.backend.total_energy_mj(i))
                node.backend.power_usage_mw(i)
                node.backend.utilization(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=scrape, args=(i.metrics_url,)) for i in node.instances]
    threads += [threading.Thread(target=read, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        node.stop()
    assert not errors
    for series in energies:
        assert series == sorted(series)
    with pytest.raises(RuntimeError):
        _ = node.instances[0].metrics_url  # stopped


def test_unknown_profiles_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown gpu profile"):
        SimulatedNode.create(gpu="h200")
    with pytest.raises(ValueError, match="unknown model profile"):
        SimulatedNode.create(model="gpt-5")
    with pytest.raises(ValueError):
        SimulatedNode.create(instances=0)
    with pytest.raises(ValueError):
        SimulatedNode.create(clock="sundial")  # type: ignore[arg-type]
