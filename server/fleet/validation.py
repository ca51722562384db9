"""Turn agent messages into trusted values, or say precisely what is wrong with them.

A bad window is rejected whole (with a clear error to the agent); the other windows
of the same message, and everything accepted before, are unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from google.protobuf.message import Message

from agft.labels import MAX_LABELS, label_problem
from agft.v1 import agent_pb2 as pb
from server.control.observation import GpuSample, HistogramDelta, Observation, ServingSample
from server.store.rows import AckRow, AppliedClock

# Bounds on everything an agent sends. They are generous (a fleet's real values sit far
# inside them) but finite, so no value can overflow to infinity downstream, exceed a
# database column, or turn a timestamp into an impossible date.
MAX_WINDOW_S = 3600.0
MIN_WINDOW_S = 0.001
# Not negative and before 2100 (a simulator's virtual time starts at 0; 1e12 s once made
# "year 33658 is out of range" and cost the good windows sent beside it).
LATEST_TIME_S = 4_102_444_800.0  # 2100-01-01
MAX_GPU_POWER_W = 10_000.0
MAX_CLOCK_MHZ = 10_000
MAX_COUNT_PER_WINDOW = 1e9  # tokens, requests, preemptions of one window
MAX_REQUESTS = 1e6  # running / waiting gauges
MAX_HISTOGRAM_BUCKETS = 256
MAX_HISTOGRAM_SUM = 1e12
MAX_GPUS_PER_NODE = 256
MAX_INSTANCES_PER_NODE = 256
MAX_GPU_INDEX = 1023
MAX_CLOCK_LIST = 1024
MAX_POWER_LIMIT_MW = 100_000_000  # 100 kW: inside the int32 column with room to spare
MAX_NAME = 255
MAX_URL = 1024
MAX_VERSION = 64
MAX_UUID = 128
MAX_COMMAND_ID = 64
MAX_ACK_ERROR = 1024


class InvalidMessageError(ValueError):
    """An agent message the server will not accept; code is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[InvalidMessageError], tuple[str, str]]:
        # Picklable, so a benchmark's worker process can hand it back instead of dying.
        return (type(self), (self.code, self.message))


def _bad(field: str, value: object, why: str) -> InvalidMessageError:
    return InvalidMessageError("invalid_value", f"{field}={value!r}: {why}")


def _finite_nonneg(field: str, value: float, upper: float | None = None) -> float:
    if not math.isfinite(value):
        raise _bad(field, value, "must be finite")
    if value < 0:
        raise _bad(field, value, "must not be negative")
    if upper is not None and value > upper:
        raise _bad(field, value, f"must be at most {upper:g}")
    return value


def text(field: str, value: str, max_len: int, *, required: bool = False) -> str:
    """A string fit for a log line and a database column: bounded, printable, no NUL."""
    if required and not value.strip():
        raise _bad(field, value, "must not be empty")
    if len(value) > max_len:
        raise InvalidMessageError(
            "invalid_value", f"{field}: {len(value)} characters, at most {max_len} allowed"
        )
    if not value.isprintable():
        raise InvalidMessageError(
            "invalid_value", f"{field}={value[:40]!r}: control characters are not allowed"
        )
    return value


def clean_text(value: str, max_len: int) -> str:
    """Free text we keep but do not judge (an agent's error message): made storable."""
    return "".join(ch if ch.isprintable() else "?" for ch in value[:max_len])


def _clock(field: str, value: int) -> int:
    if not 0 < value <= MAX_CLOCK_MHZ:
        raise _bad(field, value, f"must be in 1..{MAX_CLOCK_MHZ} MHz")
    return value


def _opt_float(msg: Message, name: str, field: str, upper: float) -> float | None:
    if not msg.HasField(name):
        return None
    value = float(getattr(msg, name))
    if 0.0 <= value <= upper:  # the common case in one test; NaN fails it too
        return value
    return _finite_nonneg(field, value, upper)  # raises, saying which bound


def _opt_clock(msg: Message, name: str, field: str) -> int | None:
    return _clock(field, int(getattr(msg, name))) if msg.HasField(name) else None


# Bucket bounds already found valid, each kept once: every window of every instance
# sends the same few sets, so checking a set costs one lookup after its first time, and
# every HistogramDelta of a set shares one tuple. Bounded: a sender of ever-new bounds
# only clears it.
_KNOWN_BOUNDS: dict[tuple[float, ...], tuple[float, ...]] = {}
_KNOWN_BOUNDS_MAX = 256


def _valid_bounds(bounds: tuple[float, ...], field: str) -> tuple[float, ...]:
    known = _KNOWN_BOUNDS.get(bounds)
    if known is not None:
        return known
    if len(bounds) > MAX_HISTOGRAM_BUCKETS:
        raise _bad(f"{field}.upper_bounds", len(bounds), f"more than {MAX_HISTOGRAM_BUCKETS}")
    # A NaN or an infinity anywhere makes the sum non-finite; sorted(set()) equals the
    # bounds only when they strictly ascend.
    if not math.isfinite(sum(bounds)) or sorted(set(bounds)) != list(bounds):
        raise _bad(f"{field}.upper_bounds", bounds, "must be finite and strictly ascending")
    if len(_KNOWN_BOUNDS) >= _KNOWN_BOUNDS_MAX:
        _KNOWN_BOUNDS.clear()
    _KNOWN_BOUNDS[bounds] = bounds
    return bounds


def histogram(h: pb.Histogram, field: str) -> HistogramDelta | None:
    if not h.bucket_counts and h.count == 0:
        return None
    # Built-ins over whole sequences (this runs five times per window, fleet-wide).
    bounds = _valid_bounds(tuple(h.upper_bounds), field)
    counts = tuple(h.bucket_counts)
    if len(counts) != len(bounds) + 1:
        raise _bad(f"{field}.bucket_counts", len(counts), f"need {len(bounds) + 1} buckets")
    total = sum(counts)
    if total != h.count:
        raise _bad(f"{field}.count", h.count, f"buckets add up to {total}")
    if h.count > MAX_COUNT_PER_WINDOW:
        raise _bad(f"{field}.count", h.count, f"must be at most {MAX_COUNT_PER_WINDOW:g}")
    _finite_nonneg(f"{field}.sum", h.sum, MAX_HISTOGRAM_SUM)
    return HistogramDelta(bounds, counts, float(h.sum), int(h.count))


def gpu_sample(g: pb.GpuWindow, allowed: Sequence[int], duration_s: float) -> GpuSample:
    if g.index not in allowed:
        raise InvalidMessageError(
            "unknown_gpu", f"gpu index {g.index} is not one of this instance's {list(allowed)}"
        )
    prefix = f"gpus[{g.index}]"
    lock: tuple[int, int] | None = None
    lock_min = _opt_clock(g, "locked_min_sm_clock_mhz", f"{prefix}.locked_min_sm_clock_mhz")
    lock_max = _opt_clock(g, "locked_max_sm_clock_mhz", f"{prefix}.locked_max_sm_clock_mhz")
    if lock_min is not None and lock_max is not None:
        if lock_min > lock_max:
            raise _bad(f"{prefix}.locked_min_sm_clock_mhz", lock_min, "above locked max")
        lock = (lock_min, lock_max)
    _opt_clock(g, "memory_clock_mhz", f"{prefix}.memory_clock_mhz")
    _opt_float(g, "power_w", f"{prefix}.power_w", MAX_GPU_POWER_W)
    _opt_float(g, "utilization_memory_pct", f"{prefix}.utilization_memory_pct", 100.0)
    # The window's energy can be no more than the most power any GPU draws for its length.
    max_energy = MAX_GPU_POWER_W * duration_s
    return GpuSample(
        index=int(g.index),
        energy_j=_opt_float(g, "energy_j", f"{prefix}.energy_j", max_energy),
        avg_power_w=_opt_float(g, "avg_power_w", f"{prefix}.avg_power_w", MAX_GPU_POWER_W),
        sm_clock_mhz=_opt_clock(g, "sm_clock_mhz", f"{prefix}.sm_clock_mhz"),
        utilization_gpu_pct=_opt_float(
            g, "utilization_gpu_pct", f"{prefix}.utilization_gpu_pct", 100.0
        ),
        throttle_reasons=int(g.throttle_reasons) if g.HasField("throttle_reasons") else None,
        locked_sm_clock_mhz=lock,
    )


def serving_sample(s: pb.ServingWindow) -> ServingSample | None:
    if not s.available:
        return None  # unknown, never idle

    def count(name: str) -> float | None:
        return _opt_float(s, name, f"serving.{name}", MAX_COUNT_PER_WINDOW)

    return ServingSample(
        num_requests_running=_opt_float(
            s, "num_requests_running", "serving.num_requests_running", MAX_REQUESTS
        ),
        num_requests_waiting=_opt_float(
            s, "num_requests_waiting", "serving.num_requests_waiting", MAX_REQUESTS
        ),
        # vLLM reports a fraction; allow a hair above 1 for rounding.
        kv_cache_usage=_opt_float(s, "kv_cache_usage", "serving.kv_cache_usage", 1.01),
        prompt_tokens=count("prompt_tokens"),
        generation_tokens=count("generation_tokens"),
        preemptions=count("preemptions"),
        requests_finished=count("requests_finished"),
        ttft_s=histogram(s.ttft_s, "serving.ttft_s"),
        inter_token_latency_s=histogram(s.inter_token_latency_s, "serving.inter_token_latency_s"),
        prefix_cache_queries=count("prefix_cache_queries"),
        prefix_cache_hits=count("prefix_cache_hits"),
        e2e_latency_s=histogram(s.e2e_latency_s, "serving.e2e_latency_s"),
        iteration_tokens=histogram(s.iteration_tokens, "serving.iteration_tokens"),
        request_tpot_s=histogram(s.request_tpot_s, "serving.request_tpot_s"),
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


def _time(field: str, value: float) -> float:
    if not math.isfinite(value) or not 0 <= value <= LATEST_TIME_S:
        raise _bad(field, value, "must be unix seconds from 1970 to 2100")
    return value


def observation(w: pb.InstanceWindow, gpu_indices: Sequence[int]) -> Observation:
    start = _time("window_start_s", w.window_start_s)
    end = _time("window_end_s", w.window_end_s)
    if end <= start:
        raise _bad("window_end_s", end, f"must be after window_start_s={start}")
    if end - start > MAX_WINDOW_S:
        raise _bad("window_end_s", end, f"window longer than {MAX_WINDOW_S:.0f} s")
    if end - start < MIN_WINDOW_S:
        raise _bad("window_end_s", end, f"window shorter than {MIN_WINDOW_S * 1000:.0f} ms")
    text("command_id", w.command_id, MAX_COMMAND_ID)
    seen: set[int] = set()
    gpus = []
    for g in w.gpus:
        if g.index in seen:
            raise _bad("gpus.index", g.index, "appears twice")
        seen.add(g.index)
        gpus.append(gpu_sample(g, gpu_indices, end - start))
    serving = serving_sample(w.serving) if w.HasField("serving") else None
    in_force = clock_in_force(gpus)
    boosted_s = None
    if w.HasField("reflex"):
        reflex_sample(w.reflex, end - start)
        boosted_s = w.reflex.boosted_s
        if in_force is not None and w.reflex.base_sm_clock_mhz:
            # The GPUs' lock may read the fast loop's boost at the window's end; the clock
            # the command set is what the controller chose and learns about.
            in_force = min(in_force, w.reflex.base_sm_clock_mhz)
    return Observation(
        window_start_s=start,
        window_end_s=end,
        gpus=tuple(gpus),
        serving=serving,
        clock_in_force_mhz=in_force,
        boosted_s=boosted_s,
    )


def reflex_sample(r: pb.ReflexWindow, duration_s: float) -> None:
    """A ReflexWindow's figures must be possible for a window of duration_s (the agent
    takes its boost time a moment after it closes the window: a second of slack)."""
    _finite_nonneg("reflex.boosted_s", r.boosted_s, duration_s + 1.0)
    _finite_nonneg("reflex.cpu_s", r.cpu_s, duration_s + 1.0)
    if r.polls_failed > r.polls:
        raise _bad("reflex.polls_failed", r.polls_failed, f"more than polls={r.polls}")


def check_hello(hello: pb.Hello) -> None:
    """Everything Hello says is stored: bound each field to what its column can hold."""
    text("node_id", hello.node_id, MAX_NAME, required=True)
    text("hostname", hello.hostname, MAX_NAME)
    text("agent_version", hello.agent_version, MAX_VERSION)
    if len(hello.gpus) > MAX_GPUS_PER_NODE:
        raise _bad("gpus", len(hello.gpus), f"more than {MAX_GPUS_PER_NODE} GPUs")
    if len(hello.instances) > MAX_INSTANCES_PER_NODE:
        raise _bad("instances", len(hello.instances), f"more than {MAX_INSTANCES_PER_NODE}")
    indices = [g.index for g in hello.gpus]
    if len(set(indices)) != len(indices):
        raise InvalidMessageError("invalid_hello", f"duplicate GPU indices {indices}")
    for g in hello.gpus:
        prefix = f"gpus[{g.index}]"
        if g.index > MAX_GPU_INDEX:
            raise _bad(f"{prefix}.index", g.index, f"must be at most {MAX_GPU_INDEX}")
        text(f"{prefix}.uuid", g.uuid, MAX_UUID)
        text(f"{prefix}.name", g.name, MAX_NAME)
        text(f"{prefix}.monitor_only_reason", g.monitor_only_reason, MAX_ACK_ERROR)
        if not g.supported_sm_clocks_mhz:
            raise InvalidMessageError("invalid_hello", f"gpu {g.index} lists no supported clocks")
        for name in ("supported_sm_clocks_mhz", "supported_memory_clocks_mhz"):
            clocks = getattr(g, name)
            if len(clocks) > MAX_CLOCK_LIST:
                raise _bad(f"{prefix}.{name}", len(clocks), f"more than {MAX_CLOCK_LIST} clocks")
            for mhz in clocks:
                _clock(f"{prefix}.{name}", mhz)
        if g.default_sm_clock_mhz <= 0:
            raise InvalidMessageError("invalid_hello", f"gpu {g.index} has no default clock")
        _clock(f"{prefix}.default_sm_clock_mhz", g.default_sm_clock_mhz)
        if g.default_memory_clock_mhz:
            _clock(f"{prefix}.default_memory_clock_mhz", g.default_memory_clock_mhz)
        for name in (
            "current_sm_clock_mhz",
            "current_memory_clock_mhz",
            "locked_min_sm_clock_mhz",
            "locked_max_sm_clock_mhz",
        ):
            _opt_clock(g, name, f"{prefix}.{name}")
        if g.power_limit_mw > MAX_POWER_LIMIT_MW:
            raise _bad(f"{prefix}.power_limit_mw", g.power_limit_mw, "above 100 kW")
    names = [i.name for i in hello.instances]
    if len(set(names)) != len(names) or any(not n.strip() for n in names):
        raise InvalidMessageError("invalid_hello", f"instance names must be unique: {names}")
    for inst in hello.instances:
        text("instances.name", inst.name, MAX_NAME, required=True)
        prefix = f"instances[{inst.name}]"
        text(f"{prefix}.metrics_url", inst.metrics_url, MAX_URL)
        text(f"{prefix}.model_name", inst.model_name, MAX_NAME)
        if len(inst.labels) > MAX_LABELS:
            raise _bad(f"{prefix}.labels", len(inst.labels), f"more than {MAX_LABELS} labels")
        for name, value in inst.labels.items():
            problem = label_problem(name, value)
            if problem:
                raise InvalidMessageError("invalid_hello", f"{prefix}.labels: {problem}")
        if not inst.gpu_indices:
            raise InvalidMessageError("invalid_hello", f"instance {inst.name} has no GPUs")
        missing = [i for i in inst.gpu_indices if i not in indices]
        if missing:
            raise InvalidMessageError(
                "invalid_hello", f"instance {inst.name} names unknown GPUs {missing}"
            )
        if inst.HasField("front_door"):
            door = inst.front_door
            if door.counts not in (pb.FRONT_DOOR_COUNT_IN_FLIGHT, pb.FRONT_DOOR_COUNT_QUEUED):
                raise _bad(f"{prefix}.front_door.counts", door.counts, "unknown count")
            text(f"{prefix}.front_door.url", door.url, MAX_URL, required=True)
            text(f"{prefix}.front_door.metric", door.metric, MAX_NAME)
            _finite_nonneg(f"{prefix}.front_door.poll_s", door.poll_s, MAX_WINDOW_S)


def ack_row(ack: pb.CommandAck) -> AckRow:
    """The clock_commands columns an ack fills (without acked_at, the server's time)."""
    text("ack.command_id", ack.command_id, MAX_COMMAND_ID, required=True)
    text("ack.instance", ack.instance, MAX_NAME)
    if len(ack.applied) > MAX_GPUS_PER_NODE:
        raise _bad("ack.applied", len(ack.applied), f"more than {MAX_GPUS_PER_NODE} GPUs")
    applied = []
    for a in ack.applied:
        prefix = f"ack.applied[{a.gpu_index}]"
        if a.gpu_index > MAX_GPU_INDEX:
            raise _bad(f"{prefix}.gpu_index", a.gpu_index, f"must be at most {MAX_GPU_INDEX}")
        applied.append(
            AppliedClock(
                gpu_index=int(a.gpu_index),
                sm_clock_mhz=_opt_clock(a, "sm_clock_mhz", f"{prefix}.sm_clock_mhz"),
                locked_min_sm_clock_mhz=_opt_clock(
                    a, "locked_min_sm_clock_mhz", f"{prefix}.locked_min_sm_clock_mhz"
                ),
                locked_max_sm_clock_mhz=_opt_clock(
                    a, "locked_max_sm_clock_mhz", f"{prefix}.locked_max_sm_clock_mhz"
                ),
            )
        )
    return AckRow(
        id=ack.command_id,
        ack_ok=bool(ack.ok),
        # The agent's own words are kept, made storable (a NUL byte once stopped all
        # persistence on PostgreSQL), never judged.
        ack_error=clean_text(ack.error, MAX_ACK_ERROR) or None,
        applied=tuple(applied),
    )
