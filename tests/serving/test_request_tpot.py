"""Per-request TPOT (vllm:request_time_per_output_token_seconds): the simulator observes
it as vLLM does, and the agent's window carries it to the server's ServingSample."""

from __future__ import annotations

import math

from node_agent.serving import exposition
from node_agent.serving.names import SGLANG, VLLM
from node_agent.serving.snapshot import snapshot, window
from server.fleet.validation import serving_sample
from sim.node import SimulatedNode
from tests.sim.test_sim_engine import ListWorkload


def test_every_finished_request_reaches_the_server_a_one_token_answer_as_zero() -> None:
    # One one-token answer and two longer ones.
    rows = [(0.5, 200, 1), (1.0, 500, 40), (1.2, 300, 12)]
    node = SimulatedNode.create(workload=ListWorkload(rows), clock="virtual", seed=0)
    inst = node.instances[0]
    before = snapshot(exposition.parse(inst.render_metrics()), VLLM)
    node.advance(30.0)
    after = snapshot(exposition.parse(inst.render_metrics()), VLLM)
    sample = serving_sample(window(before, after))
    assert sample is not None and sample.request_tpot_s is not None
    hist = sample.request_tpot_s
    done = inst.completed_requests()
    assert len(done) == 3 and hist.count == 3
    # vLLM observes (last token - first token) / (output tokens - 1), and 0 for one token.
    tpots = sorted(r.tpot_s if r.output_tokens > 1 else 0.0 for r in done)
    assert tpots[0] == 0.0
    assert math.isclose(hist.sum, sum(tpots), rel_tol=1e-9)
    for value in tpots:
        bucket = next(i for i, b in enumerate(hist.upper_bounds) if value <= b)
        assert hist.bucket_counts[bucket] >= 1
    # Its bounds hold the TPOT objective's 50 ms exactly, so misses of it count as served.
    assert 0.05 in hist.upper_bounds


def test_an_engine_without_it_leaves_it_unknown() -> None:
    # SGLang exports no per-request TPOT: unknown, never an empty (all-met) histogram.
    text = "\n".join(
        [
            'sglang:num_running_reqs{model_name="m"} 2',
            'sglang:generation_tokens_total{model_name="m"} 10',
        ]
    )
    first = snapshot(exposition.parse(text), SGLANG)
    second = snapshot(exposition.parse(text.replace(" 10", " 30")), SGLANG)
    sample = serving_sample(window(first, second))
    assert sample is not None and sample.request_tpot_s is None
    assert sample.generation_tokens == 20.0
