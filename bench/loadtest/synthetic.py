"""Telemetry of realistic content and size, without the physics.

One node: G GPUs of the H100 SXM profile (its real supported-clock list), one serving
instance per GPU, each window carrying what a real agent sends: energy, clocks, throttle
reasons, the serving gauges and counters, and the four histograms with vLLM's buckets.
The values wander plausibly (a busy GPU draws 300-700 W, a few requests a second); what
the server's controllers make of them does not matter here, only that they decide.
"""

from __future__ import annotations

import random

from agft.v1 import agent_pb2 as pb
from sim.metrics import ITERATION_TOKEN_BUCKETS, ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS
from sim.profiles import gpu_profile

_PROFILE = gpu_profile("h100-sxm")
SUPPORTED_MHZ = sorted(_PROFILE.supported_sm_clocks_mhz(), reverse=True)
DEFAULT_MHZ = int(_PROFILE.sm_clock_max_mhz)


def instance_name(gpu: int) -> str:
    return f"vllm-{gpu}"


def hello(node_id: str, gpus: int) -> pb.Hello:
    return pb.Hello(
        node_id=node_id,
        agent_version="loadtest",
        hostname=node_id,
        gpus=[
            pb.Gpu(
                index=i,
                uuid=f"GPU-{node_id}-{i}",
                name="NVIDIA H100 80GB HBM3 (load test)",
                supported_sm_clocks_mhz=SUPPORTED_MHZ,
                supported_memory_clocks_mhz=[2619],
                default_sm_clock_mhz=DEFAULT_MHZ,
                default_memory_clock_mhz=2619,
                power_limit_mw=700_000,
            )
            for i in range(gpus)
        ],
        instances=[
            pb.ServingInstance(
                name=instance_name(i),
                engine=pb.ENGINE_VLLM,
                metrics_url=f"http://{node_id}:{8000 + i}/metrics",
                model_name="meta-llama/Llama-3.1-8B-Instruct",
                gpu_indices=[i],
                labels={"pool": "loadtest"},
            )
            for i in range(gpus)
        ],
    )


def _histogram(bounds: tuple[float, ...], rng: random.Random, n: int, centre: int) -> pb.Histogram:
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for _ in range(n):
        k = max(0, min(len(bounds) - 1, centre + rng.randint(-1, 2)))
        counts[k] += 1
        total += bounds[k] * 0.8
    return pb.Histogram(upper_bounds=bounds, bucket_counts=counts, sum=total, count=n)


def window(
    gpu: int, start_s: float, end_s: float, rng: random.Random, locked: tuple[int, int] | None
) -> pb.InstanceWindow:
    seconds = end_s - start_s
    power = rng.uniform(300.0, 700.0)
    requests = rng.randint(0, 8)
    tokens = requests * rng.randint(100, 400)
    gpu_window = pb.GpuWindow(
        index=gpu,
        energy_j=power * seconds,
        avg_power_w=power,
        power_w=power * rng.uniform(0.9, 1.1),
        sm_clock_mhz=locked[1] if locked else DEFAULT_MHZ,
        memory_clock_mhz=2619,
        utilization_gpu_pct=rng.uniform(40, 100),
        utilization_memory_pct=rng.uniform(20, 80),
        throttle_reasons=0,
    )
    if locked is not None:
        gpu_window.locked_min_sm_clock_mhz, gpu_window.locked_max_sm_clock_mhz = locked
    return pb.InstanceWindow(
        instance=instance_name(gpu),
        window_start_s=start_s,
        window_end_s=end_s,
        gpus=[gpu_window],
        serving=pb.ServingWindow(
            available=True,
            num_requests_running=float(rng.randint(0, 32)),
            num_requests_waiting=0.0,
            kv_cache_usage=rng.uniform(0.05, 0.6),
            prompt_tokens=float(requests * rng.randint(200, 2000)),
            generation_tokens=float(tokens),
            preemptions=0.0,
            prefix_cache_queries=0.0,
            prefix_cache_hits=0.0,
            requests_finished=float(requests),
            ttft_s=_histogram(TTFT_BUCKETS, rng, requests, 6),
            inter_token_latency_s=_histogram(ITL_BUCKETS, rng, tokens // 50, 0),
            e2e_latency_s=_histogram(REQUEST_LATENCY_BUCKETS, rng, requests, 6),
            iteration_tokens=_histogram(ITERATION_TOKEN_BUCKETS, rng, 40, 3),
            request_tpot_s=_histogram(ITL_BUCKETS, rng, requests, 1),
        ),
    )


def at_clock(w: pb.InstanceWindow, mhz: int) -> None:
    """Scale a template window's power and token gaps to the clock it ran at: dynamic
    power with the square of the clock (above a 40 % floor), gaps 30 % compute-bound."""
    r = mhz / DEFAULT_MHZ
    g = w.gpus[0]
    base = w.serving.generation_tokens + 1.0  # the template's own seed of variety
    power = (300.0 + (base % 400.0)) * (0.4 + 0.6 * r * r)
    seconds = w.window_end_s - w.window_start_s
    g.avg_power_w, g.energy_j, g.power_w = power, power * seconds, power
    itl = w.serving.inter_token_latency_s
    if itl.count:
        itl.sum = 0.02 * itl.count * (0.7 + 0.3 / r)
