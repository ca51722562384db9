"""vLLM V1 Prometheus metrics of one simulated engine, rendered as exposition text.

Names, HELP strings, label order (alphabetical: engine, finished_reason, le, model_name) and
histogram buckets follow vLLM V1's PrometheusStatLogger (v0.11-0.12 era) as transcribed in
shared/data/vllm/metrics_sample.txt section B.  ``legacy=True`` renders the older generation's
names for the two metrics that were renamed (vllm:gpu_cache_usage_perc,
vllm:time_per_output_token_seconds) instead of the new ones, so scrapers can be tested against
both generations.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = ["EngineMetrics", "Histogram", "format_value", "request_token_buckets"]

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
ITERATION_TOKEN_BUCKETS = (
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
)  # fmt: skip


def request_token_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to max_model_len (build_1_2_5_buckets)."""
    out: list[float] = []
    mantissas = (1, 2, 5)
    exponent = 0
    while True:
        for m in mantissas:
            v = m * 10**exponent
            if v > max_model_len:
                return tuple(out)
            out.append(float(v))
        exponent += 1


def format_value(v: float) -> str:
    """Prometheus/Go float formatting as prometheus_client writes it (12.0, 0.5, +Inf)."""
    if v == float("inf"):
        return "+Inf"
    if v == float("-inf"):
        return "-Inf"
    if v != v:
        return "NaN"
    return repr(float(v))


@lru_cache(maxsize=256)
def _bucket_prefixes(
    name: str, engine: str, model_name: str, buckets: tuple[float, ...]
) -> tuple[str, ...]:
    """Each bucket line up to its count: fixed for a histogram, and rendered every scrape
    (the benchmark scrapes every simulated window, so this was a tenth of a run's time)."""
    return tuple(
        f'{name}_bucket{{engine="{engine}",le="{format_value(bound)}",model_name="{model_name}"}} '
        for bound in (*buckets, float("inf"))
    )


@dataclass(slots=True)
class Histogram:
    """Cumulative-on-render histogram; ``observe`` takes a weight so one engine step can record
    the same inter-token latency for every sequence that decoded in it."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.buckets, value)] += n
        self.total += value * n
        self.count += n

    def cumulative(self) -> list[int]:
        out: list[int] = []
        running = 0
        for c in self.counts:
            running += c
            out.append(running)
        return out


@dataclass(slots=True)
class EngineMetrics:
    """Counters, gauges and histograms of one engine (vLLM's ``engine`` label)."""

    max_model_len: int
    num_requests_running: int = 0
    num_requests_waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    success_stop: int = 0
    success_length: int = 0
    success_abort: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    tpot_request: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    inference_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    prefill_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    decode_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    iteration_tokens: Histogram = field(default_factory=lambda: Histogram(ITERATION_TOKEN_BUCKETS))
    request_prompt_tokens: Histogram = field(init=False)
    request_generation_tokens: Histogram = field(init=False)

    def __post_init__(self) -> None:
        b = request_token_buckets(self.max_model_len)
        self.request_prompt_tokens = Histogram(b)
        self.request_generation_tokens = Histogram(b)

    @property
    def requests_finished(self) -> int:
        return self.success_stop + self.success_length + self.success_abort

    def render(self, model_name: str, engine: str = "0", legacy: bool = False) -> str:
        """The /metrics body (text format 0.0.4)."""
        lines: list[str] = []
        base = f'engine="{engine}",model_name="{model_name}"'

        def scalar(name: str, kind: str, help_: str, value: float) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{{{base}}} {format_value(value)}")

        def hist(name: str, help_: str, h: Histogram) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} histogram")
            lines.append(f"{name}_sum{{{base}}} {format_value(h.total)}")
            running = 0
            prefixes = _bucket_prefixes(name, engine, model_name, h.buckets)
            for prefix, c in zip(prefixes, h.counts, strict=True):
                running += c
                lines.append(f"{prefix}{running}.0")  # a count as Prometheus writes it
            lines.append(f"{name}_count{{{base}}} {format_value(h.count)}")

        scalar(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            self.num_requests_running,
        )
        scalar(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            self.num_requests_waiting,
        )
        if legacy:
            scalar(
                "vllm:gpu_cache_usage_perc",
                "gauge",
                "GPU KV-cache usage. 1 means 100 percent usage.",
                self.kv_cache_usage,
            )
        else:
            scalar(
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                self.kv_cache_usage,
            )
        scalar(
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            self.prefix_cache_queries,
        )
        scalar(
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prefix cache hits, in terms of number of cached tokens.",
            self.prefix_cache_hits,
        )
        scalar(
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemption from the engine.",
            self.num_preemptions,
        )
        scalar(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            self.prompt_tokens,
        )
        scalar(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            self.generation_tokens,
        )
        lines.append("# HELP vllm:request_success_total Count of successfully processed requests.")
        lines.append("# TYPE vllm:request_success_total counter")
        for reason, n in (
            ("stop", self.success_stop),
            ("length", self.success_length),
            ("abort", self.success_abort),
        ):
            lines.append(
                f'vllm:request_success_total{{engine="{engine}",finished_reason="{reason}",'
                f'model_name="{model_name}"}} {format_value(n)}'
            )
        hist(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            self.request_prompt_tokens,
        )
        hist(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            self.request_generation_tokens,
        )
        hist(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            self.iteration_tokens,
        )
        hist(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            self.ttft,
        )
        if legacy:
            hist(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds.",
                self.itl,
            )
        else:
            hist(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                self.itl,
            )
        hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            self.tpot_request,
        )
        hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            self.e2e,
        )
        hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            self.queue_time,
        )
        hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            self.inference_time,
        )
        hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            self.prefill_time,
        )
        hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            self.decode_time,
        )
        lines.append("")
        return "\n".join(lines)
