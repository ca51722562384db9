"""Metric names of each serving engine and generation, mapped to one meaning each.

The first name listed wins when a server exposes both (vLLM 0.9-0.10 exported the old
and the new KV-cache and prefix-cache names side by side). Checked against the engines'
own source; tests/data/serving/ holds samples of each (README there says which source).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineNames:
    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_cache_usage: tuple[str, ...]
    prompt_tokens: tuple[str, ...]
    generation_tokens: tuple[str, ...]
    preemptions: tuple[str, ...]
    prefix_cache_queries: tuple[str, ...]
    prefix_cache_hits: tuple[str, ...]
    requests_finished: tuple[str, ...]
    ttft: tuple[str, ...]
    inter_token_latency: tuple[str, ...]
    e2e_latency: tuple[str, ...]
    iteration_tokens: tuple[str, ...]
    request_tpot: tuple[str, ...]


# vllm/v1/metrics/loggers.py (PrometheusStatLogger), labels model_name and engine (the
# engine-core index: data parallel ranks are separate series). 0.9-0.10 export both
# vllm:gpu_cache_usage_perc and vllm:kv_cache_usage_perc, both gpu_prefix_cache_* and
# prefix_cache_* (commit 005a810b); later versions drop the gpu_ ones and rename
# vllm:time_per_output_token_seconds to vllm:inter_token_latency_seconds.
# vllm:request_success_total has one series per finished_reason (stop, length, abort),
# summed here into one count of finished requests.
# vllm:request_time_per_output_token_seconds (the v1 engine's, beside the inter-token
# histogram; absent elsewhere, so unknown) observes each finished request's (last token
# - first token) / (output tokens - 1), 0 for a one-token answer (vllm/v1/metrics/
# stats.py, update_from_finished_request): the per-request TPOT an objective is about.
VLLM = EngineNames(
    running=("vllm:num_requests_running",),
    waiting=("vllm:num_requests_waiting",),
    kv_cache_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    prompt_tokens=("vllm:prompt_tokens_total",),
    generation_tokens=("vllm:generation_tokens_total",),
    preemptions=("vllm:num_preemptions_total",),
    prefix_cache_queries=("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    prefix_cache_hits=("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    requests_finished=("vllm:request_success_total",),
    ttft=("vllm:time_to_first_token_seconds",),
    inter_token_latency=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    e2e_latency=("vllm:e2e_request_latency_seconds",),
    iteration_tokens=("vllm:iteration_tokens_total",),
    request_tpot=("vllm:request_time_per_output_token_seconds",),
)

# python/sglang/srt/metrics/collector.py (commit 00ae9c15): the scheduler's gauges and
# counters (SchedulerMetricsCollector) and the tokenizer's counters and histograms
# (TokenizerMetricsCollector). Retractions (SGLang's preemptions) are the counter
# sglang:num_retracted_requests_total; sglang:num_retracted_reqs is a gauge of the last
# interval and there never was a sglang:num_retracted_reqs_total. SGLang has no prefix
# cache query counter: sglang:cached_tokens_total counts the cached prompt tokens of
# finished requests, out of sglang:prompt_tokens_total, which is what vLLM's hits out of
# queries mean (tokens). Older SGLang (docs/references/production_metrics.md) named the
# inter-token histogram sglang:time_per_output_token_seconds. No iteration histogram.
SGLANG = EngineNames(
    running=("sglang:num_running_reqs",),
    waiting=("sglang:num_queue_reqs",),
    kv_cache_usage=("sglang:token_usage",),
    prompt_tokens=("sglang:prompt_tokens_total",),
    generation_tokens=("sglang:generation_tokens_total",),
    preemptions=("sglang:num_retracted_requests_total",),
    prefix_cache_queries=("sglang:prompt_tokens_total",),
    prefix_cache_hits=("sglang:cached_tokens_total",),
    requests_finished=("sglang:num_requests_total",),
    ttft=("sglang:time_to_first_token_seconds",),
    inter_token_latency=(
        "sglang:inter_token_latency_seconds",
        "sglang:time_per_output_token_seconds",
    ),
    e2e_latency=("sglang:e2e_request_latency_seconds",),
    iteration_tokens=(),
    request_tpot=(),
)

BY_ENGINE = {"vllm": VLLM, "sglang": SGLANG}


@dataclass(frozen=True, slots=True)
class EngineLabels:
    """How an engine's label sets relate to serving instances."""

    # Labels that tell instances apart on one endpoint: samples differing in one of them
    # are different engines or models, never to be added up unasked.
    instance: tuple[str, ...]
    # Labels whose values are copies of one number, not parts of it: taken once (the
    # largest), not summed. Any other label is a part of the instance and is summed
    # (vLLM's finished_reason, SGLang's dp_rank under data-parallel attention).
    replica: tuple[str, ...] = ()


LABELS_BY_ENGINE = {
    "vllm": EngineLabels(instance=("engine", "model_name")),
    # python/sglang/srt/managers/scheduler_metrics_mixin.py (init_metrics): every
    # tensor-parallel rank runs a scheduler over the same batch and exports it with its
    # own tp_rank (and pp_rank), so a TP-2 server shows num_running_reqs twice. The
    # tokenizer's series carry model_name only.
    "sglang": EngineLabels(instance=("model_name",), replica=("tp_rank", "pp_rank")),
}
