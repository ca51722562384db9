"""The serving engine: vLLM V1-style continuous batching, chunked prefill, KV blocks and
preemption, and per-request timing."""

from __future__ import annotations

import math

import pytest

from sim.calibration import decode_step_ms
from sim.engine import EngineConfig
from sim.node import SimulatedNode
from sim.workload import ArrivalStream, Chunk, FixedLengths, PoissonWorkload, Workload


class ListWorkload(Workload):
    """Exactly these (time, prompt, output) arrivals on every stream."""

    def __init__(self, rows: list[tuple[float, int, int]]) -> None:
        self.rows = rows

    def streams(self, n: int, seed: int) -> list[ArrivalStream]:
        def make() -> ArrivalStream:
            pending: list[Chunk] = [
                ([r[0] for r in self.rows], [r[1] for r in self.rows], [r[2] for r in self.rows])
            ]
            return ArrivalStream(lambda: pending.pop() if pending else None)

        return [make() for _ in range(n)]


def _node(wl: Workload, gpu: str = "h100-sxm", model: str = "llama-3.1-8b",
          **cfg: int | float) -> SimulatedNode:  # fmt: skip
    return SimulatedNode.create(
        gpu=gpu, model=model, workload=wl, clock="virtual", seed=0,
        engine_config=EngineConfig(**cfg),  # type: ignore[arg-type]
    )  # fmt: skip


def _drain(node: SimulatedNode, limit_s: float = 600.0) -> None:
    eng = node.instances[0].sim_engine
    start = node.now()
    while not (eng.idle and eng.next_arrival_s == math.inf):
        node.advance(5.0)
        assert node.now() - start < limit_s, "engine did not drain"


def test_single_request_timeline() -> None:
    node = _node(ListWorkload([(1.0, 500, 50)]))
    _drain(node)
    (r,) = node.instances[0].completed_requests()
    t0 = node.clock_start
    assert r.arrival_s == t0 + 1.0
    assert r.first_scheduled_s == r.arrival_s  # idle engine: scheduled on arrival
    # One prefill step (~2.5 ms overhead + ~10 ms) then 49 decode steps of ~8 ms.
    assert 0.005 < r.ttft_s < 0.05
    assert 0.005 < r.tpot_s < 0.02
    # Alone in the batch, every decode step is the physics' batch-1 step at ~525 context.
    sm = node.instances[0].sim_engine.physics
    assert r.tpot_s * 1000 == pytest.approx(decode_step_ms(sm, 1, 525), rel=0.01)
    assert (r.prompt_tokens, r.output_tokens, r.preemptions) == (500, 50, 0)


def test_long_prompt_is_chunked_over_several_steps() -> None:
    node = _node(ListWorkload([(0.0, 20_000, 2)]), max_num_batched_tokens=4096)
    _drain(node)
    eng = node.instances[0].sim_engine
    m = eng.metrics
    # ceil(20000 / 4096) = 5 prefill steps, then one decode step.
    assert eng.steps == 6
    assert m.iteration_tokens.total == 20_000 + 1
    counts = dict(
        zip((*m.iteration_tokens.buckets, math.inf), m.iteration_tokens.counts, strict=True)
    )
    assert counts[4096.0] == 5  # four full 4096-token chunks and the 3616-token rest


def test_batch_limits_are_respected() -> None:
    wl = PoissonWorkload(50.0, FixedLengths(700, 300), duration_s=20.0)
    node = _node(wl, max_num_seqs=24, max_num_batched_tokens=1024)
    eng = node.instances[0].sim_engine
    peak = 0
    for _ in range(200):
        node.advance(0.1)
        peak = max(peak, len(eng.running))
        assert len(eng.running) <= 24
    assert peak == 24
    it = eng.metrics.iteration_tokens
    over = sum(c for b, c in zip((*it.buckets, math.inf), it.counts, strict=True) if b > 1024)
    assert over == 0


def test_preemption_when_kv_cache_is_full_and_everything_still_finishes() -> None:
    wl = PoissonWorkload(20.0, FixedLengths(300, 400), duration_s=10.0)
    node = _node(wl, num_gpu_blocks=400)  # 6400 tokens: ~9 requests' worth at full length
    eng = node.instances[0].sim_engine
    for _ in range(100):
        node.advance(0.1)
        assert 0 <= eng.kv.free <= eng.kv.num_blocks
        assert eng.metrics.kv_cache_usage <= 1.0
    _drain(node)
    m = eng.metrics
    done = node.instances[0].completed_requests()
    assert m.num_preemptions > 0
    assert any(r.preemptions for r in done)
    assert len(done) == m.success_stop == m.ttft.count
    assert m.generation_tokens == sum(r.output_tokens for r in done) == 400 * len(done)
    # Recomputed prefills are not counted again as prompt tokens (vLLM counts them once).
    assert m.prompt_tokens == 300 * len(done)
    assert eng.kv.free == eng.kv.num_blocks
    # A preempted request's first token after resuming has one (long) inter-token latency.
    assert m.itl.count == m.generation_tokens - len(done)


def test_arrival_during_a_step_waits_for_the_next() -> None:
    # A 16k-token prefill keeps the GPU busy ~0.4 s; a request arriving meanwhile waits.
    node = _node(ListWorkload([(0.0, 16_000, 1), (0.05, 100, 1)]), max_num_batched_tokens=16384)
    _drain(node)
    first, second = sorted(node.instances[0].completed_requests(), key=lambda r: r.arrival_s)
    assert second.first_scheduled_s == first.finish_s
    assert second.ttft_s > first.ttft_s - 0.05


def test_prompts_over_max_model_len_are_truncated() -> None:
    node = _node(ListWorkload([(0.0, 9000, 50)]), model="llama-2-70b")
    _drain(node)
    (r,) = node.instances[0].completed_requests()
    assert r.prompt_tokens == 4095
    assert r.output_tokens == 1


def test_request_that_can_never_fit_is_aborted() -> None:
    node = _node(ListWorkload([(0.0, 5000, 10), (1.0, 100, 10)]), num_gpu_blocks=100)
    _drain(node)
    eng = node.instances[0].sim_engine
    assert eng.metrics.success_abort == 1
    assert [r.prompt_tokens for r in eng.completed] == [100]


def test_same_seed_same_run() -> None:
    def run(seed: int) -> tuple[str, int]:
        wl = PoissonWorkload(8.0, FixedLengths(400, 100))
        node = SimulatedNode.create(workload=wl, clock="virtual", seed=seed)
        node.advance(30.0)
        return node.instances[0].render_metrics(), node.backend.total_energy_mj(0)

    assert run(1) == run(1)
    assert run(1) != run(2)
