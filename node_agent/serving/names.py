"""Metric names of each serving engine and generation, mapped to one meaning each.

The first name listed wins when a server exposes both (vLLM kept some legacy names
alive behind a flag for a while).
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
)

SGLANG = EngineNames(
    running=("sglang:num_running_reqs",),
    waiting=("sglang:num_queue_reqs",),
    kv_cache_usage=("sglang:token_usage",),
    prompt_tokens=("sglang:prompt_tokens_total",),
    generation_tokens=("sglang:generation_tokens_total",),
    preemptions=("sglang:num_retracted_reqs_total",),
    prefix_cache_queries=(),
    prefix_cache_hits=(),
    requests_finished=("sglang:num_requests_total",),
    ttft=("sglang:time_to_first_token_seconds",),
    inter_token_latency=(
        "sglang:inter_token_latency_seconds",
        "sglang:time_per_output_token_seconds",
    ),
    e2e_latency=("sglang:e2e_request_latency_seconds",),
    iteration_tokens=(),
)

BY_ENGINE = {"vllm": VLLM, "sglang": SGLANG}
