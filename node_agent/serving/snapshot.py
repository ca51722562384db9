"""One scrape of a serving engine, and the window between two scrapes.

Gauges are read as they are; counters and histograms are cumulative in the engine
and are differenced here. A counter that goes backwards means the engine restarted:
the delta is then its current value (what accrued since the restart) and the window
is flagged. A metric the engine does not expose, or exposes as NaN, stays unknown.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass

from agft.v1 import agent_pb2 as pb
from node_agent.serving.exposition import Sample
from node_agent.serving.names import EngineNames

GAUGE_SUM = ("running", "waiting")
GAUGE_MAX = ("kv_cache_usage",)
COUNTERS = (
    "prompt_tokens",
    "generation_tokens",
    "preemptions",
    "prefix_cache_queries",
    "prefix_cache_hits",
    "requests_finished",
)
HISTOGRAMS = ("ttft", "inter_token_latency", "e2e_latency", "iteration_tokens")


@dataclass(frozen=True, slots=True)
class CumulativeHistogram:
    upper_bounds: tuple[float, ...]  # finite bounds, ascending
    cumulative: tuple[float, ...]  # one per finite bound, then +Inf
    sum: float
    count: float


@dataclass(frozen=True, slots=True)
class ServingSnapshot:
    values: dict[str, float | None]
    histograms: dict[str, CumulativeHistogram | None]


def _index(samples: list[Sample]) -> dict[str, list[Sample]]:
    by_name: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_name[s.name].append(s)
    return by_name


def _first_present(by_name: dict[str, list[Sample]], names: tuple[str, ...]) -> list[Sample] | None:
    for name in names:
        if name in by_name:
            return by_name[name]
    return None


def _aggregate(series: list[Sample] | None, how: str) -> float | None:
    if not series:
        return None
    values = [s.value for s in series]
    if any(not math.isfinite(v) for v in values):
        return None
    return max(values) if how == "max" else math.fsum(values)


def _histogram(by_name: dict[str, list[Sample]], base: str) -> CumulativeHistogram | None:
    buckets = by_name.get(base + "_bucket")
    if not buckets:
        return None
    per_le: dict[float, float] = defaultdict(float)
    for s in buckets:
        le = s.label("le")
        if le is None:
            return None
        per_le[float(le)] += s.value
    total_sum = _aggregate(by_name.get(base + "_sum"), "sum")
    total_count = _aggregate(by_name.get(base + "_count"), "sum")
    if total_sum is None or total_count is None or math.inf not in per_le:
        return None
    bounds = sorted(b for b in per_le if math.isfinite(b))
    cumulative = [per_le[b] for b in bounds] + [per_le[math.inf]]
    if any(not math.isfinite(v) for v in cumulative):
        return None
    return CumulativeHistogram(tuple(bounds), tuple(cumulative), total_sum, total_count)


def snapshot(samples: list[Sample], names: EngineNames) -> ServingSnapshot:
    by_name = _index(samples)
    values: dict[str, float | None] = {}
    for key in GAUGE_SUM + COUNTERS:
        values[key] = _aggregate(_first_present(by_name, getattr(names, key)), "sum")
    for key in GAUGE_MAX:
        values[key] = _aggregate(_first_present(by_name, getattr(names, key)), "max")
    histograms: dict[str, CumulativeHistogram | None] = {}
    for key in HISTOGRAMS:
        hist = None
        for base in getattr(names, key):
            hist = _histogram(by_name, base)
            if hist is not None:
                break
        histograms[key] = hist
    return ServingSnapshot(values, histograms)


def _histogram_delta(
    prev: CumulativeHistogram | None, cur: CumulativeHistogram | None
) -> tuple[pb.Histogram | None, bool]:
    """The per-bucket (non-cumulative) observations between two scrapes, and a reset flag."""
    if cur is None or prev is None or prev.upper_bounds != cur.upper_bounds:
        return None, False
    diff = [c - p for c, p in zip(cur.cumulative, prev.cumulative, strict=True)]
    count = cur.count - prev.count
    total = cur.sum - prev.sum
    reset = count < 0 or any(d < 0 for d in diff)
    if reset:
        diff, count, total = list(cur.cumulative), cur.count, cur.sum
    per_bucket = [round(diff[0])] + [round(b - a) for a, b in itertools.pairwise(diff)]
    if any(n < 0 for n in per_bucket):
        return None, reset  # inconsistent exposition: say unknown rather than guess
    return (
        pb.Histogram(
            upper_bounds=cur.upper_bounds,
            bucket_counts=per_bucket,
            sum=max(total, 0.0),
            count=sum(per_bucket),
        ),
        reset,
    )


def window(prev: ServingSnapshot | None, cur: ServingSnapshot) -> pb.ServingWindow:
    """The serving window between two snapshots (gauges from cur, deltas cur - prev)."""
    out = pb.ServingWindow(available=True)
    for key, field in (
        ("running", "num_requests_running"),
        ("waiting", "num_requests_waiting"),
        ("kv_cache_usage", "kv_cache_usage"),
    ):
        value = cur.values.get(key)
        if value is not None:
            setattr(out, field, value)
    if prev is None:
        return out  # deltas need two scrapes: unknown on the first
    reset = False
    for key in COUNTERS:
        now, before = cur.values.get(key), prev.values.get(key)
        if now is None or before is None:
            continue
        delta = now - before
        if delta < 0:
            reset, delta = True, now
        setattr(out, key, delta)
    for key, field in (
        ("ttft", "ttft_s"),
        ("inter_token_latency", "inter_token_latency_s"),
        ("e2e_latency", "e2e_latency_s"),
        ("iteration_tokens", "iteration_tokens"),
    ):
        hist, hist_reset = _histogram_delta(prev.histograms.get(key), cur.histograms.get(key))
        reset = reset or hist_reset
        if hist is not None:
            getattr(out, field).CopyFrom(hist)
    out.counters_reset = reset
    return out
