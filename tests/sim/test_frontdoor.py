"""The simulated front door: GET /load and a router's gauges count requests when they
arrive, before the engine schedules them, with a router a hop upstream."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.arrivals import Arrivals, FixedArrivals
from node_agent.serving.front_door import LoadEndpoint, RouterGauge
from sim.engine import EngineConfig
from sim.frontdoor import DEFAULT_ROUTER_HOP_S
from sim.node import SimulatedNode
from sim.workload import ArrivalStream, Chunk


def node_with(
    times: list[float], prompt: int = 4000, output: int = 20, blocks: int | None = None
) -> SimulatedNode:
    n = len(times)
    arrivals = Arrivals(
        np.array(times, dtype=np.float64),
        np.full(n, prompt, dtype=np.int64),
        np.full(n, output, dtype=np.int64),
    )
    return SimulatedNode.create(
        instances=1,
        workload=FixedArrivals(arrivals),
        clock="virtual",
        engine_config=EngineConfig(num_gpu_blocks=blocks),
    )


def test_the_api_server_counts_a_request_from_arrival_to_its_last_token() -> None:
    # Two long prompts 5 ms apart: the second arrives while the first one's prefill runs,
    # so the engine takes it in only when that step ends.
    node = node_with([0.010, 0.015])
    inst, engine, t0 = node.instances[0], node.instances[0].sim_engine, node.now()
    node.advance_to(t0 + 0.012)
    assert inst.api_server_counts().in_flight == 1
    step_end = engine.inflight_until
    assert step_end is not None and step_end > t0 + 0.016
    node.advance_to(t0 + 0.016)
    counts = inst.api_server_counts()
    assert (counts.in_flight, counts.queued) == (2, 2)
    # ... while the engine's own view still holds one request: the burst shows late there.
    assert len(engine.waiting) + len(engine.running) == 1
    node.advance_to(t0 + 5.0)
    counts = inst.api_server_counts()
    assert (counts.in_flight, counts.queued) == (0, 0)
    records = inst.completed_requests()
    assert len(records) == 2
    # Between first token and last token: in flight, no longer queued.
    mid = (records[0].first_token_s + records[0].finish_s) / 2
    fresh = node_with([0.010, 0.015])
    fresh.advance_to(mid)
    counts = fresh.instances[0].api_server_counts()
    assert counts.in_flight >= 1 and counts.queued <= counts.in_flight - 1


def test_a_router_sees_arrivals_a_hop_early_and_first_tokens_a_hop_late() -> None:
    node = node_with([0.050])
    inst, t0 = node.instances[0], node.now()
    hop = DEFAULT_ROUTER_HOP_S
    node.advance_to(t0 + 0.050 - hop / 2)
    assert inst.router_counts().queued == 1
    assert inst.api_server_counts().queued == 0
    node.advance_to(t0 + 5.0)
    first = inst.completed_requests()[0].first_token_s
    late = node_with([0.050])
    late.advance_to(first + hop / 2)
    assert late.instances[0].api_server_counts().queued == 0
    assert late.instances[0].router_counts().queued == 1  # the news is still on its way


def test_a_prompt_too_long_for_the_cache_leaves_the_counts_at_once() -> None:
    node = node_with([0.01], blocks=4)  # 64 tokens of KV cache: vLLM rejects the request
    node.advance_to(node.now() + 0.02)
    counts = node.instances[0].api_server_counts()
    assert (counts.in_flight, counts.queued) == (0, 0)


_TIMES = st.lists(st.floats(0.0, 5.0), max_size=60).map(sorted)


@settings(max_examples=50, deadline=None)
@given(times=_TIMES, chunk=st.integers(1, 7), peeks=st.lists(st.floats(0.0, 6.0), max_size=20))
def test_peeking_ahead_never_changes_what_the_stream_pops(
    times: list[float], chunk: int, peeks: list[float]
) -> None:
    def source() -> ArrivalStream:
        parts = [times[i : i + chunk] for i in range(0, len(times), chunk)]

        def refill() -> Chunk | None:
            if not parts:
                return None
            t = parts.pop(0)
            return list(t), [1] * len(t), [1] * len(t)

        return ArrivalStream(refill)

    plain, peeked = source(), source()
    popped: list[float] = []
    for p in peeks:
        expected = sum(1 for t in times[len(popped) :] if t <= p)
        assert peeked.pending_through(p) == expected
        if peeked.next_t != float("inf"):
            popped.append(peeked.pop()[0])
    popped.extend(t for t, _, _ in peeked)
    assert popped == [t for t, _, _ in plain] == times


@pytest.fixture
def served() -> Iterator[SimulatedNode]:
    node = SimulatedNode.create(instances=1, clock="realtime")
    node.start()
    yield node
    node.stop()


def test_get_load_answers_as_vllm_does(served: SimulatedNode) -> None:
    inst = served.instances[0]
    with urllib.request.urlopen(inst.load_url, timeout=5) as response:
        assert response.headers["Content-Type"] == "application/json"
        assert json.loads(response.read()) == {"server_load": 0}
    assert LoadEndpoint(inst.load_url, 1.0).read() == 0


def test_the_agents_readers_read_the_router_and_say_unknown_on_faults(
    served: SimulatedNode,
) -> None:
    inst = served.instances[0]
    model = {"model": inst.model_name}
    queued = RouterGauge(inst.router_metrics_url, "dynamo_frontend_queued_requests", model, 1.0)
    assert queued.read() == 0
    other = RouterGauge(
        inst.router_metrics_url, "dynamo_frontend_queued_requests", {"model": "x"}, 1.0
    )
    assert other.read() is None  # no sample of that model: unknown, not zero
    inst.set_metrics_available(False)
    assert queued.read() is None
    assert LoadEndpoint(inst.load_url, 1.0).read() is None
    inst.set_metrics_available(True)
    assert queued.read() == 0  # the kept-alive connection recovers
    assert LoadEndpoint("http://127.0.0.1:9/load", 0.2).read() is None  # nothing listens
