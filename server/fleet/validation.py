"""Turn agent messages into trusted values, or say precisely what is wrong with them.

A bad window is rejected whole (with a clear error to the agent); the other windows
of the same message, and everything accepted before, are unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agft.v1 import agent_pb2 as pb
from server.control.observation import GpuSample, HistogramDelta, Observation, ServingSample

MAX_WINDOW_S = 3600.0


class InvalidMessageError(ValueError):
    """An agent message the server will not accept; code is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _bad(field: str, value: object, why: str) -> InvalidMessageError:
    return InvalidMessageError("invalid_value", f"{field}={value!r}: {why}")


def _finite_nonneg(field: str, value: float) -> float:
    if not math.isfinite(value):
        raise _bad(field, value, "must be finite")
    if value < 0:
        raise _bad(field, value, "must not be negative")
    return value


def _opt(msg: object, name: str) -> bool:
    has = getattr(msg, "HasField")  # noqa: B009 - protobuf messages are untyped here
    return bool(has(name))


def _opt_float(msg: object, name: str, field: str, upper: float | None = None) -> float | None:
    if not _opt(msg, name):
        return None
    value = _finite_nonneg(field, float(getattr(msg, name)))
    if upper is not None and value > upper:
        raise _bad(field, value, f"must be at most {upper}")
    return value


def histogram(h: pb.Histogram, field: str) -> HistogramDelta | None:
    if not h.bucket_counts and h.count == 0:
        return None
    # Built-ins over whole sequences (this runs four times per window, fleet-wide).
    bounds = tuple(h.upper_bounds)
    counts = tuple(h.bucket_counts)
    if len(counts) != len(bounds) + 1:
        raise _bad(f"{field}.bucket_counts", len(counts), f"need {len(bounds) + 1} buckets")
    # A NaN or an infinity anywhere makes the sum non-finite; sorted(set()) equals the
    # bounds only when they strictly ascend.
    if not math.isfinite(sum(bounds)) or sorted(set(bounds)) != list(bounds):
        raise _bad(f"{field}.upper_bounds", bounds, "must be finite and strictly ascending")
    if sum(counts) != h.count:
        raise _bad(f"{field}.count", h.count, f"buckets add up to {sum(counts)}")
    _finite_nonneg(f"{field}.sum", h.sum)
    return HistogramDelta(bounds, counts, float(h.sum), int(h.count))


def gpu_sample(g: pb.GpuWindow, allowed: Sequence[int]) -> GpuSample:
    if g.index not in allowed:
        raise InvalidMessageError(
            "unknown_gpu", f"gpu index {g.index} is not one of this instance's {list(allowed)}"
        )
    prefix = f"gpus[{g.index}]"
    lock: tuple[int, int] | None = None
    if _opt(g, "locked_min_sm_clock_mhz") and _opt(g, "locked_max_sm_clock_mhz"):
        lock = (int(g.locked_min_sm_clock_mhz), int(g.locked_max_sm_clock_mhz))
    return GpuSample(
        index=int(g.index),
        energy_j=_opt_float(g, "energy_j", f"{prefix}.energy_j"),
        avg_power_w=_opt_float(g, "avg_power_w", f"{prefix}.avg_power_w", upper=10_000.0),
        sm_clock_mhz=int(g.sm_clock_mhz) if _opt(g, "sm_clock_mhz") else None,
        utilization_gpu_pct=_opt_float(
            g, "utilization_gpu_pct", f"{prefix}.utilization_gpu_pct", upper=100.0
        ),
        throttle_reasons=int(g.throttle_reasons) if _opt(g, "throttle_reasons") else None,
        locked_sm_clock_mhz=lock,
    )


def serving_sample(s: pb.ServingWindow) -> ServingSample | None:
    if not s.available:
        return None  # unknown, never idle
    return ServingSample(
        num_requests_running=_opt_float(s, "num_requests_running", "serving.num_requests_running"),
        num_requests_waiting=_opt_float(s, "num_requests_waiting", "serving.num_requests_waiting"),
        # vLLM reports a fraction; allow a hair above 1 for rounding.
        kv_cache_usage=_opt_float(s, "kv_cache_usage", "serving.kv_cache_usage", upper=1.01),
        prompt_tokens=_opt_float(s, "prompt_tokens", "serving.prompt_tokens"),
        generation_tokens=_opt_float(s, "generation_tokens", "serving.generation_tokens"),
        preemptions=_opt_float(s, "preemptions", "serving.preemptions"),
        requests_finished=_opt_float(s, "requests_finished", "serving.requests_finished"),
        ttft_s=histogram(s.ttft_s, "serving.ttft_s"),
        inter_token_latency_s=histogram(s.inter_token_latency_s, "serving.inter_token_latency_s"),
        prefix_cache_queries=_opt_float(s, "prefix_cache_queries", "serving.prefix_cache_queries"),
        prefix_cache_hits=_opt_float(s, "prefix_cache_hits", "serving.prefix_cache_hits"),
        e2e_latency_s=histogram(s.e2e_latency_s, "serving.e2e_latency_s"),
        iteration_tokens=histogram(s.iteration_tokens, "serving.iteration_tokens"),
        counters_reset=s.counters_reset,
    )


def clock_in_force(gpus: Sequence[GpuSample]) -> int | None:
    """The locked clock the whole group ran at, None when unlocked (default clocks)."""
    locks = {g.locked_sm_clock_mhz for g in gpus}
    if len(locks) == 1:
        lock = next(iter(locks))
        if lock is not None:
            return lock[1]
    elif locks:
        # A mixed group runs at the pace of its slowest member.
        return min(lock[1] for lock in locks if lock is not None)
    return None


def observation(w: pb.InstanceWindow, gpu_indices: Sequence[int]) -> Observation:
    start = _finite_nonneg("window_start_s", w.window_start_s)
    end = _finite_nonneg("window_end_s", w.window_end_s)
    if end <= start:
        raise _bad("window_end_s", end, f"must be after window_start_s={start}")
    if end - start > MAX_WINDOW_S:
        raise _bad("window_end_s", end, f"window longer than {MAX_WINDOW_S:.0f} s")
    seen: set[int] = set()
    gpus = []
    for g in w.gpus:
        if g.index in seen:
            raise _bad("gpus.index", g.index, "appears twice")
        seen.add(g.index)
        gpus.append(gpu_sample(g, gpu_indices))
    serving = serving_sample(w.serving) if w.HasField("serving") else None
    return Observation(
        window_start_s=start,
        window_end_s=end,
        gpus=tuple(gpus),
        serving=serving,
        clock_in_force_mhz=clock_in_force(gpus),
    )


def check_hello(hello: pb.Hello) -> None:
    if not hello.node_id.strip():
        raise InvalidMessageError("invalid_hello", "node_id must not be empty")
    indices = [g.index for g in hello.gpus]
    if len(set(indices)) != len(indices):
        raise InvalidMessageError("invalid_hello", f"duplicate GPU indices {indices}")
    for g in hello.gpus:
        if not g.supported_sm_clocks_mhz:
            raise InvalidMessageError("invalid_hello", f"gpu {g.index} lists no supported clocks")
        if g.default_sm_clock_mhz <= 0:
            raise InvalidMessageError("invalid_hello", f"gpu {g.index} has no default clock")
    names = [i.name for i in hello.instances]
    if len(set(names)) != len(names) or any(not n.strip() for n in names):
        raise InvalidMessageError("invalid_hello", f"instance names must be unique: {names}")
    for inst in hello.instances:
        if not inst.gpu_indices:
            raise InvalidMessageError("invalid_hello", f"instance {inst.name} has no GPUs")
        missing = [i for i in inst.gpu_indices if i not in indices]
        if missing:
            raise InvalidMessageError(
                "invalid_hello", f"instance {inst.name} names unknown GPUs {missing}"
            )
