"""Rebuild the schema-built samples in this folder (see README.md): python make_samples.py

Each metric is declared with prometheus_client exactly as the cited engine source declares
it (name, HELP, type, label names, buckets), given made-up values, and rendered by
prometheus_client's own writer, which is what the engines serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created
HERE = Path(__file__).parent


def _observe(h: Histogram, labels: dict[str, str], values: Sequence[float]) -> None:
    for v in values:
        h.labels(**labels).observe(v)


def vllm_v0_10_dp2() -> str:
    """vllm/v1/metrics/loggers.py @ 005a810bc40faa25b8870fbc8559c3462581eee3 (vLLM 0.10),
    PrometheusStatLogger with two engine cores (data parallel 2): the generation that
    still exports vllm:gpu_cache_usage_perc next to vllm:kv_cache_usage_perc and has
    vllm:time_per_output_token_seconds, not vllm:inter_token_latency_seconds."""
    r = CollectorRegistry()
    ln = ["model_name", "engine"]
    model = "meta-llama/Llama-3.1-8B-Instruct"
    g = {
        "vllm:num_requests_running": "Number of requests in model execution batches.",
        "vllm:num_requests_waiting": "Number of requests waiting to be processed.",
        "vllm:gpu_cache_usage_perc": "GPU KV-cache usage. 1 means 100 percent usage."
        "DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
        "vllm:kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    }
    c = {
        "vllm:gpu_prefix_cache_queries": "GPU prefix cache queries, in terms of number of "
        "queriedtokens. DEPRECATED: Use vllm:prefix_cache_queries instead.",
        "vllm:gpu_prefix_cache_hits": "GPU prefix cache hits, in terms of number of cached "
        "tokens. DEPRECATED: Use vllm:prefix_cache_hits instead.",
        "vllm:prefix_cache_queries": "Prefix cache queries, in terms of number of queried tokens.",
        "vllm:prefix_cache_hits": "Prefix cache hits, in terms of number of cached tokens.",
        "vllm:num_preemptions": "Cumulative number of preemption from the engine.",
        "vllm:prompt_tokens": "Number of prefill tokens processed.",
        "vllm:generation_tokens": "Number of generation tokens processed.",
    }
    gauges = {n: Gauge(n, d, ln, registry=r) for n, d in g.items()}
    counters = {n: Counter(n, d, ln, registry=r) for n, d in c.items()}
    success = Counter(
        "vllm:request_success",
        "Count of successfully processed requests.",
        [*ln, "finished_reason"],
        registry=r,
    )
    iteration = Histogram(
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        ln,
        buckets=[1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
        registry=r,
    )
    ttft = Histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        ln,
        buckets=[
            *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5),
            *(5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
        ],
        registry=r,
    )
    tpot = Histogram(
        "vllm:time_per_output_token_seconds",
        "Histogram of time per output token in seconds.",
        ln,
        buckets=[
            *(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
            *(5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
        ],
        registry=r,
    )
    e2e = Histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        ln,
        buckets=[
            *(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0),
            *(60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0),
        ],
        registry=r,
    )
    for i, engine in enumerate(("0", "1")):
        lab = {"model_name": model, "engine": engine}
        gauges["vllm:num_requests_running"].labels(**lab).set(7 + i)
        gauges["vllm:num_requests_waiting"].labels(**lab).set(2 * i)
        for name in ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"):
            gauges[name].labels(**lab).set(0.31 + 0.2 * i)
        for name, value in (
            ("vllm:gpu_prefix_cache_queries", 52000),
            ("vllm:gpu_prefix_cache_hits", 13000),
            ("vllm:prefix_cache_queries", 52000),
            ("vllm:prefix_cache_hits", 13000),
            ("vllm:num_preemptions", 3),
            ("vllm:prompt_tokens", 52000),
            ("vllm:generation_tokens", 27453),
        ):
            counters[name].labels(**lab).inc(value + 1000 * i)
        for reason, n in (("stop", 120 + i), ("length", 11), ("abort", 1)):
            success.labels(model, engine, reason).inc(n)
        _observe(iteration, lab, [1, 7, 30, 200, 900, 2048, 5000][: 5 + i])
        _observe(ttft, lab, [0.015, 0.03, 0.05, 0.09, 0.3, 1.2][: 5 + i])
        _observe(tpot, lab, [0.012, 0.02, 0.03, 0.04, 0.08][: 4 + i])
        _observe(e2e, lab, [0.4, 1.2, 3.0, 9.0][: 3 + i])
    return generate_latest(r).decode()


def sglang_tp2() -> str:
    """python/sglang/srt/metrics/collector.py @ 00ae9c1590d2d0bb6c0bfff39e312c34ae3dd538 and
    the scheduler labels of python/sglang/srt/managers/scheduler_metrics_mixin.py @
    01bb3c807f7e62c19a31de7548837505488c2b64: every tensor-parallel rank's scheduler logs the
    same batch with its own tp_rank; the tokenizer's counters and histograms carry
    model_name only."""
    r = CollectorRegistry()
    model = "meta-llama/Llama-3.1-8B-Instruct"
    sched = ["model_name", "engine_type", "tp_rank", "pp_rank"]
    running = Gauge("sglang:num_running_reqs", "The number of running requests.", sched, registry=r)
    queue = Gauge(
        "sglang:num_queue_reqs", "The number of requests in the waiting queue.", sched, registry=r
    )
    usage = Gauge("sglang:token_usage", "The token usage.", sched, registry=r)
    retracted = Counter(
        "sglang:num_retracted_requests_total",
        "Total number of retracted requests.",
        sched,
        registry=r,
    )
    for tp in ("0", "1"):
        lab = {"model_name": model, "engine_type": "unified", "tp_rank": tp, "pp_rank": "0"}
        running.labels(**lab).set(24)
        queue.labels(**lab).set(5)
        usage.labels(**lab).set(0.62)
        retracted.labels(**lab).inc(2)
    tok = ["model_name"]
    lab = {"model_name": model}
    for name, doc, value in (
        ("sglang:prompt_tokens", "Number of prefill tokens processed.", 812890),
        ("sglang:generation_tokens", "Number of generation tokens processed.", 755757),
        ("sglang:cached_tokens", "Number of cached prompt tokens.", 200100),
        ("sglang:num_requests", "Number of requests processed.", 1101),
    ):
        Counter(name, doc, tok, registry=r).labels(**lab).inc(value)
    ttft = Histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        tok,
        buckets=[0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400],
        registry=r,
    )
    itl = Histogram(
        "sglang:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        tok,
        buckets=[
            *(0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040),
            *(0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000),
            8.000,
        ],
        registry=r,
    )
    e2e = Histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        tok,
        buckets=[
            *(0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400),
            *(600, 1200, 1800, 2400),
        ],
        registry=r,
    )
    _observe(ttft, lab, [0.15, 0.3, 0.3, 0.9, 2.5])
    _observe(itl, lab, [0.009, 0.012, 0.012, 0.03])
    _observe(e2e, lab, [3.0, 7.0, 12.0])
    return generate_latest(r).decode()


if __name__ == "__main__":
    (HERE / "vllm_v0_10_dp2.txt").write_text(vllm_v0_10_dp2())
    (HERE / "sglang_tp2.txt").write_text(sglang_tp2())
