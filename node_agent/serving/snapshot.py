"""One scrape of a serving engine, and the window between two scrapes.

Gauges are read as they are; counters and histograms are cumulative in the engine
and are differenced here. A counter that goes backwards means the engine restarted:
the delta is then its current value (what accrued since the restart) and the window
is flagged. A metric the engine does not expose, or exposes as NaN, stays unknown.

One endpoint may serve several instances (vLLM's data-parallel engine cores, several
models): an instance then takes only the samples carrying all of its match_labels, and
samples of several instances are never added up unasked (SnapshotError instead).
Within one instance, series split by other labels are parts and are summed (vLLM's
finished_reason), except replica labels, whose series are copies (SGLang's tp_rank).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass

from agft.v1 import agent_pb2 as pb
from node_agent.serving.exposition import Sample
from node_agent.serving.names import EngineLabels, EngineNames

Labels = tuple[tuple[str, str], ...]

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
HISTOGRAMS = ("ttft", "inter_token_latency", "e2e_latency", "iteration_tokens", "request_tpot")


class SnapshotError(ValueError):
    """The scrape cannot be read as one instance (several instances, or none matching)."""


NO_LABELS = EngineLabels(instance=())


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


def _index(samples: list[Sample], wanted: frozenset[str], match: Labels) -> dict[str, list[Sample]]:
    by_name: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.name in wanted and (not match or all(kv in s.labels for kv in match)):
            by_name[s.name].append(s)
    return by_name


@functools.cache
def wanted_names(names: EngineNames) -> frozenset[str]:
    """Every sample name snapshot() reads for an engine, histogram series included."""
    out: set[str] = set()
    for key in GAUGE_SUM + GAUGE_MAX + COUNTERS:
        out.update(getattr(names, key))
    for key in HISTOGRAMS:
        for base in getattr(names, key):
            out.update((base + "_bucket", base + "_sum", base + "_count"))
    return frozenset(out)


def _seen(by_name: dict[str, list[Sample]], keys: tuple[str, ...]) -> dict[str, set[str]]:
    """The values each of keys takes. Buckets are skipped for speed: a histogram's _count
    series carries the same label sets without the dozens of le values."""
    seen: dict[str, set[str]] = {k: set() for k in keys}
    if not keys:
        return seen
    for name, series in by_name.items():
        if name.endswith("_bucket"):
            continue
        for s in series:
            for k, v in s.labels:
                if k in seen:
                    seen[k].add(v)
    return seen


def _describe(seen: dict[str, set[str]]) -> str:
    return ", ".join(f"{k}={sorted(v)}" for k, v in seen.items() if v) or "no such labels"


def _check_one_instance(
    by_name: dict[str, list[Sample]],
    labels: EngineLabels,
    match: Labels,
    samples: list[Sample],
    wanted: frozenset[str],
) -> None:
    if match and not by_name:
        everything = _index(samples, wanted, ())
        if everything:  # the engine's series are there, just none of this instance's
            keys = tuple(dict.fromkeys(labels.instance + tuple(k for k, _ in match)))
            raise SnapshotError(
                f"no series match match_labels {dict(match)}; this endpoint has "
                + _describe(_seen(everything, keys))
            )
    seen = _seen(by_name, labels.instance)
    if any(len(v) > 1 for v in seen.values()):
        example = tuple((k, min(v)) for k, v in seen.items() if len(v) > 1)
        raise SnapshotError(
            f"this endpoint serves several instances ({_describe(seen)}); set the "
            f"instance's match_labels to pick one, e.g. {example}"
        )


def _collapse(series: list[Sample], replica: tuple[str, ...]) -> list[float]:
    """One value per part: series differing only in a replica label count once (max)."""
    if not replica:
        return [s.value for s in series]
    parts: dict[Labels, float] = {}
    for s in series:
        key = tuple(kv for kv in s.labels if kv[0] not in replica)
        parts[key] = max(parts.get(key, -math.inf), s.value)
    return list(parts.values())


def _first_present(by_name: dict[str, list[Sample]], names: tuple[str, ...]) -> list[Sample] | None:
    for name in names:
        if name in by_name:
            return by_name[name]
    return None


def _aggregate(series: list[Sample] | None, how: str, replica: tuple[str, ...]) -> float | None:
    if not series:
        return None
    values = _collapse(series, replica)
    if any(not math.isfinite(v) for v in values):
        return None
    return max(values) if how == "max" else math.fsum(values)


def _histogram(
    by_name: dict[str, list[Sample]], base: str, replica: tuple[str, ...]
) -> CumulativeHistogram | None:
    buckets = by_name.get(base + "_bucket")
    if not buckets:
        return None
    # le -> the bucket's series (its parts; and replicas, collapsed below)
    per_le: dict[float, list[Sample]] = defaultdict(list)
    for s in buckets:
        le = s.label("le")
        if le is None:
            return None
        try:
            per_le[float(le)].append(s)
        except ValueError:
            return None  # a bucket bound that is not a number: not a histogram we can read
    total_sum = _aggregate(by_name.get(base + "_sum"), "sum", replica)
    total_count = _aggregate(by_name.get(base + "_count"), "sum", replica)
    if total_sum is None or total_count is None or math.inf not in per_le:
        return None
    bounds = sorted(b for b in per_le if math.isfinite(b))
    if replica:
        cumulative = [math.fsum(_collapse(per_le[b], replica)) for b in [*bounds, math.inf]]
    else:
        cumulative = [math.fsum(s.value for s in per_le[b]) for b in [*bounds, math.inf]]
    if any(not math.isfinite(v) for v in cumulative):
        return None
    return CumulativeHistogram(tuple(bounds), tuple(cumulative), total_sum, total_count)


def snapshot(
    samples: list[Sample],
    names: EngineNames,
    *,
    match_labels: Labels = (),
    labels: EngineLabels = NO_LABELS,
) -> ServingSnapshot:
    """One instance's reading of a scrape; SnapshotError if it is not one instance's."""
    wanted = wanted_names(names)
    by_name = _index(samples, wanted, match_labels)
    _check_one_instance(by_name, labels, match_labels, samples, wanted)
    replica = labels.replica
    values: dict[str, float | None] = {}
    for key in GAUGE_SUM + COUNTERS:
        values[key] = _aggregate(_first_present(by_name, getattr(names, key)), "sum", replica)
    for key in GAUGE_MAX:
        values[key] = _aggregate(_first_present(by_name, getattr(names, key)), "max", replica)
    histograms: dict[str, CumulativeHistogram | None] = {}
    for key in HISTOGRAMS:
        hist = None
        for base in getattr(names, key):
            hist = _histogram(by_name, base, replica)
            if hist is not None:
                break
        histograms[key] = hist
    return ServingSnapshot(values, histograms)


def _went_back(prev: CumulativeHistogram | None, cur: CumulativeHistogram | None) -> bool:
    if cur is None or prev is None or prev.upper_bounds != cur.upper_bounds:
        return False
    return cur.count < prev.count or any(
        c < p for c, p in zip(cur.cumulative, prev.cumulative, strict=True)
    )


def _histogram_delta(
    prev: CumulativeHistogram | None, cur: CumulativeHistogram | None, restarted: bool
) -> pb.Histogram | None:
    """The per-bucket (non-cumulative) observations between two scrapes."""
    if cur is None or prev is None or prev.upper_bounds != cur.upper_bounds:
        return None
    if restarted:  # all of it accrued since the restart
        diff, total = list(cur.cumulative), cur.sum
    else:
        diff = [c - p for c, p in zip(cur.cumulative, prev.cumulative, strict=True)]
        total = cur.sum - prev.sum
    per_bucket = [round(diff[0])] + [round(b - a) for a, b in itertools.pairwise(diff)]
    if any(n < 0 for n in per_bucket):
        return None  # inconsistent exposition: say unknown rather than guess
    return pb.Histogram(
        upper_bounds=cur.upper_bounds,
        bucket_counts=per_bucket,
        sum=max(total, 0.0),
        count=sum(per_bucket),
    )


_HISTOGRAM_FIELDS = (
    ("ttft", "ttft_s"),
    ("inter_token_latency", "inter_token_latency_s"),
    ("e2e_latency", "e2e_latency_s"),
    ("iteration_tokens", "iteration_tokens"),
    ("request_tpot", "request_tpot_s"),
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
    counters = {
        key: (now, before)
        for key in COUNTERS
        if (now := cur.values.get(key)) is not None and (before := prev.values.get(key)) is not None
    }
    # A restart zeroes every counter of the engine at once, so one going backwards means
    # all of them started again: each delta is then its current value, even a counter
    # that has already climbed past its old value (its plain difference would be wrong).
    restarted = any(now < before for now, before in counters.values()) or any(
        _went_back(prev.histograms.get(key), cur.histograms.get(key))
        for key, _ in _HISTOGRAM_FIELDS
    )
    for key, (now, before) in counters.items():
        setattr(out, key, now if restarted else now - before)
    for key, field in _HISTOGRAM_FIELDS:
        hist = _histogram_delta(prev.histograms.get(key), cur.histograms.get(key), restarted)
        if hist is not None:
            getattr(out, field).CopyFrom(hist)
    out.counters_reset = restarted
    return out
