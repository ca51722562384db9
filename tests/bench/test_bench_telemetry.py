"""The benchmark's serving windows are the agent's, message for message."""

from __future__ import annotations

import httpx

from bench.arrivals import Arrivals, FixedArrivals
from bench.telemetry import InstanceTelemetry
from node_agent.clocks import ClockController
from node_agent.serving.scraper import ServingScraper
from sim.node import SimulatedNode


async def test_windows_equal_the_agents_http_scraper(arrivals_90s: Arrivals) -> None:
    node = SimulatedNode.create(workload=FixedArrivals(arrivals_90s), clock="virtual", seed=0)
    inst = node.instances[0]
    clocks = ClockController(node.backend, {inst.name: tuple(inst.gpu_indices)})
    telemetry = InstanceTelemetry(node, inst, clocks)
    node.start()  # the simulated /metrics endpoint, as the agent scrapes it
    try:
        async with httpx.AsyncClient() as client:
            scraper = ServingScraper(inst.metrics_url, "vllm", client)
            await scraper.next_window()  # baseline, like the agent before its loop
            telemetry.prime()
            t0 = node.now()
            busy = 0
            for k in range(1, 31):
                node.advance_to(t0 + k)
                ours = telemetry.close_window()
                theirs = await scraper.next_window()
                assert ours.serving == theirs, f"window {k}"
                busy += ours.serving.generation_tokens > 0
    finally:
        node.stop()
    assert busy > 20  # the windows compared carried real traffic
